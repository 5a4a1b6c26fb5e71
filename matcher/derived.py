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
"""
from __future__ import annotations

import ast
import configparser
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

import simpleeval

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
