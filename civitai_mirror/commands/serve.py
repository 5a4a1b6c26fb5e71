"""``serve``: Datasette and the Civitai-compatible API over the mirror (and the library), read-only.

Its own module so that the other commands never pay for importing Datasette.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from civitai_mirror.options import db_option, require_database
from mirror.http_guard import allowed_hosts
from mirror.serve import bind, find_library, make_datasette, run_server

PORT = click.IntRange(0, 65535)


@click.command(name="serve")
@db_option("civitai.sqlite", "The mirror database.")
@click.option("--library", default=None, type=click.Path(dir_okay=False, exists=True),
              help="library.sqlite to serve too (default: library.sqlite beside --db, if any, "
                   "when --host is loopback).")
@click.option("--dump", "dump_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="Dump folder with saved preview images (default: the one --db was built from).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every address; then --library must be named).")
@click.option("--port", default=8001, show_default=True, type=PORT, help="Port (0: any free one).")
@click.option("--allow-host", "allow_host", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable; '*': any). By default only "
                   "the --host address, and 127.0.0.1/localhost/[::1] on loopback.")
def serve(db_path: str, library: str | None, dump_dir: str | None, host: str, port: int,
          allow_host: tuple[str, ...]) -> None:
    """Serve the mirror with Datasette and a Civitai-compatible API (read-only).

    Point Civitai tools at http://HOST:PORT (e.g. /api/v1/model-versions/by-hash/HASH).
    A running server shows what a later `build` wrote, without a restart.

    \b
    Example:
        civitai-mirror serve --db civitai.sqlite
        civitai-mirror serve --db civitai.sqlite --library library.sqlite --port 8002
    """
    require_database(db_path, "civitai", must_exist=True)
    library_path = find_library(Path(db_path), library, host)
    require_database(library_path, "library")
    ds = make_datasette(db_path, library_path, dump_dir)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    served = db_path + (f" and {library_path}" if library_path else "")
    click.echo(f"Serving {served} at http://{shown}:{bound_port}/")
    sys.stdout.flush()
    run_server(ds, sock, allowed_hosts(host, allow_host))
