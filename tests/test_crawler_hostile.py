"""Hostile servers: endless bodies, gzip bombs, images that are pages, a key sent to strangers, a
lone surrogate in a model. Each server is built in the test (the fake API's scripted actions)."""
from __future__ import annotations

import gzip
import json
import zlib

import pytest

from crawler.client import CivitaiClient
from tests.fakeapi import make_model
from tests.test_crawler_crawl import json_files, log_ids, run_crawl


@pytest.fixture
def fake(fake_civitai):
    fake_civitai.add_models(make_model(i) for i in range(1, 13) if i % 3)  # 8 found, 4 absent
    return fake_civitai


def error_reasons(folder) -> dict[int, str]:
    """id -> reason in ``folder/errors.txt`` (the dump's: id, reason, UTC; images': id, model, reason)."""
    column = 2 if folder.name == "images" else 1
    lines = (folder / "errors.txt").read_text().splitlines()
    return {int(line.split("\t")[0]): line.split("\t")[column] for line in lines if line.strip()}


@pytest.mark.parametrize("action", ["endless", "gzipbomb"])
def test_an_endless_answer_is_an_error_for_its_id_and_the_crawl_goes_on(fake, tmp_path, action):
    out = tmp_path / "d"
    fake.script("/api/v1/models/4", [action])
    summary = run_crawl(fake, out, "--start", "1", "--end", "6", "--per-id", "--max-body-mb", "2")
    assert (summary["found"], summary["notfound"], summary["errors"]) == (3, 2, 1)
    assert sorted(log_ids(out, "downloaded.txt")) == [1, 2, 5]
    assert "larger than 2 MB" in error_reasons(out)[4] and "--max-body-mb" in error_reasons(out)[4]
    assert fake.count("/api/v1/models/4") == 1  # refused, not retried
    assert not (out / "00000000" / "00000004.json").exists()
    # a later --retry (the server behaves again) fetches it
    summary = run_crawl(fake, out, "--retry")
    assert summary["found"] == 1 and log_ids(out, "errors.txt") == []


def test_a_gzip_bomb_batch_falls_back_to_per_id_and_only_the_bomb_is_an_error(fake, tmp_path):
    out = tmp_path / "d"
    fake.script("/api/v1/models", ["gzipbomb"])
    fake.script("/api/v1/models/7", ["gzipbomb"])
    summary = run_crawl(fake, out, "--start", "1", "--end", "12", "--max-body-mb", "1")
    assert (summary["found"], summary["notfound"], summary["errors"]) == (7, 4, 1)
    assert list(error_reasons(out)) == [7] and "larger than 1 MB" in error_reasons(out)[7]


def test_the_default_cap_stops_an_endless_answer(fake, tmp_path):
    out = tmp_path / "d"
    fake.script("/api/v1/models/2", ["endless"])
    summary = run_crawl(fake, out, "--start", "2", "--end", "2", "--per-id")
    assert summary["errors"] == 1 and "larger than 100 MB" in error_reasons(out)[2]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate", "two gzip members"])
async def test_compressed_answers_are_inflated(fake, encoding):
    body = json.dumps(make_model(2)).encode()
    if encoding == "gzip":
        data, header = gzip.compress(body), "gzip"
    elif encoding == "deflate":
        data, header = zlib.compress(body), "deflate"
    elif encoding == "raw deflate":
        squeeze = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data, header = squeeze.compress(body) + squeeze.flush(), "deflate"
    else:
        data, header = gzip.compress(body[:100]) + gzip.compress(body[100:]), "gzip"
    fake.script("/api/v1/models/2", [("raw", "application/json", data, {"Content-Encoding": header})])
    async with CivitaiClient([fake.api_base], retries=0) as client:
        resp = await client.get_json(f"{fake.api_base}/models/2")
    assert resp.outcome == "ok" and resp.data == make_model(2)


async def test_a_flood_of_empty_gzip_members_is_refused(fake):
    fake.script("/api/v1/models/2", [("raw", "application/json", gzip.compress(b"") * 2000 + gzip.compress(b"{}"),
                                      {"Content-Encoding": "gzip"})])
    async with CivitaiClient([fake.api_base], retries=0) as client:
        resp = await client.get_json(f"{fake.api_base}/models/2")
    assert resp.outcome == "error" and "more than 1000 members" in resp.reason


async def test_an_unknown_encoding_or_a_damaged_stream_is_an_error(fake):
    fake.script("/api/v1/models/2", [("raw", "application/json", b"xx", {"Content-Encoding": "br"})])
    fake.script("/api/v1/models/4", [("raw", "application/json", b"\x1f\x8b\x08garbage",
                                      {"Content-Encoding": "gzip"})] * 2)
    async with CivitaiClient([fake.api_base], retries=1, sleep_retries=0.01) as client:
        unknown = await client.get_json(f"{fake.api_base}/models/2")
        damaged = await client.get_json(f"{fake.api_base}/models/4")
    assert unknown.outcome == "error" and "unsupported Content-Encoding 'br'" in unknown.reason
    assert damaged.outcome == "error" and "damaged gzip body" in damaged.reason
    assert fake.count("/api/v1/models/4") == 2  # a damaged body is retried like a cut one


def _image_paths(fake, model_id: int) -> list[str]:
    model = json.loads(fake._body(fake.models[model_id]))
    return [image["url"].split(str(fake.port), 1)[1] for v in model["modelVersions"] for image in v["images"]]


