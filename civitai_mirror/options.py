"""What every command shares: the same ``-v/--verbose``, ``--json``, database and ``--config`` options,
one logging set-up and one progress bar.

The conventions, for every command:

* ``-v/--verbose`` counts: ``-v`` logs what is done (INFO), ``-vv`` everything (DEBUG); without it
  only warnings and errors reach stderr. Library code logs through ``logging``; only commands print.
* ``--json`` prints machine-readable output on stdout (one object, or one object per line).
* ``--db`` names the database the command works on; ``--civitai-db`` the mirror a matcher command reads.
* Progress bars go to stderr, and only when stderr is a terminal.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from matcher.config import ENV_VAR
from mirror.schema import WrongDatabase, check_database_file

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def verbose_option(help: str = "Log more to stderr (-v what is done, -vv everything).") -> Callable:
    return click.option("-v", "--verbose", count=True, help=help)


def json_option(help: str = "Print the result as JSON on stdout.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def db_option(default: str | None, help: str) -> Callable:
    """``--db``: the database the command reads or writes (``default`` None: from config.ini)."""
    return click.option("--db", "db_path", default=default, show_default=default is not None,
                        type=click.Path(dir_okay=False), help=help)


def civitai_db_option(default: str | None = "civitai.sqlite",
                      help: str = "The mirror (built by `civitai-mirror build`).") -> Callable:
    return click.option("--civitai-db", "civitai_db", default=default, show_default=default is not None,
                        type=click.Path(dir_okay=False), help=help)


_MISSING = {
    "civitai": "no mirror database at {path}; run civitai-mirror build first",
    "library": "{path} does not exist; run `civitai-mirror scan DIR --db {path}` first",
}


def require_database(path: str | Path | None, kind: str, must_exist: bool = False) -> None:
    """A one-line error unless ``path`` is a database of ``kind`` (``"civitai"``: the mirror,
    ``"library"``), or is still empty; ``must_exist``: a missing file is an error too (else it is
    one to create). Call it before opening, so nothing is written to the wrong file. A file that
    is not SQLite at all raises ``sqlite3.DatabaseError``, which the group reports in one line."""
    if path is None:
        return
    if not Path(path).exists():
        if must_exist:
            raise click.ClickException(_MISSING[kind].format(path=path))
        return
    try:
        check_database_file(path, kind)
    except WrongDatabase as exc:
        raise click.ClickException(str(exc)) from None


def config_option(help: str = f"config.ini to read (default: ${ENV_VAR} or ./config.ini).") -> Callable:
    return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=help)


def setup_logging(verbose: int | bool | None) -> None:
    """WARNING, INFO (``-v``) or DEBUG (``-vv``) on stderr; safe to call more than once."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(int(verbose or 0), logging.DEBUG)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)
    root.setLevel(level)


class Bar:
    """A progress callback: ``bar(advance=n)``, ``bar(completed=n, total=m)``; a no-op when hidden."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def __bool__(self) -> bool:
        return self._progress is not None

    def __call__(self, advance: int = 0, total: int | None = None, completed: int | None = None,
                 **fields: Any) -> None:
        if self._progress is None:
            return
        if total is not None or completed is not None or fields:
            self._progress.update(self._task, total=total, completed=completed, **fields)
        if advance:
            self._progress.advance(self._task, advance)


@contextlib.contextmanager
def progress_bar(description: str, *, unit: str = "items", total: int | None = None, info: bool = False,
                 console: Any = None) -> Iterator[Bar]:
    """A rich progress bar on stderr, or a silent ``Bar`` when stderr is not a terminal.

    ``unit="bytes"`` shows bytes and bytes/s instead of done/total; ``info=True`` adds a text column
    the caller fills with ``bar(info=...)``; ``console`` is a rich Console to share with messages.
    """
    if not sys.stderr.isatty():
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    extra = (TextColumn("{task.fields[info]}"),) if info else ()
    with Progress(TextColumn(description), BarColumn(), *counts, *extra, TimeRemainingColumn(),
                  console=console or Console(stderr=True), transient=True) as progress:
        yield Bar(progress, progress.add_task(description, total=total, info=""))


def human_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (powers of 1000, as drives are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
