"""``legacy``: file_scanner.py's flags on one command, scan -> extract -> match -> sort."""
from __future__ import annotations

import os

import click

from civitai_mirror.commands.sort import apply_with_progress, echo_run, open_sort_db, print_plan, sort_settings
from civitai_mirror.options import civitai_db_option, config_option, db_option, setup_logging, verbose_option
from matcher.match import match_library
from matcher.media import extract_library
from matcher.plan import plan_moves
from matcher.scan import scan_library


@click.command(name="legacy")
@click.option("--scan-directory", "scan_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder to scan (repeatable; config: source_directory).")
@click.option("--extract-metadata", is_flag=True, help="Read generation parameters out of the media files.")
@click.option("--process-orphaned", is_flag=True, help="Also sort media not next to a model (by the models they used).")
@click.option("--dry-run", is_flag=True, help="Show what would move; move nothing.")
@click.option("--force-rescan", is_flag=True, help="Hash every file again.")
@verbose_option("More log output (config: verbose).")
@click.option("--dest", type=click.Path(file_okay=False), help="config: destination_directory.")
@db_option(None, "config: database_path.")
@civitai_db_option(None, "config: civitai_database_path.")
@config_option()
def legacy(scan_dirs, extract_metadata, process_orphaned, dry_run, force_rescan, verbose, dest, db_path, civitai_db,
           config_path) -> None:
    """file_scanner.py's flags on one command: scan → extract → match → sort.

    Without --process-orphaned only models move (with their sidecars and the media beside them).

    \b
    Example:
        civitai-mirror legacy --scan-directory ~/sd/models --extract-metadata --process-orphaned --dry-run
    """
    config, db_path, civitai_db, dest = sort_settings(config_path, db_path, civitai_db, dest)
    setup_logging(verbose or config.verbose)
    roots = list(scan_dirs) or config.source_directory
    if not dest:
        raise click.ClickException("where to? give --dest DIR (or destination_directory in config.ini)")

    db = open_sort_db(db_path, must_exist=bool(not roots))
    if roots:
        for root in roots:
            if not os.path.isdir(root):
                raise click.ClickException(f"{root} is not a folder")
        summary = scan_library(db, roots, force_rescan=force_rescan, max_file_size=config.max_file_size)
        click.echo(f"scan: {summary.get('files', 0)} files, {summary.get('new', 0)} new, "
                   f"{summary.get('errors', 0)} errors")
    if extract_metadata:
        summary = extract_library(db, force=force_rescan)
        click.echo("extract: " + ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int)))
    if os.path.exists(civitai_db):
        summary = match_library(db, civitai_db)
        click.echo(f"match: {summary.get('models_matched', 0)}/{summary.get('models', 0)} models, "
                   f"{summary.get('images_matched', 0)}/{summary.get('images', 0)} images")
    else:
        click.echo(f"match: skipped ({civitai_db} does not exist; build it with `civitai-mirror build`)")
    plan = plan_moves(db, dest, config, include_media=process_orphaned)
    print_plan(plan)
    if not dry_run:
        echo_run(apply_with_progress(db, plan), False)
