"""Command line for the mirror: thin wrappers over mirror.build, mirror.lookup and mirror.serve."""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

DB_OPTION = click.option("--db", "db_path", default="civitai.sqlite", show_default=True,
                         type=click.Path(dir_okay=False), help="The mirror database.")


def _progress_callback():
    """A rich progress bar on stderr, or nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task("reading dump", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)
    return progress, update


@click.command(name="build")
@click.argument("dump_dir", default="civitai-meta", required=False,
                type=click.Path(file_okay=False))
@DB_OPTION
@click.option("--full", is_flag=True,
              help="Rebuild from scratch into a temporary file and swap it in atomically.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("-v", "--verbose", is_flag=True, help="Log every skipped file.")
def build(dump_dir: str, db_path: str, full: bool, as_json: bool, verbose: bool) -> None:
    """Build (or update) civitai.sqlite from a crawler dump folder.

    Only new or changed files are read unless --full. Broken JSON files are reported and skipped.

    \b
    Example:
        civitai-mirror build civitai-meta --db civitai.sqlite
        civitai-mirror build civitai-meta --full
    """
    import logging

    from mirror.build import build_mirror

    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    if not Path(dump_dir).is_dir():
        raise click.ClickException(f"dump folder {dump_dir} not found; crawl into it first "
                                   f"(civitai-mirror crawl -o {dump_dir})")
    bar, update = _progress_callback()
    if bar:
        bar.start()
    try:
        summary = build_mirror(dump_dir, db_path, full=full, progress=update)
    finally:
        if bar:
            bar.stop()
    if as_json:
        click.echo(json.dumps({"db": db_path, **summary.as_dict()}))
        return
    for path, error in summary.errors:
        click.echo(f"error: {Path(dump_dir) / path}: {error}", err=True)
    click.echo(
        f"{db_path}: {summary.models} models, {summary.versions} versions, {summary.files} files, "
        f"{summary.hashes} hashes, {summary.images} images ({summary.local_images} saved locally); "
        f"read {summary.files_read} files ({summary.files_unchanged} unchanged, "
        f"{summary.skipped} skipped), {len(summary.errors)} errors")


def _describe(result: dict) -> list[str]:
    if result["version_id"] is None:
        reason = f" ({result['error']})" if result.get("error") else ""
        return [f"{result['hash']}: not found{reason}"]
    match = " (prefix)" if result.get("match") == "prefix" else ""
    lines = [
        f"{result['hash']}: {result['hash_type']}{match} match",
        f"  model    {result['model_name']} (id {result['model_id']}, {result['type']})",
        f"  version  {result['version_name']} (id {result['version_id']}, {result['base_model']})",
        f"  file     {result['file_name']} (id {result['file_id']})",
        f"  download {result['download_url']}",
    ]
    state = result["mode"] or "available"
    if result.get("gone"):
        state += ", gone upstream"
    if result.get("file_archived"):
        state += ", file no longer listed"
    lines.append(f"  mode     {state}")
    if result["candidates"]:
        lines.append("  also     versions " + ", ".join(str(c) for c in result["candidates"]))
    return lines


@click.command(name="lookup")
@click.argument("hashes", nargs=-1, required=True)
@DB_OPTION
@click.option("--type", "hash_type", default=None,
              type=click.Choice(["AutoV1", "AutoV2", "AutoV3", "SHA256", "CRC32", "BLAKE3"],
                                case_sensitive=False),
              help="Only match this hash type.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hash, one per line.")
@click.pass_context
def lookup(ctx: click.Context, hashes: tuple[str, ...], db_path: str, hash_type: str | None,
           as_json: bool) -> None:
    """Find the Civitai model and version of one or more hashes, offline.

    Any hash type in any case: SHA256/BLAKE3 (64 hex), AutoV3 (12), AutoV2 (10), AutoV1/CRC32 (8),
    SwarmUI's 0x-prefixed hash. Exit status 1 when any hash was not found.

    \b
    Example:
        civitai-mirror lookup 2c6c9b3e47 --db civitai.sqlite
        civitai-mirror lookup 9C783C8CE46C 0x7a1b... --json
    """
    from mirror.lookup import lookup_hashes

    if not Path(db_path).exists():
        raise click.ClickException(f"no mirror database at {db_path}; run civitai-mirror build first")
    results = lookup_hashes(db_path, hashes, hash_type)
    for result in results:
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            click.echo("\n".join(_describe(result)))
    if any(r["version_id"] is None for r in results):
        ctx.exit(1)


@click.command(name="serve")
@DB_OPTION
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
    from mirror.serve import find_library, make_datasette, run_server

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
