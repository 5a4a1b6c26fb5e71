"""ComfyUI prompt graphs: walk from the sampler back to the loaders, resolving links.

``parse_comfy_prompt(graph)`` takes the API-format prompt (``{node_id: {class_type, inputs}}``)
and returns a normalised record. Pure; unresolvable links give None, never a guess.
"""
from __future__ import annotations

from typing import Any

from .a1111 import parse_air
from .comfy_chain import adds_noise, checkpoint, nearest_sampler, pass_kind, pass_values, sampler_chain
from .comfy_graph import Graph, has_graph, is_link, load_graph
from .normalise import add_lora_usage, add_resource, extract_loras, new_record, to_float, to_int

__all__ = ["Graph", "has_graph", "is_link", "load_graph", "parse_comfy_prompt"]

_LOADER_KEYS = {
    "ckpt_name": "checkpoint", "unet_name": "checkpoint", "lora_name": "lora", "vae_name": "vae",
    "control_net_name": "controlnet", "hypernetwork_name": "hypernetwork",
}


def _texts(g: Graph, link: Any) -> list[str]:
    """Prompt texts feeding a conditioning input."""
    texts: list[str] = []
    seen: set[str] = set()
    for _nid, node in g.upstream(link):
        ct = str(node.get("class_type", ""))
        ins = g.inputs(node)
        if "TextEncode" in ct or "text" in ins or "text_g" in ins:
            for key in ("text", "text_g", "text_l", "prompt"):
                if key in ins:
                    v = g.resolve(ins[key], "text")
                    if isinstance(v, str) and v.strip() and v not in seen:
                        seen.add(v)
                        texts.append(v)
                    if key == "text":
                        break
    return texts


def parse_comfy_prompt(nodes: dict[str, Any], tool: str = "ComfyUI", filename: str | None = None) -> dict[str, Any]:
    """The record of the chain that produced the saved file (``filename`` tells save nodes apart): the
    seed of the first pass that adds noise, the settings and checkpoint of the first pass, and every
    later refiner, upscale or detailer pass in ``passes``."""
    g = Graph(nodes)
    rec = new_record(tool)
    chain = sampler_chain(g, filename)
    # the first pass that adds noise: passes before it only continue a latent made elsewhere
    first = next((i for i, (sid, _s) in enumerate(chain) if adds_noise(g, g.nodes[sid])), 0)
    chain = chain[first:]
    primary = (chain[0][0], g.nodes[chain[0][0]]) if chain else nearest_sampler(g)
    ckpt = None
    if primary:
        v = pass_values(g, primary[1])
        rec["seed"] = to_int(v["seed"])
        rec["steps"] = to_int(v["steps"])
        rec["cfg_scale"] = to_float(v["cfg"])
        rec["sampler"] = v["sampler"] if isinstance(v["sampler"], str) else None
        rec["scheduler"] = v["scheduler"] if isinstance(v["scheduler"], str) else None
        rec["denoising_strength"] = to_float(v["denoise"])
        pos = _texts(g, v["positive"])
        neg = _texts(g, v["negative"])
        rec["positive_raw"] = "\n".join(pos) if pos else None
        rec["negative_raw"] = "\n".join(neg) if neg else None
        for _n, ln in g.upstream(v["latent"], follow=("samples", "latent", "latent_image", "pixels")):
            li = g.inputs(ln)
            if "width" in li and "height" in li:
                w, h = to_int(g.resolve(li["width"], "width")), to_int(g.resolve(li["height"], "height"))
                if w and h:
                    rec["width"], rec["height"] = w, h
                break
        ckpt = checkpoint(g, v["model"])
        if chain[1:]:
            rec["passes"] = [_pass(g, sid, scaled, ckpt, rec) for sid, scaled in chain[1:]]
    if ckpt is None:
        for _nid, node in g.nodes.items():
            v = g.inputs(node).get("ckpt_name") or g.inputs(node).get("unet_name")
            if isinstance(v, str):
                ckpt = v
                break
    if ckpt:
        rec["model_name"] = ckpt
    # clip skip
    for _nid, node in g.nodes.items():
        if node.get("class_type") == "CLIPSetLastLayer":
            v = to_int(g.inputs(node).get("stop_at_clip_layer"))
            if v is not None and v < 0:
                rec["clip_skip"] = -v
            break
    _graph_resources(g, rec, ckpt)
    if not rec.get("width"):
        for _nid, node in g.nodes.items():
            if "EmptyLatent" in str(node.get("class_type", "")) or "EmptySD3Latent" in str(node.get("class_type", "")):
                ins = g.inputs(node)
                w, h = to_int(g.resolve(ins.get("width"), "width")), to_int(g.resolve(ins.get("height"), "height"))
                if w and h:
                    rec["width"], rec["height"] = w, h
                    break
    extract_loras(rec)
    return rec


