"""Command line for the crawler: thin wrappers over crawler.jobs and crawler.client."""
from __future__ import annotations

import click

@click.command(name="crawl")
def crawl() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'crawl' is not built yet")

@click.command(name="get")
def get() -> None:
    """(Not built yet.)"""
    raise click.ClickException("'get' is not built yet")
