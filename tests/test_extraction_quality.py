"""Extraction quality against PTB-XL SCP codes: the scoring, and the lexicon's figures on the real reports."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from supreme_ecg import extraction_quality as q
from supreme_ecg.settings import fixtures_dir
from supreme_ecg.testing.fake_llm_server import FakeLLMServer

PTBXL = fixtures_dir() / "ptbxl"
needs_ptbxl = pytest.mark.skipif(not (PTBXL / "ptbxl_database.csv").exists(), reason=f"no PTB-XL fixtures at {PTBXL}")
LEXICON_MICRO_F1 = 0.811  # measured on the 500 fixture reports (concepts v2)


def test_gold_concepts_map_scp_codes_and_excuse_ambiguous_ones():
    gold, excused = q.gold_concepts("{'NORM': 100.0, 'SR': 0.0, 'QWAVE': 0.0, 'IMI': 35.0, 'XYZ': 100.0}")
    assert gold == {"normal_ecg", "sinus_rhythm", "inferior_myocardial_infarction"}
    assert excused == {"anterior_myocardial_infarction", "lateral_myocardial_infarction"}
    assert q.gold_concepts({"NORM": 100.0, "SR": 0.0}, min_likelihood=50)[0] == {"normal_ecg"}


def test_score_counts_hits_misses_and_false_alarms():
    gold = {1: ({"sinus_rhythm", "normal_ecg"}, set()), 2: ({"atrial_fibrillation"}, {"st_elevation"})}
    predicted = {1: {"sinus_rhythm", "left_bundle_branch_block"}, 2: {"atrial_fibrillation", "st_elevation"}}
    table = q.score(gold, predicted).set_index("concept_id")
    assert table.loc["sinus_rhythm", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    assert table.loc["normal_ecg", ["tp", "fp", "fn", "recall"]].tolist() == [0, 0, 1, 0.0]
    assert table.loc["left_bundle_branch_block", ["tp", "fp", "precision"]].tolist() == [0, 1, 0.0]
    assert "st_elevation" not in table.index  # excused
    assert table.loc["micro", ["tp", "fp", "fn"]].tolist() == [2, 1, 1]
    assert table.loc["micro", "f1"] == pytest.approx(2 / 3)


def test_predicted_concepts_follow_polarity_and_the_uncertain_policy():
    entities = pd.DataFrame({
        "record_id": [1, 1, 1, 2],
        "concept_id": ["sinus_rhythm", "st_elevation", "left_atrial_enlargement", "unmapped"],
        "polarity": ["present", "absent", "uncertain", "present"],
    })  # fmt: skip
    assert q.predicted_concepts(entities) == {1: {"sinus_rhythm", "left_atrial_enlargement"}}
    assert q.predicted_concepts(entities, "negative") == {1: {"sinus_rhythm"}}


@pytest.mark.fixtures
@needs_ptbxl
def test_lexicon_quality_on_the_real_ptbxl_reports(tmp_path, capsys):
    out = tmp_path / "quality"
    assert q.main(["--ptbxl", str(PTBXL), "--backend", "lexicon", "--out", str(out),
                   "--cache", str(tmp_path / "c.sqlite")]) == 0  # fmt: skip
    summary = json.loads((out / "quality_lexicon.json").read_text())
    assert summary["n_reports"] == 500 and summary["backend"] == "lexicon"
    assert summary["micro_f1"] >= LEXICON_MICRO_F1 - 0.03, summary
    table = pd.read_parquet(out / "quality_lexicon.parquet").set_index("concept_id")
    csv = pd.read_csv(out / "quality_lexicon.csv").set_index("concept_id")
    assert csv.index.tolist() == table.index.tolist() and csv.f1.round(4).equals(table.f1.round(4))
    assert table.loc["sinus_rhythm", "f1"] > 0.95 and table.loc["micro", "f1"] == pytest.approx(summary["micro_f1"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("backend=lexicon model=concepts-v")


@pytest.mark.fixtures
@needs_ptbxl
def test_any_backend_can_be_scored_the_same_way(tmp_path):
    """An LLM backend (here the loopback server answering like the lexicon) gets the same figures."""
    with FakeLLMServer(model="fake-model") as server:
        assert q.main(["--ptbxl", str(PTBXL), "--backend", "ollama", "--model", "fake-model", "--host", server.url,
                       "--concurrency", "8", "--out", str(tmp_path), "--cache", str(tmp_path / "c.sqlite")]) == 0  # fmt: skip
        assert server.chat_calls > 0
    llm = json.loads((tmp_path / "quality_ollama_fake-model.json").read_text())
    assert llm["micro_f1"] == pytest.approx(LEXICON_MICRO_F1, abs=0.001) and llm["n_failed_units"] == 0
