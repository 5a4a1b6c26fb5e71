"""The state of one dump folder over a run: which ids are downloaded, not found, failed, crawled.

Where each file goes is :mod:`crawler.layout`; how files and log lines are written so that a kill
cannot tear them is :mod:`crawler.writes`. No network here. A log line is appended only after its
file is in place, so a crash can at worst leave a file without its line (reported in missing.txt,
fetched again) — never a line without its file.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from crawler.api import check_model, is_worse
from crawler.client import Invalid, NotFound, parse_json_body
from crawler.clock import utc_now, utc_stamp
from crawler.layout import BLOCK_DIR, MODEL_FILE, block_of, dumps, model_path, pad
from crawler.writes import LogFile, read_log, rewrite_log, time_of, write_atomic, write_atomic_at

log = logging.getLogger(__name__)

# Model files are written relative to their block folder's descriptor where the OS has openat/renameat.
_DIR_FD = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_MAX_BLOCK_FDS = 4


class Dump:
    """The state of one dump folder: which ids are downloaded, not found, failed, crawled."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.downloaded: dict[int, list[str]] = {}
        self.notfound: dict[int, list[str]] = {}
        self.errors: dict[int, list[str]] = {}
        self.crawled: dict[int, list[str]] = {}
        self.on_disk: set[int] = set()
        self.rebuilt = 0
        self._logs: dict[str, LogFile] = {}
        self._logs_lock = threading.Lock()
        self._blocks: dict[int, str] = {}
        self._block_fds: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, list[tuple[int, list[str]]]] = {}

    # -- start of a run ---------------------------------------------------------------------

    def load(self) -> "Dump":
        self.root.mkdir(parents=True, exist_ok=True)
        self.on_disk = self._walk()
        self.downloaded = read_log(self.root / "downloaded.txt")
        if not self.downloaded:
            self._rebuild_downloaded()
        self.notfound = {i: c for i, c in read_log(self.root / "notfound.txt").items() if i not in self.downloaded}
        self.crawled = read_log(self.root / "crawled.txt")
        # errors.txt holds ids whose *latest* attempt failed: drop those a later line resolved.
        self.errors = {}
        for i, cols in read_log(self.root / "errors.txt").items():
            failed_at = time_of(cols)
            resolved = [time_of(c) for c in (self.downloaded.get(i), self.notfound.get(i)) if c is not None]
            if any(t and t >= failed_at for t in resolved):
                continue
            self.errors[i] = cols
        rewrite_log(self.root / "errors.txt", [self._line(i, c) for i, c in sorted(self.errors.items())])
        return self

    def _walk(self) -> set[int]:
        """Model ids with a json on disk; removes ``.part`` leftovers of a killed run (our own temp files)."""
        ids: set[int] = set()
        for entry in os.scandir(self.root):
            if not (entry.is_dir() and BLOCK_DIR.match(entry.name)):
                continue
            for f in os.scandir(entry.path):
                m = MODEL_FILE.match(f.name)
                if m:
                    ids.add(int(m.group(1)))
                elif f.name.endswith(".json.part"):
                    log.info("removing leftover %s", f.path)
                    os.unlink(f.path)
        images = self.root / "images"
        if images.is_dir():
            for entry in os.scandir(images):
                if entry.is_dir() and BLOCK_DIR.match(entry.name):
                    for f in os.scandir(entry.path):
                        if f.name.endswith(".part"):
                            os.unlink(f.path)
        return ids

    def _rebuild_downloaded(self) -> None:
        """downloaded.txt is missing or empty: rebuild it from the valid model files on disk."""
        lines = []
        for i in sorted(self.on_disk):
            path = model_path(self.root, i)
            try:
                check_model(parse_json_body(path.read_bytes()), i)
            except (Invalid, NotFound, OSError):
                log.warning("not a valid model file, left out of downloaded.txt: %s", path)
                continue
            when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.downloaded[i] = ["disk", when]
            lines.append(self._line(i, self.downloaded[i]))
        if lines:
            log.info("rebuilt downloaded.txt from %d files on disk", len(lines))
            rewrite_log(self.root / "downloaded.txt", lines)
        self.rebuilt = len(lines)

    @staticmethod
    def _line(i: int, cols: list[str]) -> str:
        return "\t".join([pad(i), *cols])

    def _log(self, name: str) -> LogFile:
        lf = self._logs.get(name)
        if lf is None:
            with self._logs_lock:
                lf = self._logs.setdefault(name, LogFile(self.root / name))
        return lf

    # -- during a run -----------------------------------------------------------------------

    def highest_known_id(self) -> int:
        return max([0, *self.downloaded, *self.crawled])

    def save_model(self, model_id: int, model: dict, host: str) -> str:
        """Save a model answer and log it; returns ``saved``, ``unchanged`` or ``kept`` (worse answer put beside).

        An ``unchanged`` answer of a model downloaded.txt already lists adds no line: a nightly
        refresh asks tens of thousands of models again, most of them the same, and the log would
        grow by that much every night for nothing it does not already say."""
        status = self.write_model(model_id, model)
        if status == "unchanged" and model_id in self.downloaded:
            self._resolved(model_id)
        else:
            self.log_saved(model_id, host)
        return status

    def _model_file(self, model_id: int) -> str:
        """``model_path`` as a string, block folders' names cached (a Path per file costs more than the write)."""
        block = model_id // 10000
        folder = self._blocks.get(block)
        if folder is None:
            folder = self._blocks[block] = os.path.join(self.root, block_of(model_id))
        return f"{folder}/{model_id:08d}.json"

    def _block_fd(self, model_id: int) -> int:
        """An open descriptor of the model's block folder (created if missing), cached: the file is
        then created and renamed relative to it (``openat``/``renameat``), with no path to build
        and walk per file. At most ``_MAX_BLOCK_FDS`` stay open (a crawl moves through the blocks
        in order)."""
        block = model_id // 10000
        fd = self._block_fds.get(block)
        if fd is None:
            if len(self._block_fds) >= _MAX_BLOCK_FDS:
                self._close_block_fds()
            folder = os.path.join(self.root, block_of(model_id))
            try:
                fd = os.open(folder, _DIR_FLAGS)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(folder, _DIR_FLAGS)
            self._block_fds[block] = fd
        return fd

    def _close_block_fds(self) -> None:
        fds, self._block_fds = self._block_fds, {}
        for fd in fds.values():
            os.close(fd)

    def write_model(self, model_id: int, model: dict) -> str:
        """The file part of :meth:`save_model`; log it with :meth:`log_saved`.

        The file holds the answer re-serialised canonically (:func:`dumps`), not the body bytes as
        received, so a list item of batch mode and a ``/models/{id}`` answer give the same file."""
        data = dumps(model)
        if model_id not in self.on_disk:  # the usual case: a new file, nothing to compare or keep
            self.write_new(model_id, data)
            return "saved"
        # known from the walk at load, or saved earlier in this run
        path = self._model_file(model_id)
        status = "saved"
        try:
            with open(path, "rb") as fh:
                old_bytes = fh.read()
            old = check_model(parse_json_body(old_bytes), model_id)
        except (Invalid, NotFound, OSError):
            old_bytes, old = b"", None
        if old_bytes == data:
            status = "unchanged"
        elif old is not None:
            why = is_worse(old, model)
            if why:
                self.keep_beside(model_id, data, why)
                status = "kept"
        if status == "saved":
            write_atomic(path, data)
        return status

    LOG_FLUSH_EVERY = 0.1  # seconds: how long a batched log line may wait for its write

    def write_new(self, model_id: int, data: bytes) -> None:
        """Write the file of a model that has none yet (``data``: its :func:`dumps`), atomically."""
        if _DIR_FD:
            write_atomic_at(self._block_fd(model_id), f"{model_id:08d}.json", data)
        else:
            write_atomic(self._model_file(model_id), data)
        self.on_disk.add(model_id)

    def batch_logs(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """From now on, lines for downloaded.txt, notfound.txt and crawled.txt are collected and
        written together, at most ``LOG_FLUSH_EVERY`` seconds after the first of them (one
        ``os.write`` per log for all), instead of one write per record: an append that grows a
        log costs the file system about as much as a whole small file. A line is still only
        queued once its file is in place; a kill can lose the queued lines, which leaves files
        without their line (reported in missing.txt, fetched again and found unchanged by the
        next run) — never a line without its file. :meth:`finish` writes what is queued."""
        self._loop = loop or asyncio.get_running_loop()

    def _append(self, name: str, model_id: int, cols: list[str]) -> None:
        """Log ``model_id`` with ``cols`` in ``name``; the last column is the UTC time, filled in
        here (not batching) or once for all lines of a batch when it is written."""
        if self._loop is None:
            cols[-1] = utc_now()
            self._log(name).write_lines([self._line(model_id, cols) + "\n"])
            return
        pending = self._pending
        if not pending:
            self._loop.call_later(self.LOG_FLUSH_EVERY, self.flush_logs)
        items = pending.get(name)
        if items is None:
            pending[name] = [(model_id, cols)]
        else:
            items.append((model_id, cols))

    def flush_logs(self) -> None:
        """Write the queued log lines (see :meth:`batch_logs`), all stamped with the time of the
        write. If downloaded.txt cannot be appended to, its ids become errors (their files stay
        and show in missing.txt)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now = utc_now()
        for name, items in pending.items():
            lines = []
            for model_id, cols in items:
                cols[-1] = now
                lines.append(self._line(model_id, cols) + "\n")
            try:
                self._log(name).write_lines(lines)
            except OSError as exc:
                log.error("could not append to %s: %s", self.root / name, exc)
                if name == "downloaded.txt":
                    for model_id, _ in items:
                        self.downloaded.pop(model_id, None)
                        self.mark_error(model_id, f"log write failed: {exc}")

    def log_saved(self, model_id: int, host: str) -> None:
        """Append the downloaded.txt line — only once the file is in place."""
        cols = self.downloaded[model_id] = [host, ""]
        self._append("downloaded.txt", model_id, cols)
        self._resolved(model_id)

    def keep_beside(self, model_id: int, data: bytes, why: str) -> Path:
        """Save a worse answer as ``<id>.<UTC>.json`` beside the good copy and log it in history.txt."""
        base = model_path(self.root, model_id)
        stamp = utc_stamp()
        side = base.with_name(f"{pad(model_id)}.{stamp}.json")
        n = 1
        while side.exists():
            side = base.with_name(f"{pad(model_id)}.{stamp}-{n}.json")
            n += 1
        write_atomic(side, data)
        log.warning("model %d: kept the good copy, saved the new answer as %s (%s)", model_id, side.name, why)
        self._log("history.txt").append(pad(model_id), why, side.name, utc_now())
        return side

    def mark_notfound(self, model_id: int, hosts: str, body: object = None) -> str:
        """Every host said 404. If a good copy exists (a refresh), keep it and save the answer beside it."""
        if model_id in self.downloaded and model_path(self.root, model_id).exists():
            self.keep_beside(model_id, dumps(body if body is not None else {"error": "not found"}), "404 on refresh")
            self._resolved(model_id)
            return "kept"
        cols = self.notfound[model_id] = [hosts, ""]
        self._append("notfound.txt", model_id, cols)
        self._resolved(model_id)
        return "notfound"

    def mark_error(self, model_id: int, reason: str) -> None:
        reason = (reason or "error").replace("\t", " ").replace("\n", " ")
        now = utc_now()
        self.errors[model_id] = [reason, now]
        self._log("errors.txt").append(pad(model_id), reason, now)

    def mark_crawled(self, model_id: int) -> None:
        cols = self.crawled[model_id] = [""]
        self._append("crawled.txt", model_id, cols)

    def _resolved(self, model_id: int) -> None:
        self.errors.pop(model_id, None)

    # -- end of a run -----------------------------------------------------------------------

    def missing(self) -> list[int]:
        return sorted(self.on_disk - set(self.downloaded))

    def finish(self) -> None:
        """Write the queued log lines, rewrite errors.txt (latest failures only) and missing.txt; close the logs."""
        self.flush_logs()
        self._loop = None
        self._close_block_fds()
        for lf in self._logs.values():
            lf.close()
        self._logs.clear()
        rewrite_log(self.root / "errors.txt", [self._line(i, c) for i, c in sorted(self.errors.items())])
        rewrite_log(self.root / "missing.txt", [pad(i) for i in self.missing()])


class ImageLog:
    """Logs of the preview archive in DIR/images/: downloaded.txt, notfound.txt, errors.txt."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "images"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.downloaded = read_log(self.dir / "downloaded.txt")
        self.notfound = read_log(self.dir / "notfound.txt")
        self.errors = {i: c for i, c in read_log(self.dir / "errors.txt").items()
                       if i not in self.downloaded and i not in self.notfound}
        self._down = LogFile(self.dir / "downloaded.txt")
        self._nf = LogFile(self.dir / "notfound.txt")
        self._err = LogFile(self.dir / "errors.txt")

    def known(self, image_id: int) -> bool:
        return image_id in self.downloaded or image_id in self.notfound

    def mark_downloaded(self, image_id: int, model_id: int, name: str) -> None:
        self.downloaded[image_id] = [pad(model_id), name]
        self.errors.pop(image_id, None)
        self._down.append(pad(image_id), pad(model_id), name, utc_now())

    def mark_notfound(self, image_id: int, model_id: int) -> None:
        self.notfound[image_id] = [pad(model_id)]
        self.errors.pop(image_id, None)
        self._nf.append(pad(image_id), pad(model_id), utc_now())

    def mark_error(self, image_id: int, model_id: int, reason: str) -> None:
        reason = (reason or "error").replace("\t", " ").replace("\n", " ")
        self.errors[image_id] = [pad(model_id), reason]
        self._err.append(pad(image_id), pad(model_id), reason, utc_now())

    def finish(self) -> None:
        for lf in (self._down, self._nf, self._err):
            lf.close()
        rewrite_log(self.dir / "errors.txt", ["\t".join([pad(i), *c]) for i, c in sorted(self.errors.items())])
