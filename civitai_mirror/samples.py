"""Sample data builders: a small collection and a matching Civitai dump, for the demo and the tests.

Everything here is generated, byte-for-byte deterministic, and invented for this project (no text
from real models). The collection holds tiny but real safetensors files (real tensor names and
``__metadata__``), a zip ``.ckpt``, and images whose infotexts reference those files' hashes; the
dump holds a few dozen models of every Civitai type and of every schema generation (2023 to
2026, Archived, never-clobber history), with the collection's real hashes in it so that matching
works offline. The bytes and files are made by ``civitai_mirror.fixtures``, the builders the
tests use too (``safetensors_bytes``, ``write_png``, ``write_jpeg``, ``write_tree``,
``write_models``), so a fixture and the demo never drift apart.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from civitai_mirror.fixtures import (picture, safetensors_bytes, seeded_bytes, striped, write_jpeg, write_models,
                                     write_png, write_tree)
from crawler.layout import model_path
from matcher.hashing import hash_file

# ---------------------------------------------------------------------------------------------
# Tiny safetensors files with real tensor names


def _sd15_unet() -> dict[str, list[int]]:
    return {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [32, 768],
        "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 768],
        "first_stage_model.decoder.conv_out.weight": [3, 128, 3, 3],
        "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3],
    }


def _lora_sd15(prefix: str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0") -> dict[str, list[int]]:
    return {
        f"{prefix}_attn2_to_k.alpha": [],
        f"{prefix}_attn2_to_k.lora_down.weight": [4, 768],
        f"{prefix}_attn2_to_k.lora_up.weight": [320, 4],
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": [],
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768],
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [768, 4],
    }


def _lora_sdxl() -> dict[str, list[int]]:
    p = "lora_unet_input_blocks_4_1_transformer_blocks_0"
    return {
        f"{p}_attn2_to_k.alpha": [],
        f"{p}_attn2_to_k.lora_down.weight": [4, 2048],
        f"{p}_attn2_to_k.lora_up.weight": [640, 4],
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha": [],
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 768],
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [768, 4],
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha": [],
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": [4, 1280],
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": [1280, 4],
    }


def _kohya_meta(output_name: str, base: str, module: str = "networks.lora", **extra: str) -> dict[str, str]:
    meta = {
        "ss_output_name": output_name,
        "ss_base_model_version": base,
        "ss_network_module": module,
        "ss_network_dim": "4",
        "ss_network_alpha": "1.0",
        "ss_num_epochs": "10",
        "ss_tag_frequency": json.dumps({"img": {"paper": 12, "cutout": 9, "landscape": 4}}),
        "ss_training_started_at": "1700000000.0",
    }
    meta.update(extra)
    return meta


def _ckpt_zip(seed: str) -> bytes:
    """A zip-format .ckpt: member names only matter; nothing here is ever unpickled."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, n in (("archive/data.pkl", 64), ("archive/version", 2),
                        ("archive/data/0", 4096), ("archive/data/1", 4096)):
            info = zipfile.ZipInfo(name, date_time=(2023, 1, 1, 0, 0, 0))
            zf.writestr(info, seeded_bytes(seed + name, n))
    return buf.getvalue()


