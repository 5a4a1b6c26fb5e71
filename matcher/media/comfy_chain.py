"""Which passes made the saved image: from the save node that wrote the file back through its samplers.

``sampler_chain(g, filename)`` -> the samplers that fed the save node, first pass (the base) to last,
each with whether a scaling node lies before it; ``pass_values(g, node)`` -> one sampler's settings,
with its noise, guider, sampler and sigmas nodes followed; ``checkpoint(g, model_link)`` -> the loader's
file name; ``adds_noise`` and ``pass_kind`` say what a later pass is. Every walk of one graph shares a
work budget linear in the graph.
"""
from __future__ import annotations

import os
from typing import Any

from .comfy_graph import Graph, is_output_name, sampler_nodes
from .normalise import to_float

#: inputs through which an image or a latent flows from one pass to the next
_FLOW_KEYS = frozenset(("latent_image", "samples", "pixels", "image", "images", "latent", "samples_to",
                        "samples_from", "destination", "source", "latent_samples"))
#: inputs of a save node that name the file it writes
_NAME_KEYS = ("filename_prefix", "filename", "output_prefix")
#: at most this many passes are followed back from one save node
MAX_PASSES = 32
_NO_NOISE = ("disable", "disabled", "false", "off", "no")


def _work(g: Graph) -> list[int]:
    return [20_000 + 8 * len(g.nodes)]


def _feeders(g: Graph, nid: str, ids: set[str], work: list[int]) -> tuple[list[str], bool]:
    """The samplers (at most two) feeding node ``nid`` through image and latent inputs, not through
    another sampler, and whether a scaling node lies on the way."""
    node = g.nodes.get(nid)
    pairs = g.links(nid, node)[0] if isinstance(node, dict) else []
    queue = [v for k, v in pairs if k in _FLOW_KEYS]
    seen, found, scaled, qi = {nid}, [], False, 0
    while qi < len(queue) and work[0] > 0 and len(found) < 2:
        work[0] -= 1
        n = str(queue[qi][0])
        qi += 1
        if n in seen or n not in g.nodes:
            continue
        seen.add(n)
        if n in ids:
            found.append(n)
            continue
        up = g.nodes[n]
        if not isinstance(up, dict):
            continue
        if "scale" in str(up.get("class_type", "")).lower():
            scaled = True
        queue.extend(v for k, v in g.links(n, up)[0] if k in _FLOW_KEYS)
    return found, scaled


def _chain_from(g: Graph, save: str, ids: set[str], work: list[int]) -> list[tuple[str, bool]]:
    """[(sampler id, scaled before it)] from the base pass to the last one that fed ``save``. A point
    fed by several samplers (a composite) ends the walk: the pass it feeds counts as the base."""
    chain: list[list] = []
    seen: set[str] = set()
    cur = save
    while len(chain) < MAX_PASSES:
        found, scaled = _feeders(g, cur, ids, work)
        if len(found) != 1 or found[0] in seen:
            break
        if chain:
            chain[-1][1] = scaled
        chain.append([found[0], False])
        seen.add(found[0])
        cur = found[0]
    return [(sid, scaled) for sid, scaled in reversed(chain)]


def _prefix(g: Graph, node: dict) -> str | None:
    """The file-name start a save node writes (``out/base_%date%`` -> ``base_``), lower-cased."""
    ins = g.inputs(node)
    for key in _NAME_KEYS:
        v = g.resolve(ins.get(key), "text")
        if isinstance(v, str) and v.strip():
            v = v.replace("\\", "/").rsplit("/", 1)[-1].split("%", 1)[0].strip().lower()
            return v or None
    return None


def sampler_chain(g: Graph, filename: str | None = None) -> list[tuple[str, bool]]:
    """The passes that made the saved file, base first (see ``_chain_from``); [] when no save node
    reaches a sampler through images and latents alone.

    With several save nodes, the one whose ``filename_prefix`` starts the file's name (the longest such)
    is taken when that tells them apart; otherwise the one with the longest chain (the final output)."""
    ids = {nid for nid, _ in sampler_nodes(g)}
    if not ids:
        return []
    work = _work(g)
    chains = []
    for nid, node in g.nodes.items():
        if work[0] <= 0:
            break
        if nid in ids or not isinstance(node, dict) or not is_output_name(str(node.get("class_type", ""))):
            continue
        chain = _chain_from(g, nid, ids, work)
        if chain:
            chains.append((node, chain))
    if not chains:
        return []
    if filename and len(chains) > 1:
        stem = os.path.basename(filename).lower()
        named = [(len(p), chain) for node, chain in chains if (p := _prefix(g, node)) and stem.startswith(p)]
        if named:
            longest = max(n for n, _c in named)
            best = [chain for n, chain in named if n == longest]
            if len({tuple(chain) for chain in best}) == 1:
                return best[0]
    return max(chains, key=lambda t: len(t[1]))[1]  # max keeps the first of equals: graph order


