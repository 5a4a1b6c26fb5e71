"""Civitai's addresses: the web site, the API, a model's page, a version's download."""
from __future__ import annotations

SITE = "https://civitai.com"  # Civitai's web site: model pages and downloads
DEFAULT_API_BASE = f"{SITE}/api/v1"


def model_page_url(model_id: int | str, version_id: int | str | None = None) -> str:
    """A model's page on civitai.com (at one of its versions when given)."""
    url = f"{SITE}/models/{model_id}"
    return url if version_id is None else f"{url}?modelVersionId={version_id}"


def download_url(version_id: int | str) -> str:
    """Where Civitai serves a version's primary file."""
    return f"{SITE}/api/download/models/{version_id}"
