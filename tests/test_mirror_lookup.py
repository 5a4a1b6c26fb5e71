"""mirror.lookup.lookup_hash / lookup_hashes and `civitai-mirror lookup`."""
from __future__ import annotations

import json

import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from mirror.build import build_mirror
from mirror.lookup import RESULT_KEYS, lookup_hash, lookup_hashes
from tests.test_mirror_build import copy_dump


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lookup")
    path = tmp / "civitai.sqlite"
    build_mirror(copy_dump(tmp / "dump"), path)
    return path


@pytest.mark.parametrize("value,hash_type,file_id", [
    ("a1" * 32, "SHA256", 2011),             # 64 hex, lower case
    ("AB" * 32, "BLAKE3", 2011),             # 64 hex that is a BLAKE3
    ("1a2b3c4d", "AutoV1", 2011),            # 8 hex: AutoV1 ...
    ("0A0B0C0D", "CRC32", 2011),             # ... or CRC32
    ("b2b2b2b2b2", "AutoV2", 2020),          # 10 hex
    ("9c783c8ce46c", "AutoV3", 2020),        # 12 hex: A1111's Lora hash
    ("0x9C783C8CE46C" + "0" * 52, "AutoV3", 2020),  # SwarmUI tensor hash
    ("d4d4d4d4d4d4", "SHA256", 2021),        # 12 hex with no AutoV3: SHA256[:12] (TI hashes)
    ("  C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3 ", "SHA256", 2040),
])
def test_every_hash_type(db, value, hash_type, file_id):
    result = lookup_hash(db, value)
    assert (result["hash_type"], result["file_id"]) == (hash_type, file_id)
    assert result["hash"] == value


def test_result_shape(db):
    result = lookup_hash(sqlite_utils.Database(db), "B2B2B2B2B2")
    assert {k: result[k] for k in RESULT_KEYS} == {
        "hash": "B2B2B2B2B2", "hash_type": "AutoV2", "model_id": 102, "version_id": 1020,
        "file_id": 2020, "model_name": "Mix Checkpoint", "version_name": "v1.0",
        "type": "Checkpoint", "base_model": "SDXL 1.0", "file_name": "mix_v1.safetensors",
        "download_url": "https://civitai.com/api/download/models/1020", "mode": None,
        "candidates": []}


def test_tie_rule_earliest_published_wins_and_others_listed(db):
    # the same file was uploaded in 2023 (model 101, v1010) and again in 2026 (model 103, v1030)
    result = lookup_hash(db, "5E" * 32)
    assert (result["version_id"], result["candidates"]) == (1010, [1030])
    assert lookup_hash(db, "11223344")["version_id"] == 1010  # CRC32 finds both too


def test_archived_and_gone_stay_findable(db):
    archived = lookup_hash(db, "AAAABBBBCCCC")
    assert (archived["model_id"], archived["mode"], archived["file_archived"]) == (104, "Archived", True)
    gone = lookup_hash(db, "E5" * 32)
    assert (gone["model_id"], gone["gone"]) == (105, True)


def test_not_found_empty_hash_and_type_filter(db):
    missing = lookup_hash(db, "0123456789")
    assert all(missing[k] is None for k in RESULT_KEYS if k != "hash")
    assert missing["hash"] == "0123456789"
    empty = lookup_hash(db, "e3b0c44298fc")
    assert empty["version_id"] is None and "empty" in empty["error"]
    assert lookup_hash(db, "1A2B3C4D", hash_type="crc32")["version_id"] is None
    assert lookup_hash(db, "1A2B3C4D", hash_type="AutoV1")["file_id"] == 2011
    assert lookup_hash(db, "not-a-hash")["version_id"] is None
    with pytest.raises(ValueError):
        lookup_hash(db, "1A2B3C4D", hash_type="MD5")


def test_lookup_hashes_keeps_order(db):
    results = lookup_hashes(db, ["F6" * 32, "nope", "b2b2b2b2b2"])
    assert [r["version_id"] for r in results] == [3001, None, 1020]
    assert results[0]["model_name"] == "Whimsy (Flux)"  # known only from a model-version answer


def test_cli_json_lines_and_exit_status(db):
    runner = CliRunner()
    result = runner.invoke(cli, ["lookup", "b2b2b2b2b2", "9c783c8ce46c", "--db", str(db), "--json"])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["hash"], r["version_id"]) for r in lines] == [("b2b2b2b2b2", 1020), ("9c783c8ce46c", 1020)]
    result = runner.invoke(cli, ["lookup", "b2b2b2b2b2", "0123456789", "--db", str(db), "--json"])
    assert result.exit_code == 1
    assert [json.loads(line)["model_id"] for line in result.stdout.splitlines()] == [102, None]


def test_cli_text_output(db):
    result = CliRunner().invoke(cli, ["lookup", "5e" * 32, "--db", str(db)])
    assert result.exit_code == 0
    assert "SHA256 match" in result.stdout
    assert "model    Detail Slider (id 101, LORA)" in result.stdout
    assert "also     versions 1030" in result.stdout


def test_cli_missing_db(tmp_path):
    result = CliRunner().invoke(cli, ["lookup", "ABCDEF12", "--db", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1 and "run civitai-mirror build first" in result.output
    assert "Traceback" not in result.output
