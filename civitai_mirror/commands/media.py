"""``extract`` and ``inspect``: generation metadata out of images (matcher.media)."""
from __future__ import annotations

import json
import os
import stat as statmod

import click

from civitai_mirror.options import db_option, json_option, progress_bar
from matcher.fsnames import shown
from matcher.media import extract_files_within_budget, extract_library
from matcher.models import kind_and_format
from matcher.scan import walk
from matcher.schema import open_library


@click.command(name="extract")
@db_option("library.sqlite", "library.sqlite made by scan")
@click.option("--force", is_flag=True, help="re-read every media file, not only new or changed ones")
@click.option("--keep-gps", is_flag=True, help="store GPS coordinates from EXIF (default: only 'GPS present')")
@json_option("print the summary as one JSON object")
def extract(db_path: str, force: bool, keep_gps: bool, as_json: bool) -> None:
    """Read generation metadata of every scanned image into library.sqlite.

    Fills the tables generations, lora_usages, resources and media_info (BlurHash, thumbnail, EXIF facts)
    for files scan found with kind 'media'. Unchanged files are skipped without a write.

    \b
    Example:
        civitai-mirror extract --db library.sqlite
        civitai-mirror extract --db library.sqlite --force --json
    """
    if not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} not found: run 'civitai-mirror scan DIR --db {db_path}' first")
    db = open_library(db_path)
    with progress_bar("extracting") as bar:
        summary = extract_library(db, force=force, keep_gps=keep_gps,
                                  progress=(lambda done, total, _path: bar(completed=done, total=total)) if bar else None)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"{summary['total']} media files: {summary['extracted']} read, {summary['unchanged']} unchanged, "
               f"{summary['with_metadata']} with generation metadata, {summary['no_metadata']} without, "
               f"{summary['errors']} with errors")
    for tool, n in sorted(summary["by_tool"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  {tool}: {n}")


@click.command(name="inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@json_option("one JSON object per file, one per line")
@click.option("--keep-gps", is_flag=True, help="include GPS coordinates from EXIF")
@click.option("--pixels", is_flag=True, help="also decode the pixels: BlurHash, and an error for an image that does not decode")
def inspect(files: tuple[str, ...], as_json: bool, keep_gps: bool, pixels: bool) -> None:
    """Show the generation metadata of images (FILES, or every image and video in a folder), without any database.

    Prints tool, prompts, parameters, the later sampler passes of a ComfyUI graph, LoRA usages, resources
    with hashes and EXIF facts; only the metadata is read unless --pixels asks for the BlurHash too.
    Each file is read within a time and memory budget; a file past it is shown with the error.

    \b
    Example:
        civitai-mirror inspect image.png
        civitai-mirror inspect out/*.jpg --json
        civitai-mirror inspect out/ --pixels
    """
    paths, refused = _media_files(files)
    for rec in extract_files_within_budget(paths, keep_gps=keep_gps, pixels=pixels):
        if as_json:
            click.echo(json.dumps(rec, ensure_ascii=False))
            continue
        click.echo(_format_record(rec))
    if len(refused) == 1:
        raise click.ClickException(f"{refused[0][0]} is not an image or video: {refused[0][1]}")
    if refused:
        raise click.ClickException(f"{len(refused)} files are not images or videos: "
                                   + "; ".join(f"{name} ({what})" for name, what in refused))


def _media_files(args: tuple[str, ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """The images and videos to read (folders walked, in name order), and what each other named file is.

    A path that does not exist, is not a regular file, or is a folder without any image stops the
    command before anything is read."""
    paths: list[str] = []
    refused: list[tuple[str, str]] = []
    for arg in args:
        name = shown(arg)
        if os.path.isdir(arg):
            found = [p for p, _st in walk(os.path.abspath(arg)) if kind_and_format(p)[0] == "media"]
            if not found:
                raise click.ClickException(f"{name} holds no image or video")
            paths.extend(os.path.relpath(p) if not os.path.isabs(arg) else p for p in found)
            continue
        if not os.path.lexists(arg):
            raise click.ClickException(f"{name} does not exist")
        try:
            st = os.stat(arg)
        except OSError as exc:
            raise click.ClickException(f"{name}: {exc.strerror}") from None
        if not statmod.S_ISREG(st.st_mode):
            raise click.ClickException(f"{name} is not a regular file")
        kind, fmt = kind_and_format(arg)
        if kind == "media":
            paths.append(arg)
        else:
            what = {"model": "a model file", "sidecar": "a sidecar"}.get(kind, "a file")
            refused.append((name, what + (f", {fmt}" if fmt else "")))
    return paths, refused


def _format_record(rec: dict) -> str:
    lines = [f"== {shown(rec['path'])} ({rec.get('format') or 'unknown format'}"
             f"{', %sx%s' % (rec['image_width'], rec['image_height']) if rec.get('image_width') else ''})"]
    if rec.get("no_metadata"):
        lines.append("no generation metadata")
    else:
        lines.append(f"tool: {rec.get('generation_tool')}  (from {rec.get('metadata_source')})")
        if rec.get("positive_raw"):
            lines.append(f"prompt: {rec['positive_raw']}")
        if rec.get("negative_raw"):
            lines.append(f"negative: {rec['negative_raw']}")
        fields = ("model_name", "model_hash_short", "seed", "steps", "sampler", "scheduler", "cfg_scale", "width",
                 "height", "clip_skip", "denoising_strength", "hires_upscaler", "vae", "version_tag")
        params = ", ".join(f"{k}: {rec[k]}" for k in fields if rec.get(k) is not None)
        if params:
            lines.append(params)
        for p in rec.get("passes") or []:
            bits = [f"{k}: {p[k]}" for k in ("seed", "steps", "sampler", "scheduler", "cfg_scale", "denoise", "model")
                    if p.get(k) is not None]
            lines.append(f"pass: {p['kind']} ({p['class_type']} {p['node']}" + (", no new noise" if not p["adds_noise"]
                                                                                 else "") + ") " + ", ".join(bits))
        if (rec.get("params") or {}).get("metadata_conflict"):
            lines.append(f"note: {rec['params']['metadata_conflict']}")
        for lora in rec.get("loras") or []:
            lines.append(f"lora: {lora['name']} weight {lora['weight']:g} ({lora['context']})")
        for r in rec.get("resources") or []:
            bits = [r["kind"], r.get("name") or "?"]
            if r.get("hash"):
                bits.append(f"{r['hash_kind'] or 'hash'} {r['hash']}")
            if r.get("weight") is not None:
                bits.append(f"weight {r['weight']:g}")
            if r.get("version_id"):
                bits.append(f"version {r['version_id']}")
            lines.append("resource: " + " ".join(bits))
    if rec.get("blurhash"):
        lines.append(f"blurhash: {rec['blurhash']}")
    ex = rec.get("exif") or {}
    if ex:
        lines.append("exif: " + ", ".join(f"{k}: {v}" for k, v in ex.items()))
    if rec.get("error"):
        lines.append(f"error: {rec['error']}")
    return "\n".join(lines)
