"""Command line for the matcher: thin wrappers over the matcher modules.

Sections, one per area (keep edits inside your own section):
scan/hash/dfsn, extract/inspect, match/pin/unpin, sort/undo/runs/legacy.
"""
from __future__ import annotations

import click

# ---- scan / hash / dfsn ------------------------------------------------------

@click.command(name="scan")
def scan() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'scan' is not built yet")

@click.command(name="hash")
def hash_files() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'hash' is not built yet")

@click.command(name="dfsn")
def dfsn() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'dfsn' is not built yet")

# ---- extract / inspect -------------------------------------------------------

@click.command(name="extract")
def extract() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'extract' is not built yet")

@click.command(name="inspect")
def inspect() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'inspect' is not built yet")

# ---- match / pin / unpin ------------------------------------------------------

@click.command(name="match")
def match() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'match' is not built yet")

@click.command(name="pin")
def pin() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'pin' is not built yet")

@click.command(name="unpin")
def unpin() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'unpin' is not built yet")

# ---- sort / undo / runs / legacy ----------------------------------------------

@click.command(name="sort")
def sort() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'sort' is not built yet")

@click.command(name="undo")
def undo() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'undo' is not built yet")

@click.command(name="runs")
def runs() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'runs' is not built yet")

@click.command(name="legacy")
def legacy() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'legacy' is not built yet")
