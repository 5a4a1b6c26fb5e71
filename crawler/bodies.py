"""HTTP bodies a stranger sends: read with a cap on their size, compressed and inflated.

The client's session does not decompress by itself (``auto_decompress=False``): :class:`BodyReader`
reads the raw stream with a cap on the bytes received, and inflates ``gzip``/``deflate``
incrementally (``decompressobj`` with ``max_length``) with the same cap on the bytes produced. An
endless body or a gzip bomb therefore costs at most ``limit`` bytes of memory (API answers) or of
disk (images), and ends in :class:`Refused` — an error for that id, not retried.

The media rules of ``crawl --images`` live here too: which file extensions, Content-Types and
leading bytes (magic numbers) count as an image or a video. Nothing else is ever saved.
"""
from __future__ import annotations

import zlib
from typing import AsyncIterator

import aiohttp

MB = 1_000_000
DEFAULT_MAX_BODY = 100 * MB  # an API answer (held in memory; a real batch page is a few MB)
DEFAULT_MAX_IMAGE = 500 * MB  # one preview image or video (streamed to disk)
ACCEPT_ENCODING = "gzip, deflate"  # what BodyReader can inflate; sent with every request
CHUNK = 1 << 16
MAX_MEMBERS = 1000  # gzip members in one body (a real answer has one)


class Refused(Exception):
    """A body we will not take (too large, an unknown encoding, not an image): an error, not retried."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Corrupt(Exception):
    """A compressed body that does not inflate (cut off or damaged): worth another attempt."""


def too_large(limit: int, what: str = "body") -> Refused:
    return Refused(f"{what} larger than {limit / MB:g} MB (the limit; raise it with "
                   f"{'--max-image-mb' if what == 'image' else '--max-body-mb'})")


class Inflater:
    """Incremental decoder of one Content-Encoding with a cap on what it produces."""

    def __init__(self, encoding: str, limit: int, what: str = "body"):
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self.kind = ""
        elif encoding in ("gzip", "x-gzip"):
            self.kind = "gzip"
        elif encoding == "deflate":
            self.kind = "deflate"
        else:
            raise Refused(f"unsupported Content-Encoding {encoding[:40]!r}")
        self.limit = limit
        self.what = what
        self.produced = 0
        self.members = 1
        self._d = None
        self._head = b""  # deflate: the first bytes, to tell a zlib stream from a raw one

    def _new(self, first: bytes):
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and ((first[0] << 8) | first[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        """The inflated bytes of ``data``; raises :class:`Refused` once more than ``limit`` came out."""
        if not self.kind:
            self.produced += len(data)
            if self.produced > self.limit:
                raise too_large(self.limit, self.what)
            return data
        if self._d is None:
            if self.kind == "deflate" and len(self._head) + len(data) < 2:
                self._head += data
                return b""
            data, self._head = self._head + data, b""
            self._d = self._new(data)
        out = []
        try:
            while data:
                # max_length: never more than one byte past the cap per call, however dense the input
                chunk = self._d.decompress(data, self.limit - self.produced + 1)
                self.produced += len(chunk)
                if self.produced > self.limit:
                    raise too_large(self.limit, self.what)
                out.append(chunk)
                if self._d.eof:
                    data = self._d.unused_data
                    if self.kind != "gzip" or not data.startswith(b"\x1f\x8b"):
                        break  # trailing bytes after the stream: ignored, as gzip readers do
                    self.members += 1
                    if self.members > MAX_MEMBERS:  # a flood of empty members: bounded work
                        raise Refused(f"gzip body of more than {MAX_MEMBERS} members")
                    self._d = self._new(data)  # a multi-member gzip file: the next member
                else:
                    data = self._d.unconsumed_tail
        except zlib.error as exc:
            raise Corrupt(f"damaged {self.kind} body ({exc})") from None
        return b"".join(out)

    def finish(self) -> None:
        """The end of the stream: a compressed body must have ended cleanly."""
        if self.kind and (self._d is None or not self._d.eof):
            raise Corrupt(f"cut-off {self.kind} body")


class BodyReader:
    """The body of one response, inflated, at most ``limit`` bytes both ways."""

    def __init__(self, resp: aiohttp.ClientResponse, limit: int, what: str = "body"):
        self.resp = resp
        self.limit = limit
        self.what = what
        self.received = 0  # bytes on the wire (compressed)
        length = resp.content_length
        try:
            if length is not None and length > limit:
                raise too_large(limit, what)
            self.inflater = Inflater(resp.headers.get("Content-Encoding", ""), limit, what)
        except Refused:
            resp.close()
            raise

    async def chunks(self) -> AsyncIterator[bytes]:
        """The inflated body, chunk by chunk. On :class:`Refused` or :class:`Corrupt` the
        connection is closed (the rest of the body is never read, nor the connection reused)."""
        inflater = self.inflater
        try:
            async for chunk in self.resp.content.iter_chunked(CHUNK):
                self.received += len(chunk)
                if self.received > self.limit:
                    raise too_large(self.limit, self.what)
                out = inflater.feed(chunk)
                if out:
                    yield out
            inflater.finish()
        except (Refused, Corrupt):
            self.resp.close()
            raise


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``resp`` (inflated), or :class:`Refused` past ``limit`` bytes.

    The usual answer of a plain server (a Content-Length within the limit, no encoding) is read in
    one call; aiohttp never reads past the Content-Length."""
    length = resp.content_length
    if length is not None and length <= limit and "Content-Encoding" not in resp.headers:
        return await resp.read()
    reader = BodyReader(resp, limit)
    parts = [chunk async for chunk in reader.chunks()]
    return b"".join(parts)


# -- images and videos -------------------------------------------------------------------------

MEDIA_EXTENSIONS = frozenset({"jpeg", "jpg", "png", "gif", "webp", "avif", "mp4", "webm", "mov", "m4v"})
MEDIA_TYPES = ("image/", "video/")
NOT_MEDIA_TYPES = ("image/svg",)  # SVG is an XML document: it can carry scripts and be served as a page


def media_content_type(ctype: str) -> bool:
    ctype = ctype.strip().lower()
    return ctype.startswith(MEDIA_TYPES) and not ctype.startswith(NOT_MEDIA_TYPES)


def media_kind(head: bytes) -> str | None:
    """The format named by a file's first bytes (``jpeg``, ``png``, ``gif``, ``webp``, ``iso-bmff``
    for MP4/MOV/AVIF/HEIC, ``matroska`` for WebM/MKV), or None when it is no image or video."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return "iso-bmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    return None


MAGIC_BYTES = 12  # enough for every check of media_kind
