"""``update``: the nightly run (civitai_mirror.update) with its lock, progress and report."""
from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path

import click
import orjson
from rich.console import Console

from civitai_mirror.commands.crawl import client_options, make_client, stop_on_signals
from civitai_mirror.options import (db_option, human_bytes, json_option, progress_bar, require_database,
                                    setup_logging, verbose_option)
from civitai_mirror.update import (DEFAULT_NEWEST, DEFAULT_NIGHTS, EXIT_LOCKED, UpdateLocked, UpdateOptions,
                                   UpdateResult, build_phase, choose_refresh, crawl_phase, update_lock)
from crawler.writes import read_log
from mirror.build import EmptyDump
from mirror.changes import KINDS
from mirror.reader import Mirror

COPY_NOTE_BYTES = 100_000_000
SHOWN_CHANGES = 40  # listed one per line in the summary; the rest counted (all are in --json and /-/changes)


def _default_dump(db: Path) -> Path:
    """The folder the mirror was last built from, else ./civitai-meta."""
    if db.exists():
        mirror = Mirror(db)
        try:
            return mirror.dump_dir() or Path("civitai-meta")
        except sqlite3.Error:
            pass
        finally:
            mirror.db.close()
    return Path("civitai-meta")


@click.command(name="update")
@click.option("--dump", "dump_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dump folder (default: the one the mirror was built from, else ./civitai-meta).")
@db_option("civitai.sqlite", "The mirror database; made by the first run.")
@click.option("--library", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="library.sqlite (from scan): its models are refreshed every run, re-matched after the "
                   "build, and listed first in the report.")
@click.option("--full-refresh", is_flag=True, help="Fetch every known model again (not only tonight's share).")
@click.option("--crawl/--no-crawl", "crawl_new", default=True, show_default=True,
              help="Crawl ids above the highest known one up to the newest model.")
@click.option("--retry/--no-retry", default=True, show_default=True, help="Fetch the ids in errors.txt again.")
@click.option("--refresh/--no-refresh", default=True, show_default=True,
              help="Fetch known models again: the newest, the library's, and a share of the rest.")
@click.option("--newest", type=click.IntRange(0), default=DEFAULT_NEWEST, show_default=True,
              help="How many of the newest models are refreshed every run.")
@click.option("--refresh-nights", type=click.IntRange(1), default=DEFAULT_NIGHTS, show_default=True,
              help="The rest of the catalogue is refreshed in turn within this many runs.")
@click.option("--threads", type=click.IntRange(1, 256), default=5, show_default=True, help="Concurrent requests.")
@click.option("--images", is_flag=True, help="Also save new preview images under DUMP/images/.")
@json_option("One JSON object per change on stdout (the summary goes to stderr).")
@verbose_option()
@client_options
def update(dump_dir, db_path, library, full_refresh, crawl_new, retry, refresh, newest, refresh_nights, threads,
           images, as_json, verbose, api_bases, api_key, max_rps, retries, timeout, sleep_retries, sleep_429,
           max_body_mb) -> None:
    """Keep the mirror current in one unattended run: crawl new ids, refresh models that may have
    changed, retry errors, build, re-match the library, and report what changed upstream.

    The build goes into a copy of the database that replaces it at the end in one step: a running
    `serve` keeps answering from the previous one and then shows the new one. A second update of
    the same database exits at once with status 75; a killed run is continued by the next one.
    Each run is recorded in the mirror's update_runs and changes tables (page: /-/changes).

    \b
    Example:
        civitai-mirror update --dump civitai-meta --db civitai.sqlite --library library.sqlite
        civitai-mirror update --full-refresh
        civitai-mirror update --json | jq -r 'select(.in_library == 1) | "\\(.kind) \\(.model_name)"'
    """
    setup_logging(verbose)
    db = Path(db_path)
    require_database(db, "civitai")
    if library is not None:
        if not library.exists():
            raise click.ClickException(f"{library} does not exist; run `civitai-mirror scan DIR --db {library}` first")
        require_database(library, "library")
    dump = dump_dir or _default_dump(db)
    if dump.exists() and not dump.is_dir():
        raise click.ClickException(f"{dump} exists and is not a folder")
    options = UpdateOptions(dump=dump, db=db, library=library, full_refresh=full_refresh, crawl_new=crawl_new,
                            retry=retry, refresh=refresh, newest=newest, refresh_nights=refresh_nights,
                            threads=threads, images=images)
    client = make_client(api_bases, api_key, threads, max_rps, retries, timeout, sleep_retries, sleep_429,
                         max_body_mb)
    console = Console(stderr=True, soft_wrap=True)
    try:
        with update_lock(db):
            result = _run(options, client, console)
    except UpdateLocked as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_LOCKED)
    except EmptyDump:
        raise click.ClickException(f"{dump} holds no models yet and the crawl saved none; "
                                   "check --api-base and the network, then run update again") from None
    except OSError as exc:  # disk full, permissions: the mirror is left as it was
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        raise click.ClickException(f"update stopped, the mirror is unchanged: {exc.strerror or exc}{where}") from None
    if result.interrupted:
        console.print("interrupted before the build: the mirror is unchanged; the next update continues")
        sys.exit(130)
    _report(result, options, console, as_json)
    if result.build is not None and result.build.errors:
        sys.exit(1)


