"""Large files hashed from a memory map in a helper process: no copy into our buffers, one pass.

``hash_mapped(path, offset, size, jobs, progress)`` sends the file to a helper process (started on
first use, kept for the next file, closed at exit), whose hasher threads read the page cache
directly, in step every ``MAPPED_CHUNK_SIZE`` bytes, so the disk is still read once. It is a separate
process because a file truncated under a memory map raises SIGBUS, which would kill a scan; here it
kills only the helper, and the file is reported as changed (``FileChangedError``). ``jobs`` are
``(name, hasher kind, first byte it hashes)``; the answer is ``{name: hex digest}``, or ``None`` when
no helper can run here (the caller then reads the file itself).
"""
from __future__ import annotations

import atexit
import json
import logging
import mmap
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

from matcher.hashers import FileChangedError, hex_digest, new_hasher

#: how far the mapped hashers may run apart (they wait for each other after every chunk)
MAPPED_CHUNK_SIZE = 16 << 20

log = logging.getLogger(__name__)

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
    hashers = [(name, kind, new_hasher(kind), offset + start) for name, kind, start in jobs]
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
    return {name: hex_digest(kind, hasher) for name, kind, hasher, _ in hashers}


def serve() -> None:
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


#: The helper's program: this process's import path first, so that it imports this same ``matcher``
#: (a source checkout, an editable install or a wheel alike) and not one its working folder shadows.
_HELPER_CODE = "import sys; sys.path[:0] = {path!r}; from matcher.mapped import serve; serve()"


class _MappedHelper:
    """One helper process (``python -c "...; matcher.mapped.serve()"``), reused for many files."""

    def __init__(self) -> None:
        path = [entry for entry in sys.path if isinstance(entry, str)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER_CODE.format(path=path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

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


def hash_mapped(path: str | os.PathLike, offset: int, size: int, jobs: list,
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
