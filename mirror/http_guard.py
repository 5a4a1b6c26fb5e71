"""What ``serve`` lets in: known Host headers only, and small request bodies read with a deadline.

An ASGI wrapper around Datasette. A browser page on another site can point its own host name at
127.0.0.1 (DNS rebinding) and read the served pages as its own; it cannot make the browser send
our host name, so a request whose ``Host`` is not one the server answers to gets 400. A request
body (the by-hash POSTs are the only ones the API takes; 100 hashes are 7 KB) is read here, at most
``MAX_BODY_BYTES`` (``BODY_CAPS`` for the paths that take more) and within ``BODY_TIMEOUT_S``,
before Datasette sees it: a larger one is 413, a slow one 408, and neither is ever parsed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from typing import Any, Awaitable, Callable

MAX_BODY_BYTES = 64 * 1024
#: paths whose body may be larger: by-hash/ids takes up to 10 000 SHA256 (67 bytes each in JSON)
BODY_CAPS = {"/api/v1/model-versions/by-hash/ids": 768 * 1024}
BODY_TIMEOUT_S = 30
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
ANY_HOST = "*"

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def host_name(header: str) -> str:
    """``Example.COM.:8001`` -> ``example.com``; ``[::1]:8001`` -> ``[::1]`` (the port dropped)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[:end + 1] if end > 0 else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    ip = _ip(host)
    return host.lower() == "localhost" if ip is None else ip.is_loopback


def allowed_hosts(bound: str, extra: tuple[str, ...] = ()) -> Callable[[str], bool] | None:
    """Which Host names to answer: None (any) when ``extra`` holds ``*``.

    Bound to loopback: 127.0.0.1, localhost and [::1]. Bound to one address or name: that one.
    Bound to every address (0.0.0.0, ::): any IP address (no page can rebind those), localhost
    and this machine's host name. ``extra``: more names (``serve --allow-host``).
    """
    if ANY_HOST in extra:
        return None
    names = {host_name(name) for name in extra}
    ip = _ip(bound)
    everywhere = ip is not None and ip.is_unspecified
    if is_loopback(bound):
        names |= LOOPBACK_NAMES
    elif everywhere:
        names |= {"localhost", socket.gethostname().lower()}
    else:
        names.add(f"[{ip}]" if ip is not None and ip.version == 6 else host_name(bound))

    def allow(name: str) -> bool:
        return name in names or (everywhere and _ip(name) is not None)
    return allow


async def send_error(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Callable, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        size += len(message.get("body", b""))
        if size > limit:
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def guard(app: ASGIApp, allow_host: Callable[[str], bool] | None,
          max_body: int = MAX_BODY_BYTES, body_timeout: float = BODY_TIMEOUT_S) -> ASGIApp:
    """``app`` answering only allowed Host headers, with request bodies read (and capped) first."""
    default_max_body = max_body

    async def guarded(scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if allow_host is not None and not allow_host(host):
            await send_error(send, 400, f"host {host or '(none)'!r} is not served here; "
                                        "start serve with --allow-host NAME to allow it")
            return
        max_body = BODY_CAPS.get(scope.get("path", "").rstrip("/"), default_max_body)
        declared = headers.get(b"content-length", b"0").strip() or b"0"
        if not declared.isdigit():
            await send_error(send, 400, "bad Content-Length")
            return
        if len(declared) > 12 or int(declared) > max_body:  # never int() of a stranger's 5000 digits
            await send_error(send, 413, f"request body over {max_body} bytes")
            return
        if int(declared) == 0 and b"transfer-encoding" not in headers:
            await app(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(_read_body(receive, max_body), body_timeout)
        except asyncio.TimeoutError:
            await send_error(send, 408, f"request body not received within {body_timeout} s")
            return
        if body is None:
            await send_error(send, 413, f"request body over {max_body} bytes")
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes
        await app(scope, replay, send)
    return guarded
