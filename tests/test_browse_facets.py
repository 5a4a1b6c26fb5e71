"""Facets counted once by `build` (mirror.facets): a whole table's page reads them from
``_facet_counts``, a filtered page counts its rows; both give what Datasette's own facet classes
give. Over the demo mirror, through Datasette's own client."""
from __future__ import annotations

import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.demo import prepare_demo
from mirror import facets
from mirror.facets import FACET_TABLE, configured_facets
from mirror.serve import load_metadata, make_datasette


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory):
    """The demo mirror as built, and a copy without ``_facet_counts`` (Datasette scans)."""
    directory = prepare_demo(tmp_path_factory.mktemp("facets") / "demo")
    built = directory / "civitai.sqlite"
    result = CliRunner().invoke(cli, ["build", str(directory / "civitai-meta"), "--db", str(built)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scanned = directory / "scanned.sqlite"
    shutil.copy(built, scanned)
    with sqlite3.connect(scanned) as conn:
        conn.execute(f"DROP TABLE {FACET_TABLE}")
    return {"built": built, "scanned": scanned, "dump": directory / "civitai-meta"}


async def _facets(db, path: str) -> dict:
    ds = make_datasette(db)
    await ds.invoke_startup()
    response = await ds.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()["facet_results"]


def test_build_counts_every_configured_facet(mirrors):
    with sqlite3.connect(mirrors["built"]) as conn:
        saved = {(t, kind, c) for t, kind, c in conn.execute(
            f"SELECT DISTINCT table_name, facet_type, facet FROM {FACET_TABLE}")}
        tags = dict(conn.execute(f"SELECT value, count FROM {FACET_TABLE} "
                                 "WHERE table_name = 'models' AND facet = 'tags'").fetchall())
        by_scan = dict(conn.execute("SELECT j.value, count(DISTINCT m.id) FROM models m, "
                                    "json_each(m.tags) j GROUP BY j.value").fetchall())
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM models WHERE 'anime' IN "
            "(SELECT value FROM json_each(models.tags))"))
    assert {("models", "array", "tags"), ("models", "array", "baseModels"), ("models", "column", "type"),
            ("model_versions", "column", "base_model"), ("file_hashes", "column", "type")} <= saved
    assert saved <= set(configured_facets(load_metadata()))
    assert tags == by_scan and tags
    assert "COVERING INDEX models_tags_facet" in plan  # a tag filter's count reads the index only


@pytest.mark.parametrize("path", ["/civitai/models.json", "/civitai/models.json?_facet_size=2",
                                  "/civitai/model_versions.json", "/civitai/model_files.json",
                                  "/civitai/images.json", "/civitai/file_hashes.json",
                                  "/civitai/models.json?type=LORA", "/civitai/models.json?_search=dreamy",
                                  "/civitai/models.json?_facet=username&_facet_array=allowCommercialUse",
                                  "/civitai/models.json?tags__arraycontains=style&_facet_size=3",
                                  "/civitai/models.json?_mode__exact=&_sort=name&_size=2"])
async def test_saved_counts_are_datasettes_counts(mirrors, path, monkeypatch):
    ours = await _facets(mirrors["built"], path)
    monkeypatch.setattr(facets, "_REPLACEMENTS", {})  # Datasette's own classes, scanning
    assert ours == await _facets(mirrors["scanned"], path)


async def test_whole_table_reads_the_saved_counts_and_filters_scan(mirrors, tmp_path):
    marked = tmp_path / "marked.sqlite"
    shutil.copy(mirrors["built"], marked)
    with sqlite3.connect(marked) as conn:  # a count only _facet_counts has: proves it is read
        conn.execute(f"UPDATE {FACET_TABLE} SET count = 9999 WHERE table_name = 'models' "
                     "AND facet = 'type' AND value = 'LORA'")
    whole = await _facets(marked, "/civitai/models.json")
    assert {r["value"]: r["count"] for r in whole["type"]["results"]}["LORA"] == 9999
    assert not whole["type"]["hideable"] and whole["tags"]["type"] == "array"
    assert "type=LORA" in next(r["toggle_url"] for r in whole["type"]["results"] if r["value"] == "LORA")
    filtered = await _facets(marked, "/civitai/models.json?type=LORA")
    assert [r["count"] for r in filtered["type"]["results"]] != [9999]
    html = await make_html(marked)
    assert 'id="facet-tags"' in html and "9,999" in html


async def make_html(db) -> str:
    ds = make_datasette(db)
    await ds.invoke_startup()
    return (await ds.client.get("/civitai/models")).text


async def test_a_filtered_page_stops_its_facets_at_the_budget(mirrors, monkeypatch):
    monkeypatch.setattr(facets, "FACET_BUDGET_MS", 0)
    ds = make_datasette(mirrors["built"])
    await ds.invoke_startup()
    filtered = (await ds.client.get("/civitai/models.json?type=LORA")).json()
    assert filtered["facet_results"] == {} and len(filtered["rows"]) == 8
    page = await ds.client.get("/civitai/models?type=LORA")
    assert page.status_code == 200
    assert "These facets timed out: type, mode, nsfw, _gone, baseModels, tags" in page.text
    whole = (await ds.client.get("/civitai/models.json")).json()  # saved counts need no budget
    assert len(whole["facet_results"]) == 6
