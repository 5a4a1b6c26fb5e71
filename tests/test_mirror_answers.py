"""Each thing stored once: the offline API's model and version answers, reassembled from the rows
(mirror.answers), are the answers Civitai gave (the dump's JSON), for the fixture dump and the real
samples; a superseded answer stays in model_snapshots as its JSON, compressed (snapshot_json)."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import orjson

from mirror.answers import ANSWER_IN_ROWS, model_answer, snapshot_json, version_answer
from mirror.build import build_mirror
from tests.test_mirror_build import JAN_1, copy_dump, rows


def _brief(model: dict) -> dict:
    brief = {"name": model.get("name"), "type": model.get("type"), "nsfw": model.get("nsfw"),
             "poi": model.get("poi")}
    if model.get("minor") is not None:
        brief["minor"] = model["minor"]
    if model.get("mode"):
        brief["mode"] = model["mode"]
    return brief


def _raw_answer(dump: Path, path: str, model_id: int) -> dict:
    doc = json.loads((dump / path).read_text())
    items = doc["items"] if isinstance(doc, dict) and "items" in doc else [doc]
    return next(item for item in items if item.get("id") == model_id)


def check_answers_are_the_dump(dump: Path, db: Path) -> set[int]:
    """Every model whose current answer the rows stand for: its model and version answers are the
    dump's answer, as the API gave them before (the version with modelId and the model's brief)."""
    checked = set()
    with sqlite3.connect(db) as conn:
        for model_id, path in conn.execute(
                "SELECT model_id, path FROM model_snapshots WHERE data = ?", (ANSWER_IN_ROWS,)):
            raw = _raw_answer(dump, path, model_id)
            assert model_answer(conn, model_id) == raw, model_id
            for version in raw["modelVersions"]:
                want = {**version, "id": version["id"], "modelId": model_id,
                        "model": _brief(raw), "files": version.get("files") or []}
                assert version_answer(conn, version["id"]) == want, version["id"]
            checked.add(model_id)
    return checked


def test_answers_are_the_dumps_answers(tmp_path):
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    assert check_answers_are_the_dump(dump, db) == {101, 102, 103, 104, 105, 106, 107}
    # a model known only from a version answer: that answer, its model object from the model row
    raw = json.loads((dump / "model-versions" / "00003001.json").read_text())
    with sqlite3.connect(db) as conn:
        assert version_answer(conn, 3001) == raw
    with sqlite3.connect(db) as conn:
        # ComfyUI-Lora-Manager appends model_files rows to model_versions.data: no files there
        datas = [json.loads(d) for (d,) in conn.execute("SELECT data FROM model_versions")]
        assert datas and not [d["id"] for d in datas if "files" in d or "model" in d]
        assert not [d for (d,) in conn.execute("SELECT data FROM models")
                    if "modelVersions" in json.loads(d)]
        # nothing lost: every snapshot not standing for the rows is its JSON, compressed
        for kind, data in conn.execute(
                "SELECT kind, data FROM model_snapshots WHERE data != ?", (ANSWER_IN_ROWS,)):
            assert isinstance(data, bytes)
            assert kind == "notfound" or "id" in json.loads(snapshot_json(data))


def test_a_superseded_answer_stays_as_compressed_json(tmp_path):
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    main = dump / "00000000" / "00000101.json"
    old = json.loads(main.read_text())
    new = {**old, "name": "Detail Slider XL", "modelVersions": old["modelVersions"][:1]}
    main.write_text(json.dumps(new))  # a refresh replaces the file: the old answer is only in the db
    os.utime(main, (JAN_1 + 86400, JAN_1 + 86400))
    summary = build_mirror(dump, db)
    assert summary.files_read == 1
    kept = rows(db, "SELECT data FROM model_snapshots WHERE model_id = 101 AND kind = 'model' "
                    "ORDER BY fetched_at")
    assert [d for (d,) in kept][1] == ANSWER_IN_ROWS
    assert isinstance(kept[0][0], bytes) and json.loads(snapshot_json(kept[0][0])) == old
    with sqlite3.connect(db) as conn:
        assert model_answer(conn, 101) == new
    assert check_answers_are_the_dump(dump, db) == {101, 102, 103, 104, 105, 106, 107}
    # an unchanged dump: nothing re-derived, the old answer still there
    again = build_mirror(dump, db)
    assert again.models_rebuilt == 0
    assert rows(db, "SELECT count(*) FROM model_snapshots WHERE model_id = 101 AND data != "
                    f"'{ANSWER_IN_ROWS}' AND kind = 'model'") == [(1,)]


def test_real_samples_answers(tmp_path, shared_dir):
    dump = tmp_path / "dump"
    models = {}
    for sample in sorted((shared_dir / "civitai-samples").glob("*.json")):
        doc = orjson.loads(sample.read_bytes())
        for item in doc.get("items", [doc]) if isinstance(doc, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("modelVersions"), list) \
                    and isinstance(item.get("id"), int):
                models[item["id"]] = item
    assert len(models) >= 5
    for model_id, item in models.items():
        path = dump / f"{model_id // 10000 * 10000:08d}" / f"{model_id:08d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(item))
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    assert check_answers_are_the_dump(dump, db) == set(models)


def test_a_mirror_built_before_this_layout_answers_the_same(tmp_path):
    """Versions that still hold their files (written before model_files.position) answer as they
    did, also before the next build adds the column."""
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    with sqlite3.connect(db) as conn:
        want = model_answer(conn, 101)
        for version in want["modelVersions"]:  # the old layout: files inside the version's data
            conn.execute("UPDATE model_versions SET data = ? WHERE id = ?",
                         (json.dumps(version), version["id"]))
        conn.execute("ALTER TABLE model_files DROP COLUMN position")
        assert model_answer(conn, 101) == want
        assert version_answer(conn, want["modelVersions"][0]["id"])["files"] == \
            want["modelVersions"][0]["files"]


def test_a_mirror_from_before_gets_the_one_description(tmp_path):
    """An incremental build over a mirror built before the description was stored once (a
    description_text column, an external-content models_fts over it) drops the copy and indexes
    the description's text without it, in one step; search finds old and new models."""
    dump = copy_dump(tmp_path / "dump")
    db = tmp_path / "civitai.sqlite"
    build_mirror(dump, db)
    with sqlite3.connect(db) as conn:  # the layout of before
        conn.execute("DROP TABLE models_fts")
        conn.execute("ALTER TABLE models ADD COLUMN description_text TEXT")
        conn.execute("UPDATE models SET description_text = 'Adds detail & texture.' WHERE id = 101")
        conn.execute("CREATE VIRTUAL TABLE models_fts USING FTS5 "
                     "(name, description_text, tags, content=models)")
        conn.execute("INSERT INTO models_fts(models_fts) VALUES('rebuild')")
    main = dump / "00000000" / "00000102.json"
    answer = json.loads(main.read_text())
    main.write_text(json.dumps({**answer, "description": "<p>Brandnew <i>words</i></p>"}))
    os.utime(main, (JAN_1 + 86400, JAN_1 + 86400))
    assert build_mirror(dump, db).models_rebuilt == 1
    assert "description_text" not in {r[1] for r in rows(db, "PRAGMA table_info(models)")}
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'texture'") == [(101,)]
    assert rows(db, "SELECT rowid FROM models_fts WHERE models_fts MATCH 'brandnew words'") == [
        (102,)]
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO models_fts(models_fts, rank) VALUES('integrity-check', 1)")
        assert "content=''" in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'models_fts'").fetchone()[0]
