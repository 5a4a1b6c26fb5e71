"""``sort``, ``undo`` and ``runs``: plan moves (matcher.plan), apply and undo them (matcher.journal)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from civitai_mirror.options import (civitai_db_option, config_option, db_option, json_option, progress_bar,
                                    require_database)
from matcher.config import load_config, resolve
from matcher.fsnames import shown
from matcher.journal import apply_plan, list_runs, recover_runs, undo_run
from matcher.plan import Plan, PlanError, plan_moves
from matcher.schema import open_library

#: A saved plan larger than this is refused unread (a plan of 100,000 moves is about 50 MB).
MAX_PLAN_BYTES = 1 << 30


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
    """The plan as a table at a terminal (long paths fold, never cut); elsewhere one line per move,
    ``SOURCE → DESTINATION  (why)``, with whole paths."""
    console = Console(highlight=False)
    if plan.moves and console.is_terminal:
        sources = [os.path.dirname(m.source) for m in plan.moves]
        base = os.path.commonpath(sources) if sources else plan.dest
        table = Table(title="Sort plan")
        table.add_column(f"Source (in {shown(base)})", overflow="fold")
        table.add_column("→")
        table.add_column(f"Destination (in {plan.dest})", overflow="fold")
        table.add_column("Why", no_wrap=True)
        for move in plan.moves:
            table.add_row(_short(shown(move.source), base), "→", _short(move.destination, plan.dest), move.role)
        console.print(table, markup=False)
    else:
        for move in plan.moves:
            click.echo(f"{shown(move.source)} → {move.destination}  ({move.role})")
    if show_ignored:
        for item in plan.ignored:
            click.echo(f"ignored: {item.path} ({item.reason})")
    summary = plan.summary()
    reasons = Counter(i.reason.split(":")[0] for i in plan.ignored)
    click.echo(f"{summary['moves']} to move ({summary['bytes']:,} bytes), {summary['in_place']} already in place, "
               f"{summary['ignored']} left in place"
               + (" (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common(4)) + ")" if reasons else ""))


class Interrupted(click.ClickException):
    """Ctrl-C in the middle of moving files: say what state things are in and what to run."""
    exit_code = 130


def interrupted_hint(db) -> Interrupted:
    run = next(iter(db.query("select * from runs where state in ('interrupted', 'undoing', 'running') "
                             "order by _started_at desc, rowid desc limit 1")), None)
    if run is None:
        return Interrupted("interrupted before anything moved")
    counts = {r["state"]: r["n"] for r in db.query(
        "select state, count(*) as n from journal where run_id = ? group by state", [run["id"]])}
    if run["state"] == "undoing":
        return Interrupted(f"undo of run {run['id']} interrupted ({counts.get('undone', 0)} files put back); "
                           "run `civitai-mirror undo` again to finish it")
    return Interrupted(f"interrupted: run {run['id']} moved {counts.get('done', 0)} of {run['moves']} files; "
                       "`civitai-mirror sort --resume` finishes it, `civitai-mirror undo` puts them back")


def load_plan(plan_file: str, dest_given: str | None) -> Plan:
    """A plan saved by --save-plan; one line for anything that is not one, or for another --dest."""
    if os.path.getsize(plan_file) > MAX_PLAN_BYTES:
        raise click.ClickException(f"{plan_file} is larger than {MAX_PLAN_BYTES >> 20} MiB; not a saved plan")
    try:
        plan = Plan.from_json(Path(plan_file).read_text(encoding="utf-8", errors="replace"))
    except PlanError as exc:
        raise click.ClickException(f"{plan_file} is not a plan saved by --save-plan: {exc}") from None
    if dest_given and os.path.realpath(os.path.expanduser(dest_given)) != os.path.realpath(plan.dest):
        # Not re-rooted: the plan's counters and duplicate choices were made against what the other
        # tree held, so moving its files under a new root would apply decisions made for another place.
        raise click.ClickException(
            f"{plan_file} was planned for --dest {plan.dest}, not {dest_given}; leave --dest out to apply it "
            f"there, or plan again with `civitai-mirror sort --dest {dest_given} --save-plan FILE --dry-run`")
    return plan


def apply_with_progress(db, plan):
    """Apply ``plan`` with a progress bar; Ctrl-C ends in one line that says what to run next."""
    try:
        with progress_bar("moving", total=len(plan.moves)) as bar:
            return apply_plan(db, plan, progress=lambda row: bar(advance=1))
    except KeyboardInterrupt:
        raise interrupted_hint(db) from None


def echo_run(summary: dict, as_json: bool, exit_on_problems: bool = True) -> None:
    """Print a run summary, then every file that failed or was refused and why; exit 1 if any."""
    if as_json:
        click.echo(json.dumps(summary))
    else:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["journal"].items()))
        click.echo(f"run {summary['run_id']}: {summary['state']} ({counts or 'nothing'})")
        for item in summary.get("failed", []):
            click.echo(f"failed: {item['source']}: {item['reason']}")
        for item in summary.get("refused", []):
            click.echo(f"refused: {item['destination']}: {item['reason']}")
    if exit_on_problems and (summary.get("failed") or summary.get("refused")):
        raise SystemExit(1)


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
    dest_given = dest
    config, db_path, civitai_db, dest = sort_settings(config_path, db_path, civitai_db, dest)
    require_database(civitai_db, "civitai")  # sort reads only the stored matches, but never a wrong file
    db = open_sort_db(db_path)
    if resume or rollback:
        try:
            recovered = recover_runs(db, rollback=rollback)
        except KeyboardInterrupt:
            raise interrupted_hint(db) from None
        for summary in recovered:
            echo_run(summary, as_json, exit_on_problems=False)
        if not as_json:
            click.echo("nothing left to recover" if not db.execute(
                "select count(*) from runs where state in ('running', 'interrupted', 'undoing')").fetchone()[0]
                else "some runs are still running in another process")
        if any(summary.get("refused") or summary.get("failed") for summary in recovered):
            raise SystemExit(1)
        return
    if plan_file:
        plan = load_plan(plan_file, dest_given)
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
                click.echo(json.dumps({"source": shown(move.source), "destination": move.destination, "role": move.role,
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
    except KeyboardInterrupt:
        raise interrupted_hint(db) from None
    echo_run(summary, as_json)


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
