"""Fixtures shared by unit and integration tests.

Integration fixtures (real PostgreSQL, Redis, Celery worker, uvicorn) live in
tests/integration/conftest.py; this module holds what both kinds use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HEART_DISEASE_DIR = REPO_ROOT / "examples" / "heart_disease"


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    """A fresh, private folder for the blob store (models, masked updates)."""
    path = tmp_path / "blobs"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def heart_disease_dir() -> Path:
    return HEART_DISEASE_DIR


@pytest.fixture(autouse=True)
def _no_stray_fmtl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, never from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("FMTL_") and not key.startswith("FMTL_TEST_"):
            monkeypatch.delenv(key, raising=False)
