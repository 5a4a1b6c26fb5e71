"""``crawl`` and ``get``: thin wrappers over crawler.jobs and crawler.client."""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click
import orjson
from rich.console import Console

from civitai_mirror.options import json_option, progress_bar, setup_logging, verbose_option
from crawler.bodies import DEFAULT_MAX_BODY, DEFAULT_MAX_IMAGE, MB
from crawler.client import DEFAULT_API_BASE, CivitaiClient
from crawler.jobs import CrawlOptions, run_crawl
from crawler.limits import FIRST_PAUSE, QUICK_RETRY


def client_options(f):
    """Options shared by crawl and get (the HTTP policy)."""
    options = [
        click.option("--api-base", "api_bases", multiple=True, metavar="URL", envvar="CIVITAI_API_BASE",
                     show_envvar=True,
                     help=f"API base URL; repeat for more hosts (default {DEFAULT_API_BASE}; "
                          "CIVITAI_API_BASE may hold several, space-separated)."),
        click.option("--api-key", envvar="CIVITAI_API_KEY", show_envvar=True, default=None, metavar="KEY",
                     help="Civitai API key, sent as a Bearer header; never written to disk or logs."),
        click.option("--max-rps", type=float, default=None, help="Cap on requests per second (all workers together)."),
        click.option("--retries", type=click.IntRange(0, 100), default=4, show_default=True,
                     help="Retries per request after connection errors, timeouts, 429, 5xx or bad bodies."),
        click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per request attempt."),
        click.option("--sleep-retries", type=float, default=1.0, show_default=True,
                     help="First back-off in seconds when requests keep failing (doubles per retry, with "
                          f"jitter, cap 30); a failure while others succeed is retried after {QUICK_RETRY:g} s."),
        click.option("--sleep-429", type=float, default=30.0, show_default=True,
                     help="Longest pause of the whole crawl while 429s without Retry-After continue with no "
                          f"success between them (the first is {FIRST_PAUSE:g} s, doubling up to this)."),
        click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=DEFAULT_MAX_BODY / MB,
                     show_default=True,
                     help="Largest API answer in MB, compressed or inflated; a larger one is an error for its ids."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_client(api_bases, api_key, threads, max_rps, retries, timeout, sleep_retries, sleep_429, max_body_mb,
                 max_image_mb=DEFAULT_MAX_IMAGE / MB) -> CivitaiClient:
    for base in api_bases:
        if not base.startswith(("http://", "https://")):
            raise click.ClickException(f"--api-base must be an http(s) URL, got {base!r}")
    return CivitaiClient(list(api_bases) or None, api_key=api_key, threads=threads, max_rps=max_rps,
                         retries=retries, timeout=timeout, sleep_retries=sleep_retries, sleep_429=sleep_429,
                         max_body=int(max_body_mb * MB), max_image=int(max_image_mb * MB))


def stop_on_signals(console: Console) -> asyncio.Event:
    """An event set by the first Ctrl-C or SIGTERM (finish what is in flight, write the logs); a
    second one cancels the running task. Call from inside the event loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal():
        if stop.is_set():
            task.cancel()
        else:
            stop.set()
            console.print("stopping after the requests in flight (Ctrl-C again to quit now)")

    try:
        loop.add_signal_handler(signal.SIGINT, on_signal)
        loop.add_signal_handler(signal.SIGTERM, on_signal)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
        pass
    return stop


@click.command(name="crawl")
@click.option("--start", type=click.IntRange(1, 2147483647), default=None, help="First model id of a range.")
@click.option("--end", type=click.IntRange(1, 2147483647), default=None, help="Last model id of a range (inclusive).")
@click.option("--retry", is_flag=True, help="Re-fetch the ids in errors.txt.")
@click.option("--crawl", "discover", is_flag=True,
              help="Discover new ids: everything above the highest known id up to the newest model.")
@click.option("--recheck-crawled", is_flag=True, help="Re-fetch ids in crawled.txt that are not downloaded.")
@click.option("--refresh", is_flag=True, help="Re-fetch ids already in downloaded.txt (never clobbers a good copy).")
@click.option("--recheck-notfound", is_flag=True, help="Re-fetch ids already in notfound.txt.")
@click.option("--per-id", is_flag=True, help="One request per id (dumptool's way) instead of batches of 100.")
@click.option("--confirm-missing", is_flag=True, help="Batch mode: probe ids absent from a batch one by one.")
@click.option("--stop-after", type=click.IntRange(1), default=1000, show_default=True,
              help="--crawl fallback probing stops after this many consecutive not-found ids.")
@click.option("--threads", type=click.IntRange(1, 256), default=5, show_default=True, help="Concurrent requests.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("civitai-meta"),
              show_default=True, help="Dump folder.")
@click.option("--images", is_flag=True, help="Also save each version's preview images under DIR/images/.")
@click.option("--image-width", type=click.IntRange(0), default=450, show_default=True,
              help="Width of saved preview images (Civitai's width= URL part); 0 keeps the API's URL (original).")
@click.option("--max-image-mb", type=click.FloatRange(0, min_open=True), default=DEFAULT_MAX_IMAGE / MB,
              show_default=True, help="Largest image or video in MB (with --images); a larger one is an image error.")
@click.option("--color/--no-color", default=None, help="Colour in the progress bar and summary (default: auto).")
@json_option("Print the summary as one JSON object on stdout.")
@verbose_option()
@client_options
def crawl(start, end, retry, discover, recheck_crawled, refresh, recheck_notfound, per_id, confirm_missing,
          stop_after, threads, out, images, image_width, max_image_mb, color, as_json, verbose,
          api_bases, api_key, max_rps, retries, timeout, sleep_retries, sleep_429, max_body_mb) -> None:
    """Fetch Civitai models by id into a dump folder (DIR/12340000/12345678.json).

    Ranges are fetched 100 ids per request (GET /models?ids=...); --per-id asks one id at a time.
    Ids already in downloaded.txt or notfound.txt are skipped, so re-running a command resumes it.
    Logs in DIR: downloaded.txt, notfound.txt, errors.txt, crawled.txt, missing.txt, history.txt.

    \b
    Example:
        civitai-mirror crawl --start 1 --end 100000 -o civitai-meta
        civitai-mirror crawl --crawl --threads 8 --api-base https://civitai.com/api/v1 --api-base https://civitai.red/api/v1
        civitai-mirror crawl --retry
        civitai-mirror crawl --start 4400 --end 4500 --images --image-width 450
    """
    setup_logging(verbose)
    if (start is None) != (end is None):
        raise click.ClickException("--start and --end go together: give both for a range")
    if start is not None and end < start:
        raise click.ClickException(f"--end ({end}) is below --start ({start})")
    if start is None and not (retry or discover or recheck_crawled):
        raise click.ClickException("nothing to do: give --start N --end M, --retry, --crawl or --recheck-crawled")
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot make the dump folder {out}: {exc.strerror or exc}") from None

    options = CrawlOptions(out=out, start=start, end=end, retry=retry, crawl=discover,
                           recheck_crawled=recheck_crawled, refresh=refresh, recheck_notfound=recheck_notfound,
                           per_id=per_id, confirm_missing=confirm_missing, stop_after=stop_after, threads=threads,
                           images=images, image_width=image_width or None)
    client = make_client(api_bases, api_key, threads, max_rps, retries, timeout, sleep_retries, sleep_429,
                          max_body_mb, max_image_mb)

    console = Console(stderr=True, no_color=(color is False), force_terminal=None)

    async def main():
        stop = stop_on_signals(console)
        async with client:
            with progress_bar("crawl", info=True, console=console) as bar:
                def on_progress(s):
                    info = (f"[green]{s.found} found[/] {s.notfound} not found "
                            f"[red]{s.errors} errors[/] {client.stats.rps():.1f} req/s")
                    if options.images:
                        info += f" images {s.images} {client.stats.bandwidth() / 1e6:.2f} MB/s"
                    bar(completed=s.done, total=s.total or None, info=info)

                return await run_crawl(options, client, on_progress if bar else None, stop)

    try:
        stats = asyncio.run(main())
    except asyncio.CancelledError:
        console.print("interrupted; logs written")
        sys.exit(130)
    if as_json:
        click.echo(orjson.dumps({
            "done": stats.done, "found": stats.found, "notfound": stats.notfound, "errors": stats.errors,
            "skipped": stats.skipped, "kept": stats.kept, "requests": stats.requests, "missing": stats.missing,
            "images": stats.images, "image_errors": stats.image_errors, "image_bytes": stats.image_bytes,
            "interrupted": stats.interrupted, "out": str(out),
        }).decode())
    else:
        console.print(stats.summary(), highlight=False)
        if stats.rebuilt:
            console.print(f"rebuilt downloaded.txt from {stats.rebuilt} files on disk", highlight=False)
        if stats.missing:
            console.print(f"{stats.missing} json files on disk are not in downloaded.txt (see missing.txt)",
                          highlight=False)
    if stats.interrupted:
        sys.exit(130)


def _url_for(path: str, base: str) -> str:
    if path.startswith(("http://", "https://")):
        return path
    path = path.lstrip("/")
    if path.startswith("api/v1/"):
        path = path[len("api/v1/"):]
    return f"{base.rstrip('/')}/{path}"


@click.command(name="get")
@click.argument("path")
@verbose_option()
@client_options
def get(path, verbose, api_bases, api_key, max_rps, retries, timeout, sleep_retries, sleep_429, max_body_mb) -> None:
    """Print one API answer (as JSON) through the crawler's session and retry policy.

    PATH is relative to the API base (models/4437, /api/v1/models?ids=1,2) or a full URL.

    \b
    Example:
        civitai-mirror get models/4437
        civitai-mirror get "models?ids=4437,7808&nsfw=true"
        civitai-mirror get model-versions/by-hash/5B4CD3D7DB
    """
    setup_logging(verbose)
    client = make_client(api_bases, api_key, 1, max_rps, retries, timeout, sleep_retries, sleep_429, max_body_mb)
    url = _url_for(path, client.api_bases[0])

    async def main():
        async with client:
            return await client.get_json(url)

    resp = asyncio.run(main())
    if resp.data is not None:
        click.echo(orjson.dumps(resp.data, option=orjson.OPT_INDENT_2).decode())
    if resp.outcome != "ok":
        what = "not found" if resp.outcome == "notfound" else (resp.reason or "error")
        raise click.ClickException(f"{url.split('?')[0]}: {what} (HTTP {resp.status})")
