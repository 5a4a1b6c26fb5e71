"""Datasette over the mirror: in-process (Datasette.client) and over real HTTP (`civitai-mirror serve`)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import sqlite_utils

from mirror.build import build_mirror
from mirror.serve import make_datasette
from tests.test_mirror_build import copy_dump


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    dump = copy_dump(tmp / "dump")
    db = tmp / "civitai.sqlite"
    build_mirror(dump, db)
    library = tmp / "library.sqlite"
    sqlite_utils.Database(library)["files"].insert({"id": 1, "path": "/x/a.safetensors"}, pk="id")
    return db, library, dump


@pytest.fixture
async def client(mirror):
    db, library, _ = mirror
    ds = make_datasette(db, library)
    await ds.invoke_startup()
    return ds.client


async def test_pages_and_metadata(client):
    index = await client.get("/")
    assert index.status_code == 200
    assert "civitai-mirror" in index.text and "library" in index.text
    tables = (await client.get("/civitai.json")).json()
    names = {t["name"]: t for t in tables["tables"]}
    assert names["_sources"]["hidden"] and names["_build_info"]["hidden"]
    assert not names["models"]["hidden"]
    models = (await client.get("/civitai/models.json?_shape=objects&_labels=on")).json()
    assert models["facet_results"]["type"]["results"][0]["value"] == "LORA"
    assert {r["id"] for r in models["rows"]} == {101, 102, 103, 104, 105, 106, 107, 300}
    page = await client.get("/civitai/models")
    assert "One row per Civitai model" in page.text
    search = (await client.get("/civitai/models.json?_search=texture&_shape=arrays")).json()
    assert [r[0] for r in search["rows"]] == [101]
    assert (await client.get("/library/files.json")).status_code == 200


@pytest.mark.parametrize("query,params,first", [
    ("by_hash", "hash=9c783c8ce46c", {"hash_type": "AutoV3", "model_id": 102, "version_id": 1020}),
    ("models_by_creator", "username=alice", {"id": 105}),
    ("versions_by_base_model", "base_model=Pony", {"id": 1050}),
    ("newest_models", "", {"id": 107, "published": "2026-01-02 00:00:00"}),
    ("models_gone_upstream", "", {"id": 105}),
])
async def test_canned_queries(client, query, params, first):
    response = await client.get(f"/civitai/{query}.json?_shape=objects&{params}")
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    assert {k: row[k] for k in first} == first


async def test_api_models(client):
    model = (await client.get("/api/v1/models/101")).json()
    assert model["name"] == "Detail Slider"
    assert [v["id"] for v in model["modelVersions"]] == [1011, 1010]
    assert model["modelVersions"][0]["files"][0]["hashes"]["SHA256"] == "A1" * 32
    archived = (await client.get("/api/v1/models/104")).json()
    assert archived["mode"] == "Archived" and archived["modelVersions"][0]["files"] == []
    listing = (await client.get("/api/v1/models?ids=103,101,999")).json()
    assert [m["id"] for m in listing["items"]] == [103, 101]
    paged = (await client.get("/api/v1/models?limit=2")).json()
    assert [m["id"] for m in paged["items"]] == [300, 107]
    assert "page=2" in paged["metadata"]["nextPage"]


async def test_api_versions_and_by_hash(client):
    version = (await client.get("/api/v1/model-versions/1020")).json()
    assert (version["modelId"], version["model"]["name"], version["model"]["type"]) == (
        102, "Mix Checkpoint", "Checkpoint")
    by_hash = (await client.get("/api/v1/model-versions/by-hash/9c783c8ce46c")).json()
    assert by_hash["id"] == 1020
    # an Archived model's file is still answered, and named in files
    archived = (await client.get("/api/v1/model-versions/by-hash/" + "c3" * 32)).json()
    assert archived["model"]["mode"] == "Archived"
    assert [f["id"] for f in archived["files"]] == [2040]
    partial = (await client.get("/api/v1/model-versions/3001")).json()
    assert partial["images"][0]["meta"] == {"prompt": "whimsy", "seed": 1}


async def test_api_post_by_hash(client):
    body = json.dumps(["5e" * 32, "B2" * 32, "00" * 32])
    response = await client.post("/api/v1/model-versions/by-hash", content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 200
    # one answer per matched file: the shared file is in two versions; unmatched dropped
    assert [v["id"] for v in response.json()] == [1010, 1030, 1020]


@pytest.mark.parametrize("method,path,body,status,error", [
    ("get", "/api/v1/models/999", None, 404, "No model with id 999"),
    ("get", "/api/v1/model-versions/999", None, 404, "Model not found"),
    ("get", "/api/v1/model-versions/by-hash/0123456789", None, 404, "Model not found"),
    ("get", "/api/v1/models/abc", None, 400, None),
    ("get", "/api/v1/models/0", None, 400, None),
    ("get", "/api/v1/models/2147483648", None, 400, None),
    ("get", "/api/v1/model-versions/x1", None, 400, None),
    ("get", "/api/v1/model-versions/by-hash/zzzz", None, 400, None),
    ("get", "/api/v1/models?limit=500", None, 400, None),
    ("get", "/api/v1/models?ids=1,x", None, 400, None),
    ("post", "/api/v1/model-versions/by-hash", "not json", 400, None),
    ("post", "/api/v1/model-versions/by-hash", json.dumps({"a": 1}), 400, None),
    ("post", "/api/v1/model-versions/by-hash", json.dumps(["ABC"]), 400, None),
    ("post", "/api/v1/model-versions/by-hash", json.dumps(["A1" * 32] * 101), 400, None),
])
async def test_api_errors(client, method, path, body, status, error):
    if method == "get":
        response = await client.get(path)
    else:
        response = await client.post(path, content=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"}
    if error:
        assert payload["error"] == error
    if status == 404 and "/models/" in path:
        assert response.text == json.dumps({"error": error}, separators=(",", ":"))  # byte-exact


async def test_local_previews_offline(client):
    image = await client.get("/-/civitai-images/images/00000000/5001.jpeg")
    assert image.status_code == 200
    assert image.content.startswith(b"\xff\xd8") and image.headers["content-type"] == "image/jpeg"
    page = await client.get("/civitai/images")
    assert '<img src="/-/civitai-images/images/00000000/5001.jpeg"' in page.text
    assert image.headers["x-content-type-options"] == "nosniff"
    for bad in ("images/00000000/9999.jpeg", "images/../../etc/passwd", "downloaded.txt"):
        assert (await client.get(f"/-/civitai-images/{bad}")).status_code == 404


async def test_only_images_and_videos_are_served_from_the_dump(mirror, tmp_path):
    db, _, dump = mirror
    saved = tmp_path / "dump" / "images" / "00000000"
    saved.mkdir(parents=True)
    script = b"<html><script>alert(document.domain)</script></html>"
    for name in ("5001.html", "5001.svg", "5001.txt", "5003.mp4", "5004.PNG"):
        (saved / name).write_bytes(script)
    ds = make_datasette(db, dump_dir=tmp_path / "dump")
    await ds.invoke_startup()
    for name in ("5001.html", "5001.svg", "5001.txt"):
        assert (await ds.client.get(f"/-/civitai-images/images/00000000/{name}")).status_code == 404
    for name, kind in (("5003.mp4", "video/mp4"), ("5004.PNG", "image/png")):
        response = await ds.client.get(f"/-/civitai-images/images/00000000/{name}")
        assert response.status_code == 200
        assert (response.headers["content-type"], response.headers["x-content-type-options"]) == (kind, "nosniff")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_over_real_http(mirror, tmp_path):
    db, library, _ = mirror
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "civitai_mirror", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        assert "library.sqlite" in line  # found beside --db
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                status, _body = _get(base + "/-/versions.json")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200
        status, body = _get(base + "/civitai/models")
        assert status == 200 and b"Detail Slider" in body
        status, body = _get(base + "/civitai/by_hash.json?_shape=array&hash=1A2B3C4D")
        assert status == 200 and json.loads(body)[0]["model_id"] == 101
        status, body = _get(base + "/api/v1/models/102")
        assert status == 200 and json.loads(body)["type"] == "Checkpoint"
        status, body = _get(base + "/api/v1/models?ids=102")
        assert [m["id"] for m in json.loads(body)["items"]] == [102]
        status, body = _get(base + "/api/v1/model-versions/1011")
        assert json.loads(body)["modelId"] == 101
        status, body = _get(base + "/api/v1/model-versions/by-hash/A1A1A1A1A1")
        assert json.loads(body)["id"] == 1011
        status, body = _get(base + "/api/v1/model-versions/by-hash", json.dumps(["A1" * 32]).encode())
        assert status == 200 and [v["id"] for v in json.loads(body)] == [1011]
        assert _get(base + "/api/v1/models/999") == (404, b'{"error":"No model with id 999"}')
        assert _get(base + "/api/v1/model-versions/by-hash/ffffffffff")[0] == 404
        assert _get(base + "/api/v1/models/-1")[0] == 400
        assert _get(base + "/-/civitai-images/images/00000000/5002.webp")[0] == 200
        assert _get(base + "/library/files.json")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_superseded_snapshots_read_as_json_in_sql(client):
    """model_snapshots.data of an answer the rows do not stand for is compressed; the SQL function
    snapshot_json(data) gives its JSON back in any query."""
    sql = ("select snapshot_json(data) from model_snapshots where kind = 'model' "
           "and typeof(data) = 'blob' limit 1")
    answer = (await client.get("/civitai.json", params={"sql": sql, "_shape": "arrays"})).json()
    assert "modelVersions" in json.loads(answer["rows"][0][0])
