"""Every command against a user's mistakes: a path that is not there, the wrong database, a bad value.

Each must end in one line on stderr, a non-zero exit and no traceback, and leave the databases it was
wrongly given byte for byte as they were. The cases are listed per command; a command with no such
input (``hash`` takes no database) has no case of that kind. ``COMMANDS`` is checked against the lists,
so a new command needs its cases here.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from civitai_mirror.cli import COMMANDS, cli
from mirror.build import build_mirror
from tests.test_mirror_build import copy_dump

NO_NETWORK = ["--api-base", "http://127.0.0.1:9/api/v1", "--retries", "0"]
# Cases another engineer's command still fails (strict: the day it passes, drop it from here).
KNOWN: dict[tuple[str, str], str] = {
}


def expect_known(request: pytest.FixtureRequest, kind: str, name: str) -> None:
    if (kind, name) in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[kind, name]))


def missing_path(w: dict[str, Path]) -> dict[str, list[str] | None]:
    nope, under_file = str(w["tmp"] / "nope"), str(w["file"] / "x")
    mirror, library, dest = str(w["mirror"]), str(w["library"]), str(w["tmp"] / "dest")
    return {
        "crawl": ["crawl", "--retry", "-o", under_file, *NO_NETWORK],
        "get": None,  # its PATH is an API path
        "build": ["build", nope, "--db", str(w["tmp"] / "new.sqlite")],
        "lookup": ["lookup", "abcdef1234", "--db", nope],
        "serve": ["serve", "--db", nope],
        "update": ["update", "--db", mirror, "--library", nope, *NO_NETWORK],
        "demo": ["demo", "--dir", under_file, "--no-serve"],
        "scan": ["scan", nope, "--db", str(w["tmp"] / "new-library.sqlite")],
        "hash": ["hash", nope],
        "dfsn": ["dfsn", "info", nope],
        "extract": ["extract", "--db", nope],
        "inspect": ["inspect", nope],
        "match": ["match", "--db", nope, "--civitai-db", mirror],
        "pin": ["pin", nope, "1", "--db", library],
        "unpin": ["unpin", nope, "--db", library],
        "sort": ["sort", "--dest", dest, "--dry-run", "--db", nope, "--civitai-db", mirror],
        "undo": ["undo", "--db", nope],
        "runs": ["runs", "--db", nope],
        "legacy": ["legacy", "--scan-directory", nope, "--dest", dest, "--dry-run", "--db", library,
                   "--civitai-db", mirror],
    }


def wrong_database(w: dict[str, Path]) -> dict[str, list[list[str]]]:
    mirror, library, dest = str(w["mirror"]), str(w["library"]), str(w["tmp"] / "dest")
    folder, file = str(w["folder"]), str(w["file"])
    return {
        "build": [["build", str(w["dump"]), "--db", library], ["build", str(w["dump"]), "--db", library, "--full"]],
        "lookup": [["lookup", "abcdef1234", "--db", library]],
        "serve": [["serve", "--db", library], ["serve", "--db", mirror, "--library", mirror]],
        "update": [["update", "--dump", str(w["dump"]), "--db", library, *NO_NETWORK],
                   ["update", "--dump", str(w["dump"]), "--db", mirror, "--library", mirror, *NO_NETWORK]],
        "scan": [["scan", folder, "--db", mirror, "--no-extract"]],
        "extract": [["extract", "--db", mirror]],
        "match": [["match", "--db", mirror, "--civitai-db", library],
                  ["match", "--db", library, "--civitai-db", library]],
        "pin": [["pin", file, "1", "--db", mirror], ["pin", file, "1", "--db", library, "--civitai-db", library]],
        "unpin": [["unpin", file, "--db", mirror]],
        "sort": [["sort", "--dest", dest, "--dry-run", "--db", mirror, "--civitai-db", library],
                 ["sort", "--dest", dest, "--dry-run", "--db", library, "--civitai-db", library]],
        "undo": [["undo", "--db", mirror]],
        "runs": [["runs", "--db", mirror]],
        "legacy": [["legacy", "--scan-directory", folder, "--dest", dest, "--dry-run", "--db", mirror,
                    "--civitai-db", library]],
    }


def bad_value(w: dict[str, Path]) -> dict[str, list[str]]:
    folder, file, library = str(w["folder"]), str(w["file"]), str(w["library"])
    return {
        "crawl": ["crawl", "--start", "1", "--end", "1", "--threads", "0", *NO_NETWORK],
        "get": ["get", "models/1", "--max-body-mb", "0", *NO_NETWORK],
        "build": ["build", str(w["dump"]), "--db", folder],
        "lookup": ["lookup", "abcdef1234", "--type", "md5", "--db", str(w["mirror"])],
        "serve": ["serve", "--port", "99999"],
        "update": ["update", "--dump", file, "--db", str(w["mirror"]), *NO_NETWORK],
        "demo": ["demo", "--port", "99999", "--no-serve"],
        "scan": ["scan", folder, "--workers", "0"],
        "hash": ["hash", file, "--config", folder],
        "dfsn": ["dfsn", "info", folder],
        "extract": ["extract", "--db", folder],
        "inspect": ["inspect", file, "--keep-gps=maybe"],
        "match": ["match", "--db", library, "--dump", file],
        "pin": ["pin", file, "not-a-number", "--db", library],
        "unpin": ["unpin", file, "--db", folder],
        "sort": ["sort", "--dest", file, "--db", library],
        "undo": ["undo", "--db", folder],
        "runs": ["runs", "--db", folder],
        "legacy": ["legacy", "--scan-directory", file],
    }


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("guard-rails")
    dump = copy_dump(tmp / "dump")
    build_mirror(dump, tmp / "civitai.sqlite")
    (tmp / "folder").mkdir()
    (tmp / "folder" / "a.txt").write_text("a file")
    scanned = CliRunner().invoke(cli, ["scan", str(tmp / "folder"), "--db", str(tmp / "library.sqlite"),
                                       "--no-extract"])
    assert scanned.exit_code == 0, scanned.output
    return {"tmp": tmp, "dump": dump, "mirror": tmp / "civitai.sqlite", "library": tmp / "library.sqlite",
            "folder": tmp / "folder", "file": tmp / "folder" / "a.txt"}


def fingerprint(w: dict[str, Path]) -> dict[str, str]:
    """Each database's content (schema, rows, application_id; not the bytes, which a WAL
    checkpoint of a legitimately opened library may rearrange)."""
    out = {}
    for name in ("mirror", "library"):
        with sqlite3.connect(f"file:{w[name]}?mode=ro", uri=True) as conn:
            text = "\n".join(conn.iterdump()) + str(conn.execute("PRAGMA application_id").fetchone())
        out[name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def one_line_error(args: list[str], w: dict[str, Path]) -> None:
    before = fingerprint(w)
    result = CliRunner().invoke(cli, args)
    where = f"civitai-mirror {' '.join(args)}"
    assert result.exit_code not in (0, None), (where, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (where, repr(result.exception))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), (where, result.stderr)
    assert "Traceback" not in result.output
    assert fingerprint(w) == before, f"{where} changed a database it should have refused"


def test_every_command_has_its_cases(w):
    assert set(missing_path(w)) == set(COMMANDS)
    assert set(bad_value(w)) == set(COMMANDS)
    assert set(wrong_database(w)) <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_path_that_is_not_there(w, name, request):
    expect_known(request, "missing", name)
    args = missing_path(w)[name]
    if args is None:
        pytest.skip(f"{name} takes no file path")
    one_line_error(args, w)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_wrong_database(w, name, request):
    expect_known(request, "wrong", name)
    cases = wrong_database(w).get(name)
    if not cases:
        pytest.skip(f"{name} takes no database")
    for args in cases:
        one_line_error(args, w)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_option_value(w, name, request):
    expect_known(request, "bad", name)
    one_line_error(bad_value(w)[name], w)
