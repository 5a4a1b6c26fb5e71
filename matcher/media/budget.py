"""A hard budget per file: extraction runs in worker processes with a CPU deadline and a memory cap.

The parsers are linear in their input, but a file written by a stranger must not be able to hang
or exhaust the run even through a parser bug not found yet. So each file is read and parsed in a
worker process that

- stops itself when the file has used ``seconds`` of CPU (``ITIMER_PROF``; the regex engine and
  Python code check for the signal), and
- may grow its address space by at most ``memory`` bytes plus the bytes of the file it holds
  (``RLIMIT_AS`` set per file; past it an allocation fails with ``MemoryError``), plus what the
  image decoders ask for their pixels through ``allow_pixels`` (at most ``pixels`` bytes: an
  8192 x 8192 upscale still gets its thumbnail).

Either way the file is recorded with an error (``BUDGET_TIME_ERROR``, ``BUDGET_MEMORY_ERROR``)
and the worker goes on with the next. A worker that does not answer within a wall-clock
backstop (a read that blocks, C code that never checks for signals) is killed and replaced; a
worker that dies is replaced too. Workers are started with ``fork`` where there is one.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger(__name__)

#: CPU seconds one file may take (the goal: no file over 2 s)
FILE_SECONDS = 2.0
#: bytes of memory one file may take beyond the worker's own and the file's bytes
FILE_MEMORY = 256 * 1024 * 1024
#: bytes more that decoded pixels may take (``allow_pixels``): an 8192 x 8192 RGBA image and the
#: premultiplied copy Pillow resizes it through
FILE_PIXELS = 512 * 1024 * 1024
BUDGET_TIME_ERROR = "over the time budget ({seconds:g} s of CPU); not read"
BUDGET_MEMORY_ERROR = "over the memory budget ({megabytes} MiB); not read"
WORKER_DIED_ERROR = "the reader stopped on this file ({why}); not read"


@dataclass(frozen=True)
class Budget:
    """What one file may take: CPU ``seconds`` and ``memory`` bytes (beyond the file's own bytes)."""

    seconds: float = FILE_SECONDS
    memory: int = FILE_MEMORY
    wall: float | None = None
    pixels: int = FILE_PIXELS

    @property
    def backstop(self) -> float:
        """Wall-clock seconds after which a silent worker is killed (``wall``, else 5x ``seconds``, >= 10)."""
        return self.wall if self.wall is not None else max(10.0, 5 * self.seconds)


class OverTime(BaseException):
    """Raised by the CPU timer; a BaseException, so the parsers' ``except Exception`` lets it through.

    The timer fires once: code that catches it (the thumbnail, the last and heaviest step) keeps
    what was read before and finishes without a timer (the wall-clock backstop still holds)."""


_OverTime = OverTime


def _on_prof(signum: int, frame: Any) -> None:
    raise _OverTime()


def _address_space() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


#: the memory cap of the call running in this worker: {"cap", "hard", "left"} (None outside one)
_current: dict[str, int] | None = None


def allow_pixels(nbytes: int) -> None:
    """Inside a budgeted call, let the file use ``nbytes`` more for decoded pixels (in all at most the
    budget's ``pixels``). Outside one (the Python API, the tests) it does nothing."""
    if _current is None or nbytes <= 0:
        return
    grant = min(nbytes, _current["left"])
    if grant > 0:
        _current["left"] -= grant
        _current["cap"] += grant
        resource.setrlimit(resource.RLIMIT_AS, (_current["cap"], _current["hard"]))


def _run_one(task: Callable[..., Any], args: tuple, size: int, budget: Budget) -> tuple[str, Any]:
    """Run ``task(*args)`` within the budget: ("ok", result) or ("error", message)."""
    global _current
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    base = _address_space()
    limited = False
    if base:
        cap = base + budget.memory + max(0, size)
        if hard == resource.RLIM_INFINITY or cap + budget.pixels < hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
            _current = {"cap": cap, "hard": hard, "left": budget.pixels}
            limited = True
    signal.setitimer(signal.ITIMER_PROF, budget.seconds)
    try:
        return "ok", task(*args)
    except _OverTime:
        return "error", BUDGET_TIME_ERROR.format(seconds=budget.seconds)
    except MemoryError:
        return "error", BUDGET_MEMORY_ERROR.format(megabytes=budget.memory >> 20)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        if limited:
            _current = None
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _serve(conn: Any, task: Callable[..., Any], budget: Budget) -> None:
    for module in ("numpy", "PIL.Image"):  # loaded once, before any file's memory cap
        try:
            __import__(module)
        except ImportError:  # pragma: no cover
            pass
    signal.signal(signal.SIGPROF, _on_prof)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        key, args, size = job
        try:
            outcome = _run_one(task, args, size, budget)
        except _OverTime:  # the timer fired between the call's end and its reset
            outcome = ("error", BUDGET_TIME_ERROR.format(seconds=budget.seconds))
        try:
            conn.send((key, *outcome))
        except MemoryError:
            conn.send((key, "error", BUDGET_MEMORY_ERROR.format(megabytes=budget.memory >> 20)))


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class _Worker:
    def __init__(self, task: Callable[..., Any], budget: Budget) -> None:
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, task, budget), daemon=True)
        self.process.start()
        child.close()
        self.job: tuple | None = None
        self.started = 0.0

    def give(self, job: tuple) -> None:
        self.job, self.started = job, time.monotonic()
        self.conn.send(job)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_budgeted(task: Callable[..., Any], jobs: Iterable[tuple[Any, tuple, int]], *,
                 budget: Budget = Budget(), workers: int = 1) -> Iterator[tuple[Any, str, Any]]:
    """Run ``task(*args)`` for each ``(key, args, size)`` in worker processes, each within ``budget``.

    Yields ``(key, "ok", result)`` or ``(key, "error", message)`` as they finish (not in order).
    ``task`` and ``args`` must be picklable when workers are spawned; results are always pickled.
    """
    pending = iter(jobs)
    pool = [_Worker(task, budget) for _ in range(max(1, workers))]
    idle = list(pool)
    busy: dict[Any, _Worker] = {}
    try:
        more = True
        while True:
            while more and idle:
                job = next(pending, None)
                if job is None:
                    more = False
                    break
                worker = idle.pop()
                worker.give(job)
                busy[worker.conn] = worker
            if not busy:
                return
            now = time.monotonic()
            timeout = max(0.0, min(w.started + budget.backstop for w in busy.values()) - now)
            for conn in wait(list(busy), timeout=timeout):
                worker = busy.pop(conn)
                try:
                    key, status, value = conn.recv()
                except (EOFError, OSError):  # it died: killed by the system, or a crash in C code
                    worker.process.join(timeout=1)
                    code = worker.process.exitcode
                    why = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                    job_key = worker.job[0]
                    idle.append(_replace(pool, worker, task, budget))
                    yield job_key, "error", WORKER_DIED_ERROR.format(why=why)
                else:
                    idle.append(worker)
                    yield key, status, value
            now = time.monotonic()
            for conn, worker in list(busy.items()):
                if now - worker.started > budget.backstop:
                    busy.pop(conn)
                    log.warning("killed the reader of %r after %.0f s", worker.job[0], now - worker.started)
                    job_key = worker.job[0]
                    idle.append(_replace(pool, worker, task, budget))  # before the yield: the caller may stop
                    yield job_key, "error", BUDGET_TIME_ERROR.format(seconds=budget.seconds)
    finally:
        for worker in pool:
            worker.stop(kill=worker.conn in busy)


def _replace(pool: list[_Worker], worker: _Worker, task: Callable[..., Any], budget: Budget) -> _Worker:
    worker.stop(kill=True)
    fresh = _Worker(task, budget)
    pool[pool.index(worker)] = fresh
    return fresh


def budgeted_call(task: Callable[..., Any], args: tuple, size: int = 0, *,
                  budget: Budget = Budget()) -> tuple[str, Any]:
    """One call within ``budget`` in a worker process: ("ok", result) or ("error", message)."""
    for _key, status, value in run_budgeted(task, [(0, args, size)], budget=budget):
        return status, value
    return "error", WORKER_DIED_ERROR.format(why="no answer")  # pragma: no cover


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
