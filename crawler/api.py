"""Civitai's endpoints: URL shapes, response validation, and the fetch functions built on the client.

Parsers here are pure (body in, record out); fetchers take a :class:`crawler.client.CivitaiClient`.
Public entry points other parts use:

* ``await fetch_model(client, model_id)`` -> Response (``data`` is the model dict when ok)
* ``await fetch_models_batch(client, ids)`` -> BatchResult (found models by id, absent ids, failed ids)
* ``await fetch_model_version(client, version_id)`` / ``await fetch_version_by_hash(client, hash)``
* ``await fetch_versions_by_hash(client, hashes)`` -> list of model-version dicts
  (POST /model-versions/by-hash, 100 SHA256 hashes per request)
* ``await fetch_newest_model_id(client)`` -> int | None
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from crawler.client import CivitaiClient, Invalid, NotFound, Response, parse_json_body

log = logging.getLogger(__name__)

BATCH_SIZE = 100
BY_HASH_BATCH = 100
MAX_ID = 2147483647


# -- pure validation -------------------------------------------------------------------------


def is_not_found_body(data: Any) -> bool:
    """dumptool's rule: a body like ``{"error": "No model with id 5"}`` means not found."""
    return isinstance(data, dict) and "id" not in data and isinstance(data.get("error"), str) and (
        "no model" in data["error"].lower() or "not found" in data["error"].lower()
    )


def check_model(data: Any, expected_id: int | None = None) -> dict:
    """Return ``data`` if it is a model object (with ``expected_id`` when given), else raise Invalid.

    Accepts every shape Civitai has used since 2023 (list items and /models/{id} bodies alike);
    only the things a dump depends on are checked: an integer ``id``, a ``name``, a list of
    ``modelVersions``.
    """
    if is_not_found_body(data):
        raise NotFound()
    if not isinstance(data, dict):
        raise Invalid(f"not a model object ({type(data).__name__})")
    model_id = data.get("id")
    if not isinstance(model_id, int) or isinstance(model_id, bool):
        raise Invalid("model object without an integer id")
    if expected_id is not None and model_id != expected_id:
        raise Invalid(f"wrong id {model_id} (asked for {expected_id})")
    if not isinstance(data.get("modelVersions", []), list):
        raise Invalid("modelVersions is not a list")
    return data


def check_model_list(data: Any) -> dict:
    """A ``GET /models`` page: ``{"items": [model...], "metadata": {...}}``."""
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise Invalid("not a model list page")
    for item in data["items"]:
        check_model(item)
    return data


def check_model_version(data: Any, expected_id: int | None = None) -> dict:
    if is_not_found_body(data):
        raise NotFound()
    if not isinstance(data, dict) or not isinstance(data.get("id"), int):
        raise Invalid("not a model-version object")
    if expected_id is not None and data["id"] != expected_id:
        raise Invalid(f"wrong version id {data['id']} (asked for {expected_id})")
    return data


def parse_model(body: bytes | str, expected_id: int | None = None) -> dict:
    """Parse a saved or received model body (bytes or text) into the model dict, or raise Invalid."""
    if isinstance(body, str):
        body = body.encode()
    return check_model(parse_json_body(body), expected_id)


def parse_models(body: bytes | str) -> list[dict]:
    """Models in a body that is either one model or a ``GET /models`` page."""
    if isinstance(body, str):
        body = body.encode()
    data = parse_json_body(body)
    if isinstance(data, dict) and "items" in data:
        return check_model_list(data)["items"]
    return [check_model(data)]


def model_counts(model: dict) -> tuple[int, int, int]:
    """(versions, files, images) of a model dict, tolerant of missing keys."""
    versions = model.get("modelVersions") or []
    files = sum(len(v.get("files") or []) for v in versions if isinstance(v, dict))
    images = sum(len(v.get("images") or []) for v in versions if isinstance(v, dict))
    return len(versions), files, images


def is_worse(old: dict, new: dict) -> str | None:
    """Why ``new`` must not replace ``old`` (the never-clobber rule), or None when it may."""
    old_v, old_f, old_i = model_counts(old)
    new_v, new_f, new_i = model_counts(new)
    if new_v < old_v:
        return f"fewer versions ({new_v} < {old_v})"
    mode = new.get("mode")
    if mode in ("Archived", "TakenDown") and old.get("mode") != mode:
        if new_f < old_f:
            return f"{mode}: files removed ({new_f} < {old_f})"
        if new_i < old_i:
            return f"{mode}: images removed ({new_i} < {old_i})"
    return None


# -- image URLs --------------------------------------------------------------------------------

_IMAGE_PART = re.compile(r"^(?:original=true|width=\d+|[a-z]+=[^/]*)$")


def image_url(url: str, width: int | None) -> str:
    """Civitai image URL with its size part set to ``width=N`` (``None``/0 keeps the URL as given)."""
    if not width:
        return url
    head, sep, name = url.rpartition("/")
    if not sep:
        return url
    base, sep2, part = head.rpartition("/")
    if sep2 and _IMAGE_PART.match(part) and "=" in part:
        return f"{base}/width={width}/{name}"
    return f"{head}/width={width}/{name}"


