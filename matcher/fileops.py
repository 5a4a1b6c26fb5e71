"""Moving one file safely: never overwrite, verify a copy before the source goes, prune empty folders.

``move_file(src, dst, sha256, tag)`` renames on the same device with ``rename_noreplace``, which
refuses to replace an existing ``dst`` *atomically*: a file that appears at ``dst`` after any check
is never overwritten. Across devices it copies to a hidden ``.part`` file beside the destination
(``part_path``), checks the copy's SHA256 against the one the journal recorded, gives it its
final name with the same no-replace rename and only then unlinks the source. The sorter's journal
calls it; it knows nothing of the journal itself.

``rename_noreplace`` is ``renameat2(RENAME_NOREPLACE)`` on Linux (through ctypes),
``renamex_np(RENAME_EXCL)`` on macOS, ``os.rename`` on Windows (which never replaces), and
elsewhere, or on a filesystem that refuses those calls, a hard link (which refuses to overwrite)
followed by unlinking the old name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
from typing import Iterable

from matcher.hashing import sha256_file

#: Bytes read and written at a time when a move has to copy.
COPY_CHUNK = 1 << 20

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1      # linux/fs.h
_RENAME_EXCL = 0x4         # macOS sys/stdio.h
# Errors that mean "this filesystem (or kernel) cannot do an atomic no-replace rename": fall back.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


class VerifyError(OSError):
    """A copied file's hash is not the journal's: the source stays, the copy is removed."""


def _native_noreplace():
    """The platform's atomic no-replace rename as ``f(src_bytes, dst_bytes) -> 0 | -1``, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):   # glibc >= 2.28, musl >= 1.2.5
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda src, dst: fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE)
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        return lambda src, dst: fn(src, dst, _RENAME_EXCL)
    return None


_NATIVE = None if os.name == "nt" else _native_noreplace()


def _link_then_unlink(src: str, dst: str) -> None:
    """No-replace rename by hard link (refuses to overwrite) and unlink of the old name."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", dst) from exc
        # A filesystem without hard links (FAT, some network shares): the last resort has a race.
        os.rename(src, dst)
        return
    os.unlink(src)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists, ``OSError(EXDEV)`` across devices."""
    if os.name == "nt":
        os.rename(src, dst)   # Windows' rename never replaces an existing file
        return
    if _NATIVE is not None:
        if _NATIVE(os.fsencode(src), os.fsencode(dst)) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, "destination exists", dst)
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), src)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    _link_then_unlink(src, dst)


def part_path(dst: str, tag: str) -> str:
    """The hidden temporary name a copy to ``dst`` is written under (``tag`` makes it ours)."""
    folder, name = os.path.split(dst)
    return os.path.join(folder, f".{name[:150]}.{tag}.part")


def move_file(src: str, dst: str, sha256: str, tag: str) -> str:
    """Move ``src`` to ``dst`` without ever overwriting; returns 'rename' or 'copy'.

    Cross-device: copy to a hidden ``.part`` beside ``dst``, verify SHA256, rename it into place
    (no-replace), then unlink the source.
    """
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        rename_noreplace(src, dst)
        return "rename"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = part_path(dst, tag)
    try:
        with open(src, "rb") as fin, open(part, "xb") as fout:
            shutil.copyfileobj(fin, fout, COPY_CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        try:
            st = os.stat(src)
            os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            pass
        if sha256_file(part) != sha256:
            raise VerifyError(errno.EIO, "hash changed while copying; source kept", src)
        rename_noreplace(part, dst)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    os.unlink(src)
    return "copy"


def missing_dirs(paths: Iterable[str]) -> list[str]:
    """The folders that would have to be created to hold ``paths`` (each one's missing parents)."""
    out: set[str] = set()
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        while folder not in out and not os.path.isdir(folder):
            out.add(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return sorted(out)


def remove_empty_dirs(folders: Iterable[str]) -> None:
    """Remove each of ``folders`` that is empty, deepest first; a folder holding anything stays."""
    for folder in sorted(set(folders), key=len, reverse=True):
        try:
            os.rmdir(folder)   # only succeeds when empty
        except OSError:
            pass


def prune_empty_dirs(folders: Iterable[str], root: str) -> None:
    """Remove each of ``folders`` and its parents below ``root`` while they are empty (runs that did
    not record which folders they created)."""
    root = os.path.abspath(root)
    for folder in sorted(set(folders), key=len, reverse=True):
        current = os.path.abspath(folder)
        while current.startswith(root + os.sep):
            try:
                os.rmdir(current)   # only succeeds when empty
            except OSError:
                break
            current = os.path.dirname(current)
