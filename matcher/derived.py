"""Derived fields: user-defined expressions over a parsed record, evaluated safely and in order.

config.ini::

    [derived]
    is_sdxl = base_model == "SDXL 1.0"
    lora_count = len(loras)
    style = lower(coalesce(civitai_model_name, model_name, "unknown"))
    heavy = lora_count >= 3          # earlier derived fields are names too

Each expression sees the record's keys (the parsed generation record merged with its Civitai
enrichment, as the caller passes it) and the fields derived before it. One pass, in file order:
a field can use only fields above it, so there are no circular references. A name the record does
not have is ``None``.

The language is `simpleeval <https://github.com/danthedeckie/simpleeval>`_ with less:
literals, arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``, ``[...]``/``{...}``
literals and subscripts (``loras[0]``, ``params["Steps"]``), and calls to these functions only:

``lower upper strip len round abs min max int float str bool coalesce contains startswith
endswith replace regex join split``.

Refused (the field gets no value): attribute access (``x.__class__``, ``"a".upper()``), names
starting with ``_`` (``__import__``), comprehensions, lambdas, f-strings, ``%``-formatting, shifts,
exponents above 100, strings/lists longer than 10,000 items, expressions longer than 1,000
characters, statements and several expressions. Python's ``eval`` is never used.

An error in one field stores nothing for it (with ``debug=True``: the string
``"#error: <why>"``) and evaluation goes on with the next field.

``match`` evaluates the fields for every file of the library (``derived_record`` says which names a
file offers) and keeps the values in library.sqlite's ``derived_fields`` (``update_derived_fields``).
"""
from __future__ import annotations

import ast
import configparser
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import simpleeval
import sqlite_utils

from crawler.clock import utc_now
from matcher.library import present_files
from matcher.schema import ensure_library

log = logging.getLogger(__name__)

MAX_EXPRESSION = 1000
MAX_LENGTH = 10_000
MAX_ITEMS = 100_000   # items inside any value (records may hold long texts and lists)
MAX_EXPONENT = 100
MAX_REGEX = 200
ERROR_PREFIX = "#error: "
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class DerivedError(ValueError):
    """An expression that is refused or fails."""


def _check_len(value: Any) -> Any:
    if hasattr(value, "__len__") and len(value) > MAX_LENGTH:
        raise DerivedError(f"result longer than {MAX_LENGTH}")
    return value


def _weight(value: Any, budget: int = MAX_LENGTH, count_text: bool = True) -> int:
    """Items in ``value``, counted through nested lists/dicts; raises once above ``budget``.

    Stops early, so a list holding the same big list many times costs no more than ``budget``.
    """
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += max(1, len(item)) if count_text else 1
        elif isinstance(item, dict):
            total += 1
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            total += 1
            stack.extend(item)
        else:
            total += 1
        if total > budget:
            raise DerivedError(f"value larger than {budget} items")
    return total


