"""civitai-mirror crawl against the fake API: layout, logs, every option."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from tests.fakeapi import make_model

FAST = ["--sleep-retries", "0.01", "--sleep-429", "0.01", "--retries", "3", "--timeout", "5"]


def run_crawl(fake, out: Path, *args: str, bases=None, env=None):
    base_args = []
    for base in bases or [fake.api_base]:
        base_args += ["--api-base", base]
    result = CliRunner().invoke(cli, ["crawl", "-o", str(out), *base_args, *FAST, "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    return summary


def log_ids(out: Path, name: str) -> list[int]:
    path = out / name
    if not path.exists():
        return []
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines() if line.strip()]


def json_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("[0-9]*/*.json"))}


@pytest.fixture
def fake(fake_civitai):
    fake_civitai.add_models(make_model(i) for i in range(1, 31) if i % 3)  # 20 found, 10 absent
    return fake_civitai


@pytest.mark.parametrize("mode", [[], ["--per-id"]])
def test_range_layout_and_logs(fake, tmp_path, mode):
    out = tmp_path / "dump"
    summary = run_crawl(fake, out, "--start", "1", "--end", "30", *mode)
    assert (summary["found"], summary["notfound"], summary["errors"]) == (20, 10, 0)
    assert (out / "00000000" / "00000001.json").exists()
    assert json.loads((out / "00000000" / "00000002.json").read_text())["id"] == 2
    assert not (out / "00000000" / "00000003.json").exists()
    assert sorted(log_ids(out, "downloaded.txt")) == [i for i in range(1, 31) if i % 3]
    assert sorted(log_ids(out, "notfound.txt")) == [i for i in range(1, 31) if not i % 3]
    assert (out / "errors.txt").read_text() == ""
    assert (out / "missing.txt").read_text() == ""
    first = (out / "downloaded.txt").read_text().splitlines()[0].split("\t")
    assert len(first[0]) == 8 and first[1] == f"127.0.0.1:{fake.port}"
    assert not list(out.rglob("*.part"))


def test_block_layout_for_big_ids(fake_civitai, tmp_path):
    fake_civitai.add_models([make_model(12345678)])
    out = tmp_path / "d"
    run_crawl(fake_civitai, out, "--start", "12345678", "--end", "12345678")
    assert (out / "12340000" / "12345678.json").exists()


def test_batch_saves_what_per_id_saves_with_a_hundredth_of_the_requests(fake_civitai, tmp_path):
    fake_civitai.add_models(make_model(i) for i in range(1, 501) if i % 4)
    run_crawl(fake_civitai, tmp_path / "batch", "--start", "1", "--end", "500")
    batch_requests = fake_civitai.count()
    fake_civitai.reset_counts()
    run_crawl(fake_civitai, tmp_path / "perid", "--start", "1", "--end", "500", "--per-id")
    per_id_requests = fake_civitai.count()
    assert json_files(tmp_path / "batch") == json_files(tmp_path / "perid")
    assert batch_requests == 5 and per_id_requests == 500


def test_saved_json_is_the_model_as_the_api_gives_it(fake, tmp_path):
    out = tmp_path / "d"
    run_crawl(fake, out, "--start", "1", "--end", "2")
    saved = json.loads((out / "00000000" / "00000001.json").read_text())
    served = json.loads(json.dumps(make_model(1)).replace("https://image.civitai.com", f"{fake.url}/img"))
    assert saved == served


def test_known_ids_are_skipped_unless_refresh_or_recheck(fake, tmp_path):
    out = tmp_path / "d"
    run_crawl(fake, out, "--start", "1", "--end", "30", "--per-id")
    fake.reset_counts()
    summary = run_crawl(fake, out, "--start", "1", "--end", "30", "--per-id")
    assert fake.count() == 0 and summary["skipped"] == 30
    logged = (out / "downloaded.txt").read_text()
    summary = run_crawl(fake, out, "--start", "1", "--end", "30", "--per-id", "--refresh")
    assert fake.count() == 20 and summary["found"] == 20
    assert (out / "downloaded.txt").read_text() == logged  # the same answers: no new lines
    fake.models[2]["name"] = "Renamed"
    run_crawl(fake, out, "--start", "1", "--end", "30", "--refresh")
    assert (out / "downloaded.txt").read_text().startswith(logged)
    assert [line.split("\t")[0] for line in (out / "downloaded.txt").read_text()[len(logged):].splitlines()] == [
        "00000002"]  # a changed answer is a new download
    fake.reset_counts()
    fake.add_models([make_model(3)])  # a model that was not found is published now
    summary = run_crawl(fake, out, "--start", "1", "--end", "30", "--per-id", "--recheck-notfound")
    assert fake.count() == 10 and summary["found"] == 1
    assert (out / "00000000" / "00000003.json").exists()


def test_errors_then_retry_leaves_errors_empty(fake, tmp_path):
    out = tmp_path / "d"
    fake.script("/api/v1/models/4", [500] * 4)
    fake.script("/api/v1/models/5", [403])  # not retried
    summary = run_crawl(fake, out, "--start", "1", "--end", "10", "--per-id")
    assert summary["errors"] == 2
    errors = dict(line.split("\t")[:2] for line in (out / "errors.txt").read_text().splitlines())
    assert errors == {"00000004": "HTTP 500", "00000005": "HTTP 403"}
    assert fake.count("/api/v1/models/4") == 4  # 1 + 3 retries
    fake.reset_counts()
    summary = run_crawl(fake, out, "--retry", "--per-id")
    assert fake.count() == 2 and summary["found"] == 2
    assert (out / "errors.txt").read_text() == ""
    assert 4 in log_ids(out, "downloaded.txt") and 5 in log_ids(out, "downloaded.txt")


def test_failed_batch_falls_back_to_per_id(fake, tmp_path):
    out = tmp_path / "d"
    fake.script("/api/v1/models", [500] * 4)
    summary = run_crawl(fake, out, "--start", "1", "--end", "30")
    assert summary["found"] == 20 and summary["errors"] == 0
    assert fake.count("/api/v1/models") == 4 and fake.count() == 4 + 30


def test_confirm_missing_probes_absent_ids(fake, tmp_path):
    summary = run_crawl(fake, tmp_path / "d", "--start", "1", "--end", "30", "--confirm-missing")
    assert summary["notfound"] == 10
    assert fake.count("/api/v1/models") == 1 and fake.count() == 11


def test_crawl_finds_newest_and_fills_the_gap(fake, tmp_path):
    out = tmp_path / "d"
    run_crawl(fake, out, "--start", "1", "--end", "10")
    fake.add_models(make_model(i) for i in (41, 57))
    fake.reset_counts()
    summary = run_crawl(fake, out, "--crawl")
    downloaded = set(log_ids(out, "downloaded.txt"))
    assert {11, 13, 29, 41, 57} <= downloaded and 58 not in downloaded
    assert set(log_ids(out, "crawled.txt")) == set(range(11, 58))
    assert summary["found"] == 13 + 2  # 11..30 minus 7 multiples of 3, plus 41 and 57
    # a crawled id that was not found and is published later: --recheck-crawled
    fake.add_models([make_model(45)])
    summary = run_crawl(fake, out, "--recheck-crawled")
    assert summary["found"] == 1 and summary["done"] == len(set(range(11, 58)) - downloaded)
    assert (out / "00000000" / "00000045.json").exists()


def test_crawl_probes_upward_when_newest_fails(fake, tmp_path):
    out = tmp_path / "d"
    fake.add_models([make_model(250)])
    fake.script("/api/v1/models?sort=Newest&limit=100&nsfw=true&archived=true", [500] * 10)
    run_crawl(fake, out, "--crawl", "--per-id", "--threads", "4", "--stop-after", "300")
    downloaded = set(log_ids(out, "downloaded.txt"))
    assert 250 in downloaded and 29 in downloaded
    crawled = log_ids(out, "crawled.txt")
    assert max(crawled) >= 250 + 300 - 1  # stopped only after 300 consecutive misses past 250
    assert max(crawled) < 250 + 300 + 8


def test_every_host_must_say_404(fake_civitai_factory, tmp_path):
    com, red = fake_civitai_factory(), fake_civitai_factory()
    com.add_models(make_model(i) for i in (1, 2))
    red.add_models(make_model(i) for i in (2, 3))
    for mode in ([], ["--per-id"]):
        out = tmp_path / ("d" + "".join(mode))
        summary = run_crawl(com, out, "--start", "1", "--end", "4", *mode, bases=[com.api_base, red.api_base])
        assert (summary["found"], summary["notfound"]) == (3, 1)
        hosts = {int(l.split("\t")[0]): l.split("\t")[1] for l in (out / "downloaded.txt").read_text().splitlines()}
        assert hosts == {1: f"127.0.0.1:{com.port}", 2: f"127.0.0.1:{com.port}", 3: f"127.0.0.1:{red.port}"}
        assert log_ids(out, "notfound.txt") == [4]


def test_api_key_is_sent_but_never_written(fake, tmp_path):
    out = tmp_path / "d"
    secret = "sk-SECRET-do-not-store-0123456789"
    fake.script("/api/v1/models/2", [500, 500, 500, 500, 500])
    run_crawl(fake, out, "--start", "1", "--end", "3", "--per-id", "-vv", env={"CIVITAI_API_KEY": secret})
    assert all(h.get("Authorization") == f"Bearer {secret}" for h in fake.headers_seen)
    for path in out.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    result = CliRunner().invoke(cli, ["crawl", "-o", str(out), "--api-base", fake.api_base, *FAST,
                                      "--start", "1", "--end", "3", "--retry", "-vv", "--api-key", secret])
    assert secret not in result.output


def test_downloaded_txt_rebuilt_from_disk_and_missing_written(fake, tmp_path):
    out = tmp_path / "d"
    run_crawl(fake, out, "--start", "1", "--end", "30")
    (out / "downloaded.txt").write_text("")
    (out / "00000000" / "00000999.json").write_text("{not json")  # not a model: left out
    fake.reset_counts()
    summary = run_crawl(fake, out, "--start", "1", "--end", "30")
    assert fake.count() == 0 and summary["skipped"] == 30
    assert sorted(log_ids(out, "downloaded.txt")) == [i for i in range(1, 31) if i % 3]
    assert log_ids(out, "missing.txt") == [999]
    # a file on disk without its log line (as after a crash) is reported in missing.txt
    lines = (out / "downloaded.txt").read_text().splitlines()
    (out / "downloaded.txt").write_text("\n".join(l for l in lines if not l.startswith("00000001")) + "\n")
    run_crawl(fake, out, "--start", "100", "--end", "100")
    assert log_ids(out, "missing.txt") == [1, 999]


def test_errors_txt_drops_ids_resolved_by_a_later_line(fake, tmp_path):
    out = tmp_path / "d"
    run_crawl(fake, out, "--start", "1", "--end", "5")
    # as after a kill: errors.txt still lists an id that later succeeded
    (out / "errors.txt").write_text("00000001\tHTTP 500\t2020-01-01T00:00:00.000000Z\n"
                                    "00000007\tHTTP 500\t2020-01-01T00:00:00.000000Z\n")
    run_crawl(fake, out, "--start", "1", "--end", "5")
    assert log_ids(out, "errors.txt") == [7]


def test_images_are_archived(fake_civitai, tmp_path):
    out = tmp_path / "d"
    fake_civitai.add_models([make_model(1), make_model(2, template="model_2023.json")])
    fake_civitai.missing_images.add("/img/xG1nkqKTMzGDvpLrqFT7WA/00000000-0000-4000-8000-000000000003/width=300/1010.jpeg")
    fake_civitai.script("/img/xG1nkqKTMzGDvpLrqFT7WA/00000000-0000-4000-8000-000000000002/width=300/1001.jpeg",
                        ["html", 503])
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "2", "--images", "--image-width", "300")
    assert summary["images"] == 3 and summary["image_errors"] == 0
    assert sorted(p.name for p in (out / "images" / "00000000").iterdir()) == [
        "00001000.jpeg", "00001001.jpeg", "00002000.jpeg"]
    assert sorted(log_ids(out / "images", "downloaded.txt")) == [1000, 1001, 2000]
    assert log_ids(out / "images", "notfound.txt") == [1010]
    assert (out / "images" / "errors.txt").read_text() == ""
    # skip-known: a second run asks for no image again, even for models that are skipped
    fake_civitai.reset_counts()
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "2", "--images", "--image-width", "300")
    assert fake_civitai.count() == 0 and summary["skipped"] == 2


def test_max_rps_and_threads_are_accepted(fake, tmp_path):
    summary = run_crawl(fake, tmp_path / "d", "--start", "1", "--end", "30", "--per-id",
                        "--threads", "3", "--max-rps", "500")
    assert summary["found"] == 20


@pytest.mark.parametrize("args,message", [
    (["--start", "5"], "--start and --end go together"),
    (["--start", "5", "--end", "2"], "below --start"),
    ([], "nothing to do"),
])
def test_user_mistakes_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["crawl", "-o", str(tmp_path / "d"), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_batched_file_and_log_writes_are_complete_when_a_pass_ends(fake, tmp_path, monkeypatch):
    """New files wait to be written together and log lines wait to be appended together; however
    long the wait, each pass (and the run) ends with every file in place and every line written,
    and the upward probe sees the outcomes of the window it just fetched."""
    from crawler.dump import Dump
    from crawler.jobs import Crawler

    monkeypatch.setattr(Crawler, "WRITE_EVERY", 60.0)
    monkeypatch.setattr(Dump, "LOG_FLUSH_EVERY", 60.0)
    out = tmp_path / "d"
    fake.add_models([make_model(60)])
    fake.script("/api/v1/models?sort=Newest&limit=100&nsfw=true&archived=true", [500] * 10)
    summary = run_crawl(fake, out, "--start", "1", "--end", "30", "--crawl", "--per-id", "--threads", "4",
                        "--stop-after", "40")
    downloaded = log_ids(out, "downloaded.txt")
    assert sorted(downloaded) == [i for i in range(1, 31) if i % 3] + [60]
    assert sorted(int(p.stem) for p in out.glob("[0-9]*/*.json")) == sorted(downloaded)
    crawled = log_ids(out, "crawled.txt")
    assert 60 + 40 - 1 <= max(crawled) < 60 + 40 + 4  # the probe saw 60 saved, then counted 40 misses
    assert summary["found"] == 21 and (out / "missing.txt").read_text() == ""
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize("base, expected", [
    ("https://api.example.org/api/v1", "https://api.example.org/api/v1/models/5"),
    ("http://127.0.0.1:8080/api/v1/", "http://127.0.0.1:8080/api/v1/models/5"),
    ("https://example.org/a b/v1", "https://example.org/a%20b/v1/models/5"),
    ("https://api.example.org", "https://api.example.org/models/5"),
])
def test_api_url_is_the_base_plus_the_path(base, expected):
    from crawler.client import CivitaiClient

    client = CivitaiClient([base])
    url = client.api_url(client.api_bases[0], "/models/5")
    assert str(url) == expected
    assert client.hosts[client.api_bases[0]] == url.raw_authority
