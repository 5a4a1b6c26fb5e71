"""What a file is: its kind and sniffed format, and for model files their type and base model.

Pure reads of headers only: safetensors through ``safetensors.safe_open`` (no tensor is loaded),
``.ckpt``/``.pt`` through their zip member names (nothing is ever unpickled), DFSN through its
fixed header. Every function here takes a path or bytes and returns plain values.
"""
from __future__ import annotations

import json
import logging
import os
import pickletools
import re
import zipfile
from collections import Counter
from typing import Any

from matcher.dfsn import read_header
from matcher.sniff import SNIFF_BYTES, sniff_format
from mirror.hashes import is_empty_hash

log = logging.getLogger(__name__)

#: File name endings of model files (the scan's kind, the matcher's name matching, the sorter).
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx", ".dfsn")
MEDIA_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm")
#: Text sidecars holding an image's generation parameters (``name.txt``, ``name.png.json``).
TEXT_SIDECAR_SUFFIXES = (".txt", ".json")
#: Names of sidecar files, after the stem of the file they belong to; they move with it.
SIDECAR_SUFFIXES = (
    ".civitai.info", ".metadata.json", ".preview.png", ".preview.jpg", ".preview.jpeg",
    ".preview.webp", *TEXT_SIDECAR_SUFFIXES,
)
MODEL_FORMATS = {"safetensors", "ckpt", "pt", "pth", "bin", "gguf", "dfsn", "pickle"}
MEDIA_FORMATS = {"png", "jpeg", "webp", "gif", "mp4", "webm", "mov"}
IMAGE_FORMATS = {"png", "jpeg", "webp", "gif"}

MODEL_TYPES = ("checkpoint", "lora", "lycoris", "dora", "vae", "embedding", "controlnet", "upscaler",
               "hypernetwork", "unknown")


# ---- kind and format -----------------------------------------------------------------------

