"""The sorter: compute a plan of moves (pure), apply it through a journal, undo it.

``plan_moves(db, dest, config) -> Plan`` reads library.sqlite (``files``, ``matches``,
``resources``, ``resource_matches``) and decides where every file goes; it touches no file
(it only looks whether a destination name is taken).

Rules, in the order they apply:

1. **Sidecars travel with their file.** ``foo.txt``, ``foo.json``, ``foo.civitai.info``,
   ``foo.preview.png`` (and ``foo.safetensors.json``-style names) in the folder of ``foo.*`` move
   with it and keep its (possibly counter-suffixed) stem.
2. **Proximity first.** Media next to a model file belong to that model and travel with it: media
   with the model's stem (``foo.png`` beside ``foo.safetensors``), and every media file of a folder
   that holds exactly one model. This holds only when the model itself is sorted; otherwise the
   media are judged on their own (rule 4).
3. **Models** go to ``DEST/models/<type folder>/<base model>/<model name>/<file name>``.
   The type folder comes from Civitai's type (``matches.model_type``) or else the scan's
   ``files.model_type``, through ``model_type_folders``; ``use_model_type_subfolders = false``
   drops it. The base model is Civitai's ``baseModel`` (``SD 1.5`` -> ``SD1.5``) or else the
   scan's detected family, or ``Unknown``. The model name is Civitai's, made safe.
   Only confident matches sort a file: ``matches.version_id`` set and ``confidence >= 0.9``, or
   ``pinned``. A low-confidence suggestion never moves anything.
4. **Media matched to models** go to the folder of the *first LoRA (or LyCORIS/DoRA) they use, in
   resource order, that is held locally and sorted* (``resources`` by ``position`` joined to
   ``resource_matches.local_file_id``); else to the folder of their checkpoint when it is held
   locally and sorted; else to the folder their own confident ``matches`` row (the checkpoint's
   Civitai version) names.
5. **Duplicates.** A media file (or model) whose full SHA256 equals a file already in, or already
   planned into, its destination folder goes to ``DEST/duplicates/media/<type folder>/``
   (``duplicates/models/...`` for models). Never decided by name.
6. **Everything else stays where it is** and is recorded as ignored, with the reason.
7. **Never overwrite.** A taken name gets a counter: ``name (1).ext`` (sidecars get the same
   counter as their file).

``apply_plan(db, plan)`` writes every move to ``journal`` (run id, source, destination, size,
sha256, state ``planned``) *before* moving anything, then moves file by file (``moving`` ->
``done``), updating ``files.path``. Same-device moves are renames; cross-device moves copy to a
hidden ``.part`` file beside the destination, verify its SHA256 against the journal, link it into
place and only then unlink the source.

**Crash recovery** (``recover_runs``): a run left ``running`` by a dead process, or
``interrupted`` by an exception, is *finished* automatically at the start of the next
``apply_plan`` or ``undo_run`` (or by ``civitai-mirror sort --resume``); ``--rollback`` instead
puts every file of the interrupted runs back. Each journal row is resolved by looking at the disk:
moved, not moved, or copied-but-not-unlinked (verified by hash) — nothing is lost either way.

``undo_run(db, run_id=None)`` moves a run's files back (default: the latest run not fully
undone), checking that each file is still the one that was moved (size + SHA256) and that its
old place is free; it refuses per file, not all-or-nothing, and can be re-run.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import sqlite_utils

from matcher.paths import base_model_folder, safe_name, with_counter

log = logging.getLogger(__name__)

#: A match below this confidence (and not pinned) never sorts a file.
MIN_CONFIDENCE = 0.9

#: Names of sidecar files, after the stem of the file they belong to.
SIDECAR_SUFFIXES = (
    ".civitai.info", ".metadata.json", ".preview.png", ".preview.jpg", ".preview.jpeg",
    ".preview.webp", ".txt", ".json",
)

#: Canonical type keys and their default folder names.
DEFAULT_TYPE_FOLDERS: dict[str, str] = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "embedding": "embeddings",
    "hypernetwork": "hypernetworks",
    "controlnet": "controlnet",
    "vae": "vae",
    "upscaler": "upscalers",
    "other": "other",
}

#: Civitai types (ModelType enum) and the scan's files.model_type values -> canonical type key.
TYPE_KEYS: dict[str, str] = {
    "checkpoint": "checkpoint",
    "lora": "lora", "locon": "lora", "lycoris": "lora", "dora": "lora",
    "textualinversion": "embedding", "embedding": "embedding",
    "hypernetwork": "hypernetwork",
    "controlnet": "controlnet",
    "vae": "vae",
    "upscaler": "upscaler",
}

LORA_KINDS = {"lora", "locon", "lycoris", "dora"}
BUF = 1 << 20


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- config ------------------------------------------------------------------------------------

def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _as_bool(value: Any, default: bool = True) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def type_folders(config: Any = None) -> dict[str, str]:
    """Canonical type key -> folder name, with the config's ``model_type_folders`` applied.

    ``model_type_folders`` may be a dict or text like ``lora=LoRA, checkpoint=Stable-diffusion``
    (keys: a canonical key or any Civitai type, any case).
    """
    folders = dict(DEFAULT_TYPE_FOLDERS)
    value = _cfg(config, "model_type_folders")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            value = dict(
                part.split("=", 1) if "=" in part else part.split(":", 1)
                for part in re.split(r"[,\n;]", text) if ("=" in part or ":" in part)
            )
    for key, folder in (value or {}).items():
        canon = TYPE_KEYS.get(str(key).strip().lower().replace(" ", ""), str(key).strip().lower())
        if canon.endswith("s") and canon[:-1] in folders:
            canon = canon[:-1]
        folders[canon] = safe_name(str(folder).strip())
    return folders


def type_key(*candidates: str | None) -> str:
    """The first candidate type (Civitai's, then the scan's) that maps onto a type key."""
    for value in candidates:
        if value:
            key = TYPE_KEYS.get(str(value).strip().lower().replace(" ", ""))
            if key:
                return key
    return "other"


# ---- the plan ----------------------------------------------------------------------------------

@dataclass
class Move:
    source: str
    destination: str
    file_id: int | None = None
    size: int | None = None
    sha256: str | None = None
    mtime_ns: int | None = None
    role: str = "model"          # model | media | sidecar | duplicate
    reason: str = ""


@dataclass
class Ignored:
    path: str
    file_id: int | None = None
    reason: str = ""


@dataclass
class Plan:
    dest: str
    moves: list[Move] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    in_place: int = 0
    created_at: str = field(default_factory=utcnow)

    def summary(self) -> dict[str, Any]:
        by_role: dict[str, int] = defaultdict(int)
        for move in self.moves:
            by_role[move.role] += 1
        return {
            "dest": self.dest, "moves": len(self.moves), "ignored": len(self.ignored),
            "in_place": self.in_place, "bytes": sum(m.size or 0 for m in self.moves),
            "by_role": dict(sorted(by_role.items())),
        }

    def to_json(self) -> str:
        return json.dumps({"dest": self.dest, "created_at": self.created_at,
                           "in_place": self.in_place,
                           "moves": [asdict(m) for m in self.moves],
                           "ignored": [asdict(i) for i in self.ignored]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        return cls(dest=data["dest"], created_at=data.get("created_at", utcnow()),
                   in_place=data.get("in_place", 0),
                   moves=[Move(**m) for m in data.get("moves", [])],
                   ignored=[Ignored(**i) for i in data.get("ignored", [])])


# ---- reading library.sqlite --------------------------------------------------------------------

def _table_rows(db: sqlite_utils.Database, table: str, where: str = "", params: Iterable = ()) -> list[dict]:
    if not db.table(table).exists():
        return []
    sql = f"select * from [{table}]" + (f" where {where}" if where else "")
    return list(db.query(sql, list(params)))


def _usable_match(row: dict | None) -> bool:
    if not row or row.get("version_id") is None:
        return False
    if row.get("pinned"):
        return True
    confidence = row.get("confidence")
    return confidence is None or float(confidence) >= MIN_CONFIDENCE


def _is_sidecar_rest(rest: str, owner_ext: str) -> bool:
    lower = rest.lower()
    if lower in SIDECAR_SUFFIXES:
        return True
    # foo.safetensors.json, image.png.txt
    return bool(owner_ext) and lower.startswith(owner_ext.lower() + ".") and \
        lower[len(owner_ext):] in SIDECAR_SUFFIXES


def _split_name(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not stem:
        return name, ""
    return stem, dot + ext


@dataclass
class _Unit:
    owner: dict
    role: str
    companions: list[tuple[dict, str]] = field(default_factory=list)  # (file row, rest after stem)


class _Planner:
    def __init__(self, db: sqlite_utils.Database, dest: str, config: Any, include_media: bool = True):
        self.include_media = include_media
        self.dest = os.path.abspath(os.fspath(dest))
        self.folders = type_folders(config)
        self.use_type = _as_bool(_cfg(config, "use_model_type_subfolders"), True)
        files = [f for f in _table_rows(db, "files") if not f.get("missing")]
        files.sort(key=lambda f: f["path"])
        self.files = {f["id"]: f for f in files}
        self.by_dir: dict[str, list[dict]] = defaultdict(list)
        for f in files:
            self.by_dir[os.path.dirname(f["path"])].append(f)
        self.by_path = {f["path"]: f for f in files}
        self.matches = {m["file_id"]: m for m in _table_rows(db, "matches")}
        rmatches = {r["resource_id"]: r for r in _table_rows(db, "resource_matches")}
        self.resources: dict[int, list[tuple[dict, dict | None]]] = defaultdict(list)
        for res in sorted(_table_rows(db, "resources"),
                          key=lambda r: (r.get("file_id") or 0, r.get("position") or 0, r["id"])):
            self.resources[res.get("file_id")].append((res, rmatches.get(res["id"])))
        self.plan = Plan(dest=self.dest)
        self.claimed: set[int] = set()
        self.targets: dict[int, tuple[str, str]] = {}   # model file id -> (folder, type key)
        self.taken: set[str] = set()                     # destinations already planned
        self.planned_sha: dict[str, set[str]] = defaultdict(set)  # folder -> sha256 planned into it
        self.leaving: set[str] = set()                    # paths that move away

    # -- helpers --

    def kind(self, f: dict) -> str:
        return (f.get("kind") or "other").lower()

    def companions_of(self, owner: dict, with_media: bool) -> list[tuple[dict, str]]:
        name = os.path.basename(owner["path"])
        stem, ext = _split_name(name)
        out = []
        for other in self.by_dir[os.path.dirname(owner["path"])]:
            if other["id"] == owner["id"] or other["id"] in self.claimed:
                continue
            if self.kind(other) == "model":
                continue
            oname = os.path.basename(other["path"])
            if not oname.startswith(stem + ".") and not oname.startswith(name + "."):
                continue
            rest = oname[len(stem):]
            if _is_sidecar_rest(rest, ext):
                out.append((other, rest))
            elif with_media and self.kind(other) == "media" and re.fullmatch(r"(\.[^.]+){1,2}", rest):
                out.append((other, rest))
        return out

    def model_folder(self, match: dict | None, f: dict | None) -> tuple[str, str]:
        key = type_key((match or {}).get("model_type"), (f or {}).get("model_type"))
        base = base_model_folder((match or {}).get("base_model") or (f or {}).get("base_model"))
        name = (match or {}).get("model_name")
        if not name:
            name = f"model {match.get('model_id')}" if match and match.get("model_id") else "Unknown"
        parts = [self.dest, "models"]
        if self.use_type:
            parts.append(self.folders.get(key, self.folders["other"]))
        parts += [base, safe_name(name)]
        return os.path.join(*parts), key

    def duplicates_folder(self, role: str, key: str) -> str:
        return os.path.join(self.dest, "duplicates", "media" if role == "media" else "models",
                            self.folders.get(key, self.folders["other"]))

    def is_duplicate(self, f: dict, folder: str) -> bool:
        sha = (f.get("sha256") or "").upper()
        if not sha or os.path.dirname(f["path"]) == folder:
            return False
        if sha in self.planned_sha[folder]:
            return True
        return any((o.get("sha256") or "").upper() == sha and o["id"] != f["id"]
                   and o["path"] not in self.leaving
                   for o in self.by_dir.get(folder, []))

    def name_free(self, path: str, own_id: int) -> bool:
        if path in self.taken:
            return False
        known = self.by_path.get(path)
        if known is not None:
            return known["id"] == own_id
        return not os.path.lexists(path)

    # -- placing a unit --

    def place(self, unit: _Unit, folder: str, key: str, reason: str) -> None:
        owner = unit.owner
        if self.is_duplicate(owner, folder):
            folder = self.duplicates_folder(unit.role, key)
            reason = f"duplicate (same SHA256) of a file in its folder; {reason}"
            role = "duplicate"
        else:
            role = unit.role
        name = safe_name(os.path.basename(owner["path"]), keep_suffix=True)
        stem, ext = _split_name(name)
        members = [(owner, None)] + unit.companions
        counter = 0
        while True:
            cstem = stem if counter == 0 else f"{stem} ({counter})"
            names = [os.path.join(folder, with_counter(name, counter) if rest is None
                                  else safe_name(cstem + rest, keep_suffix=True))
                     for _, rest in members]
            if len(set(names)) == len(names) and all(
                    self.name_free(p, m["id"]) for p, (m, _) in zip(names, members)):
                break
            counter += 1
        for path, (member, rest) in zip(names, members):
            self.claimed.add(member["id"])
            if path == member["path"]:
                self.plan.in_place += 1
                self.taken.add(path)
                continue
            self.taken.add(path)
            self.leaving.add(member["path"])
            if rest is None or role == "duplicate":
                mrole = role
            else:
                mrole = "media" if self.kind(member) == "media" else "sidecar"
            self.plan.moves.append(Move(
                source=member["path"], destination=path, file_id=member["id"],
                size=member.get("size"), sha256=(member.get("sha256") or None),
                mtime_ns=member.get("mtime_ns"), role=mrole,
                reason=reason if rest is None else f"travels with {os.path.basename(owner['path'])}",
            ))
        for member, _ in members:
            if member.get("sha256"):
                self.planned_sha[folder].add(member["sha256"].upper())
        if unit.role == "model" and role == "model":
            self.targets[owner["id"]] = (folder, key)

    def ignore(self, f: dict, reason: str) -> None:
        if f["id"] in self.claimed:
            return
        self.claimed.add(f["id"])
        self.plan.ignored.append(Ignored(path=f["path"], file_id=f["id"], reason=reason))

    # -- the rules --

    def run(self) -> Plan:
        files = list(self.files.values())
        models = [f for f in files if self.kind(f) == "model"]
        # 1-3: models with their sidecars and same-stem media.
        model_units: list[_Unit] = []
        for f in models:
            self.claimed.add(f["id"])
            unit = _Unit(f, "model", self.companions_of(f, with_media=True))
            self.claimed.update(c["id"] for c, _ in unit.companions)
            model_units.append(unit)
        for unit in model_units:
            match = self.matches.get(unit.owner["id"])
            if _usable_match(match):
                folder, key = self.model_folder(match, unit.owner)
                why = "pinned match" if match.get("pinned") else \
                    f"matched by {match.get('hash_type') or 'hash'}"
                self.place(unit, folder, key, f"{why}: {match.get('model_name')} (version {match.get('version_id')})")
            else:
                reason = "no confident match" + (" (only a suggestion)" if match and match.get("suggestions") else "")
                self.claimed.difference_update({unit.owner["id"], *(c["id"] for c, _ in unit.companions)})
                self.ignore(unit.owner, reason)
                for comp, _ in unit.companions:
                    if self.kind(comp) != "media":
                        self.ignore(comp, f"sidecar of an unsorted model: {reason}")
        # Proximity: every media file in a folder with exactly one (sorted) model.
        media = [f for f in files if self.kind(f) == "media" and f["id"] not in self.claimed]
        media_units: list[_Unit] = []
        for f in media:
            if f["id"] in self.claimed:
                continue
            unit = _Unit(f, "media", self.companions_of(f, with_media=False))
            self.claimed.add(f["id"])
            self.claimed.update(c["id"] for c, _ in unit.companions)
            media_units.append(unit)
        models_in_dir: dict[str, list[dict]] = defaultdict(list)
        for f in models:
            models_in_dir[os.path.dirname(f["path"])].append(f)
        for unit in media_units:
            f = unit.owner
            target = self.media_target(f, models_in_dir)
            if target is None:
                self.ignore_unit(unit, "no match: left in place")
            else:
                folder, key, reason = target
                self.place(unit, folder, key, reason)
        for f in files:
            if f["id"] not in self.claimed:
                self.ignore(f, "sidecar without its file" if self.kind(f) == "sidecar"
                            else f"{self.kind(f)} file: not sorted")
        return self.plan

    def ignore_unit(self, unit: _Unit, reason: str) -> None:
        for f in (unit.owner, *(c for c, _ in unit.companions)):
            self.claimed.discard(f["id"])
            self.ignore(f, reason)

    def media_target(self, f: dict, models_in_dir: dict[str, list[dict]]) -> tuple[str, str, str] | None:
        here = models_in_dir.get(os.path.dirname(f["path"]), [])
        if len(here) == 1 and here[0]["id"] in self.targets:
            folder, key = self.targets[here[0]["id"]]
            return folder, key, f"next to {os.path.basename(here[0]['path'])}, the only model in its folder"
        if not self.include_media:
            return None
        resolved = [(res, rm) for res, rm in self.resources.get(f["id"], [])
                    if rm and rm.get("local_file_id") in self.targets
                    and (rm.get("confidence") is None or float(rm["confidence"]) >= MIN_CONFIDENCE)]
        for wanted in (LORA_KINDS, {"checkpoint"}):
            for res, rm in resolved:
                if (res.get("kind") or "").lower() in wanted:
                    folder, key = self.targets[rm["local_file_id"]]
                    local = os.path.basename(self.files[rm["local_file_id"]]["path"])
                    what = "LoRA" if wanted is LORA_KINDS else "checkpoint"
                    return folder, key, f"uses the local {what} {local}"
        match = self.matches.get(f["id"])
        if _usable_match(match):
            folder, key = self.model_folder({**match, "model_type": match.get("model_type") or "Checkpoint"}, None)
            return folder, key, f"its checkpoint {match.get('model_name')} (version {match.get('version_id')})"
        return None


def plan_moves(db: sqlite_utils.Database, dest: str | os.PathLike, config: Any = None, *,
               include_media: bool = True) -> Plan:
    """Decide where every file of the library goes (see the module docstring). Moves nothing.

    ``config`` is a ``matcher.config.Config`` or a dict with ``use_model_type_subfolders`` and
    ``model_type_folders``. ``include_media=False`` (legacy without ``--process-orphaned``) sorts
    models with their sidecars and neighbouring media only.
    """
    return _Planner(db, os.fspath(dest), config, include_media).run()


# ---- moving files ------------------------------------------------------------------------------

class VerifyError(OSError):
    """A copied file's hash is not the journal's: the source stays, the copy is removed."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(BUF):
            digest.update(chunk)
    return digest.hexdigest().upper()


