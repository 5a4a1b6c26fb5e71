"""Data safety: kill -9 mid-crawl then re-run gives the same dump; Ctrl-C stops cleanly; never clobber."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakeapi import make_model
from tests.test_crawler_crawl import FAST, json_files, log_ids, run_crawl

REPO = Path(__file__).resolve().parent.parent
N = 300


@pytest.fixture
def fake(fake_civitai):
    fake_civitai.add_models(make_model(i) for i in range(1, N + 1) if i % 3)
    return fake_civitai


def start_crawl(fake, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "civitai_mirror", "crawl", "--start", "1", "--end", str(N), "--per-id", "--threads", "4",
           "-o", str(out), "--api-base", fake.api_base, *FAST]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_requests(fake, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while fake.count() < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the crawl did not get going"
        time.sleep(0.005)


def state(out: Path) -> tuple:
    return (json_files(out), sorted(set(log_ids(out, "downloaded.txt"))), sorted(set(log_ids(out, "notfound.txt"))),
            (out / "errors.txt").read_text(), (out / "missing.txt").read_text())


def test_kill_9_then_rerun_gives_the_same_dump(fake, tmp_path):
    reference = tmp_path / "reference"
    run_crawl(fake, reference, "--start", "1", "--end", str(N), "--per-id", "--threads", "4")

    fake.reset_counts()
    fake.delay = 0.01  # slow enough that the kill lands mid-crawl
    out = tmp_path / "killed"
    proc = start_crawl(fake, out)
    wait_for_requests(fake, N // 3, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < len(log_ids(out, "downloaded.txt")) < N * 2 // 3  # really interrupted mid-crawl
    # whatever the kill left, a half-written temp file from a killed write looks like this:
    (out / "00000000" / "00000299.json.part").write_bytes(b'{"id": 299, "na')

    fake.delay = 0
    summary = run_crawl(fake, out, "--start", "1", "--end", str(N), "--per-id", "--threads", "4")
    assert summary["errors"] == 0
    assert state(out) == state(reference)
    assert not list(out.rglob("*.part"))


def test_ctrl_c_stops_cleanly_after_the_requests_in_flight(fake, tmp_path):
    fake.delay = 0.01
    out = tmp_path / "d"
    proc = start_crawl(fake, out)
    wait_for_requests(fake, N // 4, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr and b"interrupted" in stderr
    done = set(log_ids(out, "downloaded.txt")) | set(log_ids(out, "notfound.txt"))
    assert 0 < len(done) < N
    assert (out / "missing.txt").read_text() == ""  # every file on disk has its log line
    assert (out / "errors.txt").read_text() == ""
    on_disk = {int(p.stem) for p in out.glob("[0-9]*/*.json")}
    assert on_disk == set(log_ids(out, "downloaded.txt"))
    assert not list(out.rglob("*.part"))


def _set_model(fake, model):
    fake.models[model["id"]] = model


def test_never_clobber_a_good_copy(fake_civitai, tmp_path):
    out = tmp_path / "d"
    good = {i: make_model(i) for i in (1, 2, 3, 4)}
    fake_civitai.add_models(good.values())
    run_crawl(fake_civitai, out, "--start", "1", "--end", "4")
    before = json_files(out)

    archived = make_model(1)
    archived["mode"] = "Archived"
    for version in archived["modelVersions"]:
        version["files"] = []
    taken_down = make_model(2)
    taken_down["mode"] = "TakenDown"
    for version in taken_down["modelVersions"]:
        version["files"], version["images"] = [], []
    fewer = make_model(3)
    fewer["modelVersions"] = fewer["modelVersions"][:1]
    better = make_model(4)
    better["stats"]["downloadCount"] = 999
    for model in (archived, taken_down, fewer, better):
        _set_model(fake_civitai, model)
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "4", "--refresh")
    assert summary["kept"] == 3

    after = json_files(out)
    for i in (1, 2, 3):  # the good copies are untouched...
        assert after[f"00000000/0000000{i}.json"] == before[f"00000000/0000000{i}.json"]
    # ...and each worse answer sits beside it
    sides = sorted(p.name for p in (out / "00000000").glob("0000000?.*.json"))
    assert [s[:8] for s in sides] == ["00000001", "00000002", "00000003"]
    assert json.loads((out / "00000000" / sides[0]).read_text())["mode"] == "Archived"
    assert json.loads(after["00000000/00000004.json"])["stats"]["downloadCount"] == 999  # a normal refresh updates
    history = [line.split("\t") for line in (out / "history.txt").read_text().splitlines()]
    assert [(h[0], h[2]) for h in history] == [(s[:8], s) for s in sides]

    # a refresh that answers 404 keeps the good copy too, and saves the 404 answer beside it
    del fake_civitai.models[4]
    summary = run_crawl(fake_civitai, out, "--start", "4", "--end", "4", "--refresh", "--per-id")
    assert summary["kept"] == 1 and summary["notfound"] == 0
    assert json.loads((out / "00000000" / "00000004.json").read_text())["id"] == 4
    side = [p for p in (out / "00000000").glob("00000004.*.json")]
    assert len(side) == 1 and "error" in json.loads(side[0].read_text())
    assert 4 in log_ids(out, "downloaded.txt") and 4 not in log_ids(out, "notfound.txt")


def test_a_torn_last_log_line_from_a_kill_is_repaired(fake_civitai, tmp_path):
    """A kill inside a log write can leave a line cut short. A cut inside the id would name the
    wrong model (``0000001`` of ``00000012``): it is dropped, and that model is fetched again. A cut
    after a complete id still names the right model, whose file was in place before its line."""
    fake_civitai.add_models(make_model(i) for i in range(1, 13))
    out = tmp_path / "d"
    run_crawl(fake_civitai, out, "--start", "1", "--end", "12", "--per-id")
    lines = (out / "downloaded.txt").read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(("00000001\t", "00000012\t"))]
    (out / "downloaded.txt").write_text("".join(kept) + "0000001")  # the torn write of id 12 (or 10, 11...)
    (out / "00000000" / "00000012.json").unlink()  # its file never made it either

    fake_civitai.reset_counts()
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "12", "--per-id")
    assert fake_civitai.count() == 2  # 1 (its line is gone, so it is missing) and 12; not a wrong id 1
    assert summary["found"] == 2 and summary["errors"] == 0
    text = (out / "downloaded.txt").read_text()
    assert text.endswith("\n") and "0000001\n" not in text
    assert sorted(set(log_ids(out, "downloaded.txt"))) == list(range(1, 13))
    assert (out / "missing.txt").read_text() == ""

    # a line cut after its id is a true record: it gets its newline and counts
    (out / "downloaded.txt").write_text(text + "00000013\t127.0")
    fake_civitai.add_models([make_model(13), make_model(14)])
    fake_civitai.reset_counts()
    run_crawl(fake_civitai, out, "--start", "13", "--end", "14", "--per-id")
    assert fake_civitai.count() == 1  # only 14
    assert (out / "downloaded.txt").read_text().splitlines()[-2:][0] == "00000013\t127.0"


def test_a_file_that_cannot_be_written_is_an_error_not_a_record(fake_civitai, tmp_path):
    fake_civitai.add_models(make_model(i) for i in (5, 10005))
    out = tmp_path / "d"
    out.mkdir()
    (out / "00000000").write_text("a user's file where a block folder should be")
    summary = run_crawl(fake_civitai, out, "--start", "5", "--end", "5", "--per-id")
    assert (summary["found"], summary["errors"]) == (0, 1)
    assert log_ids(out, "downloaded.txt") == []
    assert log_ids(out, "errors.txt") == [5]
    assert (out / "00000000").read_text() == "a user's file where a block folder should be"
    summary = run_crawl(fake_civitai, out, "--start", "10005", "--end", "10005")  # other blocks are fine
    assert summary["found"] == 1 and log_ids(out, "downloaded.txt") == [10005]