def _mult(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if hasattr(seq, "__len__") and isinstance(n, (int, float)) and _weight(seq) * n > MAX_LENGTH:
            raise DerivedError(f"repetition longer than {MAX_LENGTH}")
    return a * b


def _add(a: Any, b: Any) -> Any:
    if hasattr(a, "__len__") and hasattr(b, "__len__") and _weight(a) + _weight(b) > MAX_LENGTH:
        raise DerivedError(f"result longer than {MAX_LENGTH}")
    return a + b


def _pow(a: Any, b: Any) -> Any:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        raise DerivedError("** takes numbers")
    if abs(b) > MAX_EXPONENT or abs(a) > 10**9:
        raise DerivedError(f"exponent above {MAX_EXPONENT} (or base above 10**9) refused")
    return a ** b


def _mod(a: Any, b: Any) -> Any:
    if not isinstance(a, (int, float)):
        raise DerivedError("% is for numbers only (no string formatting)")
    return a % b


def _refuse(*_: Any) -> Any:
    raise DerivedError("operator not allowed")


OPERATORS = {
    **simpleeval.DEFAULT_OPERATORS,
    ast.Mult: _mult, ast.Add: _add, ast.Pow: _pow, ast.Mod: _mod,
    ast.LShift: _refuse, ast.RShift: _refuse,
}


# ---- the whitelist ---------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, set, dict)):
        raise DerivedError("a text function got a list or dict")
    return "" if value is None else str(value)


def _replace(s: Any, old: Any, new: Any) -> str:
    s, old, new = _text(s), _text(old), _text(new)
    if old and len(s) + s.count(old) * len(new) > MAX_LENGTH:
        raise DerivedError(f"result longer than {MAX_LENGTH}")
    return _check_len(s.replace(old, new))


def coalesce(*values: Any) -> Any:
    """The first value that is not None (or empty string)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None


def contains(haystack: Any, needle: Any) -> bool:
    """Case-insensitive for text; membership for lists and dicts; False for None."""
    if haystack is None:
        return False
    if isinstance(haystack, str):
        return _text(needle).lower() in haystack.lower()
    if isinstance(haystack, (list, tuple, set, dict)):
        if isinstance(needle, str):
            return any(isinstance(h, str) and h.lower() == needle.lower() for h in haystack)
        return needle in haystack
    return False


def regex(pattern: str, text: Any, group: int = 0) -> Any:
    """``re.search``: the match (or ``group``), or None. Case-insensitive."""
    if len(_text(pattern)) > MAX_REGEX:
        raise DerivedError(f"regex longer than {MAX_REGEX}")
    found = re.search(_text(pattern), _text(text)[:MAX_LENGTH], re.IGNORECASE)
    return found.group(group) if found else None


def _round(value: Any, digits: int = 0) -> Any:
    if not isinstance(digits, int) or abs(digits) > 15:
        raise DerivedError("round() digits must be an integer up to 15")
    result = round(value, digits)
    return int(result) if digits == 0 and isinstance(result, float) and math.isfinite(result) else result


def _str(value: Any) -> str:
    return _check_len(_text(value))


def _join(sep: Any, items: Any) -> str:
    parts = [_text(i) for i in _check_len(items or [])]
    if sum(map(len, parts)) + len(_text(sep)) * len(parts) > MAX_LENGTH:
        raise DerivedError(f"result longer than {MAX_LENGTH}")
    return _text(sep).join(parts)


FUNCTIONS: dict[str, Any] = {
    "lower": lambda s: _text(s).lower(),
    "upper": lambda s: _text(s).upper(),
    "strip": lambda s: _text(s).strip(),
    "len": lambda x: 0 if x is None else len(x),
    "round": _round,
    "abs": abs,
    "min": min,
    "max": max,
    "int": int,
    "float": float,
    "str": _str,
    "bool": bool,
    "coalesce": coalesce,
    "contains": contains,
    "startswith": lambda s, p: _text(s).startswith(_text(p)),
    "endswith": lambda s, p: _text(s).endswith(_text(p)),
    "replace": _replace,
    "regex": regex,
    "join": _join,
    "split": lambda s, sep=None: _text(s).split(sep),
}


class _Names(dict):
    """The record plus earlier fields; a missing name is None, an underscore name is refused."""

    def __getitem__(self, key: str) -> Any:
        if key.startswith("_"):
            raise DerivedError(f"name {key!r} refused (names starting with _ are not allowed)")
        if key in FUNCTIONS:
            raise KeyError(key)
        return dict.get(self, key)


class _Evaluator(simpleeval.EvalWithCompoundTypes):
    def __init__(self, names: dict[str, Any]):
        super().__init__(operators=OPERATORS, functions=FUNCTIONS, names=names)
        for node in (ast.Attribute, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                     ast.JoinedStr, ast.FormattedValue):
            self.nodes.pop(node, None)
        if hasattr(ast, "NamedExpr"):
            self.nodes.pop(ast.NamedExpr, None)

    def _check_disallowed_items(self, item: Any) -> None:
        # simpleeval walks every argument item by item (unbounded: a list holding one big list
        # 10,000 times is 10^8 steps). Only whitelisted functions exist here, so bound the size.
        _weight(item, MAX_ITEMS, count_text=False)

    def _eval_call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise DerivedError("only the documented functions can be called")
        return _check_len(super()._eval_call(node))


def parse_expression(expr: str) -> ast.expr:
    """Parse one expression (refusing statements, several expressions and overlong text)."""
    if len(expr) > MAX_EXPRESSION:
        raise DerivedError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise DerivedError(f"not an expression: {exc.__class__.__name__}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            raise DerivedError("attribute access is not allowed")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise DerivedError(f"name {node.id!r} refused (names starting with _ are not allowed)")
    return tree.body


def check_fields(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Validate names (identifiers, not a function, no duplicates); expressions are checked when used."""
    out, seen = [], set()
    for name, expr in fields:
        if not _NAME.match(name) or name in FUNCTIONS:
            raise DerivedError(f"derived field name {name!r} must be a plain identifier, not a function name")
        if name in seen:
            raise DerivedError(f"derived field {name!r} is defined twice")
        seen.add(name)
        out.append((name, expr))
    return out


def evaluate_derived(record: dict[str, Any], fields: list[tuple[str, str]], debug: bool = False) -> dict[str, Any]:
    """Evaluate ``fields`` ([(name, expression)], in order) over ``record``; return {name: value}.

    A field that fails or is refused is left out (with ``debug``: ``"#error: <why>"``).
    """
    names = _Names(record or {})
    evaluator = _Evaluator(names)
    out: dict[str, Any] = {}
    for name, expr in fields:
        try:
            tree = parse_expression(expr)
            value = evaluator.eval(expr, previously_parsed=tree)
            if callable(value):
                raise DerivedError("a function is not a value (call it)")
            _weight(value, MAX_ITEMS, count_text=False)
        except Exception as exc:  # noqa: BLE001 - one field's failure never stops the run
            why = f"{type(exc).__name__}: {exc}"[:300]
            log.debug("derived field %s failed: %s", name, why)
            if debug:
                out[name] = ERROR_PREFIX + why
            continue
        out[name] = value
        names[name] = value
    return out


def load_derived_fields(path: str | Path | None, section: str = "derived") -> list[tuple[str, str]]:
    """The ``[derived]`` section of a config file, in file order (names keep their case)."""
    if not path or not Path(path).is_file():
        return []
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), default_section="\x00none",
                                       inline_comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment]
    parser.read(path, encoding="utf-8")
    if not parser.has_section(section):
        return []
    return check_fields(parser.items(section))


