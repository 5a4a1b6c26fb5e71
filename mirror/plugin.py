"""Datasette plugin: Civitai-compatible API routes answered from the mirror, and offline previews.

Routes (Civitai's JSON shapes, see mirror.api and mirror.api_list; README.md lists their parameters):

* ``GET /api/v1/models/{id}``; ``GET /api/v1/models`` (filters, sort, page and cursor paging)
* ``GET /api/v1/model-versions/{id}``, ``GET /api/v1/model-versions/mini/{id}``
* ``GET /api/v1/model-versions/by-hash/{hash}`` (any hash type, through mirror.lookup)
* ``POST /api/v1/model-versions/by-hash`` (JSON array of ≤100 SHA256; one answer per matched file)
* ``POST /api/v1/model-versions/by-hash/ids`` (≤10 000 SHA256: ``[{modelVersionId, hash}]``)
* ``GET /api/v1/creators``, ``/tags``, ``/enums``, ``/images`` (an empty page: not crawled)
* any other ``/api/...``: 404 ``{"error": "Not found"}``, JSON like every answer there
* ``GET /-/civitai-images/images/<block>/<file>``: a preview image saved by ``crawl --images``,
  only of the image and video types in ``MEDIA_TYPES`` (the extension came from a URL a stranger
  wrote), with ``X-Content-Type-Options: nosniff``; ``GET /-/civitai-images/library/<file id>``:
  a model's ``<name>.preview.png`` (.jpg, .jpeg, .webp) sidecar the library's scan found, only as
  an image type, the same way (the library overview's thumbnails)
* ``GET /-/changes``: what the latest ``civitai-mirror update`` (or ``?run=N``) found (mirror.changes_page)

Not found is 404 with Civitai's body (``No model with id N`` for models, ``Model not found`` for
versions); bad input is 400 ``{"error": "..."}``.
``civitai-mirror serve`` registers this module; configuration (optional) under
``plugins: civitai-mirror:`` in the metadata: ``database`` (default: the one with ``file_hashes``)
and ``dump_dir`` (default: the dump the database was built from, kept in ``_build_info``).
"""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

import markupsafe
from datasette import hookimpl
from datasette.plugins import pm
from datasette.utils.asgi import Response, asgi_send_file
from datasette.views.base import DatasetteError

from mirror import api, api_list, browse, changes_page, facets, library_model, library_view, model_page

PLUGIN = "civitai-mirror"
_LOCAL_IMAGE = re.compile(r"^images/\d{8}/\d+\.([A-Za-z0-9]+)$")
_LIBRARY_PREVIEW = re.compile(r"^library/(\d+)$")
#: what a saved preview may be served as, by its extension; anything else is not served
MEDIA_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "avif": "image/avif", "mp4": "video/mp4", "webm": "video/webm"}


def _media_type(rel: str) -> str | None:
    match = _LOCAL_IMAGE.match(rel)
    return MEDIA_TYPES.get(match.group(1).lower()) if match else None


def _civitai_db(datasette):
    config = datasette.plugin_config(PLUGIN) or {}
    name = config.get("database")
    if name:
        return datasette.get_database(name)
    if "civitai" in datasette.databases:
        return datasette.get_database("civitai")
    for db in datasette.databases.values():
        if getattr(db, "_civitai_mirror", False):
            return db
    return None


async def _find_db(datasette):
    db = _civitai_db(datasette)
    if db is not None:
        return db
    for db in datasette.databases.values():
        if db.is_memory:
            continue
        if await db.table_exists("file_hashes"):
            db._civitai_mirror = True
            return db
    return None


def _error(message: str, status: int) -> Response:
    # compact like Civitai's own answer: {"error":"Model not found"}
    return Response(json.dumps({"error": message}, separators=(",", ":")), status=status,
                    content_type="application/json; charset=utf-8")


async def _run(datasette, fn):
    db = await _find_db(datasette)
    if db is None:
        return _error("No civitai mirror database is being served", 500)
    try:
        return await db.execute_fn(fn)
    except api.BadRequest as exc:
        return _error(str(exc), 400)


def _base(request) -> str:
    return f"{request.scheme}://{request.host}"