def _graph_resources(g: Graph, rec: dict[str, Any], ckpt: str | None) -> None:
    if ckpt:
        _add_named(rec, "checkpoint", ckpt, None)
    for _nid, node in g.nodes.items():
        ct = str(node.get("class_type", ""))
        ins = g.inputs(node)
        for key, kind in (_LOADER_KEYS.items() if not _LOADER_KEYS.keys().isdisjoint(ins) else ()):
            v = ins.get(key)
            if isinstance(v, str) and v and v.lower() != "none":
                weight = None
                if kind == "lora":
                    weight = to_float(g.resolve(ins.get("strength_model", ins.get("strength", 1.0)), "value"))
                    add_lora_usage(rec, v, weight if weight is not None else 1.0,
                                   kind="lora", weight2=to_float(ins.get("strength_clip")))
                if kind == "checkpoint" and v == ckpt:
                    continue
                _add_named(rec, kind, v, weight)
        if "Upscale" in ct and isinstance(ins.get("model_name"), str):
            _add_named(rec, "upscaler", ins["model_name"], None)
            if not rec.get("hires_upscaler"):
                rec["hires_upscaler"] = ins["model_name"]
        # rgthree Power Lora Loader: lora_1 = {on, lora, strength} (a C-level test first: most nodes hold no dict)
        for k, v in (ins.items() if any(map(dict.__instancecheck__, ins.values())) else ()):
            if isinstance(v, dict) and k.lower().startswith("lora_") and isinstance(v.get("lora"), str):
                if v.get("on") is False or v["lora"].lower() == "none":
                    continue
                w = to_float(v.get("strength"))
                add_lora_usage(rec, v["lora"], w if w is not None else 1.0)
                _add_named(rec, "lora", v["lora"], w)
        if ct in ("VAELoader",) and isinstance(ins.get("vae_name"), str):
            rec.setdefault("vae", ins["vae_name"])


def _add_named(rec: dict[str, Any], kind: str, name: str, weight: float | None) -> None:
    air = parse_air(name)
    if air:
        add_resource(rec, air["kind"] if kind in ("checkpoint", "lora") or air["kind"] == kind else kind,
                     name, None, weight=weight, version_id=air["version_id"], source="civitai")
    else:
        add_resource(rec, kind, name, None, weight=weight)


def _pass(g: Graph, sid: str, scaled: bool, base_ckpt: str | None, rec: dict[str, Any]) -> dict[str, Any]:
    """One pass after the base one, as the record lists it; a refiner's own checkpoint and the first
    upscale pass's steps and denoise also fill ``refiner_model`` and ``hires_*``."""
    node = g.nodes[sid]
    ct = str(node.get("class_type", ""))
    v = pass_values(g, node)
    noise = adds_noise(g, node)
    model = checkpoint(g, v["model"])
    out = {"kind": pass_kind(ct, scaled), "node": sid, "class_type": ct, "adds_noise": noise,
           "seed": to_int(v["seed"]) if noise else None, "steps": to_int(v["steps"]), "cfg_scale": to_float(v["cfg"]),
           "sampler": v["sampler"] if isinstance(v["sampler"], str) else None,
           "scheduler": v["scheduler"] if isinstance(v["scheduler"], str) else None,
           "denoise": to_float(v["denoise"]), "model": model}
    if out["kind"] == "refiner" and model and model != base_ckpt and not rec.get("refiner_model"):
        rec["refiner_model"] = model
    if out["kind"] == "upscale" and rec.get("hires_steps") is None:
        rec["hires_steps"], rec["hires_denoising"] = out["steps"], out["denoise"]
    return out
