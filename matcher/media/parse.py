"""Pick the right generator parser for what the containers hold.

The most specific carrier wins: a generator's own PNG chunks (SwarmUI, NovelAI, InvokeAI, TensorArt,
Stability Matrix), then the ``parameters`` chunk (Fooocus, EasyDiffusion, A1111 infotext), a ComfyUI
graph, EXIF, XMP, free comments and last the alpha-channel stealth payload.
"""
from __future__ import annotations

import logging
from typing import Any

from .a1111 import looks_like_infotext, parse_infotext
from .comfy_hosts import parse_civitai_comfy, parse_stability_matrix, parse_tensorart
from .comfyui import has_graph, load_graph, parse_comfy_prompt
from .containers import Containers
from .invokeai import parse_invoke_dream, parse_invoke_metadata, parse_invoke_sdmeta
from .json_generators import parse_easydiffusion, parse_fooocus, parse_novelai, parse_swarmui, parse_web_diffusers
from .normalise import as_json, finalise
from .text_generators import parse_sidecar_text, parse_xmp

log = logging.getLogger(__name__)


def parse_text(text: str, source: str, filename: str | None = None) -> dict[str, Any] | None:
    """One free-standing text (UserComment, Comment, stealth, sidecar): JSON flavours or A1111 infotext."""
    if not isinstance(text, str) or not text.strip():
        return None
    data = as_json(text)
    if isinstance(data, dict):
        if "sui_image_params" in data:
            return parse_swarmui(data)
        if "extraMetadata" in data or ("extra" in data and load_graph(data)):
            return parse_civitai_comfy(data)
        if "Comment" in data and isinstance(data.get("Comment"), str) or ("steps" in data and "uc" in data):
            return parse_novelai(data, data.get("Description"), data.get("Source"), data.get("Software"))
        if "positive_prompt" in data and ("seed" in data or "model" in data):
            return parse_invoke_metadata(data)
        if "fooocus_scheme" in data or "metadata_scheme" in data or data.get("software") == "RuinedFooocus":
            return parse_fooocus(data)
        if "Model hash" in data or isinstance(data.get("Model"), dict):
            rec = parse_web_diffusers(data)
            if rec:
                return rec
        if "num_inference_steps" in data:
            return parse_easydiffusion(data)
        nodes = load_graph(data)
        if nodes:
            return parse_comfy_prompt(nodes, filename=filename)
        return None
    if looks_like_infotext(text):
        return parse_infotext(text)
    if source == "sidecar":
        return parse_sidecar_text(text)
    return None


def parse_containers(c: Containers) -> dict[str, Any] | None:
    """The normalised record for one file, or None when it carries no generation metadata. ``c.name``
    (the file's name) tells apart the save nodes of a ComfyUI graph that saves several images."""
    rec, source = _dispatch(c, c.name)
    if rec is None:
        return None
    rec["metadata_source"] = source
    if not rec.get("generation_tool"):
        rec["generation_tool"] = "unknown"
    return finalise(rec)


#: what a saver node's own text and the graph it sits in are compared on (sampler names are spelt
#: differently by the savers, so only numbers and the checkpoint count)
_GRAPH_CHECKED = ("seed", "steps", "cfg_scale", "model_name")
#: what the graph's record replaces when the text contradicts it
_GRAPH_FIELDS = ("seed", "steps", "cfg_scale", "sampler", "scheduler", "denoising_strength", "model_name")


def _stem(name: Any) -> str:
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base.rsplit(".", 1)[0] if base.endswith((".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin")) else base


def _differs(key: str, text_value: Any, graph_value: Any) -> bool:
    if text_value is None or graph_value is None:
        return False
    if key == "model_name":
        return _stem(text_value) != _stem(graph_value)
    if key == "cfg_scale":
        return abs(float(text_value) - float(graph_value)) > 1e-6
    return text_value != graph_value


def _graph_wins(rec: dict[str, Any], graph: dict[str, Any]) -> None:
    """A saver node (comfy-image-saver and the like) writes its ``parameters`` text from its own widgets,
    which need not be the values of the sampler that fed it: where they contradict, the graph's chain
    is reported, and ``params["metadata_conflict"]`` names the fields that differed."""
    wrong = [k for k in _GRAPH_CHECKED if _differs(k, rec.get(k), graph.get(k))]
    if graph.get("passes"):
        rec["passes"] = graph["passes"]
    if not wrong:
        return
    for k in _GRAPH_FIELDS:
        if graph.get(k) is not None:
            rec[k] = graph[k]
    if "model_name" in wrong:
        rec["model_hash_short"] = None
        rec["resources"] = [r for r in rec["resources"] if r["kind"] != "checkpoint"]
        rec["resources"] += [r for r in graph["resources"] if r["kind"] == "checkpoint"]
    rec["params"]["metadata_conflict"] = (f"the parameters text disagrees with the graph on {', '.join(wrong)}:"
                                          " the values of the sampler that fed the save node are reported")


