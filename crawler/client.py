"""The one HTTP choke point: one aiohttp session, one tenacity retry policy, one shared rate limiter.

Everything that talks to Civitai (``crawl``, ``get``, ``crawl --images``, ``match --online``) goes
through :class:`CivitaiClient`::

    async with CivitaiClient(["https://civitai.com/api/v1"], api_key=None) as client:
        response = await client.get_json("https://civitai.com/api/v1/models/4437")
        if response.outcome == "ok":
            print(response.data["name"])

Every request ends in one of three outcomes (404 is data, not an error):

* ``ok``       — status 200 and the body passed the caller's ``validate`` function;
* ``notfound`` — status 404 (or ``validate`` raised :class:`NotFound`);
* ``error``    — anything else once the built-in retries are used up (``reason`` says why).

Connection errors, timeouts, 429, 500, 502, 503, 504, and bodies that ``validate`` rejects
(a Cloudflare HTML page with status 200, a cut-off body, a wrong id) are retried with exponential
back-off and jitter. A 429 pauses *every* request of the client (``Retry-After`` when given, else
an adaptive pause that starts short and grows up to ``sleep_429`` while 429s continue) and widens
the shared request interval, which relaxes again as requests succeed (:mod:`crawler.limits`).

Bodies are capped (``max_body`` for API answers, ``max_image`` per image), compressed and
inflated (:mod:`crawler.bodies`); a body over the cap is an error, not retried. The API key is sent
as a Bearer header only to the API bases' origins (scheme, host and port), and never logged.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type
from yarl import URL

from crawler.bodies import (ACCEPT_ENCODING, DEFAULT_MAX_BODY, DEFAULT_MAX_IMAGE, MAGIC_BYTES, BodyReader,
                            Corrupt, Refused, media_content_type, media_kind, read_body)
from crawler.layout import loads_lone_surrogates
from crawler.limits import QUICK_RETRY, RateLimiter, parse_retry_after
from crawler.site import DEFAULT_API_BASE


log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
try:  # the installed distribution's version (civitai_mirror.__version__, through pyproject)
    _VERSION = _metadata.version("civitai-mirror")
except _metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    _VERSION = "0+unknown"
USER_AGENT = f"civitai-mirror/{_VERSION} (+https://github.com/civitai-mirror)"


class Retryable(Exception):
    """A failure worth another attempt (status in RETRY_STATUSES, bad body, ...)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


class Invalid(Retryable):
    """The body came back with status 200 but is not what was asked for (HTML, cut off, wrong id)."""

    def __init__(self, reason: str):
        super().__init__(reason, status=200)


class NotFound(Exception):
    """Raised by a validate function when a 200 body says "not found" (dumptool's rule)."""


