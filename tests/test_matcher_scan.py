"""civitai-mirror scan: kinds, hashes, model facts and the cache that survives moves (real files, real SQLite)."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

import matcher.scan
from civitai_mirror.cli import cli
from civitai_mirror.fixtures import image_bytes, picture, png_bytes, safetensors_bytes, write_tree
from matcher.scan import scan_library
from matcher.schema import open_library


RED = (200, 10, 10)


def kohya_lora(metadata: dict, te_prefix: str = "lora_te_", dim: int = 768) -> bytes:
    """A kohya-style LoRA: text encoder tensors under ``te_prefix`` (lora_te1_ in SDXL), F32."""
    return safetensors_bytes({
        f"{te_prefix}text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, dim],
        f"{te_prefix}text_model_encoder_layers_0_mlp_fc1.lora_up.weight": [3072, 4],
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, dim],
    }, metadata, dtype="F32")


def rows(db_path: Path) -> dict[str, dict]:
    db = sqlite_utils.Database(db_path)
    return {row["path"]: row for row in db["files"].rows}


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "lib"
    write_tree(root, {
        "Lora/style.safetensors": kohya_lora({
            "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
            "ss_output_name": "style", "ss_network_args": json.dumps({"conv_dim": "8", "algo": "locon"}),
            "ss_tag_frequency": json.dumps({"10_style": {"red": 5, "blue": 2}}),
            "sshs_model_hash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}),
        "Lora/style.civitai.info": "{}",
        "Lora/style.preview.png": png_bytes((3, 2), RED),
        "out/00001.png": png_bytes((5, 4), RED),
        "out/really_jpeg.png": image_bytes(picture((7, 6), RED), "JPEG"),
        "out/notes.txt": "a prompt",
        "readme.md": "# hi",
    })
    return root


def scan(root, db_path, *args) -> dict:
    result = CliRunner().invoke(cli, ["scan", *map(str, root if isinstance(root, list) else [root]),
                                      "--db", str(db_path), "--json", "--no-extract", *args])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_first_scan_records_every_file_with_kind_format_and_hashes(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    summary = scan(library, db_path)
    assert {k: summary[k] for k in ("files", "new", "changed", "moved", "skipped", "errors")} == {
        "files": 7, "new": 7, "changed": 0, "moved": 0, "skipped": 0, "errors": 0}
    files = rows(db_path)
    by_name = {Path(p).name: r for p, r in files.items()}
    assert {name: (r["kind"], r["format"]) for name, r in by_name.items()} == {
        "style.safetensors": ("model", "safetensors"), "style.civitai.info": ("sidecar", "json"),
        "style.preview.png": ("sidecar", "png"), "00001.png": ("media", "png"),
        "really_jpeg.png": ("media", "jpeg"), "notes.txt": ("sidecar", "txt"), "readme.md": ("other", "md")}
    lora = by_name["style.safetensors"]
    data = (library / "Lora/style.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert lora["sha256"] == hashlib.sha256(data).hexdigest().upper()
    assert lora["autov3_full"] == hashlib.sha256(data[8 + n:]).hexdigest().upper()
    assert lora["autov3"] == lora["autov3_full"][:12] and lora["autov1"] is None
    assert lora["crc32"] and lora["blake3"] and lora["_hashed_at"]
    assert (lora["model_type"], lora["base_model"]) == ("lycoris", "SD1.x")
    assert lora["root"] == str(library) and lora["path"] == str(library / "Lora/style.safetensors")
    image = by_name["00001.png"]
    assert image["sha256"] == hashlib.sha256((library / "out/00001.png").read_bytes()).hexdigest().upper()
    assert (image["width"], image["height"]) == (5, 4) and image["blake3"] is None
    assert by_name["really_jpeg.png"]["width"] == 7
    assert by_name["notes.txt"]["sha256"] is None
    info = sqlite_utils.Database(db_path)["model_info"].get(lora["id"])
    assert info["conv_dim"] == "8" and info["algo"] == "locon" and info["output_name"] == "style"
    assert info["sshs_status"] == "bogus" and json.loads(info["top_tags"]) == ["red", "blue"]
    assert json.loads(info["metadata_json"])["ss_base_model_version"] == "sd_v1"


def test_rescan_reads_nothing_and_rename_of_root_keeps_hashes(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    first = scan(library, db_path)
    assert first["hashed_bytes"] > 0
    again = scan(library, db_path)
    assert (again["new"], again["changed"], again["moved"], again["hashed_bytes"], again["unchanged"]) == (0, 0, 0, 0, 7)
    before = {Path(p).relative_to(library): r for p, r in rows(db_path).items()}
    renamed = tmp_path / "renamed"
    library.rename(renamed)
    moved = scan(renamed, db_path)
    assert (moved["moved"], moved["new"], moved["hashed_bytes"], moved["missing"]) == (7, 0, 0, 0)
    assert {m["from"] for m in moved["moves"]} == {str(library / p) for p in before}
    after = {Path(p).relative_to(renamed): r for p, r in rows(db_path).items()}
    assert set(after) == set(before)
    for rel, row in after.items():
        assert (row["id"], row["sha256"], row["autov3"], row["missing"]) == (
            before[rel]["id"], before[rel]["sha256"], before[rel]["autov3"], 0)
        assert row["root"] == str(renamed)


def test_touch_and_in_place_change_rehash_and_deletion_marks_missing(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    scan(library, db_path)
    image = library / "out/00001.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = scan(library, db_path)
    assert (touched["changed"], touched["hashed_bytes"]) == (1, st.st_size)
    lora = library / "Lora/style.safetensors"
    old = rows(db_path)[str(lora)]
    lora.write_bytes(kohya_lora({"ss_network_module": "networks.lora"}, te_prefix="lora_te1_"))
    os.utime(lora, ns=(st.st_atime_ns, old["mtime_ns"] + 2 * 10**9))
    (library / "readme.md").unlink()
    changed = scan(library, db_path)
    assert (changed["changed"], changed["missing"], changed["files"]) == (1, 1, 6)
    now = rows(db_path)
    assert now[str(lora)]["id"] == old["id"]
    assert now[str(lora)]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest().upper() != old["sha256"]
    assert now[str(lora)]["base_model"] == "SDXL"
    assert now[str(library / "readme.md")]["missing"] == 1


def test_copy_to_new_inode_then_delete_is_a_move_by_fingerprint(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    scan(library, db_path)
    source = library / "Lora/style.safetensors"
    old = rows(db_path)[str(source)]
    target = library / "Lora/archive/style-copy.safetensors"
    target.parent.mkdir()
    target.write_bytes(source.read_bytes())  # a new inode and a new mtime
    source.unlink()
    summary = scan(library, db_path)
    assert summary["moves"] == [{"from": str(source), "to": str(target)}]
    assert (summary["moved"], summary["new"], summary["hashed_bytes"]) == (1, 0, 0)
    assert rows(db_path)[str(target)]["sha256"] == old["sha256"]


def test_copy_whose_original_still_exists_is_new(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    scan(library, db_path)
    source = library / "out/00001.png"
    (library / "out/copy.png").write_bytes(source.read_bytes())
    summary = scan(library, db_path)
    assert (summary["new"], summary["moved"]) == (1, 0)


def test_force_rescan_and_max_file_size(library, tmp_path):
    db_path = tmp_path / "library.sqlite"
    small = scan(library, db_path, "--max-file-size", "10")
    assert small["skipped"] == 3 and small["hashed_bytes"] == 0  # 1 model + 2 media files over 10 B
    assert rows(db_path)[str(library / "out/00001.png")]["sha256"] is None
    full = scan(library, db_path)
    assert full["skipped"] == 0 and full["hashed_bytes"] > 0
    forced = scan(library, db_path, "--force-rescan", "--one-reader")
    assert forced["hashed_bytes"] == full["hashed_bytes"] and forced["changed"] == 0


def test_growing_file_is_skipped_then_hashed_next_time(library, tmp_path, monkeypatch):
    db_path = tmp_path / "library.sqlite"
    growing = library / "out/00001.png"
    real = matcher.scan.describe_file

    def append_while_hashing(path, **kwargs):
        facts = real(path, **kwargs)
        if path == str(growing):
            with open(path, "ab") as handle:
                handle.write(b"more bytes")
        return facts

    monkeypatch.setattr(matcher.scan, "describe_file", append_while_hashing)
    summary = scan(library, db_path)
    assert summary["growing"] == [str(growing)] and summary["skipped"] == 1
    row = rows(db_path)[str(growing)]
    assert row["sha256"] is None and "being written" in row["error"]
    monkeypatch.setattr(matcher.scan, "describe_file", real)
    st = growing.stat()
    os.utime(growing, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    later = scan(library, db_path)
    assert later["growing"] == [] and later["changed"] == 1
    row = rows(db_path)[str(growing)]
    assert row["sha256"] == hashlib.sha256(growing.read_bytes()).hexdigest().upper() and row["error"] is None


def test_malicious_header_is_a_per_file_error_and_the_scan_goes_on(library, tmp_path):
    (library / "evil.safetensors").write_bytes(struct.pack("<Q", 1000) + b'{"a":1}' + b"x" * 73)
    (library / "absurd.safetensors").write_bytes(struct.pack("<Q", 2**63) + b'{"a":1}' + b"x" * 73)
    db_path = tmp_path / "library.sqlite"
    result = CliRunner().invoke(cli, ["scan", str(library), "--db", str(db_path), "--no-extract"])
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "2 errors" in result.output
    files = rows(db_path)
    evil = files[str(library / "evil.safetensors")]
    assert "header length 1000 exceeds file size 88" in evil["error"]
    assert evil["autov3"] is None and evil["sha256"] is not None and evil["model_type"] == "unknown"
    absurd = files[str(library / "absurd.safetensors")]
    assert "cannot read safetensors header" in absurd["error"]
    assert files[str(library / "Lora/style.safetensors")]["sha256"] is not None


def test_database_inside_the_scanned_root_is_not_recorded(library):
    db_path = library / "library.sqlite"
    scan(library, db_path)
    summary = scan(library, db_path)
    assert summary["files"] == 7 and not any("library.sqlite" in p for p in rows(db_path))


def test_scan_library_function_reports_progress(library, tmp_path):
    db = open_library(tmp_path / "l.sqlite")
    events = {"total": 0, "advance": 0}

    def progress(advance=0, total=None):
        events["advance"] += advance
        if total is not None:
            events["total"] = total

    summary = scan_library(db, [library], progress=progress)
    assert events["total"] == events["advance"] == summary["hashed_bytes"] > 0


def test_scan_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["scan", str(tmp_path / "nope"), "--db", str(tmp_path / "l.sqlite")])
    assert result.exit_code != 0 and "is not a directory" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["scan", str(tmp_path), "--max-file-size", "lots"])
    assert result.exit_code != 0 and "not a size" in result.output


def test_corpus_scan_classifies_and_flags_the_bad_header(shared_dir, tmp_path):
    db_path = tmp_path / "library.sqlite"
    summary = scan(shared_dir / "corpus" / "safetensors", db_path)
    assert summary["errors"] == 1
    files = {Path(p).name: r for p, r in rows(db_path).items() if p.endswith(".safetensors")}
    assert len(files) == 13
    for upper, lower in (("B", "b"), ("H", "h"), ("I", "i")):
        one, two = files[f"{upper}.safetensors"], files[f"{lower}.safetensors"]
        assert one["autov3"] == two["autov3"] and one["sha256"] != two["sha256"]
    assert files["lora_disney.safetensors"]["model_type"] == "lora"
    assert files["lora_disney.safetensors"]["autov3"] == "DEB8561122DE"
    assert "exceeds file size 88" in files["safetensors_abuse_attempt_1.safetensors"]["error"]