# ---- the record of a library file, and its stored values (``match`` runs this after enrichment) ---

#: generations columns that are not part of the record under their own name
_GEN_SKIP = {"file_id", "params_json", "seed_text", "_extracted_at"}
#: media_info columns that are not part of the record
_MEDIA_SKIP = {"file_id", "thumbnail", "_source_stamp", "_extracted_at", "error", "format"}
_HASH_COLUMNS = ("sha256", "autov1", "autov2", "autov3", "autov3_full", "crc32", "blake3")


def derived_record(file_row: dict, match_row: dict | None = None, generation: dict | None = None,
                   loras: list[dict] | None = None, resources: list[dict] | None = None,
                   media: dict | None = None) -> dict[str, Any]:
    """The names a derived expression sees for one file (see README "Derived fields").

    File: ``path file_name kind format size`` + hashes, ``file_model_type file_base_model`` (the
    scan's detection). Civitai enrichment (the ``matches`` row): ``version_id model_id
    civitai_file_id hash_type confidence match_reason pinned civitai_model_name
    civitai_version_name civitai_type civitai_base_model civitai_image_id``; ``base_model`` and
    ``model_type`` are Civitai's when matched, else the scan's. Images add the parsed generation
    record (the ``generations`` columns: ``model_name steps sampler cfg_scale seed ...``, plus
    ``prompt``/``negative_prompt`` = the raw prompts, ``params``, ``loras``, ``resources``) and the
    ``media_info`` facts (``blurhash``, ``exif_*``, ``image_width``/``image_height``).
    """
    m = match_row or {}
    rec: dict[str, Any] = {
        "path": file_row.get("path"), "file_name": os.path.basename(file_row.get("path") or ""),
        "kind": file_row.get("kind"), "format": file_row.get("format"), "size": file_row.get("size"),
        **{c: file_row.get(c) for c in _HASH_COLUMNS},
        "file_model_type": file_row.get("model_type"), "file_base_model": file_row.get("base_model"),
        "width": file_row.get("width"), "height": file_row.get("height"),
        "image_width": file_row.get("width"), "image_height": file_row.get("height"),
        "version_id": m.get("version_id"), "model_id": m.get("model_id"),
        "civitai_file_id": m.get("civitai_file_id"), "hash_type": m.get("hash_type"),
        "confidence": m.get("confidence"), "match_reason": m.get("reason"),
        "pinned": bool(m.get("pinned")), "civitai_model_name": m.get("model_name"),
        "civitai_version_name": m.get("version_name"), "civitai_type": m.get("model_type"),
        "civitai_base_model": m.get("base_model"), "civitai_image_id": m.get("civitai_image_id"),
        "model_name": None, "prompt": None, "negative_prompt": None, "params": {},
        "loras": list(loras or []), "resources": list(resources or []),
    }
    rec["base_model"] = m.get("base_model") if m.get("version_id") is not None and m.get("base_model") \
        else file_row.get("base_model")
    rec["model_type"] = m.get("model_type") if m.get("version_id") is not None and m.get("model_type") \
        else file_row.get("model_type")
    for key, value in (media or {}).items():
        if key not in _MEDIA_SKIP and (value is not None or key not in rec):
            rec[key] = value
    if generation:
        for key, value in generation.items():
            if key not in _GEN_SKIP and (value is not None or key not in rec):
                rec[key] = value
        if generation.get("seed") is None and generation.get("seed_text"):
            try:
                rec["seed"] = int(generation["seed_text"])
            except ValueError:
                rec["seed"] = generation["seed_text"]
        rec["prompt"] = generation.get("positive_raw")
        rec["negative_prompt"] = generation.get("negative_raw")
        try:
            rec["params"] = json.loads(generation.get("params_json") or "{}")
        except ValueError:
            rec["params"] = {}
    return rec


