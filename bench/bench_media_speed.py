"""Benchmark (issue 14): ``inspect`` metadata-only over the corpus in one process, and the pixel work of
``extract`` in its worker pool against a plain single-core Pillow loop.

Run: python bench/bench_media_speed.py   (uses ../shared/corpus images; rewrites its section of
bench/RESULTS.md unless --no-write). Goals: inspect >= 1,000 images/s; pool >= 0.8 x cores x the loop.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
from datetime import date
from pathlib import Path

from PIL import Image

from matcher.media.budget import Budget, default_workers, run_budgeted
from matcher.media.extract import _extract_job, extract_files_within_budget

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
sys.path.insert(0, str(REPO / "bench"))
from results import write_section  # noqa: E402  (bench/ is not a package)


def corpus_images() -> list[str]:
    out = []
    for p in sorted(CORPUS.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and p.stat().st_size > 0:
            try:
                with Image.open(p) as im:
                    im.load()
            except Exception:
                continue
            out.append(str(p))
    return out


def plain_loop(path: str) -> None:
    """What the goal measures against: open + draft + 256 px thumbnail + WebP save, nothing else."""
    with Image.open(path) as im:
        im.draft("RGB", (256, 256))
        im.thumbnail((256, 256))
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGB")
        im.save(io.BytesIO(), "WEBP", quality=60, method=4)


def library_rates(images: list[str], count: int = 300) -> tuple[float, float, int]:
    """(metadata pass, pixel pass) images/s of extract_library over ``count`` copies in a fresh library."""
    import shutil
    import tempfile

    from matcher.media import extract_library
    from matcher.scan import scan_library
    from matcher.schema import open_library

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        root.mkdir()
        for i in range(count):
            src = Path(images[i % len(images)])
            shutil.copyfile(src, root / f"{i:04d}{src.suffix}")
        db = open_library(Path(tmp) / "library.sqlite")
        scan_library(db, [str(root)])
        marks: list[float] = []
        start = time.perf_counter()
        summary = extract_library(db, progress=lambda done, total, _p: marks.append(time.perf_counter()))
        end = time.perf_counter()
        n = summary["total"]
        return n / (marks[-1] - start), summary["thumbnails"] / (end - marks[-1]), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    images = corpus_images()
    paths = [images[i % len(images)] for i in range(args.count)]
    for p in images:  # the page cache holds every file before anything is timed
        Path(p).read_bytes()
    start = time.perf_counter()
    n = sum(1 for _ in extract_files_within_budget(paths, pixels=False))
    inspect_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    n = sum(1 for _ in extract_files_within_budget(paths[:200], pixels=True))
    inspect_pixels = n / (time.perf_counter() - start)
    sample = paths[:200]
    start, cpu = time.perf_counter(), time.process_time()
    for p in sample:
        plain_loop(p)
    loop_rate = len(sample) / (time.perf_counter() - start)
    loop_cpu = len(sample) / (time.process_time() - cpu)
    cores = os.cpu_count() or 1
    workers = default_workers()
    jobs = ((i, (p, False, True), os.path.getsize(p)) for i, p in enumerate(paths))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, cpu = time.perf_counter(), time.process_time()
    done = sum(1 for _ in run_budgeted(_extract_job, jobs, budget=Budget(), workers=workers))
    pool_rate = done / (time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool_cpu = done / (time.process_time() - cpu + after.ru_utime + after.ru_stime
                       - children.ru_utime - children.ru_stime)
    meta_rate, thumb_rate, lib_n = library_rates(images)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (f"## media speed ({date.today().isoformat()}, `python bench/bench_media_speed.py`, one run)\n\n"
            f"- {len(images)} decodable corpus images cycled to {len(paths)} paths, files in the page cache;"
            f" {cores} cores, load average {load}.\n"
            f"- `inspect` (metadata only, the default: one budget worker, records as `--json` prints them):"
            f" **{inspect_rate:,.0f} images/s** (goal ≥ 1,000); with `--pixels` {inspect_pixels:,.1f} images/s.\n"
            f"- Plain single-core Pillow loop (open + draft + 256 px thumbnail + WebP save): {loop_rate:,.1f} images/s;"
            f" x {cores} cores = {loop_rate * cores:,.1f}.\n"
            f"- `extract`'s budget pool ({workers} workers, metadata + BlurHash + thumbnail per file):"
            f" {pool_rate:,.1f} images/s: **{pool_rate / (loop_rate * cores):.2f} x (cores x loop)** (goal ≥ 0.8)."
            f" Per CPU second (parent and workers, so other processes' load on the shared cores does not count):"
            f" loop {loop_cpu:,.1f}, pool {pool_cpu:,.1f} images: {pool_cpu / loop_cpu:.2f} x.\n"
            f"- `extract_library` (what `scan` runs after hashing) over a library of {lib_n} image copies:"
            f" metadata pass **{meta_rate:,.0f} images/s** (goal ≥ 1,000; every file's metadata in the database),"
            f" then the pixel pass {thumb_rate:,.1f} images/s.\n"
            + "".join(f"- {note}\n" for note in args.note))
    print(text)
    if not args.no_write:
        write_section("media-speed", text)


if __name__ == "__main__":
    main()