def _part_path(dst: str, tag: str) -> str:
    folder, name = os.path.split(dst)
    return os.path.join(folder, f".{name[:150]}.{tag}.part")


def move_file(src: str, dst: str, sha256: str, tag: str) -> str:
    """Move ``src`` to ``dst`` without ever overwriting; returns 'rename' or 'copy'.

    Cross-device: copy to a hidden ``.part`` beside ``dst``, verify SHA256, link into place,
    then unlink the source.
    """
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.rename(src, dst)
        return "rename"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = _part_path(dst, tag)
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(part, "xb") as fout:
            while chunk := fin.read(BUF):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        try:
            st = os.stat(src)
            os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError:
            pass
        if digest.hexdigest().upper() != sha256 or sha256_file(part) != sha256:
            raise VerifyError(errno.EIO, "hash changed while copying; source kept", src)
        _link_into_place(part, dst)
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    os.unlink(src)
    return "copy"


def _link_into_place(part: str, dst: str) -> None:
    """Give ``part`` the name ``dst`` only if ``dst`` does not exist (os.link refuses to overwrite)."""
    try:
        os.link(part, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST,):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "destination exists", dst) from exc
        os.rename(part, dst)   # filesystems without hard links
        return
    os.unlink(part)


# ---- the journal -------------------------------------------------------------------------------