def iter_derived_records(db: sqlite_utils.Database) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file_id, derived_record) for every present model file and media file of the library."""
    def grouped(sql: str) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for r in db.query(sql):
            out.setdefault(r.pop("file_id"), []).append(r)
        return out

    matches = {m["file_id"]: m for m in db.query("select * from matches")} if db["matches"].exists() else {}
    gens = {g["file_id"]: g for g in db.query("select * from generations")} if db["generations"].exists() else {}
    loras = grouped("select file_id, name, weight, weight2, context, kind from lora_usages "
                    "order by file_id, position, id") if db["lora_usages"].exists() else {}
    resources: dict[int, list[dict]] = {}
    if db["resources"].exists():
        rm = db["resource_matches"].exists()
        resolved = ("coalesce(rm.version_id, r.version_id) as version_id, rm.model_id, rm.model_name, "
                    "rm.version_name, rm.model_type, rm.base_model, rm.confidence, rm.local_file_id"
                    if rm else "r.version_id")
        join = "left join resource_matches rm on rm.resource_id = r.id" if rm else ""
        resources = grouped(f"select r.file_id, r.kind, r.name, r.hash, r.hash_kind, r.weight, {resolved} "
                            f"from resources r {join} order by r.file_id, r.position, r.id")
    media: dict[int, dict] = {}
    mcols = set(db["media_info"].columns_dict) - _MEDIA_SKIP if db["media_info"].exists() else set()
    if mcols:
        cols = ", ".join(sorted(mcols))
        media = {r["file_id"]: r for r in db.query(f"select file_id, {cols} from media_info")}
        for r in media.values():
            r.pop("file_id")
    for kind in ("model", "media"):
        for row in present_files(db, kind):
            fid = row["id"]
            yield fid, derived_record(row, matches.get(fid), gens.get(fid), loras.get(fid),
                                      resources.get(fid), media.get(fid))


def _stored_value(value: Any) -> Any:
    """A derived value as SQLite keeps it (so a re-run can tell whether it changed)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(2 ** 63) <= value < 2 ** 63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def update_derived_fields(db: sqlite_utils.Database, fields: list[tuple[str, str]], *,
                          debug: bool = False) -> dict[str, Any]:
    """Evaluate ``fields`` in order for every file (``iter_derived_records``) and store them in
    ``derived_fields``. A field that fails or is refused stores nothing for that file (``debug``:
    a row with ``error``); rows of fields no longer configured are removed; unchanged values are
    not written. Returns ``{fields, files, values, written, removed, errors: {name: count},
    first_error: {name: why}}``."""
    ensure_library(db)
    names = [name for name, _ in fields]
    existing: dict[tuple[int, str], tuple[Any, Any]] = {
        (r[0], r[1]): (r[2], r[3]) for r in db.execute("select file_id, name, value, error from derived_fields")}
    summary: dict[str, Any] = {"fields": len(fields), "files": 0, "values": 0, "written": 0, "removed": 0,
                               "errors": {}, "first_error": {}}
    now = utc_now()
    upserts: list[dict] = []
    seen: set[int] = set()
    kept: set[tuple[int, str]] = set()
    for fid, record in (iter_derived_records(db) if fields else ()):
        summary["files"] += 1
        seen.add(fid)
        out = evaluate_derived(record, fields, debug=True)
        for name in names:
            if name not in out:
                continue
            value = out[name]
            if isinstance(value, str) and value.startswith(ERROR_PREFIX):
                why = value[len(ERROR_PREFIX):]
                summary["errors"][name] = summary["errors"].get(name, 0) + 1
                summary["first_error"].setdefault(name, why)
                if not debug:
                    continue
                want = (None, why)
            else:
                summary["values"] += 1
                want = (_stored_value(value), None)
            kept.add((fid, name))
            if existing.get((fid, name)) != want:
                upserts.append({"file_id": fid, "name": name, "value": want[0], "error": want[1],
                                "_updated_at": now})
    # a stored row goes when its field is no longer configured, or when its file was evaluated
    # and the field gave nothing this time (it failed, without --debug)
    deletes = sorted(key for key in existing
                     if key[1] not in names or (key[0] in seen and key not in kept))
    with db.conn:
        for fid, name in deletes:
            db.execute("delete from derived_fields where file_id = ? and name = ?", [fid, name])
        gone = db.execute("delete from derived_fields where file_id not in (select id from files)").rowcount
        if upserts:
            db["derived_fields"].upsert_all(upserts, pk=("file_id", "name"))
    summary["written"], summary["removed"] = len(upserts), len(deletes) + max(gone, 0)
    return summary
