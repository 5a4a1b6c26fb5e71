"""The sorter over a real tree in tmp_path: exact destinations, dry-run, undo, crash recovery, EXDEV."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from civitai_mirror.fixtures import write_tree
from matcher import fileops, journal
from matcher.plan import plan_moves
from matcher.schema import open_library

MODEL_EXT = {".safetensors", ".ckpt", ".pt"}
MEDIA_EXT = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4"}
SIDECAR_EXT = {".txt", ".json", ".info"}

# Contract columns (contracts.md) for tables other parts own; created here only if not declared yet.
CONTRACT_TABLES = {
    "files": ({"id": int, "path": str, "root": str, "size": int, "mtime_ns": int, "kind": str,
               "format": str, "sha256": str, "model_type": str, "base_model": str, "missing": int}, "id"),
    "matches": ({"file_id": int, "version_id": int, "model_id": int, "civitai_file_id": int,
                 "hash_type": str, "confidence": float, "reason": str, "model_name": str,
                 "version_name": str, "model_type": str, "base_model": str, "pinned": int,
                 "suggestions": str}, "file_id"),
    "resources": ({"id": int, "file_id": int, "position": int, "kind": str, "name": str,
                   "hash": str, "hash_kind": str, "weight": float, "version_id": int}, "id"),
    "resource_matches": ({"resource_id": int, "version_id": int, "model_id": int,
                          "local_file_id": int, "hash_type": str, "confidence": float,
                          "reason": str}, "resource_id"),
}

SAME_BYTES = b"\x89PNG\r\n\x1a\n same picture bytes"

# The generated collection: path -> bytes.
TREE = {
    "src/loras/Cute Style.safetensors": b"lora weights cute" * 10,
    "src/loras/Cute Style.civitai.info": b'{"id": 11}',
    "src/loras/Cute Style.preview.png": b"\x89PNG preview of cute",
    "src/loras/Cute Style.png": SAME_BYTES,
    "src/ckpt/dreamy.ckpt": b"checkpoint dreamy" * 20,
    "src/ckpt/dreamy_sample.png": b"\x89PNG dreamy sample",
    "src/ckpt/dreamy_sample.txt": b"a prompt, Steps: 20",
    "src/two/a.safetensors": b"unmatched lora a",
    "src/two/a.png": b"\x89PNG picture of a",
    "src/two/b.safetensors": b"locon b weights",
    "src/images/gen1.png": b"\x89PNG gen1",
    "src/images/gen1.txt": b"gen1 prompt",
    "src/images/gen2.png": SAME_BYTES,          # same content as the LoRA's own picture
    "src/images/gen3.jpg": b"\xff\xd8 gen3",
    "src/images/CON.png": b"\x89PNG reserved name",
    "src/images/what?.png": b"\x89PNG question",
    "src/images/gen4.png": b"\x89PNG gen4 remote checkpoint",
    "src/images/orphan.webp": b"RIFF orphan",
    "src/notes.md": b"my notes",
    # Already at the destination, unknown to the library, different content: never overwritten.
    "dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt": b"someone else's dreamy",
}

LORA_DIR = "dest/models/loras/SD1.5/Cute_Style_ _v2_"
CKPT_DIR = "dest/models/checkpoints/SDXL1.0/Dreamy"
# Where everything ends up (path -> bytes); files not listed stay where they were.
EXPECTED_MOVES = {
    "src/loras/Cute Style.safetensors": f"{LORA_DIR}/Cute Style.safetensors",
    "src/loras/Cute Style.civitai.info": f"{LORA_DIR}/Cute Style.civitai.info",
    "src/loras/Cute Style.preview.png": f"{LORA_DIR}/Cute Style.preview.png",
    "src/loras/Cute Style.png": f"{LORA_DIR}/Cute Style.png",
    "src/ckpt/dreamy.ckpt": f"{CKPT_DIR}/dreamy (1).ckpt",
    "src/ckpt/dreamy_sample.png": f"{CKPT_DIR}/dreamy_sample.png",
    "src/ckpt/dreamy_sample.txt": f"{CKPT_DIR}/dreamy_sample.txt",
    "src/two/b.safetensors": "dest/models/loras/SDXL/Bee LoCon/b.safetensors",
    "src/images/gen1.png": f"{LORA_DIR}/gen1.png",
    "src/images/gen1.txt": f"{LORA_DIR}/gen1.txt",
    "src/images/gen2.png": "dest/duplicates/media/loras/gen2.png",
    "src/images/gen3.jpg": f"{CKPT_DIR}/gen3.jpg",
    "src/images/CON.png": f"{LORA_DIR}/_CON.png",
    "src/images/what?.png": f"{LORA_DIR}/what_.png",
    "src/images/gen4.png": "dest/models/checkpoints/Pony/Remote Model/gen4.png",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest().upper()


def manifest(root: Path) -> dict[str, str]:
    """Every file under root (but the database) -> its SHA256."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and "library.sqlite" not in path.name:
            out[path.relative_to(root).as_posix()] = sha(path.read_bytes())
    return out