def kind_and_format(path: str, head: bytes | None = None) -> tuple[str, str | None]:
    """(kind, format) of a file: kind is model | media | sidecar | other, from content first."""
    name = os.path.basename(path).lower()
    if head is None:
        try:
            with open(path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError:
            head = b""
    fmt = sniff_format(head, name)
    ext = os.path.splitext(name)[1]
    for suffix in SIDECAR_SUFFIXES:
        if name.endswith(suffix) and name != suffix:
            if suffix == ".preview.png" or fmt in IMAGE_FORMATS:
                return "sidecar", fmt or "png"
            return "sidecar", fmt or ("json" if suffix in (".json", ".civitai.info") else "txt")
    if fmt in MODEL_FORMATS:
        return "model", fmt
    if fmt in MEDIA_FORMATS:
        return "media", fmt
    if ext in MODEL_EXTENSIONS:
        return "model", fmt or ext[1:]
    if ext in MEDIA_EXTENSIONS:
        return "media", fmt or {"jpg": "jpeg"}.get(ext[1:], ext[1:])
    return "other", fmt or (ext[1:] or None)


# ---- safetensors ---------------------------------------------------------------------------

def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_safetensors(path: str) -> dict[str, Any]:
    """Header of a safetensors file: tensor names -> shape, and ``__metadata__``, via ``safe_open``."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata() or {}
        names = list(handle.keys())
        shapes = {}
        for name in names:
            shapes[name] = tuple(handle.get_slice(name).get_shape())
    return {"shapes": shapes, "metadata": metadata}


def summarise_metadata(metadata: dict[str, str], autov3_full: str | None = None) -> dict[str, Any]:
    """The training facts kept from ``__metadata__`` (kohya ``ss_*``, ``modelspec.*``, sshs hashes)."""
    args = _maybe_json(metadata.get("ss_network_args"))
    args = args if isinstance(args, dict) else {}
    info: dict[str, Any] = {
        "network_module": metadata.get("ss_network_module"),
        "network_dim": metadata.get("ss_network_dim"),
        "network_alpha": metadata.get("ss_network_alpha"),
        "network_args": args or None,
        "conv_dim": args.get("conv_dim"),
        "conv_alpha": args.get("conv_alpha"),
        "algo": args.get("algo"),
        "dora_wd": args.get("dora_wd"),
        "output_name": metadata.get("ss_output_name"),
        "base_model_version": metadata.get("ss_base_model_version"),
        "sd_model_name": metadata.get("ss_sd_model_name"),
        "training_comment": metadata.get("ss_training_comment"),
        "modelspec": {k: v for k, v in metadata.items() if k.startswith("modelspec.")} or None,
        "modelspec_architecture": metadata.get("modelspec.architecture"),
        "modelspec_title": metadata.get("modelspec.title"),
    }
    tags = _maybe_json(metadata.get("ss_tag_frequency"))
    if isinstance(tags, dict):
        counts: Counter = Counter()
        for folder in tags.values():
            if isinstance(folder, dict):
                for tag, count in folder.items():
                    if isinstance(count, (int, float)):
                        counts[tag.strip()] += int(count)
        info["tag_count"] = len(counts)
        info["top_tags"] = [tag for tag, _ in counts.most_common(20)] or None
    else:
        info["tag_count"] = None
        info["top_tags"] = None
    embedded = (metadata.get("sshs_model_hash") or "").strip().upper() or None
    info["sshs_model_hash"] = embedded
    info["sshs_status"] = sshs_status(embedded, autov3_full)
    return info


def sshs_status(embedded: str | None, autov3_full: str | None) -> str | None:
    """Compare an embedded ``sshs_model_hash`` with the computed AutoV3: ok | stale | bogus | None."""
    if not embedded:
        return None
    if is_empty_hash(embedded):
        return "bogus"
    if autov3_full is None:
        return None
    return "ok" if autov3_full.startswith(embedded) or embedded.startswith(autov3_full) else "stale"


_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")


def _text_dim(shapes: dict[str, tuple], pattern: str) -> int | None:
    """The context dim of the first cross-attention ``to_k`` matching ``pattern``."""
    regex = re.compile(pattern)
    for name, shape in shapes.items():
        if regex.search(name) and len(shape) == 2:
            return shape[1]
    return None


def _family_from_metadata(metadata: dict[str, str]) -> str | None:
    text = " ".join(str(metadata.get(key, "")) for key in (
        "ss_base_model_version", "modelspec.architecture", "ss_sd_model_name", "modelspec.title",
        "ss_output_name", "modelspec.description")).lower()
    version = (metadata.get("ss_base_model_version", "") + " " + metadata.get("modelspec.architecture", "")).lower()
    if "pony" in text:
        return "Pony"
    if "illustrious" in text or "noobai" in text:
        return "Illustrious"
    if "flux" in version:
        return "Flux"
    if "sd3" in version or "stable-diffusion-v3" in version:
        return "SD3"
    if "sdxl" in version or "stable-diffusion-xl" in version:
        return "SDXL"
    if "sd_v2" in version or "stable-diffusion-v2" in version:
        return "SD2.x"
    if "sd_v1" in version or "stable-diffusion-v1" in version:
        return "SD1.x"
    return None


def _family_from_dim(dim: int | None) -> str | None:
    return {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}.get(dim or 0)


def classify_tensors(shapes: dict[str, tuple], metadata: dict[str, str] | None = None) -> tuple[str, str | None]:
    """(model_type, base_model) from tensor names and shapes plus kohya/modelspec metadata."""
    metadata = metadata or {}
    names = list(shapes)
    joined = "\n".join(names)
    module = (metadata.get("ss_network_module") or "").lower()
    args = _maybe_json(metadata.get("ss_network_args"))
    args = args if isinstance(args, dict) else {}
    family = _family_from_metadata(metadata)

    is_lora = any(n.startswith(_KOHYA_PREFIXES) for n in names) or any(
        token in joined for token in (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", "lora.down.", ":down", ":up"))
    # LyCORIS keys: LoHa/LoKr/OFT/IA3 factors, and "full" diffs that end in .diff / .diff_b
    # (a suffix test: every checkpoint has "model.diffusion_model." in its names)
    is_lycoris = (any(token in joined for token in (".hada_w1", ".lokr_w", ".oft_", "ia3_w"))
                  or any(n.endswith((".diff", ".diff_b")) for n in names) or "lycoris" in module)
    is_dora = "dora_scale" in joined or str(args.get("dora_wd", "")).lower() in ("true", "1")
    if is_lora or is_lycoris or is_dora:
        model_type = "dora" if is_dora else ("lycoris" if is_lycoris or args.get("algo") else "lora")
        if not family:
            if any(n.startswith(("lora_unet_double_blocks", "lora_unet_single_blocks", "lora_transformer_"))
                   for n in names) or "single_transformer_blocks" in joined or "double_blocks" in joined:
                family = "Flux"
            elif "joint_blocks" in joined:
                family = "SD3"
            elif any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
                family = "SDXL"
            else:
                dim = _text_dim(shapes, r"attn2_to_k\.(lora_down|hada_w1_b|lora_A)\.weight$")
                family = _family_from_dim(dim)
        return model_type, family

    if "emb_params" in shapes or "string_to_param" in joined or set(names) <= {"clip_l", "clip_g"} and names:
        if not family:
            if "clip_g" in shapes:
                family = "SDXL"
            else:
                shape = shapes.get("emb_params") or next(iter(shapes.values()))
                family = _family_from_dim(shape[-1] if shape else None)
        return "embedding", family

    if "control_model." in joined or "input_hint_block" in joined or "controlnet_cond_embedding" in joined:
        if not family:
            dim = _text_dim(shapes, r"transformer_blocks\.0\.attn2\.to_k\.weight$")
            family = _family_from_dim(dim) if dim != 2048 else "SDXL"
            if "double_blocks" in joined or "single_blocks" in joined:
                family = "Flux"
        return "controlnet", family

    if "double_blocks." in joined and "single_blocks." in joined:
        return "checkpoint", family or "Flux"
    if "joint_blocks." in joined:
        return "checkpoint", family or "SD3"
    if "model.diffusion_model." in joined or "down_blocks." in joined and "attn2" in joined:
        if not family:
            if "conditioner.embedders.1" in joined or "model.diffusion_model.label_emb" in joined:
                family = "SDXL"
            else:
                dim = _text_dim(shapes, r"(input_blocks\.\d+\.1|down_blocks\.\d+\.attentions\.\d+)"
                                        r"\.transformer_blocks\.0\.attn2\.to_k\.weight$")
                family = _family_from_dim(dim)
        return "checkpoint", family

    if any(n.startswith(("encoder.", "decoder.", "first_stage_model.")) for n in names) and (
            "decoder.conv_out" in joined or "decoder.up" in joined):
        conv = shapes.get("encoder.conv_out.weight") or shapes.get("first_stage_model.encoder.conv_out.weight")
        if not family and conv:
            family = "Flux" if conv[0] == 32 else None
        return "vae", family

    if "conv_first.weight" in shapes or "RRDB_trunk" in joined or "model.0.weight" in shapes and "model.1.sub.0" in joined:
        return "upscaler", None
    if names and all(re.fullmatch(r"\d+\.\d+\.linear\.\d+\.(weight|bias)", n) for n in names):
        return "hypernetwork", family
    return "unknown", family


# ---- pickle / zip (.ckpt, .pt, .pth, .bin) -------------------------------------------------

_FOLDER_HINTS = (
    ("hypernetwork", "hypernetwork"), ("embedding", "embedding"), ("textual", "embedding"),
    ("lycoris", "lycoris"), ("lora", "lora"), ("vae", "vae"), ("controlnet", "controlnet"),
    ("esrgan", "upscaler"), ("upscale", "upscaler"), ("stable-diffusion", "checkpoint"),
    ("checkpoint", "checkpoint"),
)


#: at most this much of a torch zip's ``data.pkl`` is inflated to read its key names
MAX_PICKLE_BYTES = 1024 * 1024
#: at most this many names are taken from it
MAX_PICKLE_NAMES = 20_000


def pickle_names(data: bytes) -> list[str]:
    """The text constants of a pickle (dict keys: tensor names), read opcode by opcode.

    Nothing is unpickled: ``pickletools.genops`` only decodes the opcodes and their arguments. A
    pickle cut short (the read is capped) or not a pickle at all gives what was read before."""
    names: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str) and opcode.name in _TEXT_OPCODES:
                names.append(arg)
                if len(names) >= MAX_PICKLE_NAMES:
                    break
    except Exception:  # truncated or not a pickle: keep what was read
        pass
    return names


_TEXT_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                 "STRING"}


def classify_zip(path: str, size: int) -> tuple[str, str | None, dict[str, Any]]:
    """(model_type, base_model, facts) of a torch zip file from member names and sizes, and from the
    key names in its ``data.pkl`` (read opcode by opcode, never unpickled; at most ``MAX_PICKLE_BYTES``
    inflated, so a zip bomb costs nothing).

    Keys name the type as in a safetensors file (``model.diffusion_model.*``: a checkpoint,
    ``string_to_param``: an embedding, ...). When they say nothing, a ``.ckpt`` is a checkpoint (the
    name torch checkpoints of whole models get; embeddings are ``.pt``/``.bin``), and otherwise
    the count of tensor storages and the size decide.
    """
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        pkl = next((info for info in infos if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"), None)
        data = b""
        if pkl is not None:
            try:
                with archive.open(pkl) as member:
                    data = member.read(MAX_PICKLE_BYTES)
            except Exception:  # encrypted, bad compression, bad CRC: the names alone decide
                data = b""
    names = [info.filename for info in infos]
    storages = [n for n in names if re.search(r"/data/\d+$", n)]
    facts = {"zip_members": len(names), "tensor_storages": len(storages)}
    keys = [k for k in pickle_names(data) if "." in k or k in _EMBEDDING_KEYS]
    model_type, family = classify_tensors(dict.fromkeys(keys, ())) if keys else ("unknown", None)
    if model_type != "unknown":
        facts["pickle_keys"] = len(keys)
        return model_type, family, facts
    if len(storages) > 600 or size >= 1 << 30 or path.lower().endswith(".ckpt"):
        model_type = "checkpoint"
    elif len(storages) <= 4 and size < 1 << 20:
        model_type = "embedding"
    return model_type, None, facts


_EMBEDDING_KEYS = {"string_to_param", "emb_params", "string_to_token", "clip_l", "clip_g"}


def hint_from_folder(path: str) -> str | None:
    """A model type suggested by the names of the folders above a file (A1111's layout)."""
    parts = [p.lower() for p in os.path.normpath(path).split(os.sep)[:-1]]
    for part in reversed(parts):
        for needle, model_type in _FOLDER_HINTS:
            if needle in part:
                return model_type
    return None


def classify_model(path: str, fmt: str | None, size: int, autov3_full: str | None = None) -> dict[str, Any]:
    """Model facts for one file: ``model_type``, ``base_model``, ``info`` (for model_info), ``error``.

    Never raises for a bad file: a malicious or corrupt header gives ``error`` and ``unknown``.
    """
    out: dict[str, Any] = {"model_type": "unknown", "base_model": None, "info": None, "error": None}
    try:
        if fmt == "safetensors":
            header = read_safetensors(path)
            model_type, base = classify_tensors(header["shapes"], header["metadata"])
            info = summarise_metadata(header["metadata"], autov3_full)
            info["tensor_count"] = len(header["shapes"])
            info["metadata_json"] = json.dumps(header["metadata"], ensure_ascii=False) if header["metadata"] else None
            out.update(model_type=model_type, base_model=base, info=info)
        elif fmt in {"ckpt", "pt", "pth", "bin"} and zipfile.is_zipfile(path):
            model_type, base, facts = classify_zip(path, size)
            out.update(model_type=model_type, base_model=base, info=facts)
        elif fmt == "dfsn":
            header = read_header(path)
            out["info"] = {"dfsn": {k: v for k, v in header.items() if k != "metadata"},
                           "metadata_json": json.dumps(header["metadata"], ensure_ascii=False)}
            meta = header["metadata"] if isinstance(header["metadata"], dict) else {}
            if isinstance(meta.get("type"), str) and meta["type"].lower() in MODEL_TYPES:
                out["model_type"] = meta["type"].lower()
            out["base_model"] = meta.get("base_model") or meta.get("baseModel")
    except Exception as exc:  # corrupt/malicious headers must not stop a scan
        out["error"] = f"cannot read {fmt} header: {exc}"
        log.info("%s: %s", path, out["error"])
    if out["model_type"] == "unknown":
        hint = hint_from_folder(path)
        if hint and out["error"] is None:
            out["model_type"] = hint
    return out


def image_size(path: str) -> tuple[int | None, int | None]:
    """(width, height) of an image from its header (Pillow opens lazily, pixels are not decoded)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except Exception:
        return None, None
