"""The sorter's plan: where every file of the library goes. Pure: it moves nothing.

``plan_moves(db, dest, config) -> Plan`` reads library.sqlite (``files``, ``matches``,
``resources``, ``resource_matches``) and decides where every file goes; it touches no file
(it only looks whether a destination name is taken). ``matcher.journal.apply_plan`` carries a plan out.

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
4. **Media matched to models** go to the folder of the *first LoRA (or LyCORIS, LoCon, DoRA: any
   of ``LORA_KINDS``) they use, in resource order, that is held locally and sorted* (``resources``
   by ``position`` joined to ``resource_matches.local_file_id``); else to the folder of their
   checkpoint when it is held locally and sorted; else to the folder their own confident
   ``matches`` row (the checkpoint's Civitai version) names.
5. **Duplicates.** A media file (or model) whose full SHA256 equals a file already in, or already
   planned into, its destination folder goes to ``DEST/duplicates/media/<type folder>/``
   (``duplicates/models/...`` for models). Never decided by name; but of two equal files the one
   whose name has no copy marker (``a (copy).png``, ``a - Copy.png``, ``Copy of a.png``, ``a (1).png``)
   is placed first, so the copy is the one that goes to ``duplicates/``.
6. **Everything else stays where it is** and is recorded as ignored, with the reason.
7. **Never overwrite.** A taken name gets a counter: ``name (1).ext`` (sidecars get the same
   counter as their file).
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import sqlite_utils

from crawler.clock import utc_now
from matcher.config import DEFAULT_TYPE_FOLDERS, model_type_key, parse_bool, parse_model_type_folders
from matcher.fsnames import row_path
from matcher.models import SIDECAR_SUFFIXES
from matcher.paths import base_model_folder, has_copy_marker, safe_name, split_suffix, with_counter
from mirror.library_view import LORA_KINDS

#: A match below this confidence (and not pinned) never sorts a file.
MIN_CONFIDENCE = 0.9


# ---- config ------------------------------------------------------------------------------------

def _cfg(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def type_folders(config: Any = None) -> dict[str, str]:
    """Canonical type key -> folder name: the defaults with the config's ``model_type_folders`` applied.

    ``config`` is a ``matcher.config.Config`` or a dict; ``model_type_folders`` may be a dict or
    any text ``matcher.config.parse_model_type_folders`` reads.
    """
    return {**DEFAULT_TYPE_FOLDERS, **parse_model_type_folders(_cfg(config, "model_type_folders"))}


def type_key(*candidates: str | None) -> str:
    """The first candidate type (Civitai's, then the scan's) that maps onto a type key."""
    for value in candidates:
        key = model_type_key(value)
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
    created_at: str = field(default_factory=utc_now)

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
        """A plan written by ``to_json``; ``PlanError`` (one line) for anything else."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise PlanError(f"not JSON: {str(exc)[:200]}") from None
        if not isinstance(data, dict):
            raise PlanError(f"a plan is a JSON object with 'dest' and 'moves', not {type(data).__name__}")
        dest = data.get("dest")
        if not isinstance(dest, str) or not os.path.isabs(dest):
            raise PlanError("'dest' must be an absolute folder path")
        moves = [_record(Move, m, f"moves[{i}]", ("source", "destination"))
                 for i, m in enumerate(_list(data, "moves"))]
        for i, move in enumerate(moves):
            if not os.path.isabs(move.source) or not _inside(move.destination, dest):
                raise PlanError(f"moves[{i}]: source must be absolute and destination inside {dest}")
        return cls(dest=dest, created_at=str(data.get("created_at") or utc_now()),
                   in_place=data.get("in_place") if isinstance(data.get("in_place"), int) else 0,
                   moves=moves,
                   ignored=[_record(Ignored, m, f"ignored[{i}]", ("path",))
                            for i, m in enumerate(_list(data, "ignored"))])


class PlanError(ValueError):
    """A plan file that is not a plan (the message is one line)."""


def _list(data: dict, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise PlanError(f"'{key}' must be a list, not {type(value).__name__}")
    return value


def _record(kind: type, item: Any, where: str, required: tuple[str, ...]) -> Any:
    if not isinstance(item, dict):
        raise PlanError(f"{where} must be an object, not {type(item).__name__}")
    fields = kind.__dataclass_fields__
    values = {k: v for k, v in item.items() if k in fields and v is not None}
    for key, spec in fields.items():
        value = values.get(key)
        wanted = (str,) if spec.type.startswith("str") else (int,) if spec.type.startswith("int") else ()
        if (key in required and not value) or (value is not None and wanted and (
                not isinstance(value, wanted) or isinstance(value, bool))):
            raise PlanError(f"{where}.{key}: expected {'a non-empty ' if key in required else ''}"
                            f"{wanted[0].__name__ if wanted else 'value'}, got {json.dumps(value)[:60]}")
    return kind(**values)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return os.path.isabs(path) and path.startswith(folder.rstrip(os.sep) + os.sep)


# ---- reading library.sqlite --------------------------------------------------------------------

def _has_suggestions(match: dict | None) -> bool:
    """Whether a ``matches`` row holds at least one suggestion (stored as JSON text, often ``'[]'``)."""
    value = (match or {}).get("suggestions")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return False
    return bool(value) and isinstance(value, list)

def usable_match(row: dict | None) -> bool:
    """True when a ``matches`` row may sort a file: a version, and pinned or confident enough."""
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
        use_type = _cfg(config, "use_model_type_subfolders")
        self.use_type = True if use_type is None else (
            use_type if isinstance(use_type, bool) else parse_bool(use_type))
        files = [f for f in db.query("select * from files") if not f.get("missing")]
        files.sort(key=lambda f: f["path"])
        self.files = {f["id"]: f for f in files}
        self.by_dir: dict[str, list[dict]] = defaultdict(list)
        for f in files:
            self.by_dir[os.path.dirname(f["path"])].append(f)
        self.by_path = {f["path"]: f for f in files}
        self.matches = {m["file_id"]: m for m in db.query("select * from matches")}
        rmatches = {r["resource_id"]: r for r in db.query("select * from resource_matches")}
        self.resources: dict[int, list[tuple[dict, dict | None]]] = defaultdict(list)
        for res in sorted(db.query("select * from resources"),
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
        stem, ext = split_suffix(name)
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
        stem, ext = split_suffix(name)
        members = [(owner, None)] + unit.companions
        counter = 0
        while True:
            cstem = with_counter(stem, counter, suffix_len=0)
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
                source=row_path(member), destination=path, file_id=member["id"],
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
        # Originals before copies: of two equal files the first placed stays, the other is a duplicate.
        files = sorted(self.files.values(), key=lambda f: has_copy_marker(os.path.basename(f["path"])))
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
            if usable_match(match):
                folder, key = self.model_folder(match, unit.owner)
                why = "pinned match" if match.get("pinned") else \
                    f"matched by {match.get('hash_type') or 'hash'}"
                self.place(unit, folder, key, f"{why}: {match.get('model_name')} (version {match.get('version_id')})")
            else:
                reason = "no confident match" + (" (only a suggestion)" if _has_suggestions(match) else "")
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
        if usable_match(match):
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
