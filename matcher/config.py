"""config.ini for every matcher command (file_scanner's ``[DEFAULT]`` keys); flags override it.

Where it is read from: ``--config PATH``, else ``$CIVITAI_MIRROR_CONFIG``, else ``./config.ini`` when it
exists; no file means the defaults. Keys are read from ``[DEFAULT]`` and from file_scanner's older
``[Paths]``/``[Sorting]``/``[Processing]`` sections. ``resolve(flag, config_value)`` is the override rule.
"""
from __future__ import annotations

import configparser
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import click

from matcher.paths import safe_name
from mirror.library_view import LORA_KINDS

ENV_VAR = "CIVITAI_MIRROR_CONFIG"
DEFAULT_MAX_FILE_SIZE = 10 * 2**30

#: Canonical model type key -> its default folder name (issue 6: one folder per model type).
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

#: Civitai types (ModelType enum) and the scan's ``files.model_type`` values -> canonical type key.
TYPE_KEYS: dict[str, str] = {
    "checkpoint": "checkpoint",
    **{kind: "lora" for kind in LORA_KINDS},
    "textualinversion": "embedding", "embedding": "embedding",
    "hypernetwork": "hypernetwork",
    "controlnet": "controlnet",
    "vae": "vae",
    "upscaler": "upscaler",
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_ITEM_SEP = re.compile(r"[,\n;]")
_PAIR = re.compile(r"([^=:]*)[=:](.*)", re.DOTALL)   # split at the first '=' or ':'


def parse_size(text: str | int) -> int:
    """Bytes from ``10737418240``, ``10GiB``, ``500 MB``, ``2G`` (G = 10^9, GiB = 2^30)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match or (match.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 10737418240, 10GiB, 500MB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def model_type_key(name: Any) -> str | None:
    """The canonical type key of a Civitai or scan type (``LoCon`` -> ``lora``), else None."""
    return TYPE_KEYS.get(str(name).strip().lower().replace(" ", "")) if name else None


def _folder_key(name: Any) -> str:
    """A ``model_type_folders`` key as a type key: any Civitai type, any case, or a plural folder name."""
    key = model_type_key(name) or str(name).strip().lower()
    if key.endswith("s") and key[:-1] in DEFAULT_TYPE_FOLDERS:
        key = key[:-1]
    return key


def parse_model_type_folders(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """Type key -> folder name, from every form ``model_type_folders`` takes.

    Text is a list of folder names, each matched to its type by name (file_scanner's
    ``checkpoint,loras,embedding``; the first name of a type wins), ``type=Folder`` or
    ``type: Folder`` pairs (``lora=LoRA, checkpoint=Stable-diffusion``), separated by commas,
    semicolons or new lines, or a JSON object; a dict holds pairs. Keys are canonical type keys or
    any Civitai type in any case; folder names are made safe. Types not named are not in the result.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            folders: dict[str, str] = {}
            for item in filter(None, (part.strip() for part in _ITEM_SEP.split(text))):
                pair = _PAIR.fullmatch(item)
                if pair:
                    folders[_folder_key(pair[1])] = safe_name(pair[2].strip())
                else:
                    folders.setdefault(_folder_key(item), safe_name(item))
            return folders
    return {_folder_key(key): safe_name(str(folder).strip()) for key, folder in (value or {}).items()}


@dataclass
class Config:
    """Settings shared by scan, extract, match and sort."""

    source_directory: list[str] = field(default_factory=list)
    destination_directory: str | None = None
    database_path: str = "library.sqlite"
    civitai_database_path: str = "civitai.sqlite"
    verbose: bool = False
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    use_model_type_subfolders: bool = True
    model_type_folders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TYPE_FOLDERS))
    path: str | None = None  # the file these came from, if any
    extra: dict[str, str] = field(default_factory=dict)  # other keys, for other parts to read


_PARSERS = {
    "source_directory": lambda v: [p.strip() for p in re.split(r"[,\n;]", v) if p.strip()],
    "destination_directory": lambda v: v.strip() or None,
    "database_path": str.strip,
    "civitai_database_path": str.strip,
    "verbose": parse_bool,
    "max_file_size": parse_size,
    "use_model_type_subfolders": parse_bool,
    "model_type_folders": parse_model_type_folders,
}


def find_config(path: str | Path | None = None) -> Path | None:
    """The config file to read: the flag, else $CIVITAI_MIRROR_CONFIG, else ./config.ini if present."""
    if path:
        if not Path(path).is_file():
            raise click.ClickException(f"config file {path} does not exist")
        return Path(path)
    if os.environ.get(ENV_VAR):
        return find_config(os.environ[ENV_VAR])
    return Path("config.ini") if Path("config.ini").is_file() else None


def load_config(path: str | Path | None = None) -> Config:
    """Read config.ini (see ``find_config``); a bad value is a one-line ``click.ClickException``."""
    found = find_config(path)
    config = Config()
    if found is None:
        return config
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(found, encoding="utf-8")
    except configparser.Error as exc:
        raise click.ClickException(f"{found}: cannot parse: {str(exc).splitlines()[0]}") from None
    values: dict[str, str] = dict(parser.defaults())
    for section in ("Paths", "Sorting", "Processing", "civitai-mirror"):
        if parser.has_section(section):
            values.update({k: v for k, v in parser.items(section)})
    known = {f.name for f in fields(Config)} - {"path", "extra"}
    for key, raw in values.items():
        if key in known:
            try:
                setattr(config, key, _PARSERS[key](raw))
            except ValueError as exc:
                raise click.ClickException(f"{found}: {key}: {exc}") from None
        else:
            config.extra[key] = raw
    base = found.resolve().parent
    for key in ("database_path", "civitai_database_path", "destination_directory"):
        value = getattr(config, key)
        if value:
            setattr(config, key, str(base / os.path.expanduser(value)))
    config.source_directory = [str(base / os.path.expanduser(p)) for p in config.source_directory]
    config.path = str(found)
    return config


def resolve(flag: Any, config_value: Any) -> Any:
    """A flag given on the command line wins over config.ini; ``None`` means "not given"."""
    return config_value if flag is None else flag
