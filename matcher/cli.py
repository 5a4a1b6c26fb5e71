"""Command line for the matcher: thin wrappers over the matcher modules.

Sections, one per area (keep edits inside your own section):
scan/hash/dfsn, extract/inspect, match/pin/unpin, sort/undo/runs/legacy.
"""
from __future__ import annotations

import click

from matcher.config import config_option

# ---- scan / hash / dfsn ------------------------------------------------------

def _setup_logging(verbose: bool) -> None:
    import logging
    import sys

    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(message)s")
    root.setLevel(min(root.level, level) if root.handlers and verbose else level)


def _byte_progress(description: str):
    """A rich progress bar on stderr with bytes/s and ETA, or a no-op when stderr is not a terminal."""
    import contextlib
    import sys

    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn(description), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(description, total=None)

            def update(advance: int = 0, total: int | None = None) -> None:
                if total is not None:
                    progress.update(task, total=total)
                if advance:
                    progress.advance(task, advance)
            yield update

    return bar()


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@click.command(name="scan")
@click.argument("directories", nargs=-1, type=click.Path(file_okay=False))
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="library.sqlite to write (default: config database_path, else library.sqlite).")
@click.option("--force-rescan", is_flag=True, help="Hash every file again, ignoring the cache.")
@click.option("--max-file-size", metavar="BYTES",
              help="Record but do not hash larger files (e.g. 10GiB; default: config, else 10 GiB).")
