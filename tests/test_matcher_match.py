"""match / pin / unpin of model files over a generated collection and a mirror built from a dump that knows it.

The collection: tiny but real safetensors files (and a .pt embedding), PNG/JPEG images whose
infotexts reference those files' hashes in every way A1111, Civitai and ComfyUI write them, and
orphans. The dump: model JSON in Civitai's shape holding (some of) those hashes, built into
civitai.sqlite by the mirror's own build. The library: the real scan and extraction.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from civitai_mirror.cli import cli
from civitai_mirror.fixtures import (gradient, safetensors_bytes, seeded_bytes, write_jpeg, write_models, write_png,
                                     write_tree)
from matcher.hashing import hash_file
from matcher.match import iter_match_records, match_library
from matcher.pins import pin_file, unpin_file
from matcher.schema import open_library
from mirror.build import build_mirror

# ---- the collection -------------------------------------------------------------------------


def tiny_model(seed: str, n_bytes: int) -> bytes:
    """A LoRA (a seed naming one) or a checkpoint: one F16 tensor of about n_bytes seeded bytes."""
    name = "lora_unet_down_blocks_0.alpha" if "lora" in seed else "model.diffusion_model.out.weight"
    return safetensors_bytes({name: seeded_bytes(seed, n_bytes // 2 * 2)})


MODEL_FILES = {
    # name: (seed, size)
    "ckpt_sha.safetensors": ("ckpt", 4000),
    "lora_v3.safetensors": ("lora-v3", 3000),
    "lora_v2.safetensors": ("lora-v2", 3100),
    "emb_blake.safetensors": ("emb-blake", 1200),
    "crc.safetensors": ("crc", 1500),
    "crc_wrongsize.safetensors": ("crc-wrong", 1600),
    "big_v1.safetensors": ("big-v1", 2 * 1024 * 1024 + 4096),
    "shared.safetensors": ("shared", 2000),
    "unknown_name.safetensors": ("unknown", 2200),
    "mystery.safetensors": ("mystery", 2300),
}


def encode_blurhash(img: Image.Image, x: int, y: int) -> str:
    import blurhash

    return blurhash.encode(np.array(img.convert("RGB")).tolist(), x, y)


def write_collection(root: Path) -> dict[str, dict]:
    files = {name: tiny_model(seed, size) for name, (seed, size) in MODEL_FILES.items()}
    # an A1111 embedding saved as .pt (not safetensors): TI hashes are SHA256[:12] of it
    files["negative.pt"] = b"PK\x03\x04" + seeded_bytes("neg", 3000)
    hashes = {}
    for name, path in write_tree(root / "models", files).items():
        hashes[name] = hash_file(path)
        hashes[name]["size"] = path.stat().st_size
    h = {k: {t: (v or "").lower() for t, v in d.items() if isinstance(v, str)} for k, d in hashes.items()}

    media = root / "media"
    media.mkdir()
    a1111 = ("a cat in a hat\nNegative prompt: negative, blurry\n"
             "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48, "
             f"Model hash: {h['ckpt_sha.safetensors']['AutoV2']}, Model: ckpt_sha, "
             f"Lora hashes: \"lora_v3: {h['lora_v3.safetensors']['AutoV3']}, "
             f"lora_v2: {h['lora_v2.safetensors']['AutoV2']}\", "
             f"TI hashes: \"negative: {h['negative.pt']['SHA256'][:12]}\", Version: v1.10.1")
    write_png(media / "a1111.png", gradient(1), {"parameters": a1111})
    hashes_json = json.dumps({"model": h["ckpt_sha.safetensors"]["AutoV2"],
                              "lora:lora_v2": h["lora_v2.safetensors"]["AutoV2"],
                              "lora:remote": REMOTE_SHA[:10].lower()})
    write_jpeg(media / "hashes.jpeg", gradient(2), "a dog\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 5, Seed: 2, "
               f"Size: 64x48, Model: ckpt_sha, Hashes: {hashes_json}, Version: v1.9.0", quality=92)
    resources = json.dumps([{"type": "checkpoint", "modelVersionId": 1001, "modelName": "Ckpt"},
                            {"type": "lora", "weight": 0.5, "modelVersionId": 2001, "modelName": "V3"}])
    write_jpeg(media / "onsite.jpeg", gradient(3), "a bird\nSteps: 25, Sampler: Euler, CFG scale: 4, Seed: 3, "
               f"Size: 64x48, Civitai resources: {resources}", quality=92)
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "seed": 5, "steps": 20, "cfg": 7,
                                                   "sampler_name": "euler", "scheduler": "normal",
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], "denoise": 1}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "SD15\\ckpt_sha.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "remote_named.safetensors",
                                                      "strength_model": 0.8, "strength_clip": 0.8,
                                                      "model": ["4", 0], "clip": ["4", 1]}},
    }
    write_png(media / "comfy.png", gradient(4), {"prompt": json.dumps(prompt)})
    write_png(media / "empty_hash.png", gradient(5), {
        "parameters": "a tree\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, "
                      "Size: 64x48, Lora hashes: \"empty: e3b0c44298fc\""})
    write_png(media / "orphan_match.png", gradient(6))
    write_png(media / "orphan_none.png", gradient(7))
    write_png(media / "orphan_bytes.png", gradient(8))  # also saved in the dump as a downloaded preview
    write_png(media / "sidecar.png", gradient(9))       # no metadata inside; names in the .txt beside it
    (media / "sidecar.txt").write_text("Prompt: a boat\nUsed model: ckpt_sha.safetensors\n"
                                       "LoRA: lora_v2:0.5, remote_named:0.7\nSeed: 9\n")
    return hashes


REMOTE_SHA = hashlib.sha256(b"remote lora, not held locally").hexdigest().upper()

# ---- the dump -----------------------------------------------------------------------------


def civitai_file(fid: int, name: str, size: int, hashes: dict) -> dict:
    return {"id": fid, "sizeKB": size / 1024, "name": name, "type": "Model",
            "metadata": {"format": "SafeTensor", "fp": "fp16", "size": "pruned"},
            "pickleScanResult": "Success", "virusScanResult": "Success",
            "hashes": hashes, "downloadUrl": f"https://civitai.com/api/download/models/{fid // 10}",
            "primary": True}


def civitai_model(mid: int, name: str, mtype: str, versions: list[dict]) -> dict:
    return {"id": mid, "name": name, "description": "<p>test</p>", "type": mtype, "poi": False, "nsfw": False,
            "nsfwLevel": 1, "allowNoCredit": True, "allowCommercialUse": [], "allowDerivatives": True,
            "allowDifferentLicense": False, "creator": {"username": "tester", "image": None},
            "tags": ["test"], "stats": {"downloadCount": 1, "thumbsUpCount": 0, "thumbsDownCount": 0,
                                        "commentCount": 0, "tippedAmountCount": 0},
            "modelVersions": versions}


def civitai_version(vid: int, name: str, published: str, files: list[dict], images: list[dict] = (),
                    base: str = "SD 1.5") -> dict:
    return {"id": vid, "index": 0, "name": name, "baseModel": base, "baseModelType": "Standard",
            "createdAt": published, "publishedAt": published, "status": "Published",
            "availability": "Public", "nsfwLevel": 1, "trainedWords": [], "files": files,
            "images": list(images), "stats": {"downloadCount": 1, "thumbsUpCount": 0, "thumbsDownCount": 0},
            "downloadUrl": f"https://civitai.com/api/download/models/{vid}"}


def pick(h: dict, *types: str) -> dict:
    return {t: h[t] for t in types if h.get(t)}


def dump_models(hashes: dict) -> list[dict]:
    H = hashes
    blur = encode_blurhash(gradient(6).resize((32, 24)), 5, 4)   # Civitai's encoding of orphan_match.png
    other_blur = encode_blurhash(gradient(99), 4, 3)
    img = {"id": 555001, "url": "https://image.civitai.com/x/555001.jpeg", "nsfwLevel": 1,
           "width": 64, "height": 48, "hash": blur, "type": "image"}
    img2 = {"id": 555002, "url": "https://image.civitai.com/x/555002.jpeg", "nsfwLevel": 1,
            "width": 64, "height": 48, "hash": other_blur, "type": "image"}

    def f(fid, name, types):
        return civitai_file(fid, name, H[name]["size"], pick(H[name], *types))

    all_types = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3")
    return [
        civitai_model(100, "Ckpt Model", "Checkpoint", [civitai_version(
            1001, "v1", "2024-01-01T00:00:00.000Z", [f(10010, "ckpt_sha.safetensors", all_types)], [img, img2])]),
        civitai_model(200, "V3 Lora", "LORA", [civitai_version(
            2001, "v1", "2024-01-01T00:00:00.000Z", [f(20010, "lora_v3.safetensors", ["AutoV3"])],
            [{"id": 555003, "url": "https://image.civitai.com/x/original=true/555003.png", "nsfwLevel": 1,
              "width": 64, "height": 48, "hash": other_blur, "type": "image"}])]),
        civitai_model(300, "V2 Lora", "LORA", [civitai_version(
            3001, "v1", "2024-01-01T00:00:00.000Z", [f(30010, "lora_v2.safetensors", ["AutoV2"])])]),
        civitai_model(400, "Blake Emb", "TextualInversion", [civitai_version(
            4001, "v1", "2024-01-01T00:00:00.000Z", [f(40010, "emb_blake.safetensors", ["BLAKE3"])])]),
        civitai_model(500, "Crc Model", "LORA", [civitai_version(
            5001, "v1", "2024-01-01T00:00:00.000Z", [f(50010, "crc.safetensors", ["CRC32"])])]),
        civitai_model(510, "Crc Wrong Size", "LORA", [civitai_version(
            5101, "v1", "2024-01-01T00:00:00.000Z",
            [civitai_file(51010, "other_name.safetensors", 999_999, pick(H["crc_wrongsize.safetensors"], "CRC32"))])]),
        civitai_model(600, "Big V1", "Checkpoint", [civitai_version(
            6001, "v1", "2023-01-01T00:00:00.000Z", [f(60010, "big_v1.safetensors", ["AutoV1"])])]),
        # the same file in two versions: the earliest published wins, the other is an alternate
        civitai_model(700, "Shared Later", "LORA", [civitai_version(
            7001, "v1", "2024-06-01T00:00:00.000Z", [f(70010, "shared.safetensors", all_types)])]),
        civitai_model(710, "Shared Earlier", "LORA", [civitai_version(
            7101, "v1", "2023-06-01T00:00:00.000Z", [f(71010, "shared.safetensors", all_types)])]),
        # same name and size as unknown_name.safetensors, other hashes: a suggestion only
        civitai_model(800, "Name Alike", "LORA", [civitai_version(
            8001, "v1", "2024-01-01T00:00:00.000Z",
            [civitai_file(80010, "unknown_name.safetensors", H["unknown_name.safetensors"]["size"],
                          {"SHA256": "AB" * 32, "AutoV2": "ABABABABAB"})])]),
        civitai_model(900, "Negative Emb", "TextualInversion", [civitai_version(
            9001, "v1", "2024-01-01T00:00:00.000Z", [f(90010, "negative.pt", ["SHA256", "AutoV2"])])]),
        civitai_model(1200, "Remote Lora", "LORA", [civitai_version(
            1201, "v1", "2024-01-01T00:00:00.000Z",
            [civitai_file(12010, "remote.safetensors", 5000, {"SHA256": REMOTE_SHA, "AutoV2": REMOTE_SHA[:10]})])]),
        civitai_model(1300, "Remote Named", "LORA", [civitai_version(
            1301, "v1", "2024-01-01T00:00:00.000Z",
            [civitai_file(13010, "remote_named.safetensors", 6000, {"SHA256": "CD" * 32})])]),
    ]


def build_library(root: Path, db_path: Path):
    from matcher.scan import scan_library

    db = open_library(db_path)
    scan_library(db, [root])
    try:
        from matcher.media import extract_library
    except ImportError:  # pragma: no cover - until extraction lands
        extract_library = None
    if extract_library is not None:
        extract_library(db)
    return db


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("world")
    root = base / "collection"
    hashes = write_collection(root)
    dump = base / "dump"
    # a downloaded preview in the crawl --images layout: images/<block>/<id>.<ext>
    write_tree(dump, {"images/00550000/555003.png": (root / "media" / "orphan_bytes.png").read_bytes()})
    write_models(dump, dump_models(hashes))
    build_mirror(dump, base / "civitai.sqlite")
    return {"base": base, "root": root, "hashes": hashes, "dump": dump, "civitai": base / "civitai.sqlite"}


@pytest.fixture
def library(world, tmp_path):
    db = build_library(world["root"], tmp_path / "library.sqlite")
    return db, tmp_path / "library.sqlite"


def records(db) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in iter_match_records(db)}


# ---- model files --------------------------------------------------------------------------

EXPECTED_MODELS = {
    "ckpt_sha.safetensors": (1001, "SHA256"),
    "lora_v3.safetensors": (2001, "AutoV3"),
    "lora_v2.safetensors": (3001, "AutoV2"),
    "emb_blake.safetensors": (4001, "BLAKE3"),
    "crc.safetensors": (5001, "CRC32"),
    "crc_wrongsize.safetensors": (None, None),
    "big_v1.safetensors": (6001, "AutoV1"),
    "shared.safetensors": (7101, "SHA256"),
    "unknown_name.safetensors": (None, None),
    "mystery.safetensors": (None, None),
    "negative.pt": (9001, "SHA256"),
}


def test_model_files_match_exactly(world, library):
    db, _ = library
    summary = match_library(db, world["civitai"])
    got = {name: (r["version_id"], r["hash_type"]) for name, r in records(db).items() if r["kind"] == "model"}
    assert got == EXPECTED_MODELS
    assert summary["models"] == len(EXPECTED_MODELS)
    assert summary["models_matched"] == 8
    recs = records(db)
    assert recs["ckpt_sha.safetensors"]["model_id"] == 100
    assert recs["ckpt_sha.safetensors"]["confidence"] == 1.0
    assert recs["ckpt_sha.safetensors"]["model_name"] == "Ckpt Model"
    assert recs["ckpt_sha.safetensors"]["base_model"] == "SD 1.5"
    assert recs["big_v1.safetensors"]["confidence"] < 1.0      # AutoV1 hashes 64 KiB only
    assert recs["shared.safetensors"]["alternates"] == [{"version_id": 7001}]
    row = db.execute("select m.model_type from matches m join files f on f.id = m.file_id "
                     "where f.path like '%lora_v3.safetensors'").fetchone()
    assert row[0] == "LORA"


def test_name_and_size_only_suggest(world, library):
    db, _ = library
    match_library(db, world["civitai"])
    rec = records(db)["unknown_name.safetensors"]
    assert rec["version_id"] is None and rec["model_id"] is None
    assert [s["version_id"] for s in rec["suggestions"]] == [8001]
    assert rec["suggestions"][0]["confidence"] <= 0.5
    assert "name and size" in rec["suggestions"][0]["reason"]
    # a CRC32 hit of another size is neither a match nor a suggestion
    assert records(db)["crc_wrongsize.safetensors"]["suggestions"] == []


def test_enrichment_audit(world, library):
    db, _ = library
    match_library(db, world["civitai"])
    rows = {Path(r[0]).name: r[1:] for r in db.execute(
        "select f.path, e.hash_type, e.lookup_status, e.display_hash, e.source_url from model_enrichment e "
        "join files f on f.id = e.file_id where e.source = 'mirror'")}
    sha = world["hashes"]["ckpt_sha.safetensors"]["SHA256"]
    assert rows["ckpt_sha.safetensors"] == ("SHA256", "matched", sha[:10],
                                            "https://civitai.com/models/100?modelVersionId=1001")
    assert rows["mystery.safetensors"][:2] == ("SHA256", "not_found")


# ---- pins and the command line ------------------------------------------------------------

def test_pin_survives_rerun_and_unpin(world, library):
    db, _ = library
    mystery = world["root"] / "models" / "mystery.safetensors"
    match_library(db, world["civitai"])
    pin_file(db, mystery, 1001, world["civitai"])
    for _ in range(2):
        match_library(db, world["civitai"])
        rec = records(db)["mystery.safetensors"]
        assert (rec["version_id"], rec["pinned"], rec["hash_type"]) == (1001, True, "pin")
        assert rec["model_name"] == "Ckpt Model"
    assert unpin_file(db, mystery) is True
    match_library(db, world["civitai"])
    rec = records(db)["mystery.safetensors"]
    assert (rec["version_id"], rec["pinned"]) == (None, False)
    with pytest.raises(LookupError):
        pin_file(db, world["base"] / "nowhere.safetensors", 1)


def test_cli_match_json_pin_unpin(world, library):
    _, db_path = library
    runner = CliRunner()
    args = ["--db", str(db_path), "--civitai-db", str(world["civitai"])]
    out = runner.invoke(cli, ["match", *args])
    assert out.exit_code == 0, out.output
    assert "Model files: 11, matched 8" in out.output
    out = runner.invoke(cli, ["match", *args, "--json"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert len(lines) == 11 + 9
    for rec in lines:
        assert {"path", "version_id", "model_id", "hash_type", "confidence", "reason", "suggestions"} <= set(rec)
    assert all("resources" in r for r in lines if r["path"].endswith((".png", ".jpeg")))
    mystery = str(world["root"] / "models" / "mystery.safetensors")
    out = runner.invoke(cli, ["pin", mystery, "2001", *args])
    assert out.exit_code == 0 and "V3 Lora" in out.output, out.output
    out = runner.invoke(cli, ["match", *args, "--json"])
    rec = [json.loads(line) for line in out.output.splitlines() if "mystery" in line][0]
    assert rec["version_id"] == 2001 and rec["pinned"] is True
    out = runner.invoke(cli, ["unpin", mystery, "--db", str(db_path)])
    assert out.exit_code == 0 and "Unpinned" in out.output
    out = runner.invoke(cli, ["match", "--db", str(db_path), "--civitai-db", str(world["base"] / "nope.sqlite")])
    assert out.exit_code != 0 and "build" in out.output and "Traceback" not in out.output


# ---- --online against the fake API --------------------------------------------------------



def _private_copy(world, tmp_path) -> tuple[Path, Path]:
    import shutil

    dump = tmp_path / "dump"
    shutil.copytree(world["dump"], dump)
    civitai = tmp_path / "civitai.sqlite"
    build_mirror(dump, civitai)
    return dump, civitai


def test_online_looks_up_unknown_files_and_saves_them(world, library, tmp_path, fake_civitai):
    db, db_path = library
    dump, civitai = _private_copy(world, tmp_path)
    mystery = world["hashes"]["mystery.safetensors"]
    fake_civitai.add_models([civitai_model(1400, "Mystery Online", "LORA", [civitai_version(
        1401, "v1", "2025-01-01T00:00:00.000Z",
        [civitai_file(14010, "mystery.safetensors", mystery["size"], pick(mystery, "SHA256", "AutoV2"))])])])
    runner = CliRunner()
    args = ["match", "--db", str(db_path), "--civitai-db", str(civitai), "--online",
            "--api-base", fake_civitai.api_base, "--dump", str(dump)]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "Online: looked up 3, found 1" in out.output      # mystery, unknown_name, crc_wrongsize
    assert fake_civitai.count("/api/v1/model-versions/by-hash") == 1
    rec = records(db)["mystery.safetensors"]
    assert (rec["version_id"], rec["model_id"], rec["hash_type"]) == (1401, 1400, "SHA256")
    assert "live API" in rec["reason"]
    status = dict(db.execute("select f.path like '%mystery%', e.lookup_status from model_enrichment e "
                             "join files f on f.id = e.file_id where e.source = 'api'").fetchall())
    assert status == {1: "matched", 0: "not_found"}
    # saved in the crawler's dump layout and built into the mirror: the next run finds it offline
    assert json.loads((dump / "00000000" / "00001400.json").read_text())["id"] == 1400
    assert "00001400" in (dump / "downloaded.txt").read_text()
    fake_civitai.reset_counts()
    match_library(db, civitai)
    rec = records(db)["mystery.safetensors"]
    assert (rec["version_id"], rec["hash_type"]) == (1401, "SHA256")
    assert "live API" not in rec["reason"]
    assert fake_civitai.count() == 0


def test_online_network_error_is_audited(world, library, tmp_path, fake_civitai, monkeypatch):
    import matcher.online as online_module

    db, _ = library
    _, civitai = _private_copy(world, tmp_path)
    monkeypatch.setattr(online_module, "ONLINE_CLIENT_OPTIONS", {"retries": 0})
    fake_civitai.script("/api/v1/model-versions/by-hash", [500])
    summary = match_library(db, civitai, online=True, api_base=fake_civitai.api_base)
    assert summary["online_errors"] == 3 and summary["online_found"] == 0
    statuses = {r[0] for r in db.execute("select lookup_status from model_enrichment where source = 'api'")}
    assert statuses == {"error_network"}
    assert records(db)["mystery.safetensors"]["version_id"] is None
