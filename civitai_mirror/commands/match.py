"""``match``, ``pin`` and ``unpin``: the library against the mirror (matcher.match, matcher.pins)."""
from __future__ import annotations

import configparser
import json
import os

import click

from civitai_mirror.options import civitai_db_option, config_option, db_option, json_option
from matcher.config import ENV_VAR, find_config
from matcher.derived import DerivedError, load_derived_fields
from matcher.match import iter_match_records, match_library
from matcher.pins import pin_file, unpin_file
from matcher.schema import open_library


def _open_match_dbs(db_path: str, civitai_db: str | None, need_civitai: bool = True):
    if not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} does not exist; run `civitai-mirror scan DIR --db {db_path}` first")
    if civitai_db and not os.path.exists(civitai_db):
        if need_civitai:
            raise click.ClickException(
                f"{civitai_db} does not exist; build it with `civitai-mirror build DUMP --db {civitai_db}`")
        civitai_db = None
    return open_library(db_path), civitai_db


@click.command(name="match")
@db_option("library.sqlite", "The library database written by scan.")
@civitai_db_option()
@click.option("--online", is_flag=True, help="Look up what the mirror does not know on the live API.")
@click.option("--api-base", multiple=True, envvar="CIVITAI_API_BASE", show_envvar=True,
              help="API base for --online (default https://civitai.com/api/v1).")
@click.option("--dump", "dump_dir", type=click.Path(file_okay=False),
              help="Dump folder --online saves new models into (default: the mirror's dump).")
@json_option("One JSON object per model file and per image.")
@config_option("config.ini whose [derived] section defines derived fields "
               f"(default: ${ENV_VAR} or ./config.ini).")
@click.option("--debug", is_flag=True,
              help="Store an error marker (derived_fields.error) for a derived field that fails.")
def match(db_path: str, civitai_db: str, online: bool, api_base: tuple[str, ...], dump_dir: str | None,
          as_json: bool, config_path: str | None = None, debug: bool = False) -> None:
    """Match model files by hash and images by their resources against the mirror.

    Model files are tried by SHA256, AutoV3, AutoV2, BLAKE3, CRC32 (with size) and AutoV1;
    unmatched files get name/size suggestions only. Images resolve every resource they name
    (Civitai resources, hashes, file names) to a version and to the local file. Pins win.
    Then the [derived] fields of config.ini are evaluated for every file (table derived_fields).

    \b
    Example:
        civitai-mirror match --db library.sqlite --civitai-db civitai.sqlite
        civitai-mirror match --json | jq 'select(.version_id == null) | .path'
        civitai-mirror match --online --dump civitai-meta
        civitai-mirror match --config config.ini --debug
    """
    found = find_config(config_path)
    try:
        fields = load_derived_fields(found)
    except (DerivedError, configparser.Error) as exc:
        raise click.ClickException(f"{found}: [derived]: {str(exc).splitlines()[0]}") from None
    db, cdb = _open_match_dbs(db_path, civitai_db)
    try:
        summary = match_library(db, cdb, online=online, api_base=list(api_base) or None, dump_dir=dump_dir,
                                derived_fields=fields, debug=debug)
    except RuntimeError as exc:  # --online network failures after retries
        raise click.ClickException(str(exc))
    d = summary.get("derived") or {}
    for name, count in (d.get("errors") or {}).items():
        click.echo(f"derived field {name}: failed for {count} file(s), "
                   f"{'error marker stored' if debug else 'nothing stored'}: {d['first_error'][name]}", err=True)
    if as_json:
        for record in iter_match_records(db):
            click.echo(json.dumps(record, ensure_ascii=False))
        return
    s = summary
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["by_hash_type"].items())) or "none"
    click.echo(f"Model files: {s['models']}, matched {s['models_matched']} ({kinds}), "
               f"pinned {s['pinned']}, unmatched with suggestions {s['suggested']}")
    click.echo(f"Images: {s['images']}, matched {s['images_matched']}; resources {s['resources']}, "
               f"resolved {s['resources_resolved']}, held locally {s['resources_local']}; "
               f"orphans {s['orphans']}, near-matched {s['orphans_matched']}")
    if online:
        click.echo(f"Online: looked up {s['online_queried']}, found {s['online_found']}, "
                   f"errors {s['online_errors']}")
    if d.get("fields"):
        click.echo(f"Derived fields: {d['fields']} over {d['files']} files, {d['values']} values, "
                   f"{sum(d['errors'].values())} errors; {d['written']} rows written, {d['removed']} removed")


@click.command(name="pin")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("version_id", type=click.IntRange(min=1))
@db_option("library.sqlite", "The library database written by scan.")
@civitai_db_option(help="Checks that the version exists and shows the model's name.")
def pin(file: str, version_id: int, db_path: str, civitai_db: str) -> None:
    """Pin FILE to a Civitai version: every later `match` keeps this match.

    A version the mirror does not have is refused (without a mirror it cannot be checked).

    \b
    Example:
        civitai-mirror pin models/mystery.safetensors 128713
    """
    db, cdb = _open_match_dbs(db_path, civitai_db, need_civitai=False)
    try:
        row = pin_file(db, file, version_id, cdb)
    except LookupError as exc:
        raise click.ClickException(str(exc))
    name = f" ({row['model_name']} / {row['version_name']})" if row.get("model_name") else \
        "" if cdb else f" (not checked: {civitai_db} does not exist)"
    click.echo(f"Pinned {file} to version {version_id}{name}")


@click.command(name="unpin")
@click.argument("file", type=click.Path(dir_okay=False))
@db_option("library.sqlite", "The library database written by scan.")
def unpin(file: str, db_path: str) -> None:
    """Remove the pin on FILE; the next `match` matches it by hash again.

    \b
    Example:
        civitai-mirror unpin models/mystery.safetensors
    """
    db, _ = _open_match_dbs(db_path, None, need_civitai=False)
    try:
        removed = unpin_file(db, file)
    except LookupError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Unpinned {file}" if removed else f"{file} was not pinned")
