"""``civitai-mirror demo``: the whole pipeline, offline, on generated sample data, then served.

The sample data comes from civitai_mirror.samples; the steps are the commands a user would type.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from civitai_mirror.cli import cli
from civitai_mirror.samples import write_sample_collection, write_sample_dump
from matcher.hashing import hash_file

MARKER = ".civitai-mirror-demo"


def demo_steps(lookup_hash: str, *, serve: bool, host: str, port: int) -> list[list[str]]:
    """The commands the demo runs, in order, as a user would type them in the demo folder."""
    steps = [
        ["build", "civitai-meta", "--db", "civitai.sqlite"],
        ["scan", "collection", "--db", "library.sqlite"],
        ["match", "--db", "library.sqlite", "--civitai-db", "civitai.sqlite"],
        ["sort", "--dest", "sorted", "--dry-run", "--db", "library.sqlite", "--civitai-db", "civitai.sqlite"],
        ["lookup", "--db", "civitai.sqlite", lookup_hash],
    ]
    if serve:
        steps.append(["serve", "--db", "civitai.sqlite", "--library", "library.sqlite",
                      "--dump", "civitai-meta", "--host", host, "--port", str(port)])
    return steps


def prepare_demo(directory: str | Path) -> Path:
    """Write the sample collection and dump into ``directory`` (once; never over a user's files)."""
    directory = Path(directory).resolve()
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise FileExistsError(f"{directory} exists and is not a civitai-mirror demo folder; "
                              "choose another with --dir")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("sample data written by `civitai-mirror demo`\n")
    if not (directory / "collection").exists():
        write_sample_collection(directory / "collection")
    if not (directory / "civitai-meta").exists():
        write_sample_dump(directory / "civitai-meta", directory / "collection")
    return directory


@click.command(name="demo")
@click.option("--dir", "directory", default="civitai-mirror-demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Folder for the sample dump, collection and databases (created; reused on a re-run).")
@click.option("--serve/--no-serve", "serve_after", default=True, show_default=True,
              help="Start `serve` at the end (Ctrl-C stops it).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=click.IntRange(0, 65535))
def demo(directory: str, serve_after: bool, host: str, port: int) -> None:
    """Run the whole pipeline offline on bundled sample data, then serve it.

    Writes a small sample dump (30 made-up models of every type and schema generation) and a
    sample collection (tiny real safetensors files and images whose infotexts reference them),
    then runs build, scan (with extract), match, a dry-run sort and a lookup, printing each
    command as you would type it, and finally serves both databases in Datasette.

    \b
    Example:
        civitai-mirror demo
        civitai-mirror demo --dir /tmp/cm-demo --no-serve
    """
    try:
        root = prepare_demo(directory)
    except FileExistsError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # e.g. --dir under a file, or a folder we may not write
        raise click.ClickException(f"cannot write the demo into {directory}: "
                                   f"{error.strerror or error}") from None
    click.echo(f"Sample dump in {root / 'civitai-meta'}, sample collection in {root / 'collection'}")
    dreamy = hash_file(root / "collection" / "checkpoints" / "dreamy_mix_v2.safetensors")["AutoV2"].lower()
    previous = os.getcwd()
    os.chdir(root)
    try:
        for args in demo_steps(dreamy, serve=serve_after, host=host, port=port):
            click.echo(click.style(f"\n$ civitai-mirror {' '.join(args)}", bold=True))
            try:
                cli.main(args, prog_name="civitai-mirror", standalone_mode=False)
            except SystemExit as exit_:  # lookup exits 1 when a hash is unknown, like grep
                if exit_.code not in (0, None):
                    raise click.ClickException(f"step failed: civitai-mirror {' '.join(args)}") from None
    finally:
        os.chdir(previous)
    if not serve_after:
        click.echo(f"\nDone. Serve it with: cd {root} && civitai-mirror serve --db civitai.sqlite "
                   "--library library.sqlite --dump civitai-meta")
