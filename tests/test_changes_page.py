"""What `civitai-mirror update` found, as a user sees it: the page /-/changes and the canned query
`latest_changes`, served over real HTTP by `civitai-mirror serve` from a mirror built from the
fixture dump, with update_runs and changes rows written the way mirror.changes writes them."""
from __future__ import annotations

import html
import json
import re
import shutil
import sqlite3
import subprocess
import sys

import pytest
import yaml

from mirror import changes_page
from mirror.build import build_mirror
from mirror.changes import KINDS
from matcher.schema import open_library
from mirror.serve import METADATA_FILE
from tests.conftest import REPO
from tests.test_mirror_build import copy_dump
from tests.test_mirror_serve_live import Server

HOSTILE = "<script>alert(1)</script>"

RUNS = [  # id, started_at, finished_at, new_ids, refreshed, notfound, errors, requests, changes, library_changes, baseline
    (1, "2026-12-01T03:00:00Z", "2026-12-01T03:40:00Z", 0, 8, 0, 0, 1, 0, 0, 1),
    (2, "2026-12-02T03:00:00Z", "2026-12-02T03:12:30Z", 2700, 7800, 1900, 3, 105, 5, 1, 0),
    (3, "2026-12-03T03:00:00Z", "2026-12-03T03:05:00Z", 2650, 7790, 1850, 0, 104, 4, 1, 0),
]

CHANGES = [  # run, kind, model, version, file, model name, version name, old, new, in library
    (2, "model_archived", 104, None, None, "Old Run Model", None, None, "Archived", 0),
    (2, "version_new", 107, 1070, None, "Run Two Model", "v2", None, "v2", 0),
    (3, "model_taken_down", 103, None, None, HOSTILE, None, None, "TakenDown", 0),
    (3, "model_new", 300, None, None, "Brand New", None, None, None, 0),
    (3, "file_hash_changed", 102, 1020, 2020, "Mix Checkpoint", "v1", "AA" * 32, "BB" * 32, 0),
    # a version_new comes after taken down / hash changed in KINDS: first only because you hold it
    (3, "version_new", 101, 1011, None, "Detail Slider", "v1.1", None, "v1.1", 1),
]
LIBRARY_FILES = [(1, "/loras/detail_slider_v11.safetensors", "/loras"),
                 (2, "/backup/<b>odd</b>.safetensors", None)]


def add_updates(db) -> None:
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO update_runs (id, started_at, finished_at, new_ids, refreshed, notfound, errors, "
            "requests, changes, library_changes, baseline) VALUES (?,?,?,?,?,?,?,?,?,?,?)", RUNS)
        conn.executemany(
            "INSERT INTO changes (run_id, kind, model_id, version_id, file_id, model_name, version_name, "
            "old, new, in_library) VALUES (?,?,?,?,?,?,?,?,?,?)", CHANGES)


def make_library(path) -> None:
    """A library.sqlite whose two files are matched to model 101."""
    library = open_library(path)
    library["files"].insert_all({"id": i, "path": p, "root": r, "kind": "model"} for i, p, r in LIBRARY_FILES)
    library["matches"].insert_all({"file_id": i, "model_id": 101, "version_id": 1011} for i, _, _ in LIBRARY_FILES)
    library.close()


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("changes")
    db = tmp / "civitai.sqlite"
    build_mirror(copy_dump(tmp / "dump"), db)
    (tmp / "before").mkdir()
    shutil.copy(db, tmp / "before" / "civitai.sqlite")  # a mirror no update has run on
    add_updates(db)
    (tmp / "lib").mkdir()  # not beside the mirror, which serve would show without being asked
    make_library(tmp / "lib" / "library.sqlite")
    return tmp, db, tmp / "before" / "civitai.sqlite"


@pytest.fixture(scope="module")
def server(dbs):
    tmp, db, _ = dbs
    running = Server(tmp, "--db", str(db), "--library", str(tmp / "lib" / "library.sqlite"))
    yield running
    running.stop()


def page(server, path: str) -> tuple[int, str]:
    status, _, body = server.get(path)
    return status, body.decode("utf-8")


def test_the_latest_run_library_change_first_and_everything_escaped(server):
    status, text = page(server, "/-/changes")
    assert status == 200
    assert "Run 3" in text and "Run 2<" not in text
    for shown in ("2,650</strong> new ids", "7,790</strong> refreshed", "1,850</strong> not found",
                  "104</strong> requests", "4</strong> changes", "1</strong> library changes", "5 min 0 s"):
        assert shown in text, shown
    # the held model's change leads, highlighted, with your files; then KINDS order
    order = [text.index(s) for s in ('class="changes-group in-library" id="library-version_new"',
                                     "taken down (1)", "file hash changed (1)", "new model (1)")]
    assert order == sorted(order)
    assert text.index("Detail Slider") < text.index(html.escape(HOSTILE))
    # your files, from the library, relative to the folder scanned (as the library overview shows them)
    assert '/library/files/1">detail_slider_v11.safetensors</a>' in text
    assert "&lt;b&gt;odd&lt;/b&gt;" in text and "<b>odd</b>" not in text
    # a stranger's model name is text, never markup
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # each change links to its model and version
    assert 'href="/civitai/models/101"' in text and 'href="/civitai/model_versions/1011"' in text
    assert 'href="/civitai/models/103"' in text
    assert "AA" * 32 + " → " + "BB" * 32 in text
    # runs list, newest first, each a link to its report
    assert [int(n) for n in re.findall(r'href="/-/changes\?run=(\d+)"', text)] == [3, 2, 1]


