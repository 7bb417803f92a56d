"""Settings read from the environment (never from Snakemake ``params:``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    """Folder of the real ECG fixtures: ``$SUPREME_FIXTURES``, else ``../shared/fixtures``."""
    env = os.environ.get("SUPREME_FIXTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures"


def shared_reference_dir() -> Path:
    """Folder of the benchmark reference tables that sits beside the fixtures."""
    return fixtures_dir().parent / "reference"
