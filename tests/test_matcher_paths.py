"""Filesystem-safe names for every OS, and the base-model folder rule."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.paths import MAX_NAME_BYTES, base_model_folder, is_reserved, safe_name, with_counter

FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)} | {"\x7f"}


@pytest.mark.parametrize("raw, safe", [
    ("Cute/Style: <v2>..", "Cute_Style_ _v2_"),
    ("..", "_"), (".", "_"), ("", "_"), (None, "_"), ("   ", "_"),
    ("CON", "_CON"), ("nul.txt", "_nul.txt"), ("com1.safetensors", "_com1.safetensors"), ("LPT9", "_LPT9"),
    ("console", "console"), ("name. . ", "name"), ("tab\there", "tab_here"), ("a\\b", "a_b"),
    ("Ünïcödé ✓", "Ünïcödé ✓"),
])
def test_safe_name_examples(raw, safe):
    assert safe_name(raw) == safe


def test_long_names_are_cut_in_bytes_and_keep_their_extension():
    name = "é" * 300 + ".safetensors"
    out = safe_name(name, keep_suffix=True)
    assert len(out.encode("utf-8")) <= MAX_NAME_BYTES and out.endswith(".safetensors")
    out.encode("utf-8").decode("utf-8")   # never cut inside a character


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_safe_name_is_always_one_safe_component(raw):
    out = safe_name(raw, keep_suffix=True)
    assert out and out not in (".", "..")
    assert not FORBIDDEN & set(out)
    assert not out.endswith((".", " ")) and not out.startswith(" ")
    assert not is_reserved(out)
    assert len(out.encode("utf-8")) <= MAX_NAME_BYTES
    assert os.path.basename(out) == out


@pytest.mark.parametrize("raw, folder", [
    ("SD 1.5", "SD1.5"), ("SDXL 1.0", "SDXL1.0"), ("Flux.1 D", "Flux.1D"), ("Pony", "Pony"),
    ("Wan Video 2.2 I2V-A14B", "WanVideo2.2I2V-A14B"), (None, "Unknown"), ("  ", "Unknown"), ("a/b", "a_b"),
])
def test_base_model_folder(raw, folder):
    assert base_model_folder(raw) == folder


def test_counter_goes_before_the_extension():
    assert with_counter("a.png", 1) == "a (1).png"
    assert with_counter("README", 2) == "README (2)"
    assert with_counter("x.civitai.info", 3, len(".civitai.info")) == "x (3).civitai.info"
    assert with_counter("a.png", 0) == "a.png"
