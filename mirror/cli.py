"""Command line for the mirror: thin wrappers over mirror.build, mirror.lookup and mirror.serve."""
from __future__ import annotations

import click

@click.command(name="build")
def build() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'build' is not built yet")

@click.command(name="lookup")
def lookup() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'lookup' is not built yet")

@click.command(name="serve")
def serve() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'serve' is not built yet")
