"""``serve``: Datasette and the Civitai-compatible API over the mirror (and the library), read-only.

Its own module so that the other commands never pay for importing Datasette.
"""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from civitai_mirror.options import db_option
from mirror.serve import find_library, make_datasette, run_server


@click.command(name="serve")
@db_option("civitai.sqlite", "The mirror database.")
@click.option("--library", default=None, type=click.Path(dir_okay=False, exists=True),
              help="library.sqlite to serve too (default: library.sqlite beside --db, if any).")
@click.option("--dump", "dump_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="Dump folder with saved preview images (default: the one --db was built from).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
def serve(db_path: str, library: str | None, dump_dir: str | None, host: str, port: int) -> None:
    """Serve the mirror with Datasette and a Civitai-compatible API (read-only).

    Point Civitai tools at http://HOST:PORT (e.g. /api/v1/model-versions/by-hash/HASH).

    \b
    Example:
        civitai-mirror serve --db civitai.sqlite
        civitai-mirror serve --db civitai.sqlite --library library.sqlite --port 8002
    """
    if not Path(db_path).exists():
        raise click.ClickException(f"no mirror database at {db_path}; run civitai-mirror build first")
    library_path = find_library(Path(db_path), library)
    for path in (db_path, library_path):  # a bad file is a one-line error now, not a failed startup
        if path:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True) as conn:
                conn.execute("PRAGMA schema_version")
    ds = make_datasette(db_path, library_path, dump_dir)
    served = db_path + (f" and {library_path}" if library_path else "")
    click.echo(f"Serving {served} at http://{host}:{port}/", nl=True)
    sys.stdout.flush()
    run_server(ds, host, port)
