"""Shared test fixtures. The fake Civitai API lives in tests/fakeapi.py."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fakeapi"]  # the fake Civitai API fixtures: fake_civitai, fake_civitai_factory

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the clone (real API samples and corpus); tests using it skip when absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this clone")
    return SHARED
