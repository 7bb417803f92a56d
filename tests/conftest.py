"""Shared test fixtures: the real ECG records of ../shared, read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from supreme_ecg.settings import fixtures_dir


@pytest.fixture(scope="module")
def fx() -> Path:
    """The real fixtures folder (``$SUPREME_FIXTURES`` or ``../shared/fixtures``), or skip."""
    root = fixtures_dir()
    if not (root / "cinc2020").is_dir() or not (root / "ptbxl").is_dir():
        pytest.skip(f"real ECG fixtures not found at {root} (set SUPREME_FIXTURES)")
    return root
