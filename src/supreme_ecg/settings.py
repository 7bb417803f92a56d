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


def usable_threads(requested: int) -> int:
    """``requested`` threads, capped at the CPUs this process may run on (no oversubscription).

    ``snakemake --cores 8`` on a 2-core laptop hands a rule 8 threads; giving torch 8 threads on 2
    cores makes it several times slower, not faster.
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(int(requested), available))
