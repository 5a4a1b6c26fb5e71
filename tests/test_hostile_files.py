"""Files a stranger can leave on a disk: names that are not UTF-8, devices and FIFOs, non-images given
to inspect, torch zips that say what they are only inside. Every file is built in the test."""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import sqlite_utils
from click.testing import CliRunner

from civitai_mirror.cli import cli
from civitai_mirror.fixtures import picture, safetensors_bytes, write_png
from civitai_mirror.samples import collection_model_files
from matcher.fsnames import disk_path, shown, stored_path
from matcher.models import classify_model
from matcher.scan import CLASH_ERROR, scan_library
from matcher.schema import open_library

INFOTEXT = "a fox\nSteps: 21, Seed: 8, Model: odd_name_model"


def make(folder, name: bytes, data: bytes) -> str:
    """A file whose name is ``name`` exactly (bytes), as ``str`` the way os.scandir gives it."""
    path = os.path.join(os.fsencode(folder), name)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except (OSError, UnicodeError):
        pytest.skip("this filesystem refuses names that are not UTF-8")
    return os.fsdecode(path)


def png_with_params(text: str = INFOTEXT) -> bytes:
    buf = io.BytesIO()
    picture((4, 4), (5, 6, 7)).save(buf, "PNG", pnginfo=_info(text))
    return buf.getvalue()


def open_png() -> bytes:
    buf = io.BytesIO()
    picture((4, 4), (9, 8, 7)).save(buf, "PNG")
    return buf.getvalue()


