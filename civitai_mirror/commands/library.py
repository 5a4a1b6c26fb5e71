"""``scan`` and ``hash``: thin wrappers over matcher.scan (which hashes through matcher.hashing)."""
from __future__ import annotations

import json
import logging
import os

import click

from civitai_mirror.options import (config_option, human_bytes, json_option, progress_bar, setup_logging,
                                    verbose_option)
from matcher.config import load_config, parse_size, resolve
from matcher.fsnames import shown
from matcher.media import extract_library
from matcher.scan import describe_file, scan_library
from matcher.schema import open_library


@click.command(name="scan")
@click.argument("directories", nargs=-1, type=click.Path(file_okay=False))
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="library.sqlite to write (default: config database_path, else library.sqlite).")
@click.option("--force-rescan", is_flag=True, help="Hash every file again, ignoring the cache.")
@click.option("--max-file-size", metavar="BYTES",
              help="Record but do not hash larger files (e.g. 10GiB; default: config, else 10 GiB).")
@click.option("--one-reader", is_flag=True, help="Hash one file at a time (spinning disks, NAS).")
@click.option("--workers", type=click.IntRange(min=1), help="Files hashed at once (default: CPU cores).")
@click.option("--no-extract", is_flag=True, help="Do not extract image metadata after the scan.")
@json_option("Print the summary as one JSON object on stdout.")
@config_option()
@verbose_option("Log every move, skip and error (-vv: everything; config: verbose).")
def scan(directories, db_path, force_rescan, max_file_size, one_reader, workers, no_extract, as_json,
         config_path, verbose) -> None:
    """Walk DIRECTORIES into library.sqlite: every file, its kind, and Civitai's hashes.

    Model files get SHA256, AutoV1, AutoV2, AutoV3, CRC32 and BLAKE3 in one read pass plus their
    type and base model; media get SHA256 and size. Unchanged files are not read again, and moved
    or renamed files keep their hashes. With no DIRECTORIES, config.ini's source_directory is used.

    \b
    Example:
        civitai-mirror scan ~/models ~/outputs --db library.sqlite
        civitai-mirror scan /mnt/nas/models --one-reader --json
    """
    config = load_config(config_path)
    setup_logging(verbose or config.verbose)
    log = logging.getLogger("matcher.scan")
    roots = list(directories) or config.source_directory
    if not roots:
        raise click.ClickException("name a directory to scan (or set source_directory in config.ini)")
    for root in roots:
        if not os.path.isdir(root):
            raise click.ClickException(f"{root} is not a directory")
    try:
        limit = parse_size(max_file_size) if max_file_size is not None else config.max_file_size
    except ValueError as exc:
        raise click.ClickException(f"--max-file-size: {exc}") from None
    db_file = resolve(db_path, config.database_path)
    os.makedirs(os.path.dirname(os.path.abspath(db_file)), exist_ok=True)
    db = open_library(db_file)
    with progress_bar("hashing", unit="bytes") as bar:
        summary = scan_library(db, roots, force_rescan=force_rescan, max_file_size=limit,
                               one_reader=one_reader, workers=workers, progress=bar or None)
    if not no_extract:

        try:
            summary["extracted"] = extract_library(db, force=force_rescan, progress=None)
        except Exception as exc:  # the scan itself is saved; say what failed
            log.error("image metadata extraction failed: %s", exc)
            summary["extract_error"] = str(exc)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    for move in summary["moves"]:
        click.echo(f"moved: {move['from']} -> {move['to']}")
    for path in summary["growing"]:
        click.echo(f"skipped (still being written): {path}")
    for path in summary["error_files"]:
        error = summary["file_errors"].get(path)
        if error is None:
            row = db.execute("SELECT error FROM files WHERE path = ?", [path]).fetchone()
            error = row[0] if row else "unknown error"
        click.echo(f"error: {path}: {error}")
    click.echo(
        f"{summary['files']} files: {summary['new']} new, {summary['changed']} changed, "
        f"{summary['moved']} moved, {summary['unchanged']} unchanged, {summary['missing']} missing; "
        f"hashed {human_bytes(summary['hashed_bytes'])}; {summary['skipped']} skipped; "
        f"{summary['errors']} errors")


@click.command(name="hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option("One JSON object per file, one per line.")
@config_option()
@verbose_option("Log what is read (config: verbose).")
def hash_files(files, as_json, config_path, verbose) -> None:
    """Print Civitai's hashes of FILES (one read pass each), no database.

    AutoV1 is null under 2 MiB as in Civitai's table; AutoV3 is the 12-hex form Civitai shows,
    AutoV3_full the whole sha256 after the safetensors header.

    \b
    Example:
        civitai-mirror hash model.safetensors
        civitai-mirror hash *.safetensors --json
    """
    config = load_config(config_path)
    setup_logging(verbose or config.verbose)
    keys = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "AutoV3_full", "CRC32", "BLAKE3")
    columns = {"SHA256": "sha256", "AutoV1": "autov1", "AutoV2": "autov2", "AutoV3": "autov3",
               "AutoV3_full": "autov3_full", "CRC32": "crc32", "BLAKE3": "blake3"}
    failed = 0
    for path in files:
        try:
            facts = describe_file(os.path.abspath(path), all_hashes=True)
        except OSError as exc:
            failed += 1
            click.echo(f"error: {shown(path)}: {exc.strerror or exc}", err=True)
            continue
        record = {"path": shown(os.path.abspath(path)), "kind": facts["kind"], "format": facts["format"],
                  "model_type": facts["model_type"], "base_model": facts["base_model"],
                  **{key: facts[columns[key]] for key in keys}, "AutoV1_A1111": facts["autov1_a1111"],
                  "error": facts["error"]}
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
            continue
        what = facts["kind"] + (f" ({facts['format']})" if facts["format"] else "")
        if facts["model_type"]:
            what += f", {facts['model_type']}" + (f", {facts['base_model']}" if facts["base_model"] else "")
        click.echo(f"{shown(path)}: {what}")
        for key in keys:
            click.echo(f"  {key:<12} {record[key] or '-'}")
        if facts["error"]:
            click.echo(f"  error        {facts['error']}")
    if failed:
        raise click.ClickException(f"{failed} file(s) could not be read")
