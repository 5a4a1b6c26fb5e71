"""Datasette over a mirror whose data a stranger wrote: no script runs, no SQL writes, no 500.

In-process (Datasette's own client): these are about what the pages say, not about the socket
(tests/test_mirror_serve_live.py covers that).
"""
from __future__ import annotations

import json
import re

import pytest
import sqlite_utils

from mirror.build import build_mirror
from mirror.serve import make_datasette
from tests.test_mirror_build import copy_dump

PAYLOAD = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    dump = copy_dump(tmp / "dump")
    path = dump / "00000000" / "00000101.json"
    doc = json.loads(path.read_text())
    doc["name"] = PAYLOAD
    doc["description"] = PAYLOAD
    doc["tags"] = [PAYLOAD]
    doc["creator"] = {"username": PAYLOAD}
    doc["modelVersions"][0]["name"] = PAYLOAD
    path.write_text(json.dumps(doc))
    db = tmp / "civitai.sqlite"
    build_mirror(dump, db)
    library = tmp / "library.sqlite"
    sqlite_utils.Database(library)["files"].insert({"id": 1, "path": f"/x/{PAYLOAD}.safetensors"}, pk="id")
    return db, library, dump


@pytest.fixture
async def client(hostile):
    db, library, dump = hostile
    ds = make_datasette(db, library, dump)
    await ds.invoke_startup()
    return ds.client


def unescaped(html: str) -> list[str]:
    return re.findall(r"<script>alert|<img src=x onerror", html)


async def test_no_page_runs_a_strangers_script(client):
    pages = ["/", "/civitai", "/civitai/models", "/civitai/models/101", "/civitai/creators",
             "/civitai/tags", "/civitai/model_versions?model_id=101", "/civitai/models?_search=alert",
             "/civitai/models?_facet=username&_facet=name", "/civitai/by_hash?hash=A1A1A1A1A1",
             "/civitai/models_by_creator?username=" + PAYLOAD, "/library/files", "/library/files/1",
             "/civitai/models?name=" + PAYLOAD]
    for page in pages:
        response = await client.get(page)
        assert response.status_code in (200, 404), (page, response.status_code)
        assert unescaped(response.text) == [], page
    shown = (await client.get("/civitai/models/101")).text + (await client.get("/library/files/1")).text
    assert shown.count("&lt;script&gt;alert") >= 2  # the payload is there, as text


async def test_sql_is_select_only_and_time_limited(client):
    for sql in ("delete from models", "drop table models", "update models set name = 'x'",
                "attach database '/tmp/x.sqlite' as x", "pragma application_id = 1"):
        response = await client.get("/civitai.json", params={"sql": sql})
        assert response.status_code == 400, sql
    endless = "with recursive n(i) as (select 1 union all select i + 1 from n) select count(*) from n"
    response = await client.get("/civitai.json", params={"sql": endless})
    assert response.status_code == 400 and "took too long" in response.json()["error"]
    assert (await client.get("/civitai/models.json?_shape=array&id=101")).json()[0]["name"] == PAYLOAD


@pytest.mark.parametrize("path", [
    "/civitai/models?_sort=nope", "/civitai/models?_sort=id&_sort_desc=id", "/civitai/models?_through=x",
    "/civitai/models?_next=abc", "/civitai/models?_size=99999999999999999999",
    "/civitai/models?_facet=nope", "/civitai/models.json?id__gt=99999999999999999999999",
    "/civitai/models?_search=%22", "/civitai/models?_search=NEAR(", "/civitai/models/99999999999999999999",
    "/civitai/models.json?_shape=nope", "/civitai.json?sql=select+1&_timelimit=-1",
    "/api/v1/model-versions/by-hash/" + "0x" + "g" * 64, "/-/civitai-images/" + "a/" * 500,
])
async def test_odd_parameters_are_never_a_500(client, path):
    response = await client.get(path)
    assert response.status_code < 500, (path, response.text[:300])
