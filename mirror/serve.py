"""Datasette over civitai.sqlite and, optionally, library.sqlite, both read-only.

``make_datasette`` is what ``civitai-mirror serve`` runs and what the tests use in-process: it loads
``datasette_metadata.yml`` (Datasette 0.65 format), names the databases ``civitai`` and ``library``
whatever their file names, and registers the plugin in mirror.plugin. ``bind`` takes the port
first (a busy port is an error before anything is printed); ``run_server`` serves on it behind
mirror.http_guard.

The files are opened ``mode=ro``, never ``immutable``: an incremental build writes the mirror in
place, a transaction at a time, and SQLite's locking shows a reader the whole database before or
after each. ``build --full`` swaps in a new file instead, which a connection would never see (it
reads the old inode): ``FollowingDatabase`` opens a thread's connection again when the file at the
path (or, for the library, the attached mirror) is another one.
"""
from __future__ import annotations

import asyncio
import copy
import errno
import logging
import os
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import uvicorn
import yaml
from datasette.app import Datasette
from datasette.database import Database
from datasette.plugins import pm
from uvicorn.protocols.http.h11_impl import H11Protocol

from mirror import browse, plugin
from mirror.answers import snapshot_json
from mirror.http_guard import guard, is_loopback
from mirror.schema import connect_read_only

log = logging.getLogger(__name__)

# Shipped inside the package so a wheel serves facets and canned queries; the repository root's
# datasette_metadata.yml is a link to it, for `datasette -m datasette_metadata.yml` users.
METADATA_FILE = Path(__file__).resolve().parent / "datasette_metadata.yml"
# row-library-files.html: the file page of library.sqlite (summary above the raw row).
TEMPLATES = Path(__file__).resolve().parent / "templates"
READ_BUSY_TIMEOUT_S = 15  # a reader waits this long for a build's commit (usually well under 1 s)
MAX_CONNECTIONS = 100  # connections and requests at once; more get 503
HEAD_TIMEOUT_S = 10.0  # from connecting (or the last answer) to a request's complete head


def load_metadata(path: Path | None = None) -> dict[str, Any]:
    path = path or METADATA_FILE
    if not path.exists():
        log.warning("no %s; serving without table descriptions", path)
        return {"title": "civitai-mirror"}
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def register_plugin() -> None:
    if not pm.is_registered(plugin):
        pm.register(plugin, name="civitai-mirror")
        # Datasette printed every 404 as a 60-line rich traceback with locals, and answered some
        # bad requests with 500: now a 500 (a bug) prints its plain traceback, nothing else does.
        plugin.use_own_errors()


def find_library(db_path: Path, library: str | Path | None, host: str = "127.0.0.1") -> Path | None:
    """``--library`` when given, else ``library.sqlite`` beside the mirror database when serving on
    loopback only (the library lists your files' paths: named, never found, for other machines)."""
    if library is not None:
        return Path(library)
    beside = Path(db_path).resolve().parent / "library.sqlite"
    return beside if beside.exists() and is_loopback(host) else None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # replaced this instant, or gone: keep reading what is open
        return None
    return st.st_dev, st.st_ino


