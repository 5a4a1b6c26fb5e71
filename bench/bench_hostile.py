"""Benchmark: crafted metadata (issue 19) parses in linear time, and the per-file budget's cost.

1. Each crafted input of issue 19 (and the quadratic loops found since) at 1 MB and at 4 MB: the
   4 MB time over the 1 MB time (linear: about 4; goal <= 6), and, for scale, the 4 MB time over
   the time of two honest 4 MB infotexts: one long prompt, and one parameter line of 4 MB of
   ``Key: value`` pairs. Parsed in this process (containers + generator parser + record), median
   of ``--rounds``.
2. ``extract_library`` on ``--files`` small PNGs with their worker processes and budget, over the
   same files read by ``_extract`` in this process one after another (the way it ran before the
   budget; goal <= 1.5 in wall-clock time).

    python bench/bench_hostile.py

Rewrites the "hostile" section of bench/RESULTS.md through bench/results.py (``--no-results``: print only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from civitai_mirror.fixtures import (comfy_long_chain, insert_before_iend, picture, png_bytes,  # noqa: E402
                                     png_chunk, write_png)
from matcher.media.containers import read_containers  # noqa: E402
from matcher.media.extract import _extract, extract_library  # noqa: E402
from matcher.media.parse import parse_containers, parse_text  # noqa: E402
from matcher.scan import scan_library  # noqa: E402
from matcher.schema import open_library  # noqa: E402
from results import write_section  # noqa: E402


def text(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def ztxt(key: str, value: str) -> bytes:
    return png_chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" + zlib.compress(value.encode("latin-1"), 6))


def png(*chunks: bytes) -> bytes:
    return insert_before_iend(png_bytes(), b"".join(chunks))


def graph(size: int) -> str:
    return json.dumps(comfy_long_chain(max(1, (size - 90_000) // 60)))


#: name -> size in bytes -> (what is parsed, "png" bytes or "sidecar" text)
CRAFTED = {
    "ControlNet value of blanks": lambda n: png(text("parameters", 'a\nSteps: 20, ControlNet 0: "Model: a'
                                                             + " " * n + 'x"')),
    "parameters of newlines (zTXt)": lambda n: png(ztxt("parameters", "\n" * n)),
    "unclosed brackets": lambda n: png(text("parameters", "a\nSteps: 20, " + "a: {, " * (n // 6))),
    "Refiner of blanks": lambda n: png(text("parameters", "a\nSteps: 20, Refiner: a" + " " * n + "b")),
    "NovelAI Source of blanks": lambda n: png(text("Software", "NovelAI"), text("Comment", '{"prompt": "a", "steps": 2}'),
                                              text("Source", "Stable Diffusion" + " " * n + "x")),
    "InvokeAI Dream word": lambda n: png(text("Dream", '"a [b]" -s 30 ' + "x" * n)),
    "Lora hashes list": lambda n: png(text("parameters", 'a\nSteps: 20, Lora hashes: "'
                                           + ", ".join(f"l{i}: {i:010x}" for i in range(n // 18)) + '"')),
    "lora tags": lambda n: png(text("parameters", "<lora:aa:1> lora:bb:0.5 " * (n // 24) + "\nSteps: 20")),
    "graph outputs on a chain": lambda n: png(text("prompt", graph(n))),
    "sidecar of newlines": lambda n: "\n" * n + "Used model: x\n",
}


def params(n: int) -> bytes:
    pairs = ", ".join(f"Key{i}: value {i}" for i in range(n // 18))
    return png(text("parameters", "a fox\nSteps: 20, " + pairs))


def plain(n: int) -> bytes:
    words = "a paper cut landscape, layered hills, dawn light, "
    prompt = (words * (n // len(words) + 1))[:n]
    return png(text("parameters", prompt + "\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x48"))


def parse(item) -> None:
    if isinstance(item, str):
        parse_text(item, "sidecar")
    else:
        parse_containers(read_containers(item, stealth="never"))


def seconds(item, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.process_time()
        parse(item)
        times.append(time.process_time() - t)
    return statistics.median(times)


def budget_overhead(files: int, rounds: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        root.mkdir()
        for i in range(files):
            write_png(root / f"{i:05d}.png", picture((64, 48), (i % 256, 7, 9)),
                      {"parameters": f"a fox {i}\nNegative prompt: dog\nSteps: 20, Sampler: Euler, Seed: {i}"})
        paths = sorted(root.iterdir())
        db = open_library(Path(tmp) / "library.sqlite")
        scan_library(db, [root])
        old, new = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            for p in paths:
                _extract(p)
            old.append(time.perf_counter() - t)
            t = time.perf_counter()
            extract_library(db, force=True)
            new.append(time.perf_counter() - t)
        o, n = statistics.median(old), statistics.median(new)
        return o, n, n / o


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    small, big = 1_000_000, 4_000_000
    base = seconds(plain(big), args.rounds)
    line = seconds(params(big), args.rounds)
    rows = []
    for name, make in CRAFTED.items():
        t1, t4 = seconds(make(small), args.rounds), seconds(make(big), args.rounds)
        rows.append(f"| {name} | {t1 * 1000:.0f} ms | {t4 * 1000:.0f} ms | **{t4 / t1:.1f}** | {t4 / base:.1f} "
                    f"| {t4 / line:.2f} |")
        print(rows[-1], flush=True)
    old, new, ratio = budget_overhead(args.files, args.rounds)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    body = "\n".join([
        f"## hostile metadata (issue 19, {date.today().isoformat()}, `python bench/bench_hostile.py`)",
        "",
        f"CPU time in this process, median of {args.rounds}. Honest 4 MB infotexts: a long prompt {base * 1000:.0f} ms, "
        f"a parameter line of 4 MB of `Key: value` pairs {line * 1000:.0f} ms. "
        f"Load average {load} (2 cores shared with other work). Before the fixes these took from a minute "
        "(3 KB ControlNet value: 93 s) to hours (16 M newlines).",
        "",
        "| crafted input | 1 MB | 4 MB | 4 MB ÷ 1 MB (linear ≈ 4, goal ≤ 6) | 4 MB ÷ long prompt | 4 MB ÷ parameter line |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Per-file budget: `extract_library` of {args.files} small PNGs (worker processes, 2 s CPU and 256 MiB each) "
        f"{new:.2f} s vs the same files read by `_extract` in this process one after another {old:.2f} s: "
        f"**ratio {ratio:.2f}** (wall, median of {args.rounds}; goal ≤ 1.5).",
        "",
        "Every input parses in linear time. What costs most per byte is what makes many items (tokens, "
        "resources, nodes, lines): a crafted file of 4 MB can still take a second or two, which the per-file "
        "budget bounds (past 2 s of CPU the file is recorded with an error). Resources and LoRA usages are "
        "capped at 1000 each per record.",
    ])
    print(body)
    if not args.no_results:
        write_section("hostile", body)


if __name__ == "__main__":
    main()
