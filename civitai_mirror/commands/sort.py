"""``sort``, ``undo`` and ``runs``: plan moves (matcher.plan), apply and undo them (matcher.journal)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from civitai_mirror.options import civitai_db_option, config_option, db_option, json_option, progress_bar
from matcher.config import load_config, resolve
from matcher.journal import apply_plan, list_runs, recover_runs, undo_run
from matcher.plan import Plan, plan_moves
from matcher.schema import open_library


def sort_settings(config_path: str | None, db_path: str | None, civitai_db: str | None, dest: str | None):
    config = load_config(config_path)
    return (config, resolve(db_path, config.database_path), resolve(civitai_db, config.civitai_database_path),
            resolve(dest, config.destination_directory))


def open_sort_db(db_path: str, must_exist: bool = True):
    if must_exist and not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} does not exist; run `civitai-mirror scan DIR --db {db_path}` first")
    return open_library(db_path)


def _short(path: str, base: str) -> str:
    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def print_plan(plan, show_ignored: bool = False) -> None:
    console = Console(highlight=False)
    sources = [os.path.dirname(m.source) for m in plan.moves]
    base = os.path.commonpath(sources) if sources else plan.dest
    table = Table(f"Source (in {base})", "→", f"Destination (in {plan.dest})", "Why",
                  title="Sort plan")
    for move in plan.moves:
        table.add_row(_short(move.source, base), "→", _short(move.destination, plan.dest), move.role)
    if plan.moves:
        console.print(table)
    if show_ignored:
        for item in plan.ignored:
            console.print(f"ignored: {item.path} ({item.reason})", markup=False)
    summary = plan.summary()
    reasons = Counter(i.reason.split(":")[0] for i in plan.ignored)
    console.print(f"{summary['moves']} to move ({summary['bytes']:,} bytes), {summary['in_place']} already in place, "
                  f"{summary['ignored']} left in place"
                  + (" (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common(4)) + ")" if reasons else ""),
                  markup=False)


def apply_with_progress(db, plan):
    with progress_bar("moving", total=len(plan.moves)) as bar:
        return apply_plan(db, plan, progress=lambda row: bar(advance=1))


def echo_run(summary: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["journal"].items()))
    click.echo(f"run {summary['run_id']}: {summary['state']} ({counts or 'nothing'})")
    for item in summary.get("refused", []):
        click.echo(f"refused: {item['destination']}: {item['reason']}")


@click.command(name="sort")
@click.option("--dest", type=click.Path(file_okay=False), help="Root of the sorted tree (config: destination_directory).")
@click.option("--dry-run", is_flag=True, help="Print the Source → Destination table and a summary; move nothing.")
@db_option(None, "library.sqlite (config: database_path).")
@civitai_db_option(None, "civitai.sqlite (config: civitai_database_path); sort reads the matches already stored.")
@config_option()
@click.option("--save-plan", type=click.Path(dir_okay=False), help="Write the plan as JSON to this file.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False),
              help="Apply a plan saved earlier with --save-plan instead of computing one.")
@click.option("--resume", is_flag=True, help="Only finish the runs a crash left unfinished.")
@click.option("--rollback", is_flag=True, help="With --resume: put the files of unfinished runs back instead.")
@click.option("--show-ignored", is_flag=True, help="List the files left in place and why.")
@json_option("One JSON object per planned move (dry-run) or the run summary.")
def sort(dest, dry_run, db_path, civitai_db, config_path, save_plan, plan_file, resume, rollback, show_ignored,
         as_json) -> None:
    """Sort matched models and media into DEST/models/<type>/<base model>/<model name>/.

    Every move is journaled before it happens and can be undone with `civitai-mirror undo`.
    Unmatched files stay where they are. A run interrupted by a crash is finished automatically
    by the next sort or undo (or now with --resume; --resume --rollback puts files back).

    \b
    Example:
        civitai-mirror sort --dest ~/sd/sorted --dry-run
        civitai-mirror sort --dest ~/sd/sorted --db library.sqlite
        civitai-mirror sort --resume
    """
    config, db_path, civitai_db, dest = sort_settings(config_path, db_path, civitai_db, dest)
    db = open_sort_db(db_path)
    if resume or rollback:
        for summary in recover_runs(db, rollback=rollback) or []:
            echo_run(summary, as_json)
        if not as_json:
            click.echo("nothing left to recover" if not db.execute(
                "select count(*) from runs where state in ('running', 'interrupted')").fetchone()[0]
                else "some runs are still running in another process")
        return
    if plan_file:
        plan = Plan.from_json(Path(plan_file).read_text(encoding="utf-8"))
    else:
        if not dest:
            raise click.ClickException("where to? give --dest DIR (or destination_directory in config.ini)")
        plan = plan_moves(db, dest, config)
    if save_plan:
        tmp = Path(str(save_plan) + ".part")
        tmp.write_text(plan.to_json(), encoding="utf-8")
        tmp.replace(save_plan)
    if dry_run:
        if as_json:
            for move in plan.moves:
                click.echo(json.dumps({"source": move.source, "destination": move.destination, "role": move.role,
                                       "reason": move.reason, "state": "planned"}))
            for item in plan.ignored:
                click.echo(json.dumps({"source": item.path, "destination": None, "role": "ignored",
                                       "reason": item.reason, "state": "ignored"}))
        else:
            print_plan(plan, show_ignored)
        return
    if not as_json:
        print_plan(plan, show_ignored)
    echo_run(apply_with_progress(db, plan), as_json)


@click.command(name="undo")
@click.argument("run_id", required=False)
@db_option(None, "library.sqlite (config: database_path).")
@config_option()
@json_option("Print the run summary as one JSON object.")
def undo(run_id, db_path, config_path, as_json) -> None:
    """Move a sort run's files back (default: the latest run not yet undone).

    Each file is checked first (size + SHA256 as journaled, old place free); a changed file is
    refused and the rest are restored. Run it again after fixing what was refused.

    \b
    Example:
        civitai-mirror undo
        civitai-mirror undo 20261122T010203Z-1a2b3c --db library.sqlite
    """
    _, db_path, _, _ = sort_settings(config_path, db_path, None, None)
    db = open_sort_db(db_path)
    try:
        summary = undo_run(db, run_id)
    except LookupError as exc:
        raise click.ClickException(f"{exc} (see `civitai-mirror runs`)") from None
    echo_run(summary, as_json)
    if summary.get("refused"):
        raise SystemExit(1)


@click.command(name="runs")
@db_option(None, "library.sqlite (config: database_path).")
@config_option()
@json_option("One JSON object per run.")
def runs(db_path, config_path, as_json) -> None:
    """List sort runs, newest first, with how many files each moved, undid or refused.

    \b
    Example:
        civitai-mirror runs
        civitai-mirror runs --json --db library.sqlite
    """
    _, db_path, _, _ = sort_settings(config_path, db_path, None, None)
    found = list_runs(open_sort_db(db_path))
    if as_json:
        for run in found:
            click.echo(json.dumps(run))
        return
    if not found:
        click.echo("no sort runs yet")
        return
    table = Table()
    for name in ("run", "state", "started", "dest", "files"):
        table.add_column(name, no_wrap=name in ("run", "state"))
    for run in found:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(run["journal"].items()))
        table.add_row(run["run_id"], run["state"], run["started_at"], run["dest"], counts)
    Console(highlight=False).print(table)
