"""Benchmark: metadata extraction rate vs bare PIL.Image.open(...).info on the same PNGs, and BlurHash rate.

Run: /work/venv/bin/python bench/bench_extract.py   (uses ../shared/corpus PNGs with a `parameters` chunk,
or generated ones when the corpus is absent). Rewrites its own section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from PIL import Image, PngImagePlugin

from matcher.media.containers import read_containers
from matcher.media.imaging import thumbnail_and_blurhash
from matcher.media.parse import parse_containers

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
sys.path.insert(0, str(REPO / "bench"))
from results import RESULTS, write_section  # noqa: E402  (bench/ is not a package)


def sample_pngs() -> list[bytes]:
    out = []
    if CORPUS.is_dir():
        for p in sorted(CORPUS.rglob("*")):
            if p.is_file() and p.suffix.lower() in (".png", ".jpeg", ".jpg"):
                data = p.read_bytes()
                if data.startswith(b"\x89PNG") and b"parameters" in data[:200_000]:
                    out.append(data)
    if not out:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512")
        buf = io.BytesIO()
        Image.new("RGB", (512, 512)).save(buf, "PNG", pnginfo=info)
        out = [buf.getvalue()] * 8
    return out


def rate(fn, items, seconds=3.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in items:
            fn(data)
            n += 1
    return n / (time.perf_counter() - start)


def baseline(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.info  # noqa: B018 - what a bare reader does


def ours(data: bytes) -> None:
    parse_containers(read_containers(data, stealth="never"))


def median_rates(functions: dict, items, rounds: int = 3, seconds: float = 1.5) -> dict[str, float]:
    """Median over ``rounds`` of interleaved runs (the machine is shared: load changes from second to second)."""
    runs: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            runs[name].append(rate(fn, items, seconds))
    return {name: statistics.median(values) for name, values in runs.items()}


def cpu_us_per_image(functions: dict, items, rounds: int = 15) -> dict[str, float]:
    """Median CPU µs per image over ``rounds`` passes, the functions in turn each round (CPU time: on a shared
    machine another process's load changes wall time far more than the CPU time these functions use)."""
    runs: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.process_time()
            for _ in range(5):
                for data in items:
                    fn(data)
            runs[name].append((time.process_time() - start) / (5 * len(items)) * 1e6)
    return {name: statistics.median(values) for name, values in runs.items()}


def previous_line() -> str:
    """One line quoting the ratio this section held before this run (for the record)."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    m = re.search(r"<!-- section: extract -->(.*?)<!-- end: extract -->", text, re.S)
    if not m:
        return "- Previous: none recorded."
    body = m.group(1)
    date_m = re.search(r"## extract \(([\d-]+)", body)
    rates = re.search(r"info`: ([\d,]+) images/s; ours: ([\d,]+) images/s; \*\*ratio ([\d.]+)\*\*", body)
    if not rates:
        return "- Previous: unreadable."
    when = f" ({date_m.group(1)})" if date_m else ""
    return f"- Previous{when}: ratio {rates.group(3)} ({rates.group(2)} vs {rates.group(1)} images/s)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS.md")
    parser.add_argument("--note", action="append", default=[], help="an extra line for the section (repeatable)")
    args = parser.parse_args()
    items = sample_pngs()
    rates = median_rates({"base": baseline, "ours": ours}, items)
    base, mine = rates["base"], rates["ours"]
    cpu = cpu_us_per_image({"base": baseline, "ours": ours}, items)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    bh = statistics.median(rate(lambda d: thumbnail_and_blurhash(d), items[:4], seconds=2.0) for _ in range(3))
    text = (f"## extract ({date.today().isoformat()}, `python bench/bench_extract.py`, median of 3 interleaved runs"
            f" of 1.5 s each)\n\n"
            f"- {len(items)} PNGs with a `parameters` chunk (corpus), each parsed fully (containers + generator parser"
            f" + LoRAs + resources + canonical hash), stealth off, files already in memory.\n"
            f"- bare `PIL.Image.open(...).info`: {base:,.0f} images/s; ours: {mine:,.0f} images/s;"
            f" **ratio {mine / base:.2f}** (goal ≥ 0.4).\n"
            f"- The same in CPU time (median of 15 alternating passes): bare PIL {cpu['base']:.1f} µs/image, ours"
            f" {cpu['ours']:.1f} µs/image, ratio {cpu['base'] / cpu['ours']:.2f}. Load average at the run: {load}"
            f" (2 cores shared).\n"
            f"- BlurHash + 256 px WebP thumbnail: {bh:,.1f} images/s (decode of the full PNG dominates).\n"
            + "".join(f"- {note}\n" for note in args.note)
            + f"{previous_line()}\n")
    print(text)
    if not args.no_write:
        write_section("extract", text)


if __name__ == "__main__":
    main()
