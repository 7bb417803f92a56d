"""Bootstrap intervals: weighted AUC equals sklearn's on the resampled records, redraws are counted."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from supreme_ecg.bootstrap import bootstrap_aucs, percentile_interval, weighted_auc


def test_weighted_auc_equals_sklearn_on_resampled_records_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.4 * y, 1)  # many ties
    idx = rng.integers(0, 300, size=(5, 300))
    counts = np.stack([np.bincount(i, minlength=300) for i in idx])
    expected = [roc_auc_score(y[i], s[i]) for i in idx]
    np.testing.assert_allclose(weighted_auc(y, s, counts), expected, rtol=1e-12)
    assert weighted_auc(y, s, np.ones((1, 300)))[0] == pytest.approx(roc_auc_score(y, s))


def test_intervals_cover_the_point_estimate_and_narrow_with_more_records():
    rng = np.random.default_rng(0)

    def width(n):
        truth = rng.integers(0, 2, (n, 3))
        scores = rng.random((n, 3)) + 0.8 * truth
        result = bootstrap_aucs(truth, scores, n_resamples=300, seed=1)
        auc, low, high = result.macro["all"]
        assert low <= auc <= high
        assert np.all(result.ci_low <= result.auc) and np.all(result.auc <= result.ci_high)
        return high - low

    assert width(2000) < width(100)


def test_rare_class_forces_counted_redraws_and_unknown_labels_are_left_out():
    n = 200
    truth = np.zeros((n, 2), np.int64)
    truth[:2, 0] = 1                 # 2 positives: many resamples lack both → redrawn
    truth[::2, 1] = 1
    truth[5:50, 1] = -1              # unknown: not a negative
    rng = np.random.default_rng(5)
    scores = rng.random((n, 2)) + truth.clip(0)
    result = bootstrap_aucs(truth, scores, n_resamples=200, seed=2)
    assert result.n_redraws > 0
    assert result.n_resamples == 200 and len(result.macro_samples["all"]) == 200
    known = truth[:, 1] >= 0
    assert result.auc[1] == pytest.approx(roc_auc_score(truth[known, 1], scores[known, 1]))


def test_class_without_positives_is_nan_and_left_out_of_the_macro():
    truth = np.zeros((50, 2), np.int64)
    truth[::3, 1] = 1
    scores = np.random.default_rng(1).random((50, 2))
    result = bootstrap_aucs(truth, scores, groups={"all": np.array([True, True]), "first": np.array([True, False])},
                            n_resamples=50)
    assert np.isnan(result.auc[0]) and np.isnan(result.ci_low[0])
    assert result.macro["all"][0] == pytest.approx(result.auc[1])
    assert all(np.isnan(v) for v in result.macro["first"])


def test_several_score_matrices_bootstrap_their_mean_auc_and_seed_fixes_the_interval():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, (400, 4))
    a, b = rng.random((400, 4)) + truth, rng.random((400, 4)) + 0.2 * truth
    joint = bootstrap_aucs(truth, [a, b], n_resamples=100, seed=3)
    one, two = bootstrap_aucs(truth, a, n_resamples=0), bootstrap_aucs(truth, b, n_resamples=0)
    np.testing.assert_allclose(joint.auc, (one.auc + two.auc) / 2)
    assert bootstrap_aucs(truth, [a, b], n_resamples=100, seed=3).macro == joint.macro
    assert bootstrap_aucs(truth, [a, b], n_resamples=100, seed=4).macro != joint.macro


def test_hopeless_classes_give_no_intervals_and_say_why_instead_of_looping():
    # 40 classes with one positive each: a resample keeps all 40 with p ≈ 0.63**40 ≈ 1e-8
    truth = np.zeros((400, 40), np.int64)
    truth[np.arange(40), np.arange(40)] = 1
    result = bootstrap_aucs(truth, np.random.default_rng(0).random((400, 40)), n_resamples=10)
    assert result.note.startswith("no intervals") and "1 pos / 399 neg" in result.note
    assert np.isnan(result.ci_low).all() and np.isnan(result.macro["all"][1])
    assert not np.isnan(result.auc).any() and result.n_resamples == 0


def test_percentile_interval_ignores_nan():
    assert all(np.isnan(percentile_interval(np.array([np.nan, np.nan]))))
    low, high = percentile_interval(np.r_[np.arange(101.0), np.nan], level=0.9)
    assert (low, high) == pytest.approx((5.0, 95.0))


def test_column_aucs_equal_sklearn_with_unknowns_and_ties():
    from supreme_ecg.bootstrap import column_aucs

    rng = np.random.default_rng(11)
    truth = rng.integers(-1, 2, (300, 4))
    truth[:, 3] = 0  # no positives → NaN
    scores = np.round(rng.random((300, 4)) + 0.3 * truth.clip(0), 1)
    aucs = column_aucs(truth, scores)
    for c in range(3):
        known = truth[:, c] >= 0
        assert aucs[c] == pytest.approx(roc_auc_score(truth[known, c], scores[known, c]))
    assert np.isnan(aucs[3])
