"""Tests for the dipole-model 12-lead ECG synthesiser (supreme_ecg.demo.synth)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from supreme_ecg.demo.synth import KNOB_DEFAULTS, synthesize
from supreme_ecg.leads import CANONICAL_LEADS

FS = 500
N_SAMPLES = 5000
LEAD = {name: k for k, name in enumerate(CANONICAL_LEADS)}
CLEAN = {"baseline_wander_mv": 0.0, "emg_mv": 0.0, "mains_mv": 0.0}


def synth(n: int, seed: int = 0, fs: int = FS, n_samples: int = N_SAMPLES, **knobs) -> np.ndarray:
    arrays = {name: np.full(n, float(value)) for name, value in knobs.items()}
    return synthesize(arrays, np.random.default_rng(seed), fs=fs, n_samples=n_samples)


def r_peaks(lead: np.ndarray, fs: int = FS) -> np.ndarray:
    x = lead - np.median(lead)
    peaks, _ = find_peaks(x, height=0.5 * x.max(), distance=int(0.25 * fs))
    return peaks


def qrs_peaks(x12: np.ndarray, frac: float = 0.5, dist_s: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """QRS complexes from the summed absolute deviation of all 12 leads (peaks, envelope)."""
    v = np.abs(x12 - np.median(x12, axis=1, keepdims=True)).sum(axis=0)
    peaks, _ = find_peaks(v, height=frac * v.max(), distance=int(dist_s * FS))
    return peaks, v


def qrs_width_s(x12: np.ndarray, frac: float = 0.08) -> float:
    """Median QRS duration: span around each complex where the envelope exceeds frac * peak."""
    peaks, v = qrs_peaks(x12)
    widths = []
    for p in peaks[1:-1]:
        left = right = p
        while left > 0 and v[left] > frac * v[p]:
            left -= 1
        while right < v.size - 1 and v[right] > frac * v[p]:
            right += 1
        widths.append((right - left) / FS)
    assert widths, "no complete QRS complexes found"
    return float(np.median(widths))


def level_after_qrs(x12: np.ndarray, lead: str, start_s: float, stop_s: float) -> float:
    """Mean of ``lead`` in [peak+start, peak+stop] minus its PR-segment baseline, over complexes."""
    peaks, _ = qrs_peaks(x12)
    sig = x12[LEAD[lead]]
    values = []
    for p in peaks:
        b0, b1 = p - int(0.09 * FS), p - int(0.075 * FS)
        s0, s1 = p + int(start_s * FS), p + int(stop_s * FS)
        if b0 >= 0 and s1 <= sig.size:
            values.append(sig[s0:s1].mean() - sig[b0:b1].mean())
    assert values
    return float(np.median(values))


def test_knob_defaults_cover_the_documented_knobs():
    expected = {
        "hr_bpm",
        "rhythm",
        "rr_jitter",
        "pr_ms",
        "qrs_ms",
        "conduction",
        "qrs_axis_deg",
        "qrs_scale",
        "st_mv",
        "st_region",
        "t_scale",
        "qt_ms",
        "q_region",
        "pvc_rate",
        "pac_rate",
        "bigeminy",
        "dropped_beat_every",
        "u_wave_mv",
        "baseline_wander_mv",
        "mains_mv",
        "emg_mv",
    }
    assert set(KNOB_DEFAULTS) == expected
    assert 60 <= KNOB_DEFAULTS["hr_bpm"] <= 100 and KNOB_DEFAULTS["rhythm"] == 0


def test_shape_dtype_and_plausible_amplitudes():
    x = synthesize({"hr_bpm": np.array([60.0, 80.0, 100.0])}, np.random.default_rng(0))
    assert x.shape == (3, 12, N_SAMPLES) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    # R in lead II about 1-1.5 mV for a normal heart; nothing absurd anywhere.
    r_ii = np.percentile(x[:, LEAD["II"]], 99.9, axis=1) - np.median(x[:, LEAD["II"]], axis=1)
    assert np.all((r_ii > 0.7) & (r_ii < 2.0)), r_ii
    assert np.abs(x).max() < 6.0
    small = synth(2, fs=250, n_samples=1000, hr_bpm=70)
    assert small.shape == (2, 12, 1000) and small.dtype == np.float32


def test_defaults_fill_missing_knobs_and_bad_input_is_rejected():
    x = synthesize({}, np.random.default_rng(0))
    assert x.shape == (1, 12, N_SAMPLES)
    with pytest.raises(ValueError):
        synthesize({"heart_rate": np.array([70.0])}, np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthesize({"rhythm": np.array([7.0])}, np.random.default_rng(0))
    with pytest.raises(ValueError):
        synthesize({"hr_bpm": np.ones(3), "qrs_ms": np.ones(4)}, np.random.default_rng(0))


def test_deterministic_for_a_seed_and_varies_across_seeds():
    knobs = {
        "hr_bpm": np.array([50.0, 75.0, 130.0, 90.0]),
        "rhythm": np.array([0, 1, 2, 3]),
        "pvc_rate": np.full(4, 0.2),
        "emg_mv": np.full(4, 0.05),
        "mains_mv": np.full(4, 0.05),
    }
    a = synthesize(knobs, np.random.default_rng(42))
    b = synthesize(knobs, np.random.default_rng(42))
    c = synthesize(knobs, np.random.default_rng(43))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)


def test_limb_lead_identities_hold_exactly_with_noise():
    n = 10
    rng = np.random.default_rng(7)
    knobs = {
        "rhythm": np.arange(n) % 5,
        "conduction": (np.arange(n) // 2) % 5,
        "hr_bpm": rng.uniform(45, 150, n),
        "pvc_rate": np.full(n, 0.2),
        "st_mv": rng.uniform(-0.3, 0.3, n),
        "baseline_wander_mv": np.full(n, 0.3),
        "mains_mv": np.full(n, 0.1),
        "emg_mv": np.full(n, 0.1),
    }
    x = synthesize(knobs, np.random.default_rng(1))
    i, ii = x[:, LEAD["I"]], x[:, LEAD["II"]]
    np.testing.assert_allclose(x[:, LEAD["III"]], ii - i, atol=1e-5, rtol=0)
    np.testing.assert_allclose(x[:, LEAD["aVR"]], -(i + ii) / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(x[:, LEAD["aVL"]], i - ii / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(x[:, LEAD["aVF"]], ii - i / 2, atol=1e-5, rtol=0)
    # The noise really is there (otherwise the identity test would be trivial for noise).
    clean = synthesize({**knobs, **{k: np.zeros(n) for k in CLEAN}}, np.random.default_rng(1))
    assert np.std(x[:, LEAD["V1"]] - clean[:, LEAD["V1"]]) > 0.05


@pytest.mark.parametrize("hr", [45.0, 72.0, 120.0])
def test_heart_rate_recoverable_from_r_peaks(hr):
    x = synth(4, seed=3, hr_bpm=hr)
    expected = hr * (N_SAMPLES / FS) / 60.0
    for rec in x:
        count = r_peaks(rec[LEAD["II"]]).size
        assert abs(count - expected) <= 1.5, (hr, count, expected)


def test_brady_vs_tachy_rate_ordering():
    brady = synth(3, seed=5, hr_bpm=45)
    tachy = synth(3, seed=5, hr_bpm=120)
    nb = [r_peaks(r[LEAD["II"]]).size for r in brady]
    nt = [r_peaks(r[LEAD["II"]]).size for r in tachy]
    assert min(nt) > 2 * max(nb)


def rr_cv(x: np.ndarray) -> np.ndarray:
    out = []
    for rec in x:
        rr = np.diff(r_peaks(rec[LEAD["II"]]))
        out.append(rr.std() / rr.mean())
    return np.array(out)


def test_af_is_irregularly_irregular_and_sinus_is_not():
    sinus = synth(6, seed=11, hr_bpm=90, rr_jitter=0.03)
    af = synth(6, seed=11, hr_bpm=90, rhythm=1)
    cv_sinus, cv_af = rr_cv(sinus), rr_cv(af)
    assert cv_af.mean() > 0.1
    assert cv_af.mean() > 3 * cv_sinus.mean()
    assert cv_sinus.max() < 0.06


def test_sinus_arrhythmia_jitter_increases_rr_variability():
    regular = synth(6, seed=2, hr_bpm=70, rr_jitter=0.0, **CLEAN)
    arrhythmic = synth(6, seed=2, hr_bpm=70, rr_jitter=0.15, **CLEAN)
    assert rr_cv(arrhythmic).mean() > 3 * rr_cv(regular).mean()


def test_bundle_branch_blocks_widen_the_qrs():
    normal = synth(3, seed=4, qrs_ms=90, **CLEAN)
    lbbb = synth(3, seed=4, qrs_ms=150, conduction=1, **CLEAN)
    rbbb = synth(3, seed=4, qrs_ms=140, conduction=2, **CLEAN)
    w_normal = max(qrs_width_s(r) for r in normal)
    assert 0.05 < w_normal < 0.11
    assert min(qrs_width_s(r) for r in lbbb) > w_normal + 0.04
    assert min(qrs_width_s(r) for r in rbbb) > w_normal + 0.04


def test_rbbb_has_terminal_positive_r_prime_in_v1():
    x = synth(2, seed=6, conduction=2, qrs_ms=140, **CLEAN)
    for rec in x:
        p = qrs_peaks(rec)[0][1]
        v1 = rec[LEAD["V1"], p - int(0.08 * FS) : p + int(0.12 * FS)]
        base = rec[LEAD["V1"], p - int(0.09 * FS) : p - int(0.075 * FS)].mean()
        last_max = np.argmax(v1)
        first_min = np.argmin(v1)
        assert v1.max() - base > 0.4 and first_min < last_max  # S before the tall R'


def test_qrs_scale_changes_voltage():
    def ptp(x):
        return np.ptp(x[:, [LEAD["II"], LEAD["V5"]]], axis=2).mean()

    high = synth(4, seed=8, qrs_scale=2.0, **CLEAN)
    normal = synth(4, seed=8, qrs_scale=1.0, **CLEAN)
    low = synth(4, seed=8, qrs_scale=0.4, **CLEAN)
    assert ptp(high) > 1.5 * ptp(normal) > 1.5 * ptp(low)


@pytest.mark.parametrize(
    ("region", "leads"),
    [(0, ("I", "aVL", "V5", "V6")), (1, ("II", "III", "aVF")), (2, ("V1", "V2", "V3", "V4"))],
)
def test_st_elevation_shows_in_its_region(region, leads):
    kw = dict(hr_bpm=70, rr_jitter=0.0, st_region=region, **CLEAN)
    elevated = synth(2, seed=9, st_mv=0.25, **kw)
    control = synth(2, seed=9, st_mv=0.0, **kw)
    for rec_e, rec_c in zip(elevated, control):
        st_e = np.array([level_after_qrs(rec_e, lead, 0.07, 0.09) for lead in leads])
        st_c = np.array([level_after_qrs(rec_c, lead, 0.07, 0.09) for lead in leads])
        assert st_e.mean() > 0.12, (region, st_e)
        assert np.all(st_e - st_c > 0.05), (region, st_e, st_c)
        assert np.abs(st_c).max() < 0.08
    depressed = synth(2, seed=9, st_mv=-0.25, **kw)
    assert np.mean([level_after_qrs(depressed[0], lead, 0.07, 0.09) for lead in leads]) < -0.1


def test_negative_t_scale_inverts_t_waves():
    kw = dict(hr_bpm=70, rr_jitter=0.0, qt_ms=400, **CLEAN)
    upright = synth(2, seed=10, t_scale=1.0, **kw)
    inverted = synth(2, seed=10, t_scale=-1.0, **kw)
    for lead in ("II", "V5"):
        for rec in upright:
            assert level_after_qrs(rec, lead, 0.22, 0.30) > 0.1
        for rec in inverted:
            assert level_after_qrs(rec, lead, 0.22, 0.30) < -0.1


def test_paced_rhythm_has_sharp_spike_before_each_qrs():
    paced = synth(3, seed=12, rhythm=3, hr_bpm=70, **CLEAN)
    sinus = synth(3, seed=12, rhythm=0, hr_bpm=70, **CLEAN)
    d_paced = np.abs(np.diff(paced, axis=2)).max(axis=(1, 2))
    d_sinus = np.abs(np.diff(sinus, axis=2)).max(axis=(1, 2))
    assert d_paced.min() > 1.0 and d_paced.min() > 5 * d_sinus.max()
    expected = 70 * (N_SAMPLES / FS) / 60
    for rec in paced:
        jumps = np.abs(np.diff(rec[LEAD["II"]]))
        spikes, _ = find_peaks(jumps, height=0.5 * jumps.max(), distance=int(0.3 * FS))
        assert abs(spikes.size - expected) <= 1.5
    # Paced QRS is wide once the 1-sample spike is filtered out.
    despiked = median_filter(paced, size=(1, 1, 7))
    assert min(qrs_width_s(r) for r in despiked) > 0.11


def test_bigeminy_alternates_short_and_long_rr():
    x = synth(3, seed=13, hr_bpm=70, bigeminy=1, rr_jitter=0.0, **CLEAN)
    expected = 70 * (N_SAMPLES / FS) / 60
    for rec in x:
        peaks, _ = qrs_peaks(rec, frac=0.2, dist_s=0.35)  # PVCs can dwarf the sinus beats
        assert abs(peaks.size - expected) <= 1.5
        rr = np.diff(peaks)
        short, long = np.minimum(rr[0::2].mean(), rr[1::2].mean()), np.maximum(
            rr[0::2].mean(), rr[1::2].mean()
        )
        assert long > 1.3 * short


def test_dropped_beats_remove_qrs_complexes():
    normal = synth(2, seed=14, hr_bpm=75, rr_jitter=0.0, **CLEAN)
    blocked = synth(2, seed=14, hr_bpm=75, rr_jitter=0.0, dropped_beat_every=3, **CLEAN)
    for rec_n, rec_b in zip(normal, blocked):
        n_normal, n_blocked = qrs_peaks(rec_n)[0].size, qrs_peaks(rec_b)[0].size
        assert n_blocked <= n_normal * 0.8 and n_blocked >= n_normal * 0.55