def _new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _set(db: sqlite_utils.Database, journal_id: int, **values: Any) -> None:
    values["_updated_at"] = utcnow()
    with db.conn:
        db.table("journal").update(journal_id, values)


def _update_library_path(db: sqlite_utils.Database, file_id: int | None, old: str, new: str) -> str | None:
    if file_id is None or not db.table("files").exists():
        return None
    try:
        db.execute("update files set path = ? where id = ? and path = ?", [new, file_id, old])
    except sqlite_utils.db.sqlite3.IntegrityError:
        return f"library row {file_id} not updated: another row already has {new}"
    return None


def _finish_row(db: sqlite_utils.Database, row: dict, state: str, forward: bool, error: str | None = None) -> None:
    old, new = (row["source"], row["destination"]) if forward else (row["destination"], row["source"])
    with db.conn:
        note = _update_library_path(db, row["file_id"], old, new)
        db.table("journal").update(row["id"], {"state": state, "error": error or note,
                                               "_updated_at": utcnow()})


def _process_alive(run: dict) -> bool:
    if run.get("host") and run["host"] != socket.gethostname():
        return True   # cannot tell: leave other machines' runs alone
    pid = run.get("pid")
    if not pid:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply_plan(db: sqlite_utils.Database, plan: Plan,
               progress: Callable[[Move], None] | None = None) -> dict[str, Any]:
    """Apply ``plan``: journal every move first, then move file by file. Returns the run summary."""
    recover_runs(db)
    run_id = _new_run_id()
    with db.conn:
        db.table("runs").insert({"id": run_id, "dest": plan.dest, "state": "running",
                                 "moves": len(plan.moves), "ignored": len(plan.ignored),
                                 "_started_at": utcnow(), "pid": os.getpid(),
                                 "host": socket.gethostname()})
        plan_id = db.table("plans").insert({"dest": plan.dest, "plan_json": plan.to_json(),
                                            "summary_json": json.dumps(plan.summary()),
                                            "run_id": run_id, "_created_at": utcnow()}).last_pk
        db.table("runs").update(run_id, {"plan_id": plan_id})
    # Journal everything BEFORE the first move. Sizes and hashes are checked now: a DB hash is
    # trusted only when size and mtime still match the scan.
    rows = []
    chosen: set[str] = set()
    for seq, move in enumerate(plan.moves):
        row = {"run_id": run_id, "seq": seq, "file_id": move.file_id, "source": move.source,
               "role": move.role, "reason": move.reason, "state": "planned", "_updated_at": utcnow()}
        try:
            st = os.stat(move.source)
            sha = move.sha256.upper() if move.sha256 and move.size == st.st_size and (
                move.mtime_ns is None or move.mtime_ns == st.st_mtime_ns) else sha256_file(move.source)
            row.update(size=st.st_size, sha256=sha)
        except OSError as exc:
            row.update(state="failed", error=f"cannot read source: {exc.strerror or exc}")
        destination, counter = move.destination, 0
        while os.path.lexists(destination) or destination in chosen:
            counter += 1
            destination = with_counter(move.destination, counter)
        chosen.add(destination)
        row["destination"] = destination
        rows.append(row)
    with db.conn:
        db.table("journal").insert_all(rows)
        db.table("journal").insert_all(
            {"run_id": run_id, "seq": len(rows) + i, "file_id": ign.file_id, "source": ign.path,
             "destination": None, "state": "ignored", "reason": ign.reason, "role": "ignored",
             "_updated_at": utcnow()} for i, ign in enumerate(plan.ignored))
    try:
        for row in db.query("select * from journal where run_id = ? and state = 'planned' order by seq",
                            [run_id]):
            _do_move(db, row)
            if progress:
                progress(row)
    except BaseException as exc:
        with db.conn:
            db.table("runs").update(run_id, {"state": "interrupted", "error": repr(exc)[:500]})
        raise
    with db.conn:
        db.table("runs").update(run_id, {"state": "done", "_finished_at": utcnow()})
    return run_summary(db, run_id)


