"""A real browser over `civitai-mirror serve`: headless Chromium (Debian's /usr/bin/chromium) driven
by Playwright, against a server started as a subprocess over the demo data.

Opens each page kind (home, models table, a model, a version, images, library overview, a library
file, a LoRA's page, a canned query, the changes an update found), checks what it shows and takes a screenshot of it. Skips when
chromium or the playwright package is absent. The screenshots go to docs/<kind>.png (the README shows
them) only when SAVE_SCREENSHOT=1, so an ordinary run never dirties the checkout; otherwise to the
test's tmp folder, checked to be real, small PNGs either way.
"""
from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from civitai_mirror.samples import sample_models
from tests.fakeapi import FakeCivitai
from tests.test_serve_library import build_demo_world

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MAX_PNG_BYTES = 150_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sync_playwright():
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    return sync_playwright


@contextmanager
def _serving(world: dict[str, Path]) -> Iterator[str]:
    """``civitai-mirror serve`` of a world's mirror, library and dump; yields its base URL."""
    port = _free_port()
    exe = Path(sys.executable).with_name("civitai-mirror")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "civitai_mirror"]
    proc = subprocess.Popen(
        cmd + ["serve", "--db", str(world["civitai"]), "--library", str(world["library"]),
               "--dump", str(world["dump"]), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(base + "/-/versions.json", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("serve did not answer")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, sync_playwright):
    world = build_demo_world(tmp_path_factory.mktemp("browser") / "demo")
    with _serving(world) as base:
        yield base, world


def night_upstream(models: list[dict]) -> list[dict]:
    """The demo's models after a night on Civitai: a model you hold archived, a new version of a
    LoRA you hold, a file's hash changed, a model taken down, a new model; Line Guide answers 404."""
    by_id = {m["id"]: copy.deepcopy(m) for m in models if m["id"] != 180}
    version = copy.deepcopy(by_id[150]["modelVersions"][0])
    version.update(id=1599, name="v2.0", images=[])
    for file in version.get("files") or []:
        file["id"] += 90000
    by_id[150]["modelVersions"].insert(0, version)
    by_id[110]["mode"] = "Archived"
    by_id[230]["modelVersions"][0]["files"][0]["hashes"]["SHA256"] = "C0FFEE" * 10 + "C0FE"
    by_id[250]["mode"] = "TakenDown"
    new = copy.deepcopy(by_id[390])
    new.update(id=410, name="Aurora Ribbons")
    for k, version in enumerate(new["modelVersions"]):
        version.update(id=4100 + k, images=[])
        for file in version.get("files") or []:
            file["id"] += 50000
    by_id[410] = new
    return list(by_id.values())


@pytest.fixture(scope="module")
def updated_server(tmp_path_factory, sync_playwright):
    """The demo world after `update` brought in one night upstream (from the fake API)."""
    world = build_demo_world(tmp_path_factory.mktemp("browser-update") / "demo")
    fake = FakeCivitai().start()
    try:
        fake.add_models(night_upstream(sample_models(world["dir"] / "collection", latest=True)))
        # a process of its own: Playwright's event loop may already run in this thread
        done = subprocess.run([
            sys.executable, "-m", "civitai_mirror", "update", "--dump", str(world["dump"]), "--db",
            str(world["civitai"]), "--library", str(world["library"]), "--api-base", fake.api_base,
            "--retries", "1", "--sleep-retries", "0.01"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        fake.stop()
    with _serving(world) as base:
        yield base, world


@pytest.fixture(scope="module")
def page(sync_playwright, server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists()
                                    else shutil.which("chromium"), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20000)
        yield page
        browser.close()


def _shot(page, name: str, tmp_path: Path, start: str | None = None, height: int = 640) -> None:
    """Screenshot as docs/<name>.png (SAVE_SCREENSHOT=1) or in tmp_path: the page's top, or from
    the element ``start`` down (a table page's row count, past its column descriptions)."""
    folder = DOCS if os.environ.get("SAVE_SCREENSHOT") == "1" else tmp_path
    if start:
        page.locator(start).first.evaluate(
            "el => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 8)")
    _screenshot(page, folder / f"{name}.png", height)
    page.evaluate("window.scrollTo(0, 0)")


def _screenshot(page, target: Path, height: int = 640) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": 1280, "height": height})
    from PIL import Image

    with Image.open(target) as shot:  # a 256-colour PNG keeps the committed file small
        assert shot.size == (1280, height)
        shot.convert("RGB").quantize(colors=256).save(target, optimize=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size <= MAX_PNG_BYTES


def _decoded(locator) -> list[int]:
    """Natural widths of the images (0: not loaded or not decoded)."""
    return locator.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_library_overview_page(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/library/file_overview?kind=media&_sort=path")
    assert page.locator("h1").inner_text().strip() == "Library overview (view)"
    assert "One row per file" in page.locator(".metadata-description").inner_text()
    thumbs = page.locator("img.library-thumb")
    assert thumbs.count() == 9
    # The data: URL thumbnails really decode in the browser.
    widths = thumbs.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 0 for w in widths), widths
    table = page.locator("table.rows-and-columns").inner_text()
    assert "dreamy_mix_v2.png" in table and "AUTOMATIC1111" in table and "DemoCam" in table
    assert "paper_cut_style (0.8): local file, Civitai" in table


def test_file_detail_page_and_links(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/library/file_overview?kind=media&_sort=path")
    # Open the image's own page through its file_id link in the overview row.
    row = page.locator("table.rows-and-columns tbody tr", has_text="checkpoints/dreamy_mix_v2.png")
    row.locator("td.col-file_id a").click()
    page.wait_for_url("**/library/files/*")
    summary = page.locator(".library-file").inner_text()
    assert "checkpoints/dreamy_mix_v2.png" in page.locator(".library-summary h2").inner_text()
    assert "media (png)" in summary
    assert "AUTOMATIC1111" in summary and "DPM++ 2M" in summary and "3141592653" in summary
    assert "a paper cut landscape at dawn, layered hills" in summary
    assert page.locator(".library-thumbnail img").evaluate("i => i.naturalWidth") > 0
    assert page.locator(".library-match").inner_text().startswith("Model")
    _shot(page, "library", tmp_path)
    # LoRA → the local file page, then its Civitai version in the mirror.
    page.locator(".library-loras a", has_text="local file").click()
    page.wait_for_url("**/library/files/*")
    assert "paper_cut_style.safetensors" in page.locator(".library-summary h2").inner_text()
    assert "Paper Cut Style" in page.locator(".library-match").inner_text()
    page.locator(".library-match a", has_text="v1").click()
    page.wait_for_url("**/civitai/model_versions/1301")
    card = page.locator(".civitai-card")
    assert "Paper Cut Style: v1" in card.locator("h1").inner_text()
    assert "paper_cut_style.safetensors" in card.locator(".civitai-library").inner_text()


def test_model_page_card(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/civitai/models/110")
    card = page.locator(".civitai-card")
    assert card.locator("h1").inner_text() == "Dreamy Mix"
    text = card.inner_text()
    assert "pixelfarmer" in text and "SD 1.5" in text and "photorealistic" in text
    assert "Dreamy Mix is a made-up Checkpoint" in card.locator(".civitai-description").first.inner_text()
    assert "dreamy_mix_v2.safetensors" in card.locator(".civitai-files").first.inner_text()
    # the previews not saved locally are BlurHash placeholders drawn here, and they decode
    widths = card.locator("img.civitai-blurhash").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths), widths
    _shot(page, "model", tmp_path)
    card.locator(".civitai-library a", has_text="dreamy_mix_v2.safetensors").click()
    page.wait_for_url("**/library/files/*")
    assert "dreamy_mix_v2.safetensors" in page.locator(".library-summary h2").inner_text()
    page.goto(f"{base}/civitai/models/220")
    assert "Taken down" in page.locator(".civitai-mode").inner_text()


def test_home_page_search(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/")
    assert "30 models" in page.locator(".home-mirror").inner_text()
    assert "Library overview" in page.locator(".home-library").inner_text()
    _shot(page, "home", tmp_path)
    page.locator(".home-search input[type=search]").fill("dreamy")
    page.locator(".home-search input[type=submit]").click()
    page.wait_for_url("**/civitai/models?_search=dreamy*")
    page.locator("table.rows-and-columns td.col-id a").first.click()
    page.wait_for_url("**/civitai/models/110")
    assert page.locator(".civitai-card h1").inner_text() == "Dreamy Mix"


def test_canned_query_page(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/library/held_models_gone")
    assert "Models gone from Civitai that you hold" in page.locator("h1").inner_text()
    table = page.locator("table.rows-and-columns").inner_text()
    assert "line_guide.safetensors" in table and "Line Guide" in table and "gone (404)" in table
    assert "old_realism.ckpt" in table and "Archived" in table
    _shot(page, "query", tmp_path, start="table.rows-and-columns")
    page.locator("table.rows-and-columns td.col-model_id a", has_text="180").click()
    page.wait_for_url("**/civitai/models/180")
    assert "Line Guide" in page.locator("table.rows-and-columns").inner_text()


def test_models_table_page(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/civitai/models")
    assert page.locator("h1").inner_text().strip() == "models"
    assert "30 rows" in page.locator("h3").first.inner_text()
    for facet in ("type", "baseModels", "tags", "mode"):
        assert page.locator(f"#facet-{facet}").is_visible(), facet
    assert "LORA" in page.locator("#facet-type").inner_text()
    table = page.locator("table.rows-and-columns")
    assert "Dreamy Mix" in table.inner_text()
    assert table.locator("th.col-id").count() == 1
    for hidden in ("data", "_source_path", "_snapshots"):  # JSON and bookkeeping: hidden by default
        assert table.locator(f"th.col-{hidden}").count() == 0, hidden
    _shot(page, "models", tmp_path, start="h3", height=860)
    page.locator("#facet-type a", has_text="LORA").click()
    page.wait_for_url("**/civitai/models?*type=LORA*")
    assert "Paper Cut Style" in page.locator("table.rows-and-columns").inner_text()


def test_version_page_card(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/civitai/model_versions/1301")
    card = page.locator(".civitai-card")
    assert "Paper Cut Style: v1" in card.locator("h1").inner_text()
    text = card.inner_text()
    assert "SDXL 1.0" in text and "paper_cut_style.safetensors" in text
    assert "paper_cut_style.safetensors" in card.locator(".civitai-library").inner_text()
    _shot(page, "version", tmp_path)


def test_images_table_page(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/civitai/images")
    assert page.locator("h1").inner_text().strip() == "images"
    assert "Preview images of each version" in page.locator(".metadata-description").inner_text()
    drawn = page.locator("table.rows-and-columns td.col-hash img")  # BlurHash, drawn by the server
    assert drawn.count() > 0 and all(w > 0 for w in _decoded(drawn))
    _shot(page, "images", tmp_path, start="h3")


def test_library_overview_of_model_files(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/library/file_overview?kind=model&_sort=path")
    row = page.locator("table.rows-and-columns tbody tr", has_text="paper_cut_style.safetensors")
    thumb = row.locator("img.library-model-thumb")  # the .preview.png sidecar beside it, served
    assert thumb.get_attribute("src").startswith("/-/civitai-images/library/")
    assert thumb.count() == 1 and _decoded(thumb)[0] > 0
    assert "Paper Cut Style" in row.inner_text() and "SHA256" in row.inner_text()
    _shot(page, "overview", tmp_path, start="table.rows-and-columns")


def test_lora_file_page(page, server, tmp_path):
    base, _ = server
    page.goto(f"{base}/library/file_overview?kind=model&_sort=path")
    row = page.locator("table.rows-and-columns tbody tr", has_text="paper_cut_style.safetensors")
    row.locator("td.col-file_id a").click()
    page.wait_for_url("**/library/files/*")
    summary = page.locator(".library-file")
    assert "loras/paper_cut_style.safetensors" in summary.locator("h2").inner_text()
    assert _decoded(summary.locator("img.library-model-preview"))[0] > 0
    assert summary.locator(".library-trigger-words code").count() > 0
    assert "00001-3141592653.png" in summary.locator(".library-used-by").inner_text()
    _shot(page, "lora", tmp_path)


def test_changes_page_after_an_update(page, updated_server, tmp_path):
    base, _ = updated_server
    page.goto(f"{base}/-/changes")
    assert "Run 1" in page.locator("h2").first.inner_text()
    groups = page.locator("section.changes-group")
    first = groups.first  # what touches your library comes first
    assert "in-library" in first.get_attribute("class")
    held = page.locator("section.changes-group.in-library").all_inner_texts()
    assert any("archived" in g and "Dreamy Mix" in g and "dreamy_mix_v2.safetensors" in g for g in held)
    assert any("new version" in g and "Ink Wash Pony" in g and "v2.0" in g for g in held)
    rest = page.locator("section.changes-group:not(.in-library)").all_inner_texts()
    assert any("taken down" in g and "Soft Grade" in g for g in rest)
    assert any("file hash changed" in g and "C0FFEE" in g for g in rest)
    assert any("new model" in g and "Aurora Ribbons" in g for g in rest)
    _shot(page, "changes", tmp_path, height=760)
    first.locator("a", has_text="Dreamy Mix").click()
    page.wait_for_url("**/civitai/models/110")
    assert "Archived" in page.locator(".civitai-card").inner_text()