# (relative path, bytes factory). Hashes of these files go into the dump below.
def collection_model_files() -> dict[str, bytes]:
    return {
        "checkpoints/dreamy_mix_v2.safetensors": safetensors_bytes(
            _sd15_unet(), {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "Dreamy Mix"},
            seed="dreamy"),
        "checkpoints/old_realism.ckpt": _ckpt_zip("old_realism"),
        "loras/paper_cut_style.safetensors": safetensors_bytes(
            _lora_sdxl(), _kohya_meta("paper_cut_style", "sdxl_base_v1-0"), seed="papercut"),
        "loras/detail_slider_locon.safetensors": safetensors_bytes(
            _lora_sd15(), _kohya_meta("detail_slider_locon", "sd_v1", "lycoris.kohya",
                                      ss_network_args=json.dumps({"conv_dim": "4", "conv_alpha": "1",
                                                                  "algo": "locon"})), seed="locon"),
        "loras/inkwash_pony.safetensors": safetensors_bytes(
            _lora_sdxl(), _kohya_meta("inkwash_pony", "sdxl_base_v1-0",
                                      sshs_model_hash="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            seed="inkwash"),
        "embeddings/soft_hands_neg.safetensors": safetensors_bytes({"emb_params": [4, 768]}, seed="softhands"),
        "vae/clear_skies_vae.safetensors": safetensors_bytes({
            "decoder.conv_in.weight": [64, 4, 3, 3], "decoder.conv_out.weight": [3, 64, 3, 3],
            "encoder.conv_in.weight": [64, 3, 3, 3], "encoder.conv_out.weight": [8, 64, 3, 3],
            "quant_conv.weight": [8, 8, 1, 1], "post_quant_conv.weight": [4, 4, 1, 1]}, seed="vae"),
        "controlnet/line_guide.safetensors": safetensors_bytes({
            "control_model.input_hint_block.0.weight": [16, 3, 3, 3],
            "control_model.zero_convs.0.0.weight": [32, 32, 1, 1],
            "control_model.middle_block_out.0.weight": [32, 32, 1, 1]}, seed="controlnet"),
        "misc/mystery_weights.safetensors": safetensors_bytes({"foo.bar.weight": [16, 16]}, seed="mystery"),
    }


def write_sample_collection(root: str | Path) -> dict[str, Path]:
    """Write the demo collection under ``root``; returns {relative path: absolute path}."""
    root = Path(root)
    written = write_tree(root, collection_model_files())
    h = {rel: hash_file(p) for rel, p in written.items()}
    ckpt = h["checkpoints/dreamy_mix_v2.safetensors"]
    lora = h["loras/paper_cut_style.safetensors"]
    emb = h["embeddings/soft_hands_neg.safetensors"]
    vae = h["vae/clear_skies_vae.safetensors"]

    out = root / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    a1111 = (
        "a paper cut landscape at dawn, layered hills, <lora:paper_cut_style:0.8>\n"
        "Negative prompt: soft_hands_neg, blurry\n"
        f"Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592653, "
        f"Size: 64x48, Model hash: {ckpt['AutoV2'].lower()}, Model: dreamy_mix_v2, "
        f"VAE hash: {vae['AutoV2'].lower()}, VAE: clear_skies_vae.safetensors, "
        f"Lora hashes: \"paper_cut_style: {lora['AutoV3'].lower()}\", "
        f"TI hashes: \"soft_hands_neg: {emb['SHA256'][:12].lower()}\", Version: v1.10.1"
    )
    write_png(out / "00001-3141592653.png", striped((200, 120, 40)), {"parameters": a1111})
    write_png(out / "00001-3141592653 (copy).png", striped((200, 120, 40)), {"parameters": a1111})  # duplicate
    civitai_text = (
        "ink wash mountains, misty\nNegative prompt: lowres\n"
        "Steps: 30, Sampler: Euler a, CFG scale: 5, Seed: 27182818, Size: 64x48, "
        "Civitai resources: [{\"type\":\"checkpoint\",\"modelVersionId\":1101,\"modelName\":\"Dreamy Mix\","
        "\"modelVersionName\":\"v2\"},{\"type\":\"lora\",\"weight\":0.6,\"modelVersionId\":1501,"
        "\"modelName\":\"Ink Wash Pony\",\"modelVersionName\":\"v1\"}], Created Date: 2026-05-01T10:00:00.000Z"
    )
    write_jpeg(out / "ink_wash_onsite.jpeg", picture((64, 48), (60, 60, 90)), civitai_text)
    comfy_prompt = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 99, "steps": 18, "cfg": 4.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["10", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamy_mix_v2.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a detailed clockwork owl", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail_slider_locon.safetensors",
                                                      "strength_model": 0.7, "strength_clip": 0.7,
                                                      "model": ["4", 0], "clip": ["4", 1]}},
    }
    write_png(out / "ComfyUI_00001_.png", striped((30, 140, 90)), {"prompt": json.dumps(comfy_prompt)})
    write_png(out / "render_0007.png", striped((90, 30, 140)))
    (out / "render_0007.txt").write_text(
        "a lighthouse in a storm\nUsed model: dreamy_mix_v2.safetensors\nLoRA: detail_slider_locon:0.5\n")
    moss = _fake_hashes("200-2001")  # Moss Garden: known to the mirror, not held locally
    write_png(out / "00002-1618033988.png", striped((40, 110, 60)), {"parameters": (
        "moss covered stones, <lora:moss_garden:0.7>\nNegative prompt: blurry\n"
        f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1618033988, Size: 64x48, "
        f"Model hash: {ckpt['AutoV2'].lower()}, Model: dreamy_mix_v2, "
        f"Lora hashes: \"moss_garden: {moss['AutoV3'].lower()}\", Version: v1.10.1")})
    write_png(out / "orphan_sunset.png", striped((250, 90, 20)))
    write_jpeg(out / "holiday_photo.jpg", picture((64, 48), (20, 90, 200)), None, camera=True)
    # media next to a model travel with it; sidecars travel with their file
    write_png(root / "checkpoints" / "dreamy_mix_v2.png", striped((210, 180, 150)), {"parameters": a1111})
    write_png(root / "loras" / "paper_cut_style.preview.png", striped((120, 200, 40)))
    (root / "loras" / "paper_cut_style.civitai.info").write_text(json.dumps({"id": 1301, "modelId": 130}))
    for rel in ("outputs/00001-3141592653.png", "outputs/00001-3141592653 (copy).png",
                "outputs/ink_wash_onsite.jpeg", "outputs/ComfyUI_00001_.png", "outputs/00002-1618033988.png", "outputs/render_0007.png",
                "outputs/render_0007.txt", "outputs/orphan_sunset.png", "outputs/holiday_photo.jpg",
                "checkpoints/dreamy_mix_v2.png", "loras/paper_cut_style.preview.png",
                "loras/paper_cut_style.civitai.info"):
        written[rel] = root / rel
    return written