def _do_move(db: sqlite_utils.Database, row: dict) -> None:
    _set(db, row["id"], state="moving")
    try:
        move_file(row["source"], row["destination"], row["sha256"], f"j{row['id']}")
    except OSError as exc:
        log.warning("not moved: %s: %s", row["source"], exc)
        _set(db, row["id"], state="failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
        return
    _finish_row(db, row, "done", forward=True)


# ---- recovery ----------------------------------------------------------------------------------

def _same(path: str, row: dict) -> bool:
    try:
        return os.path.getsize(path) == row["size"] and sha256_file(path) == row["sha256"]
    except OSError:
        return False


def _resolve_row(db: sqlite_utils.Database, row: dict, rollback: bool) -> str:
    """Bring one in-flight journal row to a final state by looking at the disk."""
    src, dst = row["source"], row["destination"]
    undoing = row["state"] == "undoing"
    part = _part_path(dst, f"j{row['id']}") if dst else None
    for leftover in (part, _part_path(src, f"j{row['id']}")):
        if leftover and os.path.exists(leftover):
            os.unlink(leftover)   # our own half-written copy
    src_here, dst_here = os.path.lexists(src), bool(dst) and os.path.lexists(dst)
    if src_here and dst_here:
        # A cross-device copy finished but its source was not unlinked (or the reverse on undo).
        if _same(src, row) and _same(dst, row):
            keep_src = rollback or undoing
            os.unlink(dst if keep_src else src)
            src_here, dst_here = keep_src, not keep_src
        else:
            _set(db, row["id"], state="failed", error="both source and destination exist and differ; check by hand")
            return "failed"
    if undoing:
        if src_here:
            _finish_row(db, row, "undone", forward=False)
            return "undone"
        _set(db, row["id"], state="done", error="undo interrupted before the move; run undo again")
        return "done"
    if dst_here and not src_here:
        if rollback:
            if not _same(dst, row):
                _set(db, row["id"], state="failed", error="moved file changed; not rolled back")
                return "failed"
            _finish_row(db, row, "done", forward=True)
            move_file(dst, src, row["sha256"], f"j{row['id']}")
            _finish_row(db, row, "rolled_back", forward=False)
            return "rolled_back"
        _finish_row(db, row, "done", forward=True)
        return "done"
    if src_here:
        if rollback:
            _set(db, row["id"], state="rolled_back")
            return "rolled_back"
        _do_move(db, {**row, "state": "planned"})
        return "done"
    _set(db, row["id"], state="failed", error="file found neither at source nor at destination")
    return "failed"


def recover_runs(db: sqlite_utils.Database, rollback: bool = False) -> list[dict[str, Any]]:
    """Finish (or with ``rollback`` undo) every run a crash or an error left unfinished."""
    if not db.table("runs").exists():
        return []
    out = []
    runs = list(db.query("select * from runs where state in ('running', 'interrupted') order by _started_at"))
    for run in runs:
        if run["state"] == "running" and _process_alive(run):
            continue
        log.warning("recovering run %s (%s)", run["id"], "rollback" if rollback else "finish")
        rows = list(db.query(
            "select * from journal where run_id = ? and state in ('planned', 'moving', 'undoing') order by seq",
            [run["id"]]))
        for row in rows:
            _resolve_row(db, row, rollback)
        if rollback:
            for row in db.query("select * from journal where run_id = ? and state = 'done' order by seq desc",
                                [run["id"]]):
                _undo_row(db, row)
        state = "rolled_back" if rollback else "done"
        with db.conn:
            db.table("runs").update(run["id"], {"state": state, "_finished_at": utcnow()})
        out.append(run_summary(db, run["id"]))
    return out


# ---- undo --------------------------------------------------------------------------------------

def _undo_row(db: sqlite_utils.Database, row: dict) -> str | None:
    """Move one file back; returns None when done, else the reason it was refused."""
    src, dst = row["source"], row["destination"]
    if not os.path.lexists(dst):
        reason = "file is no longer at its destination"
    elif os.path.getsize(dst) != row["size"] or sha256_file(dst) != row["sha256"]:
        reason = "file changed since it was moved (size or SHA256 differ)"
    elif os.path.lexists(src):
        reason = "its original place is taken by another file"
    else:
        _set(db, row["id"], state="undoing", error=None)
        try:
            move_file(dst, src, row["sha256"], f"j{row['id']}")
        except OSError as exc:
            reason = f"move back failed: {exc.strerror or exc}"
        else:
            _finish_row(db, row, "undone", forward=False)
            return None
    log.warning("undo refused for %s: %s", dst, reason)
    _set(db, row["id"], state="undo_refused", error=reason)
    return reason


def _prune_empty_dirs(folders: Iterable[str], root: str) -> None:
    root = os.path.abspath(root)
    for folder in sorted(set(folders), key=len, reverse=True):
        current = os.path.abspath(folder)
        while current.startswith(root + os.sep):
            try:
                os.rmdir(current)   # only succeeds when empty
            except OSError:
                break
            current = os.path.dirname(current)


def undo_run(db: sqlite_utils.Database, run_id: str | None = None) -> dict[str, Any]:
    """Move a run's files back; refuses file by file. Default: the latest run not fully undone."""
    if not db.table("runs").exists():
        raise LookupError("no sort run recorded in this library")
    recover_runs(db)
    if run_id is None:
        found = list(db.query("select id from runs where state in ('done', 'partially_undone') "
                              "order by _started_at desc, rowid desc limit 1"))
        if not found:
            raise LookupError("no run left to undo")
        run_id = found[0]["id"]
    run = next(iter(db.query("select * from runs where id = ?", [run_id])), None)
    if run is None:
        raise LookupError(f"no run {run_id}")
    rows = list(db.query("select * from journal where run_id = ? and state in ('done', 'undo_refused') "
                         "order by seq desc", [run_id]))
    refused = []
    for row in rows:
        reason = _undo_row(db, row)
        if reason:
            refused.append({"source": row["source"], "destination": row["destination"], "reason": reason})
    _prune_empty_dirs((os.path.dirname(r["destination"]) for r in rows), run["dest"])
    with db.conn:
        db.table("runs").update(run_id, {"state": "partially_undone" if refused else "undone",
                                         "_undone_at": utcnow()})
    summary = run_summary(db, run_id)
    summary["refused"] = refused
    return summary


# ---- listing -----------------------------------------------------------------------------------

def run_summary(db: sqlite_utils.Database, run_id: str) -> dict[str, Any]:
    run = next(iter(db.query("select * from runs where id = ?", [run_id])))
    counts = {r["state"]: r["n"] for r in db.query(
        "select state, count(*) as n from journal where run_id = ? group by state", [run_id])}
    return {"run_id": run["id"], "state": run["state"], "dest": run["dest"],
            "started_at": run["_started_at"], "finished_at": run["_finished_at"],
            "undone_at": run["_undone_at"], "moves": run["moves"], "ignored": run["ignored"],
            "journal": counts}


def list_runs(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    if not db.table("runs").exists():
        return []
    return [run_summary(db, r["id"]) for r in
            db.query("select id from runs order by _started_at desc, rowid desc")]
