"""The whole pipeline through the CLI, as a user meets it:
fake Civitai API (with faults) → crawl → build → scan → extract → match → sort --dry-run → sort → undo.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.samples import SAMPLE_MODELS, sample_models, write_sample_collection


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def manifest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_crawl_build_scan_extract_match_sort_undo(tmp_path, fake_civitai):
    collection = tmp_path / "collection"
    write_sample_collection(collection)
    before = manifest(collection)
    fake_civitai.add_models(sample_models(collection))
    ids = sorted(entry[0] for entry in SAMPLE_MODELS)
    # faults on the batch endpoint: a rate limit, a server error and a Cloudflare page, then answers
    fake_civitai.script("/api/v1/models", [(429, {"Retry-After": "0"}), 500, "html", 200, 200, 200, 200, 200])
    dump, civitai_db, library = tmp_path / "dump", tmp_path / "civitai.sqlite", tmp_path / "library.sqlite"

    # crawl: every model saved, nothing left in errors.txt
    run("crawl", "--start", str(ids[0]), "--end", str(ids[-1]), "-o", str(dump),
        "--api-base", fake_civitai.api_base, "--sleep-retries", "0", "--sleep-429", "0", "--no-color")
    downloaded = {int(line.split("\t")[0]) for line in (dump / "downloaded.txt").read_text().splitlines()}
    assert downloaded == set(ids)
    assert (dump / "errors.txt").read_text() == ""
    saved = json.loads((dump / "00000000" / "00000110.json").read_text())
    assert saved["name"] == "Dreamy Mix" and saved["modelVersions"][0]["id"] == 1101
    assert not list(dump.rglob("*.part"))
    assert fake_civitai.count("/api/v1/models") >= 4  # the three faults were met and retried

    # build: one row per model, every file's hashes findable
    out = run("build", str(dump), "--db", str(civitai_db))
    assert "30 models" in out
    assert rows(civitai_db, "select count(*) from models") == [(30,)]
    assert rows(civitai_db, "select name from models where id = 130") == [("Paper Cut Style",)]

    # scan without extraction, then extract
    out = run("scan", str(collection), "--db", str(library), "--no-extract", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["files"] == len(before) and summary["new"] == len(before) and summary["errors"] == 0
    assert rows(library, "select kind, count(*) from files group by kind order by kind") == [
        ("media", 9), ("model", 9), ("sidecar", 3)]
    assert rows(library, "select count(*) from generations") == [(0,)]
    run("extract", "--db", str(library))
    tools = dict(rows(library, "select f.path, g.generation_tool from generations g join files f on f.id = g.file_id"))
    assert tools[str(collection / "outputs" / "ComfyUI_00001_.png")] == "ComfyUI"
    assert tools[str(collection / "outputs" / "00001-3141592653.png")].startswith("AUTOMATIC1111")

    # match: every model file we hold that the mirror knows, by SHA256; the unknown one unmatched
    out = run("match", "--db", str(library), "--civitai-db", str(civitai_db), "--json")
    records = {Path(r["path"]).name: r for r in map(json.loads, out.strip().splitlines())}
    assert records["dreamy_mix_v2.safetensors"]["version_id"] == 1101
    assert records["dreamy_mix_v2.safetensors"]["hash_type"] == "SHA256"
    assert records["paper_cut_style.safetensors"]["version_id"] == 1301
    assert records["mystery_weights.safetensors"]["version_id"] is None
    a1111 = records["00001-3141592653.png"]
    assert a1111["version_id"] == 1101
    lora = [r for r in a1111["resources"] if r["kind"] == "lora"]
    assert lora and lora[0]["version_id"] == 1301
    assert lora[0]["local_path"] == str(collection / "loras" / "paper_cut_style.safetensors")

    # sort --dry-run changes nothing
    run("sort", "--dest", str(tmp_path / "sorted"), "--dry-run", "--db", str(library), "--civitai-db", str(civitai_db))
    assert manifest(collection) == before
    assert not (tmp_path / "sorted").exists()

    # sort moves into the organised tree; nothing lost
    run("sort", "--dest", str(tmp_path / "sorted"), "--db", str(library), "--civitai-db", str(civitai_db))
    sorted_tree = manifest(tmp_path / "sorted")
    assert "models/checkpoints/SD1.5/Dreamy Mix/dreamy_mix_v2.safetensors" in sorted_tree
    assert "models/loras/SDXL1.0/Paper Cut Style/paper_cut_style.safetensors" in sorted_tree
    assert "models/loras/SDXL1.0/Paper Cut Style/paper_cut_style.preview.png" in sorted_tree
    assert (collection / "misc" / "mystery_weights.safetensors").exists()  # unmatched: left in place
    remaining = manifest(collection)
    assert sorted(list(sorted_tree.values()) + list(remaining.values())) == sorted(before.values())

    # undo restores the exact manifest
    run("undo", "--db", str(library))
    assert manifest(collection) == before
    assert not [p for p in (tmp_path / "sorted").rglob("*") if p.is_file()]
    runs = json.loads(run("runs", "--db", str(library), "--json").strip().splitlines()[0])
    assert runs["state"] == "undone"


def test_demo_runs_offline_without_serving(tmp_path):
    out = run("demo", "--dir", str(tmp_path / "demo"), "--no-serve")
    assert "$ civitai-mirror build civitai-meta --db civitai.sqlite" in out
    assert "Dreamy Mix" in out
    assert rows(tmp_path / "demo" / "library.sqlite", "select count(*) from matches where version_id is not null")[0][0] >= 8
    # a second run reuses the folder and changes nothing in the collection
    before = manifest(tmp_path / "demo" / "collection")
    run("demo", "--dir", str(tmp_path / "demo"), "--no-serve")
    assert manifest(tmp_path / "demo" / "collection") == before


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path), "--no-serve"])
    assert result.exit_code != 0
    assert "not a civitai-mirror demo folder" in result.output
    assert (tmp_path / "precious.txt").read_text() == "mine"