RETRY_EXCEPTIONS = (Retryable, aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(slots=True)
class Response:
    url: str | URL  # as given to the request
    outcome: str  # ok | notfound | error
    status: int | None = None
    data: Any = None
    reason: str = ""
    attempts: int = 0
    nbytes: int = 0
    host: str = ""
    throttled: int = 0  # attempts answered with 429 (they have their own budget, see CivitaiClient)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    statuses: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def rps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.requests / elapsed if elapsed > 0 else 0.0

    def bandwidth(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.bytes / elapsed if elapsed > 0 else 0.0


_JSON_STARTS = (b"{", b"[")


def parse_json_body(body: bytes) -> Any:
    """Parse a JSON body; an HTML page or a cut-off body raises :class:`Invalid`.

    A string with a lone surrogate escape (``"\\ud83d"``, an emoji cut in half by the sender) is
    valid JSON that orjson refuses (it only makes valid UTF-8); such a body is parsed by the
    standard library instead, which keeps the surrogate, so the record is not lost."""
    if body[:1] not in _JSON_STARTS and body[:200].lstrip().startswith(b"<"):
        raise Invalid("html page instead of JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            try:
                return loads_lone_surrogates(body)
            except ValueError:
                raise Invalid(f"body is not valid JSON ({len(body)} bytes)") from None
        raise Invalid(f"body is not complete JSON ({len(body)} bytes)") from None


def host_of(url: str) -> str:
    """The ``host[:port]`` of a URL (``urlsplit(url).netloc``; a plain split for the usual
    ``scheme://host/path`` shape, which the crawl asks once per request)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.isalpha():
        end = len(rest)
        for ch in "/?#":
            i = rest.find(ch)
            if i != -1 and i < end:
                end = i
        return rest[:end]
    return urlsplit(url).netloc


class CivitaiClient:
    """One aiohttp session + retry policy + shared limiter. Use as ``async with``."""

    def __init__(
        self,
        api_bases: list[str] | tuple[str, ...] | None = None,
        *,
        api_key: str | None = None,
        threads: int = 5,
        max_rps: float | None = None,
        retries: int = 4,
        timeout: float = 30.0,
        sleep_retries: float = 1.0,
        sleep_429: float = 30.0,
        max_body: int = DEFAULT_MAX_BODY,
        max_image: int = DEFAULT_MAX_IMAGE,
    ):
        self.api_bases = [b.rstrip("/") for b in (api_bases or [DEFAULT_API_BASE])]
        # Per API base: its host (for Response.host) and its parsed URL with the path prefix,
        # for :meth:`api_url` (no parsing or percent-encoding pass per request).
        self.hosts = {b: host_of(b) for b in self.api_bases}
        self._base_urls = {b: (u, u.raw_path.rstrip("/")) for b, u in ((b, URL(b)) for b in self.api_bases)}
        # the only origins (scheme, host, port) that ever see the API key
        self._origins = frozenset(_origin(u) for u, _ in self._base_urls.values())
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.threads = max(1, threads)
        self.retries = max(0, retries)
        self.timeout = timeout
        self.sleep_retries = sleep_retries
        self.sleep_429 = sleep_429
        self.max_body = max_body
        self.max_image = max_image
        self.limiter = RateLimiter(max_rps, ceiling=sleep_429, threads=self.threads)
        self.stats = ClientStats()
        self.session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key
        return f"CivitaiClient(api_bases={self.api_bases!r}, api_key={'***' if self._auth else None})"

    async def __aenter__(self) -> "CivitaiClient":
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        if self._auth:
            log.debug("Using api_key authentication for %s", ", ".join(sorted(self.hosts.values())))
        connector = aiohttp.TCPConnector(limit=self.threads * 2, limit_per_host=self.threads, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 15)),
            raise_for_status=False,
            auto_decompress=False,  # crawler.bodies inflates, with a cap
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _headers_for(self, url: str | URL) -> dict | None:
        """The Authorization header when ``url`` is on an API base's origin, else None (aiohttp
        itself drops it on a redirect to another origin)."""
        if self._auth is None:
            return None
        try:
            origin = _origin(url if isinstance(url, URL) else URL(url))
        except (ValueError, TypeError):
            return None
        return self._auth if origin in self._origins else None

    # -- the retry policy -------------------------------------------------------------------

    def _delay(self, exc: BaseException | None, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) that raised ``exc``.

        A 429 waits in the shared limiter. Another failure while the other requests still succeed
        is retried soon (at random up to ``QUICK_RETRY``, doubling); when everything fails, after
        ``sleep_retries`` seconds, doubling per attempt (cap 30 s), with jitter."""
        if isinstance(exc, Retryable) and exc.status == 429:
            return 0.0  # the shared limiter holds everybody back
        fluke = self.limiter.failed()
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            return exc.retry_after
        if fluke:  # "full jitter": anywhere up to QUICK_RETRY, doubling
            return random.uniform(0, min(QUICK_RETRY, self.sleep_retries) * (2 ** (attempt - 1)))
        return min(self.sleep_retries * (2 ** (attempt - 1)), 30.0) + random.uniform(0, self.sleep_retries)

    def _retrying(self, result: Response) -> AsyncRetrying:
        """The retry policy for the attempts after the first one (already made)."""
        def wait(retry_state) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            return self._delay(exc, result.attempts - result.throttled)

        return AsyncRetrying(
            stop=lambda _state: self._exhausted(result),
            wait=wait,
            retry=retry_if_exception_type(RETRY_EXCEPTIONS),
            reraise=True,
        )

    def _exhausted(self, result: Response) -> bool:
        """Whether ``result`` has used up its retries: ``retries`` failures other than 429, or
        ``retries`` 429s more than it takes the adaptive pause to reach its ceiling."""
        throttled = result.throttled
        return (result.attempts - throttled > self.retries
                or throttled > self.retries + (self.limiter.steps if self.retries else 0))

    async def _with_retries(self, attempt: Callable[[], Awaitable[Response]], result: Response,
                            failed: BaseException | None = None) -> Response:
        """Run ``attempt()`` under the retry policy; when every attempt failed, ``result`` with the
        last failure's reason. ``failed``: the first attempt was already made (by the caller) and
        raised this.

        The first attempt runs bare (a tenacity loop costs ~0.1 ms per request, as much as the
        request itself against a fast server); only when it fails with a retryable error do the
        remaining attempts go through tenacity, with the same stop, wait and retry rules."""
        try:
            if failed is None:
                try:
                    return await attempt()
                except RETRY_EXCEPTIONS as exc:
                    failed = exc
            if self._exhausted(result):
                raise failed
            await asyncio.sleep(self._delay(failed, result.attempts - result.throttled))
            async for state in self._retrying(result):
                with state:
                    return await attempt()
            raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
        except Retryable as exc:
            result.reason = exc.reason
        except asyncio.TimeoutError:
            result.reason = "timeout"
        except aiohttp.ClientError as exc:
            result.reason = f"{type(exc).__name__}: {exc}".replace("\t", " ").replace("\n", " ")[:200]
        return result

    def _check_status(self, resp: aiohttp.ClientResponse, result: Response, epoch: int) -> None:
        if resp.status in RETRY_STATUSES:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if resp.status == 429:
                result.throttled += 1
                self.limiter.too_many_requests(retry_after, epoch)
            raise Retryable(f"HTTP {resp.status}", retry_after=retry_after, status=resp.status)

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: dict | None = None,
        json: Any = None,
        validate: Callable[[Any], Any] | None = None,
        host: str | None = None,
    ) -> Response:
        """One JSON request with retries. ``validate(parsed)`` may return a replacement value,
        raise :class:`Invalid` (retried) or :class:`NotFound`. ``url``: a string or a ``yarl.URL``
        (see :meth:`api_url`); ``host``: its host when the caller knows it (``self.hosts[base]``)."""
        assert self.session is not None, "use 'async with CivitaiClient(...)'"
        result = Response(url, "error", host=host or host_of(str(url)))
        # The first attempt is awaited directly (no closure, no extra coroutine layer: this is the
        # path of every request of a crawl); a retryable failure hands over to the retry policy.
        try:
            return await self._attempt(result, method, url, params, json, validate)
        except RETRY_EXCEPTIONS as exc:
            failed = exc
        return await self._with_retries(
            functools.partial(self._attempt, result, method, url, params, json, validate), result, failed)

    def api_url(self, base: str, path: str) -> URL:
        """``base + path`` as a ready ``yarl.URL``; ``path`` (like ``/models/123``) must be
        percent-encoded already. Built from the base's parts parsed once: aiohttp would otherwise
        parse and percent-encode the string URL of every request."""
        url, prefix = self._base_urls[base]
        return url.with_path(prefix + path, encoded=True)  # ~1.5 us; URL(str) ~6 us, URL.build ~2.5 us

    async def _attempt(self, result: Response, method: str, url: str | URL, params: dict | None, json: Any,
                       validate: Callable[[Any], Any] | None) -> Response:
        """One attempt of :meth:`request`; raises what the retry policy retries."""
        result.attempts += 1
        if result.attempts > 1:
            self.stats.retries += 1
        limiter = self.limiter
        if limiter.engaged and limiter.busy():
            await limiter.acquire()
        epoch = limiter.epoch
        self.stats.requests += 1
        headers = self._headers_for(url) if self._auth else None
        try:
            async with self.session.request(method, url, params=params, json=json, headers=headers) as resp:
                status = resp.status
                body = await read_body(resp, self.max_body)
        except Refused as exc:  # too large, an unknown encoding: an error for this request, not retried
            self.stats.statuses[resp.status] += 1
            result.status = resp.status
            result.reason = exc.reason
            return result
        except Corrupt as exc:
            raise Invalid(str(exc)) from None
        self.stats.bytes += len(body)
        self.stats.statuses[status] += 1
        result.status = status
        result.nbytes = len(body)
        if status in RETRY_STATUSES:
            self._check_status(resp, result, epoch)
        if status == 404:
            result.outcome = "notfound"
            result.data = _maybe_json(body)
            limiter.success()
            return result
        if status != 200:
            result.reason = f"HTTP {status}"
            result.data = _maybe_json(body)
            return result  # other 4xx: not retried
        data = parse_json_body(body)
        if validate is not None:
            try:
                replaced = validate(data)
            except NotFound:
                result.outcome = "notfound"
                result.data = data
                limiter.success()
                return result
            if replaced is not None:
                data = replaced
        limiter.success()
        result.outcome = "ok"
        result.data = data
        return result

    async def get_json(self, url: str, *, params: dict | None = None, validate=None) -> Response:
        return await self.request("GET", url, params=params, validate=validate)

    async def download(self, url: str, dest: Path) -> Response:
        """Stream the image or video at ``url`` into ``dest`` atomically (``dest.part`` then
        ``os.replace``), with retries and at most ``max_image`` bytes.

        Only an image or a video is saved: a 200 with a Cloudflare HTML page is retried; any other
        Content-Type that is not ``image/*`` or ``video/*`` (SVG included), or content whose first
        bytes are no known image or video format, is an error (not retried) and nothing is kept."""
        assert self.session is not None, "use 'async with CivitaiClient(...)'"
        result = Response(url=url, outcome="error", host=host_of(url))
        part = dest.with_name(dest.name + ".part")

        async def attempt() -> Response:
            result.attempts += 1
            if result.attempts > 1:
                self.stats.retries += 1
            await self.limiter.acquire()
            epoch = self.limiter.epoch
            self.stats.requests += 1
            try:
                size = await self._save_media(result, url, part, epoch)
            except Refused as exc:
                result.reason = exc.reason
                return result
            except Corrupt as exc:
                raise Invalid(str(exc)) from None
            if size is None:  # a 404 or another final status
                return result
            os.replace(part, dest)
            self.limiter.success()
            result.outcome = "ok"
            result.nbytes = size
            return result

        try:
            return await self._with_retries(attempt, result)
        finally:
            if result.outcome != "ok":
                try:
                    part.unlink()
                except FileNotFoundError:
                    pass

    async def _save_media(self, result: Response, url: str, part: Path, epoch: int) -> int | None:
        """One attempt of :meth:`download`: the bytes written to ``part``, or None (404, other 4xx)."""
        async with self.session.get(url, headers=self._headers_for(url)) as resp:
            self.stats.statuses[resp.status] += 1
            result.status = resp.status
            self._check_status(resp, result, epoch)
            if resp.status == 404:
                result.outcome = "notfound"
                return None
            if resp.status != 200:
                result.reason = f"HTTP {resp.status}"
                return None
            ctype = resp.headers.get("Content-Type", "").lower()
            if ctype.startswith("text/html"):
                raise Invalid(f"unexpected content type {ctype!r}")
            try:
                size, head, reader = await self._write_media(resp, ctype, part)
            except (Refused, Invalid):
                resp.close()  # the rest of the body is not read, nor the connection reused
                raise
            expected = resp.content_length
            if expected is not None and reader.received != expected:
                raise Invalid(f"cut-off body ({reader.received} of {expected} bytes)")
            if size == 0:
                raise Invalid("empty body")
            if media_kind(head) is None:
                raise Refused("not an image or video (too short to be one)")
            return size


    async def _write_media(self, resp: aiohttp.ClientResponse, ctype: str, part: Path) -> tuple[int, bytes, BodyReader]:
        """Write the body of an image answer to ``part``: (bytes written, its first bytes, the reader)."""
        if not media_content_type(ctype):
            raise Refused(f"not an image or video (Content-Type {ctype[:60] or 'none'!r})")
        reader = BodyReader(resp, self.max_image, "image")
        part.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        head = b""
        with open(part, "wb") as fh:
            async for chunk in reader.chunks():
                if len(head) < MAGIC_BYTES:
                    head += chunk[:MAGIC_BYTES]
                    if len(head) >= MAGIC_BYTES and media_kind(head) is None:
                        raise Refused(f"not an image or video (a {ctype[:60]!r} answer whose content "
                                      "is no known image or video format)")
                fh.write(chunk)
                size += len(chunk)
                self.stats.bytes += len(chunk)
        return size, head, reader


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def _maybe_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
