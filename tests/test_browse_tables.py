"""The mirror's tables read at a glance: JSON and bookkeeping columns hidden unless asked, dates
as dates, sizes as sizes, a base-model facet. Over the demo data, through Datasette's own client."""
from __future__ import annotations

import re

import pytest

from mirror.serve import make_datasette
from tests.test_serve_library import build_demo_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("browse-tables") / "demo")


def _columns(html: str) -> list[str]:
    return re.findall(r'<th [^>]*data-column="([^"]+)"', html)


async def test_models_table_hides_json_and_bookkeeping(client):
    html = (await client.get("/civitai/models")).text
    shown = _columns(html)
    assert {"id", "name", "type", "username", "created_at", "mode", "tags", "baseModels"} <= set(shown)
    assert not {"data", "description_text", "_source_path", "_snapshots"} & set(shown)
    assert "&lt;p&gt;" not in html  # no model JSON with its escaped markup in every row
    assert 'id="facet-baseModels"' in html and 'id="facet-type"' in html and 'id="facet-mode"' in html


async def test_asked_columns_and_json_have_everything(client):
    assert "data" in _columns((await client.get("/civitai/models?_col=name&_col=data")).text)
    assert "data" in _columns((await client.get("/civitai/models?_allcols=1")).text)
    row = (await client.get("/civitai/models.json?_shape=array&id=110")).json()[0]
    assert "data" in row and "_source_path" in row and isinstance(row["created_at"], int)


async def test_dates_and_sizes_read_as_people_write_them(client):
    html = (await client.get("/civitai/model_files?id=11010")).text
    assert "223 KB" in html
    versions = (await client.get("/civitai/model_versions?model_id=110")).text
    assert re.search(r'<td class="col-created_at[^"]*"[^>]*><span title="\d+">20\d\d-\d\d-\d\d \d\d:\d\d</span>', versions)


@pytest.mark.parametrize("table", ["models", "model_versions", "model_files", "images"])
async def test_default_columns_never_break_a_table(client, table):
    response = await client.get(f"/civitai/{table}")
    assert response.status_code == 200 and "data" not in _columns(response.text)


async def test_home_page_says_what_this_is_and_links_everything(client):
    html = (await client.get("/")).text
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "30 models · 38 versions · 38 files · 76 preview images" in text
    assert re.search(r"\d+ files · \d+ matched to Civitai", text)
    for href in ('href="/civitai/models"', 'href="/library/file_overview"', 'href="/civitai/by_hash"',
                 'href="/library/held_models_gone"'):
        assert href in html, href
    assert '<form class="home-search" action="/civitai/models"' in html and 'name="_search"' in html
    found = (await client.get("/civitai/models?_search=dreamy")).text
    assert "Dreamy Mix" in found and "Paper Cut Style" not in found


async def test_home_page_without_a_library(world):
    ds = make_datasette(world["civitai"], None, world["dump"])
    await ds.invoke_startup()
    html = (await ds.client.get("/")).text
    assert "30 models" in html and "home-library" not in html


async def test_library_overview_is_compact(client, world):
    html = (await client.get("/library/file_overview?_sort=path")).text
    shown = set(_columns(html))
    assert {"file_id", "thumbnail", "path", "kind", "civitai_model", "sha256", "exif_make", "exif_iso"} <= shown
    assert not {"scan_root", "blake3", "crc32", "autov1"} & shown
    assert str(world["dir"]) not in html  # paths relative to their scan root
    assert re.search(r'<td class="col-path[^"]*"[^>]*>checkpoints/dreamy_mix_v2.safetensors</td>', html)
    row = (await client.get("/library/file_overview.json?_shape=array&kind=model&_size=1")).json()[0]
    assert row["scan_root"] == str(world["dir"] / "collection") and "blake3" in row


async def test_exif_columns_no_file_has_are_hidden(world, tmp_path):
    import sqlite3

    library = tmp_path / "library.sqlite"
    source, conn = sqlite3.connect(world["library"]), sqlite3.connect(library)
    source.backup(conn)  # with what is still in the WAL
    source.close()
    with conn:
        conn.execute("UPDATE media_info SET exif_lens = NULL, exif_software = NULL")
    conn.close()
    ds = make_datasette(world["civitai"], library, world["dump"])
    await ds.invoke_startup()
    shown = set(_columns((await ds.client.get("/library/file_overview")).text))
    assert "exif_make" in shown and not {"exif_lens", "exif_software"} & shown
