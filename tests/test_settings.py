"""Runtime settings read from the environment and the machine."""

from __future__ import annotations

import os

from supreme_ecg import settings


def test_usable_threads_never_exceeds_the_cpus_we_may_use():
    cpus = len(os.sched_getaffinity(0))
    assert settings.usable_threads(10_000) == cpus
    assert settings.usable_threads(1) == 1
    assert settings.usable_threads(0) == 1


def test_fixtures_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPREME_FIXTURES", str(tmp_path))
    assert settings.fixtures_dir() == tmp_path
    assert settings.shared_reference_dir() == tmp_path.parent / "reference"
    monkeypatch.delenv("SUPREME_FIXTURES")
    assert settings.fixtures_dir() == settings.REPO_ROOT.parent / "shared" / "fixtures"
