"""Writes a killed process cannot leave half done, and the reader of the logs they append to.

A whole file goes to ``name.part`` and then ``os.replace`` (:func:`write_atomic`); a log line is
appended with one ``os.write`` on an ``O_APPEND`` descriptor (:class:`LogFile`). Every log line
starts with the id zero-padded to 8 digits, so a line cut inside its id shows as a short one:
:class:`LogFile` repairs such a torn end on open and :func:`read_log` skips it. Readers take the
first tab-separated column as the id.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n < len(data):  # a short write (full disk returns an error instead; a signal may cut it)
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view):]


def write_atomic(path: Path | str, data: bytes, *, fsync: bool = False) -> None:
    """``path.part`` then ``os.replace``: the final name only ever holds a complete file.

    That is what makes a killed process harmless. ``fsync`` also survives power loss, at a cost
    per file too high for a crawl of millions of small files (ext4 and most journaling file
    systems flush a replaced file before the rename anyway). The folder is created only when
    the first open says it is missing (no check per file)."""
    path = os.fspath(path)
    part = path + ".part"
    try:  # os-level calls: a buffered file object per file costs more than the write itself
        fd = os.open(part, _NEW_FILE, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(part, _NEW_FILE, 0o666)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)


# Model files are written relative to their block folder's descriptor where the OS has openat/renameat.


def write_atomic_at(dir_fd: int, name: str, data: bytes) -> None:
    """:func:`write_atomic` of ``name`` in the folder open as ``dir_fd`` (``openat`` + ``renameat``)."""
    part = name + ".part"
    fd = os.open(part, _NEW_FILE, 0o666, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_log(path: Path) -> dict[int, list[str]]:
    """id -> the other columns of its last line. Lines whose first column is not a number are skipped,
    and so is a last line without its newline whose id is shorter than 8 digits (a write torn by a
    kill: our ids are always padded to 8 digits, so a cut inside the id shows as a short one)."""
    out: dict[int, list[str]] = {}
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    with fh:
        for line in fh:
            cols = line.rstrip("\r\n").split("\t")
            head = cols[0].strip()
            if head.isdigit():
                if not line.endswith("\n") and len(head) < 8:
                    log.warning("%s ends with a torn line %r; ignored", path, line)
                    continue
                out[int(head)] = cols[1:]
    return out


def time_of(cols: list[str]) -> str:
    """The UTC time column of a log line (the last column that looks like one), or ''."""
    for col in reversed(cols):
        if len(col) >= 20 and col[:4].isdigit() and col[4] == "-" and col.endswith("Z"):
            return col
    return ""


class LogFile:
    """An append-only log written with one ``os.write`` per call on an ``O_APPEND`` descriptor.

    No user-space buffer, so a ``kill -9`` loses nothing that :meth:`append` returned from. If a
    previous process died in the middle of a line, the torn end is repaired on open: a fragment
    whose id is complete (8 digits) gets its newline; a shorter one (cut inside the id, so it
    would name the wrong model) is cut off."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def append(self, *cols: object) -> None:
        self.write_lines(["\t".join(str(c) for c in cols) + "\n"])

    def write_lines(self, lines: list[str]) -> None:
        """Append whole lines (each ending in a newline) with one write."""
        data = "".join(lines).encode("utf-8")
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
            _write_all(self._fd, data)

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: the torn-end check
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            start = max(0, size - 4096)
            tail = os.pread(fd, size - start, start)
            cut = tail.rfind(b"\n")
            fragment = tail[cut + 1:]
            head = fragment.split(b"\t", 1)[0].strip()
            if head.isdigit() and len(head) < 8 and (cut >= 0 or start == 0):
                log.warning("%s ends with a torn line %r (a killed run); removing it", self.path, fragment)
                os.ftruncate(fd, start + cut + 1)
            else:
                os.write(fd, b"\n")
        return fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def rewrite_log(path: Path, lines: Iterable[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines).encode("utf-8"))

