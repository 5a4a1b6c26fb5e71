"""config.ini: file_scanner's [DEFAULT] keys, read by matcher commands; flags win."""
from __future__ import annotations

import json

import click
import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from matcher.config import Config, load_config, parse_size

SEED_INI = """[DEFAULT]
source_directory = models
destination_directory = ./sorted_models
database_path = Database/file_scanner.sqlite
civitai_database_path = Database/civitai.sqlite
verbose = true
max_file_size = 10737418240
use_model_type_subfolders = false

model_type_folders = checkpoint,loras,embedding,textualinversion,hypernetwork,controlnet,other
"""


def test_seed_keys_are_read_and_paths_resolved_against_the_file(tmp_path):
    ini = tmp_path / "config.ini"
    ini.write_text(SEED_INI)
    config = load_config(ini)
    assert config.source_directory == [str(tmp_path / "models")]
    assert config.destination_directory == str(tmp_path / "sorted_models")
    assert config.database_path == str(tmp_path / "Database/file_scanner.sqlite")
    assert config.civitai_database_path == str(tmp_path / "Database/civitai.sqlite")
    assert config.verbose is True and config.use_model_type_subfolders is False
    assert config.max_file_size == 10 * 2**30
    assert config.model_type_folders["lora"] == "loras"
    assert config.model_type_folders["embedding"] == "embedding"
    assert config.model_type_folders["checkpoint"] == "checkpoint"


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIVITAI_MIRROR_CONFIG", raising=False)
    config = load_config(None)
    assert config == Config()
    assert config.database_path == "library.sqlite" and config.max_file_size == 10 * 2**30


@pytest.mark.parametrize("text,value", [("10737418240", 10 * 2**30), ("10GiB", 10 * 2**30), ("500MB", 500 * 10**6),
                                        ("2 G", 2 * 10**9), ("1.5KiB", 1536)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_bad_value_is_a_one_line_error(tmp_path):
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nmax_file_size = huge\n")
    with pytest.raises(click.ClickException, match="max_file_size: not a size"):
        load_config(ini)
    with pytest.raises(click.ClickException, match="does not exist"):
        load_config(tmp_path / "missing.ini")


def test_scan_uses_config_and_flags_override_it(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 500)
    (tmp_path / "config.ini").write_text(SEED_INI.replace("10737418240", "100"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["scan", "--json", "--no-extract"])  # ./config.ini, source_directory
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["files"], summary["skipped"]) == (1, 1)  # max_file_size 100 from config
    assert (tmp_path / "Database" / "file_scanner.sqlite").exists()
    other_db = tmp_path / "other.sqlite"
    result = CliRunner().invoke(cli, ["scan", "models", "--db", str(other_db), "--max-file-size", "1MB",
                                      "--json", "--no-extract"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["skipped"] == 0
    assert next(iter(sqlite_utils.Database(other_db)["files"].rows))["sha256"] is not None


def test_environment_variable_names_the_file(tmp_path, monkeypatch):
    ini = tmp_path / "elsewhere.ini"
    ini.write_text("[DEFAULT]\ndatabase_path = /data/lib.sqlite\n")
    monkeypatch.setenv("CIVITAI_MIRROR_CONFIG", str(ini))
    monkeypatch.chdir(tmp_path)
    assert load_config(None).database_path == "/data/lib.sqlite"
