"""ComfyUI prompt graphs: walk from the sampler back to the loaders, resolving links.

``parse_comfy_prompt(graph)`` takes the API-format prompt (``{node_id: {class_type, inputs}}``)
and returns a normalised record. Pure; unresolvable links give None, never a guess.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .a1111 import parse_air
from .normalise import add_lora_usage, add_resource, extract_loras, new_record, to_float, to_int

MAX_DEPTH = 40

_LOADER_KEYS = {
    "ckpt_name": "checkpoint", "unet_name": "checkpoint", "lora_name": "lora", "vae_name": "vae",
    "control_net_name": "controlnet", "hypernetwork_name": "hypernetwork",
}


def load_graph(text: str | dict | None) -> dict[str, Any] | None:
    """Prompt JSON in any of its wrappers -> {node_id: node} or None."""
    if text is None:
        return None
    if isinstance(text, str):
        s = text.strip().strip("\x00")
        m = re.match(r"^(prompt|Prompt)\s*:\s*", s)
        if m:
            s = s[m.end():]
        if not s.startswith("{"):
            return None
        try:
            data = json.loads(s)
        except ValueError:
            return None
    else:
        data = text
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    elif isinstance(data.get("prompt"), str):
        return load_graph(data["prompt"])
    nodes = {str(k): v for k, v in data.items() if isinstance(v, dict) and "class_type" in v}
    return nodes or None


def has_graph(text: Any) -> bool:
    """``bool(load_graph(text))`` for a text, reading the JSON with orjson where that gives the same answer.

    Only whether a graph is there is asked, so a bare NaN (which orjson refuses) is read as ``[]``: a
    complete value wherever NaN is one and invalid wherever NaN is (after a value, a digit, a sign, a
    backslash, as a key), so the text parses exactly when json parses the original, and no node dict or
    ``class_type`` key changes. Anything else orjson refuses (Infinity, lone surrogates, nesting deep
    enough for json's recursion limit), a wrapped or string ``prompt``, goes through ``load_graph``.
    """
    if type(text) is str:
        s = text.strip().strip("\x00")
        if s.startswith("{") and "Infinity" not in s and s.count("{") + s.count("[") < 400:
            try:
                data = orjson.loads(s.replace("NaN", "[]") if "NaN" in s else s)
            except orjson.JSONDecodeError:
                return bool(load_graph(text))
            if type(data) is dict:
                inner = data.get("prompt")
                if type(inner) is dict:
                    data = inner
                elif isinstance(inner, str):
                    return bool(load_graph(text))
                for v in data.values():
                    if isinstance(v, dict) and "class_type" in v:
                        return True
                return False
    return bool(load_graph(text))


def is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int)


#: which inputs of a linked node hold the value asked for (``resolve``)
_RESOLVE_ALIASES = {
    "seed": ("seed", "noise_seed", "value", "int", "Value", "seed_value"),
    "steps": ("steps", "value", "int", "Value"),
    "cfg": ("cfg", "value", "float", "Value", "guidance"),
    "sampler_name": ("sampler_name", "sampler", "value", "string"),
    "scheduler": ("scheduler", "value", "string"),
    "text": ("text", "string", "value", "prompt", "text_positive", "Text", "wildcard_text", "populated_text", "STRING"),
    "denoise": ("denoise", "value", "float"),
    "width": ("width", "value", "int"), "height": ("height", "value", "int"),
}


class Graph:
    def __init__(self, nodes: dict[str, Any]):
        self.nodes = nodes
        self._links: dict[str, tuple[list, list]] = {}  # node id -> its link inputs, found once

    def links(self, nid: str, node: dict) -> tuple[list[tuple[str, list]], list[list]]:
        """([(input name, link)], [link]) for the inputs of ``node`` that are links, in input order (cached:
        the walks below reach the same nodes many times, and a parse never changes the graph)."""
        found = self._links.get(nid)
        if found is None:
            ins = node.get("inputs") if node else None
            pairs = [(k, v) for k, v in ins.items() if is_link(v)] if isinstance(ins, dict) else []
            found = self._links[nid] = (pairs, [v for _k, v in pairs])
        return found

    def node(self, link: Any) -> dict[str, Any] | None:
        if is_link(link):
            n = self.nodes.get(str(link[0]))
            return n if isinstance(n, dict) else None
        return None

    def inputs(self, node: dict | None) -> dict[str, Any]:
        if not node:
            return {}
        i = node.get("inputs")
        return i if isinstance(i, dict) else {}

    def resolve(self, value: Any, key: str, depth: int = 0) -> Any:
        """A scalar input, following links into primitive/literal nodes. None when unsure."""
        if not is_link(value):
            return value
        if depth > MAX_DEPTH:
            return None
        node = self.node(value)
        if not node:
            return None
        ins = self.inputs(node)
        aliases = _RESOLVE_ALIASES.get(key) or (key, "value")
        for a in aliases:
            if a in ins:
                return self.resolve(ins[a], key, depth + 1)
        # a multi-output node: use the output index into its scalar inputs when they line up
        # a node with one scalar input and nothing else (a literal of some custom pack)
        if len(ins) == 1 and key != "text":
            (v,) = ins.values()
            if isinstance(v, (str, int, float)) and not isinstance(v, bool):
                return v
        return None

    def upstream(self, start: Any, follow: tuple[str, ...] | None = None, limit: int = 200,
                 work: list[int] | None = None):
        """Nodes reachable upstream from a link (BFS, each once).

        ``work``: a shared count of queue steps left (several walks of one graph share it, so the
        walks together stay linear in the graph); the walk stops when it reaches 0."""
        if not is_link(start):
            return []
        nodes = self.nodes
        seen: set[str] = set()
        queue = [start]  # every entry is a link: only links are queued
        qi = 0
        out = []
        while qi < len(queue) and len(out) < limit:
            if work is not None:
                if work[0] <= 0:
                    break
                work[0] -= 1
            nid = str(queue[qi][0])
            qi += 1
            if nid in seen or nid not in nodes:
                continue
            seen.add(nid)
            node = nodes[nid]
            out.append((nid, node))
            pairs, links = self.links(nid, node)
            if follow is None:
                queue.extend(links)
            elif pairs:
                queue.extend([v for k, v in pairs if k in follow])
        return out


_SAMPLER_HINT = re.compile(r"sampler|ksampler", re.IGNORECASE)


def _is_sampler_name(ct: str) -> bool:
    """``_SAMPLER_HINT.search(ct)``: an ASCII name (all real ones) by a substring test on the lower-cased
    name ("ksampler" holds "sampler"; IGNORECASE also folds some non-ASCII letters, hence the regex there)."""
    if ct.isascii():
        return "sampler" in ct.lower()
    return _SAMPLER_HINT.search(ct) is not None


def _is_output_name(ct: str) -> bool:
    """``_OUTPUT_RE.search(ct)``, the same way ("image ?saver" holds "save")."""
    if ct.isascii():
        low = ct.lower()
        return "save" in low or "preview" in low
    return _OUTPUT_RE.search(ct) is not None


def _sampler_nodes(g: Graph) -> list[tuple[str, dict]]:
    out = []
    for nid, node in g.nodes.items():
        ct = str(node.get("class_type", ""))
        ins = g.inputs(node)
        if ct in ("KSamplerSelect", "SamplerCustomAdvanced") or "SamplerSelect" in ct:
            if ct == "SamplerCustomAdvanced":
                out.append((nid, node))
            continue
        has_seed = "seed" in ins or "noise_seed" in ins
        if not has_seed and "steps" not in ins:
            continue  # neither test below can pass
        if (("steps" in ins or has_seed) and _is_sampler_name(ct)) or \
                (has_seed and "steps" in ins and "cfg" in ins):
            out.append((nid, node))
    return out


_OUTPUT_RE = re.compile(r"save|preview|image ?saver", re.IGNORECASE)


def _final_sampler(g: Graph, samplers: list[tuple[str, dict]]) -> tuple[str, dict] | None:
    """The sampler that produced the saved image: walk back from each output node to the nearest
    sampler; with several outputs, take the one with the longest sampler chain (the final pass)."""
    ids = {nid for nid, _ in samplers}
    if not ids:
        return None
    best, best_depth = None, -1
    work = [20_000 + 8 * len(g.nodes)]  # all the walks below together: linear in the graph
    for nid, node in g.nodes.items():
        if work[0] <= 0:
            break
        if nid in ids or not _is_output_name(str(node.get("class_type", ""))):
            continue
        ups = g.upstream([nid, 0], limit=2000, work=work)
        chain = [(i, n) for i, n in ups if i in ids]
        if not chain:
            continue
        if len(chain) > best_depth:
            best, best_depth = chain[0], len(chain)
    return _base_pass(g, best, ids) if best else None


_LATENT_KEYS = ("latent_image", "samples", "pixels", "image", "images", "latent", "samples_to")


def _denoise(g: Graph, node: dict) -> float | None:
    ins = g.inputs(node)
    d = to_float(g.resolve(ins.get("denoise"), "denoise"))
    if d is None and g.node(ins.get("sigmas")):
        d = to_float(g.resolve(g.inputs(g.node(ins["sigmas"])).get("denoise"), "denoise"))
    return d


def _base_pass(g: Graph, final: tuple[str, dict], ids: set[str]) -> tuple[str, dict]:
    """A hires/refine pass (denoise < 1) on top of one txt2img pass reports the base pass, like A1111's
    hires fix does; anything more tangled keeps the final sampler."""
    d = _denoise(g, final[1])
    if d is None or d >= 1.0:
        return final
    ups = g.upstream(g.inputs(final[1]).get("latent_image"), follow=_LATENT_KEYS, limit=500)
    base = next(((i, n) for i, n in ups if i in ids), None)
    if base is None:
        return final
    bd = _denoise(g, base[1])
    if bd is not None and bd < 1.0:
        return final
    ups2 = g.upstream(g.inputs(base[1]).get("latent_image"), follow=_LATENT_KEYS, limit=500)
    if any(i in ids for i, _ in ups2):
        return final
    if any("Empty" in str(n.get("class_type", "")) for _, n in ups2):
        return base
    return final


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


def parse_comfy_prompt(nodes: dict[str, Any], tool: str = "ComfyUI") -> dict[str, Any]:
    g = Graph(nodes)
    rec = new_record(tool)
    samplers = _sampler_nodes(g)
    primary = _final_sampler(g, samplers)
    for nid, node in samplers if primary is None else []:
        d = to_float(g.resolve(g.inputs(node).get("denoise"), "denoise"))
        if d is None or d >= 1.0:
            primary = (nid, node)
            break
    if primary is None and samplers:
        primary = samplers[0]
    model_link = None
    if primary:
        _nid, node = primary
        ins = g.inputs(node)
        ct = node.get("class_type")
        seed = g.resolve(ins.get("seed", ins.get("noise_seed")), "seed")
        steps = g.resolve(ins.get("steps"), "steps")
        cfg = g.resolve(ins.get("cfg"), "cfg")
        sampler = g.resolve(ins.get("sampler_name"), "sampler_name")
        scheduler = g.resolve(ins.get("scheduler"), "scheduler")
        denoise = g.resolve(ins.get("denoise"), "denoise")
        positive, negative = ins.get("positive"), ins.get("negative")
        model_link = ins.get("model")
        if ct == "SamplerCustomAdvanced" or "sampler" in ins or "sigmas" in ins:
            noise = g.node(ins.get("noise"))
            if noise and seed is None:
                seed = g.resolve(g.inputs(noise).get("noise_seed", g.inputs(noise).get("seed")), "seed")
            guider = g.node(ins.get("guider"))
            if guider:
                gi = g.inputs(guider)
                cfg = cfg if cfg is not None else g.resolve(gi.get("cfg"), "cfg")
                positive = positive or gi.get("positive") or gi.get("conditioning")
                negative = negative or gi.get("negative")
                model_link = model_link or gi.get("model")
            sel = g.node(ins.get("sampler"))
            if sel and sampler is None:
                sampler = g.resolve(g.inputs(sel).get("sampler_name"), "sampler_name")
            sig = g.node(ins.get("sigmas"))
            if sig:
                si = g.inputs(sig)
                steps = steps if steps is not None else g.resolve(si.get("steps"), "steps")
                scheduler = scheduler if scheduler is not None else g.resolve(si.get("scheduler"), "scheduler")
                if denoise is None:
                    denoise = g.resolve(si.get("denoise"), "denoise")
                model_link = model_link or si.get("model")
        rec["seed"] = to_int(seed)
        rec["steps"] = to_int(steps)
        rec["cfg_scale"] = to_float(cfg)
        rec["sampler"] = sampler if isinstance(sampler, str) else None
        rec["scheduler"] = scheduler if isinstance(scheduler, str) else None
        rec["denoising_strength"] = to_float(denoise)
        pos = _texts(g, positive)
        neg = _texts(g, negative)
        rec["positive_raw"] = "\n".join(pos) if pos else None
        rec["negative_raw"] = "\n".join(neg) if neg else None
        latent = g.upstream(ins.get("latent_image"), follow=("samples", "latent", "latent_image", "pixels"))
        for _n, ln in latent:
            li = g.inputs(ln)
            if "width" in li and "height" in li:
                w, h = to_int(g.resolve(li["width"], "width")), to_int(g.resolve(li["height"], "height"))
                if w and h:
                    rec["width"], rec["height"] = w, h
                break
    # the model chain from the sampler back to the checkpoint
    chain = g.upstream(model_link) if model_link is not None else []
    ckpt = None
    for _nid, node in chain:
        ins = g.inputs(node)
        for key in ("ckpt_name", "unet_name", "model_name", "base_ckpt_name"):
            v = ins.get(key)
            if isinstance(v, str) and key != "model_name" or (key == "model_name" and isinstance(v, str) and
                                                              "Checkpoint" in str(node.get("class_type"))):
                ckpt = v
                break
        if ckpt:
            break
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