# ---------------------------------------------------------------------------------------------
# The sample dump: a few dozen models of every type and schema generation

# (model id, name, type, base model, generation, local file or None, mode)
SAMPLE_MODELS: list[tuple[int, str, str, str, str, str | None, str | None]] = [
    (110, "Dreamy Mix", "Checkpoint", "SD 1.5", "2025", "checkpoints/dreamy_mix_v2.safetensors", None),
    (120, "Old Realism", "Checkpoint", "SD 1.5", "2023", "checkpoints/old_realism.ckpt", "Archived"),
    (130, "Paper Cut Style", "LORA", "SDXL 1.0", "2026", "loras/paper_cut_style.safetensors", None),
    (140, "Detail Slider", "LoCon", "SD 1.5", "2024", "loras/detail_slider_locon.safetensors", None),
    (150, "Ink Wash Pony", "LORA", "Pony", "2026", "loras/inkwash_pony.safetensors", None),
    (160, "Soft Hands Negative", "TextualInversion", "SD 1.5", "2023", "embeddings/soft_hands_neg.safetensors", None),
    (170, "Clear Skies VAE", "VAE", "SD 1.5", "2024", "vae/clear_skies_vae.safetensors", None),
    (180, "Line Guide", "Controlnet", "SD 1.5", "2025", "controlnet/line_guide.safetensors", None),
    (190, "Harbor Lights", "Checkpoint", "SDXL 1.0", "2024", None, None),
    (200, "Moss Garden", "LORA", "Flux.1 D", "2025", None, None),
    (210, "Retired Toon", "LORA", "SD 1.5", "2024", None, "Archived"),
    (220, "Pulled Portrait", "Checkpoint", "SD 1.5", "2023", None, "TakenDown"),
    (230, "Cloud Feathers", "Hypernetwork", "SD 1.5", "2023", None, None),
    (240, "Crisp Upscale 4x", "Upscaler", "Other", "2024", None, None),
    (250, "Soft Grade", "AestheticGradient", "SD 1.4", "2023", None, None),
    (260, "Dancer Poses", "Poses", "Other", "2023", None, None),
    (270, "Fantasy Names", "Wildcards", "Other", "2024", None, None),
    (280, "Two Pass Flow", "Workflows", "SDXL 1.0", "2025", None, None),
    (290, "Gentle Motion", "MotionModule", "SD 1.5", "2024", None, None),
    (300, "Hand Finder", "Detection", "Other", "2025", None, None),
    (310, "Misc Tools", "Other", "Other", "2026", None, None),
    (320, "Night Market", "DoRA", "Illustrious", "2026", None, None),
    (330, "Glass Flowers", "LORA", "Flux.1 D", "2026", None, None),
    (340, "Brass Robots", "LoCon", "SDXL 1.0", "2025", None, None),
    (350, "Winter Coats", "LORA", "Pony", "2025", None, None),
    (360, "Desert Wind", "Checkpoint", "Flux.1 S", "2026", None, None),
    (370, "Velvet Shadows", "LORA", "SD 1.5", "2023", None, None),
    (380, "Salt Flats", "Checkpoint", "SD 2.1", "2023", None, None),
    (390, "Paper Lanterns", "TextualInversion", "SDXL 1.0", "2024", None, None),
    (400, "Tidal Glow", "LORA", "Illustrious", "2026", None, None),
]
CREATORS = ["lanternmaker", "quietbrush", "pixelfarmer", "tidewatch"]
TAGS = ["style", "landscape", "character", "concept", "tool", "photorealistic", "anime"]
FILE_TYPES = {"Checkpoint": "Model", "VAE": "Model"}


