"""Fault sequences: every scripted failure is retried and the crawl ends complete with errors.txt empty."""
from __future__ import annotations

import asyncio
import json

import pytest

from crawler.client import CivitaiClient, RateLimiter, parse_retry_after
from tests.fakeapi import make_model
from tests.test_crawler_crawl import json_files, log_ids, run_crawl

FAULTS = {
    "429 with Retry-After": [(429, {"Retry-After": "0"}), 200],
    "429 without Retry-After": [429, 429, 200],
    "500": [500, 200],
    "502 503 504": [502, 503, 504],
    "html with status 200": ["html", "html"],
    "cut body": ["cut"],
    "short body (connection closed)": ["short"],
    "slow (timeout)": [("slow", 3)],
    "wrong id": ["wrongid"],
}


@pytest.fixture
def fake(fake_civitai):
    fake_civitai.add_models(make_model(i) for i in range(1, 13) if i % 3)
    return fake_civitai


@pytest.mark.parametrize("fault,mode", [(f, m) for f in sorted(FAULTS) for m in ("batch", "per-id")
                                        if (f, m) != ("wrong id", "batch")])  # a list page has no id to contradict
def test_fault_sequence_ends_complete(fake, tmp_path, fault, mode):
    if mode == "batch":
        fake.script("/api/v1/models", list(FAULTS[fault]))
        args = []
    else:
        for model_id in (2, 3, 4):  # a found id, a 404 id, a found id
            fake.script(f"/api/v1/models/{model_id}", list(FAULTS[fault]))
        args = ["--per-id"]
    out = tmp_path / "d"
    summary = run_crawl(fake, out, "--start", "1", "--end", "12", "--timeout", "1", *args)
    assert (summary["found"], summary["notfound"], summary["errors"]) == (8, 4, 0)
    assert (out / "errors.txt").read_text() == ""
    assert sorted(log_ids(out, "downloaded.txt")) == [i for i in range(1, 13) if i % 3]
    for name, data in json_files(out).items():
        model = json.loads(data)
        assert model["id"] == int(name.split("/")[1][:8]) and model["modelVersions"]
    assert not list(out.rglob("*.part"))


def test_retries_exhausted_go_to_errors_and_nothing_is_saved(fake, tmp_path):
    out = tmp_path / "d"
    fake.script("/api/v1/models/2", ["html"] * 4)
    summary = run_crawl(fake, out, "--start", "2", "--end", "2", "--per-id")
    assert summary["errors"] == 1
    assert log_ids(out, "errors.txt") == [2] and "html" in (out / "errors.txt").read_text()
    assert not (out / "00000000" / "00000002.json").exists()


def test_429_pauses_the_shared_limiter_and_widens_its_interval():
    limiter = RateLimiter(max_rps=None)
    assert limiter.interval == 0
    limiter.too_many_requests(5.0)
    assert limiter.interval > 0
    assert limiter.paused_until > 0
    for _ in range(200):
        limiter.success()
    assert limiter.interval == 0


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("100000") == 600.0
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 1


async def test_a_429_holds_back_other_requests(fake):
    """While one path answers 429, every other request of the same client waits for the pause."""
    fake.script("/api/v1/models/1", [(429, {"Retry-After": "1"}), 200])
    async with CivitaiClient([fake.api_base], retries=2, sleep_retries=0.01) as client:
        first = asyncio.create_task(client.get_json(f"{fake.api_base}/models/1"))
        while not client.limiter.paused_until:  # wait until the 429 has come back
            await asyncio.sleep(0.01)
        await asyncio.gather(first, client.get_json(f"{fake.api_base}/models/2"))
    order = [path for _, path, _ in fake.log]
    # models/2 was asked for during the 1 s pause; unheld it would have gone before the retry of models/1
    assert order == ["/api/v1/models/1", "/api/v1/models/1", "/api/v1/models/2"]
    assert [status for _, _, status in fake.log] == [429, 200, 200]
