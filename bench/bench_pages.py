"""Page speed at catalogue scale: every browsing page and facet of `serve` over a generated mirror.

    python bench/bench_pages.py --models 100000 [--db PATH] [--no-results]

Generates a dump of ``--models`` models (bench_build's generator: realistic sizes), builds the
mirror (or reuses ``--db``), then asks Datasette's own client (in process: the server's work
without the socket) for each page kind: the home page, the models table with its default facets
(type, base model, mode, nsfw, gone, tags), facet filters (a column, a tag), search, sorts, a model
card, a version card, images, files. Each page: one warm-up, then the median of ``--rounds``, once
with Datasette's own facet classes (a scan of the table per facet on every page: the baseline) and
once with mirror.facets (the counts build saved, a shared budget on filtered pages). Goal: every
page under 500 ms. Writes its section of RESULTS.md.
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
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_build import make_dump  # noqa: E402
from mirror import facets  # noqa: E402
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
        tag = conn.execute("SELECT json_extract(tags, '$[0]') FROM models WHERE json_valid(tags) "
                           "AND json_array_length(tags) > 0 ORDER BY downloadCount DESC LIMIT 1"
                           ).fetchone()[0]
    finally:
        conn.close()
    return ["/", "/civitai", "/civitai/models", "/civitai/models?type=LORA",
            f"/civitai/models?tags__arraycontains={quote(tag)}",
            "/civitai/models?_sort_desc=downloadCount", f"/civitai/models?_search={word}",
            f"/civitai/models/{model_id}", f"/civitai/model_versions/{version_id}",
            "/civitai/model_versions", "/civitai/model_files", "/civitai/images",
            f"/civitai/images/{image_id}", "/civitai/creators", "/civitai/newest_models"]


async def measure(db: Path, rounds: int) -> list[tuple[str, int, float, float]]:
    """(page, status, ms with Datasette's own facets, ms with mirror.facets) for each page."""
    ds = make_datasette(db)
    await ds.invoke_startup()
    replacements = dict(facets._REPLACEMENTS)
    out = []
    for page in pages(db):
        medians = []
        for own in (True, False):
            facets._REPLACEMENTS.clear()  # the plugin swaps in only what this maps
            if not own:
                facets._REPLACEMENTS.update(replacements)
            status = (await ds.client.get(page)).status_code  # warm-up
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                await ds.client.get(page)
                times.append((time.perf_counter() - start) * 1000)
            medians.append(statistics.median(times))
        out.append((page, status, *medians))
    facets._REPLACEMENTS.update(replacements)
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
    rows = "\n".join(f"| `{page}` | {status} | {before:.0f} | {ms:.0f}{' **(over goal)**' if ms > GOAL_MS else ''} |"
                     for page, status, before, ms in results)
    worst = max(ms for *_, ms in results)
    body = f"""## pages (issue 16, {time.strftime('%Y-%m-%d')}, `python bench/bench_pages.py --models {args.models}`)

Every browsing page of `serve` over a generated mirror of {n:,} models (bench_build's generator),
asked through Datasette's in-process client: median of {args.rounds} after one warm-up, on
{platform.machine()} with {platform.python_version()}. Goal: each under {GOAL_MS} ms; slowest {worst:.0f} ms.

"Datasette's facets": its own facet classes, which scan the table for each facet on every page (an
array facet also de-duplicates whole rows; each stops at `facet_time_limit_ms`, 200 ms, and is
listed as timed out). "mirror.facets": a page without filters reads the counts `build` saved in
`_facet_counts`; a filtered page counts its own rows (an array facet from the key and the array
only), its facets sharing {facets.FACET_BUDGET_MS} ms; no facet suggestions on a filtered page of
over {facets.SUGGEST_MAX_ROWS:,} rows. Both columns read the same mirror (array columns indexed).

| page | status | Datasette's facets, ms | mirror.facets, ms |
|---|---|---|---|
{rows}
"""
    print(body)
    if not args.no_results:
        write_section("pages", body)


if __name__ == "__main__":
    main()