class FollowingDatabase(Database):
    """A read-only Datasette database that follows its file when another is swapped in.

    Each executor thread keeps one connection and the (device, inode) of the files it opened; a
    query that finds another file at one of those paths opens a new connection first. The stat is
    taken before the connection opens, so a swap in between only costs one more reopen.
    """

    def __init__(self, ds: Datasette, path: Path, follows: tuple[Path, ...] = ()):
        super().__init__(ds, path=str(path), is_mutable=True)
        self.follows = (str(path), *(str(p) for p in follows))
        self._local = threading.local()

    def connect(self, write: bool = False) -> sqlite3.Connection:
        if write:
            raise sqlite3.OperationalError(f"{self.path} is served read-only")
        conn = sqlite3.connect(f"file:{quote(self.path, safe='/')}?mode=ro", uri=True,
                               check_same_thread=False, timeout=READ_BUSY_TIMEOUT_S)
        # model_snapshots.data of a superseded answer is compressed: snapshot_json(data) reads it
        conn.create_function("snapshot_json", 1, snapshot_json, deterministic=True)
        self._all_file_connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        now = tuple(_identity(p) for p in self.follows)
        held = getattr(self._local, "held", None)
        if held is not None and (held[1] == now or None in now):
            return held[0]
        if held is not None:
            held[0].close()
            self._all_file_connections.remove(held[0])
        conn = self.connect()
        self.ds._prepare_connection(conn, self.name)
        self._local.held = (conn, now)
        return conn

    async def execute_fn(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self.ds.executor is None:
            return fn(self._connection())
        return await asyncio.get_running_loop().run_in_executor(
            self.ds.executor, lambda: fn(self._connection()))


def _columns_of(path: Path) -> dict[str, set[str]]:
    """Tables and views of a SQLite file and their columns, read without writing anything."""
    conn = connect_read_only(path)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        return {name: {r[1] for r in conn.execute(f"PRAGMA table_xinfo([{name}])")} for name in names}
    except sqlite3.Error as exc:
        log.warning("could not read the schema of %s: %s", path, exc)
        return {}
    finally:
        conn.close()


def prune_table_metadata(meta: dict, database: str, path: Path) -> None:
    """Drop facets, sorts and label columns naming columns an older (or partial) file lacks.

    Datasette answers 400 for a table page whose configured facet column does not exist; a
    library.sqlite written before a column was added must still browse.
    """
    tables = ((meta.get("databases") or {}).get(database) or {}).get("tables") or {}
    if not tables:
        return
    columns = _columns_of(path)
    for name, config in tables.items():
        have = columns.get(name)
        if have is None or not isinstance(config, dict):
            continue
        if "facets" in config:
            config["facets"] = [f for f in config["facets"]
                                if not isinstance(f, str) or f in have]
        for key in ("sort", "sort_desc", "label_column"):
            if key in config and config[key] not in have:
                del config[key]


def make_datasette(db_path: str | Path, library: str | Path | None = None,
                   dump_dir: str | Path | None = None, metadata: dict | None = None):
    """A ready Datasette instance; call ``invoke_startup`` (or use ``.client``) before serving."""
    register_plugin()
    meta = copy.deepcopy(metadata if metadata is not None else load_metadata())
    plugin_config = meta.setdefault("plugins", {}).setdefault("civitai-mirror", {})
    plugin_config["database"] = "civitai"
    if dump_dir is not None:
        plugin_config["dump_dir"] = str(Path(dump_dir).resolve())
    if library is not None:
        prune_table_metadata(meta, "library", Path(library))
        conn = connect_read_only(library)
        try:
            browse.hide_empty_exif(plugin_config, conn)
        finally:
            conn.close()
        browse.prune_hidden(plugin_config, "library", _columns_of(Path(library)))
    # No suggested facets: Datasette tries every column of every page (50 ms each), seconds on a
    # big library or mirror; the configured facets stay, and any column can still be faceted.
    ds = Datasette([], metadata=meta, settings={"sql_time_limit_ms": 3000, "suggest_facets": False},
                   template_dir=str(TEMPLATES))
    if "_memory" in ds.databases:  # Datasette adds it when started without files
        ds.remove_database("_memory")
    mirror_path = Path(db_path).resolve()
    browse.prune_hidden(plugin_config, "civitai", _columns_of(mirror_path))
    ds.add_database(FollowingDatabase(ds, mirror_path), name="civitai")
    if library is not None:  # its connections attach the mirror: follow that file too
        ds.add_database(FollowingDatabase(ds, Path(library).resolve(), follows=(mirror_path,)),
                        name="library")
    return ds


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port); OSError says why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot serve on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a listening port's
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} on {host} is in use; choose another with --port") from None
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class HeadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline for each request's head: a client that connects and
    sends nothing, or trickles its headers a byte at a time, is closed after ``HEAD_TIMEOUT_S``
    instead of holding one of the ``MAX_CONNECTIONS`` forever. (A slow body is mirror.http_guard's.)"""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_overdue)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)

    def _head_overdue(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering and not self.transport.is_closing():
            self.transport.close()


def make_server(ds: Datasette, allow_host: Callable[[str], bool] | None) -> uvicorn.Server:
    """The uvicorn server for ``ds``, behind mirror.http_guard (``server.run(sockets=[sock])``)."""
    config = uvicorn.Config(guard(ds.app(), allow_host), log_level="warning", lifespan="on",
                            limit_concurrency=MAX_CONNECTIONS, http=HeadDeadline)
    return uvicorn.Server(config)


def run_server(ds: Datasette, sock: socket.socket, allow_host: Callable[[str], bool] | None) -> None:
    """Serve ``ds`` on the bound socket until interrupted."""
    asyncio.run(ds.invoke_startup())
    make_server(ds, allow_host).run(sockets=[sock])
