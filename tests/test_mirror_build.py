"""civitai-mirror build: the dump fixture in tests/fixtures/dump, the real samples, incremental builds."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
import mirror.load
from matcher.schema import open_library
from mirror.build import build_mirror
from mirror.derive import derive_model, normalize_commercial_use
from mirror.dump_reader import parse_document
from mirror.schema import CIVITAI_APPLICATION_ID, LIBRARY_APPLICATION_ID, database_file_kind

FIXTURE = Path(__file__).parent / "fixtures" / "dump"
JAN_1 = 1767225600  # 2026-01-01T00:00:00Z


def copy_dump(dest: Path) -> Path:
    """The fixture dump in tmp, main files dated 2026-01-01 (side files carry their own UTC stamp)."""
    shutil.copytree(FIXTURE, dest)
    for path in dest.rglob("*.json"):
        os.utime(path, (JAN_1, JAN_1))
    return dest


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def built(tmp_path):
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    summary = build_mirror(dump, db)
    return dump, db, summary


def test_build_summary_and_broken_file_reported(built):
    dump, db, summary = built
    assert (summary.models, summary.versions, summary.files, summary.hashes, summary.images) == (
        8, 9, 10, 31, 4)
    assert summary.errors == [("00000000/00000108.json",
                               "broken JSON: unexpected end of data: line 1 column 29 (char 28)")]
    assert summary.skipped == 1  # enums.json
    assert summary.local_images == 2


def test_models_rows_across_schema_generations(built):
    _, db, _ = built
    assert rows(db, "SELECT id, name, type, username, mode, _gone, _partial, _snapshots, "
                    "allowCommercialUse, downloadCount, thumbsUpCount, tags, version_count "
                    "FROM models ORDER BY id") == [
        (101, "Detail Slider", "LORA", "alice", None, 0, 0, 1, '["Sell"]', 1200, None,
         '["detail","slider","tool"]', 2),
        (102, "Mix Checkpoint", "Checkpoint", None, None, 0, 0, 1, '["Image","RentCivit"]', None,
         None, '["base model","anime"]', 1),
        (103, "Reupload Of Slider", "LORA", "bob", None, 0, 0, 1, "[]", 3, 0, '["tool"]', 1),
        (104, "Old Style", "LORA", "alice", "Archived", 0, 0, 2, '["Image","RentCivit"]', 51, 5,
         '["style"]', 1),
        (105, "Deleted Thing", "LORA", "alice", None, 1, 0, 2, '["Image","RentCivit"]', 50, 5, "[]", 1),
        (106, "Listed One", "LORA", "bob", None, 0, 0, 1, "[]", 3, 0, '["listed"]', 1),
        (107, "Listed Two", "LORA", "bob", None, 0, 0, 1, "[]", 3, 0, '["listed"]', 1),
        (300, "Whimsy (Flux)", "LORA", None, None, 0, 1, 1, "[]", None, None, "[]", 1),
    ]
    # the community archive columns are filled the way Lora Manager reads them
    data = json.loads(rows(db, "SELECT data FROM models WHERE id = 101")[0][0])
    assert data["name"] == "Detail Slider" and "modelVersions" not in data
    # the description is stored once (HTML in data); its text is in the search index only
    assert "description_text" not in {r[1] for r in rows(db, "PRAGMA table_info(models)")}
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH "
                    "'description_text:(detail AND texture)'") == [(101,)]
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'amp OR p OR b'") == []
    assert rows(db, "SELECT sha256, type FROM model_files WHERE id = 2021") == [("D4" * 32, "VAE")]


def test_history_keeps_archived_files_findable(built):
    _, db, _ = built
    assert rows(db, "SELECT _first_seen, _last_seen FROM models WHERE id = 104") == [
        ("2026-01-01T00:00:00Z", "2026-10-01T12:00:00Z")]
    assert rows(db, "SELECT id, _archived FROM model_files WHERE model_id = 104") == [(2040, 1)]
    assert rows(db, "SELECT * FROM archived_model_files") == [(2040, 104, 1040)]
    assert rows(db, "SELECT type, hash FROM file_hashes WHERE file_id = 2040 ORDER BY type") == [
        ("AutoV1", "C0FFEE00"), ("AutoV2", "C3" * 5), ("AutoV3", "AAAABBBBCCCC"),
        ("BLAKE3", "EF" * 32), ("CRC32", "01020304"), ("SHA256", "C3" * 32)]
    assert rows(db, "SELECT kind, mode, file_count, fetched_at FROM model_snapshots "
                    "WHERE model_id = 104 ORDER BY fetched_at") == [
        ("model", None, 1, "2026-01-01T00:00:00Z"),
        ("model", "Archived", 0, "2026-10-01T12:00:00Z")]


def test_versions_images_tags_creators(built):
    _, db, _ = built
    assert rows(db, "SELECT id, model_id, position, name, base_model, published_at FROM model_versions "
                    "WHERE model_id IN (101, 300) ORDER BY id") == [
        (1010, 101, 1, "v1", "SD 1.5", 1677664800),  # 2023 shape: createdAt stands in
        (1011, 101, 0, "v2", "SD 1.5", 1682935200),
        (3001, 300, 0, "v1.0", "Flux.1 D", 1736317734)]
    assert rows(db, "SELECT id, version_id, nsfwLevel, nsfw, local_path, meta IS NOT NULL "
                    "FROM images ORDER BY id") == [
        (5001, 1011, None, "None", "images/00000000/5001.jpeg", 1),
        (5002, 1020, 4, None, "images/00000000/5002.webp", 0),
        (5003, 1030, 1, None, None, 0),
        (6001, 3001, 1, None, None, 1)]
    assert rows(db, "SELECT username, model_count FROM creators ORDER BY username") == [
        ("alice", 3), ("bob", 3)]
    assert rows(db, "SELECT t.name FROM models_tags mt JOIN tags t ON t.id = mt.tags_id "
                    "WHERE mt.models_id = 101 ORDER BY t.name") == [("detail",), ("slider",), ("tool",)]
    # full-text search over name, description text and tags
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'texture'") == [(101,)]
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'listed' ORDER BY rowid") == [
        (106,), (107,)]


def test_incremental_build_reads_only_new_files(built):
    dump, db, _ = built
    again = build_mirror(dump, db)
    assert (again.files_read, again.models_rebuilt, again.files_unchanged) == (0, 0, 10)
    assert len(again.errors) == 1  # the broken file is reported every time until fixed
    # a new model, and a new side file for an existing one
    new = json.loads((dump / "00000000/00000103.json").read_text())
    new.update(id=109, name="Brand New")
    new["modelVersions"][0].update(id=1090)
    new["modelVersions"][0]["files"][0].update(id=2090, hashes={"SHA256": "09" * 32})
    (dump / "00000000/00000109.json").write_text(json.dumps(new))
    refreshed = json.loads((dump / "00000000/00000103.json").read_text())
    refreshed["name"] = "Reupload Renamed"
    (dump / "00000000/00000103.20261120T000000Z.json").write_text(json.dumps(refreshed))
    (dump / "00000000/00000108.json").write_text(json.dumps({**new, "id": 108, "modelVersions": []}))
    third = build_mirror(dump, db)
    assert third.files_read == 3 and third.files_unchanged == 10 and third.errors == []
    assert third.models_rebuilt == 3
    assert rows(db, "SELECT id, name, _snapshots FROM models WHERE id IN (103, 108, 109) ORDER BY id") == [
        (103, "Reupload Renamed", 2), (108, "Brand New", 1), (109, "Brand New", 1)]
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'renamed'") == [(103,)]
    assert rows(db, "SELECT count(*) FROM models_fts WHERE models_fts MATCH 'reupload'") == [(1,)]
    # removing a side file drops its snapshot; the model falls back to the remaining answer
    (dump / "00000000/00000103.20261120T000000Z.json").unlink()
    fourth = build_mirror(dump, db)
    assert fourth.files_removed == 1
    assert rows(db, "SELECT name, _snapshots FROM models WHERE id = 103") == [("Reupload Of Slider", 1)]


def test_full_rebuild_equals_incremental(built, tmp_path):
    dump, db, _ = built
    result = CliRunner().invoke(cli, ["build", str(dump), "--db", str(db), "--full", "--json"])
    assert result.exit_code == 1, result.output  # the broken file: built, and the status says so
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["models"], summary["files"], summary["hashes"]) == (8, 10, 31)
    assert summary["errors"] == [{"path": "00000000/00000108.json",
                                  "error": "broken JSON: unexpected end of data: line 1 column 29 (char 28)"}]
    assert not (tmp_path / "civitai.sqlite.tmp").exists()


def test_cli_build_text_and_missing_dump(tmp_path):
    dump = copy_dump(tmp_path / "dump")
    runner = CliRunner()
    result = runner.invoke(cli, ["build", str(dump), "--db", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 1  # one broken file; everything else is built
    assert "8 models, 9 versions, 10 files, 31 hashes, 4 images (2 saved locally)" in result.stdout
    assert "00000108.json: broken JSON" in result.stderr
    missing = runner.invoke(cli, ["build", str(tmp_path / "nope"), "--db", str(tmp_path / "c.sqlite")])
    assert missing.exit_code == 1
    assert "dump folder" in missing.output and "Traceback" not in missing.output


def test_a_folder_without_dump_files_is_an_error_and_the_mirror_stays(built, tmp_path):
    _, db, _ = built
    before = db.read_bytes()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "images" / "1.json").write_text("{}")  # the images folder is not the dump
    runner = CliRunner()
    for args in (["build", str(empty), "--db", str(db)], ["build", str(empty), "--db", str(db), "--full"],
                 ["build", str(empty), "--db", str(tmp_path / "new.sqlite")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [f"Error: {empty} holds no dump files "
                                              "(NNNNNNNN/NNNNNNNN.json); crawl into it first"]
    assert db.read_bytes() == before and not (tmp_path / "new.sqlite").exists()


def test_each_database_says_what_it_is(built, tmp_path):
    dump, db, _ = built
    assert rows(db, "PRAGMA application_id") == [(CIVITAI_APPLICATION_ID,)]
    library = tmp_path / "library.sqlite"
    open_library(library).close()
    assert rows(library, "PRAGMA application_id") == [(LIBRARY_APPLICATION_ID,)]
    # files from before application_id are known by their tables, and marked when next written
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA application_id = 0")
    assert database_file_kind(db) == "civitai"
    build_mirror(dump, db)
    assert rows(db, "PRAGMA application_id") == [(CIVITAI_APPLICATION_ID,)]
    old = tmp_path / "old-library.sqlite"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT)")
    assert database_file_kind(old) == "library"
    other = tmp_path / "places.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY)")
    assert database_file_kind(other) is None
    for target in (library, other):
        result = CliRunner().invoke(cli, ["build", str(dump), "--db", str(target), "--full"])
        assert result.exit_code == 1 and "not a mirror" in result.stderr and target.exists()
    assert rows(other, "SELECT name FROM sqlite_master") == [("moz_places",)]


def test_parse_document_kinds():
    snaps, skip = parse_document(b'{"error": "No model with id 5"}', "00000000/00000005.20261122T010203Z.json", 0)
    assert (snaps[0].model_id, snaps[0].kind, snaps[0].fetched_at, skip) == (
        5, "notfound", "2026-11-22T01:02:03Z", None)
    snaps, skip = parse_document(b'{"ModelType": []}', "x.json", 0)
    assert snaps == [] and skip
    with pytest.raises(ValueError):
        parse_document(b"<html>", "00000000/00000001.json", 0)


@pytest.mark.parametrize("value,expected", [
    ("Sell", ["Sell"]), ("{Image,RentCivit}", ["Image", "RentCivit"]), (["Image"], ["Image"]),
    ([], []), (None, []), ("None", []),
])
def test_commercial_use_every_generation(value, expected):
    assert normalize_commercial_use(value) == expected


def test_derive_model_without_usable_snapshot():
    snaps, _ = parse_document(b'{"error": "No model with id 5"}', "00000000/00000005.json", 0)
    assert derive_model(5, snaps) is None


def test_build_real_samples(shared_dir, tmp_path):
    """Every real sample shape builds; list pages count once per model; other shapes are skipped."""
    dump = tmp_path / "dump"
    (dump / "00000000").mkdir(parents=True)
    for sample in sorted((shared_dir / "civitai-samples").glob("*.json")):
        shutil.copy(sample, dump / "00000000" / sample.name)
    db = tmp_path / "civitai.sqlite"
    summary = build_mirror(dump, db)
    assert summary.errors == []
    assert summary.skipped == 2  # the enums answer and the CivArchive (not Civitai) answer
    assert (summary.models, summary.versions, summary.files, summary.hashes) == (20, 138, 225, 1138)
    assert rows(db, "SELECT mode, _partial FROM models WHERE id IN (1117241, 2004760) ORDER BY id") == [
        (None, 1), (None, 1)]
    # the 2026 array form, the 2023 string form
    assert rows(db, "SELECT allowCommercialUse FROM models WHERE id IN (4437, 2833924) ORDER BY id") == [
        ('["Sell"]',), ("[]",)]
    assert rows(db, "SELECT version_id, model_id FROM file_hashes WHERE hash = '2C6C9B3E47'") == [
        (5021, 4437)]


def test_404_side_files_mean_gone_upstream(built):
    """The crawler keeps a refresh's 404 body beside the good copy (``-N`` when in the same second)."""
    dump, db, _ = built
    block = dump / "00000000"
    (block / "00000101.20261110T000000Z.json").write_text('{\n  "error": "Model not found"\n}\n')
    (block / "00000101.20261110T000000Z-1.json").write_text('{"error": "Model not found"}\n')
    (block / "00000102.20261111T000000Z.json").write_text('"Not Found"\n')
    (block / "00000106.20261112T000000Z.json").write_text(
        '{"error": "Not found", "message": "No model with id 106", "status": 404, "code": "x"}')
    (block / "00000110.20261112T000000Z.json").write_text('{"error": "No model with id 110"}')
    (dump / "history.txt").write_text("00000101\t404 on refresh\t00000101.20261110T000000Z.json\t"
                                      "2026-11-10T00:00:00Z\n")
    summary = build_mirror(dump, db)
    assert summary.errors == [("00000000/00000108.json",
                               "broken JSON: unexpected end of data: line 1 column 29 (char 28)")]
    assert summary.skipped == 0 and summary.files_read == 5
    assert rows(db, "SELECT id, name, _gone, _last_seen FROM models WHERE id IN (101, 102, 106, 110) "
                    "ORDER BY id") == [
        (101, "Detail Slider", 1, "2026-11-10T00:00:00Z"),
        (102, "Mix Checkpoint", 1, "2026-11-11T00:00:00Z"),
        (106, "Listed One", 1, "2026-11-12T00:00:00Z")]
    # the files stay findable by hash
    assert rows(db, "SELECT count(*) FROM file_hashes WHERE model_id = 101") != [(0,)]
    assert rows(db, "SELECT kind, count(*) FROM model_snapshots WHERE model_id IN (101, 110) "
                    "GROUP BY kind ORDER BY kind") == [("model", 1), ("notfound", 3)]
    # a full rebuild says the same
    full = build_mirror(dump, db, full=True)
    assert full.models == 8
    assert rows(db, "SELECT id FROM models WHERE _gone = 1 ORDER BY id") == [(101,), (102,), (105,), (106,)]


