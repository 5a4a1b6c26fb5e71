"""`civitai-mirror update` against the fake API: the report of two runs, the lock, a kill mid-build."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.update import UpdateOptions, choose_refresh, update_lock
from tests.fakeapi import make_model
from tests.test_mirror_serve_live import Server

FAST = ["--sleep-retries", "0.01", "--sleep-429", "0.01", "--retries", "2", "--timeout", "5"]
LORA_BYTES = b"not really a LoRA, but a file with a known SHA256\n" * 64


def update(fake, tmp_path: Path, *args: str):
    result = CliRunner().invoke(cli, [
        "update", "--dump", str(tmp_path / "dump"), "--db", str(tmp_path / "civitai.sqlite"),
        "--api-base", fake.api_base, *FAST, *args])
    return result


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def catalogue(fake_civitai, tmp_path):
    """Models 1..30 upstream (every 7th id never published); model 5's file is in the library."""
    models = [make_model(i) for i in range(1, 31) if i % 7]
    sha = hashlib.sha256(LORA_BYTES).hexdigest().upper()
    models[4]["modelVersions"][0]["files"][0]["hashes"] = {"SHA256": sha, "AutoV2": sha[:10]}
    fake_civitai.add_models(models)
    library = tmp_path / "loras"
    library.mkdir()
    (library / "my_lora.safetensors").write_bytes(LORA_BYTES)
    result = CliRunner().invoke(cli, ["scan", str(library), "--db", str(tmp_path / "library.sqlite")])
    assert result.exit_code == 0, result.output
    return fake_civitai