@pytest.mark.parametrize("action", ["endless", "gzipbomb"])
def test_an_endless_image_is_an_image_error_and_nothing_is_kept(fake_civitai, tmp_path, action):
    out = tmp_path / "d"
    fake_civitai.add_models([make_model(1)])
    first, *others = _image_paths(fake_civitai, 1)
    fake_civitai.script(first, [action])
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "1", "--images", "--image-width", "0",
                        "--max-image-mb", "1")
    assert summary["images"] == len(others) and summary["image_errors"] == 1
    reasons = error_reasons(out / "images")
    assert list(reasons) == [1000] and "image larger than 1 MB" in reasons[1000] and "--max-image-mb" in reasons[1000]
    assert sorted(p.name for p in (out / "images" / "00000000").iterdir()) == [
        f"{int(p.rsplit('/', 1)[1].split('.')[0]):08d}.jpeg" for p in others]


def test_only_images_and_videos_are_saved(fake_civitai, tmp_path):
    """Names and answers that are pages or scripts are image errors: never asked for, never kept."""
    out = tmp_path / "d"
    model = make_model(1)
    template = model["modelVersions"][0]["images"][0]
    head = template["url"].rsplit("/", 1)[0]
    model["modelVersions"][0]["images"] = [
        {**template, "id": 1000 + j, "url": f"{head}/{1000 + j}.{ext}"}
        for j, ext in enumerate(["html", "svg", "jpeg", "jpeg", "jpeg", "jpeg", "webp"])]
    fake_civitai.add_models([model])
    paths = _image_paths(fake_civitai, 1)
    fake_civitai.script(paths[2], [("raw", "image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>')])
    fake_civitai.script(paths[3], [("raw", "image/jpeg", b"<html><script>alert(1)</script></html>")])
    fake_civitai.script(paths[4], [("raw", "text/plain", b"\xff\xd8\xff\xe0 a jpeg with a text type")])
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "1", "--images", "--image-width", "0")
    ids = [int(p.rsplit("/", 1)[1].split(".")[0]) for p in paths]
    reasons = error_reasons(out / "images")
    assert sorted(reasons) == sorted(ids[:5]) and summary["image_errors"] == 5
    assert "extension (.html)" in reasons[ids[0]] and "extension (.svg)" in reasons[ids[1]]
    assert "image/svg+xml" in reasons[ids[2]]
    assert "no known image or video format" in reasons[ids[3]]
    assert "text/plain" in reasons[ids[4]]
    assert fake_civitai.count(paths[0]) == 0 and fake_civitai.count(paths[1]) == 0
    saved = sorted(p.name for p in (out / "images" / "00000000").iterdir())
    assert saved[:2] == ["00001005.jpeg", "00001006.webp"]  # the ordinary images, nothing else
    assert len(saved) == 2 + len(ids) - 7
    for name in saved:
        assert (out / "images" / "00000000" / name).read_bytes().startswith(b"\xff\xd8\xff")


def test_the_api_key_goes_only_to_the_api_origins(fake_civitai_factory, tmp_path):
    api, images = fake_civitai_factory(), fake_civitai_factory()  # same host, another port: another origin
    api.add_models([make_model(1)])
    api.image_base = f"{images.url}/img"
    secret = "sk-SECRET-only-for-the-api-0123456789"
    out = tmp_path / "d"
    summary = run_crawl(api, out, "--start", "1", "--end", "1", "--per-id", "--images",
                        env={"CIVITAI_API_KEY": secret})
    assert summary["found"] == 1 and summary["images"] >= 1 and images.count() == summary["images"]
    assert api.headers_seen and all(h.get("Authorization") == f"Bearer {secret}" for h in api.headers_seen)
    assert images.headers_seen and not any("Authorization" in h for h in images.headers_seen)


async def test_get_sends_the_key_to_an_api_origin_only(fake_civitai_factory):
    api, other = fake_civitai_factory(), fake_civitai_factory()
    for server in (api, other):
        server.add_models([make_model(1)])
    async with CivitaiClient([api.api_base], api_key="sk-KEY") as client:
        await client.get_json(f"{api.url}/api/v1/models/1")
        await client.get_json(f"{other.url}/api/v1/models/1")
        await client.download(f"{other.url}/img/a/1.jpeg", __import__("pathlib").Path("/nonexistent/x"))
    assert [h.get("Authorization") for h in api.headers_seen] == ["Bearer sk-KEY"]
    assert [h.get("Authorization") for h in other.headers_seen] == [None, None]


@pytest.mark.parametrize("mode", [[], ["--per-id"]])
def test_a_lone_surrogate_in_a_model_is_kept_as_received(fake_civitai, tmp_path, mode):
    out = tmp_path / "d"
    model = make_model(2)
    model["name"] = "half an emoji \ud83d here"
    model["modelVersions"][0]["name"] = "\udc00 low alone, é and \U0001f600 whole"
    fake_civitai.add_models([make_model(1), model])
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "2", *mode)
    assert (summary["found"], summary["errors"]) == (2, 0)
    data = (out / "00000000" / "00000002.json").read_bytes()
    assert b'"half an emoji \\ud83d here"' in data  # the escape as received: valid JSON, valid UTF-8
    assert json.loads(data) == json.loads(fake_civitai._body(model))  # the model as served
    # the same answer again is recognised as the same record (nothing kept beside, no error)
    summary = run_crawl(fake_civitai, out, "--start", "1", "--end", "2", "--refresh", *mode)
    assert (summary["found"], summary["kept"], summary["errors"]) == (2, 0, 0)
    assert list(json_files(out)) == ["00000000/00000001.json", "00000000/00000002.json"]