async def _by_id(datasette, request, answer, not_found=lambda object_id: "Model not found"):
    """One object by the id in the URL: 400 for a bad id, Civitai's 404 when the mirror lacks it."""
    try:
        object_id = api.parse_id(request.url_vars["id"])
    except api.BadRequest as exc:
        return _error(str(exc), 400)
    base = _base(request)

    def fn(conn):
        body = answer(conn, object_id, base_url=base)
        if body is None:
            return _error(not_found(object_id), 404)
        return Response.json(body)
    return await _run(datasette, fn)


async def model_view(datasette, request):
    return await _by_id(datasette, request, api.model_response,
                        lambda model_id: f"No model with id {model_id}")


#: list parameters a client may repeat (``types=LORA&types=DoRA``) or comma-separate
_REPEATABLE = ("ids", "types", "baseModels")


def _args(request) -> dict[str, str]:
    return {k: (",".join(request.args.getlist(k)) if k in _REPEATABLE else request.args.get(k))
            for k in request.args.keys()}


def _list_view(answer):
    async def view(datasette, request):
        args, base = _args(request), _base(request)
        return await _run(datasette, lambda conn: Response.json(answer(conn, args, base)))
    return view


models_view = _list_view(api_list.models_list)
creators_view = _list_view(api_list.creators_list)
tags_view = _list_view(api_list.tags_list)
images_view = _list_view(api_list.images_list)


async def enums_view(datasette, request):
    return await _run(datasette, lambda conn: Response.json(api_list.enums(conn)))


async def version_view(datasette, request):
    return await _by_id(datasette, request, api.version_response)


async def mini_view(datasette, request):
    return await _by_id(datasette, request,
                        lambda conn, version_id, base_url: api.version_mini(conn, version_id))


async def by_hash_view(datasette, request):
    value, base = request.url_vars["hash"], _base(request)

    def fn(conn):
        body = api.version_by_hash(conn, value, base)
        if body is None:
            return _error("Model not found", 404)
        return Response.json(body)
    return await _run(datasette, fn)


async def _post_hashes(datasette, request, answer):
    if request.method != "POST":
        return _error("Use POST with a JSON array of SHA256 hashes", 405)
    try:
        body = json.loads((await request.post_body()) or b"null")
    except ValueError:
        return _error("body must be a JSON array of SHA256 hashes", 400)
    return await _run(datasette, lambda conn: Response.json(answer(conn, body)))


async def by_hash_post_view(datasette, request):
    base = _base(request)
    return await _post_hashes(datasette, request,
                              lambda conn, body: api.versions_by_hashes(conn, body, base))


async def by_hash_ids_view(datasette, request):
    return await _post_hashes(datasette, request, api.version_ids_by_hashes)


async def api_not_found_view(datasette, request):
    """Any other ``/api/...`` path: JSON, as every answer under ``/api``."""
    return _error("Not found", 404)


async def _dump_dir(datasette) -> Path | None:
    config = datasette.plugin_config(PLUGIN) or {}
    if config.get("dump_dir"):
        return Path(config["dump_dir"])
    db = await _find_db(datasette)
    if db is None or not await db.table_exists("_build_info"):
        return None
    row = (await db.execute("SELECT value FROM _build_info WHERE key = 'dump_dir'")).first()
    return Path(row[0]) if row else None


async def _saved_file(datasette, rel: str) -> tuple[Path, str] | None:
    """A preview under the dump folder, and its media type (None: not one we serve)."""
    media_type = _media_type(rel)
    dump = await _dump_dir(datasette) if media_type else None
    if dump is None:
        return None
    path = (dump / rel).resolve()
    return (path, media_type) if dump.resolve() in path.parents else None


async def _sidecar_file(datasette, rel: str) -> tuple[Path, str] | None:
    """A model's preview sidecar in the library, and its media type (images only)."""
    match, library = _LIBRARY_PREVIEW.match(rel), datasette.databases.get("library")
    if match is None or library is None:
        return None
    file_id = int(match.group(1))
    found = await library.execute_fn(lambda conn: library_model.preview_sidecar_path(conn, file_id))
    media_type = MEDIA_TYPES.get(Path(found).suffix.lower().lstrip(".")) if found else None
    return (Path(found), media_type) if media_type and media_type.startswith("image/") else None


