"""A ComfyUI prompt graph: reading it, resolving links, walking upstream, and which nodes sample or save.

Pure and bounded: every walk over a graph from a stranger shares a work budget linear in the graph.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 40


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


def is_output_name(ct: str) -> bool:
    """``_OUTPUT_RE.search(ct)``, the same way ("image ?saver" holds "save")."""
    if ct.isascii():
        low = ct.lower()
        return "save" in low or "preview" in low
    return _OUTPUT_RE.search(ct) is not None


def sampler_nodes(g: Graph) -> list[tuple[str, dict]]:
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
