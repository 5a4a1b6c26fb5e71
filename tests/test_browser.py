"""A real browser over `civitai-mirror serve`: headless Chromium (Debian's /usr/bin/chromium) driven
by Playwright, against a server started as a subprocess over the demo data.

Skips when chromium or the playwright package is absent. Saves docs/library.png (a file's page) and
docs/model.png (a model's page; the README shows both) only when SAVE_SCREENSHOT=1, so an ordinary
run never dirties the checkout; otherwise the screenshots go to the test's tmp folder and are checked
to be real PNGs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_serve_library import build_demo_world

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "library.png"
SCREENSHOT_MODEL = REPO / "docs" / "model.png"


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


@pytest.fixture(scope="module")
def server(tmp_path_factory, sync_playwright):
    world = build_demo_world(tmp_path_factory.mktemp("browser") / "demo")
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
        yield base, world
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def _screenshot(page, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), clip={"x": 0, "y": 0, "width": 1280, "height": 640})
    from PIL import Image

    with Image.open(target) as shot:  # a 256-colour PNG keeps the committed file small
        assert shot.size == (1280, 640)
        shot.convert("RGB").quantize(colors=256).save(target, optimize=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    target = SCREENSHOT if os.environ.get("SAVE_SCREENSHOT") == "1" else tmp_path / "library.png"
    _screenshot(page, target)
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
    target = SCREENSHOT_MODEL if os.environ.get("SAVE_SCREENSHOT") == "1" else tmp_path / "model.png"
    _screenshot(page, target)
    card.locator(".civitai-library a", has_text="dreamy_mix_v2.safetensors").click()
    page.wait_for_url("**/library/files/*")
    assert "dreamy_mix_v2.safetensors" in page.locator(".library-summary h2").inner_text()
    page.goto(f"{base}/civitai/models/220")
    assert "Taken down" in page.locator(".civitai-mode").inner_text()


def test_home_page_search(page, server):
    base, _ = server
    page.goto(f"{base}/")
    assert "30 models" in page.locator(".home-mirror").inner_text()
    page.locator(".home-search input[type=search]").fill("dreamy")
    page.locator(".home-search input[type=submit]").click()
    page.wait_for_url("**/civitai/models?_search=dreamy*")
    page.locator("table.rows-and-columns td.col-id a").first.click()
    page.wait_for_url("**/civitai/models/110")
    assert page.locator(".civitai-card h1").inner_text() == "Dreamy Mix"


def test_canned_query_page(page, server):
    base, _ = server
    page.goto(f"{base}/library/held_models_gone")
    assert "Models gone from Civitai that you hold" in page.locator("h1").inner_text()
    table = page.locator("table.rows-and-columns").inner_text()
    assert "line_guide.safetensors" in table and "Line Guide" in table and "gone (404)" in table
    assert "old_realism.ckpt" in table and "Archived" in table
    page.locator("table.rows-and-columns td.col-model_id a", has_text="180").click()
    page.wait_for_url("**/civitai/models/180")
    assert "Line Guide" in page.locator("table.rows-and-columns").inner_text()
