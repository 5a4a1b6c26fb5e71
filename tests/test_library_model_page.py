"""A LoRA's, embedding's or checkpoint's page in the library: its preview, trigger words and the images
of the library that used it. Over the demo data, through Datasette's own client."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from mirror.serve import make_datasette
from tests.test_serve_library import build_demo_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("library-model") / "demo")


def _file_id(world, name: str) -> int:
    conn = sqlite3.connect(world["library"])
    try:
        return next(i for i, p in conn.execute("SELECT id, path FROM files") if Path(p).name == name)
    finally:
        conn.close()


async def _summary(world, name: str) -> str:
    ds = make_datasette(world["civitai"], world["library"], world["dump"])
    await ds.invoke_startup()
    html = (await ds.client.get(f"/library/files/{_file_id(world, name)}")).text
    return html[html.index('class="library-file"'):html.index("<h2>Raw row</h2>")]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_lora_page_shows_sidecar_preview_trigger_words_and_images(world):
    summary = await _summary(world, "paper_cut_style.safetensors")
    assert re.search(r'<img class="library-model-preview" src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', summary)
    text = _text(summary)
    assert "Trigger words" in text and "Images in your library that used it" in text
    used = re.search(r'<ul class="library-used-by">(.*?)</ul>', summary, re.S).group(1)
    assert "00001-3141592653.png" in used and "(0.8)" in used


async def test_checkpoint_page_lists_the_images_made_with_it(world):
    summary = await _summary(world, "dreamy_mix_v2.safetensors")
    assert "<code>dreamy</code>" in summary  # the matched version's trained words
    assert "outputs/00002-1618033988.png" in summary
    assert "library-model-preview" not in summary  # no sidecar, no saved Civitai preview


async def test_a_model_without_matches_still_has_its_page(world):
    summary = await _summary(world, "mystery_weights.safetensors")
    assert "Trigger words" not in summary and "mystery_weights.safetensors" in summary