def test_indexes_the_matcher_uses(built):
    _, db, _ = built
    import sqlite_utils
    tables = sqlite_utils.Database(db)
    assert ["sizeKB"] in [ix.columns for ix in tables["model_files"].indexes]
    assert ["width", "height"] in [ix.columns for ix in tables["images"].indexes]
    from mirror.reader import Mirror  # the matcher's own probe switches size-only suggestions on
    assert Mirror(tables).indexed("model_files", "sizeKB")


def test_fresh_build_has_every_declared_index_and_json_as_text(built):
    """A fresh build loads bare tables and indexes at the end: nothing declared may be missing, and
    the JSON columns (inserted as bytes) read back as TEXT, the way Lora Manager json.loads them."""
    _, db, _ = built
    import json
    import sqlite_utils
    from mirror.schema import CIVITAI_SCHEMA
    tables = sqlite_utils.Database(db)
    for name, spec in CIVITAI_SCHEMA.items():
        have = [ix.columns for ix in tables[name].indexes]
        for index in spec.get("indexes", []):
            cols = index["columns"] if isinstance(index, dict) else index
            assert list(cols) in have, (name, cols)
    for table in ("models", "model_versions", "model_files"):
        assert rows(db, f"SELECT DISTINCT typeof(data) FROM {table}") == [("text",)], table
    # snapshots: the marker of the answer the rows stand for (text), the others compressed (blob)
    assert rows(db, "SELECT typeof(data), count(*) FROM model_snapshots GROUP BY 1 ORDER BY 1") == [
        ("blob", 3), ("text", 7)]
    assert rows(db, "SELECT DISTINCT typeof(meta) FROM images WHERE meta IS NOT NULL") == [("text",)]
    (data,) = tables.execute("SELECT data FROM models WHERE id = 101").fetchone()
    assert json.loads(data)["id"] == 101
    assert rows(db, "PRAGMA page_size") == [(8192,)]  # mirror.writer.PAGE_SIZE


