"""A fake Civitai API on 127.0.0.1 for tests: real HTTP, scripted faults, a request counter.

Usage (the fixtures ``fake_civitai`` and ``fake_civitai_factory`` are registered for every test by
``pytest_plugins`` in tests/conftest.py)::

    from tests.fakeapi import make_model

    def test_something(fake_civitai):
        fake_civitai.add_models(make_model(i) for i in range(1, 51) if i % 3)  # ids 1..50, every third absent
        fake_civitai.script("/api/v1/models/4", [429, 500, "html", 200])       # faults, then normal
        fake_civitai.script("/api/v1/models/5", [(429, {"Retry-After": "0"})])  # status with headers
        url = fake_civitai.api_base        # "http://127.0.0.1:PORT/api/v1" -> pass as --api-base
        ...
        assert fake_civitai.count("/api/v1/models") == 1   # requests per path (query ignored)

The server runs in its own thread with its own event loop, so it serves sync code (CliRunner,
subprocesses) and async tests alike. Routes (Civitai's shapes):

* ``GET  /api/v1/models/{id}``                    model or 404 ``{"error": "No model with id N"}``
* ``GET  /api/v1/models?ids=1,2,...``             ``{"items": [...], "metadata": {...}}`` (absent ids dropped)
* ``GET  /api/v1/models?sort=Newest``             the newest (highest-id) models first
* ``GET  /api/v1/model-versions/{id}``            version + ``modelId`` + ``model{name,type,nsfw,poi}``
* ``GET  /api/v1/model-versions/by-hash/{hash}``  the same, found by any file hash
* ``POST /api/v1/model-versions/by-hash``         JSON list of SHA256 -> list of versions
* ``GET  /img/...``                               image bytes (``image/jpeg``); models' image URLs
                                                  (``https://image.civitai.com/...``) are served
                                                  rewritten to point here

Script actions, consumed one per request on that path (key: the path, or ``path?query`` exactly):
an ``int`` status (200 = answer normally), ``(status, {headers})``, ``"html"`` (a Cloudflare page
with status 200), ``"cut"`` (the body cut in half, consistent Content-Length), ``"short"``
(Content-Length promises more than is sent, then the connection closes), ``("slow", seconds)``
(sleep, then answer normally), ``"wrongid"`` (another model's body), ``"endless"`` (a 200 body that
never ends: chunked, until the client hangs up or ``ENDLESS_BYTES`` went out), ``"gzipbomb"`` (a
``Content-Encoding: gzip`` body that inflates without end: ~1 KB per MB of zeros), ``("raw",
content_type, body_bytes[, {headers}])`` (status 200 with exactly that). ``delay`` slows every request.

Faults and limits for whole crawls: ``faults(rate, kinds, seed)`` gives every request (without a
script) that chance of a fault drawn from ``kinds`` (default ``FAULT_KINDS``);
``rate_limit(rps, burst)`` answers 429 without Retry-After once a token bucket is empty (counted
in ``throttled``). ``image_base`` (another server's URL) puts the models' image URLs on that host.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
import threading
import time
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Any, Iterable

import pytest
from aiohttp import web

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "api"
IMAGE_HOST = "https://image.civitai.com"
FAULT_KINDS = (429, 500, 502, 503, 504, "html", "cut")
ENDLESS_BYTES = 1 << 30  # an "endless" body stops here, so the server itself is bounded
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>Cloudflare</body></html>"


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def make_model(model_id: int, template: str = "model_2026.json", versions: int | None = None) -> dict:
    """A model in Civitai's shape with ids derived from ``model_id`` (versions id*10+k, files id*100+k,
    images id*1000+k, hashes from sha256 of the file id)."""
    model = copy.deepcopy(load_fixture(template))
    model["id"] = model_id
    model["name"] = f"{model['name']} #{model_id}"
    if versions is not None:
        model["modelVersions"] = (model["modelVersions"] * versions)[:versions]
        model["modelVersions"] = [copy.deepcopy(v) for v in model["modelVersions"]]
    for k, version in enumerate(model["modelVersions"]):
        version["id"] = model_id * 10 + k
        if "modelId" in version:
            version["modelId"] = model_id
        for j, f in enumerate(version.get("files") or []):
            f["id"] = model_id * 100 + k * 10 + j
            sha = hashlib.sha256(f"file{f['id']}".encode()).hexdigest().upper()
            f["hashes"] = {"SHA256": sha, "AutoV2": sha[:10], "AutoV3": sha[-12:]}
            f["downloadUrl"] = f"https://civitai.com/api/download/models/{version['id']}"
        version["downloadUrl"] = f"https://civitai.com/api/download/models/{version['id']}"
        for j, image in enumerate(version.get("images") or []):
            image_id = model_id * 1000 + k * 10 + j
            head, _, _ = image["url"].rpartition("/")
            image["url"] = f"{head}/{image_id}.jpeg"
            if "id" in image:
                image["id"] = image_id
    return model


def image_bytes(path: str) -> bytes:
    """Deterministic fake JPEG bytes for an image path."""
    return b"\xff\xd8\xff\xe0" + hashlib.sha256(path.encode()).digest() * 8 + b"\xff\xd9"


class FakeCivitai:
    def __init__(self) -> None:
        self.models: dict[int, dict] = {}
        self.scripts: dict[str, deque] = {}
        self.requests: Counter = Counter()
        self.log: list[tuple[str, str, int]] = []
        self.delay = 0.0
        self.missing_images: set[str] = set()
        self.headers_seen: list[dict] = []
        self.image_base: str | None = None
        self.fault_rate = 0.0
        self.fault_kinds: tuple = FAULT_KINDS
        self._rng = random.Random(0)
        self._bucket: list[float] | None = None  # [rps, burst, tokens, last refill]
        self.throttled = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- set-up -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v1"

    def add_models(self, models: Iterable[dict]) -> "FakeCivitai":
        for m in models:
            self.models[m["id"]] = m
        return self

    def script(self, key: str, actions: list) -> "FakeCivitai":
        with self._lock:
            self.scripts[key] = deque(actions)
        return self

    def faults(self, rate: float, kinds: Iterable = FAULT_KINDS, seed: int = 0) -> "FakeCivitai":
        """Give every request without a script a ``rate`` chance of a fault drawn from ``kinds``."""
        with self._lock:
            self.fault_rate, self.fault_kinds, self._rng = rate, tuple(kinds), random.Random(seed)
        return self

    def rate_limit(self, rps: float | None, burst: float = 1.0) -> "FakeCivitai":
        """Answer 429 (no Retry-After) when more than ``rps`` requests a second (token bucket) arrive."""
        with self._lock:
            self._bucket = None if rps is None else [rps, burst, burst, time.monotonic()]
        return self

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(self.requests.values()) if path is None else self.requests[path]

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()

    # -- serving ------------------------------------------------------------------------------

    def _body(self, data: Any) -> bytes:
        text = json.dumps(data, ensure_ascii=False, indent=2)
        text = text.replace(IMAGE_HOST, self.image_base or f"{self.url}/img")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: sent as its \\uXXXX escape, as Civitai does
            return json.dumps(json.loads(text), ensure_ascii=True, indent=2).encode("ascii")

    def _next_action(self, request: web.Request):
        with self._lock:
            self.requests[request.path] += 1
            self.headers_seen.append(dict(request.headers))
            for key in (request.path_qs, request.path):
                queue = self.scripts.get(key)
                if queue:
                    return queue.popleft()
            bucket = self._bucket
            if bucket is not None:
                rps, burst, tokens, last = bucket
                now = time.monotonic()
                tokens = min(burst, tokens + (now - last) * rps)
                bucket[2:] = [tokens - 1 if tokens >= 1 else tokens, now]
                if tokens < 1:
                    self.throttled += 1
                    return 429
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_kinds)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        action = self._next_action(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(action, tuple) and action and action[0] == "slow":
            await asyncio.sleep(action[1])
            action = None
        if isinstance(action, int) and action != 200:
            return self._done(request, web.json_response({"error": f"scripted {action}"}, status=action))
        if isinstance(action, tuple) and isinstance(action[0], int):
            return self._done(request, web.json_response({"error": f"scripted {action[0]}"}, status=action[0],
                                                          headers=action[1]))
        if action == "html":
            return self._done(request, web.Response(body=HTML_PAGE, content_type="text/html"))
        if isinstance(action, tuple) and action[0] == "raw":
            headers = {"Content-Type": action[1], **(action[3] if len(action) > 3 else {})}
            return self._done(request, web.Response(body=action[2], headers=headers))
        if action in ("endless", "gzipbomb"):
            return await self._endless(request, action)
        status, body, ctype = self._answer(request, await request.read())
        if action == "wrongid" and status == 200:
            other = next((m for i, m in sorted(self.models.items()) if i != self._path_id(request)), {"id": -1})
            body = self._body(other)
        if action == "cut" and status == 200:
            body = body[: len(body) // 2]
        if action == "short" and status == 200:
            resp = web.StreamResponse(status=200, headers={"Content-Type": ctype})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            self._done(request, resp)
            request.transport.close()
            return resp
        return self._done(request, web.Response(body=body, status=status, content_type=ctype.split(";")[0]))

    async def _endless(self, request: web.Request, action: str) -> web.StreamResponse:
        """A 200 body without end (chunked), plain or as a gzip bomb, until the client hangs up."""
        image = request.path.startswith("/img/")
        headers = {"Content-Type": "image/jpeg" if image else "application/json"}
        if action == "gzipbomb":
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self._done(request, resp)
        squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if action == "gzipbomb" else None
        first = (b"\xff\xd8\xff\xe0" if image else b'{"items": [') + b"0" * 65532
        block = b"0" * (1 << 20) if squeeze else b"0" * 65536
        sent = 0
        try:
            while sent < ENDLESS_BYTES * (16 if squeeze else 1):
                data = first if sent == 0 else block
                sent += len(data)
                await resp.write(squeeze.compress(data) if squeeze else data)
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        return resp

    def _done(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        with self._lock:
            self.log.append((request.method, request.path_qs, resp.status))
        return resp

    @staticmethod
    def _path_id(request: web.Request) -> int | None:
        tail = request.path.rstrip("/").rsplit("/", 1)[-1]
        return int(tail) if tail.isdigit() else None

    def _versions(self):
        for model in self.models.values():
            for version in model.get("modelVersions") or []:
                yield model, version

    def _version_answer(self, model: dict, version: dict) -> dict:
        out = {k: v for k, v in version.items() if k not in ("files", "images", "downloadUrl")}
        out["modelId"] = model["id"]
        out["model"] = {"name": model.get("name"), "type": model.get("type"), "nsfw": model.get("nsfw", False),
                        "poi": model.get("poi", False)}
        out["files"] = version.get("files") or []
        out["images"] = version.get("images") or []
        out["downloadUrl"] = version.get("downloadUrl")
        return out

    def _answer(self, request: web.Request, raw: bytes) -> tuple[int, bytes, str]:
        path = request.path
        js = "application/json; charset=utf-8"
        parts = path.strip("/").split("/")
        if parts[0] == "img":
            if path in self.missing_images:
                return 404, b"not found", "text/plain"
            return 200, image_bytes(path), "image/jpeg"
        if parts[:2] != ["api", "v1"]:
            return 404, self._body({"error": "Not found"}), js
        rest = parts[2:]
        if rest == ["models"]:
            q = request.query
            items = list(self.models.values())
            if "ids" in q:
                try:
                    wanted = [int(x) for x in q["ids"].split(",") if x]
                except ValueError:
                    return 400, self._body({"error": "invalid ids"}), js
                items = [self.models[i] for i in wanted if i in self.models]
            if q.get("sort") == "Newest":
                items = sorted(items, key=lambda m: -m["id"])
            limit = int(q.get("limit", 100))
            return 200, self._body({"items": items[:limit], "metadata": {"nextCursor": None}}), js
        if len(rest) == 2 and rest[0] == "models":
            if not rest[1].isdigit() or not (0 < int(rest[1]) <= 2147483647):
                return 400, self._body({"error": "invalid id"}), js
            model = self.models.get(int(rest[1]))
            if model is None:
                return 404, self._body({"error": f"No model with id {int(rest[1])}"}), js
            return 200, self._body(model), js
        if len(rest) == 2 and rest[0] == "model-versions" and rest[1].isdigit():
            for model, version in self._versions():
                if version["id"] == int(rest[1]):
                    return 200, self._body(self._version_answer(model, version)), js
            return 404, self._body({"error": "Model not found"}), js
        if rest[:2] == ["model-versions", "by-hash"]:
            if request.method == "POST":
                hashes = [h.upper() for h in json.loads(raw or b"[]")]
                if len(hashes) > 100:
                    return 400, self._body({"error": "too many hashes"}), js
                out = []
                for h in hashes:
                    for model, version in self._versions():
                        if any(f.get("hashes", {}).get("SHA256") == h for f in version.get("files") or []):
                            out.append(self._version_answer(model, version))
                return 200, self._body(out), js
            if len(rest) == 3:
                h = rest[2].upper()
                for model, version in self._versions():
                    for f in version.get("files") or []:
                        if h in (v.upper() for v in (f.get("hashes") or {}).values()):
                            return 200, self._body(self._version_answer(model, version)), js
                return 404, self._body({"error": "Model not found"}), js
        return 404, self._body({"error": "Not found"}), js

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "FakeCivitai":
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-civitai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture
def fake_civitai_factory():
    """Start any number of fake servers (e.g. a .com and a .red host); all stop after the test."""
    servers: list[FakeCivitai] = []

    def start() -> FakeCivitai:
        server = FakeCivitai().start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fake_civitai(fake_civitai_factory) -> FakeCivitai:
    """One running fake Civitai API (no models until the test adds some)."""
    return fake_civitai_factory()
