"""Metadata written by strangers: every parser linear, every file held to a time and memory budget.

Each crafted file is built here. The old parsers took from a minute to hours on these; each is now
read in a worker process with a generous CPU budget, so a regression shows as a budget error in
the record (no wall-clock measurement in the test itself).
"""
from __future__ import annotations

import json
import multiprocessing
import time
import zlib

import pytest
import sqlite_utils

import matcher.media.extract
from civitai_mirror.fixtures import comfy_long_chain, insert_before_iend, png_bytes, png_chunk, write_png, picture
from matcher.media.budget import BUDGET_MEMORY_ERROR, BUDGET_TIME_ERROR, Budget, budgeted_call
from matcher.media.containers import MAX_TOTAL_TEXT_BYTES
from matcher.media.extract import MAX_SIDECAR_BYTES, extract_library, extract_within_budget
from matcher.media.normalise import MAX_LORAS, MAX_RESOURCES
from matcher.scan import scan_library
from matcher.schema import open_library

pytestmark = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="the budget tests inject a parser into forked workers")

#: far above what any of these files needs now, far below what each took before
GENEROUS = Budget(seconds=20)


def text_chunk(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))


def ztxt_chunk(key: str, compressed: bytes) -> bytes:
    return png_chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" + compressed)


def png_with(*chunks: bytes) -> bytes:
    return insert_before_iend(png_bytes(), b"".join(chunks))


def read(tmp_path, data: bytes, name: str = "crafted.png", budget: Budget = GENEROUS) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    return extract_within_budget(path, budget=budget)


def no_budget_error(rec: dict) -> None:
    error = rec.get("error") or ""
    assert "budget" not in error and "reader stopped" not in error, error


# ---- parsers linear in their input --------------------------------------------------------------

def test_a_controlnet_value_of_blanks_is_read_at_once(tmp_path):
    # 3 KB: the old lazy "Model:" pattern backtracked cubically (93 s)
    value = '"Model: a' + " " * 3000 + 'x, Weight: 0.5"'
    rec = read(tmp_path, png_with(text_chunk("parameters", f"a fox\nSteps: 20, Seed: 1, ControlNet 0: {value}")))
    no_budget_error(rec)
    assert rec["steps"] == 20 and rec["generation_tool"] == "AUTOMATIC1111"


def test_parameters_of_sixteen_million_newlines(tmp_path):
    compressed = zlib.compress(b"\n" * 16_000_000, 9)
    rec = read(tmp_path, png_with(ztxt_chunk("parameters", compressed)))
    no_budget_error(rec)
    assert rec["no_metadata"] is True


def test_newlines_then_a_negative_prompt_line(tmp_path):
    text = "\n" * 2_000_000 + "Negative prompt: ugly\nSeed: 1, Sampler: Euler"
    rec = read(tmp_path, png_with(ztxt_chunk("parameters", zlib.compress(text.encode(), 9))))
    no_budget_error(rec)
    assert rec["negative_raw"] == "ugly"


def test_values_whose_brackets_never_close(tmp_path):
    params = "Steps: 20, " + "a: {, b: [, " * 100_000 + "Seed: 7"
    rec = read(tmp_path, png_with(text_chunk("parameters", "a fox\n" + params)))
    no_budget_error(rec)
    assert rec["steps"] == 20 and rec["seed"] == 7


def test_a_refiner_name_of_blanks(tmp_path):
    rec = read(tmp_path, png_with(text_chunk("parameters", "a fox\nSteps: 20, Refiner: a" + " " * 200_000 + "b")))
    no_budget_error(rec)
    assert rec["refiner_model"].startswith("a") and rec["refiner_model"].endswith("b")
    hashed = read(tmp_path, png_with(text_chunk("parameters", "a fox\nSteps: 20, Refiner: sdxl_refiner  [7440042bbd]")),
                  name="hashed.png")
    assert (hashed["refiner_model"], hashed["params"]["Refiner"]) == ("sdxl_refiner", "sdxl_refiner  [7440042bbd]")


def test_a_novelai_source_of_blanks(tmp_path):
    comment = json.dumps({"prompt": "a fox", "steps": 28, "seed": 5, "uc": "ugly"})
    spaced = read(tmp_path, png_with(text_chunk("Software", "NovelAI"), text_chunk("Comment", comment),
                                     text_chunk("Source", "Stable Diffusion" + " " * 200_000 + "x")))
    no_budget_error(spaced)
    assert spaced["generation_tool"] == "NovelAI" and spaced["steps"] == 28
    hashed = read(tmp_path, png_with(text_chunk("Software", "NovelAI"), text_chunk("Comment", comment),
                                     text_chunk("Source", "Stable Diffusion XL C1E1DE52")), name="hashed.png")
    assert (hashed["model_name"], hashed["model_hash_short"]) == ("Stable Diffusion XL", "C1E1DE52")


def test_an_invokeai_dream_of_one_long_word(tmp_path):
    rec = read(tmp_path, png_with(text_chunk("Dream", '"a fox [ugly]" -s 30 -S 9 ' + "x" * 400_000)))
    no_budget_error(rec)
    assert (rec["steps"], rec["seed"], rec["negative_raw"]) == (30, 9, "ugly")


def test_a_sidecar_of_newlines(tmp_path):
    write_png(tmp_path / "plain.png", picture((4, 4), (1, 2, 3)))
    (tmp_path / "plain.txt").write_text("\n" * 200_000 + "Used model: dreamy_mix\nSeed: 3\n")
    rec = extract_within_budget(tmp_path / "plain.png", budget=GENEROUS)
    no_budget_error(rec)
    assert (rec["model_name"], rec["seed"], rec["metadata_source"]) == ("dreamy_mix", 3, "sidecar:plain.txt")


