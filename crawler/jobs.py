"""Crawl jobs: which ids to fetch (range, --retry, --crawl, --recheck-crawled), and the worker pool.

``await run_crawl(options, client)`` is the whole of ``civitai-mirror crawl`` without the command
line: one generator of work units (one id, or a batch of up to 100 ids) shared by ``threads`` workers,
the dump's logs as the archive of what is done. Setting ``stop`` (an asyncio.Event) makes it stop
taking new work, finish what is in flight and write its logs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from crawler import api
from crawler.bodies import MEDIA_EXTENSIONS
from crawler.client import CivitaiClient, Response, host_of, parse_json_body
from crawler.dump import Dump, ImageLog
from crawler.layout import dumps, image_path, model_path

log = logging.getLogger(__name__)


@dataclass
class CrawlOptions:
    out: Path = Path("civitai-meta")
    start: int | None = None
    end: int | None = None
    retry: bool = False
    crawl: bool = False
    recheck_crawled: bool = False
    refresh: bool = False
    recheck_notfound: bool = False
    per_id: bool = False
    confirm_missing: bool = False
    stop_after: int = 1000
    threads: int = 5
    images: bool = False
    image_width: int | None = 450
    ids: tuple[int, ...] = ()  # fetched again whatever the logs say (update's refresh)


@dataclass
class CrawlStats:
    total: int = 0
    done: int = 0
    found: int = 0
    notfound: int = 0
    errors: int = 0
    kept: int = 0
    skipped: int = 0
    images: int = 0
    images_notfound: int = 0
    image_errors: int = 0
    image_bytes: int = 0
    requests: int = 0
    interrupted: bool = False
    rebuilt: int = 0
    missing: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        text = (
            f"{self.done} ids: {self.found} saved, {self.notfound} not found, {self.errors} errors, "
            f"{self.skipped} skipped (already known), {self.kept} kept beside; {self.requests} requests "
            f"in {time.monotonic() - self.started:.1f}s"
        )
        if self.images or self.image_errors or self.images_notfound:
            text += f"; images: {self.images} saved ({self.image_bytes / 1e6:.1f} MB), {self.image_errors} errors"
        if self.interrupted:
            text += " (interrupted)"
        return text


class Crawler:
    def __init__(self, options: CrawlOptions, client: CivitaiClient,
                 on_progress: Callable[[CrawlStats], None] | None = None,
                 stop: asyncio.Event | None = None):
        self.o = options
        self.client = client
        self.on_progress = on_progress
        self.stop = stop or asyncio.Event()
        self.stats = CrawlStats()
        self.dump = Dump(options.out)
        self.hosts = ",".join(host_of(b) for b in client.api_bases)
        self.image_log: ImageLog | None = None
        self.image_queue: asyncio.Queue | None = None
        self.images_seen: set[int] = set()
        self.crawl_mode_ids = False
        self.outcomes: dict[int, str] = {}
        self._next_progress = 0.0
        self._new_files: list[tuple[int, bytes, str]] = []  # (id, file bytes, host) waiting for _write_new

    # -- progress ---------------------------------------------------------------------------

    WRITE_EVERY = 0.02  # seconds a new model file may wait to be written with the others (see _write_new)
    PROGRESS_EVERY = 0.1  # seconds between progress callbacks (a bar redraws ~10 times a second anyway)

    def _progress(self, force: bool = False) -> None:
        """Tell ``on_progress`` how far we are: at most every PROGRESS_EVERY seconds, unless ``force``."""
        self.stats.requests = self.client.stats.requests
        if self.on_progress:
            now = time.monotonic()
            if force or now >= self._next_progress:
                self._next_progress = now + self.PROGRESS_EVERY
                self.on_progress(self.stats)

    # -- outcomes ---------------------------------------------------------------------------

    def _record(self, model_id: int, outcome: str) -> None:
        self.outcomes[model_id] = outcome
        if self.crawl_mode_ids and outcome != "error":
            self.dump.mark_crawled(model_id)
        self.stats.done += 1

    async def _saved(self, model_id: int, model: dict, host: str) -> None:
        if not self.o.images and model_id not in self.dump.on_disk:
            # A new file: written together with the others of the next WRITE_EVERY seconds (see _write_new).
            pending = self._new_files
            if not pending:
                asyncio.get_running_loop().call_later(self.WRITE_EVERY, self._write_new)
            pending.append((model_id, dumps(model), host))  # serialised now, while the model is in the CPU's cache
            return
        try:
            status = self.dump.save_model(model_id, model, host)
        except OSError as exc:  # disk full, permissions, a file where a folder should be: an error for this id
            log.error("model %d: could not write its file: %s", model_id, exc)
            self._error(model_id, f"write failed: {exc}")
            return
        self.stats.found += 1
        if status == "kept":
            self.stats.kept += 1
            model = None  # the kept good copy is the one whose images we archive
        self._record(model_id, "ok")
        if self.o.images:
            await self._queue_images(model_id, model)

    def _write_new(self) -> None:
        """Write the new model files queued by :meth:`_saved` (at most ``WRITE_EVERY`` seconds ago)
        back to back: the file system's code runs warm, which costs about a third less kernel CPU
        per file than one file between two network reads. Each id counts as saved, and its downloaded.txt line is
        queued (see :meth:`Dump.batch_logs`), only once its file is in place; a kill loses queued
        files that were never logged (fetched again by the next run) and nothing else."""
        pending, self._new_files = self._new_files, []
        if not pending:
            return
        dump = self.dump
        stats = self.stats
        outcomes = self.outcomes
        for model_id, data, host in pending:
            try:
                dump.write_new(model_id, data)
            except OSError as exc:  # disk full, permissions, a file where a folder should be
                log.error("model %d: could not write its file: %s", model_id, exc)
                self._error(model_id, f"write failed: {exc}")
                continue
            except Exception:  # a bug must not lose the other ids of the batch
                log.exception("model %d: saving failed", model_id)
                self._error(model_id, "internal error")
                continue
            dump.log_saved(model_id, host)
            stats.found += 1
            if self.crawl_mode_ids:
                self._record(model_id, "ok")
            else:  # _record inlined: the path of every saved id
                outcomes[model_id] = "ok"
                stats.done += 1

    def _notfound(self, model_id: int, body: object = None) -> None:
        if self.dump.mark_notfound(model_id, self.hosts, body) == "kept":
            self.stats.kept += 1
        else:
            self.stats.notfound += 1
        self._record(model_id, "notfound")

    def _error(self, model_id: int, reason: str) -> None:
        self.dump.mark_error(model_id, reason)
        self.stats.errors += 1
        self._record(model_id, "error")

    # -- units ------------------------------------------------------------------------------

    async def _one(self, model_id: int) -> None:
        resp = await api.fetch_model(self.client, model_id)
        if resp.outcome == "ok":
            await self._saved(model_id, resp.data, resp.host)
        elif resp.outcome == "notfound":
            self._notfound(model_id, resp.data)
        else:
            self._error(model_id, resp.reason or f"HTTP {resp.status}")

    async def _batch(self, ids: list[int]) -> None:
        result = await api.fetch_models_batch(self.client, ids)
        for model_id in sorted(result.found):
            model, host = result.found[model_id]
            await self._saved(model_id, model, host)
        for model_id in result.absent:
            if self.o.confirm_missing:
                await self._one(model_id)
            else:
                self._notfound(model_id, {"error": f"No model with id {model_id}"})
        for model_id in result.failed:  # the batch failed after its retries: one by one
            await self._one(model_id)

    async def _worker(self, units: Iterator) -> None:
        """Take work units from ``units`` (shared by all workers) until it is empty or ``stop`` is set.

        One generator shared by a fixed pool of workers instead of a queue with a producer: a
        ``next()`` runs to the end without awaiting, so two workers never run it at once, and no
        Future is made per id (a bounded queue makes one per ``put`` and ``get`` that waits)."""
        stop = self.stop
        one = self._one
        on_progress = self.on_progress
        while not stop.is_set():
            unit = next(units, None)
            if unit is None:
                return
            try:
                if type(unit) is int:
                    await one(unit)
                elif isinstance(unit, list):
                    await self._batch(unit)
                else:  # (model_id,): a skipped, already downloaded id whose images are archived
                    await self._queue_images(unit[0], None)
            except Exception:  # a bug must not stop the pool; log it and record the ids as errors
                log.exception("crawl of %s failed", unit)
                self._write_new()  # ids of the unit already queued for writing get their outcome first
                if not isinstance(unit, tuple):
                    for model_id in unit if isinstance(unit, list) else [unit]:
                        if model_id not in self.outcomes:
                            self._error(model_id, "internal error")
            if on_progress:  # (the final call of run() reports the end state in any case)
                self._progress()

    # -- selecting ids ----------------------------------------------------------------------

    def _wanted(self, model_id: int, forced: bool) -> bool:
        if forced:
            return True
        if model_id in self.dump.downloaded:
            return self.o.refresh
        if model_id in self.dump.notfound:
            return self.o.recheck_notfound
        return True

    def _units(self, ids: Iterable[int], forced: bool = False) -> Iterator:
        """Work units for ``ids`` (ascending), skipping known ones: an id (per-id), a list of up to
        100 ids (batch), or ``(id,)`` for a skipped downloaded id whose images are to be archived."""
        size = 1 if self.o.per_id else api.BATCH_SIZE
        images = self.o.images
        chunk: list[int] = []
        for model_id in ids:
            if not self._wanted(model_id, forced):
                self.stats.skipped += 1
                self.stats.done += 1
                if images and model_id in self.dump.downloaded:
                    yield (model_id,)
                if self.stats.skipped % 1000 == 0:
                    self._progress()
                continue
            if size == 1:
                yield model_id
                continue
            chunk.append(model_id)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _process(self, ids: Iterable[int], forced: bool = False) -> None:
        units = self._units(ids, forced)
        workers = [asyncio.create_task(self._worker(units)) for _ in range(self.o.threads)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._write_new()  # whatever the last loop iteration queued (a no-op when it already ran)

    # -- images -----------------------------------------------------------------------------

    async def _queue_images(self, model_id: int, model: dict | None) -> None:
        if not self.o.images or self.image_queue is None:
            return
        if model is None:
            try:
                model = api.check_model(parse_json_body(model_path(self.dump.root, model_id).read_bytes()))
            except Exception:  # an unreadable file: nothing to archive
                return
        for image in api.model_images(model):
            image_id, ext = api.image_id_and_ext(image)
            if image_id is None or image_id in self.images_seen or self.image_log.known(image_id):
                continue
            self.images_seen.add(image_id)
            await self.image_queue.put((model_id, image_id, ext, api.image_url(image["url"], self.o.image_width)))

    async def _image_worker(self) -> None:
        assert self.image_queue is not None and self.image_log is not None
        while True:
            model_id, image_id, ext, url = await self.image_queue.get()
            try:
                dest = image_path(self.dump.root, image_id, ext)
                if ext in MEDIA_EXTENSIONS:
                    resp = await self.client.download(url, dest)
                else:  # a page or a script by its name (.html, .svg): never saved, never asked for
                    resp = Response(url, "error", reason=f"not an image or video extension (.{ext})")
                if resp.outcome == "ok":
                    self.image_log.mark_downloaded(image_id, model_id, f"{dest.parent.name}/{dest.name}")
                    self.stats.images += 1
                    self.stats.image_bytes += resp.nbytes
                elif resp.outcome == "notfound":
                    self.image_log.mark_notfound(image_id, model_id)
                    self.stats.images_notfound += 1
                else:
                    self.image_log.mark_error(image_id, model_id, resp.reason or f"HTTP {resp.status}")
                    self.stats.image_errors += 1
            except Exception:
                log.exception("image %s failed", image_id)
                self.image_log.mark_error(image_id, model_id, "internal error")
                self.stats.image_errors += 1
            finally:
                self.image_queue.task_done()
                self._progress()

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> CrawlStats:
        o = self.o
        self.dump.load()
        self.stats.rebuilt = self.dump.rebuilt
        self.dump.batch_logs(asyncio.get_running_loop())
        image_workers: list[asyncio.Task] = []
        if o.images:
            self.image_log = ImageLog(self.dump.root)
            self.image_queue = asyncio.Queue(maxsize=o.threads * 100)
            image_workers = [asyncio.create_task(self._image_worker()) for _ in range(o.threads)]
        try:
            forced: list[int] = []
            if o.retry:
                forced.extend(sorted(self.dump.errors))
            if o.recheck_crawled:
                forced.extend(i for i in sorted(self.dump.crawled) if i not in self.dump.downloaded)
            forced.extend(o.ids)
            forced = sorted(set(forced))
            forced_set = set(forced)
            range_ids: range | None = None
            if o.start is not None and o.end is not None:
                range_ids = range(o.start, o.end + 1)
            self.stats.total = len(forced) + (len(range_ids) if range_ids else 0)
            self._progress()
            if forced:
                await self._process(forced, forced=True)
            if range_ids and not self.stop.is_set():
                await self._process((i for i in range_ids if i not in forced_set))
            if o.crawl and not self.stop.is_set():
                await self._crawl_new()
            if self.image_queue is not None and not self.stop.is_set():
                await self.image_queue.join()
        except asyncio.CancelledError:
            self.stats.interrupted = True
            raise
        finally:
            for w in image_workers:
                w.cancel()
            await asyncio.gather(*image_workers, return_exceptions=True)
            if self.stop.is_set():
                self.stats.interrupted = True
            self._write_new()
            self.dump.finish()
            if self.image_log is not None:
                self.image_log.finish()
            self.stats.missing = len(self.dump.missing())
            self._progress(force=True)
        return self.stats

    async def _crawl_new(self) -> None:
        """Fetch every id between the highest known one and the newest model's id; else probe upward."""
        self.crawl_mode_ids = True
        first = self.dump.highest_known_id() + 1
        top = await api.fetch_newest_model_id(self.client)
        if top is not None and top >= first:
            log.info("newest model id is %d; crawling %d..%d", top, first, top)
            self.stats.total += top - first + 1
            await self._process(range(first, top + 1))
        elif top is None:
            log.warning("could not read the newest model id; probing upward from %d", first)
            await self._probe(first)
        self.crawl_mode_ids = False

    async def _probe(self, first: int) -> None:
        """dumptool's discovery: fetch upward until ``stop_after`` consecutive ids are not found."""
        window = self.o.threads * (1 if self.o.per_id else api.BATCH_SIZE)
        misses = 0
        current = first
        while misses < self.o.stop_after and not self.stop.is_set() and current <= api.MAX_ID:
            ids = range(current, min(current + window, api.MAX_ID + 1))
            self.stats.total += len(ids)
            await self._process(ids)
            for model_id in ids:
                outcome = self.outcomes.get(model_id)
                if outcome == "ok" or (outcome is None and model_id in self.dump.downloaded):
                    misses = 0
                elif outcome == "notfound" or (outcome is None and model_id in self.dump.notfound):
                    misses += 1
                # errors neither count as a miss nor reset the count
            current = ids.stop
        self.crawl_mode_ids = False


async def run_crawl(options: CrawlOptions, client: CivitaiClient,
                    on_progress: Callable[[CrawlStats], None] | None = None,
                    stop: asyncio.Event | None = None) -> CrawlStats:
    return await Crawler(options, client, on_progress, stop).run()
