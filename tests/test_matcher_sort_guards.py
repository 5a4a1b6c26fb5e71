"""Guard rails of sort, undo and pin on the command line: one line for what they cannot do, and the
truth about what happened (a reason per failed file, a hint after Ctrl-C, whole paths in the plan)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from matcher import journal
from mirror.schema import CIVITAI_SCHEMA, apply_schema, mark_database
from tests.test_matcher_sort import EXPECTED_MOVES, LORA_DIR, SAME_BYTES, TREE, build_library, manifest


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def lib(tmp_path):
    db, ids = build_library(tmp_path)
    return tmp_path, str(tmp_path / "library.sqlite"), db, ids


@pytest.mark.parametrize("text,needle", [
    ("this is not json {", "not JSON"),
    ('{"moves": 3}', "'dest'"),
    ("[]", "not list"),
    ('{"dest": "/d", "moves": 3}', "'moves' must be a list"),
    ('{"dest": "/d", "moves": [{"source": "/a", "destination": "/elsewhere/a"}]}', "inside /d"),
    ('{"dest": "/d", "moves": [{"source": "/a", "destination": "/d/a", "size": "big"}]}', "moves[0].size"),
    ("[" * 100_000, "not JSON"),
])
def test_a_plan_file_that_is_not_a_plan_is_one_line(lib, text, needle):
    root, db_path, _, _ = lib
    (root / "bad.json").write_text(text, encoding="utf-8")
    before = manifest(root)
    result = run("sort", "--plan", str(root / "bad.json"), "--db", db_path)
    one_line_error(result, "bad.json", needle)
    assert manifest(root) == before
    assert run("runs", "--db", db_path).output.strip() == "no sort runs yet"


def test_dest_that_disagrees_with_the_plan_is_refused(lib):
    root, db_path, _, _ = lib
    plan = root / "plan.json"
    assert run("sort", "--dest", str(root / "dest"), "--db", db_path, "--dry-run", "--save-plan", str(plan)).exit_code == 0
    before = manifest(root)
    result = run("sort", "--dest", str(root / "other"), "--plan", str(plan), "--db", db_path)
    one_line_error(result, str(root / "dest"), "leave --dest out")
    assert manifest(root) == before and not (root / "other").exists()
    # The same folder, spelled differently, is the plan's own.
    result = run("sort", "--dest", str(root / "dest") + os.sep, "--plan", str(plan), "--db", db_path)
    assert result.exit_code == 0, result.output
    assert f"{len(EXPECTED_MOVES)} done" in result.output


def test_reapplying_an_applied_plan_says_why_each_file_failed(lib):
    root, db_path, _, _ = lib
    plan = root / "plan.json"
    assert run("sort", "--dest", str(root / "dest"), "--db", db_path, "--save-plan", str(plan)).exit_code == 0
    after_first = manifest(root)
    result = run("sort", "--plan", str(plan), "--db", db_path)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == len(EXPECTED_MOVES)
    assert f"failed: {root / 'src/two/b.safetensors'}: source is gone and its destination exists" in result.output
    assert f"{len(EXPECTED_MOVES)} failed" in result.output
    assert manifest(root) == after_first
    # --json: the summary lists them too, and the exit code is the same.
    result = run("sort", "--plan", str(plan), "--db", db_path, "--json")
    assert result.exit_code == 1
    assert len(json.loads(result.output.splitlines()[-1])["failed"]) == len(EXPECTED_MOVES)
    # Those runs moved nothing: undo goes straight to the run that did.
    result = run("undo", "--db", db_path)
    assert result.exit_code == 0, result.output
    assert f"{len(EXPECTED_MOVES)} undone" in result.output


def test_dry_run_reason_without_suggestions(lib):
    root, db_path, db, ids = lib
    db.execute("update matches set suggestions = '[]' where file_id = ?", [ids["src/two/a.safetensors"]])
    db.conn.commit()
    result = run("sort", "--dest", str(root / "dest"), "--db", db_path, "--dry-run", "--json")
    reasons = {json.loads(line)["source"]: json.loads(line)["reason"] for line in result.output.splitlines()}
    assert reasons[str(root / "src/two/a.safetensors")] == "no confident match"
    result = run("sort", "--dest", str(root / "dest"), "--db", db_path, "--dry-run")
    assert "only a suggestion" not in result.output


def test_plan_without_a_terminal_prints_whole_paths(lib):
    root, db_path, _, _ = lib
    result = run("sort", "--dest", str(root / "dest"), "--db", db_path, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "…" not in result.output
    for src, dst in EXPECTED_MOVES.items():
        assert any(line.startswith(f"{root / src} → {root / dst}  (") for line in lines), (src, result.output)


def test_ctrl_c_during_sort_says_what_to_run_and_undo_rolls_back(lib, monkeypatch):
    root, db_path, _, _ = lib
    before = manifest(root)
    real, calls = journal.move_file, []

    def interrupted_at_the_sixth(src, dst, *args):
        calls.append((src, dst))
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(src, dst, *args)

    monkeypatch.setattr(journal, "move_file", interrupted_at_the_sixth)
    result = run("sort", "--dest", str(root / "dest"), "--db", db_path)
    assert result.exit_code == 130
    last = result.output.strip().splitlines()[-1]
    assert "Aborted" not in result.output
    assert "moved 5 of 15 files" in last and "sort --resume" in last and "civitai-mirror undo" in last
    # undo puts back the five that moved; nothing is first carried forward.
    calls.clear()
    result = run("undo", "--db", db_path)
    assert result.exit_code == 0, result.output
    assert len(calls) == 5 and all(src.startswith(str(root / "dest")) for src, _ in calls)
    assert manifest(root) == before
    states = json.loads(run("runs", "--db", db_path, "--json").output)["journal"]
    assert states == {"undone": 5, "rolled_back": 10, "ignored": 4}


def test_the_copy_goes_to_duplicates_not_the_original(tmp_path):
    tree = {**TREE, "src/images/pic.png": SAME_BYTES + b"!", "src/images/pic (copy).png": SAME_BYTES + b"!",
            "src/images/Copy of pic.png": SAME_BYTES + b"!"}
    db, ids = build_library(tmp_path, tree)
    cute = ids["src/loras/Cute Style.safetensors"]
    for image in ("src/images/pic.png", "src/images/pic (copy).png", "src/images/Copy of pic.png"):
        rid = db.table("resources").insert({"file_id": ids[image], "position": 0, "kind": "lora",
                                            "name": "cute"}).last_pk
        db.table("resource_matches").insert({"resource_id": rid, "version_id": 1, "local_file_id": cute,
                                             "confidence": 1.0})
    result = run("sort", "--dest", str(tmp_path / "dest"), "--db", str(tmp_path / "library.sqlite"), "--dry-run",
                 "--json")
    got = {os.path.relpath(m["source"], tmp_path): os.path.relpath(m["destination"], tmp_path)
           for m in map(json.loads, result.output.splitlines()) if m["state"] == "planned"}
    assert got["src/images/pic.png"] == f"{LORA_DIR}/pic.png"
    assert got["src/images/pic (copy).png"] == "dest/duplicates/media/loras/pic (copy).png"
    assert got["src/images/Copy of pic.png"] == "dest/duplicates/media/loras/Copy of pic.png"


def test_undo_refusal_is_printed_once(lib):
    root, db_path, _, _ = lib
    assert run("sort", "--dest", str(root / "dest"), "--db", db_path).exit_code == 0
    changed = root / LORA_DIR / "gen1.png"
    changed.write_bytes(b"edited")
    env = {**os.environ, "PYTHONPATH": str(Path(journal.__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "civitai_mirror", "undo", "--db", db_path],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 1
    both = done.stdout + done.stderr
    assert both.count(str(changed)) == 1, both
    assert f"refused: {changed}: file changed since it was moved" in done.stdout


def mirror_with_version(path: Path) -> None:
    db = sqlite_utils.Database(path)
    apply_schema(db, CIVITAI_SCHEMA)
    mark_database(db.conn, "civitai")
    db["models"].insert({"id": 4, "name": "Maybe A", "type": "LORA", "data": "{}", "created_at": 1,
                         "updated_at": 1})
    db["model_versions"].insert({"id": 44, "model_id": 4, "position": 0, "name": "v1", "base_model": "SD 1.5",
                                 "data": "{}", "created_at": 1, "updated_at": 1})
    db.conn.commit()


def test_pin_refuses_a_version_the_mirror_does_not_have(lib):
    root, db_path, db, ids = lib
    mirror_with_version(root / "civitai.sqlite")
    target = str(root / "src/two/a.safetensors")
    result = run("pin", target, "999999", "--db", db_path, "--civitai-db", str(root / "civitai.sqlite"))
    one_line_error(result, "version 999999 is not in the mirror")
    row = next(db.query("select version_id, pinned from matches where file_id = ?", [ids["src/two/a.safetensors"]]))
    assert row == {"version_id": 44, "pinned": 0}
    assert not list(db.query("select * from pins"))
    result = run("pin", target, "0", "--db", db_path)
    assert result.exit_code == 2 and "VERSION_ID" in result.output
    result = run("pin", target, "44", "--db", db_path, "--civitai-db", str(root / "civitai.sqlite"))
    assert result.exit_code == 0 and "(Maybe A / v1)" in result.output
    # Without a mirror nothing can be checked: the pin is taken, and the output says so.
    result = run("pin", target, "999999", "--db", db_path, "--civitai-db", str(root / "none.sqlite"))
    assert result.exit_code == 0 and "not checked" in result.output


def test_resume_lists_a_move_it_could_not_finish(lib, monkeypatch):
    root, db_path, _, _ = lib
    real, calls = journal.move_file, []

    def interrupted_at_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(journal, "move_file", interrupted_at_the_second)
    assert run("sort", "--dest", str(root / "dest"), "--db", db_path).exit_code == 130
    monkeypatch.setattr(journal, "move_file", real)
    squatter = root / "dest/models/loras/SDXL/Bee LoCon/b.safetensors"   # planned, not moved yet
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"arrived meanwhile")
    result = run("sort", "--resume", "--db", db_path)
    assert result.exit_code == 1, result.output
    assert f"failed: {root / 'src/two/b.safetensors'}: destination taken by another file" in result.output
    assert squatter.read_bytes() == b"arrived meanwhile"
    assert (root / "src/two/b.safetensors").read_bytes() == TREE["src/two/b.safetensors"]
