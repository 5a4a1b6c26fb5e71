"""Datasette over civitai.sqlite (immutable) and, optionally, library.sqlite (read-only).

``make_datasette`` is what ``civitai-mirror serve`` runs and what the tests use in-process: it loads
``datasette_metadata.yml`` (Datasette 0.65 format), names the databases ``civitai`` and ``library``
whatever their file names, and registers the plugin in mirror.plugin.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
import yaml
from datasette.app import Datasette
from datasette.database import Database
from datasette.plugins import pm

from mirror import plugin

log = logging.getLogger(__name__)

# Shipped inside the package so a wheel serves facets and canned queries; the repository root's
# datasette_metadata.yml is a link to it, for `datasette -m datasette_metadata.yml` users.
METADATA_FILE = Path(__file__).resolve().parent / "datasette_metadata.yml"
# row-library-files.html: the file page of library.sqlite (summary above the raw row).
TEMPLATES = Path(__file__).resolve().parent / "templates"


def load_metadata(path: Path | None = None) -> dict[str, Any]:
    path = path or METADATA_FILE
    if not path.exists():
        log.warning("no %s; serving without table descriptions", path)
        return {"title": "civitai-mirror"}
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def register_plugin() -> None:
    if not pm.is_registered(plugin):
        pm.register(plugin, name="civitai-mirror")


def find_library(db_path: Path, library: str | Path | None) -> Path | None:
    """``--library`` when given, else ``library.sqlite`` beside the mirror database, else None."""
    if library is not None:
        return Path(library)
    beside = Path(db_path).resolve().parent / "library.sqlite"
    return beside if beside.exists() else None


def _columns_of(path: Path) -> dict[str, set[str]]:
    """Tables and views of a SQLite file and their columns, read without writing anything."""
    conn = sqlite3.connect(f"file:{quote(str(path), safe='/')}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
        return {name: {r[1] for r in conn.execute(f"PRAGMA table_xinfo([{name}])")} for name in names}
    except sqlite3.Error as exc:
        log.warning("could not read the schema of %s: %s", path, exc)
        return {}
    finally:
        conn.close()


def prune_table_metadata(meta: dict, database: str, path: Path) -> None:
    """Drop facets, sorts and label columns naming columns an older (or partial) file lacks.

    Datasette answers 400 for a table page whose configured facet column does not exist; a
    library.sqlite written before a column was added must still browse.
    """
    tables = ((meta.get("databases") or {}).get(database) or {}).get("tables") or {}
    if not tables:
        return
    columns = _columns_of(path)
    for name, config in tables.items():
        have = columns.get(name)
        if have is None or not isinstance(config, dict):
            continue
        if "facets" in config:
            config["facets"] = [f for f in config["facets"]
                                if not isinstance(f, str) or f in have]
        for key in ("sort", "sort_desc", "label_column"):
            if key in config and config[key] not in have:
                del config[key]


def make_datasette(db_path: str | Path, library: str | Path | None = None,
                   dump_dir: str | Path | None = None, metadata: dict | None = None):
    """A ready Datasette instance; call ``invoke_startup`` (or use ``.client``) before serving."""
    register_plugin()
    meta = copy.deepcopy(metadata if metadata is not None else load_metadata())
    plugin_config = meta.setdefault("plugins", {}).setdefault("civitai-mirror", {})
    plugin_config["database"] = "civitai"
    if dump_dir is not None:
        plugin_config["dump_dir"] = str(Path(dump_dir).resolve())
    if library is not None:
        prune_table_metadata(meta, "library", Path(library))
    # No suggested facets: Datasette tries every column of every page (50 ms each), seconds on a
    # big library or mirror; the configured facets stay, and any column can still be faceted.
    ds = Datasette([], metadata=meta, settings={"sql_time_limit_ms": 3000, "suggest_facets": False},
                   template_dir=str(TEMPLATES))
    if "_memory" in ds.databases:  # Datasette adds it when started without files
        ds.remove_database("_memory")
    ds.add_database(Database(ds, path=str(Path(db_path).resolve()), is_mutable=False), name="civitai")
    if library is not None:
        ds.add_database(Database(ds, path=str(Path(library).resolve()), is_mutable=True),
                        name="library")
    return ds


def run_server(ds, host: str, port: int) -> None:
    asyncio.run(ds.invoke_startup())
    uvicorn.run(ds.app(), host=host, port=port, log_level="warning", lifespan="on", workers=1)