def expected_manifest(root: Path, moves: dict[str, str] = EXPECTED_MOVES) -> dict[str, str]:
    out = {}
    for rel, data in TREE.items():
        out[moves.get(rel, rel)] = sha(data)
    return out


def kind_of(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext in MODEL_EXT:
        return "model"
    if ext in MEDIA_EXT:
        return "media"
    if ext in SIDECAR_EXT:
        return "sidecar"
    return "other"


def build_library(root: Path, tree: dict[str, bytes] = TREE):
    """Write the tree, and a library.sqlite describing src/ as scan + extract + match would."""
    write_tree(root, tree)
    db = open_library(root / "library.sqlite")
    for name, (columns, pk) in CONTRACT_TABLES.items():
        if not db.table(name).exists():
            db.table(name).create(columns, pk=pk)
    ids = {}
    for rel, data in tree.items():
        if not rel.startswith("src/"):
            continue
        path = root / rel
        st = path.stat()
        ids[rel] = db.table("files").insert({
            "path": str(path), "root": str(root / "src"), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "kind": kind_of(rel), "sha256": sha(data), "missing": 0,
            "model_type": "lora" if rel.endswith(".safetensors") else "checkpoint" if rel.endswith(".ckpt") else None,
            "base_model": "SDXL" if rel.endswith("b.safetensors") else None,
        }, alter=True).last_pk
    matches = [
        {"file_id": ids["src/loras/Cute Style.safetensors"], "version_id": 11, "model_id": 1,
         "hash_type": "SHA256", "confidence": 1.0, "model_name": "Cute/Style: <v2>..",
         "model_type": "LORA", "base_model": "SD 1.5", "pinned": 0},
        {"file_id": ids["src/ckpt/dreamy.ckpt"], "version_id": 22, "model_id": 2, "hash_type": "AutoV2",
         "confidence": 1.0, "model_name": "Dreamy", "model_type": "Checkpoint", "base_model": "SDXL 1.0",
         "pinned": 0},
        {"file_id": ids["src/two/b.safetensors"], "version_id": 33, "model_id": 3, "hash_type": "BLAKE3",
         "confidence": 1.0, "model_name": "Bee LoCon", "model_type": "LoCon", "base_model": None, "pinned": 0},
        # A name/size guess only: never used for sorting unless pinned.
        {"file_id": ids["src/two/a.safetensors"], "version_id": 44, "model_id": 4, "hash_type": None,
         "confidence": 0.3, "model_name": "Maybe A", "model_type": "LORA", "base_model": "SD 1.5",
         "pinned": 0, "suggestions": '[{"version_id": 44}]'},
        # An image whose checkpoint is known to Civitai but not held locally.
        {"file_id": ids["src/images/gen4.png"], "version_id": 55, "model_id": 5, "hash_type": "AutoV2",
         "confidence": 1.0, "model_name": "Remote Model", "model_type": "Checkpoint", "base_model": "Pony",
         "pinned": 0},
    ]
    db.table("matches").insert_all(matches, alter=True)

    def uses(image: str, *resources: tuple[str, str | None]):
        for position, (kind, local) in enumerate(resources):
            rid = db.table("resources").insert({"file_id": ids[image], "position": position, "kind": kind,
                                                "name": local or "remote"}, alter=True).last_pk
            db.table("resource_matches").insert({"resource_id": rid, "version_id": 1,
                                                 "local_file_id": ids.get(local), "confidence": 1.0},
                                                alter=True)

    cute, dreamy = "src/loras/Cute Style.safetensors", "src/ckpt/dreamy.ckpt"
    uses("src/images/gen1.png", ("checkpoint", dreamy), ("embedding", None), ("lora", cute))
    uses("src/images/gen2.png", ("lora", cute))
    uses("src/images/gen3.jpg", ("checkpoint", dreamy), ("lora", None))
    uses("src/images/CON.png", ("lora", cute))
    uses("src/images/what?.png", ("lycoris", cute))
    return db, ids


@pytest.fixture
def lib(tmp_path):
    db, ids = build_library(tmp_path)
    return tmp_path, db, ids


def test_plan_is_pure_and_exact(lib):
    root, db, ids = lib
    before = manifest(root)
    plan = plan_moves(db, root / "dest", {})
    assert manifest(root) == before
    got = {os.path.relpath(m.source, root): os.path.relpath(m.destination, root) for m in plan.moves}
    assert got == EXPECTED_MOVES
    ignored = {os.path.relpath(i.path, root): i.reason for i in plan.ignored}
    assert set(ignored) == {"src/two/a.safetensors", "src/two/a.png", "src/images/orphan.webp", "src/notes.md"}
    assert "suggestion" in ignored["src/two/a.safetensors"]
    roles = {os.path.relpath(m.source, root): m.role for m in plan.moves}
    assert roles["src/images/gen2.png"] == "duplicate"
    assert roles["src/loras/Cute Style.civitai.info"] == "sidecar"
    assert roles["src/ckpt/dreamy_sample.png"] == "media"


def test_apply_gives_the_expected_tree_and_updates_library(lib):
    root, db, ids = lib
    summary = journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    assert summary["state"] == "done"
    assert summary["journal"] == {"done": len(EXPECTED_MOVES), "ignored": 4}
    assert manifest(root) == expected_manifest(root)
    paths = {r["id"]: r["path"] for r in db.query("select id, path from files")}
    for src, dst in EXPECTED_MOVES.items():
        assert paths[ids[src]] == str(root / dst)
    # Running again finds everything in place: nothing to move.
    again = plan_moves(db, root / "dest", {})
    assert again.moves == []
    assert again.in_place == len(EXPECTED_MOVES)


def test_pinned_suggestion_is_sorted(lib):
    root, db, ids = lib
    db.table("matches").update(ids["src/two/a.safetensors"], {"pinned": 1})
    plan = plan_moves(db, root / "dest", {})
    got = {os.path.relpath(m.source, root): os.path.relpath(m.destination, root) for m in plan.moves}
    assert got["src/two/a.safetensors"] == "dest/models/loras/SD1.5/Maybe A/a.safetensors"
    # a.png has a's stem, so it travels with it.
    assert got["src/two/a.png"] == "dest/models/loras/SD1.5/Maybe A/a.png"


def test_type_folders_from_config(lib):
    root, db, ids = lib
    flat = plan_moves(db, root / "dest", {"use_model_type_subfolders": "false"})
    dests = {os.path.relpath(m.destination, root) for m in flat.moves}
    assert "dest/models/SDXL/Bee LoCon/b.safetensors" in dests
    custom = plan_moves(db, root / "dest", {"model_type_folders": "LORA = Lora, checkpoint=Stable-diffusion"})
    dests = {os.path.relpath(m.destination, root) for m in custom.moves}
    assert "dest/models/Lora/SDXL/Bee LoCon/b.safetensors" in dests
    assert "dest/models/Stable-diffusion/Pony/Remote Model/gen4.png" in dests
    assert "dest/duplicates/media/Lora/gen2.png" in dests


def test_sort_then_undo_restores_the_exact_manifest(lib):
    root, db, ids = lib
    before = manifest(root)
    paths_before = sorted(r["path"] for r in db.query("select path from files"))
    run = journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    assert manifest(root) != before
    result = journal.undo_run(db)
    assert result["run_id"] == run["run_id"]
    assert result["refused"] == [] and result["state"] == "undone"
    assert manifest(root) == before
    assert sorted(r["path"] for r in db.query("select path from files")) == paths_before
    # Folders the sort created are gone again; the pre-existing destination file stays.
    assert not (root / LORA_DIR).exists()
    assert (root / CKPT_DIR / "dreamy.ckpt").read_bytes() == TREE["dest/models/checkpoints/SDXL1.0/Dreamy/dreamy.ckpt"]
    with pytest.raises(LookupError):
        journal.undo_run(db)


def test_undo_refuses_a_changed_file_and_restores_the_rest(lib):
    root, db, ids = lib
    before = manifest(root)
    journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    changed = root / LORA_DIR / "gen1.png"
    changed.write_bytes(b"\x89PNG edited by the user")
    result = journal.undo_run(db)
    assert result["state"] == "partially_undone"
    assert [r["destination"] for r in result["refused"]] == [str(changed)]
    assert "changed" in result["refused"][0]["reason"]
    after = manifest(root)
    expected = dict(before)
    del expected["src/images/gen1.png"]
    expected[f"{LORA_DIR}/gen1.png"] = sha(b"\x89PNG edited by the user")
    assert after == expected
    # The user puts the file back as it was: undo again finishes the run.
    changed.write_bytes(TREE["src/images/gen1.png"])
    assert journal.undo_run(db)["state"] == "undone"
    assert manifest(root) == before


def test_never_overwrites_a_name_taken_after_planning(lib):
    root, db, ids = lib
    plan = plan_moves(db, root / "dest", {})
    squatter = root / "dest/models/loras/SDXL/Bee LoCon/b.safetensors"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"arrived meanwhile")
    journal.apply_plan(db, plan)
    assert squatter.read_bytes() == b"arrived meanwhile"
    assert (squatter.parent / "b (1).safetensors").read_bytes() == TREE["src/two/b.safetensors"]


