"""Deterministic, vectorised synthesis of plausible 12-lead ECGs from a 3-D cardiac dipole.

The model follows ECGSYN and Sameni's 3-D extension: each beat is a sum of Gaussian waves in
time whose amplitudes are 3-D vectors (the heart vector), so the dipole traces P, QRS, ST-T and U
loops. The dipole is projected onto a fixed lead field:

* frontal (hexaxial) leads, ``I = g*x`` and ``II = g*(x*cos60 + y*sin60)``, so the frontal QRS axis
  is the dipole's angle in the x-y plane;
* the six chest leads use Dower's inverse-transform coefficients (V1 right-anterior through V6
  left-lateral);
* III, aVR, aVL and aVF are derived from I and II with :func:`supreme_ecg.leads.derive_limb_leads`
  *after* all noise is added, so Einthoven's and Goldberger's identities hold exactly.

Coordinates are Frank's: ``x`` toward the patient's left, ``y`` toward the feet, ``z`` toward the
back (so anterior forces are ``-z``). Everything is vectorised across records; the only Python
loops run over beat index and wave slot. Per-beat templates (P, QRS-ST-T-U, PVC) are built once per
record and overlap-added at the beat times. All randomness comes from the ``rng`` passed in, so the
same seed and knobs give identical arrays.

Knobs (one value per record; see :data:`KNOB_DEFAULTS`) and how out-of-range values are treated:

* ``hr_bpm`` clipped to 20-250. Atrial flutter (``rhythm`` 2) conducts 2:1 when ``hr_bpm`` >= 100,
  else 4:1, with the atrial rate ``ratio * hr_bpm`` clipped to 240-350/min, so the ventricular
  rate may differ from ``hr_bpm``. SVT and flutter ignore ``rr_jitter``; AF draws log-normal RR
  intervals (CV about 0.2) around ``60 / hr_bpm``.
* ``rhythm`` 0 sinus, 1 AF, 2 flutter, 3 paced (atrial-sensed, RV-apical paced: sinus P, spike,
  wide QRS), 4 SVT. ``conduction`` 0 normal, 1 LBBB, 2 RBBB, 3 WPW, 4 LAFB (ignored when paced).
  ``st_region`` 0 lateral, 1 inferior, 2 anterior; ``q_region`` 0 none, 1 inferior, 2 anterior,
  3 lateral. Codes are rounded; other values raise ``ValueError``.
* ``rr_jitter`` clipped to 0-0.5; ``pr_ms`` to 80-400 (WPW caps it at 120).
* ``qrs_ms`` clipped to 60-200; LBBB/RBBB raise it to >= 100 (100-119 ms renders an incomplete
  block, >= 120 a complete one), WPW to >= 100, pacing to >= 140.
* ``qt_ms`` (QRS onset to T end) clipped to 200-750, then capped at ``min(200 + 0.6 RR, 0.9 RR)``
  ms (RR in ms) so the T wave never runs into the next QRS, and kept >= QRS + 120 ms.
* ``qrs_axis_deg``: net frontal QRS axis (records scatter by a few degrees). LAFB forces -60
  unless an axis <= -45 is given.
* ``qrs_scale`` clipped to 0-5 (QRS voltages, PVCs included); ``t_scale`` multiplies the T vector
  (negative inverts); ``st_mv`` is the ST shift in mV in the most affected lead of ``st_region``
  (reciprocal changes appear elsewhere); ``u_wave_mv`` is the U amplitude in V2/V3.
* ``pvc_rate``/``pac_rate`` are per-beat probabilities in 0-1; two ectopic beats never follow each
  other. PACs only occur in rhythms with P waves (sinus, paced). ``bigeminy`` > 0.5 makes every
  second beat a PVC. ``dropped_beat_every`` N >= 2 blocks every Nth P wave (sinus rhythm only).
* ``baseline_wander_mv``, ``mains_mv`` (50 Hz) and ``emg_mv`` are approximate per-lead amplitudes
  (std of wander and EMG, peak of mains); negative values count as 0. EMG noise is white with a
  triangular (sum of two uniforms) distribution, for speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from supreme_ecg.leads import CANONICAL_LEADS, derive_limb_leads

__all__ = [
    "KNOB_DEFAULTS",
    "RHYTHM_CODES",
    "CONDUCTION_CODES",
    "ST_REGION_CODES",
    "Q_REGION_CODES",
    "synthesize",
]

#: Every knob with its "normal sinus rhythm" default.
KNOB_DEFAULTS: dict[str, float] = {
    "hr_bpm": 70.0,
    "rhythm": 0.0,
    "rr_jitter": 0.03,
    "pr_ms": 160.0,
    "qrs_ms": 90.0,
    "conduction": 0.0,
    "qrs_axis_deg": 50.0,
    "qrs_scale": 1.0,
    "st_mv": 0.0,
    "st_region": 0.0,
    "t_scale": 1.0,
    "qt_ms": 400.0,
    "q_region": 0.0,
    "pvc_rate": 0.0,
    "pac_rate": 0.0,
    "bigeminy": 0.0,
    "dropped_beat_every": 0.0,
    "u_wave_mv": 0.0,
    "baseline_wander_mv": 0.05,
    "mains_mv": 0.0,
    "emg_mv": 0.01,
}

RHYTHM_CODES = {0: "sinus", 1: "atrial fibrillation", 2: "atrial flutter", 3: "paced", 4: "SVT"}
CONDUCTION_CODES = {0: "normal", 1: "LBBB", 2: "RBBB", 3: "WPW", 4: "LAFB"}
ST_REGION_CODES = {0: "global/lateral", 1: "inferior", 2: "anterior"}
Q_REGION_CODES = {0: "none", 1: "inferior", 2: "anterior", 3: "lateral"}

_INT_KNOBS = {"rhythm": 4, "conduction": 4, "st_region": 2, "q_region": 3}

_CHUNK = 128  # records per internal chunk (keeps temporaries small and cache-friendly)
_MAINS_HZ = 50.0

# --------------------------------------------------------------------------------------------
# Lead field: rows I, II, V1..V6 (the eight independent leads); columns x, y, z (Frank).
_LIMB_GAIN = 0.8
_S60 = math.sqrt(3.0) / 2.0
_LEAD_FIELD = np.array(
    [
        [_LIMB_GAIN, 0.0, 0.0],  # I
        [_LIMB_GAIN * 0.5, _LIMB_GAIN * _S60, 0.0],  # II
        [-0.515, 0.157, -0.917],  # V1 (Dower)
        [0.044, 0.164, -1.387],  # V2
        [0.882, 0.098, -1.277],  # V3
        [1.213, 0.127, -0.601],  # V4
        [1.125, 0.127, -0.086],  # V5
        [0.831, 0.076, 0.230],  # V6
    ]
)


def _lead_field_12() -> np.ndarray:
    i, ii = _LEAD_FIELD[0], _LEAD_FIELD[1]
    limb = derive_limb_leads(i, ii)
    return np.stack([limb[name] for name in CANONICAL_LEADS[:6]] + list(_LEAD_FIELD[2:]))


_LF12 = _lead_field_12()
_LEAD_INDEX = {name: k for k, name in enumerate(CANONICAL_LEADS)}


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _normalised_to(direction, leads: tuple[str, ...]) -> np.ndarray:
    """Scale ``direction`` so that its largest projection on ``leads`` is exactly 1 mV per unit."""
    u = _unit(direction)
    proj = _LF12[[_LEAD_INDEX[name] for name in leads]] @ u
    return u / np.max(proj)


# Canonical wave vectors (mV of dipole) for a normal heart with a +50 deg frontal QRS axis.
_V_Q = np.array([-0.20, 0.08, -0.22])  # septal: rightward, anterior
_V_R = np.array([1.00, 1.20, 0.35])  # main: left, inferior, slightly posterior
_V_S = np.array([-0.35, -0.30, 0.70])  # terminal: right, superior, posterior
_V_T = np.array([0.35, 0.30, -0.10])
_V_P1 = np.array([0.03, 0.10, -0.05])  # right atrium
_V_P2 = np.array([0.09, 0.05, 0.05])  # left atrium
_V_P_ECTOPIC = np.array([0.06, -0.12, 0.0])  # low-atrial focus: inverted in inferior leads
_V_LBBB = (np.array([0.30, 0.15, 0.25]), np.array([0.90, 0.45, 0.90]), np.array([1.00, 0.35, 0.80]))
_V_RBBB_TERMINAL = np.array([-0.45, 0.05, -0.65])  # late rightward-anterior forces
_V_DELTA = np.array([0.45, 0.35, -0.35])  # pre-excitation (left-sided pathway, type A)
_V_PACED = (np.array([0.5, -1.0, 0.6]), np.array([0.9, -0.6, 0.7]))  # RV apical pacing
_V_SPIKE = np.array([2.0, 3.0, -1.0])
_PATH_Q = np.stack(
    [
        np.zeros(3),
        0.5 * _unit([0.0, -1.0, 0.0]),  # inferior MI: forces point away from the inferior wall
        0.5 * _unit([0.0, 0.0, 1.0]),  # anterior MI: away from the anterior wall (posterior)
        0.5 * _unit([-1.0, 0.0, 0.2]),  # lateral MI: away from the lateral wall (rightward)
    ]
)
_ST_DIR = np.stack(
    [
        _normalised_to([1.0, -0.35, -0.25], ("I", "aVL", "V4", "V5", "V6")),
        _normalised_to([-0.15, 1.0, 0.10], ("II", "III", "aVF")),
        _normalised_to([0.15, 0.0, -1.0], ("V1", "V2", "V3", "V4")),
    ]
)
_U_DIR = _normalised_to([0.3, 0.2, -0.6], ("V2", "V3"))
_AF_DIR = _normalised_to(_unit(_LEAD_FIELD[2]) + 0.4 * np.array([0.0, 1.0, 0.0]), ("V1",))
_FLUTTER_DIR = _normalised_to([-0.1, 1.0, -0.3], ("II",))


# --------------------------------------------------------------------------------------------
def _normalise_knobs(knobs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    unknown = sorted(set(knobs) - set(KNOB_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown knobs {unknown}; known: {sorted(KNOB_DEFAULTS)}")
    arrays = {name: np.asarray(value, dtype=np.float64) for name, value in knobs.items()}
    lengths = {a.shape[0] for a in arrays.values() if a.ndim == 1}
    if any(a.ndim > 1 for a in arrays.values()):
        raise ValueError("every knob must be a scalar or a 1-D array")
    if len(lengths) > 1:
        raise ValueError(f"knob arrays have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 1
    out: dict[str, np.ndarray] = {}
    for name, default in KNOB_DEFAULTS.items():
        value = np.broadcast_to(arrays.get(name, np.float64(default)), (n,)).astype(np.float64)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"knob {name!r} has non-finite values")
        if name in _INT_KNOBS:
            value = np.rint(value)
            if np.any((value < 0) | (value > _INT_KNOBS[name])):
                raise ValueError(f"knob {name!r} must be an integer code in 0..{_INT_KNOBS[name]}")
        out[name] = value
    return out, n


def _rot_z(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (m, 3) vectors about the antero-posterior axis (frontal plane), x toward y."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = v[:, 0], v[:, 1]
    return np.stack([c * x - s * y, s * x + c * y, v[:, 2]], axis=1)


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """(m, 3) rotation vectors to (m, 3, 3) rotation matrices."""
    theta = np.linalg.norm(omega, axis=1)
    k = omega / np.maximum(theta, 1e-12)[:, None]
    kx, ky, kz = k[:, 0], k[:, 1], k[:, 2]
    zero = np.zeros_like(kx)
    cross = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], axis=1).reshape(-1, 3, 3)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * cross + (1.0 - c) * (cross @ cross)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _add_gauss(tpl: np.ndarray, t: np.ndarray, mu, sig, vec) -> None:
    """tpl (m, 3, L) += vec (m, 3) * exp(-(t - mu)^2 / (2 sig^2)), t (L,) seconds."""
    z = (t[None, :] - np.asarray(mu, np.float32)[:, None]) / np.asarray(sig, np.float32)[:, None]
    g = np.exp(np.float32(-0.5) * z * z)
    tpl += np.asarray(vec, np.float32)[:, :, None] * g[:, None, :]


def _add_t_wave(tpl, t, peak, sig_up, sig_down, vec) -> None:
    """Asymmetric Gaussian (slow upstroke, faster downstroke)."""
    d = t[None, :] - np.asarray(peak, np.float32)[:, None]
    sig = np.where(d < 0, np.asarray(sig_up, np.float32)[:, None], np.asarray(sig_down, np.float32)[:, None])
    z = d / sig
    tpl += np.asarray(vec, np.float32)[:, :, None] * np.exp(np.float32(-0.5) * z * z)[:, None, :]


# --------------------------------------------------------------------------------------------
def _schedule(kn: dict[str, np.ndarray], rng: np.random.Generator, duration: float) -> dict:
    """Beat times (QRS onsets or would-be onsets) and per-beat flags, shape (m, K)."""
    m = kn["hr_bpm"].shape[0]
    rhythm = kn["rhythm"].astype(int)
    hr = np.clip(kn["hr_bpm"], 20.0, 250.0)
    rr0 = 60.0 / hr
    flutter = rhythm == 2
    ratio = np.where(hr >= 100.0, 2.0, 4.0)
    f_flutter = np.clip(ratio * hr / 60.0, 4.0, 5.8)  # atrial rate 240-350 /min
    rr0 = np.where(flutter, ratio / f_flutter, rr0)
    jitter = np.clip(kn["rr_jitter"], 0.0, 0.5)

    f_resp = rng.uniform(0.15, 0.35, m)
    ph_resp = rng.uniform(0.0, 2 * np.pi, m)
    ph_amp = rng.uniform(0.0, 2 * np.pi, m)
    t0 = -1.3 - rng.uniform(0.0, 1.0, m) * rr0
    n_beats = int(np.ceil(np.max((duration + 1.3 + 2.0 * rr0) / (0.3 * rr0)))) + 2
    k = np.arange(n_beats)[None, :]

    z = rng.standard_normal((m, n_beats))
    u_pvc = rng.random((m, n_beats))
    u_pac = rng.random((m, n_beats))
    c_pvc = rng.uniform(0.55, 0.70, (m, n_beats))
    c_pac = rng.uniform(0.62, 0.80, (m, n_beats))
    every = np.rint(kn["dropped_beat_every"]).astype(int)
    drop_offset = np.floor(rng.random(m) * np.maximum(every, 1))

    sinus_like = (rhythm == 0) | (rhythm == 3)
    resp = np.sin(2 * np.pi * f_resp[:, None] * k * rr0[:, None] + ph_resp[:, None])
    factor = np.where(sinus_like[:, None], 1.0 + jitter[:, None] * resp + 0.006 * z, 1.0 + 0.002 * z)
    af = (rhythm == 1)[:, None]
    factor = np.where(af, np.clip(np.exp(0.22 * z - 0.0242), 0.45, 2.2), factor)
    factor = np.where(flutter[:, None], 1.0, np.maximum(factor, 0.3))

    dropped = ((rhythm == 0) & (every >= 2))[:, None] & (
        ((k + drop_offset[:, None]) % np.maximum(every, 1)[:, None]) == 0
    )
    pvc_rate = np.clip(kn["pvc_rate"], 0.0, 1.0)[:, None]
    pac_rate = np.clip(kn["pac_rate"], 0.0, 1.0)[:, None]
    bigeminy = (kn["bigeminy"] > 0.5)[:, None]
    want_pvc = np.where(bigeminy, (k % 2) == 1, u_pvc < pvc_rate) & ~dropped
    want_pac = (u_pac < pac_rate) & sinus_like[:, None] & ~dropped
    want_pvc[:, 0] = False
    want_pac[:, 0] = False

    pvc = np.zeros((m, n_beats), bool)
    pac = np.zeros((m, n_beats), bool)
    prev = np.zeros(m, bool)
    for j in range(1, n_beats):
        is_pvc = want_pvc[:, j] & ~prev
        is_pac = want_pac[:, j] & ~prev & ~is_pvc
        pvc[:, j], pac[:, j] = is_pvc, is_pac
        factor[:, j] = np.where(is_pvc, c_pvc[:, j], np.where(is_pac, c_pac[:, j], factor[:, j]))
        if j + 1 < n_beats:
            after = np.where(is_pvc, 2.0 - c_pvc[:, j], 1.08)  # compensatory vs sinus reset
            factor[:, j + 1] = np.where(is_pvc | is_pac, after, factor[:, j + 1])
        prev = is_pvc | is_pac

    times = t0[:, None] + np.cumsum(rr0[:, None] * factor, axis=1)
    amp = 1.0 + 0.05 * np.sin(2 * np.pi * f_resp[:, None] * times + ph_amp[:, None])
    return {
        "times": times,
        "has_p": sinus_like[:, None] & ~pvc & ~pac,
        "has_pac": pac,
        "has_qrs": ~pvc & ~dropped,
        "has_pvc": pvc,
        "amp": amp,
        "rr0": rr0,
        "f_flutter": f_flutter,
    }


def _templates(kn: dict[str, np.ndarray], rng: np.random.Generator, fs: int, rr0: np.ndarray) -> dict:
    """Per-record P, ectopic-P, QRS-ST-T-U and PVC templates, (m, 3, L) float32 each."""
    m = rr0.shape[0]
    rhythm = kn["rhythm"].astype(int)
    cond = kn["conduction"].astype(int)
    paced = rhythm == 3
    lbbb, rbbb, wpw, lafb = cond == 1, cond == 2, cond == 3, cond == 4

    # --- record-level randomness (inter-individual variability) --------------------------
    r_amp = rng.uniform(0.85, 1.15, m)
    t_amp = rng.uniform(0.8, 1.2, m)
    p_amp = rng.uniform(0.8, 1.2, m)
    spike_amp = rng.uniform(0.7, 1.3, m)
    pvc_dir1 = _unit(rng.standard_normal((m, 3)))
    pvc_dir2 = _unit(pvc_dir1 + 0.8 * _unit(rng.standard_normal((m, 3))))
    pvc_a1 = rng.uniform(1.2, 1.8, m)
    pvc_a2 = rng.uniform(0.6, 1.0, m)
    pvc_d = rng.uniform(0.13, 0.17, m)

    # --- intervals ------------------------------------------------------------------------
    d = np.clip(kn["qrs_ms"], 60.0, 200.0) / 1000.0
    d = np.where(lbbb | rbbb, np.maximum(d, 0.10), d)  # 100-119 ms renders incomplete BBB
    d = np.where(wpw, np.maximum(d, 0.10), d)
    d = np.where(paced, np.maximum(d, 0.14), d)
    pr = np.clip(kn["pr_ms"], 80.0, 400.0) / 1000.0
    pr = np.where(wpw, np.minimum(pr, 0.12), pr)
    qt = np.clip(kn["qt_ms"], 200.0, 750.0) / 1000.0
    qt = np.minimum(qt, np.clip(np.minimum(0.2 + 0.6 * rr0, 0.9 * rr0), 0.22, 0.75))
    qt = np.maximum(qt, d + 0.12)
    pvc_d = np.maximum(pvc_d, d + 0.02)

    axis = kn["qrs_axis_deg"]
    axis = np.where(lafb & (axis > -45.0), -60.0, axis)
    t_rot = np.where(lafb, 0.0, 0.5 * np.radians(axis - 50.0))
    qs = np.clip(kn["qrs_scale"], 0.0, 5.0) * r_amp

    def rows(v):
        return np.broadcast_to(np.asarray(v, np.float64), (m, 3)).copy()

    # --- QRS wave slots A-D: (mu, sigma, vector) -------------------------------------------
    dn_rbbb = np.minimum(d, 0.085)
    dn_wpw = np.maximum(d - 0.035, 0.07)
    dn = np.where(rbbb, dn_rbbb, np.where(wpw, dn_wpw, d))
    shift = np.where(wpw, 0.035, 0.0)
    mu_a, sg_a, v_a = 0.18 * dn, 0.07 * dn, rows(_V_Q)
    mu_b, sg_b, v_b = shift + 0.45 * dn, 0.11 * dn, rows(_V_R)
    mu_c, sg_c, v_c = shift + 0.72 * dn, 0.09 * dn, rows(_V_S)
    mu_d, sg_d, v_d = 0.70 * d + 0.01, 0.15 * d, np.zeros((m, 3))

    # LBBB: no septal q, broad notched R (two leftward-posterior humps)
    mu_a, sg_a = np.where(lbbb, 0.15 * d, mu_a), np.where(lbbb, 0.08 * d, sg_a)
    mu_b, sg_b = np.where(lbbb, 0.38 * d, mu_b), np.where(lbbb, 0.13 * d, sg_b)
    mu_c, sg_c = np.where(lbbb, 0.70 * d, mu_c), np.where(lbbb, 0.12 * d, sg_c)
    v_a = np.where(lbbb[:, None], _V_LBBB[0], v_a)
    v_b = np.where(lbbb[:, None], _V_LBBB[1], v_b)
    v_c = np.where(lbbb[:, None], _V_LBBB[2], v_c)
    # RBBB: normal early QRS plus slow terminal rightward-anterior forces (R' in V1)
    v_d = np.where(rbbb[:, None], _V_RBBB_TERMINAL, v_d)
    # WPW: delta wave replaces the septal q
    mu_a, sg_a = np.where(wpw, 0.035, mu_a), np.where(wpw, 0.018, sg_a)
    v_a = np.where(wpw[:, None], _V_DELTA, v_a)

    # Rotate the QRS loop in the frontal plane so that its net (area-weighted) vector points at
    # the requested axis; for LAFB the main R vector is aimed at the (left-deviated) axis.
    net = sg_a[:, None] * v_a + sg_b[:, None] * v_b + sg_c[:, None] * v_c + sg_d[:, None] * v_d
    current = np.where(lafb, math.atan2(_V_R[1], _V_R[0]), np.arctan2(net[:, 1], net[:, 0]))
    delta = np.radians(axis) - current
    rotate = ~lafb
    v_a = np.where(rotate[:, None], _rot_z(v_a, delta), v_a)
    v_b = _rot_z(v_b, delta)
    v_c = _rot_z(v_c, delta)
    v_d = _rot_z(v_d, delta)
    # LAFB: initial forces inferior-rightward (+120 deg; q in I/aVL, r in inferior leads), main
    # forces superior-leftward, small terminal S.
    q_frontal = float(np.hypot(_V_Q[0], _V_Q[1]))
    v_q_lafb = 1.6 * np.array(
        [q_frontal * math.cos(math.radians(120)), q_frontal * math.sin(math.radians(120)), _V_Q[2]]
    )
    v_a = np.where(lafb[:, None], v_q_lafb, v_a)
    v_c = np.where(lafb[:, None], 0.25 * v_c, v_c)

    # Paced (RV apex): wide LBBB-like QRS with superior axis; replaces all slots.
    mu_a, sg_a = np.where(paced, 0.005 + 0.30 * d, mu_a), np.where(paced, 0.14 * d, sg_a)
    mu_b, sg_b = np.where(paced, 0.005 + 0.65 * d, mu_b), np.where(paced, 0.14 * d, sg_b)
    v_a = np.where(paced[:, None], _V_PACED[0], v_a)
    v_b = np.where(paced[:, None], _V_PACED[1], v_b)
    v_c = np.where(paced[:, None], 0.0, v_c)
    v_d = np.where(paced[:, None], 0.0, v_d)

    # Pathological Q waves (>= 40 ms): early forces away from the infarct, R loses that part.
    q_region = kn["q_region"].astype(int)
    v_e = np.where(paced[:, None], 0.0, _PATH_Q[q_region])
    w = -_unit(v_e + 1e-12)
    has_q = np.linalg.norm(v_e, axis=1) > 0
    along = np.maximum(np.sum(v_b * w, axis=1), 0.0)
    v_b = np.where(has_q[:, None], v_b - 0.6 * along[:, None] * w, v_b)
    mu_e, sg_e = np.full(m, 0.022), np.full(m, 0.011)

    slots = [(mu_a, sg_a, v_a), (mu_b, sg_b, v_b), (mu_c, sg_c, v_c), (mu_d, sg_d, v_d), (mu_e, sg_e, v_e)]
    slots = [(mu, sg, v * qs[:, None]) for mu, sg, v in slots]
    mean_qrs = _unit(sum(sg[:, None] * v for _, sg, v in slots[:4]) + 1e-9)

    # --- repolarisation ---------------------------------------------------------------------
    v_t = _rot_z(rows(_V_T), t_rot)
    v_st2 = np.zeros((m, 3))
    discordant = lbbb | paced
    v_t = np.where(discordant[:, None], -0.4 * mean_qrs, v_t)
    v_st2 = np.where(discordant[:, None], -0.10 * mean_qrs, v_st2)
    term = _unit(v_d + 1e-12)
    v_t = np.where((rbbb & ~paced)[:, None], v_t - 0.3 * term, v_t)
    v_st2 = np.where((rbbb & ~paced)[:, None], -0.05 * term, v_st2)
    v_t = np.where((wpw & ~paced)[:, None], 0.7 * v_t - 0.12 * _unit(v_a), v_t)
    v_t = v_t * (kn["t_scale"] * t_amp)[:, None]
    v_st = v_st2 + kn["st_mv"][:, None] * _ST_DIR[kn["st_region"].astype(int)]
    v_u = kn["u_wave_mv"][:, None] * _U_DIR[None, :]

    j_point = np.where(paced, d + 0.005, d)
    sd_t = 0.075 * qt
    su_t = 0.12 * qt
    peak_t = qt - 2.5 * sd_t

    # --- QRS-ST-T-U template ------------------------------------------------------------------
    pre_q = int(math.ceil(0.05 * fs))
    post_q = float(np.max(qt)) + 0.2
    len_q = pre_q + int(math.ceil(post_q * fs))
    t_q = ((np.arange(len_q) - pre_q) / fs).astype(np.float32)
    qrst = np.zeros((m, 3, len_q), np.float32)
    for mu, sg, v in slots:
        live = np.any(v != 0, axis=1)
        if np.all(live):
            _add_gauss(qrst, t_q, mu, sg, v)
        elif np.any(live):
            sub = np.zeros((int(live.sum()), 3, len_q), np.float32)
            _add_gauss(sub, t_q, mu[live], sg[live], v[live])
            qrst[live] += sub
    _add_t_wave(qrst, t_q, peak_t, su_t, sd_t, v_t)
    st_live = np.any(v_st != 0, axis=1)
    if np.any(st_live):
        tt = t_q[None, :].astype(np.float64)
        s1 = _sigmoid((tt - j_point[st_live, None] + 0.004) / 0.004)
        s2 = _sigmoid((peak_t[st_live, None] + 0.3 * sd_t[st_live, None] - tt) / (0.5 * sd_t[st_live, None]))
        qrst[st_live] += (v_st[st_live, :, None] * (s1 * s2)[:, None, :]).astype(np.float32)
    u_live = np.any(v_u != 0, axis=1)
    if np.any(u_live):
        sub = np.zeros((int(u_live.sum()), 3, len_q), np.float32)
        _add_gauss(sub, t_q, qt[u_live] + 0.07, np.full(int(u_live.sum()), 0.035), v_u[u_live])
        qrst[u_live] += sub
    if np.any(paced):
        width = max(1, int(round(0.0015 * fs)))
        spike = (_V_SPIKE[None, :] * spike_amp[paced, None]).astype(np.float32)
        qrst[paced, :, pre_q : pre_q + width] += spike[:, :, None]
        after = np.arange(len_q - pre_q - width) / fs
        decay = (-0.12 * np.exp(-after / 0.010)).astype(np.float32)
        qrst[paced, :, pre_q + width :] += spike[:, :, None] * decay[None, None, :]

    # --- PVC template ---------------------------------------------------------------------------
    pre_v = int(math.ceil(0.03 * fs))
    qt_v = qt + 0.04
    len_v = pre_v + int(math.ceil((float(np.max(qt_v)) + 0.2) * fs))
    t_v = ((np.arange(len_v) - pre_v) / fs).astype(np.float32)
    pvc = np.zeros((m, 3, len_v), np.float32)
    scale = np.clip(kn["qrs_scale"], 0.0, 5.0)[:, None]
    w1, w2 = pvc_a1[:, None] * pvc_dir1 * scale, pvc_a2[:, None] * pvc_dir2 * scale
    _add_gauss(pvc, t_v, 0.30 * pvc_d, 0.14 * pvc_d, w1)
    _add_gauss(pvc, t_v, 0.68 * pvc_d, 0.13 * pvc_d, w2)
    mean_v = _unit(0.14 * w1 + 0.13 * w2 + 1e-9)
    sd_v = 0.09 * qt_v
    _add_t_wave(pvc, t_v, qt_v - 2.5 * sd_v, 0.13 * qt_v, sd_v, -0.45 * mean_v)
    tt = t_v[None, :].astype(np.float64)
    s1 = _sigmoid((tt - pvc_d[:, None]) / 0.006)
    s2 = _sigmoid((qt_v[:, None] - 2.2 * sd_v[:, None] - tt) / (0.5 * sd_v[:, None]))
    pvc += ((-0.12 * mean_v)[:, :, None] * (s1 * s2)[:, None, :]).astype(np.float32)

    # --- P waves (template origin = P onset) --------------------------------------------------
    pre_p = int(math.ceil(0.02 * fs))
    len_p = pre_p + int(math.ceil(0.13 * fs))
    t_p = ((np.arange(len_p) - pre_p) / fs).astype(np.float32)
    p = np.zeros((m, 3, len_p), np.float32)
    _add_gauss(p, t_p, np.full(m, 0.035), np.full(m, 0.016), p_amp[:, None] * _V_P1)
    _add_gauss(p, t_p, np.full(m, 0.062), np.full(m, 0.017), p_amp[:, None] * _V_P2)
    p_ect = np.zeros((m, 3, len_p), np.float32)
    _add_gauss(p_ect, t_p, np.full(m, 0.05), np.full(m, 0.02), p_amp[:, None] * _V_P_ECTOPIC)

    return {
        "qrst": qrst,
        "pre_q": pre_q,
        "pvc": pvc,
        "pre_v": pre_v,
        "p": p,
        "p_ect": p_ect,
        "pre_p": pre_p,
        "pr_samples": np.rint(pr * fs).astype(np.int64),
    }


def _windows(dp: np.ndarray, length: int) -> np.ndarray:
    """Writable (m, 3, Tp - length + 1, length) sliding-window view of ``dp``."""
    m, c, tp = dp.shape
    s0, s1, s2 = dp.strides
    return as_strided(dp, shape=(m, c, tp - length + 1, length), strides=(s0, s1, s2, s2), writeable=True)


def _overlap_add(dp, pad, n_samples, tpl, offsets, flags, amp=None) -> None:
    """Add ``tpl[r]`` (scaled by ``amp[r, k]``) at ``offsets[r, k]`` wherever ``flags[r, k]``."""
    length = tpl.shape[2]
    win = _windows(dp, length)
    visible = flags & (offsets + length > pad) & (offsets < pad + n_samples)
    for k in np.flatnonzero(visible.any(axis=0)):
        r = np.flatnonzero(visible[:, k])
        block = tpl[r]
        if amp is not None:
            block *= amp[r, k].astype(np.float32)[:, None, None]
        win[r, :, offsets[r, k]] += block


def _atrial_activity(dc, kn, rng, fs, sched) -> None:
    """Fibrillatory f-waves (AF) and sawtooth flutter waves, added to the dipole in place."""
    m, _, n_samples = dc.shape
    rhythm = kn["rhythm"].astype(int)
    t = np.arange(n_samples) / fs
    # Draw for every record so a record's randomness does not depend on its neighbours' rhythms.
    f_freq = rng.uniform(4.0, 9.0, (m, 3))
    f_phase = rng.uniform(0.0, 2 * np.pi, (m, 3))
    f_weight = rng.uniform(0.5, 1.0, (m, 3))
    f_amp = rng.uniform(0.03, 0.09, m)
    fl_amp = rng.uniform(0.12, 0.25, m)
    fl_phase = rng.uniform(0.3, 0.4, m)
    af = np.flatnonzero(rhythm == 1)
    if af.size:
        w = (f_weight[af] / f_weight[af].sum(axis=1, keepdims=True) * f_amp[af, None] * 1.6).astype(
            np.float32
        )
        t32 = t.astype(np.float32)
        wave = np.zeros((af.size, n_samples), np.float32)
        for j in range(3):
            omega = (2 * np.pi * f_freq[af, j, None]).astype(np.float32)
            wave += w[:, j, None] * np.sin(omega * t32[None, :] + f_phase[af, j, None].astype(np.float32))
        dc[af] += _AF_DIR.astype(np.float32)[None, :, None] * wave[:, None, :]
    fl = np.flatnonzero(rhythm == 2)
    if fl.size:
        phase = np.mod(
            sched["f_flutter"][fl, None] * (t[None, :] - sched["times"][fl, :1]) + fl_phase[fl, None], 1.0
        )
        saw = np.where(phase < 0.75, 1.0 - 2.0 * phase / 0.75, -1.0 + 2.0 * (phase - 0.75) / 0.25)
        dc[fl] += (_FLUTTER_DIR[None, :, None] * (fl_amp[fl, None] * saw)[:, None, :]).astype(np.float32)


def _noise_basis(fs: int, n_samples: int) -> np.ndarray:
    """Rows: smooth Gaussian bumps (baseline wander, < ~0.5 Hz), then sin and cos of the mains."""
    t = np.arange(n_samples) / fs
    spacing = 1.0
    centres = np.arange(-2.0, n_samples / fs + 2.0 + 1e-9, spacing)
    bumps = np.exp(-0.5 * ((t[None, :] - centres[:, None]) / (0.6 * spacing)) ** 2)
    bumps /= np.sqrt(np.mean(np.sum(bumps**2, axis=0)))
    mains = np.stack([np.sin(2 * np.pi * _MAINS_HZ * t), np.cos(2 * np.pi * _MAINS_HZ * t)])
    return np.concatenate([bumps, mains]).astype(np.float32)


#: Standard deviation of the difference of two independent uniform bytes.
_WHITE_STD = math.sqrt(2.0 * (256.0**2 - 1.0) / 12.0)


def _white(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Fast zero-mean white noise with std ``_WHITE_STD`` (difference of two uniform bytes, so a
    triangular pdf); about twice as fast as ``rng.standard_normal(dtype=float32)``."""
    size = int(np.prod(shape))
    b = np.frombuffer(rng.bytes(2 * size), dtype=np.int8).reshape(2, size)
    return np.subtract(b[0], b[1], dtype=np.float32).reshape(shape)


