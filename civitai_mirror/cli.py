"""The one console script, ``civitai-mirror``: a click group that mounts every package's commands.

Commands are loaded lazily (``name -> "module:function"``) so ``civitai-mirror --help`` and a
crawl never pay for importing Datasette or Pillow.
"""
from __future__ import annotations

import importlib
import sqlite3

import click

from civitai_mirror import __version__

# Command name -> "module:attribute". Each package's cli.py owns its commands.
COMMANDS: dict[str, str] = {
    # crawler: API -> dump
    "crawl": "civitai_mirror.commands.crawl:crawl",
    "get": "civitai_mirror.commands.crawl:get",
    # mirror: dump -> civitai.sqlite, lookup, serving
    "build": "civitai_mirror.commands.mirror:build",
    "lookup": "civitai_mirror.commands.mirror:lookup",
    "serve": "civitai_mirror.commands.serve:serve",
    "update": "civitai_mirror.commands.update:update",
    "demo": "civitai_mirror.demo:demo",
    # matcher: disks -> library.sqlite -> matches -> plan -> journal
    "scan": "civitai_mirror.commands.library:scan",
    "hash": "civitai_mirror.commands.library:hash_files",
    "dfsn": "civitai_mirror.commands.dfsn:dfsn",
    "extract": "civitai_mirror.commands.media:extract",
    "inspect": "civitai_mirror.commands.media:inspect",
    "match": "civitai_mirror.commands.match:match",
    "pin": "civitai_mirror.commands.match:pin",
    "unpin": "civitai_mirror.commands.match:unpin",
    "sort": "civitai_mirror.commands.sort:sort",
    "undo": "civitai_mirror.commands.sort:undo",
    "runs": "civitai_mirror.commands.sort:runs",
    "legacy": "civitai_mirror.commands.legacy:legacy",
}


class OneLineUsageError(click.ClickException):
    """A usage error in one line (the message and where help is), not usage + hint + message."""
    exit_code = 2

    def __init__(self, error: click.UsageError):
        where = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        super().__init__(error.format_message() + where)


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they are used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option value, a missing argument: one line
            raise OneLineUsageError(exc) from None
        except sqlite3.DatabaseError as exc:  # e.g. --db names a file that is not SQLite
            if getattr(exc, "says_which", False):  # mirror.schema.WrongDatabase: already one line
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(
                f"cannot use the database: {exc} (check --db, --civitai-db and --library)") from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="civitai-mirror")
def cli() -> None:
    """Crawl Civitai, mirror it offline, and match your local collection against it.

    \b
    Example:
        civitai-mirror crawl --start 1 --end 5000 -o civitai-meta
        civitai-mirror build civitai-meta --db civitai.sqlite
        civitai-mirror serve --db civitai.sqlite
    """