def test_exception_mid_apply_then_recovery_finishes(lib, monkeypatch):
    root, db, ids = lib
    real, calls = journal.move_file, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("injected crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "move_file", flaky)
    with pytest.raises(RuntimeError):
        journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    monkeypatch.setattr(journal, "move_file", real)
    run = journal.list_runs(db)[0]
    assert run["state"] == "interrupted" and run["journal"]["done"] == 4
    recovered = journal.recover_runs(db)
    assert [r["state"] for r in recovered] == ["done"]
    assert manifest(root) == expected_manifest(root)


def test_exception_mid_apply_then_rollback_restores(lib, monkeypatch):
    root, db, ids = lib
    before = manifest(root)
    real, calls = journal.move_file, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "move_file", flaky)
    with pytest.raises(KeyboardInterrupt):
        journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    monkeypatch.setattr(journal, "move_file", real)
    assert [r["state"] for r in journal.recover_runs(db, rollback=True)] == ["rolled_back"]
    assert manifest(root) == before


CRASH_SCRIPT = r"""
import os, sys
from matcher import journal
from matcher.plan import plan_moves
from matcher.schema import open_library
root, mode = sys.argv[1], sys.argv[2]
db = open_library(os.path.join(root, "library.sqlite"))
plan = plan_moves(db, os.path.join(root, "dest"), {})
from matcher import fileops
real_rename, real_unlink = fileops.rename_noreplace, os.unlink
count = [0]
def rename(src, dst):
    if src.endswith(".part"):
        return real_rename(src, dst)   # the verified copy gets its name
    count[0] += 1
    if mode == "exdev":
        raise OSError(18, "Invalid cross-device link")
    real_rename(src, dst)
    if count[0] == 3:
        os._exit(9)          # killed right after a move, before the journal says 'done'
def unlink(path):
    if mode == "exdev" and not path.endswith(".part"):
        count[0] += 1
        if count[0] == 6:
            os._exit(9)      # killed after the verified copy is in place, before the source is unlinked
    real_unlink(path)
fileops.rename_noreplace, os.unlink = rename, unlink
journal.apply_plan(db, plan)
"""


