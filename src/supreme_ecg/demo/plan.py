"""Condition planning of the demo: which conditions each record has, its knobs and its defect.

Per record one rhythm plus 0–2 findings among the renderable conditions of the demo's world
(:mod:`supreme_ecg.demo.conditions`), never two that set the same synthesiser knob; quotas per
condition, hedges, pre-training variants, stratification over splits/folds, knob sampling from the
conditions' ``render`` ranges, rendering in batches (:mod:`supreme_ecg.demo.synth`) and defects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from supreme_ecg.demo.conditions import Condition, conditions
from supreme_ecg.leads import CANONICAL_LEADS, canonical_lead_name

FS = 500
N_SAMPLES = 5000
BATCH = 200
#: Rhythm concepts: every record has exactly one (sinus rhythm first).
RHYTHMS = (
    "sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "sinus_arrhythmia", "atrial_fibrillation",
    "atrial_flutter", "supraventricular_tachycardia", "atrial_tachycardia", "paced_rhythm",
)
SINUS_RHYTHMS = frozenset(RHYTHMS[:4])
#: Rhythms without visible sinus P waves: no finding that needs them.
NO_P_RHYTHMS = frozenset({"atrial_fibrillation", "atrial_flutter", "supraventricular_tachycardia", "paced_rhythm"})
P_WAVE_FINDINGS = frozenset({
    "first_degree_av_block", "second_degree_av_block", "wolff_parkinson_white", "premature_atrial_complexes",
})
#: Knobs whose render list is a set of integer codes to choose from (else [lo, hi] uniform).
CATEGORICAL_KNOBS = frozenset({"rhythm", "conduction", "st_region", "q_region", "bigeminy", "dropped_beat_every"})
#: Knobs that count as one when checking conflicts (rate and rhythm are set together).
KNOB_GROUP = {"rhythm": "rate", "hr_bpm": "rate"}
#: A rendered concept that physically implies another (its render range lies inside the other's).
IMPLIED = {
    "left_anterior_fascicular_block": "left_axis_deviation",
    "right_ventricular_hypertrophy": "right_axis_deviation",
    "ventricular_bigeminy": "premature_ventricular_complexes",
}
DEFECT_KINDS = ("nan_long", "nan_short", "flat", "truncated")
#: Share of records per non-sinus rhythm and per finding; floor of positives per concept in the
#: pre-training set, and per concept in the test split of a downstream set.
SHARE = 0.025
MIMIC_MIN_POSITIVES = 32
MIN_TEST_POSITIVES = 6
NORMAL_SHARE = 0.12
MAX_FINDINGS = 2
HEDGE_SHARE = 0.12
POOR_QUALITY_SHARE = 0.03
#: Physiological variation of the knobs no concept sets ([lo, hi] uniform).
PHYSIO = {
    "hr_bpm": (60.0, 95.0), "qrs_axis_deg": (0.0, 75.0), "pr_ms": (130.0, 190.0), "qrs_ms": (80.0, 100.0),
    "qrs_scale": (0.85, 1.2), "t_scale": (0.8, 1.2), "st_mv": (-0.02, 0.03), "rr_jitter": (0.01, 0.06),
    "baseline_wander_mv": (0.02, 0.12), "emg_mv": (0.004, 0.02),
}
QTC_MS = (390.0, 440.0)
#: Physiological variants of the pre-training set: share among eligible records.
VARIANT_SHARE = {"borderline_pr": 0.06, "rbbb_lafb": 0.35}


@dataclass
class Plan:
    """One record's conditions: ``rendered`` drive the signal, ``concepts`` are the truth."""

    rendered: list[str]
    concepts: list[str]
    hedged: set[str] = field(default_factory=set)
    #: Pre-training variants: ``borderline_pr`` (PR 202–218 ms), ``rbbb_lafb`` (RBBB with a -60° axis).
    variants: set[str] = field(default_factory=set)



# --------------------------------------------------------------------------- vocabulary


@lru_cache(maxsize=1)
def renderable() -> dict[str, Condition]:
    """Conditions the demo renders (``render`` not None), in file order."""
    return {cid: c for cid, c in conditions().items() if c.render is not None}