def adds_noise(g: Graph, node: dict) -> bool:
    """False for a pass that continues from its latent without new noise (``add_noise: disable``)."""
    v = g.resolve(g.inputs(node).get("add_noise"), "add_noise")
    return not (v is False or isinstance(v, str) and v.strip().lower() in _NO_NOISE)


def pass_kind(class_type: str, scaled: bool) -> str:
    """What a pass after the base one is: ``detailer``, ``upscale`` (scaled before it) or ``refiner``."""
    low = class_type.lower()
    if "detail" in low:
        return "detailer"
    if scaled or "upscale" in low:
        return "upscale"
    return "refiner"


def pass_values(g: Graph, node: dict) -> dict[str, Any]:
    """A sampler's seed, steps, cfg, sampler, scheduler, denoise and its positive, negative, model and
    latent links, following SamplerCustomAdvanced's noise, guider, sampler and sigmas nodes."""
    ins = g.inputs(node)
    v: dict[str, Any] = {
        "seed": g.resolve(ins.get("seed", ins.get("noise_seed")), "seed"),
        "steps": g.resolve(ins.get("steps"), "steps"), "cfg": g.resolve(ins.get("cfg"), "cfg"),
        "sampler": g.resolve(ins.get("sampler_name"), "sampler_name"),
        "scheduler": g.resolve(ins.get("scheduler"), "scheduler"),
        "denoise": g.resolve(ins.get("denoise"), "denoise"),
        "positive": ins.get("positive"), "negative": ins.get("negative"), "model": ins.get("model"),
        "latent": ins.get("latent_image"),
    }
    if node.get("class_type") == "SamplerCustomAdvanced" or "sampler" in ins or "sigmas" in ins:
        noise = g.node(ins.get("noise"))
        if noise and v["seed"] is None:
            ni = g.inputs(noise)
            v["seed"] = g.resolve(ni.get("noise_seed", ni.get("seed")), "seed")
        guider = g.node(ins.get("guider"))
        if guider:
            gi = g.inputs(guider)
            v["cfg"] = v["cfg"] if v["cfg"] is not None else g.resolve(gi.get("cfg"), "cfg")
            v["positive"] = v["positive"] or gi.get("positive") or gi.get("conditioning")
            v["negative"] = v["negative"] or gi.get("negative")
            v["model"] = v["model"] or gi.get("model")
        sel = g.node(ins.get("sampler"))
        if sel and v["sampler"] is None:
            v["sampler"] = g.resolve(g.inputs(sel).get("sampler_name"), "sampler_name")
        sig = g.node(ins.get("sigmas"))
        if sig:
            si = g.inputs(sig)
            for key, name in (("steps", "steps"), ("scheduler", "scheduler"), ("denoise", "denoise")):
                if v[key] is None:
                    v[key] = g.resolve(si.get(name), name)
            v["model"] = v["model"] or si.get("model")
    return v


def checkpoint(g: Graph, model_link: Any) -> str | None:
    """The checkpoint (or UNet) file name at the end of a model link's chain."""
    for _nid, node in g.upstream(model_link) if model_link is not None else ():
        ins = g.inputs(node)
        for key in ("ckpt_name", "unet_name", "base_ckpt_name"):
            if isinstance(ins.get(key), str):
                return ins[key]
        if isinstance(ins.get("model_name"), str) and "Checkpoint" in str(node.get("class_type")):
            return ins["model_name"]
    return None


_LATENT_KEYS = ("latent_image", "samples", "pixels", "image", "images", "latent", "samples_to")


def _denoise(g: Graph, node: dict) -> float | None:
    ins = g.inputs(node)
    d = to_float(g.resolve(ins.get("denoise"), "denoise"))
    if d is None and g.node(ins.get("sigmas")):
        d = to_float(g.resolve(g.inputs(g.node(ins["sigmas"])).get("denoise"), "denoise"))
    return d


def nearest_sampler(g: Graph) -> tuple[str, dict] | None:
    """When no save node reaches a sampler through images and latents: walk every input back from each
    output node to the nearest sampler, take the output with the most samplers upstream, and report a
    hires pass (denoise < 1) on one txt2img pass as that base pass; None when no output reaches one."""
    samplers = sampler_nodes(g)
    ids = {nid for nid, _ in samplers}
    best, best_depth = None, -1
    work = _work(g)
    for nid, node in g.nodes.items() if ids else ():
        if work[0] <= 0:
            break
        if nid in ids or not is_output_name(str(node.get("class_type", ""))):
            continue
        chain = [(i, n) for i, n in g.upstream([nid, 0], limit=2000, work=work) if i in ids]
        if chain and len(chain) > best_depth:
            best, best_depth = chain[0], len(chain)
    if best is None:
        for nid, node in samplers:
            d = to_float(g.resolve(g.inputs(node).get("denoise"), "denoise"))
            if d is None or d >= 1.0:
                return nid, node
        return samplers[0] if samplers else None
    return _base_pass(g, best, ids)


def _base_pass(g: Graph, final: tuple[str, dict], ids: set[str]) -> tuple[str, dict]:
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
