"""Shared test fixtures. The fake Civitai API lives in tests/fakeapi.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from mirror.serve import make_datasette

pytest_plugins = ["tests.fakeapi"]  # the fake Civitai API fixtures: fake_civitai, fake_civitai_factory

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the clone (real API samples and corpus); tests using it skip when absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this clone")
    return SHARED


@pytest.fixture
async def client(world):
    """Datasette's in-process client (the plugin loaded) over the module's ``world`` fixture: its
    mirror, library and dump. A module without a ``world`` defines its own ``client``."""
    ds = make_datasette(world["civitai"], world["library"], world["dump"])
    await ds.invoke_startup()
    return ds.client
