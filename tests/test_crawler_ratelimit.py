"""429s without Retry-After: an adaptive pause shared by all workers, short for an occasional 429,
growing to ``--sleep-429`` while they continue; random faults cost a crawl little; a sustained
limit loses nothing."""
from __future__ import annotations

import json

from crawler.client import CivitaiClient
from crawler.jobs import CrawlOptions, run_crawl
from crawler.limits import FIRST_PAUSE, RateLimiter
from tests.fakeapi import make_model
from tests.test_crawler_crawl import json_files, log_ids


def test_an_occasional_429_pauses_nobody_and_successes_undo_its_interval():
    limiter = RateLimiter(ceiling=30.0)
    for _ in range(20):  # a 429 now and then, successes in between
        for _ in range(10):
            limiter.success()
        limiter.too_many_requests(None, limiter.epoch)
        assert limiter.pause == 0 and limiter.penalty > 0
    assert limiter.pauses == 0
    for _ in range(400):
        limiter.success()
    assert limiter.penalty == 0


def test_a_429_without_a_success_since_the_last_one_pauses_briefly_and_a_success_undoes_it():
    limiter = RateLimiter(ceiling=30.0)
    limiter.success()
    limiter.too_many_requests(None, limiter.epoch)
    limiter.too_many_requests(None, limiter.epoch)  # sent after the first: the server lets nothing through
    assert limiter.pause == FIRST_PAUSE and limiter.pauses == 1
    limiter.success()
    limiter.success()
    assert limiter.pause == 0


def test_429s_that_continue_double_the_pause_up_to_the_ceiling():
    limiter = RateLimiter(ceiling=30.0)
    pauses = []
    for _ in range(14):  # each request sent after the last pause began is answered 429 again
        limiter.too_many_requests(None, limiter.epoch)
        pauses.append(limiter.pause)
    assert pauses[:4] == [FIRST_PAUSE, 2 * FIRST_PAUSE, 4 * FIRST_PAUSE, 8 * FIRST_PAUSE]
    assert pauses[-1] == 30.0 and max(pauses) == 30.0
    assert limiter.steps == pauses.index(30.0) + 1  # the 429s a request may see before it gives up
    assert limiter.penalty > 0  # and the request interval widened


def test_the_other_answers_of_one_burst_do_not_grow_the_pause():
    limiter = RateLimiter(ceiling=30.0)
    limiter.too_many_requests(None, limiter.epoch)
    limiter.too_many_requests(None, limiter.epoch)
    sent_in = limiter.epoch  # five requests in flight together, all answered 429
    limiter.too_many_requests(None, sent_in)  # the first answer of the burst counts
    pause, penalty = limiter.pause, limiter.penalty
    for _ in range(4):  # the others do not
        limiter.too_many_requests(None, sent_in)
    assert pause == 4 * FIRST_PAUSE and limiter.pauses == 3
    assert (limiter.pause, limiter.penalty) == (pause, penalty)


def test_retry_after_is_honoured_as_given():
    limiter = RateLimiter(ceiling=1.0)
    limiter.too_many_requests(7.0, limiter.epoch)
    assert 6.5 < limiter.longest_pause <= 7.0 and limiter.pause == 0


def crawl_in_process(fake, out, **options):
    """A crawl through the library (the client's limiter stays inspectable), with default HTTP options."""
    import asyncio

    async def main():
        async with CivitaiClient([fake.api_base], threads=options.get("threads", 5)) as client:
            stats = await run_crawl(CrawlOptions(out=out, **options), client)
        return stats, client

    return asyncio.run(main())


def test_a_per_id_crawl_under_ten_percent_faults_is_exact_without_long_pauses(fake_civitai, tmp_path):
    """1,200 ids one by one, every tenth request a fault (429 without Retry-After, 5xx, HTML, a cut
    body): the dump is exact, and no pause came near the 30 s that each 429 used to cost."""
    fake_civitai.add_models(make_model(i) for i in range(1, 1201) if i % 3)
    fake_civitai.faults(0.10, seed=19)
    out = tmp_path / "d"
    stats, client = crawl_in_process(fake_civitai, out, start=1, end=1200, per_id=True)
    assert (stats.found, stats.notfound, stats.errors) == (800, 400, 0)
    assert client.stats.statuses[429] >= 5  # the faults did happen
    assert client.limiter.longest_pause < 5.0 < client.sleep_429
    assert sorted(log_ids(out, "downloaded.txt")) == [i for i in range(1, 1201) if i % 3]
    assert sorted(log_ids(out, "notfound.txt")) == [i for i in range(1, 1201) if not i % 3]
    assert (out / "errors.txt").read_text() == ""
    assert len(json_files(out)) == 800


def test_a_sustained_rate_limit_slows_the_crawl_and_loses_nothing(fake_civitai, tmp_path):
    """The server allows 40 requests a second and answers 429 (no Retry-After) beyond: five workers
    asking as fast as they can are held back by the shared pause and interval, and every id ends
    downloaded or not found, none in errors.txt (429s while the pause grows cost no retry)."""
    fake_civitai.add_models(make_model(i) for i in range(1, 121) if i % 3)
    fake_civitai.rate_limit(40, burst=2)
    out = tmp_path / "d"
    stats, client = crawl_in_process(fake_civitai, out, start=1, end=120, per_id=True)
    assert (stats.found, stats.notfound, stats.errors) == (80, 40, 0)
    assert fake_civitai.throttled > 0 and client.stats.statuses[429] == fake_civitai.throttled
    assert fake_civitai.throttled < fake_civitai.count() - fake_civitai.throttled  # most requests got through
    assert (out / "errors.txt").read_text() == ""
    for name, data in json_files(out).items():
        assert json.loads(data)["id"] == int(name.split("/")[1][:8])


def test_a_path_that_always_answers_429_ends_as_an_error_after_a_bounded_number_of_tries(fake_civitai, tmp_path):
    """Its 429s grow the pause to the ceiling (no retry spent on the way), then cost retries: the id
    ends in errors.txt after --retries + the doublings to the ceiling + 1 attempts, the others are saved."""
    from tests.test_crawler_crawl import run_crawl

    fake_civitai.add_models(make_model(i) for i in (1, 2, 3))
    fake_civitai.script("/api/v1/models/2", [429] * 50)
    out = tmp_path / "d"
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "3", "--per-id", "--threads", "1",
                        "--sleep-429", "0.4", "--retries", "2")
    assert (summary["found"], summary["errors"]) == (2, 1)
    assert log_ids(out, "errors.txt") == [2] and "HTTP 429" in (out / "errors.txt").read_text()
    steps = RateLimiter(ceiling=0.4).steps  # 0.1 -> 0.2 -> 0.4
    assert steps == 3 and fake_civitai.count("/api/v1/models/2") == 2 + steps + 1
