"""The offline API as real clients use it: one small fake client per shape they read, against a real
Datasette over a mirror built from the fixture dump; and every route's answer checked against the
real answers in ../shared/civitai-samples (those tests skip when the folder is absent)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from urllib.parse import parse_qsl, urlsplit

import pytest

from mirror.build import build_mirror
from mirror.serve import make_datasette
from tests.conftest import SHARED
from tests.test_mirror_build import FIXTURE, copy_dump

# alice's avatar as the fixture dump recorded it: the API passes it through unchanged
ALICE_IMAGE = json.loads((FIXTURE / "00000000" / "00000101.json").read_text())["creator"]["image"]

ALL_MODELS = [300, 107, 106, 105, 104, 103, 102, 101]
NEWER_VERSION_KEYS = {"creator", "availability", "nsfwLevel"}


@pytest.fixture(scope="module")
def mirror_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-clients")
    db = tmp / "civitai.sqlite"
    build_mirror(copy_dump(tmp / "dump"), db)
    return db


@pytest.fixture
async def client(mirror_db):
    ds = make_datasette(mirror_db)
    await ds.invoke_startup()
    return ds.client


async def get_json(client, url, status=200):
    response = await client.get(url)
    assert response.status_code == status, (url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# ---- fake clients, one per shape -------------------------------------------------------------

async def cursor_paginator(client, first: str) -> list[int]:
    """civitapy / civitai-hub: pass ``metadata.nextCursor`` back as ``cursor`` until it is absent."""
    ids, url = [], first
    for _ in range(50):
        body = await get_json(client, url)
        ids += [m["id"] for m in body["items"]]
        cursor = body["metadata"].get("nextCursor")
        if not cursor:
            return ids
        query = dict(parse_qsl(urlsplit(first).query))
        url = "/api/v1/models?" + "&".join(f"{k}={v}" for k, v in {**query, "cursor": cursor}.items())
    raise AssertionError("the paginator never stopped")


async def next_page_paginator(client, first: str) -> list[int]:
    """Lora-Manager / Civitai Helper: follow ``metadata.nextPage`` URLs until there is none."""
    ids, url = [], first
    for _ in range(50):
        body = await get_json(client, url)
        ids += [m["id"] for m in body["items"]]
        if not body["metadata"].get("nextPage"):
            return ids
        parts = urlsplit(body["metadata"]["nextPage"])
        url = f"{parts.path}?{parts.query}"
    raise AssertionError("the paginator never stopped")


async def lora_manager_lookup(client, sha256: str) -> dict:
    """What ComfyUI-Lora-Manager reads from a by-hash answer and then the model."""
    version = await get_json(client, f"/api/v1/model-versions/by-hash/{sha256}")
    model = await get_json(client, f"/api/v1/models/{version['modelId']}")
    return {"version": version["id"], "model": model["name"], "air": version["air"],
            "creator": (version.get("creator") or {}).get("username"),
            "sha256": [f["hashes"]["SHA256"] for f in version["files"]],
            "images": [i["url"] for i in version["images"]]}


async def test_paginators_walk_every_model_once(client):
    assert await cursor_paginator(client, "/api/v1/models?limit=3&cursor=0") == ALL_MODELS
    assert await cursor_paginator(client, "/api/v1/models?limit=3") == ALL_MODELS
    assert await next_page_paginator(client, "/api/v1/models?limit=3") == ALL_MODELS
    assert await next_page_paginator(client, "/api/v1/models?limit=3&cursor=0") == ALL_MODELS
    last = await get_json(client, "/api/v1/models?limit=3&cursor=6")
    assert set(last["metadata"]) == set() and [m["id"] for m in last["items"]] == [102, 101]
    first = await get_json(client, "/api/v1/models?limit=3&page=1")
    assert first["metadata"]["currentPage"] == 1 and first["metadata"]["pageSize"] == 3


@pytest.mark.parametrize("query,ids", [
    ("query=slider", [103, 101]),
    ("query=SLID", [103, 101]),  # the last word is a prefix, as in a search box
    ("query=%22%29%28*", []),  # full-text syntax is never interpreted
    ("tag=tool", [103, 101]),
    ("tag=Listed", [107, 106]),
    ("types=Checkpoint", [102]),
    ("types=Checkpoint&types=LORA&limit=2", [300, 107]),
    ("types=Checkpoint,LORA&limit=2", [300, 107]),
    ("baseModels=Pony", [105, 104]),
    ("baseModels=Pony&baseModels=SDXL 1.0", [105, 104, 102]),
    ("username=bob", [107, 106, 103]),
    ("nsfw=false&types=Checkpoint", []),
    ("nsfw=true&types=Checkpoint", [102]),
    ("sort=Most Downloaded&limit=3", [101, 104, 105]),
    ("sort=Highest Rated&limit=2", [105, 104]),
    ("sort=Newest&limit=2", [300, 107]),
    ("sort=Oldest&limit=2", [101, 102]),
    ("query=slider&username=bob&sort=Newest", [103]),
])
async def test_models_filters_and_sort(client, query, ids):
    body = await get_json(client, f"/api/v1/models?{query}")
    assert [m["id"] for m in body["items"]] == ids


@pytest.mark.parametrize("path,status", [
    ("/api/v1/models?sort=Best", 400),
    ("/api/v1/models?nsfw=maybe", 400),
    ("/api/v1/models?cursor=abc", 400),
    ("/api/v1/models?cursor=-1", 400),
    ("/api/v1/models?page=0", 400),
    ("/api/v1/images?limit=201", 400),
    ("/api/v1/creators?limit=x", 400),
    ("/api/v1/nothing/here/at/all", 404),
    ("/api/v1/models/1/versions", 404),
    ("/api/v1/model-versions/1/2/3", 404),
    ("/api/v2/models", 404),
    ("/api/", 404),
    ("/api/v1/model-versions/mini/999", 404),
    ("/api/v1/model-versions/mini/abc", 400),
])
async def test_every_api_answer_is_json(client, path, status):
    body = await get_json(client, path, status)
    assert set(body) == {"error"} and body["error"]


async def test_unknown_four_segment_path_is_not_a_500(client):
    assert (await client.get("/a/b/c/d")).status_code == 404


async def test_lora_manager_by_hash_answer(client):
    found = await lora_manager_lookup(client, "A1" * 32)
    assert found["version"] == 1011 and found["model"] == "Detail Slider"
    assert found["air"] == "urn:air:sd1:lora:civitai:101@1011"
    assert found["creator"] == "alice"
    assert "A1" * 32 in found["sha256"]
    version = await get_json(client, "/api/v1/model-versions/1010")
    assert "index" not in version and version["creator"]["image"] == ALICE_IMAGE
    missing = await client.get("/api/v1/models/999")
    assert (missing.status_code, missing.json()) == (404, {"error": "No model with id 999"})


async def test_image_urls_point_at_the_saved_copy(client):
    version = await get_json(client, "/api/v1/model-versions/1011")
    url = version["images"][0]["url"]
    assert urlsplit(url).path == "/-/civitai-images/images/00000000/5001.jpeg"
    image = await client.get(urlsplit(url).path)
    assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")
    model = await get_json(client, "/api/v1/models/101")
    assert [i["url"] for v in model["modelVersions"] for i in v["images"]][:1] == [url]
    unsaved = await get_json(client, "/api/v1/model-versions/1030")
    assert unsaved["images"][0]["url"].startswith("https://")  # nothing saved: Civitai's own URL


async def test_post_by_hash_ids_and_mini(client):
    body = json.dumps(["5e" * 32, "b2" * 32, "00" * 32])
    response = await client.post("/api/v1/model-versions/by-hash/ids", content=body)
    assert response.status_code == 200, response.text
    assert response.json() == [{"modelVersionId": 1010, "hash": "5E" * 32},
                               {"modelVersionId": 1030, "hash": "5E" * 32},
                               {"modelVersionId": 1020, "hash": "B2" * 32}]
    for bad in ("[1]", '"x"', json.dumps(["AB" * 32] * 10_001)):
        response = await client.post("/api/v1/model-versions/by-hash/ids", content=bad)
        assert response.status_code in (400, 413) and "error" in response.json()
    mini = await get_json(client, "/api/v1/model-versions/mini/1020")
    assert mini["air"] == "urn:air:sdxl:checkpoint:civitai:102@1020"
    assert (mini["modelName"], mini["hashes"]["SHA256"]) == ("Mix Checkpoint", "B2" * 32)
    assert mini["downloadUrls"] and mini["fileName"]
    # every key a typed client of the mini endpoint requires
    assert {"air", "versionName", "modelName", "baseModel", "availability", "publishedAt", "size",
            "fileType", "fileName", "hashes", "downloadUrls", "format", "canGenerate", "isFeatured",
            "requireAuth", "checkPermission", "earlyAccessEndsAt", "freeTrialLimit",
            "additionalResourceCharge", "minor", "sfwOnly"} == set(mini)


async def test_creators_tags_images_enums(client):
    creators = await get_json(client, "/api/v1/creators?limit=1")
    assert creators["items"] == [{"username": "alice", "modelCount": 3,
                                  "link": "http://localhost/api/v1/models?username=alice",
                                  "image": ALICE_IMAGE}]
    assert creators["metadata"]["nextPage"].endswith("page=2")
    rest = await get_json(client, "/api/v1/creators?limit=1&page=2")
    assert [c["username"] for c in rest["items"]] == ["bob"] and "nextPage" not in rest["metadata"]
    assert (await get_json(client, "/api/v1/creators?query=b"))["items"][0]["username"] == "bob"
    tags = await get_json(client, "/api/v1/tags?query=li")
    assert tags["items"] == [{"name": "listed", "modelCount": 2,
                              "link": "http://localhost/api/v1/models?tag=listed"}]
    # a tag's link lists its models
    linked = await get_json(client, urlsplit(tags["items"][0]["link"]).path + "?tag=listed")
    assert [m["id"] for m in linked["items"]] == [107, 106]
    assert await get_json(client, "/api/v1/images?modelId=101") == {"items": [], "metadata": {}}
    enums = await get_json(client, "/api/v1/enums")
    assert enums["ModelType"] == ["Checkpoint", "LORA"]
    assert "Pony" in enums["BaseModel"] and enums["BaseModel"] == enums["ActiveBaseModel"]
    assert "Model" in enums["ModelFileType"]


# ---- against the real answers --------------------------------------------------------------

@pytest.fixture(scope="module")
def samples_mirror(tmp_path_factory):
    shared = SHARED / "civitai-samples"  # the `shared_dir` rule, for a module-scoped fixture
    if not shared.is_dir():
        pytest.skip("../shared/civitai-samples is absent")
    tmp = tmp_path_factory.mktemp("samples")
    dump = tmp / "dump" / "samples"
    dump.mkdir(parents=True)
    for path in shared.glob("*.json"):
        if "CivArchive" not in path.name:
            shutil.copy(path, dump / path.name)
    build_mirror(tmp / "dump", tmp / "civitai.sqlite")
    return shared, tmp / "civitai.sqlite"


@pytest.fixture
async def samples_client(samples_mirror):
    ds = make_datasette(samples_mirror[1])
    await ds.invoke_startup()
    return ds.client


def real(shared, pattern):
    return [(p.name, json.loads(p.read_text())) for p in sorted(shared.glob(pattern))
            if "EDITED" not in p.name and "CONDENSED" not in p.name]


async def test_version_answers_have_the_real_key_set(samples_mirror, samples_client):
    shared, _ = samples_mirror
    samples = real(shared, "*model-versions-*.json")
    assert samples
    for name, sample in samples:
        for url in (f"/api/v1/model-versions/{sample['id']}",
                    f"/api/v1/model-versions/by-hash/{sample['files'][0]['hashes']['SHA256']}"):
            answer = await get_json(samples_client, url)
            # the real answer's keys, and where the mirror knows them the keys Civitai added since
            # (creator; availability and nsfwLevel, which typed clients of the version endpoint need)
            assert set(sample) <= set(answer), (name, url)
            assert set(answer) - set(sample) <= NEWER_VERSION_KEYS, (name, url)
            if sample["id"] == 1255556:  # seen only as its own answer: exactly its keys
                assert set(answer) == set(sample)
            assert answer["air"] == sample["air"]
            assert set(sample["model"]) <= set(answer["model"]) <= {*sample["model"], "minor", "mode"}
            assert set(answer["creator"]) == {"username", "image"}
        posted = await samples_client.post("/api/v1/model-versions/by-hash", content=json.dumps(
            [sample["files"][0]["hashes"]["SHA256"]]))
        assert [set(v) for v in posted.json()] == [set(answer)], name


async def test_every_version_answer_has_the_endpoint_shape(samples_mirror, samples_client):
    shared, db = samples_mirror
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM model_versions")]
    assert len(ids) > 100
    needed = {"id", "modelId", "name", "air", "baseModel", "model", "files", "images", "creator"}
    for version_id in ids:
        answer = await get_json(samples_client, f"/api/v1/model-versions/{version_id}")
        assert needed <= set(answer) and not set(answer) & {"index", "covered", "supportsGeneration"}
        assert answer["air"].startswith("urn:air:") and answer["air"].endswith(
            f":civitai:{answer['modelId']}@{version_id}")


async def test_models_list_and_enums_have_the_real_shape(samples_mirror, samples_client):
    shared, _ = samples_mirror
    (_, page), = real(shared, "*GET-models-list*.json")
    listing = await get_json(samples_client, "/api/v1/models?types=Checkpoint&sort=Highest Rated&limit=2")
    assert set(page["metadata"]) <= set(listing["metadata"]) | {"currentPage", "pageSize"}
    assert set(listing["metadata"]) <= {"nextCursor", "nextPage", "currentPage", "pageSize"}
    item_keys = set(page["items"][0])
    for item in listing["items"]:
        assert item["type"] == "Checkpoint"
        assert item_keys - {"cosmetic"} <= set(item) | {"nsfwLevel"}
    by_id = {m["id"]: m for m in page["items"]}
    for model_id, sample in list(by_id.items())[:3]:
        answer = await get_json(samples_client, f"/api/v1/models/{model_id}")
        assert set(sample) <= set(answer)
    (_, enums), = real(shared, "*enums.json")
    answer = await get_json(samples_client, "/api/v1/enums")
    assert set(answer) == set(enums)
    assert set(answer["ModelType"]) <= set(enums["ModelType"])
    assert set(answer["BaseModelType"]) <= set(enums["BaseModelType"])


async def test_by_hash_ids_takes_ten_thousand_hashes_through_the_guard():
    from mirror.http_guard import MAX_BODY_BYTES, guard
    seen = []

    async def app(scope, receive, send):
        seen.append(len((await receive())["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    body = json.dumps(["AB" * 32] * 10_000, indent=1).encode()
    assert len(body) > MAX_BODY_BYTES

    async def post(path):
        sent, statuses = False, []

        async def receive():
            nonlocal sent
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
        scope = {"type": "http", "path": path, "headers": [
            (b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())]}
        await guard(app, None)(scope, receive, send)
        return statuses[0]

    assert await post("/api/v1/model-versions/by-hash/ids") == 200 and seen == [len(body)]
    assert await post("/api/v1/model-versions/by-hash") == 413 and seen == [len(body)]
