"""Scan a local collection, hash it the way Civitai does, read image metadata, match and sort.

The Python API (``matcher.api``), loaded on first use so ``import matcher`` stays cheap::

    from matcher import (extract_comprehensive_metadata, find_metadata_text_file,
                         cross_reference_with_civitai, process_orphaned_media)
"""
from __future__ import annotations

from typing import Any

__all__ = ["extract_comprehensive_metadata", "find_metadata_text_file", "cross_reference_with_civitai",
           "process_orphaned_media"]


def __getattr__(name: str) -> Any:
    # PEP 562: the API is loaded on first use for start-up time only (it pulls in sqlite_utils and
    # Pillow); matcher.api imports at its top and has no cycle with this package.
    if name in __all__:
        from matcher import api

        return getattr(api, name)
    raise AttributeError(f"module 'matcher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
