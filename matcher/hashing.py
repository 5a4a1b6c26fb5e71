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
Files of ``MAPPED_MIN_SIZE`` or more skip even the copy into our buffers: a helper process maps the
file and its hasher threads read the page cache directly, in step, chunk by chunk (still one pass
over the disk). It is a separate process because a file truncated under a memory map raises SIGBUS,
which would kill a scan; here it kills only the helper, and the file is reported as changed.

``fingerprint`` is a cheap sampled identity (size + head/middle/tail) used to recognise a moved
file without hashing it; it is not a Civitai hash.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import mmap
import os
import queue
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

import blake3

from mirror.hashes import EMPTY_SHA256

try:  # ISA-L's crc32 (carry-less multiply) is ~10x zlib's; same CRC-32, same values
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - optional speed-up
    _crc32 = zlib.crc32

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
#: how far the mapped hashers may run apart (they wait for each other after every chunk)
MAPPED_CHUNK_SIZE = 16 << 20

log = logging.getLogger(__name__)

# `want` names -> the hashers they need.
_NEEDS = {
    "SHA256": "sha256", "AutoV2": "sha256", "AutoV1": "autov1", "AutoV1_A1111": "autov1",
    "AutoV3": "autov3", "AutoV3_full": "autov3", "CRC32": "crc32", "BLAKE3": "blake3",
}


class FileChangedError(OSError):
    """The file's size changed while it was read (it is still being written)."""


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


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = _crc32(data, self.value)


def _new_hasher(kind: str) -> Any:
    return {"sha256": hashlib.sha256, "blake3": blake3.blake3, "crc32": _Crc32}[kind]()


def _digest(kind: str, hasher: Any) -> str:
    if kind == "crc32":  # Civitai prints the CRC's bytes little-endian
        return hasher.value.to_bytes(4, "little").hex().upper()
    return hasher.hexdigest().upper()


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
        digests = _hash_mapped(path, offset, size, jobs, progress) if mapped and jobs else None
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
    hashers = {name: _new_hasher(kind) for name, kind, _ in jobs}
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
    return {name: _digest(kind, hashers[name]) for name, kind, _ in jobs}, autov1_parts


# --- Large files: hashed from a memory map, in a helper process --------------------------------------
#
# Protocol on the helper's stdin/stdout, one line per message:
#   request  {"path": str, "offset": int, "size": int, "jobs": [[name, kind, start], ...]}
#   replies  "P <bytes>" after every chunk, then "R <json {name: hex}>" or "E <changed|error> <message>"


def _mapped_digests(path: str, offset: int, size: int, jobs: list, report: Callable[[int], None]) -> dict[str, str]:
    """The helper's side: every job hashes its range of the mapped file; the threads keep in step."""
    with open(path, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size != offset + size:
            raise FileChangedError(f"{path} changed size before it was hashed")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            digests = _hash_mapping(mapping, offset, size, jobs, report)
        if os.fstat(handle.fileno()).st_size != offset + size:
            raise FileChangedError(f"{path} changed size while it was read")
    return digests


def _hash_mapping(mapping: mmap.mmap, offset: int, size: int, jobs: list,
                  report: Callable[[int], None]) -> dict[str, str]:
    """Every job hashes its range of ``mapping``, one thread each, in step every chunk."""
    if hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_SEQUENTIAL)
    view = memoryview(mapping)
    end = offset + size
    steps = [(lo, min(end, lo + MAPPED_CHUNK_SIZE)) for lo in range(offset, end, MAPPED_CHUNK_SIZE)]
    hashers = [(name, kind, _new_hasher(kind), offset + start) for name, kind, start in jobs]
    done = iter(steps)

    def step_done() -> None:
        lo, hi = next(done)
        report(hi - lo)

    barrier = threading.Barrier(len(hashers), action=step_done) if len(hashers) > 1 else None
    failures: list[BaseException] = []

    def run(hasher: Any, first: int) -> None:
        try:
            for lo, hi in steps:
                lo = max(lo, first)
                if lo < hi:
                    hasher.update(view[lo:hi])
                if barrier is not None:
                    barrier.wait()
                else:
                    step_done()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # pragma: no cover - hashers do not fail
            failures.append(exc)
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=run, args=(h, first), name="mapped-hash") for _, _, h, first in hashers[1:]]
    for thread in threads:
        thread.start()
    run(hashers[0][2], hashers[0][3])
    for thread in threads:
        thread.join()
    view.release()
    if failures:
        raise failures[0]
    return {name: _digest(kind, hasher) for name, kind, hasher, _ in hashers}


def _serve_mapped() -> None:
    """The helper process's loop: one request per stdin line, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out = sys.stdout.buffer

    def send(line: str) -> None:
        out.write(line.encode() + b"\n")
        out.flush()

    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            digests = _mapped_digests(request["path"], request["offset"], request["size"],
                                      request["jobs"], lambda n: send(f"P {n}"))
        except FileChangedError as exc:
            send(f"E changed {exc}")
        except Exception as exc:
            send(f"E error {exc}")
        else:
            send("R " + json.dumps(digests))


class _MappedHelper:
    """One helper process (``python -c "...hashing._serve_mapped()"``), reused for many files."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # so the helper imports this same package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from matcher.hashing import _serve_mapped; _serve_mapped()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def hash(self, path: str, offset: int, size: int, jobs: list, progress: Callable[[int], None] | None) -> dict:
        request = {"path": path, "offset": offset, "size": size, "jobs": jobs}
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it is gone: the read below says how
        for line in self.process.stdout:
            tag, _, rest = line.rstrip(b"\n").partition(b" ")
            if tag == b"P":
                if progress is not None:
                    progress(int(rest))
            elif tag == b"R":
                return json.loads(rest)
            else:
                why, _, message = rest.decode(errors="replace").partition(" ")
                raise (FileChangedError if why == "changed" else OSError)(message)
        code = self.process.wait()
        if code == -getattr(signal, "SIGBUS", 7):
            raise FileChangedError(f"{path} changed while it was read (it shrank under the memory map)")
        raise OSError(f"the hash helper for {path} stopped (exit status {code})")

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
            self.process.kill()


_idle_helpers: list[_MappedHelper] = []
_helpers_lock = threading.Lock()
_helpers_broken = False


def _hash_mapped(path: str | os.PathLike, offset: int, size: int, jobs: list,
                 progress: Callable[[int], None] | None) -> dict[str, str] | None:
    """Digests from a helper process, or ``None`` when no helper can run here (the caller reads)."""
    global _helpers_broken
    if _helpers_broken:
        return None
    with _helpers_lock:
        helper = _idle_helpers.pop() if _idle_helpers else None
    if helper is None:
        try:
            helper = _MappedHelper()
        except OSError as exc:  # pragma: no cover - no subprocesses on this platform
            log.warning("hashing large files without a helper process: %s", exc)
            _helpers_broken = True
            return None
    try:
        return helper.hash(os.fspath(path), offset, size, [list(job) for job in jobs], progress)
    finally:
        if helper.process.poll() is None:  # answered (digests or an error): reuse it; a dead one is dropped
            with _helpers_lock:
                _idle_helpers.append(helper)


@atexit.register
def _close_helpers() -> None:
    with _helpers_lock:
        helpers, _idle_helpers[:] = list(_idle_helpers), []
    for helper in helpers:
        helper.close()


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


__all__ = ["hash_file", "sha256_file", "FileChangedError", "HASH_KEYS", "ALL_KEYS", "EMPTY_SHA256",
           "fingerprint"]
