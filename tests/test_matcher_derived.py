"""Derived fields: the README example, the whitelist, and hostile expressions that must be refused."""
from __future__ import annotations

import pytest

from matcher.derived import DerivedError, check_fields, evaluate_derived, load_derived_fields

RECORD = {
    "base_model": "SDXL 1.0",
    "loras": [{"name": "detail"}, {"name": "style"}, {"name": "light"}],
    "model_name": "DreamShaper XL",
    "civitai_model_name": None,
    "steps": 30,
    "cfg_scale": 6.5,
    "prompt": "masterpiece, a cat, <lora:detail:0.8>",
    "params": {"Sampler": "DPM++ 2M"},
}


def test_readme_example_in_order():
    fields = [
        ("is_sdxl", 'base_model == "SDXL 1.0"'),
        ("lora_count", "len(loras)"),
        ("heavy", "lora_count >= 3"),
        ("name", 'lower(coalesce(civitai_model_name, model_name, "unknown"))'),
        ("first_lora", 'loras[0]["name"]'),
        ("sampler", 'params["Sampler"]'),
        ("cat", 'contains(prompt, "CAT")'),
        ("weight", r'float(regex("<lora:detail:([0-9.]+)>", prompt, 1))'),
        ("cfg", "round(cfg_scale)"),
        ("missing", "coalesce(not_in_record, 7)"),
        ("tags", 'join("|", split(replace(prompt, " ", ""), ",")[:2])'),
    ]
    assert evaluate_derived(RECORD, fields) == {
        "is_sdxl": True, "lora_count": 3, "heavy": True, "name": "dreamshaper xl",
        "first_lora": "detail", "sampler": "DPM++ 2M", "cat": True, "weight": 0.8, "cfg": 6,
        "missing": 7, "tags": "masterpiece|acat",
    }


def test_a_later_field_is_not_visible_earlier_and_errors_do_not_stop_the_run():
    fields = [("a", "b + 1"), ("b", "2"), ("c", "1 / 0"), ("d", "b * 2")]
    assert evaluate_derived({}, fields) == {"b": 2, "d": 4}
    debug = evaluate_derived({}, fields, debug=True)
    assert debug["a"].startswith("#error: ") and debug["c"].startswith("#error: ZeroDivisionError")
    assert debug["d"] == 4


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "model_name.upper()",
    "lower.__globals__",
    "_secret",
    "9**9**9",
    "2**1000000",
    "10**101",
    "'a' * 10**9",
    "['a'] * 10**8",
    "('x' * 9000) + ('y' * 9000)",
    "'%0999999999d' % 1",
    "f'{1:>999999999}'",
    "1 << 10**6",
    "[x for x in 'abc']",
    "(lambda: 1)()",
    "open('/etc/passwd')",
    "eval('1')",
    "getattr(model_name, 'upper')",
    "str([['a'] * 10000] * 10000)",
    "replace('a' * 10000, 'a', 'bbbbbbbbbb')",
    "(x := 1)",
    "1; 2",
    "x = 1",
    "(" * 400 + "1" + ")" * 400,
    "1 +" * 600 + "1",
    "lower",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_expressions_are_refused(expr):
    out = evaluate_derived(RECORD, [("f", expr), ("after", "steps + 1")], debug=True)
    assert isinstance(out["f"], str) and out["f"].startswith("#error: "), out["f"]
    assert out["after"] == 31
    assert "f" not in evaluate_derived(RECORD, [("f", expr)])


def test_field_names_are_checked():
    with pytest.raises(DerivedError):
        check_fields([("len", "1")])
    with pytest.raises(DerivedError):
        check_fields([("a", "1"), ("a", "2")])
    with pytest.raises(DerivedError):
        check_fields([("__class__", "1")])


def test_load_from_config_ini_keeps_order_and_case(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(
        '[DEFAULT]\ndatabase_path = library.sqlite\n\n[derived]\nisSDXL = base_model == "SDXL 1.0"\n'
        "lora_count = len(loras)   # how many\nheavy = lora_count >= 3\n", encoding="utf-8")
    fields = load_derived_fields(path)
    assert fields == [("isSDXL", 'base_model == "SDXL 1.0"'), ("lora_count", "len(loras)"),
                      ("heavy", "lora_count >= 3")]
    assert evaluate_derived(RECORD, fields) == {"isSDXL": True, "lora_count": 3, "heavy": True}
    assert load_derived_fields(tmp_path / "absent.ini") == []


def test_long_record_values_are_fine():
    record = {"prompt": "word, " * 5000, "tags": list(range(20000))}
    out = evaluate_derived(record, [("n", "len(prompt)"), ("t", "len(tags)"), ("c", 'contains(prompt, "WORD")')])
    assert out == {"n": 30000, "t": 20000, "c": True}
