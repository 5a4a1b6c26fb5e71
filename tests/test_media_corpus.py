"""Every file of the shared real-world corpus: parsed values against the source's own tests and against
EXPECTED.md, with overrides only where we verified the raw metadata by hand (noted per file)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from matcher.media import extract_comprehensive_metadata

MEDIA_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}

#: values verified by reading the raw graph, where EXPECTED.md shows an unresolved link or lists every loader
VERIFIED = {
    # two passes; the base pass is SamplerCustom 1907 (seed 8871, GITSScheduler steps 15, cfg 3.5) whose
    # model comes through "Uncond Zero" 1911 from PixArtCheckpointLoader 1667
    "Ktiseos-Nyx__Dataset-Tools/comfyui_json_usercomment_ifd0_TIPO.jpeg": {
        "model": "2025-03-04_07-24-12-save-580600-200-0.safetensors", "seed": 8871, "steps": 15,
        "sampler": None, "scheduler": None, "cfg": 3.5},
    # seven save nodes; the longest chains (save 41: KSamplerAdvanced 76 -> LatentUpscaleBy -> 39) start at
    # base pass 76 (noise_seed 83177023015004, 45 steps, model from Power Lora Loader 27 <- checkpoint 4);
    # 39 continues the upscaled latent from step 15 and is a pass of its own, not the base (issue 14: until
    # then the final pass's seed 714707219972545 and checkpoint tPonynai3_v65 were reported)
    "Ktiseos-Nyx__Dataset-Tools/comfyui_rgthree_power_lora_secret_chunk_bird1.png": {
        "model": "Illustrious/novaFurryXL_illustriousV7b.safetensors", "seed": 83177023015004, "steps": 45,
        "sampler": "euler_ancestral", "scheduler": "karras", "cfg": 6.0},
    # SamplerCustom with SDTurboScheduler(steps=1) and KSamplerSelect(euler_ancestral)
    "comfyanonymous__ComfyUI_examples/sdturbo/sdxlturbo_example.png": {
        "model": "sd_xl_turbo_1.0_fp16.safetensors", "seed": 0, "steps": 1, "sampler": "euler_ancestral",
        "scheduler": None, "cfg": 1.0},
    # KSamplerAdvanced 58 (add_noise disabled) continues a composite of four samplers; the hires pass 24
    # after it is the first pass of the chain that adds noise
    "d3x-at__sd-parsers/resources/parsers/ComfyUI/noisy_latents_3_subjects_cropped.png": {
        "model": "Anything-V3.0.ckpt", "seed": 1084614416978598, "steps": 9, "sampler": "sample_dpmpp_sde",
        "scheduler": "simple", "cfg": 5.5},
    # Dream string: -s 50 -S 2980747362 -C 5 -A k_lms (no model in the string)
    "d3x-at__sd-parsers/resources/parsers/InvokeAI/invokeai_dream1.png": {
        "model": None, "seed": 2980747362, "steps": 50, "sampler": "k_lms", "cfg": 5.0},
}


def _table_rows(md: Path) -> dict[str, dict[str, str]]:
    lines = md.read_text(encoding="utf-8").splitlines()
    header = next(l for l in lines if l.startswith("| file"))
    cols = [c.strip() for c in header.strip().strip("|").split("|")]
    rows = {}
    for line in lines:
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            row = dict(zip(cols, cells))
            rows[row["file"].strip("`")] = row
    return rows


def _expected(directory: Path) -> dict[str, dict]:
    out = {}
    exp = json.loads((directory / "expected.json").read_text(encoding="utf-8"))["files"]
    for name, row in _table_rows(directory / "EXPECTED.md").items():
        key = f"{directory.name}/{name}"
        e: dict = {"generator": row["generator"]}
        if not row["generator"].startswith("none"):
            e["model"] = row["model"] or None
            e["seed"] = row["seed"] or None
            e["steps"] = row["steps"] or None
            sampler, _, sched = row["sampler"].partition(" / ")
            e["sampler"] = sampler.strip() or None
            e["scheduler"] = sched.strip() or None
            e["cfg"] = row["cfg"] or None
        src = (exp.get(name) or {}).get("expected_from_source_tests")
        e["source"] = src.get("expected") if isinstance(src, dict) else None
        out[key] = e
    return out


def _all_expected(shared: Path) -> dict[str, dict]:
    out = {}
    for md in sorted((shared / "corpus").glob("*/EXPECTED.md")):
        out.update(_expected(md.parent))
    return out


def _model_ok(got: dict, want: str) -> bool:
    name = got.get("model_name")
    if name is None:
        return False
    full = f"{name} {got.get('model_hash_short')}" if got.get("model_hash_short") else name
    if want.endswith("…"):
        return any(x.startswith(want[:-1]) or want[:-1].startswith(x) for x in (name, full)) or \
            name in want or name.split("/")[-1] in want
    return want in (name, full) or name in [w.strip() for w in want.split(",")]


def _score_file(got: dict, want: dict) -> tuple[int, list[str], list[str]]:
    """-> (right, wrong, missing) over model, seed, steps, sampler, cfg."""
    right, wrong, missing = 0, [], []

    def check(field: str, ok: bool, value) -> None:
        nonlocal right
        if ok:
            right += 1
        elif value is None:
            missing.append(field)
        else:
            wrong.append(f"{field}: got {value!r}, want {want[field]!r}")

    if want.get("model"):
        check("model", _model_ok(got, want["model"]), got.get("model_name"))
    if want.get("seed") is not None and re.fullmatch(r"-?\d+", str(want["seed"])):
        check("seed", got.get("seed") == int(want["seed"]), got.get("seed"))
    if want.get("steps") is not None and re.fullmatch(r"\d+", str(want["steps"])):
        check("steps", got.get("steps") == int(want["steps"]), got.get("steps"))
    if want.get("sampler"):
        ok = got.get("sampler") == want["sampler"] and (not want.get("scheduler") or got.get("scheduler") == want["scheduler"])
        check("sampler", ok, got.get("sampler"))
    if want.get("cfg") is not None and re.fullmatch(r"[\d.]+", str(want["cfg"])):
        check("cfg", got.get("cfg_scale") == float(want["cfg"]), got.get("cfg_scale"))
    return right, wrong, missing


def _apply_source(want: dict, src: dict) -> dict:
    """expected_from_source_tests wins over the EXPECTED.md table."""
    w = dict(want)
    if not isinstance(src, dict):
        return w
    sampling = src.get("sampling") if isinstance(src.get("sampling"), dict) else {}
    model = src.get("model")
    if isinstance(model, dict) and model.get("name"):
        w["model"] = model["name"]
    for key, field in (("seed", "seed"), ("steps", "steps"), ("cfg", "cfg"), ("sampler", "sampler"),
                       ("scheduler", "scheduler")):
        if sampling.get(key) is not None:
            w[field] = sampling[key]
    for key, field in (("seed", "seed"), ("steps", "steps"), ("cfg_scale", "cfg"), ("sampler", "sampler"),
                       ("scheduler", "scheduler")):
        if key in src and not isinstance(src[key], dict) and src[key] not in (None, "present", "numeric"):
            w[field] = src[key]
    return w


@pytest.fixture(scope="module")
def corpus(request):
    shared = Path(__file__).resolve().parent.parent.parent / "shared"
    if not (shared / "corpus").is_dir():
        pytest.skip("../shared is not beside this clone")
    files = sorted(p for p in (shared / "corpus").rglob("*") if p.is_file() and
                   (p.suffix.lower() in MEDIA_SUFFIXES) and "_tools" not in p.parts)
    results = {str(p.relative_to(shared / "corpus")): extract_comprehensive_metadata(p) for p in files}
    return shared, results


def test_corpus_scores_meet_the_goal(corpus, shared_dir):
    shared, results = corpus
    expected = _all_expected(shared)
    parsed = right = total = 0
    wrong_all, missing_all = [], []
    for key, want in expected.items():
        got = results[key]
        if want["generator"].startswith("none"):
            assert got["no_metadata"], f"{key}: false positive {got.get('generation_tool')}"
            continue
        assert not got["no_metadata"], f"{key}: not parsed ({got.get('error')})"
        parsed += 1
        w = _apply_source(want, want["source"])
        w.update(VERIFIED.get(key, {}))
        r, wrong, missing = _score_file(got, w)
        right += r
        total += r + len(wrong) + len(missing)
        wrong_all += [f"{key}: {x}" for x in wrong]
        missing_all += [f"{key}: {x}" for x in missing]
    print(f"parsed {parsed}, right {right}/{total}, missing {missing_all}")
    assert wrong_all == []
    assert parsed >= 78
    assert right >= 370


def test_source_test_values_where_the_source_states_them(corpus):
    _shared, r = corpus
    duck = r["d3x-at__sd-parsers/resources/parsers/AUTOMATIC1111/automatic1111_cropped.png"]
    assert (duck["positive_raw"], duck["negative_raw"], duck["width"], duck["height"]) == \
        ("photo of a duck", "monochrome", 512, 400)
    assert r["d3x-at__sd-parsers/resources/bad_images/text_after_idat.png"]["seed"] == 235284042
    stealth = r["d3x-at__sd-parsers/resources/parsers/AUTOMATIC1111/automatic1111_stealth.png"]
    assert (stealth["sampler"], stealth["scheduler"], stealth["clip_skip"]) == ("Euler", "Automatic", 2)
    fooocus = r["d3x-at__sd-parsers/resources/parsers/Fooocus/fooocus1_cropped.png"]
    assert fooocus["seed"] == 6952411511246973023 and fooocus["positive_raw"] == "a smiling goldfish"
    nai = r["d3x-at__sd-parsers/resources/parsers/NovelAI/novelai1_cropped.png"]
    assert (nai["model_name"], nai["model_hash_short"]) == ("Stable Diffusion", "1D44365E")
    sm = r["enslo__sd-metadata/png/stability-matrix.png"]
    assert "#テスト" in sm["positive_raw"]  # Latin-1 tEXt holding UTF-8
    ta = r["enslo__sd-metadata/png/tensorart.png"]
    assert ta["seed"] == 3036459311 and "#テスト" in ta["positive_raw"]  # -1 replaced from the graph
    assert r["enslo__sd-metadata/jpg/civitai-upscale.jpg"]["model_name"] == "Illustrious"
    invoke = r["enslo__sd-metadata/png/invokeai.png"]
    assert invoke["model_hash_short"].startswith("blake3:7c1631b4")
    assert {"kind": "checkpoint", "hash_kind": "BLAKE3"}.items() <= invoke["resources"][0].items()
    three = r["enslo__sd-metadata/webp/novelai-full-3char.webp"]
    assert three["seed"] == 447042893 and three["positive_raw"].startswith("2girls, 1boy, dancing, #テスト")
    lemon = r["shinshin86__chilled-lemon/test-image.png"]
    assert [(l["name"], l["weight"]) for l in lemon["loras"]] == [("flat2", 1.35), ("outline", 1.7)]
    assert {(x["name"], x["hash"], x["hash_kind"]) for x in lemon["resources"] if x["kind"] == "lora"} == \
        {("flat2", "80F764DFB478", "AutoV3"), ("outline", "D6381903D0B9", "AutoV3")}


def test_hard_cases_verified_by_hand(corpus):
    _shared, r = corpus
    cjk = r["Ktiseos-Nyx__Dataset-Tools/a1111_cjk_lora_REALLY_PNG_f7f6a69d.jpeg"]
    assert cjk["loras"][0]["name"] == "2新画风焦茶(缩小)" and cjk["loras"][0]["weight"] == 1.0
    saver = r["Ktiseos-Nyx__Dataset-Tools/comfyui_imagesaver_lora_hashes_ComfyUI_01803_.jpeg"]
    lora_hashes = {x["hash"] for x in saver["resources"] if x["kind"] == "lora"}
    assert {"379E73DCCF", "6505D98192", "B391FE156F", "26EE092240", "F1380A97CF"} <= lora_hashes
    civ = r["Ktiseos-Nyx__Dataset-Tools/civitai_comfy_json_usercomment.jpeg"]
    assert any(x["version_id"] == 324619 for x in civ["resources"])
    swarm = r["enslo__sd-metadata/jpg/swarmui.jpg"]  # UNICODE + UTF-16LE
    assert swarm["generation_tool"] == "SwarmUI" and "#テスト" in swarm["positive_raw"]
    qwen = r["vladmandic__sdnext/Qwen--Qwen-Image-Layered.jpg"]  # empty positive prompt
    assert qwen["positive_raw"] == "" and qwen["seed"] == 3312083922
    ideo = r["vladmandic__sdnext/CalamitousFelicitousness--Ideogram-4-bf16-Diffusers.jpg"]  # JSON prompt
    assert ideo["positive_raw"].startswith("{") and ideo["steps"] == 48
    draw = r["Ktiseos-Nyx__Dataset-Tools/drawthings_xmp_w1z_m4ch1n4.png"]
    assert draw["generation_tool"] == "Draw Things" and draw["loras"][0]["name"] == "wizards_machina_lora_f16"
    forge = r["Ktiseos-Nyx__Dataset-Tools/forge_f2.0.1_multi_lora_hires_dcdc3cc5.jpeg"]
    assert len(forge["loras"]) == 4 and forge["generation_tool"] == "Forge"


def test_bad_files_are_marked_not_fatal(corpus):
    _shared, r = corpus
    assert r["d3x-at__sd-parsers/resources/bad_images/empty_file.png"]["error"] == "empty file"
    for name in ("broken.png", "truncated_image.png", "truncated_jpeg.jpg", "broken_data_stream.png"):
        got = r[f"python-pillow__Pillow/{name}"]
        assert got["no_metadata"] and got["error"], name


def test_camera_photos_give_exif_facts(corpus):
    _shared, r = corpus
    sunset = r["comfyanonymous__ComfyUI_examples/unclip/sunset.png"]["exif"]
    assert (sunset["make"], sunset["model"], sunset["iso"], sunset["focal_length"], sunset["exposure"]) == \
        ("NIKON CORPORATION", "NIKON D90", 200, 85.0, "1/200")
    assert sunset["datetime_original"] == "2013-01-03T17:59:07" and sunset["gps_present"] is False
    island = r["comfyanonymous__ComfyUI_examples/ltxv/island.jpg"]
    assert island["no_metadata"] and island["exif"]["gps_present"] is False


def test_same_answer_every_run(corpus):
    shared, r = corpus
    for key in ("enslo__sd-metadata/png/tensorart.png", "Ktiseos-Nyx__Dataset-Tools/comfyui_rgthree_power_lora_secret_chunk_bird1.png"):
        again = extract_comprehensive_metadata(shared / "corpus" / key)
        assert again == r[key]