def _info(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def files_by_name(db_path) -> dict[str, dict]:
    return {os.path.basename(row["path"]): row for row in sqlite_utils.Database(db_path)["files"].rows}


# ---- names that are not UTF-8 -------------------------------------------------------------------------

def test_a_name_that_is_not_utf8_is_scanned_stored_losslessly_and_extracted(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    odd = make(root, b"caf\xe9.png", png_with_params())
    model = make(root, b"\xff\xfemodel.safetensors", safetensors_bytes({"emb_params": [2, 768]}, seed="odd"))
    write_png(root / "plain.png", picture((4, 4), (1, 1, 1)))
    db_path = tmp_path / "library.sqlite"
    result = CliRunner().invoke(cli, ["scan", str(root), "--db", str(db_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["files"], summary["new"], summary["errors"]) == (3, 3, 0)
    rows = files_by_name(db_path)
    assert set(rows) == {"caf\\xe9.png", "\\xff\\xfemodel.safetensors", "plain.png"}
    assert rows["caf\\xe9.png"]["path_bytes"] == os.fsencode(odd)
    assert disk_path(rows["caf\\xe9.png"]["path"], rows["caf\\xe9.png"]["path_bytes"]) == odd
    assert rows["\\xff\\xfemodel.safetensors"]["model_type"] == "embedding"
    assert rows["plain.png"]["path_bytes"] is None  # a UTF-8 name is its own text
    lib = sqlite_utils.Database(db_path)
    gen = list(lib.query("select g.model_name, g.steps, m.error from generations g join media_info m "
                         "on m.file_id = g.file_id"))
    assert gen == [{"model_name": "odd_name_model", "steps": 21, "error": None}]
    again = json.loads(CliRunner().invoke(cli, ["scan", str(root), "--db", str(db_path), "--json"]).output)
    assert (again["unchanged"], again["new"], again["errors"]) == (3, 0, 0)


def test_a_renamed_odd_file_keeps_its_row(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    first = make(root, b"caf\xe9.png", png_with_params())
    db = open_library(tmp_path / "library.sqlite")
    scan_library(db, [root])
    second = os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe8.png"))
    os.rename(first, second)
    summary = scan_library(db, [root])
    assert summary["moves"] == [{"from": shown(first), "to": shown(second)}]
    (row,) = files_by_name(tmp_path / "library.sqlite").values()
    assert (row["path"], row["path_bytes"], row["missing"]) == (shown(second), os.fsencode(second), 0)


def test_two_names_with_one_text_cost_one_error_not_the_scan(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    make(root, b"caf\xe9.png", png_with_params())
    (root / "caf\\xe9.png").write_bytes(png_with_params("a dog\nSteps: 5, Seed: 1"))  # a literal backslash
    write_png(root / "plain.png", picture((4, 4), (1, 1, 1)))
    db = open_library(tmp_path / "library.sqlite")
    summary = scan_library(db, [root])
    clash = shown(os.path.join(str(root), "caf\\xe9.png"))
    assert summary["files"] == 2 and summary["error_files"] == [clash]
    assert summary["file_errors"] == {clash: CLASH_ERROR}
    result = CliRunner().invoke(cli, ["scan", str(root), "--db", str(tmp_path / "library.sqlite")])
    assert result.exit_code == 0 and f"error: {clash}: {CLASH_ERROR}" in result.output


def test_stored_path_is_lossless():
    for raw in (b"/a/caf\xe9.png", b"/a/\xff\xfe", b"/a/plain.png", "/a/caf\u00e9.png".encode()):
        path = os.fsdecode(raw)
        text, stored = stored_path(path)
        text.encode("utf-8")  # storable
        assert os.fsencode(disk_path(text, stored)) == raw


# ---- devices and FIFOs ---------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command in a child process: a regression that hangs fails after a minute instead of never."""
    return subprocess.run([sys.executable, "-c", "from civitai_mirror.cli import cli; cli()", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_hash_refuses_a_link_to_a_device_and_a_fifo(tmp_path):
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    good = tmp_path / "good.safetensors"
    good.write_bytes(safetensors_bytes({"w": [4, 4]}, seed="g"))
    done = run_cli("hash", str(link), str(fifo), str(good))
    assert done.returncode != 0
    assert f"error: {link}: not a regular file" in done.stderr and f"error: {fifo}: not a regular file" in done.stderr
    assert f"{good}: model (safetensors)" in done.stdout


# ---- inspect -----------------------------------------------------------------------------------------

def test_inspect_walks_a_folder(tmp_path):
    (tmp_path / "out" / "day1").mkdir(parents=True)
    write_png(tmp_path / "out" / "day1" / "b.png", picture((4, 4), (1, 2, 3)), {"parameters": INFOTEXT})
    write_png(tmp_path / "out" / "a.png", picture((4, 4), (3, 2, 1)))
    (tmp_path / "out" / "a.txt").write_text("notes")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in result.output.splitlines()]
    assert [os.path.basename(r["path"]) for r in recs] == ["a.png", "b.png"]
    assert recs[1]["steps"] == 21
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = CliRunner().invoke(cli, ["inspect", str(empty)])
    assert nothing.exit_code != 0 and nothing.output == f"Error: {empty} holds no image or video\n"


def test_inspect_says_a_missing_file_does_not_exist(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "missing.png")])
    assert result.exit_code != 0
    assert result.output == f"Error: {tmp_path / 'missing.png'} does not exist\n"


def test_inspect_says_what_a_non_image_is(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(safetensors_bytes({"w": [4, 4]}, seed="m"))
    one = CliRunner().invoke(cli, ["inspect", str(model)])
    assert one.exit_code != 0
    assert one.output == f"Error: {model} is not an image or video: a model file, safetensors\n"
    image = tmp_path / "i.png"
    write_png(image, picture((4, 4), (3, 2, 1)))
    notes = tmp_path / "notes.md"
    notes.write_text("# hi")
    mixed = CliRunner().invoke(cli, ["inspect", str(image), str(notes), str(model)])
    assert mixed.exit_code != 0
    assert f"== {image} (png, 4x4)" in mixed.output
    assert mixed.output.endswith(f"Error: 2 files are not images or videos: {notes} (a file, md); "
                                 f"{model} (a model file, safetensors)\n")


# ---- torch zips -----------------------------------------------------------------------------------------

def torch_zip(tmp_path, name: str, state: bytes) -> str:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state)
        archive.writestr("archive/version", b"3\n")
        archive.writestr("archive/data/0", b"\0" * 4096)
    return str(path)


def classify(path: str) -> tuple[str, str | None]:
    facts = classify_model(path, os.path.splitext(path)[1][1:], os.path.getsize(path))
    return facts["model_type"], facts["error"]


def test_the_demo_ckpt_is_a_checkpoint(tmp_path):
    path = tmp_path / "old_realism.ckpt"
    path.write_bytes(collection_model_files()["checkpoints/old_realism.ckpt"])
    assert classify(str(path)) == ("checkpoint", None)


def test_a_torch_zip_is_classified_by_the_keys_in_its_pickle(tmp_path):
    sd = pickle.dumps({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": None,
                                      "first_stage_model.decoder.conv_out.weight": None}}, protocol=2)
    assert classify(torch_zip(tmp_path, "small_model.pt", sd)) == ("checkpoint", None)
    emb = pickle.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": None}, "name": "neg"}, protocol=2)
    assert classify(torch_zip(tmp_path, "neg.ckpt", emb)) == ("embedding", None)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_malicious_pickle_is_read_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = torch_zip(tmp_path, "evil.ckpt", pickle.dumps({"model.diffusion_model.x": _Boom()}, protocol=2))
    assert classify(path) == ("checkpoint", None)
    assert not (tmp_path / "pwned").exists()


def test_an_odd_name_with_an_odd_sidecar(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    make(root, b"caf\xe9.png", open_png())
    make(root, b"caf\xe9.txt", b"Used model: sidecar_model\n")
    db = open_library(tmp_path / "library.sqlite")
    scan_library(db, [root])
    from matcher.media import extract_library

    summary = extract_library(db)
    assert (summary["with_metadata"], summary["errors"]) == (1, 0)
    (row,) = db.query("select g.model_name, g.metadata_source, m.sidecar_path from generations g "
                      "join media_info m on m.file_id = g.file_id")
    assert row == {"model_name": "sidecar_model", "metadata_source": "sidecar:caf\\xe9.txt",
                   "sidecar_path": shown(os.path.join(str(root), "caf\\xe9.txt"))}



def test_sort_and_undo_move_an_odd_name_there_and_back(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    model = make(root, b"caf\xe9 style.safetensors", safetensors_bytes({"lora_unet_a.lora_down.weight": [4, 4]}, seed="c"))
    picture_path = make(root, b"caf\xe9 style.png", open_png())
    before = {os.fsencode(p): open(p, "rb").read() for p in (model, picture_path)}
    db = open_library(tmp_path / "library.sqlite")
    scan_library(db, [root])
    (file_id,) = [r["id"] for r in db.query("select id from files where path like '%.safetensors'")]
    db["matches"].insert({"file_id": file_id, "version_id": 11, "model_id": 1, "hash_type": "SHA256",
                          "confidence": 1.0, "model_name": "Cafe Style", "model_type": "LORA",
                          "base_model": "SD 1.5", "pinned": 0})
    lib = str(tmp_path / "library.sqlite")
    sort = CliRunner().invoke(cli, ["sort", "--dest", str(tmp_path / "dest"), "--db", lib])
    assert sort.exit_code == 0, sort.output
    assert f"{shown(model)} → " in sort.output and "(2 done)" in sort.output
    moved = tmp_path / "dest" / "models" / "loras" / "SD1.5" / "Cafe Style" / "caf_xe9 style.safetensors"
    assert moved.read_bytes() == before[os.fsencode(model)] and not os.path.lexists(model)
    assert {r["path"]: r["path_bytes"] for r in db.query("select path, path_bytes from files")}[str(moved)] is None
    undo = CliRunner().invoke(cli, ["undo", "--db", lib])
    assert undo.exit_code == 0 and "(2 undone)" in undo.output, undo.output
    assert {os.path.join(os.fsencode(root), n): open(os.path.join(os.fsencode(root), n), "rb").read()
            for n in os.listdir(os.fsencode(root))} == before
    rows = {r["path"]: r["path_bytes"] for r in db.query("select path, path_bytes from files")}
    assert rows == {shown(model): os.fsencode(model), shown(picture_path): os.fsencode(picture_path)}


def zip_bomb_ckpt(path, inflated: int = 256 * 1024 * 1024) -> None:
    """A torch zip whose data.pkl inflates to ``inflated`` zero bytes (about 250 KB on disk)."""
    block = b"\0" * (1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("archive/version", b"3\n")
        with archive.open("archive/data.pkl", "w", force_zip64=True) as member:
            for _ in range(inflated >> 20):
                member.write(block)


def test_scan_skips_loops_fifos_and_devices_never_inflates_a_bomb_nor_runs_a_pickle(tmp_path):
    root = tmp_path / "lib"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "loop").symlink_to(root)
    os.mkfifo(root / "pipe.safetensors")
    (root / "zero.safetensors").symlink_to("/dev/zero")
    zip_bomb_ckpt(root / "bomb.ckpt")
    (root / "evil.pt").write_bytes(pickle.dumps({"model.diffusion_model.x": _Boom()}, protocol=2))
    db_path = tmp_path / "library.sqlite"
    done = run_cli("scan", str(root), "--db", str(db_path), "--json")
    assert done.returncode == 0, done.stderr
    rows = files_by_name(db_path)
    assert set(rows) == {"bomb.ckpt", "evil.pt"}
    assert rows["bomb.ckpt"]["model_type"] == "checkpoint"
    assert not (tmp_path / "pwned").exists() and not (root / "pwned").exists()
