"""The one hashing function: every Civitai hash type of a file in one read pass.

Definitions (Civitai's, as its API and site compute them; every hex string upper-case):

* ``SHA256``: sha256 of the whole file; ``AutoV2`` = ``SHA256[:10]``.
* ``AutoV1``: ``sha256(file[0x100000:0x110000])[:8]``, ``None`` when the file is under 2 MiB (Civitai's
  table). ``AutoV1_A1111`` is the same read done the way A1111/kohya do it, with no size limit
  (a file under 1 MiB gives ``E3B0C442``, the hash of nothing); infotexts carry that value.
* ``AutoV3_full``: sha256 of the bytes after the safetensors header, i.e. ``file[8+N:]`` where ``N``
  is the little-endian u64 at offset 0; when ``N >= 16 MiB`` (zip ``.ckpt``/``.pt``, huge headers)
  it is ``file[8:]`` (Civitai's rule since 2024-08). ``AutoV3`` is its first 12 hex characters.
  ``None`` (with ``error`` set) when ``8+N`` runs past the end of the file or the file is shorter
  than 8 bytes.
* ``CRC32``: ``zlib.crc32`` of the whole file, printed in little-endian byte order.
* ``BLAKE3``: blake3 of the whole file (32-byte digest).

One reader feeds every hasher; on large inputs each hasher runs in its own thread (hashlib, zlib
and blake3 release the GIL), so the pass costs about as much as its slowest hash, not their sum.
Files of ``MAPPED_MIN_SIZE`` or more skip even the copy into our buffers: ``matcher.mapped`` hashes
them from a memory map in a helper process (still one pass over the disk).

``fingerprint`` is a cheap sampled identity (size + head/middle/tail) used to recognise a moved
file without hashing it; it is not a Civitai hash.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Any, Callable, Iterable

import blake3

from matcher.hashers import FileChangedError, hex_digest, new_hasher
from matcher.mapped import hash_mapped

#: Keys of the dict ``hash_file`` returns (Civitai's names, plus the full AutoV3 and A1111's AutoV1).
HASH_KEYS = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "AutoV3_full", "CRC32", "BLAKE3")
ALL_KEYS = HASH_KEYS + ("AutoV1_A1111",)

AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_SIZE = 2 * 0x100000
AUTOV3_HEADER_LIMIT = 16 * 2**20

#: chunk size when hashing in the calling thread (small inputs)
CHUNK_SIZE = 1 << 20
#: chunk size of the threaded pipeline: big reads, so each hasher releases the GIL for long stretches
THREADED_CHUNK_SIZE = 8 << 20
#: buffers the reader may fill ahead of the slowest hasher (memory: _BUFFERS * THREADED_CHUNK_SIZE)
_BUFFERS = 4
#: Inputs up to this size are hashed in the calling thread (threads cost more than they save).
THREADED_MIN_SIZE = 8 << 20
#: Inputs of this size or more are hashed from a memory map in a helper process (no copy).
MAPPED_MIN_SIZE = 64 << 20

# `want` names -> the hashers they need.
_NEEDS = {
    "SHA256": "sha256", "AutoV2": "sha256", "AutoV1": "autov1", "AutoV1_A1111": "autov1",
    "AutoV3": "autov3", "AutoV3_full": "autov3", "CRC32": "crc32", "BLAKE3": "blake3",
}


def _normalise_want(want: Iterable[str] | None) -> set[str]:
    if want is None:
        return set(_NEEDS.values())
    lookup = {key.lower(): value for key, value in _NEEDS.items()}
    needed = set()
    for key in want:
        if key.lower() not in lookup:
            raise ValueError(f"unknown hash type {key!r}; known: {', '.join(ALL_KEYS)}")
        needed.add(lookup[key.lower()])
    return needed


class _Tail:
    """Feeds a hasher only the bytes from ``start`` (an offset into the stream) onwards."""

    def __init__(self, hasher: Any, start: int) -> None:
        self.hasher, self.start, self.position = hasher, start, 0

    def update(self, data: Any) -> None:
        end = self.position + len(data)
        if end > self.start:
            skip = self.start - self.position
            self.hasher.update(data[skip:] if skip > 0 else data)
        self.position = end


class _Pipeline:
    """One reader, one thread per hasher, a small pool of reused buffers.

    The reader fills a free buffer with ``readinto`` (no new allocation per chunk, so no page
    faults on fresh memory) and hands a read-only view of it to every hasher thread; the last
    hasher to finish with a buffer gives it back to the pool. hashlib, blake3 and the crc32 both
    release the GIL on large buffers, so the hashers really run at once on several cores.
    """

    def __init__(self, updaters: list[Any], chunk_size: int, buffers: int) -> None:
        self.updaters = updaters
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(buffers):
            self.free.put(bytearray(chunk_size))
        self.queues = [queue.SimpleQueue() for _ in updaters]
        self.lock = threading.Lock()
        self.pending: dict[int, int] = {}
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._work, args=(u, q), daemon=True, name="hash-worker")
                        for u, q in zip(updaters, self.queues)]
        for thread in self.threads:
            thread.start()

    def _work(self, updater: Any, q: queue.SimpleQueue) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            buffer, view = item
            if not self.failures:
                try:
                    updater.update(view)
                except BaseException as exc:  # pragma: no cover - hashers do not fail
                    self.failures.append(exc)
            self.release(buffer)

    def release(self, buffer: bytearray) -> None:
        with self.lock:
            left = self.pending[id(buffer)] - 1
            if left:
                self.pending[id(buffer)] = left
                return
            del self.pending[id(buffer)]
        self.free.put(buffer)

    def take(self) -> bytearray:
        return self.free.get()

    def feed(self, buffer: bytearray, n: int) -> None:
        view = memoryview(buffer).toreadonly()[:n]
        with self.lock:
            self.pending[id(buffer)] = len(self.queues)
        for q in self.queues:
            q.put((buffer, view))

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for thread in self.threads:
            thread.join()
        if self.failures:
            raise self.failures[0]


def hash_file(
    path: str | os.PathLike,
    *,
    want: Iterable[str] | None = None,
    offset: int = 0,
    progress: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    threaded: bool | None = None,
    mapped: bool | None = None,
) -> dict[str, Any]:
    """Hash ``path`` (from byte ``offset``, as if that were the start of the file) in one read pass.

    Returns ``SHA256, AutoV1, AutoV2, AutoV3, AutoV3_full, CRC32, BLAKE3, AutoV1_A1111`` (upper-case
    hex or ``None`` when not requested / not defined), plus ``size`` (bytes hashed), ``header_length``
    (the u64 at the start) and ``error`` (why AutoV3 is ``None``, or ``None``). ``want`` limits the
    work to some hash types (``{"SHA256"}`` for media). ``progress(n)`` is called with each chunk's size.
    ``mapped`` forces (True) or forbids (False) hashing from a memory map in a helper process; by
    default files of ``MAPPED_MIN_SIZE`` or more use it. ``threaded=False`` hashes in this thread only.
    Raises ``FileChangedError`` when the file shrinks or grows while it is read.
    """
    needed = _normalise_want(want)
    result: dict[str, Any] = {key: None for key in ALL_KEYS}
    result.update(size=0, header_length=None, error=None)
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size - offset
        if size < 0:
            raise ValueError(f"offset {offset} is past the end of {path}")
        handle.seek(offset)
        head = handle.read(8) if size else b""

        # (name, hasher kind, first byte it hashes) for every hash this call computes
        jobs: list[tuple[str, str, int]] = []
        if "sha256" in needed:
            jobs.append(("sha256", "sha256", 0))
        if "autov3" in needed:
            if len(head) < 8:
                result["error"] = f"too short for a safetensors header ({size} bytes)"
            else:
                n = int.from_bytes(head, "little")
                if n >= AUTOV3_HEADER_LIMIT:
                    jobs.append(("autov3", "sha256", 8))
                elif 8 + n > size:
                    result["error"] = f"safetensors header length {n} exceeds file size {size}"
                else:
                    jobs.append(("autov3", "sha256", 8 + n))
        if "blake3" in needed:
            jobs.append(("blake3", "blake3", 0))
        if "crc32" in needed:
            jobs.append(("crc32", "crc32", 0))
        if len(head) >= 8:
            result["header_length"] = int.from_bytes(head, "little")
        want_autov1 = "autov1" in needed

        if mapped is None:
            mapped = size >= MAPPED_MIN_SIZE and threaded is not False
        digests = hash_mapped(path, offset, size, jobs, progress) if mapped and jobs else None
        if digests is not None:
            autov1_parts = [os.pread(handle.fileno(), AUTOV1_LENGTH, offset + AUTOV1_OFFSET)] if want_autov1 else []
        else:
            digests, autov1_parts = _hash_read(handle, head, size, offset, jobs, want_autov1, progress,
                                               chunk_size, threaded)
    result["size"] = size
    if "sha256" in digests:
        result["SHA256"] = digests["sha256"]
        result["AutoV2"] = result["SHA256"][:10]
    if "autov3" in digests:
        result["AutoV3_full"] = digests["autov3"]
        result["AutoV3"] = result["AutoV3_full"][:12]
    result["CRC32"] = digests.get("crc32")
    result["BLAKE3"] = digests.get("blake3")
    if want_autov1:
        a1111 = hashlib.sha256(b"".join(autov1_parts)).hexdigest()[:8].upper()
        result["AutoV1_A1111"] = a1111
        result["AutoV1"] = a1111 if size >= AUTOV1_MIN_SIZE else None
    return result


def _hash_read(handle: Any, head: bytes, size: int, offset: int, jobs: list[tuple[str, str, int]],
               want_autov1: bool, progress: Callable[[int], None] | None, chunk_size: int | None,
               threaded: bool | None) -> tuple[dict[str, str], list[bytes]]:
    """The copying reader: ``readinto`` reused buffers, hashers fed in this thread or in threads."""
    hashers = {name: new_hasher(kind) for name, kind, _ in jobs}
    updaters = [hashers[name] if start == 0 else _Tail(hashers[name], start) for name, _, start in jobs]
    autov1_parts: list[bytes] = []
    read_total = 0
    if threaded is None:
        threaded = size >= THREADED_MIN_SIZE and len(updaters) > 1
    if chunk_size is None:
        chunk_size = THREADED_CHUNK_SIZE if threaded else CHUNK_SIZE
    pipeline = _Pipeline(updaters, chunk_size, _BUFFERS) if updaters and threaded else None
    try:
        position = 0
        pending_head = head
        while True:
            if pipeline is not None:
                buffer = pipeline.take()
                view = memoryview(buffer)
            else:
                if position == 0:  # no bigger than the file: small files are the common case
                    buffer = bytearray(max(16, min(chunk_size, size)))
                view = memoryview(buffer)
            k = len(pending_head)
            if k:
                view[:k] = pending_head
                pending_head = b""
            got = handle.readinto(view[k:]) or 0
            count = k + got
            if not count:
                if pipeline is not None:
                    pipeline.free.put(buffer)
                break
            read_total += count
            if want_autov1:
                lo = max(AUTOV1_OFFSET, position)
                hi = min(AUTOV1_OFFSET + AUTOV1_LENGTH, position + count)
                if lo < hi:
                    autov1_parts.append(bytes(view[lo - position:hi - position]))
            if pipeline is not None:
                pipeline.feed(buffer, count)
            else:
                chunk = view[:count]
                for updater in updaters:
                    updater.update(chunk)
            if progress is not None:
                progress(count)
            position += count
            if not updaters and (not want_autov1 or position >= AUTOV1_OFFSET + AUTOV1_LENGTH):
                break
    finally:
        if pipeline is not None:
            pipeline.close()
    if want_autov1 and not updaters:
        # Only AutoV1 asked for: no need to have read the whole file.
        handle.seek(offset + AUTOV1_OFFSET)
        autov1_parts = [handle.read(AUTOV1_LENGTH)] if size > AUTOV1_OFFSET else []
        read_total = size
    if read_total != size:
        raise FileChangedError(f"{handle.name} changed size while it was read ({size} -> {read_total} bytes)")
    return {name: hex_digest(kind, hashers[name]) for name, kind, _ in jobs}, autov1_parts


FINGERPRINT_SAMPLE = 64 * 1024


def fingerprint(path: str | os.PathLike, size: int | None = None) -> str:
    """A cheap identity of a file's content: blake3 of its size and 64 KiB at head, middle and tail.

    Used to recognise a moved or copied file without hashing it; 32 upper-case hex characters.
    """
    with open(path, "rb", buffering=0) as handle:
        if size is None:
            size = os.fstat(handle.fileno()).st_size
        digest = blake3.blake3(size.to_bytes(8, "little"))
        if size <= 3 * FINGERPRINT_SAMPLE:
            digest.update(handle.read(size))
        else:
            for start in (0, size // 2 - FINGERPRINT_SAMPLE // 2, size - FINGERPRINT_SAMPLE):
                handle.seek(start)
                digest.update(handle.read(FINGERPRINT_SAMPLE))
    return digest.hexdigest(length=16).upper()


def sha256_file(path: str | os.PathLike) -> str:
    """The upper-case SHA256 of a whole file (copies checked after a move, preview images)."""
    return hash_file(path, want=("SHA256",))["SHA256"]


__all__ = ["hash_file", "sha256_file", "HASH_KEYS", "ALL_KEYS", "fingerprint"]
