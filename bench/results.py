"""One place that writes bench/RESULTS.md: each benchmark owns one marked section.

    from results import write_section
    write_section("crawl", markdown_text)

rewrites the text between ``<!-- section: crawl -->`` and ``<!-- end: crawl -->`` (appending the
section if it is new), so benchmarks run alone or through run_all.py update only their own part.
"""
from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Ratios against a baseline run in the same process (machines here are noisy; absolute times mean little).
`python bench/run_all.py` runs every benchmark and rewrites this file; each benchmark run alone
rewrites only its own section.
"""


def write_section(name: str, body: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    block = f"<!-- section: {name} -->\n{body.strip()}\n<!-- end: {name} -->"
    pattern = re.compile(rf"<!-- section: {re.escape(name)} -->.*?<!-- end: {re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
