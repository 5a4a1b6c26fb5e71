"""Moving one file safely: never overwrite, verify a copy before the source goes, prune empty folders.

``move_file(src, dst, sha256, tag)`` renames on the same device. Across devices it copies to a
hidden ``.part`` file beside the destination (``part_path``), checks the copy's SHA256 against the
one the journal recorded, gives it its final name only if that name is still free (a hard link,
which refuses to overwrite) and only then unlinks the source. The sorter's journal calls it; it
knows nothing of the journal itself.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Iterable

from matcher.hashing import sha256_file

#: Bytes read and written at a time when a move has to copy.
COPY_CHUNK = 1 << 20


class VerifyError(OSError):
    """A copied file's hash is not the journal's: the source stays, the copy is removed."""


def part_path(dst: str, tag: str) -> str:
    """The hidden temporary name a copy to ``dst`` is written under (``tag`` makes it ours)."""
    folder, name = os.path.split(dst)
    return os.path.join(folder, f".{name[:150]}.{tag}.part")


def move_file(src: str, dst: str, sha256: str, tag: str) -> str:
    """Move ``src`` to ``dst`` without ever overwriting; returns 'rename' or 'copy'.

    Cross-device: copy to a hidden ``.part`` beside ``dst``, verify SHA256, link into place,
    then unlink the source.
    """
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.rename(src, dst)
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
        _link_into_place(part, dst)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    os.unlink(src)
    return "copy"


def _link_into_place(part: str, dst: str) -> None:
    """Give ``part`` the name ``dst`` only if ``dst`` does not exist (os.link refuses to overwrite)."""
    try:
        os.link(part, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST,):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", dst) from exc
        os.rename(part, dst)   # filesystems without hard links
        return
    os.unlink(part)


def prune_empty_dirs(folders: Iterable[str], root: str) -> None:
    """Remove each of ``folders`` and its parents below ``root`` while they are empty."""
    root = os.path.abspath(root)
    for folder in sorted(set(folders), key=len, reverse=True):
        current = os.path.abspath(folder)
        while current.startswith(root + os.sep):
            try:
                os.rmdir(current)   # only succeeds when empty
            except OSError:
                break
            current = os.path.dirname(current)
