"""config.ini [derived] fields evaluated by `civitai-mirror match` after enrichment, stored in derived_fields.

A small real world: safetensors files and PNG images with A1111 infotexts, scanned and extracted
into library.sqlite by the real scan/extract, a mirror built from a dump in Civitai's shape, and
`civitai-mirror match --config config.ini` run through the CLI.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.fixtures import gradient, write_models, write_png
from matcher.hashing import hash_file
from mirror.build import build_mirror
from tests.test_matcher_match import build_library, civitai_file, civitai_model, civitai_version, tiny_model

MODELS = {  # file name: (seed, size, Civitai model id, version id, type, baseModel)
    "xl_lora.safetensors": ("xl-lora", 3000, 10, 101, "LORA", "SDXL 1.0"),
    "ckpt15.safetensors": ("ckpt15", 4000, 20, 201, "Checkpoint", "SD 1.5"),
    "ckptxl.safetensors": ("ckptxl", 4100, 30, 301, "Checkpoint", "SDXL 1.0"),
    "unknown.safetensors": ("unknown", 2000, None, None, None, None),
}

CONFIG = '''[DEFAULT]
verbose = false

[derived]
is_sdxl = base_model == "SDXL 1.0"
lora_count = len(loras)
heavy = lora_count >= 2
style = lower(coalesce(civitai_model_name, model_name, "unknown"))
detail_weight = float(regex("<lora:detail:([0-9.]+)>", prompt, 1))
evil = __import__("os").system("touch PWNED")
evil2 = __import__("os")
walk = ().__class__.__bases__[0].__subclasses__()
huge = 9**9**9
after = lora_count + 1
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("derived")
    root = base / "collection"
    (root / "models").mkdir(parents=True)
    (root / "media").mkdir()
    hashes = {}
    for name, (seed, size, *_rest) in MODELS.items():
        path = root / "models" / name
        path.write_bytes(tiny_model(seed, size))
        hashes[name] = hash_file(path)
        hashes[name]["size"] = path.stat().st_size
    h15, hxl = hashes["ckpt15.safetensors"], hashes["ckptxl.safetensors"]
    write_png(root / "media" / "sd15.png", gradient(1), {"parameters": (
        "a cat <lora:xl_lora:0.8> <lora:detail:0.5>\nNegative prompt: blurry\n"
        f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48, Model hash: {h15['AutoV2'].lower()}, "
        "Model: ckpt15, Version: v1.10.1")})
    write_png(root / "media" / "xl.png", gradient(2), {"parameters": (
        "a dog <lora:xl_lora:1>\nSteps: 30, Sampler: Euler, CFG scale: 5, Seed: 2, Size: 64x48, "
        f"Model hash: {hxl['AutoV2'].lower()}, Model: ckptxl, Version: v1.10.1")})
    write_png(root / "media" / "orphan.png", gradient(3))
    models = []
    for name, (_seed, _size, mid, vid, mtype, base_model) in MODELS.items():
        if mid is None:
            continue
        files = [civitai_file(vid * 10, name, hashes[name]["size"],
                              {"SHA256": hashes[name]["SHA256"], "AutoV2": hashes[name]["AutoV2"]})]
        models.append(civitai_model(mid, name.split(".")[0].upper() + " Model", mtype, [civitai_version(
            vid, "v1", "2024-01-01T00:00:00.000Z", files, base=base_model)]))
    dump = base / "dump"
    write_models(dump, models)
    build_mirror(dump, base / "civitai.sqlite")
    return {"base": base, "root": root, "civitai": base / "civitai.sqlite"}


@pytest.fixture
def lib(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIVITAI_MIRROR_CONFIG", raising=False)
    db_path = tmp_path / "library.sqlite"
    build_library(world["root"], db_path)
    (tmp_path / "config.ini").write_text(CONFIG)
    return tmp_path, db_path


def run_match(db_path: Path, civitai: Path, *args: str):
    result = CliRunner().invoke(
        cli, ["match", "--db", str(db_path), "--civitai-db", str(civitai), *args])
    return result


def derived(db_path: Path) -> dict[str, dict[str, tuple]]:
    con = sqlite3.connect(db_path)
    out: dict[str, dict[str, tuple]] = {}
    for path, name, value, error in con.execute(
            "select f.path, d.name, d.value, d.error from derived_fields d join files f on f.id = d.file_id"):
        out.setdefault(Path(path).name, {})[name] = (value, error)
    con.close()
    return out


def values(db_path: Path) -> dict[str, dict]:
    return {f: {n: v for n, (v, e) in row.items() if e is None} for f, row in derived(db_path).items()}


def test_readme_example_fields_are_stored_per_file(world, lib):
    tmp, db_path = lib
    result = run_match(db_path, world["civitai"], "--config", str(tmp / "config.ini"))
    assert result.exit_code == 0, result.output + result.stderr
    got = values(db_path)
    # is_sdxl = base_model == "SDXL 1.0": Civitai's baseModel, for model files and for images (their checkpoint's)
    assert got["xl_lora.safetensors"]["is_sdxl"] == 1
    assert got["ckpt15.safetensors"]["is_sdxl"] == 0
    assert got["xl.png"]["is_sdxl"] == 1
    assert got["sd15.png"]["is_sdxl"] == 0
    assert got["unknown.safetensors"]["is_sdxl"] == 0     # no match: the scan's detection (not SDXL 1.0)
    # lora_count = len(loras): the parsed record's LoRAs
    assert got["sd15.png"]["lora_count"] == 2
    assert got["xl.png"]["lora_count"] == 1
    assert got["orphan.png"]["lora_count"] == 0
    assert got["ckpt15.safetensors"]["lora_count"] == 0
    # earlier derived fields are names for later ones
    assert got["sd15.png"]["heavy"] == 1 and got["xl.png"]["heavy"] == 0
    assert got["sd15.png"]["after"] == 3
    # Civitai enrichment first, then the generation record's model name
    assert got["xl_lora.safetensors"]["style"] == "xl_lora model"
    assert got["sd15.png"]["style"] == "ckpt15 model"
    assert got["unknown.safetensors"]["style"] == "unknown"
    assert got["sd15.png"]["detail_weight"] == 0.5


def test_hostile_and_failing_expressions_store_nothing_and_the_run_goes_on(world, lib):
    tmp, db_path = lib
    result = run_match(db_path, world["civitai"])          # ./config.ini is found by default
    assert result.exit_code == 0, result.output + result.stderr
    assert not (tmp / "PWNED").exists()
    got = derived(db_path)
    assert len(got) == 7                                     # every model file and image
    for name in ("evil", "evil2", "walk", "huge"):
        assert all(name not in row for row in got.values()), name
        assert f"derived field {name}: failed for 7 file(s), nothing stored" in result.stderr
    # detail_weight fails where there is no such LoRA (float(None)): no row there, a value elsewhere
    assert "detail_weight" not in got["xl.png"] and "detail_weight" in got["sd15.png"]
    assert all("after" in row for row in got.values())
    assert "Derived fields: 10 over 7 files" in result.output


def test_debug_stores_error_markers(world, lib):
    tmp, db_path = lib
    result = run_match(db_path, world["civitai"], "--debug")
    assert result.exit_code == 0, result.output + result.stderr
    got = derived(db_path)
    value, error = got["sd15.png"]["evil"]
    assert value is None and "not allowed" in error
    assert "__import__" in got["sd15.png"]["evil2"][1]
    assert got["sd15.png"]["walk"][1] and "exponent" in got["sd15.png"]["huge"][1]
    assert got["sd15.png"]["lora_count"] == (2, None)
    # without --debug again, the markers go away
    run_match(db_path, world["civitai"])
    assert "evil" not in derived(db_path)["sd15.png"]


def test_rerun_writes_nothing_and_config_changes_are_followed(world, lib):
    tmp, db_path = lib
    assert run_match(db_path, world["civitai"]).exit_code == 0
    con = sqlite3.connect(db_path)
    con.execute("update derived_fields set _updated_at = 'sentinel'")
    con.commit()
    before = con.execute("select count(*) from derived_fields").fetchone()[0]
    result = run_match(db_path, world["civitai"])
    assert result.exit_code == 0
    assert "0 rows written, 0 removed" in result.output
    assert con.execute("select count(*) from derived_fields where _updated_at != 'sentinel'").fetchone()[0] == 0
    assert con.execute("select count(*) from derived_fields").fetchone()[0] == before
    # change one expression and drop the others: one field rewritten, the dropped ones removed
    (tmp / "config.ini").write_text('[derived]\nlora_count = len(loras) * 10\n')
    result = run_match(db_path, world["civitai"])
    assert result.exit_code == 0
    assert {n for row in derived(db_path).values() for n in row} == {"lora_count"}
    assert values(db_path)["sd15.png"]["lora_count"] == 20
    assert "0 rows written" not in result.output
    con.close()


def test_a_bad_field_name_is_a_one_line_error(world, lib):
    tmp, db_path = lib
    (tmp / "config.ini").write_text("[derived]\nlen = 1\n")
    result = run_match(db_path, world["civitai"])
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert "[derived]" in result.stderr and "len" in result.stderr


def test_record_holds_the_documented_names(world, lib):
    from matcher.derived import iter_derived_records
    from matcher.match import match_library
    from matcher.schema import open_library

    tmp, db_path = lib
    db = open_library(db_path)
    match_library(db, str(world["civitai"]))
    recs = {Path(r["path"]).name: r for _, r in iter_derived_records(db)}
    img = recs["sd15.png"]
    assert img["civitai_model_name"] == "CKPT15 Model" and img["civitai_base_model"] == "SD 1.5"
    assert img["civitai_type"] == "Checkpoint" and img["version_id"] == 201
    assert img["model_name"] == "ckpt15" and img["steps"] == 20 and img["seed"] == 1
    assert img["prompt"].startswith("a cat <lora:xl_lora:0.8>") and img["negative_prompt"] == "blurry"
    assert [l["name"] for l in img["loras"]] == ["xl_lora", "detail"]
    assert img["resources"][0]["kind"] == "checkpoint" and img["resources"][0]["version_id"] == 201
    assert img["kind"] == "media" and img["sha256"] and img["blurhash"]
    model = recs["xl_lora.safetensors"]
    assert model["kind"] == "model" and model["base_model"] == "SDXL 1.0" and model["civitai_type"] == "LORA"
    assert model["file_model_type"] == "lora" and model["loras"] == [] and model["prompt"] is None
    assert json.dumps(model, default=str)                          # plain data only


def test_config_default_type_folders_are_issue_6s():
    from matcher.config import Config
    from matcher.config import DEFAULT_TYPE_FOLDERS
    from matcher.plan import type_folders

    assert set(Config().model_type_folders.values()) == {
        "checkpoints", "loras", "embeddings", "hypernetworks", "controlnet", "vae", "upscalers", "other"}
    assert type_folders(Config()) == DEFAULT_TYPE_FOLDERS
