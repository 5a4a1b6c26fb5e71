"""Model files in the library overview get a thumbnail: their ``<name>.preview.png`` sidecar, else
the matched version's preview saved by ``crawl --images``, both served by ``/-/civitai-images/``
(image types only, nosniff). Over the demo data with real files on disk, through Datasette's own
client (tests/test_browser.py opens the same page in a browser over a served Datasette)."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from mirror.serve import make_datasette
from tests.test_serve_library import build_demo_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo, with a preview saved for the version dreamy_mix_v2.safetensors matched."""
    world = build_demo_world(tmp_path_factory.mktemp("library-thumbs") / "demo")
    with sqlite3.connect(world["library"]) as conn:
        world["ids"] = {Path(p).name: i for i, p in conn.execute("SELECT id, path FROM files")}
        version = conn.execute("SELECT version_id FROM matches WHERE file_id = ?",
                               (world["ids"]["dreamy_mix_v2.safetensors"],)).fetchone()[0]
    with sqlite3.connect(world["civitai"]) as conn:
        image_id = conn.execute("SELECT min(id) FROM images WHERE version_id = ?", (version,)).fetchone()[0]
        conn.execute("UPDATE images SET local_path = ?, type = 'image' WHERE id = ?",
                     (f"images/00000000/{image_id}.webp", image_id))
    saved = world["dump"] / "images" / "00000000" / f"{image_id}.webp"
    saved.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 96), (200, 40, 40)).save(saved, format="WEBP")
    world["saved"] = saved
    return world


def _thumbs(html: str) -> dict[str, str]:
    """The overview's model thumbnails by the row's file name."""
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        img = re.search(r'<img class="library-thumb library-model-thumb" src="([^"]+)"', row)
        name = re.search(r'class="col-path[^"]*">([^<]+)<', row)
        if img and name:
            out[Path(name.group(1).strip()).name] = img.group(1)
    return out


async def test_model_rows_show_sidecar_or_saved_preview(client, world):
    page = await client.get("/library/file_overview?kind=model&_sort=path")
    assert page.status_code == 200
    thumbs = _thumbs(page.text)
    assert thumbs == {
        "paper_cut_style.safetensors": f"/-/civitai-images/library/{world['ids']['paper_cut_style.preview.png']}",
        "dreamy_mix_v2.safetensors": f"/-/civitai-images/{world['saved'].relative_to(world['dump'])}",
    }
    sidecar = await client.get(thumbs["paper_cut_style.safetensors"])
    assert sidecar.status_code == 200
    assert sidecar.content == (world["dir"] / "collection/loras/paper_cut_style.preview.png").read_bytes()
    assert (sidecar.headers["content-type"], sidecar.headers["x-content-type-options"]) == ("image/png", "nosniff")
    saved = await client.get(thumbs["dreamy_mix_v2.safetensors"])
    assert saved.status_code == 200 and saved.content == world["saved"].read_bytes()
    assert saved.headers["content-type"] == "image/webp"


async def test_only_preview_sidecars_are_served_from_the_library(client, world):
    ids = world["ids"]
    for name in ("paper_cut_style.civitai.info", "paper_cut_style.safetensors", "holiday_photo.jpg",
                 "render_0007.txt"):
        assert (await client.get(f"/-/civitai-images/library/{ids[name]}")).status_code == 404, name
    for bad in ("library/999999", "library/x", "library/../images", f"library/{ids['paper_cut_style.preview.png']}/x"):
        assert (await client.get(f"/-/civitai-images/{bad}")).status_code == 404, bad


async def test_a_preview_gone_from_disk_is_not_served(world, tmp_path):
    preview = world["dir"] / "collection/loras/paper_cut_style.preview.png"
    kept = tmp_path / "kept.png"
    preview.rename(kept)
    try:
        ds = make_datasette(world["civitai"], world["library"], world["dump"])
        await ds.invoke_startup()
        url = f"/-/civitai-images/library/{world['ids']['paper_cut_style.preview.png']}"
        assert (await ds.client.get(url)).status_code == 404
    finally:
        kept.rename(preview)