@pytest.mark.parametrize("mode", ["rename", "exdev"])
def test_killed_process_then_recovery_loses_nothing(lib, mode):
    root, db, ids = lib
    env = {**os.environ, "PYTHONPATH": str(Path(journal.__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(root), mode], env=env)
    assert proc.returncode == 9
    db = open_library(root / "library.sqlite")
    states = [r["state"] for r in db.query("select state from journal where state != 'ignored'")]
    assert "moving" in states and "planned" in states
    if mode == "exdev":   # the copy exists twice on disk right now
        assert len(manifest(root)) == len(TREE) + 1
    # The next apply (here: its automatic recovery) finishes the dead run.
    journal.recover_runs(db)
    assert manifest(root) == expected_manifest(root)
    assert not list(root.rglob("*.part"))
    assert journal.undo_run(db)["state"] == "undone"


def test_cross_device_moves_copy_verify_unlink(lib, monkeypatch):
    root, db, ids = lib
    before = manifest(root)

    real = fileops.rename_noreplace

    def exdev(src, dst):
        if src.endswith(".part"):
            return real(src, dst)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(fileops, "rename_noreplace", exdev)
    # One library hash is stale (same size and mtime, different content): the copy must not verify.
    stale = ids["src/images/gen3.jpg"]
    db.table("files").update(stale, {"sha256": "0" * 64})
    summary = journal.apply_plan(db, plan_moves(db, root / "dest", {}))
    assert summary["journal"] == {"done": len(EXPECTED_MOVES) - 1, "failed": 1, "ignored": 4}
    moves = dict(EXPECTED_MOVES)
    del moves["src/images/gen3.jpg"]
    assert manifest(root) == expected_manifest(root, moves)
    assert not list(root.rglob("*.part"))
    assert journal.undo_run(db)["state"] == "undone"
    assert manifest(root) == before