def findings() -> list[str]:
    """Renderable concepts other than rhythms and ``normal_ecg``."""
    return [cid for cid in renderable() if cid not in RHYTHMS and cid != "normal_ecg"]


@cache
def knob_groups(cid: str) -> frozenset[str]:
    """Knob groups a concept sets, including those of the concept it implies."""
    knobs = set(renderable()[cid].render)
    if cid in IMPLIED:
        knobs |= set(renderable()[IMPLIED[cid]].render)
    return frozenset(KNOB_GROUP.get(k, k) for k in knobs)


def _rhythm_allows(rhythm: str, cid: str) -> bool:
    """Whether a finding is compatible with a rhythm (P waves, pacing, shared knobs)."""
    if rhythm in NO_P_RHYTHMS and cid in P_WAVE_FINDINGS:
        return False
    if rhythm == "paced_rhythm" and conditions()[cid].category == "conduction":
        return False
    return not knob_groups(rhythm) & knob_groups(cid)



# --------------------------------------------------------------------------- condition planning


def _quota(n: int, min_positives: int) -> int:
    """Records per non-sinus rhythm and per finding in a set of ``n`` records."""
    return max(1, round(SHARE * n), min(min_positives, int(0.05 * n)))


def min_positives_for_test(is_test) -> int:
    """Positives per concept of a downstream set whose ``is_test`` records (a mask) hold
    ``MIN_TEST_POSITIVES`` of them when spread in proportion: ceil(MIN_TEST_POSITIVES / test share)."""
    is_test = np.asarray(is_test, dtype=bool)
    return -(-MIN_TEST_POSITIVES * is_test.size // max(1, int(is_test.sum())))


def _plan_record(rhythm: str, found: list[str]) -> Plan:
    """A record's plan: rhythm, findings (catalogue order), implied concepts, normal ECG."""
    order = list(renderable())
    rendered = [rhythm] + sorted(found, key=order.index)
    concepts = list(rendered)
    concepts += [IMPLIED[c] for c in rendered if c in IMPLIED and IMPLIED[c] not in concepts]
    if rhythm == "sinus_rhythm" and not found:
        concepts.append("normal_ecg")
    return Plan(rendered=rendered, concepts=concepts)


def plan_conditions(n: int, rng: np.random.Generator, min_positives: int, mimic: bool = False) -> list[Plan]:
    """Quota-based conditions: each non-sinus rhythm and each finding gets ``_quota`` records, or
    (``mimic``) at least that and its MIMIC ``share``; hedges as in the set's reports."""
    quota = _quotas(n, min_positives, mimic)
    rhythm, reserved = _assign_rhythms(n, quota, rng)
    found = _assign_findings(rhythm, reserved, quota, rng)
    plans = [_plan_record(rhythm[i], found[i]) for i in range(n)]
    _add_hedges(plans, rng, mimic)
    return plans


def _quotas(n: int, min_positives: int, mimic: bool) -> dict[str, int]:
    """Records per renderable condition: the uniform quota, or at least its MIMIC share."""
    base = _quota(n, min_positives)
    if not mimic:
        return dict.fromkeys(renderable(), base)
    return {cid: max(base, round(float(c.mimic.get("share", 0.0)) * n)) for cid, c in renderable().items()}


def _assign_rhythms(n: int, quota: dict[str, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rhythm per record, reserved-normal mask): ``quota[rhythm]`` records per non-sinus rhythm."""
    rhythm = np.full(n, "sinus_rhythm", dtype=object)
    perm = rng.permutation(n)
    start = 0
    for cid in RHYTHMS[1:]:
        rhythm[perm[start : start + quota[cid]]] = cid
        start += quota[cid]
    reserved = np.zeros(n, bool)
    reserved[perm[start : start + max(round(NORMAL_SHARE * n), quota["normal_ecg"])]] = True
    return rhythm, reserved


def _assign_findings(rhythm: np.ndarray, reserved: np.ndarray, quota: dict[str, int],
                     rng: np.random.Generator) -> list[list[str]]:
    """Up to ``MAX_FINDINGS`` findings per unreserved record, ``quota[finding]`` each, no shared knob."""
    n = rhythm.size
    found: list[list[str]] = [[] for _ in range(n)]
    count = np.zeros(n, int)
    used = {g: np.zeros(n, bool) for cid in renderable() for g in knob_groups(cid)}
    for cid in RHYTHMS:
        for g in knob_groups(cid):
            used[g] |= rhythm == cid
    for cid in _by_conflict_degree(findings()):
        ok = ~reserved & (count < MAX_FINDINGS) & np.array([_rhythm_allows(r, cid) for r in rhythm])
        for g in knob_groups(cid):
            ok &= ~used[g]
        candidates = np.flatnonzero(ok)
        pick = rng.choice(candidates, size=min(quota[cid], candidates.size), replace=False)
        for i in pick:
            found[i].append(cid)
        count[pick] += 1
        for g in knob_groups(cid):
            used[g][pick] = True
    return found


def _by_conflict_degree(cids: list[str]) -> list[str]:
    """Most-constrained findings first (those sharing knobs with the most others)."""
    degree = {c: sum(bool(knob_groups(c) & knob_groups(o)) for o in cids if o != c) for c in cids}
    return sorted(cids, key=lambda c: (-degree[c], c))


def _add_hedges(plans: list[Plan], rng: np.random.Generator, mimic: bool = False) -> None:
    """Mark a share of findings as hedged in the reports ("Possible ..."); ``mimic``: each
    condition's own share (hypertrophy and ischaemia/infarction by default, rhythms only if given)."""
    for plan in plans:
        u = rng.random(len(plan.rendered))
        if mimic:
            plan.hedged = {c for k, (c, x) in enumerate(zip(plan.rendered, u)) if x < _mimic_hedge_share(c, k == 0)}
        else:
            plan.hedged = {c for c, x in zip(plan.rendered[1:], u[1:]) if x < HEDGE_SHARE}


def _mimic_hedge_share(cid: str, is_rhythm: bool) -> float:
    """Share of hedged mentions of a condition in MIMIC-style reports: its ``hedge``, else
    ``HEDGE_SHARE`` for a finding with ``hedged`` wordings, else none."""
    mimic = conditions()[cid].mimic
    if "hedge" in mimic:
        return float(mimic["hedge"])
    return HEDGE_SHARE if "hedged" in mimic and not is_rhythm else 0.0


def add_variants(plans: list[Plan], rng: np.random.Generator) -> None:
    """Pre-training variants: a borderline PR interval in non-normal sinus records without a
    PR-setting finding; RBBB with left anterior fascicular block (a -60° axis) where no finding
    sets the axis (truth gains LAFB and left axis deviation)."""
    u = rng.random((len(plans), 2))
    for plan, (a, b) in zip(plans, u):
        groups = {g for c in plan.rendered for g in knob_groups(c)}
        if (plan.rendered[0] in SINUS_RHYTHMS and "normal_ecg" not in plan.concepts and "pr_ms" not in groups
                and not P_WAVE_FINDINGS & set(plan.rendered) and a < VARIANT_SHARE["borderline_pr"]):
            plan.variants.add("borderline_pr")
        if "right_bundle_branch_block" in plan.rendered and "qrs_axis_deg" not in groups \
                and b < VARIANT_SHARE["rbbb_lafb"]:
            plan.variants.add("rbbb_lafb")
            plan.concepts += [c for c in ("left_anterior_fascicular_block", "left_axis_deviation")
                              if c not in plan.concepts]


def stratify(plans: list[Plan], groups: np.ndarray, rng: np.random.Generator, test_group=None) -> list[Plan]:
    """Reorder plans so that each concept spreads over ``groups`` (splits, folds) in proportion;
    each group holds every concept it is due at least once, ``test_group`` ``MIN_TEST_POSITIVES``
    of each concept (or its share rounded down where that is fewer)."""
    names, group_of = np.unique(groups, return_inverse=True)
    ids = sorted({c for p in plans for c in p.concepts})
    member = np.array([[c in p.concepts for c in ids] for p in plans], dtype=bool)
    capacity = np.bincount(group_of, minlength=names.size)
    first = np.array([c == "normal_ecg" for c in ids], dtype=int)  # the NORM classes first
    assigned = _iterative_assign(member, capacity, first, rng)
    share = capacity[:, None] * member.sum(axis=0)[None, :] // len(plans)
    need = np.minimum(share, 1)
    test = names == test_group
    need[test] = np.minimum(share[test], MIN_TEST_POSITIVES)
    _fill_groups(member, assigned, need, share, rng)
    out: list[Plan] = list(plans)
    for g in range(names.size):
        records, chosen = np.flatnonzero(group_of == g), rng.permutation(np.flatnonzero(assigned == g))
        for record, plan in zip(records, chosen):
            out[record] = plans[plan]
    return out


def _iterative_assign(member: np.ndarray, capacity: np.ndarray, first: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification (Sechidis et al. 2011): rarest concept first (``first`` before all),
    each of its records to the open group that still lacks most of it. Returns the group per row."""
    n = member.shape[0]
    capacity = capacity.astype(float)
    wanted = capacity[:, None] / n * member.sum(axis=0)[None, :]
    assigned = np.full(n, -1)
    while (assigned < 0).any():
        left = member[assigned < 0].sum(axis=0)
        concept = int(np.argmin(np.where(left > 0, left - first * n, np.inf)))
        for i in rng.permutation(np.flatnonzero((assigned < 0) & member[:, concept])):
            g = int(np.argmax(np.where(capacity > 0, wanted[:, concept] + 1e-6 * capacity, -np.inf)))
            assigned[i], capacity[g] = g, capacity[g] - 1
            wanted[g] -= member[i]
    return assigned


def _fill_groups(member: np.ndarray, assigned: np.ndarray, need: np.ndarray, share: np.ndarray,
                 rng: np.random.Generator) -> None:
    """Swap records (in place) until group ``g`` holds ``need[g, c]`` records of concept ``c`` where it
    can; a swap never takes a group below its need, or further below it. Records leave a group
    whose concepts it holds most above its ``share`` first."""
    counts = np.stack([member[assigned == g].sum(axis=0) for g in range(need.shape[0])])
    for g, c in zip(*np.nonzero(counts < need)):
        for r, s in _swap_candidates(member, assigned, g, c, counts[g] - share[g], rng):
            if counts[g, c] >= need[g, c]:
                break
            h = assigned[r]
            if h == g or assigned[s] != g:  # moved by an earlier swap
                continue
            new_g, new_h = counts[g] - member[s] + member[r], counts[h] - member[r] + member[s]
            if (new_g >= np.minimum(counts[g], need[g])).all() and (new_h >= np.minimum(counts[h], need[h])).all():
                assigned[r], assigned[s] = g, h
                counts[g], counts[h] = new_g, new_h


def _swap_candidates(member, assigned, g, c, surplus, rng):
    """(donor, taker) pairs: a record with concept ``c`` outside group ``g``, one without it inside
    (those whose concepts have the largest ``surplus`` in ``g`` first)."""
    donors = rng.permutation(np.flatnonzero(member[:, c] & (assigned != g)))
    takers = rng.permutation(np.flatnonzero(~member[:, c] & (assigned == g)))
    slack = np.where(member[takers], surplus[None, :], np.inf).min(axis=1)
    takers = takers[np.argsort(-slack, kind="stable")]
    return ((int(r), int(s)) for r in donors for s in takers)


# --------------------------------------------------------------------------- knobs and signals


def _draw(knob: str, spec, rng: np.random.Generator, size: int) -> np.ndarray:
    """Values of one knob from a render spec: categorical choice, [lo, hi] uniform, or a constant."""
    if isinstance(spec, (list, tuple)):
        if knob in CATEGORICAL_KNOBS:
            return rng.choice(np.asarray(spec, dtype=float), size=size)
        return rng.uniform(float(spec[0]), float(spec[1]), size)
    return np.full(size, float(spec))


def sample_knobs(plans: list[Plan], rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(knobs, poor_quality): defaults with physiological variation, then each concept's ranges."""
    from supreme_ecg.demo.synth import KNOB_DEFAULTS

    n = len(plans)
    knobs = {k: np.full(n, float(v)) for k, v in KNOB_DEFAULTS.items()}
    for knob, (lo, hi) in PHYSIO.items():
        if knob in knobs:
            knobs[knob] = rng.uniform(lo, hi, n)
    knobs["mains_mv"] = np.where(rng.random(n) < 0.3, rng.uniform(0.005, 0.03, n), 0.0)
    poor = rng.random(n) < POOR_QUALITY_SHARE
    knobs["emg_mv"][poor] = rng.uniform(0.04, 0.08, int(poor.sum()))
    knobs["baseline_wander_mv"][poor] = rng.uniform(0.2, 0.4, int(poor.sum()))
    qtc = rng.uniform(*QTC_MS, n)
    qt_set = np.zeros(n, bool)
    for cid, concept in renderable().items():
        idx = np.array([i for i, p in enumerate(plans) if cid in p.rendered], dtype=int)
        for knob, spec in concept.render.items():
            knobs[knob][idx] = _draw(knob, spec, rng, idx.size)
            qt_set[idx] |= knob == "qt_ms"
    for variant, knob, (lo, hi) in (("borderline_pr", "pr_ms", (202.0, 218.0)),
                                    ("rbbb_lafb", "qrs_axis_deg", (-75.0, -50.0))):
        idx = np.array([i for i, p in enumerate(plans) if variant in p.variants], dtype=int)
        if idx.size:
            knobs[knob][idx] = rng.uniform(lo, hi, idx.size)
    knobs["qt_ms"] = np.where(qt_set, knobs["qt_ms"], qtc * np.sqrt(60.0 / knobs["hr_bpm"]))
    return knobs, poor


def render_batches(knobs: dict[str, np.ndarray], rng: np.random.Generator, n_samples: int = N_SAMPLES):
    """Yield ``(start, signals)`` batches of (b, 12, n_samples) float32 mV in canonical order."""
    from supreme_ecg.demo.synth import synthesize

    n = len(next(iter(knobs.values())))
    for start in range(0, n, BATCH):
        batch = {k: v[start : start + BATCH] for k, v in knobs.items()}
        yield start, synthesize(batch, rng, fs=FS, n_samples=n_samples)


# --------------------------------------------------------------------------- defects


def pick_defects(plans: list[Plan], n_defects: int, rng: np.random.Generator) -> dict[int, tuple[str, str]]:
    """record index → (defect kind, canonical lead), cycling the kinds; normal records first."""
    normal = [i for i, p in enumerate(plans) if "normal_ecg" in p.concepts]
    pool = normal if len(normal) >= n_defects else list(range(len(plans)))
    chosen = rng.choice(pool, size=min(n_defects, len(pool)), replace=False)
    leads = rng.choice(len(CANONICAL_LEADS), size=len(chosen))
    return {int(i): (DEFECT_KINDS[k % len(DEFECT_KINDS)], CANONICAL_LEADS[int(leads[k])]) for k, i in enumerate(chosen)}


def apply_defect(signal: np.ndarray, kind: str, lead: str, lead_names, rng: np.random.Generator) -> np.ndarray:
    """A copy of a (12, T) record with a NaN run or a flat ``lead`` (``truncated`` is done on disk)."""
    out = signal.copy()
    row, length = [canonical_lead_name(n) for n in lead_names].index(lead), signal.shape[1]
    if kind == "flat":
        out[row] = 0.0
    elif kind in ("nan_long", "nan_short"):
        run = int(rng.uniform(0.15, 0.35) * length) if kind == "nan_long" else int(rng.integers(5, 60))
        begin = int(rng.integers(0, length - run))
        out[row, begin : begin + run] = np.nan
    return out


def truncate_file(path: Path, rng: np.random.Generator) -> None:
    """Cut a signal file to 40–80 % of its size (a partial download)."""
    size = path.stat().st_size
    os.truncate(path, int(size * rng.uniform(0.4, 0.8)) // 2 * 2)

