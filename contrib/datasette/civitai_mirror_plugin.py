"""civitai-mirror's Datasette plugin for a plain ``datasette`` (``publish``, ``package``, ``serve``).

``civitai-mirror serve`` registers mirror.plugin itself; ``datasette`` loads plugins from packages'
entry points or from a folder. Pass this folder as ``--plugins-dir`` (with civitai-mirror installed:
``--install``) and the Civitai-compatible API, the model pages and /-/changes are served there too.
"""
from mirror.plugin import *  # noqa: F401,F403 - the hook implementations Datasette looks for
