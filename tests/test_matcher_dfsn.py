"""DFSN containers: pack, info, set-meta in place, verify, unpack; the scanner reads their header."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.fixtures import safetensors_bytes
from matcher import dfsn


def run(*args):
    result = CliRunner().invoke(cli, ["dfsn", *map(str, args)])
    return result


def test_pack_layout_is_little_endian_with_model_at_0x200100(tmp_path):
    model = tmp_path / "m.safetensors"
    data = safetensors_bytes({"w": os.urandom(1024)}, dtype="F32")
    model.write_bytes(data)
    out = tmp_path / "m.dfsn"
    result = run("pack", model, out, "--set", "name=My LoRA", "--set", "epochs=10")
    assert result.exit_code == 0, result.output
    raw = out.read_bytes()
    assert raw[:4] == b"DFSN" and struct.unpack_from("<H", raw, 4)[0] == 2
    assert raw[6:38] == hashlib.sha256(data).digest()
    assert struct.unpack_from("<II", raw, 38) == (0x100, 0x200100)
    assert raw[0x200100:] == data and len(raw) == 0x200100 + len(data)
    assert json.loads(raw[0x100:0x200100].rstrip(b"\0")) == {"name": "My LoRA", "epochs": 10}
    assert not (tmp_path / "m.dfsn.part").exists()
    again = run("pack", model, out)
    assert again.exit_code != 0 and "refusing to overwrite" in again.output


def test_set_meta_in_place_keeps_model_and_refuses_too_big(tmp_path):
    model = tmp_path / "m.safetensors"
    data = safetensors_bytes({"w": os.urandom(1024)}, dtype="F32")
    model.write_bytes(data)
    out = tmp_path / "m.dfsn"
    dfsn.pack(model, out, {"name": "a", "draft": True})
    inode = out.stat().st_ino
    result = run("set-meta", out, "--set", "name=b", "--unset", "draft")
    assert result.exit_code == 0, result.output
    header = dfsn.read_header(out)
    assert header["metadata"] == {"name": "b"} and out.stat().st_ino == inode
    assert out.read_bytes()[0x200100:] == data
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * (2 * 1024 * 1024)}))
    result = run("set-meta", out, "--meta-file", big)
    assert result.exit_code != 0 and "metadata area" in result.output
    assert dfsn.read_header(out)["metadata"] == {"name": "b"}


def test_verify_info_and_unpack_roundtrip(tmp_path):
    model = tmp_path / "m.safetensors"
    data = safetensors_bytes({"w": os.urandom(1024)}, dtype="F32")
    model.write_bytes(data)
    out = tmp_path / "m.dfsn"
    dfsn.pack(model, out, {})
    result = run("verify", out, "--json")
    assert result.exit_code == 0
    line = json.loads(result.output)
    assert line["ok"] and line["SHA256"] == hashlib.sha256(data).hexdigest().upper()
    n = int.from_bytes(data[:8], "little")
    assert line["AutoV3_full"] == hashlib.sha256(data[8 + n:]).hexdigest().upper()
    info = json.loads(run("info", out, "--json").output)
    assert info["type"] == "safetensors" and info["model_size"] == len(data)
    back = tmp_path / "back.safetensors"
    assert run("unpack", out, back).exit_code == 0
    assert back.read_bytes() == data
    with open(out, "r+b") as handle:  # corrupt one model byte
        handle.seek(0x200100 + 50)
        handle.write(b"\xff")
    bad = run("verify", out)
    assert bad.exit_code != 0 and "MISMATCH" in bad.output
    assert run("unpack", out, tmp_path / "bad.safetensors").exit_code != 0
    assert not (tmp_path / "bad.safetensors").exists()


def test_not_a_dfsn_is_a_clear_error(tmp_path):
    path = tmp_path / "x.dfsn"
    path.write_bytes(b"nope")
    result = run("info", path)
    assert result.exit_code != 0 and "not a DFSN file" in result.output and "Traceback" not in result.output


def test_scan_takes_sha256_from_header_and_hashes_the_embedded_model(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    model = tmp_path / "m.safetensors"
    data = safetensors_bytes({"w": os.urandom(1024)}, dtype="F32")
    model.write_bytes(data)
    dfsn.pack(model, root / "m.dfsn", {"type": "lora", "base_model": "SDXL"})
    db_path = tmp_path / "library.sqlite"
    result = CliRunner().invoke(cli, ["scan", str(root), "--db", str(db_path), "--json", "--no-extract"])
    assert result.exit_code == 0, result.output
    row = next(iter(sqlite_utils.Database(db_path)["files"].rows))
    n = int.from_bytes(data[:8], "little")
    assert (row["kind"], row["format"], row["sha256_source"]) == ("model", "dfsn", "header")
    assert row["sha256"] == hashlib.sha256(data).hexdigest().upper()
    assert row["autov3_full"] == hashlib.sha256(data[8 + n:]).hexdigest().upper()
    assert row["blake3"] is not None and (row["model_type"], row["base_model"]) == ("lora", "SDXL")


@pytest.mark.parametrize("command", ["pack", "unpack", "info", "set-meta", "verify"])
def test_every_subcommand_has_an_example(command):
    result = CliRunner().invoke(cli, ["dfsn", command, "--help"])
    assert result.exit_code == 0 and "civitai-mirror dfsn " + command in result.output