@click.option("--one-reader", is_flag=True, help="Hash one file at a time (spinning disks, NAS).")
@click.option("--workers", type=click.IntRange(min=1), help="Files hashed at once (default: CPU cores).")
@click.option("--no-extract", is_flag=True, help="Do not extract image metadata after the scan.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@config_option
@click.option("--verbose", "-v", is_flag=True, default=None, help="Log every move, skip and error.")
def scan(directories, db_path, force_rescan, max_file_size, one_reader, workers, no_extract, as_json,
         config_path, verbose) -> None:
    """Walk DIRECTORIES into library.sqlite: every file, its kind, and Civitai's hashes.

    Model files get SHA256, AutoV1, AutoV2, AutoV3, CRC32 and BLAKE3 in one read pass plus their
    type and base model; media get SHA256 and size. Unchanged files are not read again, and moved
    or renamed files keep their hashes. With no DIRECTORIES, config.ini's source_directory is used.

    \b
    Example:
        civitai-mirror scan ~/models ~/outputs --db library.sqlite
        civitai-mirror scan /mnt/nas/models --one-reader --json
    """
    import json
    import logging
    import os

    from matcher.config import load_config, parse_size, resolve
    from matcher.scan import scan_library
    from matcher.schema import open_library

    config = load_config(config_path)
    _setup_logging(bool(resolve(verbose, config.verbose)))
    log = logging.getLogger("matcher.scan")
    roots = list(directories) or config.source_directory
    if not roots:
        raise click.ClickException("name a directory to scan (or set source_directory in config.ini)")
    for root in roots:
        if not os.path.isdir(root):
            raise click.ClickException(f"{root} is not a directory")
    try:
        limit = parse_size(max_file_size) if max_file_size is not None else config.max_file_size
    except ValueError as exc:
        raise click.ClickException(f"--max-file-size: {exc}") from None
    db_file = resolve(db_path, config.database_path)
    os.makedirs(os.path.dirname(os.path.abspath(db_file)), exist_ok=True)
    db = open_library(db_file)
    with _byte_progress("hashing") as progress:
        summary = scan_library(db, roots, force_rescan=force_rescan, max_file_size=limit,
                               one_reader=one_reader, workers=workers, progress=progress)
    if not no_extract:
        from matcher.media import extract_library

        try:
            summary["extracted"] = extract_library(db, force=force_rescan, progress=None)
        except Exception as exc:  # the scan itself is saved; say what failed
            log.error("image metadata extraction failed: %s", exc)
            summary["extract_error"] = str(exc)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    for move in summary["moves"]:
        click.echo(f"moved: {move['from']} -> {move['to']}")
    for path in summary["growing"]:
        click.echo(f"skipped (still being written): {path}")
    for path in summary["error_files"]:
        row = db.execute("SELECT error FROM files WHERE path = ?", [os.path.abspath(path)]).fetchone()
        click.echo(f"error: {path}: {row[0] if row else 'unknown error'}")
    click.echo(
        f"{summary['files']} files: {summary['new']} new, {summary['changed']} changed, "
        f"{summary['moved']} moved, {summary['unchanged']} unchanged, {summary['missing']} missing; "
        f"hashed {_human_bytes(summary['hashed_bytes'])}; {summary['skipped']} skipped; "
        f"{summary['errors']} errors")


@click.command(name="hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@config_option
@click.option("--verbose", "-v", is_flag=True, default=None, help="Log what is read.")
def hash_files(files, as_json, config_path, verbose) -> None:
    """Print Civitai's hashes of FILES (one read pass each), no database.

    AutoV1 is null under 2 MiB as in Civitai's table; AutoV3 is the 12-hex form Civitai shows,
    AutoV3_full the whole sha256 after the safetensors header.

    \b
    Example:
        civitai-mirror hash model.safetensors
        civitai-mirror hash *.safetensors --json
    """
    import json
    import os

    from matcher.config import load_config, resolve
    from matcher.scan import describe_file

    config = load_config(config_path)
    _setup_logging(bool(resolve(verbose, config.verbose)))
    keys = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "AutoV3_full", "CRC32", "BLAKE3")
    columns = {"SHA256": "sha256", "AutoV1": "autov1", "AutoV2": "autov2", "AutoV3": "autov3",
               "AutoV3_full": "autov3_full", "CRC32": "crc32", "BLAKE3": "blake3"}
    failed = 0
    for path in files:
        try:
            facts = describe_file(os.path.abspath(path), all_hashes=True)
        except OSError as exc:
            failed += 1
            click.echo(f"error: {path}: {exc.strerror or exc}", err=True)
            continue
        record = {"path": os.path.abspath(path), "kind": facts["kind"], "format": facts["format"],
                  "model_type": facts["model_type"], "base_model": facts["base_model"],
                  **{key: facts[columns[key]] for key in keys}, "AutoV1_A1111": facts["autov1_a1111"],
                  "error": facts["error"]}
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
            continue
        what = facts["kind"] + (f" ({facts['format']})" if facts["format"] else "")
        if facts["model_type"]:
            what += f", {facts['model_type']}" + (f", {facts['base_model']}" if facts["base_model"] else "")
        click.echo(f"{path}: {what}")
        for key in keys:
            click.echo(f"  {key:<12} {record[key] or '-'}")
        if facts["error"]:
            click.echo(f"  error        {facts['error']}")
    if failed:
        raise click.ClickException(f"{failed} file(s) could not be read")


def _meta_from_options(sets, meta_file) -> dict:
    import json

    metadata: dict = {}
    if meta_file:
        try:
            with open(meta_file, encoding="utf-8") as handle:
                metadata = json.load(handle)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"--meta-file {meta_file}: {exc}") from None
        if not isinstance(metadata, dict):
            raise click.ClickException(f"--meta-file {meta_file}: must hold a JSON object")
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.ClickException(f"--set {item!r}: use KEY=VALUE")
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    return metadata


def _dfsn_call(function, *args, **kwargs):
    from matcher.dfsn import DfsnError

    try:
        return function(*args, **kwargs)
    except DfsnError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None


@click.group(name="dfsn")
def dfsn() -> None:
    """DFSN containers: a model plus editable JSON metadata (little-endian header, model at 0x200100).

    \b
    Example:
        civitai-mirror dfsn pack model.safetensors model.dfsn --set name="My LoRA"
        civitai-mirror dfsn info model.dfsn
        civitai-mirror dfsn verify model.dfsn
    """


@dfsn.command(name="pack")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A metadata field (VALUE may be JSON).")
@click.option("--meta-file", type=click.Path(dir_okay=False), help="A JSON file with the metadata.")
def dfsn_pack(model, out, sets, meta_file) -> None:
    """Write OUT, a new .dfsn holding MODEL (safetensors or ckpt) and metadata.

    \b
    Example:
        civitai-mirror dfsn pack lora.safetensors lora.dfsn --set trigger=wlop
    """
    from matcher.dfsn import pack

    header = _dfsn_call(pack, model, out, _meta_from_options(sets, meta_file))
    click.echo(f"{out}: {header['type']}, SHA256 {header['sha256']}")