def _electrode_noise(kn, rng, basis, n_samples) -> np.ndarray:
    """(m, 9, T): limb electrodes RA, LA, LL then chest leads V1..V6."""
    m = kn["hr_bpm"].shape[0]
    n_bumps = basis.shape[0] - 2
    chan = np.array([1 / math.sqrt(2)] * 3 + [1.0] * 6)
    coef = np.empty((m, 9, basis.shape[0]))
    coef[:, :, :n_bumps] = (
        rng.standard_normal((m, 9, n_bumps))
        * (np.maximum(kn["baseline_wander_mv"], 0.0)[:, None] * chan)[:, :, None]
    )
    mains_amp = np.maximum(kn["mains_mv"], 0.0)[:, None] * rng.uniform(0.7, 1.1, (m, 9)) * chan
    mains_ph = rng.uniform(0.0, 2 * np.pi, m)[:, None] + rng.normal(0.0, 1.0, (m, 9))  # electrode imbalance
    coef[:, :, n_bumps] = mains_amp * np.cos(mains_ph)
    coef[:, :, n_bumps + 1] = mains_amp * np.sin(mains_ph)
    noise = np.matmul(coef.astype(np.float32), basis)
    emg = np.maximum(kn["emg_mv"], 0.0)
    if np.any(emg > 0):
        white = _white(rng, (m, 9, n_samples))
        white *= (emg[:, None] * chan / _WHITE_STD).astype(np.float32)[:, :, None]
        noise += white
    return noise


