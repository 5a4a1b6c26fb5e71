"""The tests' fake Civitai API (tests/fakeapi.py) in a child process, for the crawl benchmarks.

In its own process the server does not share the crawler's GIL. ``remote_fake(n)`` starts it with
models 1..n (every third id absent) and yields a :class:`RemoteFake` that scripts it over a pipe:
``call("faults", (rate, seed[, kinds]))``, ``call("limit", (rps, burst))`` or ``call("limit", None)``,
``reset_counts()``, ``count()`` (requests so far), ``call("count")`` (requests, 429s of the limit).
"""
from __future__ import annotations

import multiprocessing
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiohttp import web  # noqa: E402

from tests.fakeapi import FAULT_KINDS, FakeCivitai, make_model  # noqa: E402

JSON = "application/json; charset=utf-8"


class FastFake(FakeCivitai):
    """The test fake, answering ``/models/{id}`` and ``/models?ids=`` from bodies encoded once: its
    per-request ``json.dumps`` of every model would otherwise be most of what a client waits for.
    With no script, fault or limit set, ``/models/{id}`` also skips the fake's bookkeeping."""

    def encode_all(self) -> None:
        self.bodies = {i: self._body(m) for i, m in self.models.items()}

    async def _handle(self, request):
        path = request.path
        tail = path.rsplit("/", 1)[-1]
        if (path.startswith("/api/v1/models/") and tail.isdigit() and not self.scripts
                and not self.fault_rate and self._bucket is None):
            with self._lock:
                self.requests[path] += 1
            body = self.bodies.get(int(tail))
            if body is None:
                return web.Response(body=self._body({"error": f"No model with id {int(tail)}"}), status=404,
                                    content_type="application/json")
            return web.Response(body=body, content_type="application/json")
        return await super()._handle(request)

    def _answer(self, request, raw):
        parts = request.path.strip("/").split("/")
        if parts == ["api", "v1", "models"] and "ids" in request.query:
            wanted = [int(x) for x in request.query["ids"].split(",") if x.isdigit()]
            items = b",\n".join(self.bodies[i] for i in wanted if i in self.bodies)
            return 200, b'{"items": [' + items + b'], "metadata": {"nextCursor": null}}', JSON
        if parts[:3] == ["api", "v1", "models"] and len(parts) == 4 and parts[3].isdigit():
            body = self.bodies.get(int(parts[3]))
            if body is not None:
                return 200, body, JSON
        return super()._answer(request, raw)


def serve(n: int, conn) -> None:
    """Child process: the fake API with models 1..n (every third absent); commands over a pipe."""
    fake = FastFake().start()
    fake.add_models(make_model(i) for i in range(1, n + 1) if i % 3)
    fake.encode_all()
    conn.send(fake.api_base)
    while True:
        cmd, arg = conn.recv()
        if cmd == "count":
            conn.send((fake.count(), fake.throttled))
            continue
        if cmd == "reset":
            fake.reset_counts()
            fake.throttled = 0
        elif cmd == "faults":
            fake.faults(arg[0], arg[2] if len(arg) > 2 else FAULT_KINDS, seed=arg[1])
        elif cmd == "limit":
            fake.rate_limit(*arg) if arg else fake.rate_limit(None)
        elif cmd == "stop":
            fake.stop()
            conn.send(None)
            return
        conn.send(None)


class RemoteFake:
    def __init__(self, conn):
        self.conn = conn
        self.api_base = conn.recv()

    def call(self, cmd, arg=None):
        self.conn.send((cmd, arg))
        return self.conn.recv()

    def count(self) -> int:
        return self.call("count")[0]

    def reset_counts(self) -> None:
        self.call("reset")


@contextmanager
def remote_fake(n: int) -> Iterator[RemoteFake]:
    """The fake API with models 1..n in a child process, stopped on the way out."""
    ctx = multiprocessing.get_context("spawn")
    pipe, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(n, child), daemon=True)
    proc.start()
    fake = RemoteFake(pipe)
    try:
        yield fake
    finally:
        fake.call("stop")
        proc.join(10)
