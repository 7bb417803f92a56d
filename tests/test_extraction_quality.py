"""Extraction quality against PTB-XL SCP codes: scoring, the split, languages, the real figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from supreme_ecg import extraction_quality as q
from supreme_ecg.settings import fixtures_dir

PTBXL, MORE = fixtures_dir() / "ptbxl", fixtures_dir() / "ptbxl_reports"
needs_both = pytest.mark.skipif(not (PTBXL / "ptbxl_database.csv").exists() or not (MORE / "ptbxl_database.csv").exists(),
                                reason="no PTB-XL report fixtures in ../shared")
HELDOUT_MICRO_F1 = 0.70  # measured 0.715 on the held-out half (lexicon, glossary v1, audit threshold 0.80)


def test_score_counts_hits_misses_and_false_alarms():
    codes = {"SR": "sinus rhythm", "NORM": "normal ECG", "AFIB": "atrial fibrillation", "CLBBB": "lbbb"}
    table = q.score({1: {"SR", "NORM"}, 2: {"AFIB"}}, {1: {"SR", "CLBBB"}, 2: {"AFIB"}}, codes).set_index("code")
    assert table.loc["SR", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    assert table.loc["NORM", ["tp", "fp", "fn"]].tolist() == [0, 0, 1]
    assert table.loc["CLBBB", ["tp", "fp", "precision"]].tolist() == [0, 1, 0.0]
    assert table.loc["micro", ["tp", "fp", "fn"]].tolist() == [2, 1, 1] and table.loc["micro", "f1"] == pytest.approx(2 / 3)
    assert table.loc["macro", "f1"] == pytest.approx((1 + 0 + 1) / 3)  # codes with support only


def test_language_heuristic():
    assert q.language("sinusrhythmus linkstyp t abnorm") == "de"
    assert q.language("sinusrytm vÄnster el-axel") == "sv"
    assert q.language("sinus rhythm. normal ecg.") == "en"


def test_the_split_is_a_stable_hash_half():
    assert q.in_lower_half(1) == q.in_lower_half("1")
    halves = [q.in_lower_half(i) for i in range(2000)]
    assert 900 < sum(halves) < 1100


@pytest.mark.fixtures
@needs_both
def test_lexicon_quality_on_the_held_out_reports(tmp_path, capsys):
    out = tmp_path / "quality"
    assert q.main(["--split", "heldout", "--direct", "--backend", "lexicon", "--out", str(out)]) == 0
    summary = json.loads((out / "quality_lexicon_heldout.json").read_text())
    assert summary["n_reports"] > 900 and summary["micro_f1"] >= HELDOUT_MICRO_F1, summary
    table = pd.read_parquet(out / "quality_lexicon_heldout.parquet").set_index("code")
    assert len(table) == 71 + 2 and table.loc["SR", "f1"] > 0.95
    assert {r["language"] for r in summary["languages"]} == {"de", "en", "sv"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"micro_f1={summary['micro_f1']:.4f} macro_f1={summary['macro_f1']:.4f} n_reports={summary['n_reports']}"