def _synth_chunk(kn, rng, fs, n_samples, basis, out) -> None:
    m = kn["hr_bpm"].shape[0]
    duration = n_samples / fs
    sched = _schedule(kn, rng, duration)
    tpl = _templates(kn, rng, fs, sched["rr0"])
    omega = rng.normal(0.0, 1.0, (m, 3)) * np.array([0.08, 0.08, 0.04])  # heart orientation
    lead_field = np.matmul(_LEAD_FIELD[None], _rodrigues(omega)).astype(np.float32)  # (m, 8, 3)

    pad = max(tpl["qrst"].shape[2], tpl["pvc"].shape[2], tpl["p"].shape[2])
    dp = np.zeros((m, 3, pad + n_samples + pad), np.float32)
    onset = np.rint(sched["times"] * fs).astype(np.int64)
    _overlap_add(
        dp, pad, n_samples, tpl["p"], pad + onset - tpl["pr_samples"][:, None] - tpl["pre_p"], sched["has_p"]
    )
    _overlap_add(
        dp,
        pad,
        n_samples,
        tpl["p_ect"],
        pad + onset - tpl["pr_samples"][:, None] - tpl["pre_p"],
        sched["has_pac"],
    )
    _overlap_add(dp, pad, n_samples, tpl["qrst"], pad + onset - tpl["pre_q"], sched["has_qrs"], sched["amp"])
    _overlap_add(dp, pad, n_samples, tpl["pvc"], pad + onset - tpl["pre_v"], sched["has_pvc"], sched["amp"])
    dc = dp[:, :, pad : pad + n_samples]
    _atrial_activity(dc, kn, rng, fs, sched)

    leads8 = np.matmul(lead_field, dc)  # (m, 8, T): I, II, V1..V6
    noise = _electrode_noise(kn, rng, basis, n_samples)
    leads8[:, 0] += noise[:, 1] - noise[:, 0]  # I = LA - RA
    leads8[:, 1] += noise[:, 2] - noise[:, 0]  # II = LL - RA
    leads8[:, 2:] += noise[:, 3:]
    limb = derive_limb_leads(leads8[:, 0], leads8[:, 1])
    for row, name in enumerate(CANONICAL_LEADS[:6]):
        out[:, row] = limb[name]
    out[:, 6:] = leads8[:, 2:]


def synthesize(
    knobs: dict[str, np.ndarray], rng: np.random.Generator, fs: int = 500, n_samples: int = 5000
) -> np.ndarray:
    """(n, 12, n_samples) float32 mV. Every knob is a 1-D array of length n (missing knobs take KNOB_DEFAULTS).

    Leads are in :data:`supreme_ecg.leads.CANONICAL_LEADS` order. Scalars broadcast; if no knob
    is an array, ``n`` is 1. Integer-coded knobs are rounded and must lie in their code range;
    unknown knob names raise ``ValueError``. Same ``rng`` state and knobs give identical output.
    """
    kn, n = _normalise_knobs(knobs)
    fs, n_samples = int(fs), int(n_samples)
    if fs <= 0 or n_samples < 0:
        raise ValueError("fs must be positive and n_samples non-negative")
    out = np.empty((n, 12, n_samples), np.float32)
    if n == 0 or n_samples == 0:
        return out
    basis = _noise_basis(fs, n_samples)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        _synth_chunk({k: v[start:stop] for k, v in kn.items()}, rng, fs, n_samples, basis, out[start:stop])
    return out
