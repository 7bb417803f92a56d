"""Audit-only mapping of label names to SCP / SNOMED codes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from supreme_ecg import label_codes as lc
from supreme_ecg.settings import fixtures_dir, shared_reference_dir

SCP = fixtures_dir() / "ptbxl" / "scp_statements.csv"
SNOMED = shared_reference_dir() / "snomed" / "challenge2021_dx_mapping.csv"


class CharEncoder:
    """A tiny deterministic stand-in for MiniLM: normalised letter-trigram counts."""

    def encode(self, texts):
        rows = []
        for t in texts:
            v = torch.zeros(4096)
            for i in range(len(t) - 2):
                v[hash(t[i:i + 3]) % 4096] += 1
            rows.append(v / v.norm().clamp_min(1e-9))
        return torch.stack(rows)


def test_normalise_and_forms():
    assert lc.normalise("Premature ventricular contraction(s)") == "premature ventricular complex"
    assert lc.normalise("long QT-interval") == lc.normalise("prolonged qt")
    assert lc.forms("(complete) right bundle branch block") == {"right bundle branch block", "complete right bundle branch block"}
    assert "left atrial enlargement" in lc.forms("left atrial overload/enlargement")
    assert "anterior ischemia" in lc.forms("ischemic in anterior leads")


def test_exact_then_nearest_with_similarity_and_threshold():
    names = pd.DataFrame({"code": ["A", "B"], "form": ["sinus rhythm", "left bundle branch block"]})
    m = lc.CodeMapper(names, threshold=0.5, encoder=CharEncoder())
    exact, near, none = m.map(["Sinus rhythm", "left bundle branch blocks", "zorblatt"])
    assert (exact.code, exact.method, exact.similarity) == ("A", "exact", 1.0)
    assert near.code == "B" and near.method == "nearest" and 0.5 <= near.similarity < 1
    assert none.code == "" and none.method == "none" and none.similarity < 0.5
    assert list(m.table(["zorblatt"]).columns) == ["name", "code", "matched", "method", "similarity"]


@pytest.mark.skipif(not SCP.exists() or not SNOMED.exists(), reason="no scp_statements.csv / SNOMED table in ../shared")
def test_real_tables_exact_matches():
    m = lc.CodeMapper(lc.scp_names(SCP), encoder=CharEncoder())
    got = {x.name: x.code for x in m.map(["sinus rhythm", "inferior infarct", "ventricular extrasystoles",
                                           "left bundle branch block", "first degree av block"])}
    assert got == {"sinus rhythm": "SR", "inferior infarct": "IMI", "ventricular extrasystoles": "PVC",
                   "left bundle branch block": "CLBBB", "first degree av block": "1AVB"}
    s = lc.CodeMapper(lc.snomed_names(SNOMED), encoder=CharEncoder())
    assert s.map(["atrial fibrillation"])[0].code == "164889003"
