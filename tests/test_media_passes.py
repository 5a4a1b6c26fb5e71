"""Issue 14: the values of the image that was saved. Our own small graphs in the real shapes of ComfyUI's
API prompt (multi-pass chains, several save nodes, a saver node's own infotext) and a web front-end's
JSON, written into real PNGs and read the way ``inspect`` reads them."""
from __future__ import annotations

import json

from civitai_mirror.fixtures import picture, write_png
from matcher.media import extract_comprehensive_metadata

SHA = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


def _base(seed: int = 11) -> dict:
    """Checkpoint -> prompts -> KSampler (seed, 25 steps, from an empty latent) -> VAEDecode (node 8)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/base.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 25, "cfg": 6.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def _read(tmp_path, graph: dict, name: str = "ComfyUI_00001_.png", **text: str) -> dict:
    path = tmp_path / name
    write_png(path, picture((8, 8), (40, 90, 160)), {"prompt": json.dumps(graph), **text})
    return extract_comprehensive_metadata(path)


def test_a_hires_pass_keeps_the_base_seed_and_checkpoint_and_is_listed(tmp_path):
    g = _base()
    g.update({
        "10": {"class_type": "LatentUpscaleBy", "inputs": {"upscale_method": "nearest-exact", "scale_by": 1.5,
                                                          "samples": ["3", 0]}},
        "11": {"class_type": "KSampler", "inputs": {
            "seed": 22, "steps": 12, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "normal", "denoise": 0.45,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["12", 0]}},
    })
    rec = _read(tmp_path, g)
    assert (rec["seed"], rec["steps"], rec["cfg_scale"], rec["sampler"], rec["model_name"]) == (
        11, 25, 6.5, "euler", "sdxl/base.safetensors")
    assert (rec["width"], rec["height"], rec["hires_steps"], rec["hires_denoising"]) == (832, 1216, 12, 0.45)
    (p,) = rec["passes"]
    assert (p["kind"], p["node"], p["seed"], p["steps"], p["denoise"], p["sampler"]) == (
        "upscale", "11", 22, 12, 0.45, "dpmpp_2m")


def test_a_refiner_without_noise_does_not_replace_the_seed(tmp_path):
    g = _base(seed=31337)
    g["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": 31337, "steps": 30, "cfg": 7.0, "sampler_name": "euler",
        "scheduler": "normal", "start_at_step": 0, "end_at_step": 24, "return_with_leftover_noise": "enable",
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}}
    g.update({
        "20": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/refiner.safetensors"}},
        "21": {"class_type": "KSamplerAdvanced", "inputs": {
            "add_noise": "disable", "noise_seed": 0, "steps": 30, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "start_at_step": 24, "end_at_step": 10000, "return_with_leftover_noise": "disable",
            "model": ["20", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["3", 0]}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["20", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "refined", "images": ["22", 0]}},
    })
    del g["8"]
    rec = _read(tmp_path, g, "refined_00001_.png")
    assert (rec["seed"], rec["steps"], rec["model_name"], rec["refiner_model"]) == (
        31337, 30, "sdxl/base.safetensors", "sdxl/refiner.safetensors")
    (p,) = rec["passes"]
    assert (p["kind"], p["adds_noise"], p["seed"], p["model"]) == ("refiner", False, None, "sdxl/refiner.safetensors")


def _two_saves() -> dict:
    """The base image saved as ``base_*``; a FaceDetailer (its own seed) on it saved as ``detailed_*``."""
    g = _base()
    g.update({
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "out/base", "images": ["8", 0]}},
        "30": {"class_type": "FaceDetailer", "inputs": {
            "image": ["8", 0], "model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2], "guide_size": 512,
            "seed": 99, "steps": 20, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 0.4,
            "positive": ["6", 0], "negative": ["7", 0]}},
        "31": {"class_type": "SaveImage", "inputs": {"filename_prefix": "out/detailed_%date:yyyy%", "images": ["30", 0]}},
    })
    return g


def test_the_save_node_named_by_the_file_chooses_the_chain(tmp_path):
    base = _read(tmp_path, _two_saves(), "base_00003_.png")
    assert (base["seed"], base["steps"], base["passes"]) == (11, 25, [])
    detailed = _read(tmp_path, _two_saves(), "detailed_2026_00003_.png")
    assert (detailed["seed"], detailed["steps"]) == (11, 25)
    assert [(p["kind"], p["seed"], p["denoise"]) for p in detailed["passes"]] == [("detailer", 99, 0.4)]
    unnamed = _read(tmp_path, _two_saves(), "renamed.png")  # no prefix matches: the longest chain
    assert (unnamed["seed"], len(unnamed["passes"])) == (11, 1)


SAVER_TEXT = ("a red fox\nNegative prompt: blurry\nSteps: 20, Sampler: euler, CFG scale: 7.0, Seed: 5, "
              "Size: 832x1216, Model hash: 1234567890, Model: other_model, Version: ComfyUI")


def _saver_graph() -> dict:
    g = _base(seed=77)
    g["9"] = {"class_type": "Image Saver", "inputs": {  # comfy-image-saver: its own unconnected widgets
        "images": ["8", 0], "filename": "%time_%seed", "path": "", "extension": "png", "steps": 20, "cfg": 7.0,
        "modelname": "other_model", "sampler_name": "euler", "scheduler": "normal", "positive": "a red fox",
        "negative": "blurry", "seed_value": 5, "width": 832, "height": 1216}}
    return g


def test_a_saver_text_that_contradicts_the_graph_loses_and_says_so(tmp_path):
    rec = _read(tmp_path, _saver_graph(), parameters=SAVER_TEXT)
    assert rec["generation_tool"] == "ComfyUI"
    assert (rec["seed"], rec["steps"], rec["cfg_scale"], rec["model_name"], rec["model_hash_short"]) == (
        77, 25, 6.5, "sdxl/base.safetensors", None)
    assert "seed, steps, cfg_scale, model_name" in rec["params"]["metadata_conflict"]
    assert [r["name"] for r in rec["resources"] if r["kind"] == "checkpoint"] == ["sdxl/base.safetensors"]


def test_a_saver_text_that_agrees_with_the_graph_is_kept(tmp_path):
    g = _saver_graph()
    g["3"]["inputs"].update({"seed": 5, "steps": 20, "cfg": 7.0})
    g["4"]["inputs"]["ckpt_name"] = "other_model.safetensors"
    rec = _read(tmp_path, g, parameters=SAVER_TEXT)
    assert (rec["seed"], rec["steps"], rec["model_name"], rec["model_hash_short"]) == (5, 20, "other_model", "1234567890")
    assert "metadata_conflict" not in rec["params"]


def test_a_web_front_end_json_gives_its_model_and_full_hash(tmp_path):
    space = {"prompt": "1girl, solo", "negative_prompt": "lowres", "resolution": "832 x 1216", "guidance_scale": 7,
             "num_inference_steps": 28, "seed": 123456, "sampler": "Euler a", "Model": "cagliostrolab/animagine-xl-3.1",
             "Model hash": SHA}
    write_png(tmp_path / "space.png", picture(), {"parameters": json.dumps(space)})
    rec = extract_comprehensive_metadata(tmp_path / "space.png")
    assert rec["generation_tool"] == "Diffusers web UI"
    assert (rec["model_name"], rec["model_hash_short"], rec["seed"], rec["steps"], rec["width"]) == (
        "cagliostrolab/animagine-xl-3.1", SHA[:10], 123456, 28, 832)
    assert rec["resources"][0]["hash"] == SHA.upper() and rec["resources"][0]["hash_kind"] == "SHA256"
    nested = {**space, "Model": {"Model": "Animagine XL 3.1", "Model hash": "e3c47aedb0"}}
    del nested["Model hash"]
    write_png(tmp_path / "nested.png", picture(), {"parameters": json.dumps(nested)})
    rec = extract_comprehensive_metadata(tmp_path / "nested.png")
    assert (rec["generation_tool"], rec["model_name"], rec["model_hash_short"]) == (
        "Diffusers web UI", "Animagine XL 3.1", "e3c47aedb0")


def test_the_numpy_blurhash_is_the_reference_encoders():
    import blurhash
    import numpy as np

    from matcher.media.imaging import blurhash_of

    rng = np.random.default_rng(14)
    for h, w in ((32, 32), (1, 1), (7, 32), (32, 5), (19, 23)):
        flat = np.clip(rng.integers(0, 256, 3) + rng.integers(-25, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        for rgb in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), flat):
            assert blurhash_of(rgb) == blurhash.encode(rgb, components_x=4, components_y=3)


def test_extract_writes_every_files_metadata_before_any_thumbnail(tmp_path):
    from matcher.media import extract_library
    from matcher.scan import scan_library
    from matcher.schema import open_library

    root = tmp_path / "lib"
    root.mkdir()
    for i in range(3):
        write_png(root / f"{i}.png", picture((64, 48), (10 * i, 90, 160)), {"parameters": f"a fox\nSteps: 2{i}, Seed: {i}"})
    db = open_library(tmp_path / "library.sqlite")
    scan_library(db, [root])
    seen = []
    summary = extract_library(db, progress=lambda done, total, _p: seen.append(
        db.execute("select count(*), count(blurhash) from media_info").fetchone()))
    assert seen[-1] == (3, 0) and summary["thumbnails"] == 3  # all metadata in, then the pixel pass
    assert db.execute("select count(blurhash), count(thumbnail) from media_info").fetchone() == (3, 3)
    db.execute("update media_info set blurhash = null, thumbnail = null where file_id = 1")  # a stopped pixel pass
    db.conn.commit()
    again = extract_library(db)
    assert (again["unchanged"], again["written"], again["thumbnails"]) == (3, 0, 1)
    assert db.execute("select count(blurhash) from media_info").fetchone() == (3,)
