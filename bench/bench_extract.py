"""Benchmark: metadata extraction rate vs bare PIL.Image.open(...).info on the same PNGs, and BlurHash rate.

Run: /work/venv/bin/python bench/bench_extract.py   (uses ../shared/corpus PNGs with a `parameters` chunk,
or generated ones when the corpus is absent). Appends a dated section to bench/RESULTS.md.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from matcher.media.containers import read_containers
from matcher.media.imaging import thumbnail_and_blurhash
from matcher.media.parse import parse_containers

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"


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


def main() -> None:
    items = sample_pngs()
    base = rate(baseline, items)
    mine = rate(ours, items)
    bh = rate(lambda d: thumbnail_and_blurhash(d), items[:4], seconds=4.0)
    text = (f"\n## extract (2026-11-22)\n\n"
            f"- {len(items)} PNGs with a `parameters` chunk (corpus), each parsed fully (containers + A1111 parser"
            f" + LoRAs + resources + canonical hash).\n"
            f"- bare `PIL.Image.open(...).info`: {base:,.0f} images/s; ours: {mine:,.0f} images/s;"
            f" **ratio {mine / base:.2f}** (goal ≥ 0.4).\n"
            f"- BlurHash + 256 px WebP thumbnail: {bh:,.1f} images/s (decode of the full PNG dominates).\n")
    print(text)
    results = REPO / "bench" / "RESULTS.md"
    with results.open("a", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