def _fake_hashes(seed: str) -> dict[str, str]:
    s = hashlib.sha256(seed.encode()).hexdigest().upper()
    return {"AutoV1": s[50:58], "AutoV2": s[:10], "SHA256": s, "CRC32": s[40:48],
            "BLAKE3": hashlib.blake2s(seed.encode()).hexdigest().upper(), "AutoV3": s[20:32]}


def _civitai_hashes(h: dict[str, Any], generation: str) -> dict[str, str]:
    keys = ["AutoV1", "AutoV2", "SHA256", "CRC32", "BLAKE3"]
    if generation != "2023":
        keys.append("AutoV3")
    return {k: h[k] for k in keys if h.get(k)}


def _image(model_id: int, version_id: int, n: int, generation: str, blur: str) -> dict[str, Any]:
    image_id = version_id * 10 + n
    url = f"https://image.civitai.com/demo/{image_id:08x}/width=450/{image_id}.jpeg"
    if generation == "2023":
        return {"id": image_id, "url": url, "nsfw": "None", "width": 512, "height": 768, "hash": blur,
                "meta": {"prompt": f"demo prompt {image_id}", "seed": image_id, "steps": 20,
                         "sampler": "Euler a", "cfgScale": 7}}
    img = {"url": url, "nsfwLevel": 1, "width": 832, "height": 1216, "hash": blur, "type": "image",
           "minor": False, "poi": False, "hasMeta": True, "hasPositivePrompt": True, "onSite": False,
           "remixOfId": None}
    if generation in ("2024", "2026"):
        img = {"id": image_id, **img}
    return img