async def image_view(datasette, request, send):
    rel = request.url_vars["path"]
    found = await (_sidecar_file if rel.startswith("library/") else _saved_file)(datasette, rel)
    if found is None or not found[0].is_file():
        await _error("Image not found", 404).asgi_send(send)
        return
    path, media_type = found
    await asgi_send_file(send, str(path), content_type=media_type, headers={
        "Cache-Control": "max-age=86400", "X-Content-Type-Options": "nosniff"})


# Datasette's own error page, taken out of the plugin manager by ``use_own_errors`` and called from
# ``handle_exception`` below, so every error is answered once, by one rule.
_DATASETTE_ERRORS = "datasette.handle_exception"
_default_errors = None
# An OperationalError with one of these is the server's trouble (500); any other is the request's.
_SERVER_SIDE = ("locked", "disk", "malformed", "unable to open", "readonly", "out of memory", "busy")


def use_own_errors() -> None:
    """Route Datasette's errors through ``handle_exception`` here (call once, when registering)."""
    global _default_errors
    default = pm.get_plugin(_DATASETTE_ERRORS)
    if default is not None:
        pm.unregister(default)
        default.rich = None  # no 60-line traceback with locals on the console per 404
        _default_errors = default


def client_error(exception: BaseException) -> DatasetteError | None:
    """A 400 for what a request caused that Datasette 0.65 answers with 500 (``_sort`` by an
    unknown column, a number past 64 bits in a filter, a broken ``_through``); None otherwise."""
    if isinstance(exception, DatasetteError):
        if exception.status != 500 or any(w in str(exception.message).lower() for w in _SERVER_SIDE):
            return None
        return DatasetteError(exception.message, title=exception.title, status=400,
                              message_is_html=exception.message_is_html)
    if isinstance(exception, OverflowError):
        return DatasetteError("a number in the request is out of range", status=400)
    if isinstance(exception, ValueError) and not isinstance(exception, sqlite3.Error):
        return DatasetteError(f"bad request: {exception}", status=400)
    return None


@hookimpl
def handle_exception(datasette, request, exception):
    if _default_errors is None:
        return None
    return _default_errors.handle_exception(datasette, request, client_error(exception) or exception)


@hookimpl
def register_routes(datasette):
    return [
        (r"^/api/v1/models/(?P<id>[^/]+)/?$", model_view),
        (r"^/api/v1/models/?$", models_view),
        (r"^/api/v1/model-versions/by-hash/?$", by_hash_post_view),
        (r"^/api/v1/model-versions/by-hash/ids/?$", by_hash_ids_view),
        (r"^/api/v1/model-versions/by-hash/(?P<hash>[^/]+)/?$", by_hash_view),
        (r"^/api/v1/model-versions/mini/(?P<id>[^/]+)/?$", mini_view),
        (r"^/api/v1/model-versions/(?P<id>[^/]+)/?$", version_view),
        (r"^/api/v1/creators/?$", creators_view),
        (r"^/api/v1/tags/?$", tags_view),
        (r"^/api/v1/images/?$", images_view),
        (r"^/api/v1/enums/?$", enums_view),
        (r"^/api/(?P<rest>.*)$", api_not_found_view),
        (r"^/-/civitai-images/(?P<path>.+)$", image_view),
        (r"^/-/changes/?$", changes_page.changes_view(_find_db)),
    ]


@hookimpl(hookwrapper=True)
def register_facet_classes():
    # Datasette's column and array facets, answered from the counts build saved (mirror.facets)
    outcome = yield
    outcome.force_result(facets.precomputed_classes(outcome.get_result()))


@hookimpl
def asgi_wrapper(datasette):
    return lambda app: browse.default_columns(app, datasette, PLUGIN)


@hookimpl
def skip_csrf(datasette, scope):
    # Tools POST hashes without Datasette's CSRF cookie, as they do to civitai.com.
    return scope.get("path", "").startswith("/api/v1/")


