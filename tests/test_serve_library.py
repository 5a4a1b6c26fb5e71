"""The library in Datasette: views, the file page, canned queries and rendering, over the demo data.

The data is the demo's (civitai_mirror.samples): a generated collection and a matching dump, run through
the real `build`, `scan` and `match` commands. Then, to give every canned query something to
find, the test marks one Civitai model gone and one LoRA file missing (as a later crawl and
scan would).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.demo import prepare_demo
from mirror.library_view import LIBRARY_VIEWS, ensure_views
from mirror.serve import make_datasette


def build_demo_world(directory: Path) -> dict[str, Path]:
    """Demo sample data → civitai.sqlite + library.sqlite, through the CLI, plus two changes."""
    directory = prepare_demo(directory)
    runner = CliRunner()
    steps = [
        ["build", str(directory / "civitai-meta"), "--db", str(directory / "civitai.sqlite")],
        ["scan", str(directory / "collection"), "--db", str(directory / "library.sqlite")],
        ["match", "--db", str(directory / "library.sqlite"), "--civitai-db", str(directory / "civitai.sqlite")],
    ]
    for args in steps:
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
    civitai = sqlite_utils.Database(directory / "civitai.sqlite")
    civitai.execute("UPDATE models SET _gone = 1 WHERE name = 'Line Guide'")
    civitai.conn.commit()
    civitai.close()
    library = sqlite_utils.Database(directory / "library.sqlite")
    library.execute("UPDATE files SET missing = 1 WHERE path LIKE '%/detail_slider_locon.safetensors'")
    library.conn.commit()
    library.close()
    return {"dir": directory, "civitai": directory / "civitai.sqlite",
            "library": directory / "library.sqlite", "dump": directory / "civitai-meta"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("library-serve") / "demo")


@pytest.fixture(scope="module")
def ids(world):
    db = sqlite_utils.Database(world["library"])
    by_name = {Path(r["path"]).name: r["id"] for r in db.query("select id, path from files")}
    db.close()
    return by_name


async def rows(client, path: str) -> list[dict]:
    response = await client.get(path + ("&" if "?" in path else "?") + "_shape=objects")
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def text_of(html: str) -> str:
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


async def test_library_index_lists_views_and_hides_bookkeeping(client):
    data = (await client.get("/library.json")).json()
    tables = {t["name"]: t for t in data["tables"]}
    assert tables["plans"]["hidden"] and tables["model_enrichment"]["hidden"]
    assert not tables["files"]["hidden"] and not tables["journal"]["hidden"]
    assert {v["name"] for v in data["views"]} >= {"file_overview", "image_resources"}
    assert {q["name"] for q in data["queries"]} >= {
        "unmatched_models", "duplicates", "images_missing_loras", "held_models_gone", "largest_by_type",
        "photos_by_camera"}
    page = await client.get("/library")
    assert "Your local collection" in page.text
    # The mirror is attached to the library's connections (read-only) for cross-database queries.
    assert "attached to this connection" in page.text and "<strong>civitai</strong>" in page.text


async def test_file_overview_rows_and_facets(client, ids):
    overview = await rows(client, "/library/file_overview.json?_size=max")
    by_name = {Path(r["path"]).name: r for r in overview}
    assert len(overview) == 21
    lora = by_name["paper_cut_style.safetensors"]
    assert (lora["kind"], lora["model_type"], lora["civitai_model_id"], lora["civitai_version_id"],
            lora["civitai_model"], lora["civitai_type"], lora["civitai_base_model"]) == (
        "model", "lora", 130, 1301, "Paper Cut Style", "LORA", "SDXL 1.0")
    assert (lora["match_hash_type"], lora["match_confidence"]) == ("SHA256", 1.0)
    assert lora["sha256"].startswith("A2BF8E686E")
    image = by_name["dreamy_mix_v2.png"]
    assert (image["generation_tool"], image["steps"], image["sampler"], image["seed"]) == (
        "AUTOMATIC1111", 24, "DPM++ 2M", "3141592653")
    assert json.loads(image["loras"]) == [{
        "name": "paper_cut_style", "kind": "lora", "weight": 0.8,
        "local_file_id": ids["paper_cut_style.safetensors"], "model_id": 130, "version_id": 1301}]
    photo = by_name["holiday_photo.jpg"]
    assert (photo["exif_make"], photo["exif_model"], photo["exif_iso"], photo["exif_gps_present"],
            photo["exif_datetime_original"]) == ("DemoCam", "DC-1", 200, 0, "2024-05-06T05:08:09Z")
    assert photo["civitai_model_id"] is None and photo["loras"] is None

    facets = (await client.get("/library/file_overview.json")).json()["facet_results"]
    kinds = {f["value"]: f["count"] for f in facets["kind"]["results"]}
    assert kinds == {"media": 9, "model": 9, "sidecar": 3}
    tools = {f["value"]: f["count"] for f in facets["generation_tool"]["results"]}
    assert tools == {"AUTOMATIC1111": 4, "ComfyUI": 1, "Civitai": 1, "sidecar": 1}
    assert {f["value"] for f in facets["exif_make"]["results"]} == {"DemoCam"}
    assert {f["value"] for f in facets["match_hash_type"]["results"]} >= {"SHA256", "AutoV2", "local_name"}


async def test_exif_is_searchable(client, ids):
    found = await rows(client, "/library/media_info.json?exif_make=DemoCam")
    assert [r["file_id"] for r in found] == [ids["holiday_photo.jpg"]]
    facets = (await client.get("/library/media_info.json")).json()["facet_results"]
    assert {f["value"]: f["count"] for f in facets["exif_model"]["results"]} == {"DC-1": 1}
    query = await rows(client, "/library/photos_by_camera.json?make=democam&model=")
    assert [(r["path"].rsplit("/", 1)[1], r["exif_iso"]) for r in query] == [("holiday_photo.jpg", 200)]
    assert await rows(client, "/library/photos_by_camera.json?make=Nikon&model=") == []


async def test_overview_page_renders_thumbnails_and_links(client, ids):
    page = await client.get("/library/file_overview?kind=media&_sort=path")
    assert page.status_code == 200
    thumbs = re.findall(r'<img class="library-thumb" src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', page.text)
    assert len(thumbs) == 9
    assert all(base64.b64decode(t)[8:12] == b"WEBP" for t in thumbs)
    assert '<a href="/civitai/models/110">110</a>' in page.text
    assert '<a href="/civitai/model_versions/1101">1101</a>' in page.text
    assert f'<a href="/library/files/{ids["dreamy_mix_v2.png"]}">{ids["dreamy_mix_v2.png"]}</a>' in page.text
    # LoRAs: linked to the local file and to Civitai
    assert (f'paper_cut_style (0.8): <a href="/library/files/{ids["paper_cut_style.safetensors"]}">local file</a>, '
            '<a href="/civitai/model_versions/1301">Civitai</a>') in page.text
    assert "&lt;Binary" not in page.text


async def test_file_page_of_a_model(client, ids):
    page = await client.get(f"/library/files/{ids['paper_cut_style.safetensors']}")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Kind model (safetensors)" in text
    assert "Model type lora" in text and "Base model SDXL" in text
    assert "SHA256 A2BF8E686EE7A554DE4FB2DEB5CCE7776D25A2DD379AE6F5407770D283EC372C" in text
    assert "Model Paper Cut Style (LORA) Version v1 · SDXL 1.0 Matched by SHA256, confidence 1.0" in text
    assert "Reason SHA256 A2BF8E686EE7A554DE4FB2DEB5CCE7776D25A2DD379AE6F5407770D283EC372C matches Civitai file 13010" in text
    assert '<a href="/civitai/models/130">Paper Cut Style</a>' in page.text
    assert '<a href="/civitai/model_versions/1301">v1</a>' in page.text
    assert "Raw row" in text  # Datasette's own row table is still there


async def test_file_page_of_an_image(client, ids):
    page = await client.get(f"/library/files/{ids['00001-3141592653.png']}")
    text = text_of(page.text)
    assert "Kind media (png)" in text
    assert ("Tool AUTOMATIC1111 Model dreamy_mix_v2 Model hash 71ae5df69a Steps 24 Sampler DPM++ 2M "
            "Scheduler Karras CFG scale 6.5 Seed 3141592653") in text
    assert "Prompt a paper cut landscape at dawn, layered hills" in text
    assert "LoRAs used paper_cut_style (0.8): local file , Civitai: Paper Cut Style v1" in text
    assert f'<a href="/library/files/{ids["paper_cut_style.safetensors"]}">local file</a>' in page.text
    assert "Other copies (same SHA256) /" in text and "00001-3141592653 (copy).png" in text
    thumb = re.search(r'<div class="library-thumbnail"><img class="library-thumb" '
                      r'src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', page.text)
    assert thumb and base64.b64decode(thumb.group(1))[:4] == b"RIFF"


async def test_file_page_of_a_photo_and_of_an_unmatched_file(client, ids):
    photo = text_of((await client.get(f"/library/files/{ids['holiday_photo.jpg']}")).text)
    assert "EXIF Camera make DemoCam Camera model DC-1 ISO 200 Taken (DateTimeOriginal) 2024-05-06T05:08:09Z GPS present 0" in photo
    assert "Not matched: orphan image (no metadata)" in photo
    mystery = text_of((await client.get(f"/library/files/{ids['mystery_weights.safetensors']}")).text)
    assert "Not matched: no hash found in the mirror" in mystery
    gone = text_of((await client.get(f"/library/files/{ids['line_guide.safetensors']}")).text)
    assert "Status gone from Civitai (404)" in gone
    missing = text_of((await client.get(f"/library/files/{ids['detail_slider_locon.safetensors']}")).text)
    assert "Not found by the latest scan." in missing
    assert (await client.get("/library/files/9999")).status_code == 404


async def test_canned_queries(client, ids):
    unmatched = await rows(client, "/library/unmatched_models.json")
    assert [(Path(r["path"]).name, r["reason"]) for r in unmatched] == [
        ("mystery_weights.safetensors",
         "no hash found in the mirror (tried SHA256, AutoV3, AutoV2, BLAKE3, CRC32)")]

    duplicates = await rows(client, "/library/duplicates.json")
    assert [(Path(r["path"]).name, r["copies"], r["wasted"]) for r in duplicates] == [
        ("00001-3141592653 (copy).png", 2, 648), ("00001-3141592653.png", 2, 648)]

    missing = await rows(client, "/library/images_missing_loras.json")
    assert sorted((Path(r["image"]).name, r["lora"], r["version_id"], r["state"].split(":")[0])
                  for r in missing) == [
        ("00002-1618033988.png", "moss_garden", 2001, "not held"),
        ("ComfyUI_00001_.png", "detail_slider_locon.safetensors", 1401, "file missing"),
        ("render_0007.png", "detail_slider_locon", 1401, "file missing")]

    gone = await rows(client, "/library/held_models_gone.json")
    assert [(Path(r["path"]).name, r["model_id"], r["civitai_model"], r["state"]) for r in gone] == [
        ("old_realism.ckpt", 120, "Old Realism", "Archived"),
        ("line_guide.safetensors", 180, "Line Guide", "gone (404)")]

    largest = await rows(client, "/library/largest_by_type.json")
    first = largest[0]  # the LoCon file is marked missing
    assert (first["type"], Path(first["path"]).name, first["size"]) == (
        "checkpoint", "dreamy_mix_v2.safetensors", 228152)
    by_type: dict[str, list[int]] = {}
    for r in largest:
        by_type.setdefault(r["type"], []).append(r["size"])
    assert all(sizes == sorted(sizes, reverse=True) and len(sizes) <= 10 for sizes in by_type.values())
    assert by_type["lora"] == [55846, 55766]
    totals = [sum(sizes) for sizes in by_type.values()]
    assert totals == sorted(totals, reverse=True)
    assert list(by_type) == ["checkpoint", "lora", "vae", "embedding", "media", "controlnet", "unknown",
                             "sidecar"]
    assert len(by_type["media"]) == 9 and by_type["media"][0] == 1495


async def test_canned_query_pages_link_rows(client, ids):
    page = await client.get("/library/held_models_gone")
    assert page.status_code == 200
    assert '<a href="/civitai/models/180">180</a>' in page.text
    assert f'<a href="/library/files/{ids["line_guide.safetensors"]}">{ids["line_guide.safetensors"]}</a>' in page.text
    resources = await rows(client, f"/library/image_resources.json?file_id={ids['dreamy_mix_v2.png']}&_sort=position")
    assert [(r["kind"], r["name"], Path(r["local_path"]).name, r["civitai_version_id"]) for r in resources] == [
        ("checkpoint", "dreamy_mix_v2", "dreamy_mix_v2.safetensors", 1101),
        ("vae", "clear_skies_vae.safetensors", "clear_skies_vae.safetensors", 1701),
        ("lora", "paper_cut_style", "paper_cut_style.safetensors", 1301),
        ("embedding", "soft_hands_neg", "soft_hands_neg.safetensors", 1601)]


async def test_serving_never_writes_the_library(world):
    before = hashlib.sha256(world["library"].read_bytes()).hexdigest()
    ds = make_datasette(world["civitai"], world["library"])
    await ds.invoke_startup()
    for path in ["/library/file_overview", "/library/files/1", "/library/held_models_gone"]:
        assert (await ds.client.get(path)).status_code == 200
    db = ds.get_database("library")
    with pytest.raises(Exception):
        await db.execute_fn(lambda conn: conn.execute("CREATE TABLE x (y)"))
    assert hashlib.sha256(world["library"].read_bytes()).hexdigest() == before


def test_ensure_views_is_idempotent_and_refreshes_changed_sql(tmp_path):
    from matcher.schema import open_library

    db = open_library(tmp_path / "library.sqlite")
    views = set(db.view_names())
    assert views >= set(LIBRARY_VIEWS)
    db.execute("DROP VIEW image_resources")
    db.execute("CREATE VIEW image_resources AS SELECT 1 AS stale")
    ensure_views(db)
    assert "stale" not in [c.name for c in db["image_resources"].columns]
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    ensure_views(db)
    assert db.execute("PRAGMA schema_version").fetchone()[0] == version
    assert list(db.query("select * from file_overview")) == []


async def test_an_old_partial_library_still_browses(world, tmp_path):
    old = sqlite_utils.Database(tmp_path / "library.sqlite")
    old["files"].insert({"id": 1, "path": "/x/a.safetensors", "size": 5}, pk="id")
    old.close()
    ds = make_datasette(world["civitai"], tmp_path / "library.sqlite")
    await ds.invoke_startup()
    listing = await ds.client.get("/library/files.json")
    assert listing.status_code == 200 and listing.json()["rows"] == [[1, "/x/a.safetensors", 5]]
    page = text_of((await ds.client.get("/library/files/1")).text)
    assert "/x/a.safetensors" in page and "Not matched yet (run civitai-mirror match )." in page


async def test_camera_photos_from_the_corpus_are_searchable_by_exif(shared_dir, tmp_path, world):
    photos = tmp_path / "photos"
    photos.mkdir()
    for rel in ("unclip/sunset.png", "ltxv/island.jpg"):
        src = shared_dir / "corpus" / "comfyanonymous__ComfyUI_examples" / rel
        (photos / src.name).write_bytes(src.read_bytes())
    library = tmp_path / "library.sqlite"
    result = CliRunner().invoke(cli, ["scan", str(photos), "--db", str(library)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ds = make_datasette(world["civitai"], library)
    await ds.invoke_startup()
    found = await rows(ds.client, "/library/file_overview.json?exif_make=NIKON+CORPORATION")
    assert [(Path(r["path"]).name, r["exif_model"], r["exif_iso"], r["exif_focal_length"], r["exif_exposure"])
            for r in found] == [("sunset.png", "NIKON D90", 200, 85.0, "1/200")]
    query = await rows(ds.client, "/library/photos_by_camera.json?make=nikon&model=d90")
    assert [(Path(r["path"]).name, r["exif_datetime_original"]) for r in query] == [
        ("sunset.png", "2013-01-03T17:59:07")]
    page = text_of((await ds.client.get(f"/library/files/{found[0]['file_id']}")).text)
    assert "EXIF Camera make NIKON CORPORATION Camera model NIKON D90" in page
    assert "ISO 200 Focal length 85.0" in page
