"""The mirror's model and version pages: a card like Civitai's own, over the demo data and hostile data.

What a visitor sees on /civitai/models/{id} and /civitai/model_versions/{id}: name, creator, type,
base model, tags, stats, the moderation state said plainly, the description as sanitized HTML, the
previews (BlurHash placeholders: never a request to Civitai's image host), versions with files, sizes, every
hash and trained words, and the library's files that match.
"""
from __future__ import annotations

import json
import re

import pytest

from mirror.build import build_mirror
from crawler.site import SITE as CIVITAI
from mirror.model_page import blurhash_png, human_size, sanitize
from mirror.serve import make_datasette
from tests.test_mirror_build import copy_dump
from tests.test_serve_library import build_demo_world

HOSTILE_DESCRIPTIONS = [
    '<script>alert(1)</script>',
    '<img src=x onerror=alert(1)>',
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<a href="&#106;avascript:alert(1)">click</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>',
    '<svg onload=alert(1)><circle r=1></circle></svg>',
    '<iframe src="https://evil.example/"></iframe>',
    '<p style="background:url(https://images.example.org/x.png)" onmouseover="alert(1)">styled</p>',
    '<div><object data="x.swf"></object><embed src="x.swf"></div>',
    '<form action="https://evil.example"><input name=x></form>',
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    '<p>ok</p><!--<script>alert(1)</script>-->',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<img src="https://images.example.org/preview.jpeg">',
    '<base href="https://evil.example/"><link rel=stylesheet href="https://evil.example/x.css">',
]
_DANGER = re.compile(r"<script|<iframe|<svg|<object|<embed|<form|<base|<link|<style|<img|\son\w+\s*=|"
                     r"javascript:|data:text|style=", re.I)


@pytest.mark.parametrize("html", HOSTILE_DESCRIPTIONS)
def test_sanitize_leaves_no_script_handler_or_remote_request(html):
    assert _DANGER.search(str(sanitize(html))) is None, sanitize(html)


def test_sanitize_keeps_the_markup_people_write():
    html = ('<h3>Usage</h3><p>Use <strong>CFG 7</strong> and <em>25 steps</em>:</p>'
            '<ul><li>one</li></ul><a href="https://example.org/guide">guide</a>')
    out = str(sanitize(html))
    assert "<h3>Usage</h3>" in out and "<strong>CFG 7</strong>" in out and "<li>one</li>" in out
    assert 'href="https://example.org/guide"' in out and "noopener" in out


def test_sizes_and_placeholders():
    assert human_size(2_088_000) == "2.0 GB" and human_size(147_500) == "144.0 MB"
    assert human_size(12) == "12 KB" and human_size(None) == "?"
    assert blurhash_png("LEHV6nWB2yk8pyo0adR*.7kCMdnj").startswith("data:image/png;base64,")
    assert blurhash_png("not a hash!") is None and blurhash_png(None) is None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("model-page") / "demo")


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _card(html: str) -> str:
    start = html.index('class="civitai-card')
    return html[start:html.index("<h2>Row</h2>", start)]


async def test_model_page_is_a_card(client):
    html = (await client.get("/civitai/models/110")).text
    card = _card(html)
    text = _text(card)
    for seen in ("Dreamy Mix", "Checkpoint", "pixelfarmer", "SD 1.5", "photorealistic", "330 downloads · 4 likes",
                 "Trained words dreamy", "dreamy_mix_v2.safetensors", "223 KB",
                 "71AE5DF69A7A442131971810B6C7DECC983B07BF8D306A7E4577B9F8F670B202", "CRC32 353AA560",
                 "In your library", "checkpoints/dreamy_mix_v2.safetensors"):
        assert seen in text, seen
    assert "<p>Dreamy Mix is a made-up Checkpoint" in card  # the description as HTML, not escaped
    assert f'href="{CIVITAI}/models/110"' in card
    assert 'href="/civitai/model_versions/1101"' in card and 'href="/library/files/' in card
    assert "images in your library made with it" in text
    assert "/tmp/" not in text  # library paths relative to their scan root
    assert 'class="civitai-blurhash" src="data:image/png;base64,' in card  # no saved copy: a placeholder
    assert not re.search(r'src="https?://', html)  # the page asks no one for anything


@pytest.mark.parametrize("model_id, said", [(120, "Archived"), (220, "Taken down")])
async def test_moderated_models_say_so(client, model_id, said):
    card = _card((await client.get(f"/civitai/models/{model_id}")).text)
    assert said in _text(re.search(r'<p class="civitai-mode">.*?</p>', card).group(0))


async def test_version_page_is_a_card(client):
    card = _card((await client.get("/civitai/model_versions/1101")).text)
    text = _text(card)
    for seen in ("Dreamy Mix: v2", "SD 1.5", "Published 2025-01-12", "Trained words dreamy", "AutoV2 71AE5DF69A",
                 "checkpoints/dreamy_mix_v2.safetensors"):
        assert seen in text, seen
    assert 'href="/civitai/models/110"' in card
    assert f'href="{CIVITAI}/models/110?modelVersionId=1101"' in card


async def test_a_model_the_mirror_lacks_is_a_404(client):
    assert (await client.get("/civitai/models/999999")).status_code == 404


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-card")
    dump = copy_dump(tmp / "dump")
    path = dump / "00000000" / "00000101.json"
    doc = json.loads(path.read_text())
    doc["description"] = "<p>kept</p>" + "".join(HOSTILE_DESCRIPTIONS)
    doc["modelVersions"][0]["description"] = "".join(HOSTILE_DESCRIPTIONS)
    doc["modelVersions"][0]["trainedWords"] = ["<script>alert(1)</script>"]
    path.write_text(json.dumps(doc))
    build_mirror(dump, tmp / "civitai.sqlite")
    return tmp / "civitai.sqlite", dump, doc["modelVersions"][0]["id"]


async def test_hostile_descriptions_are_rendered_harmless(hostile_db):
    db, dump, version_id = hostile_db
    ds = make_datasette(db, None, dump)
    await ds.invoke_startup()
    for page in ("/civitai/models/101", f"/civitai/model_versions/{version_id}"):
        response = await ds.client.get(page)
        assert response.status_code == 200, page
        card = _card(response.text)
        descriptions = re.findall(r'<div class="civitai-description">(.*?)</div>\n', card, re.S)
        assert descriptions and _DANGER.search("".join(descriptions)) is None, page
        assert not re.search(r"<script|\son\w+\s*=|javascript:", card, re.I), page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card  # the trained word, as text
    assert "<p>kept</p>" in _card((await ds.client.get("/civitai/models/101")).text)


async def test_image_rows_show_the_blurhash_and_link_version_and_model(client):
    html = (await client.get("/civitai/images/11010")).text
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="LEHV6nWB', html)
    assert 'href="/civitai/model_versions/1101"' in html and 'href="/civitai/models/110"' in html
    listing = (await client.get("/civitai/images?version_id=1101")).text
    assert listing.count('src="data:image/png;base64,') == 2
