"""``dfsn``: pack, unpack, inspect, edit and verify DFSN containers (matcher.dfsn)."""
from __future__ import annotations

import json

import click

from civitai_mirror.options import json_option
from matcher.dfsn import DfsnError, pack, read_header, set_meta, unpack, verify


def _meta_from_options(sets, meta_file) -> dict:
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
    header = _dfsn_call(unpack, container, out, verify=not no_verify)
    click.echo(f"{out}: {header['model_size']} bytes, SHA256 {header['sha256']}")


@dfsn.command(name="info")
@click.argument("container", type=click.Path(exists=True, dir_okay=False))
@json_option("Print the header and metadata as one JSON object.")
def dfsn_info(container, as_json) -> None:
    """Show a DFSN header and its metadata (the SHA256 is as stored, not verified).

    \b
    Example:
        civitai-mirror dfsn info lora.dfsn --json
    """
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
    metadata = _meta_from_options(sets, meta_file) if meta_file else {
        **_dfsn_call(read_header, container)["metadata"], **_meta_from_options(sets, None)}
    for key in unset:
        metadata.pop(key, None)
    header = _dfsn_call(set_meta, container, metadata)
    click.echo(f"{container}: metadata has {len(header['metadata'])} fields")


@dfsn.command(name="verify")
@click.argument("containers", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option("One JSON object per file.")
def dfsn_verify(containers, as_json) -> None:
    """Re-hash the model inside each CONTAINER and compare with the header's SHA256.

    \b
    Example:
        civitai-mirror dfsn verify lora.dfsn
    """
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
