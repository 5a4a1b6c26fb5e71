"""library.sqlite: its tables as data, one section per area, applied by ``ensure_library``.

library.sqlite holds the journal of moves, the one thing that cannot be rebuilt, so it is never
recreated: a new column or table is added here and ``ensure_library`` migrates old files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlite_utils

from mirror.library_view import ensure_views
from mirror.schema import apply_schema, check_database, check_database_file, mark_database

# ---- scan (files, hashes, model info) ----------------------------------------
SCAN_TABLES: dict[str, dict[str, Any]] = {
    # One row per file found under a scanned root. Hashes are upper-case hex (Civitai's form) or
    # NULL: all of them for models, sha256 only for media, none for sidecars/other. `fingerprint`
    # (size + sampled head/middle/tail) and (device, inode) let a moved file keep its hashes.
    # `path` is readable text; `path_bytes` holds the exact name only when it is not UTF-8
    # (matcher.fsnames says why and how to read the two).
    "files": {
        "columns": {
            "id": int, "path": str, "path_bytes": bytes, "root": str, "size": int, "mtime_ns": int, "device": int, "inode": int,
            "kind": str, "format": str,
            "sha256": str, "autov1": str, "autov2": str, "autov3": str, "autov3_full": str, "crc32": str,
            "blake3": str, "autov1_a1111": str, "sha256_source": str, "fingerprint": str,
            "model_type": str, "base_model": str, "width": int, "height": int,
            "error": str, "missing": int,
            "_first_seen": str, "_last_seen": str, "_hashed_at": str,
        },
        "pk": "id",
        "defaults": {"missing": 0},
        "indexes": [
            {"columns": ["path"], "unique": True},
            ["device", "inode"], ["size", "fingerprint"], ["sha256"], ["autov2"], ["autov3"],
            ["autov1"], ["crc32"], ["blake3"], ["kind"], ["root"],
        ],
    },
    # Safetensors header facts per model file (raw __metadata__ JSON kept whole).
    "model_info": {
        "columns": {
            "file_id": int, "tensor_count": int, "metadata_json": str,
            "network_module": str, "network_dim": str, "network_alpha": str, "network_args": str,
            "conv_dim": str, "conv_alpha": str, "algo": str, "dora_wd": str,
            "output_name": str, "base_model_version": str, "sd_model_name": str, "training_comment": str,
            "modelspec": str, "modelspec_architecture": str, "modelspec_title": str,
            "tag_count": int, "top_tags": str,
            "sshs_model_hash": str, "sshs_status": str, "facts": str,
        },
        "pk": "file_id",
        "foreign_keys": [("file_id", "files", "id")],
    },
}

# ---- media metadata (generations, lora_usages, resources, media info) --------
MEDIA_TABLES: dict[str, dict[str, Any]] = {
    # One row per image/video with generation metadata (the spec §9 "models" table, named for what it holds).
    # seed is INTEGER when it fits 64 bits; seed_text always keeps it exact.
    "generations": {
        "columns": {
            "file_id": int, "generation_tool": str, "metadata_source": str,
            "model_name": str, "model_hash_short": str, "steps": int, "sampler": str, "scheduler": str,
            "cfg_scale": float, "seed": int, "seed_text": str, "subseed": int, "subseed_strength": float,
            "clip_skip": int, "denoising_strength": float, "width": int, "height": int, "size_raw": str,
            "hires_upscaler": str, "hires_steps": int, "hires_denoising": float, "hires_upscale": float,
            "vae": str, "vae_hash": str, "refiner_model": str, "refiner_switch_at": float, "tiling": str,
            "face_restoration": str, "version_tag": str, "generation_timestamp": str,
            "positive_raw": str, "negative_raw": str, "positive_clean": str, "negative_clean": str,
            "prompt_truncated": int, "params_json": str, "lora_count": int, "metadata_hash": str,
            "_extracted_at": str,
        },
        "pk": "file_id",
        "foreign_keys": [("file_id", "files", "id")],
        "indexes": [["generation_tool"], ["model_name"], ["model_hash_short"], ["seed"], ["metadata_hash"]],
        "fts": ["positive_clean", "negative_clean"],
    },
    # LoRA tags/loaders used by an image, in prompt order.
    "lora_usages": {
        "columns": {
            "id": int, "file_id": int, "position": int, "name": str, "weight": float, "weight2": float,
            "context": str, "kind": str,
        },
        "pk": "id",
        "foreign_keys": [("file_id", "files", "id")],
        "indexes": [["file_id", "position"], ["name"]],
    },
    # Every resource an image references (checkpoint, lora, embedding, vae, ...) with its hash for the matcher.
    "resources": {
        "columns": {
            "id": int, "file_id": int, "position": int, "kind": str, "name": str, "hash": str,
            "hash_kind": str, "weight": float, "version_id": int,
        },
        "pk": "id",
        "foreign_keys": [("file_id", "files", "id")],
        "indexes": [["file_id", "position"], ["hash"], ["name"], ["version_id"]],
    },
    # Per media file: blurhash, small WebP thumbnail, EXIF facts, extraction error, and the change stamp.
    "media_info": {
        "columns": {
            "file_id": int, "format": str, "image_width": int, "image_height": int, "has_metadata": int,
            "blurhash": str, "thumbnail": bytes, "exif_make": str, "exif_model": str, "exif_lens": str,
            "exif_exposure": str, "exif_f_number": float, "exif_iso": int, "exif_focal_length": float,
            "exif_datetime_original": str, "exif_software": str, "exif_gps_present": int,
            "exif_gps_latitude": float, "exif_gps_longitude": float, "exif_orientation": int,
            "sidecar_path": str, "error": str, "_source_stamp": str, "_extracted_at": str,
        },
        "pk": "file_id",
        "foreign_keys": [("file_id", "files", "id")],
        "indexes": [["blurhash"], ["has_metadata"]],
    },
}

# ---- match (matches, pins, model_enrichment) ---------------------------------
MATCH_TABLES: dict[str, dict[str, Any]] = {
    # One row per local file (model or media): the Civitai version it resolves to.
    # suggestions/alternates are JSON arrays; version_id is NULL unless a hash, a resource or a pin says so.
    "matches": {
        "columns": {
            "file_id": int, "version_id": int, "model_id": int, "civitai_file_id": int,
            "hash_type": str, "confidence": float, "reason": str,
            "model_name": str, "version_name": str, "model_type": str, "base_model": str,
            "pinned": int, "suggestions": str, "alternates": str, "civitai_image_id": int,
            "_matched_at": str,
        },
        "pk": "file_id",
        "defaults": {"pinned": 0},
        "indexes": [["version_id"], ["model_id"]],
    },
    # One row per resources row (an image's checkpoint, LoRA, embedding, ...), resolved to a
    # Civitai version and to the local model file that holds it.
    "resource_matches": {
        "columns": {
            "resource_id": int, "file_id": int, "version_id": int, "model_id": int,
            "local_file_id": int, "hash_type": str, "confidence": float, "reason": str,
            "model_name": str, "version_name": str, "model_type": str, "base_model": str,
            "_matched_at": str,
        },
        "pk": "resource_id",
        "indexes": [["file_id"], ["local_file_id"], ["version_id"]],
    },
    # Manual matches (`civitai-mirror pin`); found again by sha256 when a file moved.
    "pins": {
        "columns": {"file_id": int, "path": str, "sha256": str, "version_id": int, "_pinned_at": str},
        "pk": "file_id",
        "indexes": [["sha256"]],
    },
    # Audit of every lookup per model file and source (mirror, api).
    "model_enrichment": {
        "columns": {
            "file_id": int, "source": str, "hash_type": str, "lookup_status": str,
            "display_hash": str, "source_url": str, "enriched_at": str, "payload_json": str,
        },
        "pk": ("file_id", "source"),
        "indexes": [["lookup_status"]],
    },
    # config.ini [derived] fields, evaluated by `match` after enrichment: one row per file and field.
    # value is declared BLOB (no type affinity) so it keeps its type: integer (true/false as 1/0),
    # real, text, JSON text for lists; NULL when the expression gave null. error is set only with
    # `match --debug` (then value is NULL); without it a failing field has no row.
    "derived_fields": {
        "columns": {"file_id": int, "name": str, "value": bytes, "error": str, "_updated_at": str},
        "pk": ("file_id", "name"),
        "indexes": [["name", "value"]],
    },
}

# ---- sort (runs, journal) ----------------------------------------------------
SORT_TABLES: dict[str, dict[str, Any]] = {
    # One row per `sort` run (and its undo). state: running | done | interrupted | rolled_back |
    # undoing | undone | partially_undone. pid/host: the process working on it now. created_dirs:
    # JSON list of the folders the run created (undo removes those that are empty again).
    "runs": {
        "columns": {"id": str, "dest": str, "state": str, "moves": int, "ignored": int,
                    "plan_id": int, "_started_at": str, "_finished_at": str, "_undone_at": str,
                    "error": str, "pid": int, "host": str, "created_dirs": str},
        "pk": "id",
        "indexes": [["state"]],
    },
    # Every move, written BEFORE it happens. state: planned -> moving -> done, or failed;
    # undo: done -> undoing -> undone, or undo_refused (error says why); recovery: rolled_back.
    # Files left where they are get one row with state 'ignored' and no destination.
    "journal": {
        "columns": {"id": int, "run_id": str, "seq": int, "file_id": int, "source": str, "source_bytes": bytes,
                    "destination": str, "size": int, "sha256": str, "state": str, "role": str,
                    "reason": str, "error": str, "_updated_at": str},
        "pk": "id",
        "foreign_keys": [("run_id", "runs", "id")],
        "indexes": [["run_id", "seq"], ["state"], ["file_id"]],
    },
    # Plans as computed (dry-run with --save-plan, or the plan a run applied), JSON.
    "plans": {
        "columns": {"id": int, "dest": str, "plan_json": str, "summary_json": str,
                    "run_id": str, "_created_at": str},
        "pk": "id",
    },
}

LIBRARY_SCHEMA: dict[str, dict[str, Any]] = {
    **SCAN_TABLES, **MEDIA_TABLES, **MATCH_TABLES, **SORT_TABLES,
}


def open_library(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) library.sqlite with WAL and the current schema.

    Raises ``mirror.schema.WrongDatabase`` for a mirror or another program's file, before writing."""
    check_database_file(path, "library")  # before WAL: that alone would change a mirror's file
    db = sqlite_utils.Database(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    ensure_library(db)
    return db


def ensure_library(db: sqlite_utils.Database) -> None:
    check_database(db.conn, "library")
    apply_schema(db, LIBRARY_SCHEMA)
    mark_database(db.conn, "library")
    ensure_views(db)  # the SQL views `serve` shows (file_overview, ...)