# ---- caps on what one file may make us hold ---------------------------------------------------------

def test_compressed_text_is_capped_in_total_per_file(tmp_path):
    # 200 zTXt chunks of 16 MiB each (3 MB on disk) used to inflate to 3.3 GB; the default budget
    # (256 MiB) would stop that file, so passing it means the total cap held
    one = zlib.compress(b"a" * (16 * 1024 * 1024 - 1), 9)
    data = png_with(*(ztxt_chunk(f"k{i}", one) for i in range(200)))
    rec = read(tmp_path, data, budget=Budget(seconds=60))
    no_budget_error(rec)
    assert f"past {MAX_TOTAL_TEXT_BYTES} bytes in all, ignored" in rec["error"]


def test_a_huge_sidecar_is_read_only_up_to_its_cap(tmp_path):
    write_png(tmp_path / "plain.png", picture((4, 4), (1, 2, 3)))
    sidecar = tmp_path / "plain.txt"
    with sidecar.open("wb") as f:
        f.write(b"Used model: dreamy_mix\n")
        f.truncate(2 * 1024 ** 3)  # sparse: 2 GiB that take no disk
    assert sidecar.stat().st_size > 8 * MAX_SIDECAR_BYTES
    rec = extract_within_budget(tmp_path / "plain.png")  # the default memory budget: 256 MiB
    no_budget_error(rec)
    assert rec["model_name"] == "dreamy_mix"


# ---- the budget itself ----------------------------------------------------------------------------------

def _spin(*args):
    while True:
        pass


def _hog(*args):
    return len(bytearray(4 * 1024 ** 3))


def _sleep(*args):
    time.sleep(60)


def test_the_budget_stops_a_call_that_spins_or_hogs_or_hangs():
    small = Budget(seconds=0.3, memory=64 * 1024 * 1024, wall=1.5)
    assert budgeted_call(_spin, (), budget=small) == ("error", BUDGET_TIME_ERROR.format(seconds=0.3))
    assert budgeted_call(_hog, (), budget=small) == ("error", BUDGET_MEMORY_ERROR.format(megabytes=64))
    assert budgeted_call(_sleep, (), budget=small) == ("error", BUDGET_TIME_ERROR.format(seconds=0.3))
    assert budgeted_call(len, ("abc",), budget=small) == ("ok", 3)


def test_a_slow_parser_costs_one_file_an_error_and_the_scan_goes_on(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    root.mkdir()
    write_png(root / "fine.png", picture((4, 4), (9, 9, 9)), {"parameters": "a fox\nSteps: 12, Seed: 4"})
    write_png(root / "slow.png", picture((4, 4), (9, 9, 8)), {"parameters": "a fox\nSteps: 13, Seed: 5"})
    real_parse = matcher.media.extract.parse_containers

    def parse(c):  # a parser that never ends on one file (injected into the forked workers)
        if c.texts.get("parameters", "").endswith("Seed: 5"):
            _spin()
        return real_parse(c)

    monkeypatch.setattr(matcher.media.extract, "parse_containers", parse)
    db = open_library(tmp_path / "library.sqlite")
    scan_library(db, [root])
    summary = extract_library(db, budget=Budget(seconds=0.5))
    assert (summary["extracted"], summary["with_metadata"], summary["errors"]) == (2, 1, 1)
    lib = sqlite_utils.Database(tmp_path / "library.sqlite")
    errors = {row["path"].rsplit("/", 1)[1]: row["error"] for row in lib.query(
        "select f.path, m.error from media_info m join files f on f.id = m.file_id")}
    assert errors == {"fine.png": None, "slow.png": BUDGET_TIME_ERROR.format(seconds=0.5)}
    assert [row["steps"] for row in lib.query("select steps from generations")] == [12]
    again = extract_library(db, budget=Budget(seconds=0.5))  # recorded: not read again until it changes
    assert (again["unchanged"], again["extracted"]) == (2, 0)


def test_thousands_of_resources_and_lora_tags(tmp_path):
    hashes = ", ".join(f"l{i}: {i:010x}" for i in range(40_000))  # each used to rescan every earlier one
    tags = "<lora:aa:1> lora:bb:0.5 " * 40_000
    rec = read(tmp_path, png_with(text_chunk("parameters", f'{tags}\nSteps: 20, Lora hashes: "{hashes}"')))
    no_budget_error(rec)
    assert len(rec["resources"]) == MAX_RESOURCES and len(rec["loras"]) == MAX_LORAS
    assert rec["resources"][0]["name"] == "l0" and rec["loras"][1]["name"] == "bb"


def test_a_graph_of_many_outputs_on_a_long_chain(tmp_path):
    nodes = comfy_long_chain(60_000)  # each output used to walk the whole chain again (40 s)
    rec = read(tmp_path, png_with(text_chunk("prompt", json.dumps(nodes))))
    no_budget_error(rec)
    assert (rec["model_name"], rec["seed"], rec["steps"]) == ("deep.safetensors", 3, 9)


def test_a_huge_image_keeps_its_metadata_and_gets_a_thumbnail(tmp_path):
    import numpy as np
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 20, Seed: 1")
    path = tmp_path / "upscaled.png"  # 8192 x 8192 RGBA: its pixels alone are 256 MiB
    Image.fromarray(np.zeros((8192, 8192, 4), dtype=np.uint8), "RGBA").save(path, pnginfo=info, compress_level=1)
    rec = extract_within_budget(path, budget=Budget(seconds=30))
    assert (rec["steps"], rec["error"]) == (20, None) and rec["blurhash"]
    slow = extract_within_budget(path, budget=Budget(seconds=0.3))  # out of time in the pixels: text kept
    assert slow["steps"] == 20 and slow["blurhash"] is None and "time budget" in slow["error"]