@dfsn.command(name="unpack")
@click.argument("container", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--no-verify", is_flag=True, help="Do not check the model against the header's SHA256.")
def dfsn_unpack(container, out, no_verify) -> None:
    """Write OUT, a new file with the model inside CONTAINER, checked against its SHA256.

    \b
    Example:
        civitai-mirror dfsn unpack lora.dfsn lora.safetensors
    """
    from matcher.dfsn import unpack

    header = _dfsn_call(unpack, container, out, verify=not no_verify)
    click.echo(f"{out}: {header['model_size']} bytes, SHA256 {header['sha256']}")


@dfsn.command(name="info")
@click.argument("container", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the header and metadata as one JSON object.")
def dfsn_info(container, as_json) -> None:
    """Show a DFSN header and its metadata (the SHA256 is as stored, not verified).

    \b
    Example:
        civitai-mirror dfsn info lora.dfsn --json
    """
    import json

    from matcher.dfsn import read_header

    header = _dfsn_call(read_header, container)
    if as_json:
        click.echo(json.dumps(header, ensure_ascii=False))
        return
    click.echo(f"type: {header['type']}\nSHA256 (from header): {header['sha256']}\n"
               f"model: {header['model_size']} bytes at {header['model_offset']:#x}\n"
               f"metadata: {json.dumps(header['metadata'], ensure_ascii=False, indent=2)}")


@dfsn.command(name="set-meta")
@click.argument("container", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set one field (VALUE may be JSON).")
@click.option("--unset", multiple=True, metavar="KEY", help="Remove one field.")
@click.option("--meta-file", type=click.Path(dir_okay=False), help="Replace the metadata with this JSON file.")
def dfsn_set_meta(container, sets, unset, meta_file) -> None:
    """Edit CONTAINER's metadata in place; the model bytes and their hash do not change.

    \b
    Example:
        civitai-mirror dfsn set-meta lora.dfsn --set description="v2, retrained" --unset draft
    """
    from matcher.dfsn import read_header, set_meta

    metadata = _meta_from_options(sets, meta_file) if meta_file else {
        **_dfsn_call(read_header, container)["metadata"], **_meta_from_options(sets, None)}
    for key in unset:
        metadata.pop(key, None)
    header = _dfsn_call(set_meta, container, metadata)
    click.echo(f"{container}: metadata has {len(header['metadata'])} fields")


@dfsn.command(name="verify")
@click.argument("containers", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
def dfsn_verify(containers, as_json) -> None:
    """Re-hash the model inside each CONTAINER and compare with the header's SHA256.

    \b
    Example:
        civitai-mirror dfsn verify lora.dfsn
    """
    import json

    from matcher.dfsn import verify

    bad = 0
    for path in containers:
        result = _dfsn_call(verify, path)
        bad += not result["ok"]
        if as_json:
            click.echo(json.dumps({"path": path, "ok": result["ok"], "sha256": result["sha256"],
                                   "computed_sha256": result["computed_sha256"], **result["hashes"]}))
        else:
            click.echo(f"{path}: {'OK' if result['ok'] else 'MISMATCH'} {result['computed_sha256']}")
    if bad:
        raise click.ClickException(f"{bad} container(s) do not match their header's SHA256")


# ---- extract / inspect -------------------------------------------------------

@click.command(name="extract")
@click.option("--db", "db_path", default="library.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="library.sqlite made by scan")
@click.option("--force", is_flag=True, help="re-read every media file, not only new or changed ones")
@click.option("--keep-gps", is_flag=True, help="store GPS coordinates from EXIF (default: only 'GPS present')")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
def extract(db_path: str, force: bool, keep_gps: bool, as_json: bool) -> None:
    """Read generation metadata of every scanned image into library.sqlite.

    Fills the tables generations, lora_usages, resources and media_info (BlurHash, thumbnail, EXIF facts)
    for files scan found with kind 'media'. Unchanged files are skipped without a write.

    \b
    Example:
        civitai-mirror extract --db library.sqlite
        civitai-mirror extract --db library.sqlite --force --json
    """
    import json
    import os

    from matcher.media import extract_library
    from matcher.schema import open_library

    if not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} not found: run 'civitai-mirror scan DIR --db {db_path}' first")
    db = open_library(db_path)
    with _media_progress("extracting") as progress:
        summary = extract_library(db, force=force, progress=progress, keep_gps=keep_gps)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"{summary['total']} media files: {summary['extracted']} read, {summary['unchanged']} unchanged, "
               f"{summary['with_metadata']} with generation metadata, {summary['no_metadata']} without, "
               f"{summary['errors']} with errors")
    for tool, n in sorted(summary["by_tool"].items(), key=lambda kv: -kv[1]):
        click.echo(f"  {tool}: {n}")


def _media_progress(description: str):
    """A rich progress bar (files) on stderr, or a no-op when stderr is not a terminal."""
    import contextlib
    import sys

    @contextlib.contextmanager
    def bar():
        if not sys.stderr.isatty():
            yield None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as p:
            task = p.add_task(description, total=None)

            def update(done: int, total: int, _path: str) -> None:
                p.update(task, completed=done, total=total)
            yield update
    return bar()


@click.command(name="inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="one JSON object per file, one per line")
@click.option("--keep-gps", is_flag=True, help="include GPS coordinates from EXIF")
def inspect(files: tuple[str, ...], as_json: bool, keep_gps: bool) -> None:
    """Show the generation metadata of images, without any database.

    Prints tool, prompts, parameters, LoRA usages, resources with hashes, BlurHash and EXIF facts.

    \b
    Example:
        civitai-mirror inspect image.png
        civitai-mirror inspect out/*.jpg --json
    """
    import json
    import os

    from matcher.media import extract_comprehensive_metadata

    for path in files:
        if not os.path.isfile(path):
            raise click.ClickException(f"{path} is not a file")
    for path in files:
        rec = extract_comprehensive_metadata(path, keep_gps=keep_gps)
        if as_json:
            click.echo(json.dumps(rec, ensure_ascii=False))
            continue
        click.echo(_format_record(rec))


def _format_record(rec: dict) -> str:
    lines = [f"== {rec['path']} ({rec.get('format') or 'unknown format'}"
             f"{', %sx%s' % (rec['image_width'], rec['image_height']) if rec.get('image_width') else ''})"]
    if rec.get("no_metadata"):
        lines.append("no generation metadata")
    else:
        lines.append(f"tool: {rec.get('generation_tool')}  (from {rec.get('metadata_source')})")
        if rec.get("positive_raw"):
            lines.append(f"prompt: {rec['positive_raw']}")
        if rec.get("negative_raw"):
            lines.append(f"negative: {rec['negative_raw']}")
        shown = ("model_name", "model_hash_short", "seed", "steps", "sampler", "scheduler", "cfg_scale", "width",
                 "height", "clip_skip", "denoising_strength", "hires_upscaler", "vae", "version_tag")
        params = ", ".join(f"{k}: {rec[k]}" for k in shown if rec.get(k) is not None)
        if params:
            lines.append(params)
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

# ---- match / pin / unpin ------------------------------------------------------

def _open_match_dbs(db_path: str, civitai_db: str | None, need_civitai: bool = True):
    import os

    from matcher.schema import open_library

    if not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} does not exist; run `civitai-mirror scan DIR --db {db_path}` first")
    if civitai_db and not os.path.exists(civitai_db):
        if need_civitai:
            raise click.ClickException(
                f"{civitai_db} does not exist; build it with `civitai-mirror build DUMP --db {civitai_db}`")
        civitai_db = None
    return open_library(db_path), civitai_db


@click.command(name="match")
@click.option("--db", "db_path", default="library.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="The library database written by scan.")
@click.option("--civitai-db", default="civitai.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="The mirror built by `civitai-mirror build`.")
@click.option("--online", is_flag=True, help="Look up what the mirror does not know on the live API.")
@click.option("--api-base", multiple=True, envvar="CIVITAI_API_BASE", show_envvar=True,
              help="API base for --online (default https://civitai.com/api/v1).")
@click.option("--dump", "dump_dir", type=click.Path(file_okay=False),
              help="Dump folder --online saves new models into (default: the mirror's dump).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model file and per image.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="config.ini whose [derived] section defines derived fields "
                   "(default: $CIVITAI_MIRROR_CONFIG or ./config.ini).")
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
    import configparser
    import json as _json

    from matcher.config import find_config
    from matcher.derived import DerivedError, load_derived_fields
    from matcher.match import iter_match_records, match_library

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
            click.echo(_json.dumps(record, ensure_ascii=False))
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
@click.argument("version_id", type=int)
@click.option("--db", "db_path", default="library.sqlite", show_default=True, type=click.Path(dir_okay=False))
@click.option("--civitai-db", default="civitai.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="Used only to show the model's name.")
def pin(file: str, version_id: int, db_path: str, civitai_db: str) -> None:
    """Pin FILE to a Civitai version: every later `match` keeps this match.

    \b
    Example:
        civitai-mirror pin models/mystery.safetensors 128713
    """
    from matcher.pins import pin_file

    db, cdb = _open_match_dbs(db_path, civitai_db, need_civitai=False)
    try:
        row = pin_file(db, file, version_id, cdb)
    except LookupError as exc:
        raise click.ClickException(str(exc))
    name = f" ({row['model_name']} / {row['version_name']})" if row.get("model_name") else ""
    click.echo(f"Pinned {file} to version {version_id}{name}")


@click.command(name="unpin")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--db", "db_path", default="library.sqlite", show_default=True, type=click.Path(dir_okay=False))
def unpin(file: str, db_path: str) -> None:
    """Remove the pin on FILE; the next `match` matches it by hash again.

    \b
    Example:
        civitai-mirror unpin models/mystery.safetensors
    """
    from matcher.pins import unpin_file

    db, _ = _open_match_dbs(db_path, None, need_civitai=False)
    try:
        removed = unpin_file(db, file)
    except LookupError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Unpinned {file}" if removed else f"{file} was not pinned")

# ---- sort / undo / runs / legacy ----------------------------------------------

def _sort_settings(config_path: str | None, db_path: str | None, civitai_db: str | None, dest: str | None):
    from matcher.config import load_config, resolve

    config = load_config(config_path)
    return (config, resolve(db_path, config.database_path), resolve(civitai_db, config.civitai_database_path),
            resolve(dest, config.destination_directory))


def _open_sort_db(db_path: str, must_exist: bool = True):
    import os

    from matcher.schema import open_library

    if must_exist and not os.path.exists(db_path):
        raise click.ClickException(f"{db_path} does not exist; run `civitai-mirror scan DIR --db {db_path}` first")
    return open_library(db_path)


def _short(path: str, base: str) -> str:
    import os

    try:
        rel = os.path.relpath(path, base)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _print_plan(plan, show_ignored: bool = False) -> None:
    import os
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    sources = [os.path.dirname(m.source) for m in plan.moves]
    base = os.path.commonpath(sources) if sources else plan.dest
    table = Table(f"Source (in {base})", "→", f"Destination (in {plan.dest})", "Why",
                  title="Sort plan")
    for move in plan.moves:
        table.add_row(_short(move.source, base), "→", _short(move.destination, plan.dest), move.role)
    if plan.moves:
        console.print(table)
    if show_ignored:
        for item in plan.ignored:
            console.print(f"ignored: {item.path} ({item.reason})", markup=False)
    summary = plan.summary()
    reasons = Counter(i.reason.split(":")[0] for i in plan.ignored)
    console.print(f"{summary['moves']} to move ({summary['bytes']:,} bytes), {summary['in_place']} already in place, "
                  f"{summary['ignored']} left in place"
                  + (" (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common(4)) + ")" if reasons else ""),
                  markup=False)


def _apply_with_progress(db, plan):
    import sys

    from rich.progress import Progress

    from matcher.journal import apply_plan

    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("moving", total=len(plan.moves))
        return apply_plan(db, plan, progress=lambda row: bar.advance(task))


def _echo_run(summary: dict, as_json: bool) -> None:
    import json

    if as_json:
        click.echo(json.dumps(summary))
        return
    counts = ", ".join(f"{n} {state}" for state, n in sorted(summary["journal"].items()))
    click.echo(f"run {summary['run_id']}: {summary['state']} ({counts or 'nothing'})")
    for item in summary.get("refused", []):
        click.echo(f"refused: {item['destination']}: {item['reason']}")


@click.command(name="sort")
@click.option("--dest", type=click.Path(file_okay=False), help="Root of the sorted tree (config: destination_directory).")
@click.option("--dry-run", is_flag=True, help="Print the Source → Destination table and a summary; move nothing.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="library.sqlite (config: database_path).")
@click.option("--civitai-db", type=click.Path(dir_okay=False),
              help="civitai.sqlite (config: civitai_database_path); sort reads the matches already stored.")
@config_option
@click.option("--save-plan", type=click.Path(dir_okay=False), help="Write the plan as JSON to this file.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False),
              help="Apply a plan saved earlier with --save-plan instead of computing one.")
@click.option("--resume", is_flag=True, help="Only finish the runs a crash left unfinished.")
@click.option("--rollback", is_flag=True, help="With --resume: put the files of unfinished runs back instead.")
@click.option("--show-ignored", is_flag=True, help="List the files left in place and why.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per planned move (dry-run) or the run summary.")
def sort(dest, dry_run, db_path, civitai_db, config_path, save_plan, plan_file, resume, rollback, show_ignored,
         as_json) -> None:
    """Sort matched models and media into DEST/models/<type>/<base model>/<model name>/.

    Every move is journaled before it happens and can be undone with `civitai-mirror undo`.
    Unmatched files stay where they are. A run interrupted by a crash is finished automatically
    by the next sort or undo (or now with --resume; --resume --rollback puts files back).

    \b
    Example:
        civitai-mirror sort --dest ~/sd/sorted --dry-run
        civitai-mirror sort --dest ~/sd/sorted --db library.sqlite
        civitai-mirror sort --resume
    """
    import json
    from pathlib import Path

    from matcher.journal import recover_runs
    from matcher.plan import Plan, plan_moves

    config, db_path, civitai_db, dest = _sort_settings(config_path, db_path, civitai_db, dest)
    db = _open_sort_db(db_path)
    if resume or rollback:
        for summary in recover_runs(db, rollback=rollback) or []:
            _echo_run(summary, as_json)
        if not as_json:
            click.echo("nothing left to recover" if not db.execute(
                "select count(*) from runs where state in ('running', 'interrupted')").fetchone()[0]
                else "some runs are still running in another process")
        return
    if plan_file:
        plan = Plan.from_json(Path(plan_file).read_text(encoding="utf-8"))
    else:
        if not dest:
            raise click.ClickException("where to? give --dest DIR (or destination_directory in config.ini)")
        plan = plan_moves(db, dest, config)
    if save_plan:
        tmp = Path(str(save_plan) + ".part")
        tmp.write_text(plan.to_json(), encoding="utf-8")
        tmp.replace(save_plan)
    if dry_run:
        if as_json:
            for move in plan.moves:
                click.echo(json.dumps({"source": move.source, "destination": move.destination, "role": move.role,
                                       "reason": move.reason, "state": "planned"}))
            for item in plan.ignored:
                click.echo(json.dumps({"source": item.path, "destination": None, "role": "ignored",
                                       "reason": item.reason, "state": "ignored"}))
        else:
            _print_plan(plan, show_ignored)
        return
    if not as_json:
        _print_plan(plan, show_ignored)
    _echo_run(_apply_with_progress(db, plan), as_json)


@click.command(name="undo")
@click.argument("run_id", required=False)
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="library.sqlite (config: database_path).")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as one JSON object.")
def undo(run_id, db_path, config_path, as_json) -> None:
    """Move a sort run's files back (default: the latest run not yet undone).

    Each file is checked first (size + SHA256 as journaled, old place free); a changed file is
    refused and the rest are restored. Run it again after fixing what was refused.

    \b
    Example:
        civitai-mirror undo
        civitai-mirror undo 20261122T010203Z-1a2b3c --db library.sqlite
    """
    from matcher.journal import undo_run

    _, db_path, _, _ = _sort_settings(config_path, db_path, None, None)
    db = _open_sort_db(db_path)
    try:
        summary = undo_run(db, run_id)
    except LookupError as exc:
        raise click.ClickException(f"{exc} (see `civitai-mirror runs`)") from None
    _echo_run(summary, as_json)
    if summary.get("refused"):
        raise SystemExit(1)


@click.command(name="runs")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="library.sqlite (config: database_path).")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def runs(db_path, config_path, as_json) -> None:
    """List sort runs, newest first, with how many files each moved, undid or refused.

    \b
    Example:
        civitai-mirror runs
        civitai-mirror runs --json --db library.sqlite
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from matcher.journal import list_runs

    _, db_path, _, _ = _sort_settings(config_path, db_path, None, None)
    found = list_runs(_open_sort_db(db_path))
    if as_json:
        for run in found:
            click.echo(json.dumps(run))
        return
    if not found:
        click.echo("no sort runs yet")
        return
    table = Table()
    for name in ("run", "state", "started", "dest", "files"):
        table.add_column(name, no_wrap=name in ("run", "state"))
    for run in found:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(run["journal"].items()))
        table.add_row(run["run_id"], run["state"], run["started_at"], run["dest"], counts)
    Console(highlight=False).print(table)


@click.command(name="legacy")
@click.option("--scan-directory", "scan_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder to scan (repeatable; config: source_directory).")
@click.option("--extract-metadata", is_flag=True, help="Read generation parameters out of the media files.")
@click.option("--process-orphaned", is_flag=True, help="Also sort media not next to a model (by the models they used).")
@click.option("--dry-run", is_flag=True, help="Show what would move; move nothing.")
@click.option("--force-rescan", is_flag=True, help="Hash every file again.")
@click.option("--verbose", is_flag=True, help="More log output.")
@click.option("--dest", type=click.Path(file_okay=False), help="config: destination_directory.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="config: database_path.")
@click.option("--civitai-db", type=click.Path(dir_okay=False), help="config: civitai_database_path.")
@config_option
def legacy(scan_dirs, extract_metadata, process_orphaned, dry_run, force_rescan, verbose, dest, db_path, civitai_db,
           config_path) -> None:
    """file_scanner.py's flags on one command: scan → extract → match → sort.

    Without --process-orphaned only models move (with their sidecars and the media beside them).

    \b
    Example:
        civitai-mirror legacy --scan-directory ~/sd/models --extract-metadata --process-orphaned --dry-run
    """
    import logging
    import os

    from matcher.plan import plan_moves

    config, db_path, civitai_db, dest = _sort_settings(config_path, db_path, civitai_db, dest)
    if verbose or config.verbose:
        logging.basicConfig(level=logging.INFO)
    roots = list(scan_dirs) or config.source_directory
    if not dest:
        raise click.ClickException("where to? give --dest DIR (or destination_directory in config.ini)")

    from matcher.match import match_library
    from matcher.media import extract_library
    from matcher.scan import scan_library

    db = _open_sort_db(db_path, must_exist=bool(not roots))
    if roots:
        for root in roots:
            if not os.path.isdir(root):
                raise click.ClickException(f"{root} is not a folder")
        summary = scan_library(db, roots, force_rescan=force_rescan, max_file_size=config.max_file_size)
        click.echo(f"scan: {summary.get('files', 0)} files, {summary.get('new', 0)} new, "
                   f"{summary.get('errors', 0)} errors")
    if extract_metadata:
        summary = extract_library(db, force=force_rescan)
        click.echo("extract: " + ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int)))
    if os.path.exists(civitai_db):
        summary = match_library(db, civitai_db)
        click.echo(f"match: {summary.get('models_matched', 0)}/{summary.get('models', 0)} models, "
                   f"{summary.get('images_matched', 0)}/{summary.get('images', 0)} images")
    else:
        click.echo(f"match: skipped ({civitai_db} does not exist; build it with `civitai-mirror build`)")
    plan = plan_moves(db, dest, config, include_media=process_orphaned)
    _print_plan(plan)
    if not dry_run:
        _echo_run(_apply_with_progress(db, plan), False)
