"""extract_library over a real library.sqlite, zero writes on re-runs, and the extract/inspect commands."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner

from civitai_mirror.fixtures import picture, write_png
from matcher.media import extract_library
from matcher.schema import open_library

INFOTEXT = ("a red fox <lora:detail:0.6>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 6, "
            "Seed: {seed}, Size: 64x48, Model hash: 0123456789, Model: foxmodel, "
            'Lora hashes: "detail: 0123456789ab"')


RED = picture((40, 30), (200, 40, 40))


def add_file(db, path, kind="media"):
    st = os.stat(path)
    db["files"].insert({"path": str(path), "root": str(path.parent), "size": st.st_size,
                        "mtime_ns": st.st_mtime_ns, "kind": kind, "format": path.suffix.lstrip(".")})
    return db.execute("select id from files where path = ?", [str(path)]).fetchone()[0]


def make_library(tmp_path):
    (tmp_path / "imgs").mkdir()
    fox = tmp_path / "imgs" / "fox.png"
    write_png(fox, RED, {"parameters": INFOTEXT.format(seed=6952411511246973023)})
    plain = tmp_path / "imgs" / "plain.png"
    write_png(plain, RED)
    side = tmp_path / "imgs" / "side.png"
    write_png(side, RED)
    (tmp_path / "imgs" / "side.txt").write_text("Used model: dreamshaper_8.safetensors\nLoRA: add_detail:0.5\n")
    broken = tmp_path / "imgs" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    db = open_library(tmp_path / "library.sqlite")
    ids = {p.name: add_file(db, p) for p in (fox, plain, side, broken)}
    add_file(db, tmp_path / "imgs" / "side.txt", kind="sidecar")
    return db, ids, fox


def test_extract_fills_the_tables(tmp_path):
    db, ids, _fox = make_library(tmp_path)
    summary = extract_library(db)
    assert (summary["total"], summary["with_metadata"], summary["no_metadata"]) == (4, 2, 2)
    assert summary["errors"] == 1 and summary["by_tool"] == {"AUTOMATIC1111": 1, "sidecar": 1}
    gen = db["generations"].get(ids["fox.png"])
    assert (gen["seed"], gen["seed_text"], gen["steps"], gen["model_name"]) == \
        (6952411511246973023, "6952411511246973023", 20, "foxmodel")
    assert gen["positive_clean"] == "a red fox" and len(gen["metadata_hash"]) == 64
    assert [(r["name"], r["weight"], r["context"]) for r in db["lora_usages"].rows_where("file_id = ?", [ids["fox.png"]])] == \
        [("detail", 0.6, "positive")]
    res = {(r["kind"], r["name"], r["hash"], r["hash_kind"]) for r in db["resources"].rows_where("file_id = ?", [ids["fox.png"]])}
    assert res == {("checkpoint", "foxmodel", "0123456789", "AutoV2"), ("lora", "detail", "0123456789AB", "AutoV3")}
    info = db["media_info"].get(ids["fox.png"])
    assert info["thumbnail"][:4] == b"RIFF" and info["thumbnail"][8:12] == b"WEBP" and info["blurhash"]
    assert db["generations"].get(ids["side.png"])["model_name"] == "dreamshaper_8.safetensors"
    assert db["media_info"].get(ids["broken.jpg"])["error"]
    assert db.execute("select count(*) from generations where file_id = ?", [ids["plain.png"]]).fetchone()[0] == 0
    # the prompt is searchable
    assert db["generations"].search("fox") is not None


def test_rerun_on_unchanged_files_makes_zero_writes(tmp_path):
    db, _ids, _fox = make_library(tmp_path)
    extract_library(db)
    before = db.conn.total_changes
    again = extract_library(db)
    assert again["unchanged"] == 4 and again["written"] == 0
    forced = extract_library(db, force=True)
    assert forced["extracted"] == 4 and forced["written"] == 0
    assert db.conn.total_changes == before


def test_changed_file_is_re_extracted(tmp_path):
    db, ids, fox = make_library(tmp_path)
    extract_library(db)
    old_hash = db["generations"].get(ids["fox.png"])["metadata_hash"]
    write_png(fox, RED, {"parameters": INFOTEXT.format(seed=7)})
    st = os.stat(fox)
    os.utime(fox, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    st = os.stat(fox)
    db["files"].update(ids["fox.png"], {"size": st.st_size, "mtime_ns": st.st_mtime_ns})
    summary = extract_library(db)
    assert summary["written"] == 1
    gen = db["generations"].get(ids["fox.png"])
    assert gen["seed"] == 7 and gen["metadata_hash"] != old_hash
    assert db.execute("select count(*) from lora_usages where file_id = ?", [ids["fox.png"]]).fetchone()[0] == 1


def test_extract_command(tmp_path):
    from civitai_mirror.cli import cli

    db, ids, _fox = make_library(tmp_path)
    db.conn.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["extract", "--db", str(tmp_path / "library.sqlite"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["with_metadata"] == 2
    result = runner.invoke(cli, ["extract", "--db", str(tmp_path / "nope.sqlite")])
    assert result.exit_code != 0 and "run 'civitai-mirror scan" in result.output


def test_inspect_command_json_contract(tmp_path):
    from civitai_mirror.cli import cli

    fox = tmp_path / "fox.png"
    write_png(fox, RED, {"parameters": INFOTEXT.format(seed=42)})
    plain = tmp_path / "plain.png"
    write_png(plain, RED)
    result = CliRunner().invoke(cli, ["inspect", str(fox), str(plain), "--json"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    for key in ("generation_tool", "model_name", "model_hash_short", "steps", "sampler", "scheduler", "cfg_scale",
                "seed", "width", "height", "positive_raw", "negative_raw", "positive_clean", "loras", "resources",
                "blurhash", "exif"):
        assert key in rec
    assert rec["loras"][0] == {"name": "detail", "weight": 0.6, "context": "positive", "weight2": None, "kind": "lora"}
    assert set(rec["resources"][0]) == {"kind", "name", "hash", "hash_kind", "weight", "version_id"}
    assert json.loads(lines[1])["no_metadata"] is True
    text = CliRunner().invoke(cli, ["inspect", str(fox)])
    assert "tool: AUTOMATIC1111" in text.output and "lora: detail weight 0.6 (positive)" in text.output
    missing = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.png")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
