"""The Python API (matcher.api, re-exported lazily by matcher) over real files, a real mirror and library."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import matcher
from civitai_mirror.cli import cli
from civitai_mirror.fixtures import gradient, write_models, write_png
from matcher.hashing import hash_file
from mirror.build import build_mirror
from tests.test_matcher_match import (build_library, civitai_file, civitai_model, civitai_version, encode_blurhash,
                                      tiny_model)

A1111 = ("a cat <lora:add_detail:0.7>\nNegative prompt: blurry\n"
         "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 64x48, Model hash: {autov2}, "
         "Model: ckpt, Version: v1.10.1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    root = base / "collection"
    (root / "models").mkdir(parents=True)
    (root / "media").mkdir()
    ckpt = root / "models" / "ckpt.safetensors"
    ckpt.write_bytes(tiny_model("api-ckpt", 4000))
    h = hash_file(ckpt)
    write_png(root / "media" / "made.png", gradient(1), {"parameters": A1111.format(autov2=h["AutoV2"].lower())})
    write_png(root / "media" / "looks_alike.png", gradient(6))  # a Civitai preview, re-encoded: BlurHash only
    write_png(root / "media" / "same_bytes.png", gradient(8))   # byte-identical to a downloaded preview
    write_png(root / "media" / "unknown.png", gradient(7))
    write_png(root / "media" / "sidecar.png", gradient(9))
    (root / "media" / "sidecar.txt").write_text("Prompt: a boat\nSeed: 9\nUsed model: ckpt.safetensors\n")

    dump = base / "dump"
    (dump / "images" / "00550000").mkdir(parents=True)
    shutil.copy(root / "media" / "same_bytes.png", dump / "images" / "00550000" / "555003.png")
    images = [
        {"id": 555001, "url": "https://image.civitai.com/x/555001.jpeg", "nsfwLevel": 1, "width": 64,
         "height": 48, "hash": encode_blurhash(gradient(6).resize((32, 24)), 5, 4), "type": "image"},
        {"id": 555003, "url": "https://image.civitai.com/x/555003.png", "nsfwLevel": 1, "width": 64,
         "height": 48, "hash": encode_blurhash(gradient(99), 4, 3), "type": "image"},
    ]
    model = civitai_model(100, "Api Ckpt", "Checkpoint", [civitai_version(
        1001, "v1", "2024-01-01T00:00:00.000Z",
        [civitai_file(10010, "ckpt.safetensors", ckpt.stat().st_size, {"SHA256": h["SHA256"], "AutoV2": h["AutoV2"]})],
        images, base="SDXL 1.0")])
    write_models(dump, [model])
    build_mirror(dump, base / "civitai.sqlite")
    return {"root": root, "media": root / "media", "civitai": base / "civitai.sqlite"}


def test_import_matcher_is_cheap_and_the_api_is_exported():
    code = ("import sys, matcher; heavy = [m for m in sys.modules if m.startswith(('matcher.', 'PIL', "
            "'sqlite_utils', 'numpy'))]; print(heavy); from matcher import extract_comprehensive_metadata, "
            "find_metadata_text_file, cross_reference_with_civitai, process_orphaned_media; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "ok"]
    for name in matcher.__all__:
        function = getattr(matcher, name)
        assert function.__module__ == "matcher.api"
        assert "Example::" in function.__doc__ and "from matcher import" in function.__doc__
    with pytest.raises(AttributeError):
        matcher.not_a_function  # noqa: B018


def test_extract_comprehensive_metadata_is_what_inspect_prints(world):
    path = world["media"] / "made.png"
    rec = matcher.extract_comprehensive_metadata(path)
    assert rec["generation_tool"] and rec["seed"] == 1234 and rec["steps"] == 20
    assert [l["name"] for l in rec["loras"]] == ["add_detail"]
    assert rec["image_width"] == 64 and rec["blurhash"]
    result = CliRunner().invoke(cli, ["inspect", "--pixels", "--json", str(path)])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(rec))
    broken = world["media"].parent / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert matcher.extract_comprehensive_metadata(broken)["error"]        # reported, not raised


def test_find_metadata_text_file(world):
    assert matcher.find_metadata_text_file(world["media"] / "sidecar.png") == world["media"] / "sidecar.txt"
    assert matcher.find_metadata_text_file(world["media"] / "made.png") is None
    assert matcher.extract_comprehensive_metadata(world["media"] / "sidecar.png")["seed"] == 9


def test_cross_reference_with_civitai(world):
    def info(name):
        rec = matcher.extract_comprehensive_metadata(world["media"] / name)
        return rec["blurhash"], {"width": rec["image_width"], "height": rec["image_height"]}

    blur, size = info("looks_alike.png")
    hit = matcher.cross_reference_with_civitai(None, blur, world["civitai"], **size)
    assert (hit["image_id"], hit["version_id"], hit["model_id"], hit["method"]) == (555001, 1001, 100, "blurhash")
    assert hit["confidence"] < 0.9
    path = world["media"] / "same_bytes.png"
    sha = hash_file(path, want={"SHA256"})["SHA256"]
    hit = matcher.cross_reference_with_civitai(sha, None, str(world["civitai"]), size=path.stat().st_size, **size)
    assert (hit["image_id"], hit["method"], hit["confidence"]) == (555003, "sha256", 0.9)
    blur, size = info("unknown.png")
    assert matcher.cross_reference_with_civitai(None, blur, world["civitai"], **size) is None
    missing = world["root"] / "nope.sqlite"
    with pytest.raises(FileNotFoundError):
        matcher.cross_reference_with_civitai(sha, blur, missing)
    assert not missing.exists()


@pytest.fixture
def library(world, tmp_path):
    db_path = tmp_path / "library.sqlite"
    build_library(world["root"], db_path)
    return db_path


def match_rows(db_path: Path) -> dict[str, dict]:
    con = sqlite3.connect(db_path)
    con.row_factory = sqlite3.Row
    rows = {Path(r["path"]).name: dict(r) for r in con.execute(
        "select f.path, m.* from matches m join files f on f.id = m.file_id")}
    con.close()
    for r in rows.values():
        r.pop("_matched_at")
    return rows


def test_process_orphaned_media_dry_run_writes_nothing(world, library, tmp_path):
    media = world["media"]
    files = [media / "looks_alike.png", media / "unknown.png", media / "gone.png"]
    got = matcher.process_orphaned_media(files, dry_run=True, civitai_db_path=world["civitai"],
                                         library_db_path=library)
    assert [r["status"] for r in got] == ["found", "not_found", "missing"]
    assert got[0]["version_id"] == 1001 and got[0]["civitai_image_id"] == 555001 and got[0]["method"] == "blurhash"
    assert got[0]["model_name"] == "Api Ckpt" and got[0]["file_id"] is not None
    assert not any(r["recorded"] for r in got)
    assert match_rows(library) == {}


def test_process_orphaned_media_records_what_match_would(world, library, tmp_path):
    from matcher.match import match_library
    from matcher.schema import open_library

    media = world["media"]
    outside = tmp_path / "elsewhere" / "copy.png"
    outside.parent.mkdir()
    shutil.copy(media / "looks_alike.png", outside)
    got = matcher.process_orphaned_media(
        [media / "looks_alike.png", media / "same_bytes.png", media / "unknown.png", outside],
        civitai_db_path=world["civitai"], library_db_path=library)
    assert [(r["status"], r["recorded"]) for r in got] == [
        ("found", True), ("found", True), ("not_found", False), ("found", False)]
    assert got[3]["file_id"] is None and got[3]["civitai_image_id"] == 555001
    recorded = match_rows(library)
    assert set(recorded) == {"looks_alike.png", "same_bytes.png"}
    # the same rows `civitai-mirror match` writes for these orphans
    db = open_library(library)
    match_library(db, str(world["civitai"]))
    after_match = match_rows(library)
    for name in recorded:
        assert recorded[name] == after_match[name]
    # made.png has its checkpoint resolved by hash: a confident match, not an orphan
    again = matcher.process_orphaned_media([media / "made.png"], civitai_db_path=world["civitai"],
                                           library_db_path=library, dest=tmp_path / "sorted")
    assert again[0]["status"] == "matched" and again[0]["confidence"] == 1.0 and not again[0]["recorded"]
    assert again[0]["destination"] and again[0]["destination"].startswith(str(tmp_path / "sorted"))


def test_process_orphaned_media_with_dest_shows_the_sorters_plan_and_moves_nothing(world, library, tmp_path):
    media = world["media"]
    dest = tmp_path / "sorted"
    got = matcher.process_orphaned_media([media / "same_bytes.png", media / "looks_alike.png"],
                                         civitai_db_path=world["civitai"], library_db_path=library, dest=dest)
    by_name = {Path(r["path"]).name: r for r in got}
    same = by_name["same_bytes.png"]
    assert same["confidence"] == 0.9 and "SDXL1.0" in same["destination"] and same["ignored_reason"] is None
    alike = by_name["looks_alike.png"]
    assert alike["destination"] is None and alike["ignored_reason"]
    assert (media / "same_bytes.png").exists() and not dest.exists()
