"""Timestamps, one format for the whole project: UTC ISO 8601 with a ``Z``.

``utc_now()`` is the time of an event (microseconds: runs and journal rows sort in order);
``utc_iso(ts)`` a given POSIX time to the second (file times); ``utc_stamp()`` the compact form
used in file names (``20261122T010203Z``).
"""
from __future__ import annotations

import time

_second: list = [-1, ""]  # the last second formatted by utc_now, and its text


def utc_now(_time_ns=time.time_ns, _second=_second) -> str:
    """UTC time like ``2026-11-22T01:02:03.456789Z`` (the formatted second is cached)."""
    sec, us = divmod(_time_ns() // 1000, 1_000_000)
    if _second[0] != sec:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _second[0] = sec
    return "%s%06dZ" % (_second[1], us)


def utc_iso(ts: float) -> str:
    """POSIX time -> ``2026-11-22T01:02:03Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def utc_stamp() -> str:
    """Now as ``20261122T010203Z`` (file names)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