def _run(options: UpdateOptions, client, console: Console) -> UpdateResult:
    result = UpdateResult()
    started = time.time()
    try:
        options.dump.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot make the dump folder {options.dump}: {exc.strerror or exc}") from None
    refresh_ids, cursor = choose_refresh(options.db, options) if options.refresh else ([], 0)
    result.run["refresh_cursor"] = cursor
    result.run["retried"] = len(read_log(options.dump / "errors.txt")) if options.retry else 0

    async def crawl():
        stop = stop_on_signals(console)
        with progress_bar("update", info=True, console=console) as bar:
            def on_progress(stage, s):
                bar(completed=s.done, total=s.total or None,
                    info=f"{stage}: {s.found} found {s.notfound} not found {s.errors} errors")
            stats = await crawl_phase(options, client, refresh_ids, on_progress if bar else None, stop)
        return stats, stop.is_set()

    try:
        (result.crawl, result.refresh), result.interrupted = asyncio.run(crawl())
    except asyncio.CancelledError:
        result.interrupted = True
    if result.interrupted:
        return result
    def on_stage(stage: str) -> None:
        size = options.db.stat().st_size if stage == "copy" else 0
        if size >= COPY_NOTE_BYTES:  # a large copy takes a while with nothing else to show
            console.print(f"copying {options.db} ({human_bytes(size)}) to build into; "
                          "serve keeps answering from it meanwhile", highlight=False)

    with progress_bar("building", console=console) as bar:
        build_phase(options, result, started,
                    progress=(lambda done, total: bar(completed=done, total=total)) if bar else None,
                    on_stage=on_stage)
    return result


def _report(result: UpdateResult, options: UpdateOptions, console: Console, as_json: bool) -> None:
    run, changes = result.run, result.changes
    if as_json:
        for change in changes:
            click.echo(orjson.dumps(change).decode())
    out = console if as_json else Console(highlight=False, soft_wrap=True)
    crawl, refresh = result.crawl, result.refresh
    parts = []
    if crawl:
        parts.append(f"{run.get('new_ids', 0):,} new ids and {run.get('retried', 0):,} retried ({crawl.found:,} saved, "
                     f"{crawl.notfound:,} not found, {crawl.errors:,} errors)")
    if refresh:
        parts.append(f"{refresh.done:,} models refreshed ({refresh.kept:,} answered worse or 404: "
                     f"the good copy kept, {refresh.errors:,} errors)")
    build = result.build
    parts.append(f"built {build.files_read:,} changed files: {build.models:,} models")
    out.print(f"update run {run['id']} of {options.db}: " + "; ".join(parts), highlight=False)
    if result.library is not None:
        out.print(f"library re-matched: {result.library.get('models_matched', 0):,} of "
                  f"{result.library.get('models', 0):,} model files matched", highlight=False)
    if run.get("baseline"):
        out.print("first build of this mirror: changes are reported from the next update on", highlight=False)
        return
    held = sum(1 for c in changes if c["in_library"])
    out.print(f"{len(changes):,} changes upstream, {held:,} of them in your library", highlight=False)
    for change in changes[:SHOWN_CHANGES]:
        out.print("  " + describe(change), highlight=False, markup=False)
    if len(changes) > SHOWN_CHANGES:
        counts: dict[str, int] = {}
        for change in changes[SHOWN_CHANGES:]:
            counts[change["kind"]] = counts.get(change["kind"], 0) + 1
        out.print(f"  ... and {len(changes) - SHOWN_CHANGES:,} more: "
                  + ", ".join(f"{n:,} {KINDS[k]}" for k, n in counts.items())
                  + " (all of them: --json, or the /-/changes page of serve)", highlight=False)


def describe(change: dict) -> str:
    """One line for a change: what, which model and version, before -> after, the library files."""
    what = f"{KINDS[change['kind']]}: {change['model_name'] or '?'} (model {change['model_id']}"
    if change["version_id"]:
        what += f", version {change['version_id']}"
        if change["version_name"]:
            what += f" {change['version_name']}"
    if change["file_id"]:
        what += f", file {change['file_id']}"
    what += ")"
    if change["kind"] == "file_hash_changed":
        what += f" SHA256 {change['old']} -> {change['new']}"
    elif change["kind"] not in ("model_new", "version_new", "file_removed") and (change["old"] or change["new"]):
        what += f" {change['old'] or 'ordinary'} -> {change['new'] or 'ordinary'}"
    if change["in_library"]:
        what = "[library] " + what + ": " + ", ".join(change["library_paths"] or [])
    return what