def test_two_updates_report_what_changed_upstream_library_first(catalogue, tmp_path):
    fake = catalogue
    lib = str(tmp_path / "library.sqlite")
    first = update(fake, tmp_path, "--library", lib)
    assert first.exit_code == 0, first.output + first.stderr
    assert "first build of this mirror" in first.stdout
    db = tmp_path / "civitai.sqlite"
    assert rows(db, "SELECT count(*) FROM models") == [(26,)]
    assert rows(db, "SELECT baseline, changes FROM update_runs") == [(1, 0)]
    # the library was matched against the new mirror by the update itself
    assert rows(tmp_path / "library.sqlite", "SELECT model_id FROM matches WHERE model_id IS NOT NULL") == [(5,)]

    # upstream, before the next night
    fake.models[5]["mode"] = "TakenDown"
    fake.models[8]["mode"] = "Archived"
    del fake.models[10]                                     # answers 404 from now on
    extra = make_model(12, versions=3)["modelVersions"][2]
    extra["id"] = 125
    fake.models[12]["modelVersions"].insert(0, extra)       # a new version
    changed = fake.models[13]["modelVersions"][0]["files"][0]
    old_sha = changed["hashes"]["SHA256"]
    changed["hashes"]["SHA256"] = "AB" * 32                 # the same file id, other bytes
    fake.add_models([make_model(31), make_model(33)])       # new ids above the highest known

    time.sleep(1.1)  # nights apart in life: file times (to the second) must tell the two answers apart
    second = update(fake, tmp_path, "--library", lib, "--json")
    assert second.exit_code == 0, second.output + second.stderr
    changes = [json.loads(line) for line in second.stdout.splitlines()]
    assert [(c["kind"], c["model_id"], c["version_id"], c["in_library"]) for c in changes] == [
        ("model_taken_down", 5, None, 1),                    # the library's change comes first
        ("model_archived", 8, None, 0),
        ("model_gone", 10, None, 0),
        ("file_hash_changed", 13, 130, 0),
        ("model_new", 31, None, 0),
        ("model_new", 33, None, 0),
        ("version_new", 12, 125, 0),
    ]
    assert changes[0]["library_paths"] == [str((tmp_path / "loras" / "my_lora.safetensors"))] or \
        changes[0]["library_paths"][0].endswith("my_lora.safetensors")
    assert (changes[3]["old"], changes[3]["new"]) == (old_sha, "AB" * 32)
    assert "7 changes upstream, 1 of them in your library" in second.stderr
    # stored: the run and its changes, the same as printed
    assert rows(db, "SELECT id, baseline, changes, library_changes FROM update_runs ORDER BY id") == [
        (1, 1, 0, 0), (2, 0, 7, 1)]
    assert rows(db, "SELECT kind, model_id FROM changes WHERE run_id = 2 ORDER BY id") == [
        (c["kind"], c["model_id"]) for c in changes]
    # the changes table's facets, counted for its pages, include this run's rows
    assert rows(db, "SELECT value, count FROM _facet_counts WHERE table_name = 'changes' AND facet = 'in_library' "
                    "ORDER BY value") == [(0, 6), (1, 1)]
    # the mirror itself moved on: the archive keeps the gone model and its files
    assert rows(db, "SELECT id, mode, _gone FROM models WHERE id IN (5, 8, 10) ORDER BY id") == [
        (5, "TakenDown", 0), (8, "Archived", 0), (10, None, 1)]

    # a rebuild from scratch keeps the history, which the dump does not hold
    rebuilt = CliRunner().invoke(cli, ["build", str(tmp_path / "dump"), "--db", str(db), "--full"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rows(db, "SELECT count(*) FROM changes WHERE run_id = 2") == [(7,)]

    # a third night with nothing new upstream reports nothing
    third = update(fake, tmp_path, "--json")
    assert third.exit_code == 0, third.stderr
    assert third.stdout == ""
    assert "0 changes upstream" in third.stderr


def test_refresh_rotates_through_the_catalogue_within_the_nights(tmp_path):
    db = tmp_path / "civitai.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE models (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO models (id) VALUES (?)", [(i,) for i in range(1, 101)])
    conn.execute("CREATE TABLE update_runs (id INTEGER PRIMARY KEY, refresh_cursor INTEGER)")
    conn.commit()
    options = UpdateOptions(dump=tmp_path, db=db, newest=10, refresh_nights=4)
    seen: set[int] = set()
    for night in range(4):
        ids, cursor = choose_refresh(db, options)
        assert set(range(91, 101)) <= set(ids)            # the newest, every night
        assert len(ids) == 10 + 23                         # ceil(90 / 4) of the rest
        seen.update(ids)
        conn.execute("INSERT INTO update_runs (refresh_cursor) VALUES (?)", (cursor,))
        conn.commit()
    assert seen == set(range(1, 101))                      # the whole catalogue in 4 nights
    full, _ = choose_refresh(db, UpdateOptions(dump=tmp_path, db=db, full_refresh=True))
    assert full == list(range(1, 101))


def test_a_second_update_exits_with_a_clear_message(catalogue, tmp_path):
    db = tmp_path / "civitai.sqlite"
    with update_lock(db):
        result = update(catalogue, tmp_path)
    assert result.exit_code == 75
    assert "another update of" in result.stderr and "pid" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists() and catalogue.count() == 0       # it did nothing at all
    assert update(catalogue, tmp_path).exit_code == 0       # the lock went with its holder


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_update_killed_mid_build_leaves_the_server_on_the_previous_database(fake_civitai, tmp_path):
    fake_civitai.add_models(make_model(i) for i in range(1, 41))
    assert update(fake_civitai, tmp_path).exit_code == 0
    db = tmp_path / "civitai.sqlite"
    server = Server(tmp_path, "--db", str(db))
    try:
        status, _, body = server.get("/api/v1/models/1")
        assert status == 200 and json.loads(body)["name"].endswith("#1")
        # a big night: many new models and a renamed one; the update is killed while it builds
        fake_civitai.add_models(make_model(i, versions=6) for i in range(41, 3041))
        fake_civitai.models[1]["name"] = "Renamed upstream"
        work = db.with_name(db.name + ".update")
        proc = subprocess.Popen(
            [sys.executable, "-m", "civitai_mirror", "update", "--dump", str(tmp_path / "dump"), "--db", str(db),
             "--api-base", fake_civitai.api_base, *FAST, "--threads", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while not work.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)                                          # into the build of 3,000 models
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert work.exists()                                     # it died before its swap
        status, _, body = server.get("/api/v1/models/1")
        assert status == 200 and json.loads(body)["name"].endswith("#1")   # the previous database
        assert server.get("/api/v1/models/3000")[0] == 404
        assert rows(db, "SELECT count(*) FROM update_runs") == [(1,)]

        # the next run continues: nothing fetched is lost, the server shows the new data unrestarted
        result = update(fake_civitai, tmp_path)
        assert result.exit_code == 0, result.stderr
        assert not work.exists()
        status, _, body = server.get("/api/v1/models/1")
        assert status == 200 and json.loads(body)["name"] == "Renamed upstream"
        assert server.get("/api/v1/models/3040")[0] == 200
        kinds = rows(db, "SELECT kind, count(*) FROM changes GROUP BY kind ORDER BY kind")
        assert kinds == [("model_new", 3000)]
    finally:
        server.stop()
