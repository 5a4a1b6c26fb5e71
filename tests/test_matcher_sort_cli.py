"""sort / undo / runs / legacy through the command line."""
from __future__ import annotations

import json

from click.testing import CliRunner

from civitai_mirror.cli import cli
from tests.test_matcher_sort import EXPECTED_MOVES, build_library, expected_manifest, manifest


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_dry_run_changes_nothing_and_saves_the_plan(tmp_path):
    build_library(tmp_path)
    db = str(tmp_path / "library.sqlite")
    before = manifest(tmp_path)
    plan_file = tmp_path / "plan.json"
    result = run("sort", "--dest", str(tmp_path / "dest"), "--db", db, "--dry-run", "--save-plan", str(plan_file))
    assert result.exit_code == 0, result.output
    assert "→" in result.output and "Cute Style.safetensors" in result.output
    assert f"{len(EXPECTED_MOVES)} to move" in result.output and "4 left in place" in result.output
    after = manifest(tmp_path)
    assert after.pop("plan.json")
    assert after == before
    assert run("runs", "--db", db).output.strip() == "no sort runs yet"
    # The saved plan applies later as it was.
    result = run("sort", "--plan", str(plan_file), "--db", db, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["state"] == "done" and summary["journal"]["done"] == len(EXPECTED_MOVES)
    after = manifest(tmp_path)
    after.pop("plan.json")
    assert after == expected_manifest(tmp_path)


def test_dry_run_json_lines(tmp_path):
    build_library(tmp_path)
    result = run("sort", "--dest", str(tmp_path / "dest"), "--db", str(tmp_path / "library.sqlite"),
                 "--dry-run", "--json")
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert {line["state"] for line in lines} == {"planned", "ignored"}
    assert sum(line["state"] == "planned" for line in lines) == len(EXPECTED_MOVES)
    assert all(set(line) == {"source", "destination", "role", "reason", "state"} for line in lines)


def test_sort_runs_undo(tmp_path):
    build_library(tmp_path)
    db = str(tmp_path / "library.sqlite")
    before = manifest(tmp_path)
    result = run("sort", "--dest", str(tmp_path / "dest"), "--db", db)
    assert result.exit_code == 0, result.output
    assert f"{len(EXPECTED_MOVES)} done" in result.output
    runs = [json.loads(line) for line in run("runs", "--db", db, "--json").output.splitlines()]
    assert len(runs) == 1 and runs[0]["state"] == "done"
    assert "done" in run("runs", "--db", db).output
    result = run("undo", runs[0]["run_id"], "--db", db)
    assert result.exit_code == 0, result.output
    assert "undone" in result.output
    assert manifest(tmp_path) == before
    result = run("undo", "--db", db)
    assert result.exit_code == 1 and "no run left to undo" in result.output


def test_user_mistakes_are_one_line(tmp_path):
    result = run("sort", "--dest", str(tmp_path / "d"), "--db", str(tmp_path / "nope.sqlite"))
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    build_library(tmp_path)
    result = run("sort", "--db", str(tmp_path / "library.sqlite"))
    assert result.exit_code == 1 and "--dest" in result.output


def test_config_ini_supplies_paths_and_folders(tmp_path):
    build_library(tmp_path)
    (tmp_path / "config.ini").write_text(
        "[DEFAULT]\ndatabase_path = library.sqlite\ndestination_directory = dest\n"
        "use_model_type_subfolders = false\n", encoding="utf-8")
    result = run("sort", "--config", str(tmp_path / "config.ini"), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    dests = {json.loads(line)["destination"] for line in result.output.splitlines()}
    assert str(tmp_path / "dest/models/SDXL/Bee LoCon/b.safetensors") in dests


def test_legacy_without_process_orphaned_moves_models_only(tmp_path):
    build_library(tmp_path)
    db = str(tmp_path / "library.sqlite")
    before = manifest(tmp_path)
    result = run("legacy", "--dest", str(tmp_path / "dest"), "--db", db, "--civitai-db",
                 str(tmp_path / "none.sqlite"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "match: skipped" in result.output
    assert manifest(tmp_path) == before
    result = run("legacy", "--dest", str(tmp_path / "dest"), "--db", db, "--civitai-db",
                 str(tmp_path / "none.sqlite"))
    assert result.exit_code == 0, result.output
    after = manifest(tmp_path)
    # Models, their sidecars and neighbouring media moved; images judged by their resources did not.
    assert "src/images/gen1.png" in after and "src/images/gen2.png" in after
    assert "src/loras/Cute Style.png" not in after and "src/ckpt/dreamy_sample.png" not in after
    result = run("legacy", "--dest", str(tmp_path / "dest"), "--db", db, "--civitai-db",
                 str(tmp_path / "none.sqlite"), "--process-orphaned")
    assert manifest(tmp_path) == expected_manifest(tmp_path)