_INVOKE_KEYS = (("invokeai_metadata", parse_invoke_metadata), ("sd-metadata", parse_invoke_sdmeta),
                ("Dream", parse_invoke_dream))


def _dispatch(c: Containers, filename: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    t = c.texts
    ex = c.exif
    # SwarmUI
    params_json = None  # the parameters chunk is parsed once, here, and used again below
    for key in ("sui_image_params", "parameters"):
        d = as_json(t.get(key))
        if key == "parameters":
            params_json = d
        if isinstance(d, dict) and "sui_image_params" in d:
            return parse_swarmui(d), f"png:{key}"
    # NovelAI (PNG text chunks)
    if t.get("Software", "").startswith("NovelAI") or (t.get("Comment") and t.get("Source", "").startswith(("Stable Diffusion", "NovelAI"))):
        rec = parse_novelai(t.get("Comment"), t.get("Description"), t.get("Source"), t.get("Software"))
        if rec:
            return rec, "png:Comment"
    # InvokeAI (its three formats, newest first)
    for key, parser in _INVOKE_KEYS:
        if t.get(key):
            rec = parser(t[key])
            if rec:
                return rec, f"png:{key}"
    # TensorArt
    if t.get("generation_data"):
        rec = parse_tensorart(t["generation_data"], t.get("prompt"))
        if rec:
            return rec, "png:generation_data"
    # Stability Matrix
    if t.get("parameters-json") or t.get("smproj"):
        rec = parse_stability_matrix(t.get("parameters"), t.get("parameters-json"), t.get("prompt"))
        if rec:
            return rec, "png:parameters"
    # Fooocus / RuinedFooocus / A1111 parameters
    params = t.get("parameters")
    if params:
        d = params_json
        if isinstance(d, dict):
            rec = parse_fooocus(d) or parse_web_diffusers(d) or parse_easydiffusion(d)
            if rec:
                return rec, "png:parameters"
        elif looks_like_infotext(params):
            rec = parse_infotext(params)
            # the graph only matters when the infotext names no other tool (has_graph is pure: asked last)
            if rec.get("generation_tool") in ("AUTOMATIC1111", "ComfyUI") and has_graph(t.get("prompt")):
                rec["generation_tool"] = "ComfyUI"
                nodes = load_graph(t.get("prompt"))
                if nodes:
                    _graph_wins(rec, parse_comfy_prompt(nodes, filename=filename))
            return rec, "png:parameters"
    # ComfyUI graph in PNG text
    nodes = load_graph(t.get("prompt"))
    if nodes:
        return parse_comfy_prompt(nodes, filename=filename), "png:prompt"
    # EXIF carriers (JPEG/WebP, PNG eXIf)
    for key in ("Make", "Model", "ImageDescription"):
        v = ex.get(key)
        if isinstance(v, str) and v.lower().startswith("prompt:"):
            nodes = load_graph(v)
            if nodes:
                return parse_comfy_prompt(nodes, filename=filename), f"exif:{key}"
    for key in ("UserComment", "ImageDescription", "XPComment"):
        v = ex.get(key)
        if key == "ImageDescription" and ex.get("UserComment"):
            continue
        rec = parse_text(v, "exif", filename) if v else None
        if rec:
            if key == "UserComment" and isinstance(rec, dict) and (ex.get("Software") or "").startswith("NovelAI") \
                    and rec.get("generation_tool") == "NovelAI" and not rec.get("model_name"):
                rec["model_name"] = ex["Software"]
            return rec, f"exif:{key}"
    # XMP (Draw Things and A1111-like dc:description)
    if c.xmp:
        rec = parse_xmp(c.xmp)
        if rec:
            return rec, "xmp"
    # free comments (PNG Comment/Description, GIF/JPEG comment, video tags)
    for key in ("Comment", "Description", "comment", "description", "parameters", "prompt", "workflow"):
        v = t.get(key)
        if v:
            d = as_json(v)
            if isinstance(d, dict) and ("prompt" in d) and isinstance(d.get("prompt"), (str, dict)):
                nodes = load_graph(d.get("prompt"))
                if nodes:
                    return parse_comfy_prompt(nodes, filename=filename), f"text:{key}"
            rec = parse_text(v, "text", filename)
            if rec:
                return rec, f"text:{key}"
    # alpha-channel stealth metadata
    if c.stealth:
        rec = parse_text(c.stealth, "stealth")
        if rec:
            return rec, "stealth"
    return None, None
