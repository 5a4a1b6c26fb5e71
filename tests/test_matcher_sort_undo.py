"""Undo that a crash or a race interrupts: a real SIGKILL mid-undo, a name taken mid-move, no-op runs."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from matcher import fileops, journal
from matcher.plan import plan_moves
from matcher.schema import open_library
from tests.test_matcher_sort import EXPECTED_MOVES, TREE, build_library, manifest

# Runs `civitai-mirror undo` in a child that stops after its 3rd file and waits to be killed: in
# `rename` mode right after the rename, before the journal says so; in `exdev` mode (every move a
# copy) with the verified hidden copy beside the source, before it gets its name.
UNDO_SCRIPT = r"""
import os, sys, time
from matcher import fileops
from civitai_mirror.cli import cli
root, mode = sys.argv[1], sys.argv[2]
real = fileops.rename_noreplace
count = [0]
def pause():
    open(os.path.join(root, "paused"), "w").close()
    while True:
        time.sleep(1)
def rename(src, dst):
    if src.endswith(".part"):
        count[0] += 1
        if count[0] == 3:
            pause()
        return real(src, dst)
    if mode == "exdev":
        raise OSError(18, "Invalid cross-device link")
    real(src, dst)
    count[0] += 1
    if count[0] == 3:
        pause()
