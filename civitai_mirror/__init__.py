"""civitai-mirror: crawl Civitai, mirror it offline, match a local collection against it.

This top package holds what every command shares: the version, the ``civitai-mirror`` click group
(``cli``), the options common to all commands (``options``) and the offline demo (``demo``). The
work itself lives in three packages whose imports run one way, ``matcher`` -> ``mirror`` -> ``crawler``.
"""

__version__ = "0.1.0"
