"""Run every benchmark in bench/ one after another and rewrite bench/RESULTS.md.

    python bench/run_all.py            # default sizes (several minutes)
    python bench/run_all.py --quick    # smaller inputs, for a smoke run

Each benchmark prints ratios against a baseline measured in the same process and rewrites its
own section of RESULTS.md (bench/results.py); this script runs them in a fixed order, each in
its own process so one cannot warm the other's caches.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from results import HEADER, RESULTS

HERE = Path(__file__).resolve().parent

# (script, default arguments, --quick arguments)
BENCHMARKS = [
    ("bench_crawl.py", [], ["--ids", "600"]),
    ("bench_faults.py", [], ["--ids", "600", "--rounds", "1", "--per-id-ids", "600"]),
    ("bench_build.py", ["--models", "20000", "--lookup-files", "1000000"], ["--models", "2000", "--lookup-files", "100000"]),
    ("bench_hash.py", [], ["--size-mib", "256", "--files", "2000"]),
    ("bench_extract.py", [], []),
    ("bench_pages.py", ["--models", "100000"], ["--models", "2000", "--rounds", "1"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--only", action="append", default=[], help="run only this script (repeatable)")
    args = parser.parse_args()
    if not args.only:
        # a fresh file: the header, then each benchmark appends its section as it runs
        RESULTS.write_text(HEADER, encoding="utf-8")
    failed = []
    for script, default, quick in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        extra = quick if args.quick else default
        print(f"== {script} {' '.join(extra)}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(HERE / script), *extra], cwd=HERE.parent)
        print(f"== {script}: exit {done.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        if done.returncode:
            failed.append(script)
    print(f"wrote {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
