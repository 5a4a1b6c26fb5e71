"""Parsers against real samples and our fixtures; the fetch functions other parts call; `get`."""
from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from crawler import api
from crawler.client import CivitaiClient, Invalid, NotFound
from civitai_mirror.cli import cli
from tests.fakeapi import FIXTURES, load_fixture, make_model


def test_parser_accepts_every_sample(shared_dir):
    samples = sorted((shared_dir / "civitai-samples").glob("*.json"))
    assert samples
    checked = 0
    for path in samples:
        name = path.name
        if "CivArchive" in name or "enums" in name:
            continue  # not a Civitai model or version body
        body = path.read_bytes()
        if "model-versions" in name:
            version = api.check_model_version(json.loads(body))
            assert isinstance(version["id"], int)
        else:
            models = api.parse_models(body)
            assert models and all(isinstance(m["id"], int) for m in models), name
            for model in models:
                assert api.parse_model(json.dumps(model), model["id"]) == model
                for image in api.model_images(model):
                    image_id, ext = api.image_id_and_ext(image)
                    assert image_id is not None and ext in ("jpeg", "jpg", "png", "webp", "gif", "mp4", "webm")
        checked += 1
    assert checked >= 10


def test_parser_accepts_our_fixtures_and_rejects_bad_bodies():
    for name in ("model_2026.json", "model_2023.json"):
        model = api.parse_model((FIXTURES / name).read_bytes())
        assert model["id"] in (1001, 1002)
    assert api.check_model_version(load_fixture("model_version_10010.json"), 10010)["modelId"] == 1001
    with pytest.raises(Invalid, match="html"):
        api.parse_model(b"<!DOCTYPE html><html>Just a moment...</html>")
    with pytest.raises(Invalid, match="complete JSON"):
        api.parse_model((FIXTURES / "model_2026.json").read_bytes()[:500])
    with pytest.raises(Invalid, match="wrong id"):
        api.parse_model((FIXTURES / "model_2026.json").read_bytes(), 1002)
    with pytest.raises(Invalid):
        api.parse_model(b"[1, 2]")
    with pytest.raises(NotFound):
        api.parse_model(b'{"error": "No model with id 5"}')


def test_never_clobber_rule():
    good = make_model(5)
    assert api.is_worse(good, make_model(5)) is None
    archived = make_model(5)
    archived["mode"] = "Archived"
    archived["modelVersions"][0]["files"] = []
    assert "files removed" in api.is_worse(good, archived)
    fewer = make_model(5, versions=1)
    assert "fewer versions" in api.is_worse(good, fewer)


@pytest.mark.parametrize("url,width,expected", [
    ("https://image.civitai.com/x/uuid/original=true/139221483.jpeg", 450, "https://image.civitai.com/x/uuid/width=450/139221483.jpeg"),
    ("https://image.civitai.com/x/uuid/width=450/692411.jpeg", 1024, "https://image.civitai.com/x/uuid/width=1024/692411.jpeg"),
    ("https://image.civitai.com/x/uuid/original=true/139221483.jpeg", None, "https://image.civitai.com/x/uuid/original=true/139221483.jpeg"),
])
def test_image_url_width(url, width, expected):
    assert api.image_url(url, width) == expected


async def test_fetch_versions_by_hash_batches_of_100(fake_civitai):
    fake_civitai.add_models(make_model(i) for i in range(1, 131))
    known = [hashlib.sha256(f"file{i * 100}".encode()).hexdigest() for i in range(1, 131)]  # lower case is fine
    unknown = ["0" * 64] * 3 + ["F" * 64 for _ in range(100)]
    async with CivitaiClient([fake_civitai.api_base], sleep_retries=0.01) as client:
        versions = await api.fetch_versions_by_hash(client, known + unknown)
    assert sorted(v["id"] for v in versions) == sorted(i * 10 for i in range(1, 131))
    assert all(v["modelId"] * 10 == v["id"] for v in versions)
    assert fake_civitai.count("/api/v1/model-versions/by-hash") == 2  # 130 + 2 unique unknown -> 100 + 32


async def test_fetch_model_and_versions(fake_civitai_factory):
    com, red = fake_civitai_factory(), fake_civitai_factory()
    red.add_models([make_model(7)])
    red.script("/api/v1/models/7", [503])
    async with CivitaiClient([com.api_base, red.api_base], sleep_retries=0.01) as client:
        resp = await api.fetch_model(client, 7)
        assert resp.ok and resp.data["id"] == 7 and resp.host == f"127.0.0.1:{red.port}"
        assert (await api.fetch_model(client, 8)).outcome == "notfound"
        version = await api.fetch_model_version(client, 71)
        assert version.ok and version.data["modelId"] == 7
        sha = make_model(7)["modelVersions"][0]["files"][0]["hashes"]["SHA256"]
        by_hash = await api.fetch_version_by_hash(client, sha[:10].lower())
        assert by_hash.ok and by_hash.data["id"] == 70
        assert await api.fetch_newest_model_id(client) == 7


def test_get_prints_one_answer(fake_civitai):
    fake_civitai.add_models([make_model(3)])
    fake_civitai.script("/api/v1/models/3", [500])
    result = CliRunner().invoke(cli, ["get", "models/3", "--api-base", fake_civitai.api_base, "--sleep-retries", "0.01"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id"] == 3
    result = CliRunner().invoke(cli, ["get", "/api/v1/models?ids=3,4", "--api-base", fake_civitai.api_base])
    assert [m["id"] for m in json.loads(result.output)["items"]] == [3]
    result = CliRunner().invoke(cli, ["get", "models/4", "--api-base", fake_civitai.api_base])
    assert result.exit_code == 1 and "not found (HTTP 404)" in result.output