fileops.rename_noreplace = rename
cli.main(["undo", "--db", os.path.join(root, "library.sqlite")])
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def kill_undo_midway(root: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(journal.__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", UNDO_SCRIPT, str(root), mode], env=env)
    try:
        for _ in range(600):
            if (root / "paused").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (root / "paused").exists(), "the undo never reached its third file"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["rename", "exdev"])
@pytest.mark.parametrize("next_command", ["undo", "sort --resume"])
def test_undo_killed_midway_is_finished_by_the_next_command(tmp_path, mode, next_command):
    build_library(tmp_path)
    db_path = str(tmp_path / "library.sqlite")
    before = manifest(tmp_path)
    result = run("sort", "--dest", str(tmp_path / "dest"), "--db", db_path)
    assert result.exit_code == 0, result.output
    kill_undo_midway(tmp_path, mode)
    (tmp_path / "paused").unlink()
    db = open_library(db_path)
    assert [r["state"] for r in db.query("select state from runs")] == ["undoing"]
    assert "undoing" in {r["state"] for r in db.query("select state from journal")}
    if mode == "exdev":   # the killed undo left its verified copy beside the source
        assert len(list(tmp_path.rglob("*.part"))) == 1
    result = run(*next_command.split(), "--db", db_path)
    assert result.exit_code == 0, result.output
    assert "undone" in result.output
    assert manifest(tmp_path) == before
    assert not list(tmp_path.rglob("*.part"))
    states = {r["state"] for r in db.query("select state from journal")}
    assert states == {"undone", "ignored"}
    assert [r["state"] for r in db.query("select state from runs")] == ["undone"]
    # The folders the sort created are gone; the one that held a file before stays with it.
    assert not (tmp_path / "dest/models/loras").exists()
    assert (tmp_path / "dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt").exists()
    result = run("undo", "--db", db_path)
    assert result.exit_code == 1 and "no run left to undo" in result.output


def test_undo_never_reports_undone_while_a_file_is_still_moved(tmp_path, monkeypatch):
    db, _ = build_library(tmp_path)
    journal.apply_plan(db, plan_moves(db, tmp_path / "dest", {}))
    real, calls = journal.move_file, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "move_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        journal.undo_run(db)
    monkeypatch.setattr(journal, "move_file", real)
    assert journal.list_runs(db)[0]["state"] == "undoing"
    result = journal.undo_run(db)
    assert result["state"] == "undone" and result["journal"] == {"undone": len(EXPECTED_MOVES), "ignored": 4}
    assert {r["state"] for r in db.query("select state from journal")} == {"undone", "ignored"}


def test_a_name_taken_during_the_move_is_never_overwritten(tmp_path, monkeypatch):
    """The destination is free when checked, then another program creates it: the move must fail."""
    src, dst = tmp_path / "a.bin", tmp_path / "out" / "a.bin"
    src.write_bytes(b"mine")
    real_makedirs = os.makedirs

    def makedirs_then_squat(path, exist_ok=False):
        real_makedirs(path, exist_ok=exist_ok)
        if not dst.exists():
            dst.write_bytes(b"theirs")   # appears after move_file's check, before its rename

    monkeypatch.setattr(fileops.os, "makedirs", makedirs_then_squat)
    with pytest.raises(FileExistsError):
        fileops.move_file(str(src), str(dst), "0" * 64, "t")
    assert dst.read_bytes() == b"theirs" and src.read_bytes() == b"mine"


@pytest.mark.parametrize("native", [True, False])
def test_rename_noreplace_refuses_an_existing_name(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(fileops, "_NATIVE", None)   # the link + unlink fallback
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        fileops.rename_noreplace(str(a), str(b))
    assert a.read_bytes() == b"a" and b.read_bytes() == b"b"
    fileops.rename_noreplace(str(a), str(tmp_path / "c"))
    assert not a.exists() and (tmp_path / "c").read_bytes() == b"a"
    with pytest.raises(FileNotFoundError):
        fileops.rename_noreplace(str(a), str(tmp_path / "d"))


def test_cross_device_copy_never_lands_on_a_name_taken_meanwhile(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.bin", tmp_path / "out" / "a.bin"
    src.write_bytes(b"mine")
    real = fileops.rename_noreplace

    def exdev_then_squat(s, d):
        if not s.endswith(".part"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        Path(d).write_bytes(b"theirs")   # created while the copy was being verified
        return real(s, d)

    monkeypatch.setattr(fileops, "rename_noreplace", exdev_then_squat)
    with pytest.raises(FileExistsError):
        fileops.move_file(str(src), str(dst), journal.sha256_file(str(src)), "t")
    assert dst.read_bytes() == b"theirs" and src.read_bytes() == b"mine"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["a.bin"]   # the .part is gone


def test_a_run_that_moved_nothing_is_not_what_undo_undoes(tmp_path):
    build_library(tmp_path)
    db_path = str(tmp_path / "library.sqlite")
    before = manifest(tmp_path)
    first = run("sort", "--dest", str(tmp_path / "dest"), "--db", db_path, "--json")
    assert first.exit_code == 0, first.output
    first_id = json.loads(first.output.splitlines()[-1])["run_id"]
    again = run("sort", "--dest", str(tmp_path / "dest"), "--db", db_path, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output.splitlines()[-1])["moves"] == 0
    result = run("undo", "--db", db_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["run_id"] == first_id
    assert manifest(tmp_path) == before
    result = run("undo", first_id, "--db", db_path)
    assert result.exit_code == 1 and f"run {first_id} is already undone" in result.output
    # The destination root the sort created is gone; the pre-existing folder and its file stay.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "dest").rglob("*")) == [
        "dest/models", "dest/models/checkpoints", "dest/models/checkpoints/SDXL1.0",
        "dest/models/checkpoints/SDXL1.0/Dreamy", "dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt"]
    assert (tmp_path / "dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt").read_bytes() == \
        TREE["dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt"]


def test_undo_removes_the_destination_root_it_created(tmp_path):
    tree = {k: v for k, v in TREE.items() if k.startswith("src/")}
    build_library(tmp_path, tree)
    db_path = str(tmp_path / "library.sqlite")
    (tmp_path / "keep").mkdir()      # an empty folder the user made before: never removed
    dest = tmp_path / "keep" / "sorted"
    assert run("sort", "--dest", str(dest), "--db", db_path).exit_code == 0
    assert dest.is_dir()
    result = run("undo", "--db", db_path)
    assert result.exit_code == 0, result.output
    assert not dest.exists() and (tmp_path / "keep").is_dir()
