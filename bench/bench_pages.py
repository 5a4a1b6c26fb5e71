"""Page speed at catalogue scale: every browsing page and facet of `serve` over a generated mirror.

    python bench/bench_pages.py --models 100000 [--db PATH] [--no-results]

Generates a dump of ``--models`` models (bench_build's generator: realistic sizes), builds the
mirror (or reuses ``--db``), then asks Datasette's own client (in process: the server's work
without the socket) for each page kind: the home page, the models table with its default facets
(type, base model, mode, nsfw, gone, tags), a facet filter, search, sorts, a model card, a version
card, images, files. Each page: one warm-up, then the median of ``--rounds``. Goal: every page
under 500 ms. Writes its section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_build import make_dump  # noqa: E402
from mirror.build import build_mirror  # noqa: E402
from mirror.serve import make_datasette  # noqa: E402
from results import write_section  # noqa: E402

GOAL_MS = 500


def pages(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        model_id = conn.execute("SELECT id FROM models ORDER BY downloadCount DESC LIMIT 1").fetchone()[0]
        version_id = conn.execute("SELECT id FROM model_versions WHERE model_id = ? LIMIT 1",
                                  (model_id,)).fetchone()[0]
        word = conn.execute("SELECT name FROM models WHERE id = ?", (model_id,)).fetchone()[0].split()[0]
        image_id = conn.execute("SELECT id FROM images LIMIT 1").fetchone()[0]
    finally:
        conn.close()
    return ["/", "/civitai", "/civitai/models", "/civitai/models?type=LORA",
            "/civitai/models?_sort_desc=downloadCount", f"/civitai/models?_search={word}",
            f"/civitai/models/{model_id}", f"/civitai/model_versions/{version_id}",
            "/civitai/model_versions", "/civitai/model_files", "/civitai/images",
            f"/civitai/images/{image_id}", "/civitai/creators", "/civitai/newest_models"]


async def measure(db: Path, rounds: int) -> list[tuple[str, int, float]]:
    ds = make_datasette(db)
    await ds.invoke_startup()
    out = []
    for page in pages(db):
        status = (await ds.client.get(page)).status_code  # warm-up
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await ds.client.get(page)
            times.append((time.perf_counter() - start) * 1000)
        out.append((page, status, statistics.median(times)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", type=Path, help="an existing mirror to measure (no generation)")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            dump, db = Path(tmp) / "dump", Path(tmp) / "civitai.sqlite"
            dump.mkdir()
            start = time.perf_counter()
            make_dump(dump, args.models)
            build_mirror(dump, db)
            print(f"generated and built {args.models:,} models in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        results = asyncio.run(measure(db, args.rounds))
        conn = sqlite3.connect(db)
        n = conn.execute("SELECT count(*) FROM models").fetchone()[0]
        conn.close()
    rows = "\n".join(f"| `{page}` | {status} | {ms:.0f}{' **(over goal)**' if ms > GOAL_MS else ''} |"
                     for page, status, ms in results)
    worst = max(ms for _, _, ms in results)
    body = f"""## pages (issue 16, {time.strftime('%Y-%m-%d')}, `python bench/bench_pages.py --models {args.models}`)

Every browsing page of `serve` over a generated mirror of {n:,} models (bench_build's generator),
asked through Datasette's in-process client: median of {args.rounds} after one warm-up, on
{platform.machine()} with {platform.python_version()}. Goal: each under {GOAL_MS} ms; slowest {worst:.0f} ms.

| page | status | ms |
|---|---|---|
{rows}
"""
    print(body)
    if not args.no_results:
        write_section("pages", body)


if __name__ == "__main__":
    main()