def sample_model(entry: tuple, hashes: dict[str, dict[str, Any]], sizes: dict[str, int],
                 archived_view: bool = False) -> dict[str, Any]:
    """One model JSON in the shape of its schema generation."""
    mid, name, mtype, base, gen, local, mode = entry
    n_versions = 2 if mid % 40 == 30 else 1
    versions = []
    for i in range(n_versions):
        vid = mid * 10 + 1 + i
        vname = f"v{n_versions - i}"
        fname = Path(local).name if (local and i == 0) else f"{name.lower().replace(' ', '_')}_{vname}.safetensors"
        h = hashes[local] if (local and i == 0) else _fake_hashes(f"{mid}-{vid}")
        size_kb = (sizes[local] / 1024) if (local and i == 0) else 1024.0 * (mid % 7 + 1)
        published = f"{gen}-0{1 + i}-1{mid % 9}T12:00:00.000Z"
        f = {"id": vid * 10, "sizeKB": size_kb, "name": fname, "type": FILE_TYPES.get(mtype, "Model"),
             "metadata": {"format": "PickleTensor" if fname.endswith(".ckpt") else "SafeTensor",
                          "fp": "fp16", "size": "pruned"},
             "pickleScanResult": "Success", "pickleScanMessage": "No Pickle imports",
             "virusScanResult": "Success", "scannedAt": published,
             "hashes": _civitai_hashes(h, gen),
             "downloadUrl": f"https://civitai.com/api/download/models/{vid}", "primary": True}
        blur = "LEHV6nWB2yk8pyo0adR*.7kCMdnj" if mid == 110 else "L6PZfSi_.AyE_3t7t7R**0o#DgR4"
        images = [_image(mid, vid, k, gen, blur) for k in range(2)]
        v: dict[str, Any] = {"id": vid, "name": vname, "baseModel": base, "publishedAt": published,
                             "trainedWords": [name.split()[0].lower()], "files": [f], "images": images,
                             "downloadUrl": f"https://civitai.com/api/download/models/{vid}",
                             "description": f"<p>Version {vname} of the demo model {name}.</p>"}
        if gen == "2023":
            v.update({"modelId": mid, "createdAt": published, "updatedAt": published, "earlyAccessTimeFrame": 0,
                      "stats": {"downloadCount": mid * 3, "ratingCount": 2, "rating": 5}})
        else:
            v.update({"index": i, "baseModelType": "Standard", "status": "Published", "availability": "Public",
                      "nsfwLevel": 1, "stats": {"downloadCount": mid * 3, "thumbsUpCount": 4,
                                                "thumbsDownCount": 0}})
            if gen == "2026":
                v.update({"flags": 0, "covered": False, "createdAt": published})
        versions.append(v)
    model: dict[str, Any] = {
        "id": mid, "name": name, "description": f"<p>{name} is a made-up {mtype} for the civitai-mirror demo.</p>",
        "type": mtype, "poi": False, "nsfw": False, "allowNoCredit": True,
        "allowDerivatives": True, "allowDifferentLicense": False,
        "creator": {"username": CREATORS[mid % len(CREATORS)],
                    "image": f"https://image.civitai.com/demo/avatar/{CREATORS[mid % len(CREATORS)]}.jpeg"},
        "tags": [TAGS[mid % len(TAGS)], TAGS[(mid // 10) % len(TAGS)]],
        "modelVersions": versions,
    }
    if gen == "2023":
        model["allowCommercialUse"] = "Rent"
        model["stats"] = {"downloadCount": mid * 3, "favoriteCount": 1, "commentCount": 0, "ratingCount": 2,
                          "rating": 5}
    elif gen in ("2024", "2025"):
        model["allowCommercialUse"] = "{Image,RentCivit}" if gen == "2024" else ["Image", "Sell"]
        model["nsfwLevel"] = 1
        model["stats"] = {"downloadCount": mid * 3, "favoriteCount": 0, "thumbsUpCount": 4, "thumbsDownCount": 0,
                          "commentCount": 0, "ratingCount": 0, "rating": 0, "tippedAmountCount": 0}
        if gen == "2025":
            model.update({"minor": False, "sfwOnly": False, "availability": "Public", "cosmetic": None,
                          "supportsGeneration": True})
    else:
        model.update({"allowCommercialUse": [], "minor": False, "sfwOnly": False, "nsfwLevel": 1,
                      "availability": "Public", "userId": 9000 + mid, "baseModels": [base], "cosmetic": None,
                      "supportsGeneration": False,
                      "stats": {"downloadCount": mid * 3, "thumbsUpCount": 4, "thumbsDownCount": 0,
                                "commentCount": 0, "tippedAmountCount": 0} if mid % 2 else None})
    if mode or archived_view:
        model["mode"] = mode or "Archived"
        for v in model["modelVersions"]:
            v["files"] = []
    return model


def collection_hashes(collection: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Hashes and sizes of the collection's model files, through the matcher's one hashing function."""
    collection = Path(collection)
    hashes = {rel: hash_file(collection / rel) for rel in collection_model_files()}
    sizes = {rel: (collection / rel).stat().st_size for rel in collection_model_files()}
    return hashes, sizes


def sample_models(collection: str | Path, *, latest: bool = False,
                  hashed: tuple[dict[str, dict[str, Any]], dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Every sample model as the API answers it. ``latest`` gives the Archived/TakenDown answers
    for the models that are gone; otherwise their earlier, complete answers. ``hashed`` is
    ``collection_hashes(collection)`` when the caller has it already."""
    hashes, sizes = hashed or collection_hashes(collection)
    return [sample_model(entry if latest else entry[:6] + (None,), hashes, sizes) for entry in SAMPLE_MODELS]


FETCHED_AT = datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp()


def write_sample_dump(dump: str | Path, collection: str | Path) -> list[int]:
    """Write the dump (model JSON + logs) for the collection written by write_sample_collection.

    Gone models are written as the crawler leaves them: the good copy in ``<id>.json`` and the
    later Archived answer beside it (never clobber)."""
    dump = Path(dump)
    hashed = collection_hashes(collection)  # once, for both views of the models
    earlier = sample_models(collection, hashed=hashed)
    latest = sample_models(collection, latest=True, hashed=hashed)
    now = "2026-11-01T00:00:00Z"
    # the good copies were fetched before the side files
    ids = write_models(dump, earlier, indent=1, host="demo", at=now, mtime=FETCHED_AT)
    for mid, good, last in zip(ids, earlier, latest):
        if last != good:
            model_path(dump, mid).with_name(f"{mid:08d}.20261101T000000Z.json").write_text(json.dumps(last, indent=1))
    (dump / "notfound.txt").write_text("".join(f"{i:08d}\tdemo\t{now}\n" for i in (105, 115, 999)))
    for name in ("errors.txt", "crawled.txt", "missing.txt"):
        (dump / name).write_text("")
    return ids
