"""``build`` and ``lookup``: thin wrappers over mirror.build and mirror.lookup."""
from __future__ import annotations

import json
from pathlib import Path

import click

from civitai_mirror.options import (db_option, json_option, progress_bar, require_database, setup_logging,
                                    verbose_option)
from mirror.build import EmptyDump, build_mirror
from mirror.hashes import HASH_TYPES
from mirror.lookup import lookup_hashes
from mirror.writer import BuildSummary

DB_OPTION = db_option("civitai.sqlite", "The mirror database.")


@click.command(name="build")
@click.argument("dump_dir", default="civitai-meta", required=False,
                type=click.Path(file_okay=False))
@DB_OPTION
@click.option("--full", is_flag=True,
              help="Rebuild from scratch into a temporary file and swap it in atomically.")
@json_option("Print the summary as one JSON object.")
@verbose_option("Log every skipped file (-vv: everything).")
def build(dump_dir: str, db_path: str, full: bool, as_json: bool, verbose: int) -> None:
    """Build (or update) civitai.sqlite from a crawler dump folder.

    Only new or changed files are read unless --full. Broken JSON files are reported and skipped;
    the exit status is then 1 (the rest is built).

    \b
    Example:
        civitai-mirror build civitai-meta --db civitai.sqlite
        civitai-mirror build civitai-meta --full
    """
    setup_logging(verbose)
    if not Path(dump_dir).is_dir():
        raise click.ClickException(f"dump folder {dump_dir} not found; crawl into it first "
                                   f"(civitai-mirror crawl -o {dump_dir})")
    require_database(db_path, "civitai")
    try:
        with progress_bar("reading dump") as bar:
            summary = build_mirror(dump_dir, db_path, full=full,
                                   progress=(lambda done, total: bar(completed=done, total=total)) if bar else None)
    except EmptyDump as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"db": db_path, **summary.as_dict()}))
    else:
        _report_build(dump_dir, db_path, summary)
    if summary.errors:  # like lookup: the output is complete, the status says something failed
        click.get_current_context().exit(1)


def _report_build(dump_dir: str, db_path: str, summary: BuildSummary) -> None:
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
              type=click.Choice(HASH_TYPES, case_sensitive=False),
              help="Only match this hash type.")
@json_option("One JSON object per hash, one per line.")
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
    require_database(db_path, "civitai", must_exist=True)
    results = lookup_hashes(db_path, hashes, hash_type)
    for result in results:
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            click.echo("\n".join(_describe(result)))
    if any(r["version_id"] is None for r in results):
        ctx.exit(1)
