"""Benchmark `build` and the hash lookup.

1. Generates an N-model dump (default 100,000; 20,000 is what RESULTS.md reports) under a temp dir
   from the real samples in ../shared/civitai-samples, with new model/version/file/image ids and
   random hashes, then times ``build_mirror`` (a full build) as a ratio to plain ``orjson.loads`` of
   the same files (goal <= 5): wall-clock and CPU time (user + system, worker processes included),
   each the median of ``--rounds`` alternating parse/build rounds. Every build runs in a fresh
   interpreter; ``--compare-with DIR`` also times the ``mirror`` package found in DIR (e.g. an older
   commit unpacked with ``git archive``) in the same rounds, for a before/after on the same dump.
   Also the database's size as a ratio to the dump's bytes (goal <= 1.2: each thing stored once).
2. By-hash lookup at 1M file rows vs 1k file rows (goal <= 2): same schema, rows bulk-inserted.

    python bench/bench_build.py --models 20000

The dump is never written inside the repo. Prints the numbers and rewrites the "bench_build" section
of bench/RESULTS.md through bench/results.py (``--no-results``: print only).
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "bench"))

from mirror.build import build_mirror  # noqa: E402
from mirror.lookup import lookup_hash  # noqa: E402
from mirror.schema import CIVITAI_SCHEMA, apply_schema  # noqa: E402
from mirror.writer import PAGE_SIZE  # noqa: E402
from results import write_section  # noqa: E402

SAMPLES = REPO.parent / "shared" / "civitai-samples"


def load_templates() -> list[dict]:
    """Model-shaped samples (single answers and list items), images without ``meta`` (today's shape)."""
    templates = []
    for path in sorted(SAMPLES.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        items = doc.get("items") if isinstance(doc, dict) and "items" in doc else [doc]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("modelVersions"), list):
                item = copy.deepcopy(item)
                for version in item["modelVersions"]:
                    version["images"] = [{k: v for k, v in im.items() if k != "meta"}
                                         for im in (version.get("images") or [])]
                templates.append(item)
    return templates


# Shape of a real model (reference/civitai-api.md §4.1): 1.30 versions per model, 1.05 files per
# version; compact JSON without image meta: mean 5.5 KB, median 4.2 KB, p90 9.2 KB. The samples
# (top-rated checkpoints, long descriptions) are bigger, so each generated model draws its counts
# and description length from these distributions (tuned so the dump matches those sizes).
VERSIONS = ([1] * 78) + ([2] * 16) + ([3] * 4) + ([4] * 2)  # mean 1.30
IMAGES = [1, 2, 2, 3, 3, 4, 4, 5, 6, 8]  # preview images per version


def realistic(templates: list[dict], rng: random.Random) -> dict:
    n = rng.choice(VERSIONS)
    model = copy.deepcopy(rng.choice([t for t in templates if len(t["modelVersions"]) >= n]))
    model["modelVersions"] = versions = model["modelVersions"][:n]
    for version in versions:
        files = (version.get("files") or [])[:1]
        if files and rng.random() < 0.05:  # 1.05 files per version
            files.append(copy.deepcopy(files[0]))
        version["files"] = files
        version["images"] = (version.get("images") or [])[:rng.choice(IMAGES)]
        if isinstance(version.get("description"), str):
            version["description"] = version["description"][:int(rng.lognormvariate(5.0, 1.0))]
    if isinstance(model.get("description"), str):
        model["description"] = model["description"][:int(rng.lognormvariate(7.7, 1.2))]
    return model


def make_dump(root: Path, n_models: int, seed: int = 1, indent: bool = False) -> tuple[int, int]:
    """Write n_models model files in the crawler's blocked layout; returns (files, bytes)."""
    rng = random.Random(seed)
    templates = load_templates()
    version_id, file_id, image_id = 10_000_000, 20_000_000, 30_000_000
    total = 0
    option = orjson.OPT_INDENT_2 if indent else 0  # the crawler itself writes indent-2
    for i in range(1, n_models + 1):
        model = realistic(templates, rng)
        model["id"] = i
        for version in model["modelVersions"]:
            version_id += 1
            version["id"] = version_id
            if "modelId" in version:
                version["modelId"] = i
            for file in version.get("files") or []:
                file_id += 1
                file["id"] = file_id
                sha = secrets.token_hex(32).upper()
                file["hashes"] = {"SHA256": sha, "AutoV2": sha[:10], "AutoV1": sha[-8:],
                                  "CRC32": sha[20:28], "BLAKE3": secrets.token_hex(32).upper(),
                                  "AutoV3": sha[30:42]}
            for image in version.get("images") or []:
                image_id += 1
                image["id"] = image_id
                image["url"] = re.sub(r"/\d+\.(\w+)$", rf"/{image_id}.\1", image.get("url") or "")
        block = root / f"{i // 10000 * 10000:08d}"
        block.mkdir(exist_ok=True)
        data = orjson.dumps(model, option=option)
        (block / f"{i:08d}.json").write_bytes(data)
        total += len(data)
    return n_models, total


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_parse(root: Path) -> tuple[float, float]:
    """(wall, cpu) seconds to read and ``orjson.loads`` every model file: the baseline."""
    wall, cpu = time.perf_counter(), _cpu()
    for block in sorted(root.iterdir()):
        if block.is_dir():
            for path in sorted(block.iterdir()):
                with open(path, "rb") as fh:
                    orjson.loads(fh.read())
    return time.perf_counter() - wall, _cpu() - cpu


_BUILD_CHILD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from mirror.build import build_mirror
def cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
def own():
    t = os.times()
    return t.user + t.system
w, c, o = time.perf_counter(), cpu(), own()
kw = {"workers": int(sys.argv[4])} if len(sys.argv) > 4 else {}
s = build_mirror(sys.argv[2], sys.argv[3], full=True, **kw)
print(time.perf_counter() - w, cpu() - c, own() - o, s.models, s.versions, s.files, s.hashes, s.images)
"""


def time_build(code_dir: Path, dump: Path, db: Path,
               workers: int | None = None) -> tuple[float, float, float, list[int]]:
    """(wall, cpu, main cpu, counts) of one full build by the ``mirror`` package in code_dir, in a
    fresh interpreter (import time excluded; cpu includes its worker processes, main cpu not)."""
    extra = [str(workers)] if workers is not None else []
    out = subprocess.run([sys.executable, "-c", _BUILD_CHILD, str(code_dir), str(dump), str(db)]
                         + extra,
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), [int(x) for x in out[3:]]


def lookup_db(path: Path, n_files: int) -> list[str]:
    """A mirror database holding n_files files (SHA256 + AutoV2 rows each); returns some hashes."""
    conn = sqlite3.connect(path)
    import sqlite_utils

    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # as build writes it
    apply_schema(sqlite_utils.Database(conn), CIVITAI_SCHEMA)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA journal_mode=OFF")
    rng = random.Random(2)
    probes = []
    batch = 50_000
    for start in range(0, n_files, batch):
        models, versions, files, hashes = [], [], [], []
        for fid in range(start + 1, min(n_files, start + batch) + 1):
            sha = "%064X" % rng.getrandbits(256)
            models.append((fid, f"m{fid}", "LORA", "{}", 0, 0))
            versions.append((fid, fid, 0, "v", "SD 1.5", fid, "{}", 0, 0))
            files.append((fid, fid, fid, "Model", sha, "{}", 0, 0, f"f{fid}.safetensors"))
            hashes.append((sha, "SHA256", fid, fid, fid))
            hashes.append((sha[:10], "AutoV2", fid, fid, fid))
            if fid % max(1, n_files // 1000) == 0:
                probes.append(sha.lower() if fid % 2 else sha[:10])
        conn.executemany("INSERT INTO models (id, name, type, data, created_at, updated_at) "
                         "VALUES (?,?,?,?,?,?)", models)
        conn.executemany("INSERT INTO model_versions (id, model_id, position, name, base_model, "
                         "published_at, data, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                         versions)
        conn.executemany("INSERT INTO model_files (id, model_id, version_id, type, sha256, data, "
                         "created_at, updated_at, name) VALUES (?,?,?,?,?,?,?,?,?)", files)
        conn.executemany("INSERT INTO file_hashes VALUES (?,?,?,?,?)", hashes)
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    return probes


def time_lookups(path: Path, probes: list[str], rounds: int = 3) -> float:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for value in probes:
            assert lookup_hash(conn, value)["file_id"] is not None
        best = min(best, (time.perf_counter() - start) / len(probes))
    conn.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000, help="models in the generated dump")
    parser.add_argument("--lookup-files", type=int, default=1_000_000, help="file rows, big lookup db")
    parser.add_argument("--rounds", type=int, default=3, help="parse/build rounds (median reported)")
    parser.add_argument("--compare-with", type=Path, help="a folder holding an older mirror/ package")
    parser.add_argument("--workers", type=int, action="append", default=[],
                        help="also time this commit with build_mirror(workers=N) (repeatable)")
    parser.add_argument("--no-results", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args()
    if not SAMPLES.is_dir():
        sys.exit(f"needs the samples in {SAMPLES}")
    codes = [("this commit", REPO)] + [(f"this commit, workers={n}", REPO) for n in args.workers]
    if args.compare_with:
        codes.append(("before", args.compare_with.resolve()))
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        tmp = Path(tmp)
        dump = tmp / "dump"
        dump.mkdir()
        t0 = time.perf_counter()
        n_files, n_bytes = make_dump(dump, args.models)
        gen = time.perf_counter() - t0
        print(f"dump: {n_files} models, {n_bytes / 1e6:.1f} MB (generated in {gen:.1f}s)", flush=True)
        time_parse(dump)  # warm the page cache
        parses: list[tuple[float, float]] = []
        builds: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in codes}
        loads = []
        for round_no in range(args.rounds):
            for name, code in codes:
                parses.append(time_parse(dump))
                workers = int(name.split("workers=")[1]) if "workers=" in name else None
                wall, cpu, main_cpu, counts = time_build(code, dump, tmp / f"{name}.sqlite", workers)
                builds[name].append((wall, cpu, main_cpu))
                loads.append(os.getloadavg()[0])
                print(f"round {round_no + 1} {name}: parse {parses[-1][0]:.2f}s wall "
                      f"{parses[-1][1]:.2f}s cpu, build {wall:.2f}s wall {cpu:.2f}s cpu "
                      f"({main_cpu:.2f}s in the main process)", flush=True)
                if name == "this commit":
                    n_models, n_versions, n_file_rows, n_hashes, n_images = counts
        db = tmp / "this commit.sqlite"
        t0 = time.perf_counter()
        again = build_mirror(dump, db)
        noop = time.perf_counter() - t0
        db_size = os.path.getsize(db)
        parse_wall = statistics.median(p[0] for p in parses)
        parse_cpu = statistics.median(p[1] for p in parses)
        ratios = {}
        for name, _ in codes:
            wall = statistics.median(b[0] for b in builds[name])
            cpu = statistics.median(b[1] for b in builds[name])
            main_cpu = statistics.median(b[2] for b in builds[name])
            ratios[name] = (wall, cpu, main_cpu, wall / parse_wall, cpu / parse_cpu,
                            main_cpu / parse_cpu)
            print(f"{name}: build {wall:.2f}s wall / {cpu:.2f}s cpu ({main_cpu:.2f}s main process) "
                  f"vs parse {parse_wall:.2f}s / {parse_cpu:.2f}s -> ratio wall "
                  f"{wall / parse_wall:.2f}, cpu {cpu / parse_cpu:.2f}, main-process cpu "
                  f"{main_cpu / parse_cpu:.2f} (goal <= 5)")
        print(f"  {n_models} models, {n_versions} versions, {n_file_rows} files, "
              f"{n_hashes} hashes, {n_images} images")
        print(f"database {db_size / 1e6:.0f} MB / dump {n_bytes / 1e6:.0f} MB -> ratio "
              f"{db_size / n_bytes:.2f} (goal <= 1.2)")
        print(f"incremental no-op build {noop:.2f}s ({again.files_unchanged} files unchanged)")
        small = tmp / "small.sqlite"
        big = tmp / "big.sqlite"
        small_probes = lookup_db(small, 1000)
        big_probes = lookup_db(big, args.lookup_files)
        t_small = time_lookups(small, small_probes)
        t_big = time_lookups(big, big_probes)
        print(f"lookup: {t_small * 1e6:.0f} us at 1k files, {t_big * 1e6:.0f} us at "
              f"{args.lookup_files:,} files -> ratio {t_big / t_small:.2f} (goal <= 2)")
    if args.no_results:
        return
    rows = "\n".join(
        f"| {name} | {wall:.1f} s / {cpu:.1f} s / {mcpu:.1f} s | **{rw:.2f}** / {rc:.2f} / {rm:.2f} |"
        for name, (wall, cpu, mcpu, rw, rc, rm) in ratios.items())
    write_section("bench_build", f"""## bench_build ({time.strftime('%Y-%m-%d')})

`python bench/bench_build.py --models {args.models} --lookup-files {args.lookup_files} --rounds \
{args.rounds}{''.join(f' --workers {n}' for n in args.workers)}\
{' --compare-with DIR' if args.compare_with else ''}` on the shared {os.cpu_count()}-core \
machine (load average {min(loads):.1f}–{max(loads):.1f} during the rounds).

- Dump: {n_files:,} generated models ({n_bytes / 1e6:.0f} MB compact JSON, mean \
{n_bytes / n_files / 1e3:.1f} KB/model; sizes drawn to match real current models: 1.3 versions/model, \
1.05 files/version, images without meta), {n_versions:,} versions, {n_file_rows:,} files, \
{n_hashes:,} hashes, {n_images:,} images.
- Database {db_size / 1e6:.0f} MB → **{db_size / n_bytes:.2f} × the dump** (goal ≤ 1.2).
- Baseline, plain orjson read+parse of the same files: {parse_wall:.2f} s wall / {parse_cpu:.2f} s CPU \
(median of {len(parses)}).
- Full `build` (median of {args.rounds}, each in a fresh interpreter; CPU = user + system incl. the
  worker process; main CPU = the main process alone, about the wall time when a second core is free):

| code | build wall / CPU / main CPU | ratio wall (goal ≤ 5) / CPU / main CPU |
|---|---|---|
{rows}

- Incremental no-op `build` over the same dump: {noop:.2f} s.
- By-hash lookup (`lookup_hash`, SHA256 and AutoV2 probes): {t_small * 1e6:.0f} µs at 1k files vs \
{t_big * 1e6:.0f} µs at {args.lookup_files:,} files → **ratio {t_big / t_small:.2f}** (goal ≤ 2).
""" + NOTES)


# What the numbers above do not show: how the time was found and what was tried (kept by hand).
NOTES = """
### Pass 6 (issue 15, storage: superseded answers compressed, the description once)

- `model_snapshots.data` of an answer the rows do not stand for (a superseded answer, a 404 body) is
  its JSON zlib-compressed (level 6, a BLOB: 43 % of the text on 3,000 of the bench's answers, whose
  random hashes do not compress); `mirror.answers.snapshot_json` and the SQL function
  `snapshot_json(data)` that `serve` registers read it back. The bench dump holds one answer per
  model, so this moves nothing here (20,000 markers, 2.4 MB); on a refreshed mirror each superseded
  answer costs under half its JSON.
- `models.description_text` is gone: `models_fts` is a contentless FTS5 index (`content=''`) over
  the name, the description's text and the tags. The text is derived from the HTML in `models.data`
  (`mirror.derive.search_row`) when a model is written, and again when its entry is removed; never
  stored. Datasette finds the index through `fts_table` in the metadata; an incremental build over
  an older mirror drops the column and re-indexes in one transaction (`upgrade_search`). Size **239
  → 214 MB (2.28 → 2.05 × the dump)**; the same rows otherwise, the same API answers (tests).
- A fresh build commits every 4,000 files instead of every 250: each commit flushed the index's
  pending terms as a small segment, 0.2–0.35 s more CPU per 20k models than a few 1 MB flushes
  (measured on the 20k search rows alone). The end-of-build FTS `rebuild` is gone.
- Where the 214 MB (4 KiB pages) are (`dbstat`): `models` 73 MB (`data` 52 MB, of which the
  description HTML 38.5 MB; its leaf pages 25 % empty, 13 MB), `model_versions` 47 MB (`data` 32 MB,
  9 MB empty), `model_files` 28 MB, `images` 16 MB, `models_fts` 14 MB, `file_hashes` 10 MB + its
  `hash` index 7 MB, other indexes ≈ 15 MB, `model_snapshots` 2.4 MB.
- Not done, and why: images out of `model_versions.data` (−20 MB, less an `images` column for the
  fields the table lacks: ≈ −12 MB) and hashes out of `model_files.data` (−6 MB).
  ComfyUI-Lora-Manager reads those JSON columns directly (its by-hash answer is built from them,
  images and hashes included): our API would reassemble them, Lora Manager would not. FTS5
  `detail=column` saves 7 MB (14 → 7 MB, measured) but refuses any phrase of two or more tokens
  (`sd-1.5` typed in Datasette's search box).
- 8 KiB pages (`mirror.writer.PAGE_SIZE`, a fresh or `--full` build): the 2–5 KB model and version
  rows left a quarter of each 4 KiB leaf page empty; 214 → 206 MB (2.05 → 1.96×). By-hash lookups on
  the built 20k mirror (4,000 SHA256/AutoV2 probes, new connection per round): 44–47 µs at 4 KiB,
  47–50 µs at 8 KiB, 51–52 µs at 16 KiB (201 MB); 64 KiB was 74–107 µs in pass 5. Kept 8 KiB; the
  bench's 1k/1M lookup databases now use it too.
- **≤ 1.2 is not reachable while the JSON columns are plain text**: the JSON stored once is about
  the dump itself (the description HTML alone is 38.5 of its 105 MB), leaving ≈ 25 MB for the ≈ 100
  MB of indexes, facet columns, the `images` table and page slack. Only compressed JSON (the
  description, or every `data` column) would get there, which Lora Manager and Datasette's JSON
  views cannot read.
- Speed (≤ 5 not met): unchanged within the noise of a loaded machine. "before" in the table is the
  code before this pass (78d0260) on the same dump in alternating rounds: 11.15 wall / 11.21 CPU
  against 10.29 / 10.18 now (serial; the run before the 8 KiB pages: 10.52 / 10.44 against 10.82 /
  10.55); 6.07 main-process CPU with a worker. Phases (CPU, serial, 20k): read + parse + snapshot
  rows 1.4 s, `derive_model` 1.6 s, the load loop's own time 0.6 s, row and search-index writes
  1.4–1.7 s, secondary indexes 0.9 s: each one to three parses, so ≤ 5 needs less work per model
  (e.g. no derive in Python), not a faster step.

### Pass 5 (issue 15: each thing stored once): what changed and what was measured

- `model_versions.data` holds the version without `files` and `model` (files are `model_files`
  rows, `position` their order), `models.data` the model without `modelVersions`; the snapshot the
  rows give back exactly (checked in `derive_model`: the reassembly equals the answer) is stored in
  `model_snapshots` as the marker `{"$answer":"rows"}` and turned back into its JSON before a newer
  answer replaces the rows (`Writer.restore_answers`). `mirror/answers.py` reassembles the answers.
- Size at 20k models: 390 MB → 239 MB (**3.72 → 2.28 × the dump**). Where the 239 MB are
  (`dbstat`): `models` 97 MB (`data` 52 MB of which the description HTML 38.5 MB, `description_text`
  21.6 MB; 2–5 KB rows in 4 KiB pages leave much of each page empty), `model_versions` 47 MB
  (`data` 32 MB, of which `images` 20 MB), `model_files` 28 MB (`data` 17.5 MB, `hashes` 6.4 MB of
  it), `images` 16 MB, `models_fts` 14 MB, `file_hashes` 10 MB + its `hash` index 7 MB, other
  indexes ≈ 10 MB, `model_snapshots` 2.4 MB (20,000 markers). The JSON stored once is itself ≈ the
  dump (≈ 100 MB), so ≤ 1.2 leaves ≈ 25 MB for everything the matcher, the facets and the search
  need beside it (hash table and index 17 MB, FTS 14 MB, `images` 16 MB, `description_text` 22 MB):
  the goal is **not met** and is not reachable while those stay; the next steps would be images and
  hashes out of the version/file JSON (reassembled from `images`/`file_hashes`; needs an `images`
  column for the fields it lacks), and an FTS over the HTML instead of a stored
  `description_text` (an existing test reads that column).
- Page size tried again now that less JSON is stored: 64 KiB pages give 222 MB (2.12×) and a
  0.5–1.5 s faster serial build, but by-hash lookups on the built database take 74–107 µs instead
  of 43–56 µs (16 KiB: 232 MB, 50 µs); not kept (the lookup is what the matcher does per file).
- Build: 5.7 s serial, 4.2 s with a worker, vs a 0.58 s parse (this run's parse is faster than the
  0.98–1.09 s of pass 4 on the same dump: the machine's state; the ratio moved less than the times).
- Speed (≤ 5 not met: 9.9 serial, 7.3 with a worker). Profile of a serial build after this pass
  (cProfile, 8.8 s under the profiler): `derive_model` 3.7 s cumulative (1.3 s its own code: the
  per-image and per-file field reads, 3.3 M `dict.get`; `html_to_text` 0.29 s; orjson dumps 0.34 s;
  the check that the rows give the answer back 0.1 s), SQLite row writes 1.2 s (`executemany`),
  indexes + FTS rebuild ≈ 1 s, file reads 0.5 s, orjson parse 0.46 s. Storing once took ≈ 0.5–1 s
  of writes off; the floor is the derive and the indexes the matcher and search need, each alone
  near the whole 5× budget of a 0.58 s parse.

### Pass 4 (wall time on 2 cores): what changed and what was measured

- **Parallel fresh build without pickling rows** (`mirror.build_parallel`): a `--full`/first build
  splits the sorted file list at model-id boundaries; one extra process per idle core reads,
  parses, derives and inserts its slice into its own file (`civitai.sqlite.tmp.partN`, load schema,
  journal and fsync off) while the main process loads the first slice into the target. The slices
  are then ATTACHed and merged with `INSERT ... SELECT` (C speed; later slice wins as in a serial
  build, tags re-numbered by name in first-seen order, creators with the same coalesce rule, models
  that two slices saw — a list page in one, the model's file in another — re-derived from all their
  snapshots). Incremental builds stay serial. The database is the same as the serial build's: every
  table dumped and compared ordered on the 20k dump, FTS matches, FTS `integrity-check`; a test
  builds the fixture dump with 3 slices and a cross-slice list page and compares every table.
- **The main process indexes its own slice while the worker still loads**: it takes the smaller
  share (`MAIN_SHARE` 0.8 vs 1.0), builds the secondary indexes and the FTS index over its slice,
  and the worker's rows are merged into the indexed tables (plus `models_fts` rows for them).
- **Only on idle cores** (`workers=None`): a slice process on a core that other work already holds
  only adds the merge; the 1-minute load average decides, like `make -l`.

Phases, 20k models, load ≈ 1.5 (wall): main slice load 4.3 s ‖ worker slice load 5.05 s; main's
indexes 0.44 s + FTS ≈ 0.4 s (inside the worker's time); merge 1.44 s (FTS of the merged models
0.5–0.8 s, models_tags 0.3 s, file_hashes 0.25 s); counts/ANALYZE/commit 0.4 s. Total 7.1 s.

CPU of the main process (≈ the wall time when the 2nd core is free), interleaved runs on the same
dump: serial 8.1–11.6 s → parallel 6.0–7.8 s (worker 4.1–5.6 s). Total CPU rises by at most the
merge (+0–2.5 s). With the cores taken by the neighbours the parallel build's wall time can be
worse: one `--compare-with` run at load 2.4–3.2 gave a median 16.2 s parallel vs 14.2 s serial,
the run in the table above (load 2.0–2.9) 9.2 s vs 10.7 s; hence the idle-core rule. So the wall
ratio depends on the machine: ≈ 6–8× the parse with a free core (main-process CPU 5.9× at 20k,
7.7× at 100k models), ≈ 8–15× when the box is
saturated; the ≤ 4 goal is not met.

100k models (the issue's size; 527 MB dump, 1.96 GB database; one round, load ≈ 2–3,
`--models 100000 --rounds 1 --workers 1 --workers 0 --no-results`): parse 4.0 s; build
workers=1 46.1 s wall / 50.5 s CPU / 30.9 s main-process CPU (ratios 11.55 / 12.66 / 7.74);
workers=0 45.4 s / 45.0 s (11.36 / 11.27); default (serial under that load) 59.4 s / 52.3 s
(14.87 / 13.12). Incremental no-op build 0.97 s. Lookup 35 µs at 1k vs 52 µs at 1M files (1.50).

Where the serial CPU goes (per 20k models, quiet, no profiler): read + `parse_document` 1.4 s
(orjson 0.9 s: the baseline), `derive_model` 2.1 s, of which `html_to_text` 0.57 s (38 MB of
description HTML, 1.4 M tags; the regex substitution is 90 % of it, a str.split version was 65 %
slower), orjson dumps of the model/version/file JSON ≈ 0.45 s; SQLite row writes ≈ 2 s; indexes
0.9 s; FTS rebuild 0.85 s. Tried and dropped in this pass: committing a fresh build less often
(no difference); the record-copy `INSERT INTO t SELECT *` (transfer optimisation, 15 % faster
merge) once the main process indexes early (it needs an unindexed destination).

What is left for ≤ 4: less work per model, which changes the database's content and so was out of
scope here: the description is stored three times (snapshot, `models.data`, `description_text`)
and each model's JSON twice (`model_snapshots.data` and `models`/`model_versions`/`model_files`
`data`; the database is 3.7× the dump); FTS5 options (`detail=column`) or an FTS over a smaller
text; computing `description_text` lazily. On one core the floor measured in pass 3 (core tables
only: 3.6–5.8× the parse) already leaves little room.

### Pass 3 (serial CPU), kept

- JSON columns last in every table (`data`, `meta`), so index builds and facets never walk a JSON
  value's overflow pages; secondary indexes built once after a fresh load (`_LOAD_SCHEMA`);
  `derive_model` builds row tuples in a named column order (`ROW_COLUMNS`); JSON bound as orjson
  bytes and cast to TEXT in SQL; `file_hashes` and `models_tags` WITHOUT ROWID; journal off,
  synchronous off, `locking_mode=EXCLUSIVE` for the fresh temp file. Dropped then: page_size
  8/16/64 KiB (no change), the pickling worker pool (more CPU than it saved; replaced by the slice
  processes above), a split-based tag stripper.
"""


if __name__ == "__main__":
    main()
