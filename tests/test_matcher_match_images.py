"""match of images: resources resolved to versions and local files, orphans by the same bytes or BlurHash.

The world (collection, dump, mirror, library) is test_matcher_match's.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from civitai_mirror.fixtures import gradient
from matcher.match import match_library
from matcher.orphans import blurhash_components, blurhash_distance, cross_reference_with_civitai
from tests.test_matcher_match import encode_blurhash, library, records, world  # noqa: F401 (fixtures)


# ---- images -------------------------------------------------------------------------------

def test_images_resolve_resources_to_versions_and_local_files(world, library):
    db, _ = library
    summary = match_library(db, world["civitai"])
    recs = records(db)
    models = world["root"] / "models"

    def res(name):
        return {(r["kind"], r["version_id"], Path(r["local_path"]).name if r["local_path"] else None)
                for r in recs[name]["resources"]}

    assert recs["a1111.png"]["version_id"] == 1001 and recs["a1111.png"]["model_id"] == 100
    assert res("a1111.png") == {("checkpoint", 1001, "ckpt_sha.safetensors"),
                                ("lora", 2001, "lora_v3.safetensors"),
                                ("lora", 3001, "lora_v2.safetensors"),
                                ("embedding", 9001, "negative.pt")}
    assert recs["hashes.jpeg"]["version_id"] == 1001
    assert ("lora", 1201, None) in res("hashes.jpeg")             # known to the mirror, not held
    assert ("lora", 3001, "lora_v2.safetensors") in res("hashes.jpeg")
    assert recs["onsite.jpeg"]["version_id"] == 1001
    assert res("onsite.jpeg") == {("checkpoint", 1001, "ckpt_sha.safetensors"), ("lora", 2001, "lora_v3.safetensors")}
    assert recs["comfy.png"]["version_id"] == 1001                # by local file name, then its hash
    assert ("lora", 1301, None) in res("comfy.png")                # by model_files.name
    assert recs["empty_hash.png"]["version_id"] is None
    assert all(r["version_id"] is None for r in recs["empty_hash.png"]["resources"])
    assert str(models / "ckpt_sha.safetensors") == [r for r in recs["a1111.png"]["resources"]
                                                   if r["kind"] == "checkpoint"][0]["local_path"]
    # sidecar `Used model:` / `LoRA:` names, with and without extension
    assert recs["sidecar.png"]["version_id"] == 1001
    assert res("sidecar.png") == {("checkpoint", 1001, "ckpt_sha.safetensors"),
                                  ("lora", 3001, "lora_v2.safetensors"), ("lora", 1301, None)}
    by_name = {r["name"]: r for r in recs["sidecar.png"]["resources"]}
    assert by_name["lora_v2"]["hash_type"] == "local_name" and by_name["remote_named"]["hash_type"] == "name"
    assert summary["images"] == 9


def test_orphans_near_match_by_blurhash_with_low_confidence(world, library):
    db, _ = library
    match_library(db, world["civitai"])
    recs = records(db)
    hit = recs["orphan_match.png"]
    assert (hit["version_id"], hit["model_id"], hit["hash_type"]) == (1001, 100, "blurhash")
    assert hit["civitai_image_id"] == 555001
    assert hit["confidence"] < 0.5 and "low confidence" in hit["reason"]
    assert recs["orphan_none.png"]["version_id"] is None
    same = recs["orphan_bytes.png"]
    assert (same["version_id"], same["hash_type"], same["civitai_image_id"]) == (2001, "sha256", 555003)
    assert "SHA256" in same["reason"] and same["confidence"] < 1.0


def test_cross_reference_with_civitai(world):
    near = encode_blurhash(gradient(6), 4, 3)
    got = cross_reference_with_civitai(None, near, world["civitai"])
    assert got["image_id"] == 555001 and got["version_id"] == 1001 and got["method"] == "blurhash"
    assert cross_reference_with_civitai(None, encode_blurhash(gradient(7), 4, 3), world["civitai"]) is None
    assert cross_reference_with_civitai(None, None, world["civitai"]) is None


def test_blurhash_distance():
    img = gradient(11)
    a, b = encode_blurhash(img, 4, 3), encode_blurhash(img.resize((32, 24)), 5, 4)
    assert blurhash_distance(a, b) < 0.01
    assert blurhash_distance(a, encode_blurhash(gradient(12), 4, 3)) > 0.02
    assert len(blurhash_components(b)) == 20
    with pytest.raises(ValueError):
        blurhash_components("LEHV6n")