def image_id_and_ext(image: dict) -> tuple[int | None, str]:
    """The image id (the ``id`` key, else the digits of the URL's file name) and its extension."""
    url = str(image.get("url") or "")
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ext = ext.lower() if re.fullmatch(r"[A-Za-z0-9]{1,5}", ext or "") else ""
    if not ext:
        ext = "mp4" if image.get("type") == "video" else "jpeg"
    image_id = image.get("id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        image_id = int(stem) if stem.isdigit() else None
    return image_id, ext


def model_images(model: dict) -> Iterable[dict]:
    for version in model.get("modelVersions") or []:
        if isinstance(version, dict):
            for image in version.get("images") or []:
                if isinstance(image, dict) and image.get("url"):
                    yield image


# -- fetchers ----------------------------------------------------------------------------------


def fetch_model(client: CivitaiClient, model_id: int) -> Awaitable[Response]:
    """``GET /models/{id}`` on each API base in turn; not found only when every host says 404.
    Use as ``await fetch_model(client, model_id)``.

    The Response's ``host`` is the host that answered; on ``error`` its ``reason`` is the last
    host's reason. With one API base (the usual case, the path of every id of a per-id crawl) this
    returns the client's request coroutine itself: one coroutine frame less to resume per id."""
    def validate(data: Any) -> dict:
        return check_model(data, model_id)

    bases = client.api_bases
    if len(bases) == 1:
        base = bases[0]
        return client.request("GET", client.api_url(base, f"/models/{model_id}"), validate=validate,
                              host=client.hosts[base])
    return _fetch_model_hosts(client, model_id, validate)


async def _fetch_model_hosts(client: CivitaiClient, model_id: int, validate: Callable[[Any], dict]) -> Response:
    last: Response | None = None
    saw_error: Response | None = None
    for base in client.api_bases:
        resp = await client.request("GET", client.api_url(base, f"/models/{model_id}"), validate=validate,
                                    host=client.hosts[base])
        if resp.outcome == "ok":
            return resp
        if resp.outcome == "error":
            saw_error = resp
        last = resp
    if saw_error is not None:
        return saw_error
    assert last is not None
    return last


@dataclass
class BatchResult:
    found: dict[int, tuple[dict, str]] = field(default_factory=dict)  # id -> (model, host)
    absent: list[int] = field(default_factory=list)  # absent from every host's answer
    failed: list[int] = field(default_factory=list)  # some host's batch failed after retries


async def fetch_models_batch(client: CivitaiClient, ids: list[int]) -> BatchResult:
    """``GET /models?ids=...&limit=100&nsfw=true&archived=true`` (up to 100 ids) on each host.

    Ids missing from a host's answer are asked of the next host. Ids whose batch failed on some
    host are returned in ``failed`` (the caller falls back to per-id requests for them)."""
    if len(ids) > BATCH_SIZE:
        raise ValueError(f"at most {BATCH_SIZE} ids per batch")
    result = BatchResult()
    remaining = sorted(set(ids))
    for base in client.api_bases:
        if not remaining:
            break
        params = {
            "ids": ",".join(str(i) for i in remaining),
            "limit": str(BATCH_SIZE),
            "nsfw": "true",
            "archived": "true",
        }
        resp = await client.get_json(f"{base}/models", params=params, validate=check_model_list)
        if resp.outcome != "ok":
            log.warning("batch of %d ids failed on %s: %s", len(remaining), resp.host, resp.reason or resp.status)
            result.failed.extend(remaining)
            return result
        wanted = set(remaining)
        for item in resp.data["items"]:
            if item["id"] in wanted and item["id"] not in result.found:
                result.found[item["id"]] = (item, resp.host)
        remaining = [i for i in remaining if i not in result.found]
    result.absent = remaining
    return result


async def fetch_model_version(client: CivitaiClient, version_id: int) -> Response:
    last = None
    for base in client.api_bases:
        resp = await client.get_json(
            f"{base}/model-versions/{version_id}", validate=lambda d: check_model_version(d, version_id)
        )
        if resp.outcome == "ok":
            return resp
        last = resp if last is None or resp.outcome == "error" else last
    return last


async def fetch_version_by_hash(client: CivitaiClient, hash_value: str) -> Response:
    """``GET /model-versions/by-hash/{hash}`` (any hash type) on each host in turn."""
    last = None
    for base in client.api_bases:
        resp = await client.get_json(f"{base}/model-versions/by-hash/{hash_value.upper()}", validate=check_model_version)
        if resp.outcome == "ok":
            return resp
        last = resp if last is None or resp.outcome == "error" else last
    return last


def _check_version_list(data: Any) -> list:
    if not isinstance(data, list):
        raise Invalid("not a list of model versions")
    for item in data:
        check_model_version(item)
    return data


async def fetch_versions_by_hash(client: CivitaiClient, hashes: Iterable[str]) -> list[dict]:
    """``POST /model-versions/by-hash`` with SHA256 hashes, 100 per request, on the first API base.

    Returns every model-version object Civitai answered (unmatched hashes are simply absent; a
    version may appear once per hash it matched). A batch that still fails after its retries
    raises ``RuntimeError`` naming the reason."""
    unique = list(dict.fromkeys(h.strip().upper() for h in hashes if h and h.strip()))
    out: list[dict] = []
    base = client.api_bases[0]
    for start in range(0, len(unique), BY_HASH_BATCH):
        chunk = unique[start : start + BY_HASH_BATCH]
        resp = await client.request("POST", f"{base}/model-versions/by-hash", json=chunk, validate=_check_version_list)
        if resp.outcome == "notfound":
            continue
        if resp.outcome != "ok":
            raise RuntimeError(f"by-hash lookup failed: {resp.reason or resp.status}")
        out.extend(resp.data)
    return out


async def fetch_newest_model_id(client: CivitaiClient) -> int | None:
    """The highest model id on the first page of ``GET /models?sort=Newest`` across all hosts."""
    top = None
    for base in client.api_bases:
        resp = await client.get_json(
            f"{base}/models",
            params={"sort": "Newest", "limit": str(BATCH_SIZE), "nsfw": "true", "archived": "true"},
            validate=check_model_list,
        )
        if resp.outcome == "ok" and resp.data["items"]:
            best = max(item["id"] for item in resp.data["items"])
            top = best if top is None else max(top, best)
    return top
