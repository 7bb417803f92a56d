"""The benchmark definition agrees with the real reference files (the demo's conditions: test_demo_corpus)."""

from __future__ import annotations

import json
from dataclasses import fields

import pandas as pd
import pytest

from supreme_ecg import catalogue
from supreme_ecg.settings import fixtures_dir, shared_reference_dir


def test_every_class_has_its_codes():
    classes = [c for t in catalogue.task_names() for c in catalogue.task_classes(t)]
    assert len(classes) == 106
    for c in classes:
        if catalogue.task_dataset(c.task) in ("cpsc2018", "csn"):
            assert c.snomed, f"{c.task}/{c.name} needs SNOMED codes for exact matching"


def test_no_class_declares_itself_seen():
    """A class is a description (+ codes) only: nothing links it to a pre-training label or concept;
    seen/unseen is measured by the zero-shot stage."""
    allowed = {"description", "snomed"}
    for task, spec in catalogue.benchmark()["tasks"].items():
        assert set(spec) == {"dataset", "label_source", "classes"}, task
        for name, raw in spec["classes"].items():
            assert set(raw) <= allowed and raw["description"].strip(), f"{task}/{name}: {sorted(raw)}"
    assert {f.name for f in fields(catalogue.BenchmarkClass)} == {"task", "name", "description", "snomed"}


def test_class_lists_match_the_released_benchmark():
    path = shared_reference_dir() / "benchmark_classes.json"
    if not path.is_file():
        pytest.skip(f"{path} absent (set SUPREME_FIXTURES to the shared fixtures)")
    released = json.loads(path.read_text())
    assert {t: [c.name for c in catalogue.task_classes(t)] for t in catalogue.task_names()} == released


def test_scp_statement_facts_match_ptbxl():
    path = fixtures_dir() / "ptbxl" / "scp_statements.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent (set SUPREME_FIXTURES to the shared fixtures)")
    real = pd.read_csv(path, index_col=0)
    for code, facts in catalogue.scp_statement_facts().items():
        row = real.loc[code]
        for flag in ("diagnostic", "form", "rhythm"):
            assert (row[flag] == 1) == (facts.get(flag) == 1), (code, flag)
        if facts.get("diagnostic"):
            assert (row.diagnostic_class, row.diagnostic_subclass) == (
                facts["diagnostic_class"], facts["diagnostic_subclass"]), code


def test_snomed_codes_exist_in_the_challenge_tables():
    ref = shared_reference_dir() / "snomed"
    tables = sorted(ref.glob("*.csv")) if ref.is_dir() else []
    if not tables:
        pytest.skip(f"no SNOMED tables under {ref}")
    known = set(pd.concat([pd.read_csv(t, dtype=str) for t in tables])["snomed_code"])
    used = {code for t in catalogue.task_names() for c in catalogue.task_classes(t) for code in c.snomed}
    missing = used - known
    assert not missing, f"codes not in the Challenge tables: {sorted(missing)}"