async def _model_thumbnail(datasette, file_id):
    """The overview's thumbnail of a model file: its preview sidecar, else its matched version's
    saved preview, both through ``/-/civitai-images/`` (None: neither)."""
    if not isinstance(file_id, int):
        return None
    found = await datasette.databases["library"].execute_fn(
        lambda conn: library_model.overview_preview(conn, file_id))
    if found is None:
        return None
    source, key = found
    if source == "saved" and not (_media_type(key) or "").startswith("image/"):
        return None
    src = datasette.urls.path(f"/-/civitai-images/library/{key}" if source == "sidecar"
                              else f"/-/civitai-images/{key}")
    return markupsafe.Markup(
        '<img class="library-thumb library-model-thumb" src="{}" alt="{}" loading="lazy" '
        'style="max-width:128px;max-height:128px">').format(src, f"preview ({source})")


@hookimpl
def render_cell(row, value, column, table, database, datasette):
    if database == "library":
        if table == "file_overview" and column == "thumbnail" and value is None and row is not None:
            return _model_thumbnail(datasette, row["file_id"] if "file_id" in row.keys() else None)
        return library_view.render_library_cell(value, column, table, datasette)
    shown = browse.display_cell(value, column, table)
    if shown is not None:
        return shown
    if table == "images" and column == "hash" and database != "library":
        placeholder = model_page.blurhash_png(value, 16, 16)  # the BlurHash drawn, never fetched
        if placeholder:
            return markupsafe.Markup('<img src="{}" alt="{}" title="{}" width="48" height="48">'
                                     ).format(placeholder, value, value)
    media_type = _media_type(value) if isinstance(value, str) else None
    if table == "images" and column == "local_path" and media_type:
        src = datasette.urls.path(f"/-/civitai-images/{value}")
        if media_type.startswith("video/"):
            return markupsafe.Markup(
                '<video src="{src}" controls muted preload="metadata" '
                'style="max-width:160px;max-height:160px"></video>').format(src=src)
        return markupsafe.Markup(
            '<a href="{src}"><img src="{src}" loading="lazy" alt="{alt}" '
            'style="max-width:160px;max-height:160px"></a>').format(src=src, alt=value)
    return None


@hookimpl
def prepare_connection(conn, database, datasette):
    # The library's connections see the mirror as schema `civitai` (read-only, immutable), so its
    # canned queries can join your files to Civitai's state. Nothing is written to either file.
    if database != "library":
        return
    mirror_db = datasette.databases.get("civitai")
    if mirror_db is None or not mirror_db.path:
        return
    qs = "immutable=1" if not mirror_db.is_mutable else "mode=ro"
    try:
        conn.execute("ATTACH DATABASE ? AS civitai",
                     [f"file:{quote(str(mirror_db.path), safe='/')}?{qs}"])
    except sqlite3.Error:  # already attached, or unreadable: the library still serves
        pass


#: the mirror's tables with a card above the raw row: (card function, column in library matches)
_CARDS = {"models": (model_page.model_card, "model_id"),
          "model_versions": (model_page.version_card, "version_id")}


async def _civitai_card(datasette, request, table):
    card_of, column = _CARDS[table]
    try:
        key = int(request.url_vars.get("pks", ""))
    except ValueError:
        return {"civitai_card": None}
    db = await _find_db(datasette)
    card = await db.execute_fn(lambda conn: card_of(conn, key)) if db is not None else None
    library = datasette.databases.get("library")
    if card is not None:
        card["library"] = None  # no library served
    if card is not None and library is not None:
        card["library"] = await library.execute_fn(
            lambda conn: model_page.library_copies(conn, column, key))
    return {"civitai_card": card}


@hookimpl
def extra_template_vars(template, database, table, view_name, request, datasette):
    if view_name == "index":
        return lambda: browse.home(datasette, request)
    if view_name == "row" and table in _CARDS and request and database != "library":
        return lambda: _civitai_card(datasette, request, table)
    if not (view_name == "row" and database == "library" and table == "files" and request):
        return {}

    async def inner():
        try:
            file_id = int(request.url_vars.get("pks", ""))
        except ValueError:
            return {"library_file": None}
        db = datasette.get_database("library")

        def read(conn):
            details = library_view.file_details(conn, file_id)
            if details is not None and details["kind"] == "model":
                version_id = (details["match"] or {}).get("version_id")
                details["model"] = library_model.model_extras(conn, details, version_id)
            return details
        return {"library_file": await db.execute_fn(read)}
    return inner