def test_run_selection(server):
    status, text = page(server, "/-/changes?run=2")
    assert status == 200 and "Run 2" in text
    assert "Old Run Model" in text and "Run Two Model" in text and "Detail Slider" not in text
    assert "12 min 30 s" in text and "3</strong> errors" in text
    status, text = page(server, "/-/changes?run=1")
    assert status == 200 and "baseline" in text and "nothing earlier to compare to" in text
    status, text = page(server, "/-/changes?run=99")
    assert status == 404 and "No update run 99" in text
    status, text = page(server, "/-/changes?run=%3Cb%3Ex")
    assert status == 400 and "run must be a run number" in text and "<b>x" not in text


def test_the_canned_query_lists_the_latest_run_library_first(server):
    status, _, body = server.get("/civitai/latest_changes.json?_shape=objects")
    assert status == 200, body
    rows = json.loads(body)["rows"]
    assert [(r["kind"], r["model_id"], r["in_library"]) for r in rows] == [
        ("version_new", 101, 1), ("model_taken_down", 103, 0), ("file_hash_changed", 102, 0),
        ("model_new", 300, 0)]
    assert "library_paths" not in rows[0]  # the shared file holds no path of yours
    assert rows[1]["model_name"] == HOSTILE and rows[2]["old"] == "AA" * 32
    status, text = page(server, "/civitai/latest_changes")
    assert status == 200 and "Latest changes upstream" in text
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_without_the_library_the_page_says_held_but_names_no_file(dbs):
    tmp, db, _ = dbs
    alone = Server(tmp, "--db", str(db))
    try:
        status, text = page(alone, "/-/changes")
        assert status == 200 and "Detail Slider" in text and "serve --library</code> shows which" in text
        assert "detail_slider_v11" not in text
    finally:
        alone.stop()


def test_the_home_page_links_the_changes(server):
    status, text = page(server, "/")
    assert status == 200 and 'href="/-/changes"' in text


def test_before_any_update(dbs):
    tmp, _, before = dbs
    empty = Server(tmp / "before", "--db", str(before))
    try:
        status, text = page(empty, "/-/changes")
        assert status == 200
        assert "No update has run yet" in text and "Run " not in text
        status, text = page(empty, "/-/changes?run=1")
        assert status == 200 and "No update has run yet" in text
        # every build makes the (empty) tables: the canned query answers before the first update
        status, _, body = empty.get("/civitai/latest_changes.json?_shape=objects")
        assert status == 200 and json.loads(body)["rows"] == []
    finally:
        empty.stop()


def test_the_query_orders_kinds_as_the_report_does():
    sql = yaml.safe_load(METADATA_FILE.read_text())["databases"]["civitai"]["queries"]["latest_changes"]["sql"]
    ranks = re.findall(r"when '(\w+)' then (\d+)", sql)
    assert [kind for kind, _ in ranks] == list(KINDS)
    assert [int(n) for _, n in ranks] == list(range(len(KINDS)))


def test_each_group_is_capped_and_says_how_many_more(dbs, monkeypatch):
    _, db, before = dbs
    monkeypatch.setattr(changes_page, "PER_GROUP", 1)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        data = changes_page.read_changes(conn, 2)
    finally:
        conn.close()
    assert [(g["kind"], g["total"], len(g["rows"])) for g in data["groups"]] == [
        ("model_archived", 1, 1), ("version_new", 1, 1)]
    assert changes_page.read_changes(sqlite3.connect(before))["ran"] is False


@pytest.mark.parametrize("path,shows", [
    ("/-/changes", ['href="/civitai/models/101"', "Run 3", "&lt;script&gt;alert(1)&lt;/script&gt;"]),
    ("/api/v1/models/101", ['"name": "Detail Slider"']),
])
def test_a_plain_datasette_serves_the_plugin_from_the_contrib_folder(dbs, path, shows):
    """What README's publishing recipe gives a published Datasette: the same options on `serve`."""
    _, db, _ = dbs
    done = subprocess.run(
        [sys.executable, "-m", "datasette", "serve", "-i", str(db), "-m", str(METADATA_FILE),
         "--plugins-dir", str(REPO / "contrib" / "datasette"), "--template-dir", str(REPO / "mirror" / "templates"),
         "--get", path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for text in shows:
        assert text in done.stdout, text