def test_worker_processes_build_the_same_rows(tmp_path):
    """A fresh build split over worker processes (each loading a slice into its own file, then
    merged) gives the same database as one process, also when a list page in a later slice
    holds models whose own files are in an earlier one."""
    dump = copy_dump(tmp_path / "dump")
    model = json.loads((dump / "00000000" / "00000101.json").read_text())
    model["stats"] = {**(model.get("stats") or {}), "downloadCount": 424242}
    model["tags"] = list(model.get("tags") or []) + ["zz only on a page"]
    page = {"items": [model, json.loads((dump / "pages" / "models-newest-page1.json").read_text())[
        "items"][0]], "metadata": {}}
    (dump / "pages" / "models-newest-page2.json").write_text(json.dumps(page))
    os.utime(dump / "pages" / "models-newest-page2.json", (JAN_1 + 60, JAN_1 + 60))
    serial, pooled = tmp_path / "serial.sqlite", tmp_path / "pooled.sqlite"
    old = mirror.load.TASK_FILES
    mirror.load.TASK_FILES = 2  # several tasks per slice, side files kept with their main file
    try:
        a = build_mirror(dump, serial, workers=0)
        b = build_mirror(dump, pooled, workers=2)
    finally:
        mirror.load.TASK_FILES = old
    assert (b.models, b.versions, b.files, b.hashes, b.images, b.errors, b.skipped, b.files_read,
            b.snapshots_new) == (a.models, a.versions, a.files, a.hashes, a.images, a.errors,
                                 a.skipped, a.files_read, a.snapshots_new)
    for table in ("models", "model_versions", "model_files", "file_hashes", "images",
                  "archived_model_files", "model_snapshots", "creators", "_sources"):
        assert rows(pooled, f"SELECT * FROM {table} ORDER BY 1, 2") == rows(
            serial, f"SELECT * FROM {table} ORDER BY 1, 2"), table
    tags_sql = ("SELECT mt.models_id, t.name FROM models_tags mt JOIN tags t ON t.id = mt.tags_id "
                "ORDER BY 1, 2")
    assert rows(pooled, tags_sql) == rows(serial, tags_sql)
    assert rows(pooled, "SELECT downloadCount, _snapshots FROM models WHERE id = 101") == [(424242, 2)]
    for query in ("texture", '"zz only on a page"'):
        fts = f"SELECT rowid FROM models_fts WHERE models_fts MATCH '{query}' ORDER BY rowid"
        assert rows(pooled, fts) == rows(serial, fts) == [(101,)], query
    with sqlite3.connect(pooled) as conn:  # no stale entries left by the merge
        conn.execute("INSERT INTO models_fts(models_fts, rank) VALUES('integrity-check', 1)")
    assert not list(tmp_path.glob("pooled.sqlite.*"))  # slice files removed
    again = build_mirror(dump, pooled)  # the merged _sources make the next build incremental
    assert (again.files_read, again.files_unchanged, again.errors, again.models_rebuilt) == (
        0, b.files_read + len(b.errors) - 1, b.errors, 0)  # only the broken file is tried again


def test_a_record_with_a_lone_surrogate_is_built_not_refused(tmp_path):
    """The crawler keeps such a body as received (valid JSON); the mirror holds it, U+FFFD in place."""
    dump = tmp_path / "dump"
    path = dump / "00000000" / "00000042.json"
    path.parent.mkdir(parents=True)
    body = ('{"id": 42, "name": "Cut \\ud83d emoji", "type": "LORA", "modelVersions": [{"id": 4201, '
            '"modelId": 42, "name": "v1", "files": [], "images": []}]}')
    path.write_text(body, encoding="ascii")
    result = CliRunner().invoke(cli, ["build", str(dump), "--db", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    name = sqlite3.connect(tmp_path / "c.sqlite").execute("select name from models where id = 42").fetchone()[0]
    assert name == "Cut \ufffd emoji"
    assert path.read_text(encoding="ascii") == body  # the dump keeps what was received
