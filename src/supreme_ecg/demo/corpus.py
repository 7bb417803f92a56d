"""The demo stage: a miniature of MIMIC-IV-ECG, PTB-XL, CPSC2018 and CSN in their real formats.

:func:`generate_demo` plans conditions per record (one rhythm plus 0–2 findings among the
renderable conditions of the demo's world, :mod:`supreme_ecg.demo.conditions`, never two that set
the same synthesiser knob), samples knobs from the conditions' ``render`` ranges, renders the
signals with :mod:`supreme_ecg.demo.synth` and writes each set in its PhysioNet layout with the
project's writers (:mod:`supreme_ecg.formats`), so exactly the loaders that read PhysioNet read the
demo. Downstream labels come from the conditions present: PTB-XL ``scp_codes`` from their SCP
codes, CPSC2018/CSN ``#Dx`` from their SNOMED codes. The pre-training set reads like MIMIC-IV-ECG:
prevalences, machine statements ("Sinus rhythm with borderline 1st degree A-V block", "Possible
anterior infarct - age undetermined", "Borderline ECG", "*** ... ***") and headers (gain 200/mV,
time and date on the record line, the subject comment) as the real ones are written.
``unseen_concepts`` are rendered in pre-training signals but never named in pre-training reports
(an unnamed rhythm statement replaces a rhythm, a finding is left out), so the demo shows zero-shot
transfer. ``demo_truth.parquet`` records every record's conditions and defect.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from supreme_ecg import catalogue, datasets, formats
from supreme_ecg.demo.conditions import Condition, conditions
from supreme_ecg.leads import CANONICAL_LEADS, MIMIC_LEAD_ORDER, canonical_lead_name

FS = 500
N_SAMPLES = 5000
BATCH = 200
#: Concepts rendered in pre-training signals but never named in pre-training reports.
UNSEEN_DEFAULT = (
    "atrial_flutter", "ventricular_bigeminy", "supraventricular_tachycardia", "early_repolarization", "u_wave",
)
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
#: Findings a machine reader calls borderline rather than abnormal.
MILD = frozenset({
    "first_degree_av_block", "incomplete_right_bundle_branch_block", "left_axis_deviation", "right_axis_deviation",
    "low_t_wave", "t_wave_abnormality", "nonspecific_st_t_abnormality", "premature_atrial_complexes",
    "high_qrs_voltage", "low_qrs_voltage", "early_repolarization", "u_wave", "sinus_arrhythmia",
})
MILD_MIMIC = MILD | {"premature_ventricular_complexes", "borderline_pr"}
DEFECT_KINDS = ("nan_long", "nan_short", "flat", "truncated")
#: Share of records per non-sinus rhythm and per finding; floor of positives per concept and set.
SHARE = 0.025
MIN_POSITIVES = {"mimic": 32, "downstream": 14}
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
POOR_QUALITY = "*** Poor data quality, interpretation may be adversely affected"
HEDGES = ("Possible ", "Probable ", "Cannot rule out ", "Consider ")
# MIMIC-IV-ECG wording not tied to one condition (the conditions' own is in conditions.yaml).
#: Hedge words of MIMIC statements and their weights.
MIMIC_HEDGES = {"Possible ": 6.0, "Cannot rule out ": 2.0, "Probable ": 1.5, "Consider ": 1.0}
#: Statement for a rhythm that must not be named (an unseen rhythm).
UNNAMED_RHYTHM = {"Undetermined rhythm": 3.0, "Unknown rhythm": 1.0, "Abnormal rhythm": 1.0}
#: Words for ``st_region`` 0 (lateral), 1 (inferior), 2 (anterior) in "{region} ST elevation".
ST_REGION_WORDS = ({"Lateral": 3.0, "Anterolateral": 1.0}, {"Inferior": 1.0},
                   {"Anteroseptal": 3.0, "Septal": 1.0})
LEAD_LINES = {"Lead(s) unsuitable for analysis: {lead}": 3.0, "Possible faulty {lead} - omitted from analysis": 1.0}
PACED_STOP = "No further analysis attempted due to paced rhythm"
BORDERLINE_AV = "borderline 1st degree A-V block"
#: Ectopy and A-V block said after "Sinus rhythm with ...", in this order.
RHYTHM_MODIFIERS = ("premature_ventricular_complexes", "ventricular_bigeminy", "premature_atrial_complexes",
                    "second_degree_av_block", "first_degree_av_block")
#: Shares of the MIMIC report styles and variants.
MIMIC_STYLE = {"paced_stop": 0.5, "implied_said": 0.3, "no_verdict": 0.05, "upper_vendor": 0.03,
               "rhythm_period": 0.1, "lead_line": 0.5, "lead_line_any": 0.01,
               "ectopy_otherwise_normal": 0.3}
#: Physiological variants of the pre-training set: share among eligible records.
VARIANT_SHARE = {"borderline_pr": 0.06, "rbbb_lafb": 0.35}
MARKED_BRADY_BPM = 40.0
SET_FOLDERS = datasets.DATASET_FOLDERS
PTBXL_LEADS = tuple(name.upper() for name in CANONICAL_LEADS)
_MIMIC_ROWS = [CANONICAL_LEADS.index(name) for name in MIMIC_LEAD_ORDER]
_ENGLISH_EXTRA = """with rapid ventricular response marked complete 1st 2nd a-v pr mobitz wenckebach leftward rightward
criteria for are voltages mitrale pulmonale overload segments depressed changes and non-specific inverted negative flat
flattening long prolongation infarct mi old age undetermined - anteroseptal ischemia ischemic in leads anterolateral
inferolateral contractions complex extrasystoles ectopic paroxysmal electronic pacemaker preexcitation pre-excitation
parkinson white wolff within limits no definite pathology ekg irregularity abnormal repolarisation benign frontal
horizontal the a fib aflutter a-fib a-flutter disturbance hemiblock af lbbb rbbb lvh elevations depressions""".split()


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


@lru_cache(maxsize=None)
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


@lru_cache(maxsize=1)
def _english_vocab() -> frozenset[str]:
    """Words of the concept names plus common machine-statement English."""
    words = set(_ENGLISH_EXTRA)
    for concept in conditions().values():
        words |= set(concept.name.lower().split())
    return frozenset(words)


def _phrase_kind(synonym: str) -> str:
    """``abbr`` (one short token), ``en`` (all words English) or ``foreign`` (German/Swedish)."""
    tokens = synonym.split()
    if len(tokens) == 1 and len(synonym) <= 5 and synonym.isalnum():
        return "abbr"
    return "en" if all(t in _english_vocab() for t in tokens) and tokens[0] != "consider" else "foreign"


@lru_cache(maxsize=None)
def phrases(cid: str) -> dict[str, tuple[str, ...]]:
    """A concept's synonyms by kind: ``en``, ``abbr``, ``foreign``."""
    out: dict[str, list[str]] = {"en": [], "abbr": [], "foreign": []}
    for synonym in conditions()[cid].synonyms:
        out[_phrase_kind(synonym)].append(synonym)
    return {k: tuple(v) for k, v in out.items()}


@lru_cache(maxsize=None)
def mention_pattern(cids: tuple[str, ...]) -> re.Pattern | None:
    """Case-insensitive word-boundary regex of every synonym, mention and name of ``cids`` (None if empty)."""
    terms = {s.lower() for cid in cids
             for s in (*conditions()[cid].synonyms, *conditions()[cid].mentions, conditions()[cid].name)}
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


# --------------------------------------------------------------------------- condition planning


def _quota(n: int, min_positives: int) -> int:
    """Records per non-sinus rhythm and per finding in a set of ``n`` records."""
    return max(1, round(SHARE * n), min(min_positives, int(0.05 * n)))


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


def stratify(plans: list[Plan], groups: np.ndarray, rng: np.random.Generator) -> list[Plan]:
    """Reorder plans so that each concept spreads over ``groups`` (splits, folds) in proportion."""
    names, group_of = np.unique(groups, return_inverse=True)
    ids = sorted({c for p in plans for c in p.concepts})
    member = np.array([[c in p.concepts for c in ids] for p in plans], dtype=bool)
    capacity = np.bincount(group_of, minlength=names.size)
    first = np.array([c == "normal_ecg" for c in ids], dtype=int)  # the NORM classes first
    assigned = _iterative_assign(member, capacity, first, rng)
    _cover_groups(member, assigned, capacity / len(plans), rng)
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


def _cover_groups(member: np.ndarray, assigned: np.ndarray, capacity_share: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Swap records so that each group holds every concept it should hold at least once (in place)."""
    counts = np.stack([member[assigned == g].sum(axis=0) for g in range(capacity_share.size)])
    need = capacity_share[:, None] * member.sum(axis=0)[None, :] >= 1
    for g, c in zip(*np.nonzero(need & (counts == 0))):
        if counts[g, c]:
            continue
        for r, s in _swap_candidates(member, assigned, g, c, rng):
            h = assigned[r]
            new_g, new_h = counts[g] - member[s] + member[r], counts[h] - member[r] + member[s]
            lost = (need[g] & (counts[g] > 0) & (new_g == 0)) | (need[h] & (counts[h] > 0) & (new_h == 0))
            if not lost.any():
                assigned[r], assigned[s] = g, h
                counts[g], counts[h] = new_g, new_h
                break


def _swap_candidates(member, assigned, g, c, rng):
    """(donor, taker) pairs: a record with concept ``c`` outside group ``g``, a record inside it."""
    donors = rng.permutation(np.flatnonzero(member[:, c] & (assigned != g)))
    takers = rng.permutation(np.flatnonzero(assigned == g))
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


def _write_record(writer, directory: Path, name: str, signal, leads, defect, rng, ext: str, **kw) -> None:
    """Write one record with its defect (NaN/flat before writing, truncation after)."""
    if defect is not None:
        signal = apply_defect(signal, defect[0], defect[1], leads, rng)
    writer(directory, name, signal, list(leads), FS, **kw)
    if defect is not None and defect[0] == "truncated":
        truncate_file(directory / f"{name}{ext}", rng)


# --------------------------------------------------------------------------- reports


def _capitalise(text: str) -> str:
    """Upper-case the first character."""
    return text[:1].upper() + text[1:]


def _lower_first(text: str) -> str:
    """Lower-case the first character unless the first word is an acronym or a letter (``ST``, ``T``)."""
    first = text.split(" ", 1)[0]
    keep = len(first) == 1 or sum(ch.isupper() for ch in first) >= 2
    return text if keep else text[:1].lower() + text[1:]


_TABLES: dict[int, tuple[tuple[str, ...], np.ndarray]] = {}


def _pick(table: dict[str, float], rng: np.random.Generator) -> str:
    """One key of ``table`` drawn with its relative weight (one uniform draw)."""
    cached = _TABLES.get(id(table))
    if cached is None or len(cached[0]) != len(table):
        cached = _TABLES[id(table)] = (tuple(table), np.cumsum([float(w) for w in table.values()]))
    keys, cum = cached
    return keys[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(keys) - 1)]


def _wording(cid: str, key: str = "statements") -> dict[str, float]:
    """A condition's MIMIC wording table (its name when it has none)."""
    condition = conditions()[cid]
    return condition.mimic.get(key) or {_capitalise(condition.name): 1.0}


def _fill_region(text: str, st_region: float, rng: np.random.Generator) -> str:
    """Fill ``{region}`` from the record's ``st_region`` knob."""
    if "{region}" not in text:
        return text
    return text.replace("{region}", _pick(ST_REGION_WORDS[int(round(st_region))], rng))


def _finding_statement(cid: str, plan: Plan, knob: dict[str, float], rng: np.random.Generator) -> str:
    """One finding's statement: its own wording, hedged ("Possible ...") when the plan says so."""
    mimic = conditions()[cid].mimic
    if cid == "right_bundle_branch_block" and "rbbb_lafb" in plan.variants:
        text = _pick(_wording("left_anterior_fascicular_block", "with_rbbb"), rng)
    elif cid in plan.hedged and "hedged" in mimic:
        text = _pick(mimic["hedged"], rng)
    elif cid in plan.hedged:
        text = _pick(MIMIC_HEDGES, rng) + _lower_first(_pick(_wording(cid), rng))
    else:
        text = _pick(_wording(cid), rng)
    return _fill_region(text, knob["st_region"], rng)


def _rhythm_line(plan: Plan, said: list[str], knob: dict[str, float], unseen: tuple[str, ...],
                 rng: np.random.Generator) -> tuple[str, set[str]]:
    """(rhythm statement, findings merged into it): "Sinus rhythm with PVC(s) with 1st degree A-V block"."""
    rhythm = plan.rendered[0]
    if rhythm in unseen:
        return _pick(UNNAMED_RHYTHM, rng), set()
    mimic = conditions()[rhythm].mimic
    if rhythm in plan.hedged and "hedged" in mimic:
        text = _pick(mimic["hedged"], rng)
    elif "fast" in mimic and knob["hr_bpm"] > 100:
        text = _pick(mimic["fast"], rng)
    else:
        text = _pick(_wording(rhythm), rng)
    if rhythm == "sinus_bradycardia" and knob["hr_bpm"] < MARKED_BRADY_BPM and rng.random() < 0.5:
        text = "Marked sinus bradycardia"
    merged: set[str] = set()
    modifiers = []
    if rhythm in SINUS_RHYTHMS or rhythm == "atrial_fibrillation":
        for cid in RHYTHM_MODIFIERS:
            wording = conditions()[cid].mimic
            af = rhythm == "atrial_fibrillation"
            if cid not in said or cid in plan.hedged or "with" not in wording or (af and "with_af" not in wording):
                continue
            if rng.random() < float(wording.get("merge", 1.0)):
                modifiers.append(_pick(wording["with_af" if af else "with"], rng))
                merged.add(cid)
        if "borderline_pr" in plan.variants:
            modifiers.append(BORDERLINE_AV)
    return " with ".join([text, *modifiers]), merged


def _statement_rank(cid: str) -> int:
    """Order of findings in a MIMIC report: axis, conduction, QT, infarcts, hypertrophy, ST-T, voltage, ectopy."""
    if cid == "long_qt":
        return 3
    if cid == "low_qrs_voltage":
        return 7
    if cid.endswith("myocardial_infarction"):
        return 4
    return {"axis": 1, "conduction": 2, "hypertrophy": 5, "ischaemia_infarction": 6, "morphology": 6,
            "rhythm": 8}.get(conditions()[cid].category, 9)


def _said_findings(plan: Plan, unseen: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Findings the report states: none unseen; an implied one (LAD of LAFB) only sometimes,
    always when what implies it is unseen (PVCs of unnamed bigeminy); the RBBB+LAFB variant as one."""
    out = []
    for cid in plan.concepts[1:]:
        if cid == "normal_ecg" or cid in unseen:
            continue
        if "rbbb_lafb" in plan.variants and cid in ("left_anterior_fascicular_block", "left_axis_deviation"):
            continue
        impliers = [k for k, v in IMPLIED.items() if v == cid and k in plan.concepts]
        if impliers and all(k not in unseen for k in impliers) and rng.random() >= MIMIC_STYLE["implied_said"]:
            continue
        out.append(cid)
    return out


def _verdict(plan: Plan, said: list[str], unseen: tuple[str, ...], rng: np.random.Generator) -> str:
    """Normal ECG / Normal ECG except for rate / Otherwise normal ECG / Borderline ECG / Abnormal ECG."""
    rhythm = plan.rendered[0]
    if "normal_ecg" in plan.concepts:
        return "Normal ECG"
    hidden = [c for c in plan.concepts if c in unseen]
    if rhythm not in SINUS_RHYTHMS or any(c not in MILD for c in hidden):
        return "Abnormal ECG"
    rest = [c for c in said if c != rhythm] + sorted(plan.variants)
    if not rest and not hidden:
        return "Normal ECG except for rate" if rhythm in ("sinus_bradycardia", "sinus_tachycardia") \
            else "Otherwise normal ECG"
    if set(rest) <= {"premature_atrial_complexes", "premature_ventricular_complexes"} and not hidden \
            and rng.random() < MIMIC_STYLE["ectopy_otherwise_normal"]:
        return "Otherwise normal ECG"
    return "Borderline ECG" if all(c in MILD_MIMIC for c in rest) else "Abnormal ECG"


def _mimic_lead(canonical: str) -> str:
    """A lead name as MIMIC writes it."""
    return MIMIC_LEAD_ORDER[[canonical_lead_name(n) for n in MIMIC_LEAD_ORDER].index(canonical)]


def mimic_statements(plan: Plan, knob: dict[str, float], poor: bool, defect, unseen: tuple[str, ...],
                     rng: np.random.Generator) -> list[str]:
    """MIMIC-IV-ECG machine statements of one pre-training record (``knob``: its knob values).

    Order as in the real reports: quality and acute flags (``*** ... ***``), the rhythm with its
    ectopy and A-V block, the findings (axis, conduction, QT, infarcts, hypertrophy, ST-T,
    voltage), quality remarks, the verdict. Unseen conditions are never named.
    """
    lines = [POOR_QUALITY] if poor else []
    said = _said_findings(plan, unseen, rng)
    if "st_elevation" in said and rng.random() < float(conditions()["st_elevation"].mimic.get("flag_share", 0)):
        lines.append(_pick(conditions()["st_elevation"].mimic["flag"], rng))
    rhythm_line, merged = _rhythm_line(plan, said, knob, unseen, rng)
    if rng.random() < MIMIC_STYLE["rhythm_period"]:
        rhythm_line += "."
    lines.append(rhythm_line)
    if plan.rendered[0] == "paced_rhythm" and plan.rendered[0] not in unseen \
            and rng.random() < MIMIC_STYLE["paced_stop"]:
        lines.append(PACED_STOP)
    else:
        for cid in sorted((c for c in said if c not in merged), key=_statement_rank):
            lines.append(_finding_statement(cid, plan, knob, rng))
            mimic = conditions()[cid].mimic
            if "also" in mimic and cid not in plan.hedged and rng.random() < float(mimic.get("also_share", 0)):
                lines.append(_pick(mimic["also"], rng))
    lines += _lead_lines(defect, rng)
    verdict = _verdict(plan, said, unseen, rng) if rng.random() >= MIMIC_STYLE["no_verdict"] else None
    if rng.random() < MIMIC_STYLE["upper_vendor"]:  # another cart's style: upper case, "Summary: ..."
        lines = [line.upper() for line in lines]
        verdict = verdict and f"Summary: {verdict.upper()}"
    lines += [verdict] if verdict else []
    return list(dict.fromkeys(_guard_unseen(lines, unseen)))


def _lead_lines(defect, rng: np.random.Generator) -> list[str]:
    """Lead-quality remarks (a flat or missing lead, rarely any lead)."""
    lines = []
    bad_lead = defect is not None and defect[0] in ("flat", "nan_long")
    if (bad_lead and rng.random() < MIMIC_STYLE["lead_line"]) or rng.random() < MIMIC_STYLE["lead_line_any"]:
        lead = defect[1] if bad_lead else str(rng.choice(CANONICAL_LEADS))
        lines.append(_pick(LEAD_LINES, rng).format(lead=_mimic_lead(lead)))
    return lines


def _guard_unseen(lines: list[str], unseen: tuple[str, ...]) -> list[str]:
    """Replace any statement that still names an unseen condition by a generic one (a safety net:
    the wording above never names one, which a test checks)."""
    pattern = mention_pattern(tuple(sorted(unseen)))
    if pattern is None:
        return lines
    return [("Abnormal ECG" if pattern.search(line) else line) for line in lines]


def ptbxl_report(plan: Plan, rng: np.random.Generator) -> str:
    """PTB-XL style free text: lower case, German/Swedish or English phrases, hedges."""
    foreign = rng.random() < 0.5
    parts = []
    for cid in plan.concepts:
        kinds = phrases(cid)
        pool = kinds["foreign"] if foreign and kinds["foreign"] else kinds["en"] or (conditions()[cid].name,)
        text = str(rng.choice(pool)).lower()
        if cid in plan.hedged:
            text = ("verdacht auf " if foreign else str(rng.choice(HEDGES)).lower()) + text
        parts.append(text)
    if rng.random() < 0.15:
        parts.append("unbestätigter bericht")
    return " ".join(parts)


# --------------------------------------------------------------------------- labels


def scp_codes(plan: Plan) -> dict[str, float]:
    """PTB-XL ``scp_codes``: every SCP code of the concepts, 100 (50 when hedged)."""
    codes: dict[str, float] = {}
    for cid in plan.concepts:
        for code in conditions()[cid].scp:
            codes[code] = max(codes.get(code, 0.0), 50.0 if cid in plan.hedged else 100.0)
    return codes


def dx_codes(plan: Plan, dataset: str) -> list[str]:
    """``#Dx`` SNOMED codes of the concepts; CPSC2018 codes sinus rhythm only for normal records."""
    codes: list[str] = []
    for cid in plan.concepts:
        if dataset == "cpsc2018" and cid == "sinus_rhythm" and "normal_ecg" not in plan.concepts:
            continue
        codes += [c for c in conditions()[cid].snomed if c not in codes]
    return codes


# --------------------------------------------------------------------------- MIMIC-IV-ECG


def _unique_ints(rng: np.random.Generator, size: int, low: int, high: int) -> np.ndarray:
    """``size`` distinct integers in [low, high)."""
    return low + rng.choice(high - low, size=size, replace=False)


def _timestamps(rng: np.random.Generator, size: int, first_year: int, last_year: int) -> np.ndarray:
    """Random ``YYYY-MM-DD HH:MM:SS`` strings (seconds zero) between two years."""
    start = np.datetime64(f"{first_year}-01-01T00:00")
    minutes = rng.integers(0, (last_year - first_year) * 525_600, size)
    stamps = np.datetime_as_string(start + minutes.astype("timedelta64[m]"), unit="s")
    return np.char.replace(stamps, "T", " ")


def mimic_measurements(plans: list[Plan], knobs: dict[str, np.ndarray], rng: np.random.Generator) -> pd.DataFrame:
    """Interval and axis measurements consistent with the knobs (29999 = not measured, as in MIMIC)."""
    n = len(plans)
    no_p = np.array([p.rendered[0] in NO_P_RHYTHMS for p in plans])
    p_onset = rng.integers(30, 60, n)
    qrs_onset = np.where(no_p, rng.integers(180, 230, n), p_onset + np.rint(knobs["pr_ms"]).astype(int))
    t_axis = knobs["qrs_axis_deg"] + rng.normal(0, 20, n) + np.where(knobs["t_scale"] < 0, 180, 0)
    return pd.DataFrame({
        "bandwidth": "0.005-150 Hz",
        "filtering": "60 Hz notch Baseline filter",
        "rr_interval": np.rint(60000.0 / knobs["hr_bpm"]).astype(int),
        "p_onset": np.where(no_p, 29999, p_onset),
        "p_end": np.where(no_p, 29999, p_onset + rng.integers(90, 125, n)),
        "qrs_onset": qrs_onset,
        "qrs_end": qrs_onset + np.rint(knobs["qrs_ms"]).astype(int),
        "t_end": qrs_onset + np.rint(knobs["qt_ms"]).astype(int),
        "p_axis": np.where(no_p, 29999, rng.integers(20, 76, n)),
        "qrs_axis": np.rint(knobs["qrs_axis_deg"]).astype(int),
        "t_axis": np.rint((t_axis + 180) % 360 - 180).astype(int),
    })


MIMIC_GAIN = 200.0  # ADC units per mV (5 µV per unit), as in the real headers


def mimic_header(hea: Path, ecg_time: str) -> None:
    """Rewrite a header as MIMIC-IV-ECG writes it: ``NAME 12 500 5000 HH:MM:SS DD/MM/YYYY``, gain
    ``200.0(0)/mV`` and unsigned 16-bit checksums (the subject comment is written by the writer)."""
    lines = hea.read_text().split("\n")
    date, time = ecg_time.split(" ")
    year, month, day = date.split("-")
    lines[0] = f"{lines[0]} {time} {day}/{month}/{year}"
    gain = f" {MIMIC_GAIN:.10g}/mV "  # as formats.write_wfdb16 writes it
    for k, line in enumerate(lines[1:13], start=1):
        tokens = line.replace(gain, f" {MIMIC_GAIN:.1f}(0)/mV ", 1).split(" ")
        tokens[6] = str(int(tokens[6]) % 65536)
        lines[k] = " ".join(tokens)
    hea.write_text("\n".join(lines))


def write_mimic(root: Path, plans, knobs, poor, defects, unseen, rng) -> pd.DataFrame:
    """MIMIC-IV-ECG layout: WFDB-16 records (real header form), record_list.csv,
    machine_measurements.csv; truth rows."""
    n = len(plans)
    subjects = _unique_ints(rng, max(1, int(0.7 * n)), 10_000_000, 20_000_000)
    subject = subjects[rng.integers(0, subjects.size, n)]
    study = _unique_ints(rng, n, 40_000_000, 50_000_000)
    times = _timestamps(rng, n, 2110, 2200)
    paths = [f"files/p{str(s)[:4]}/p{s}/s{st}/{st}" for s, st in zip(subject, study)]
    for start, batch in render_batches(knobs, rng):
        for k, signal in enumerate(batch):
            i = start + k
            directory = root / Path(paths[i]).parent
            _write_record(formats.write_wfdb16, directory, str(study[i]), signal[_MIMIC_ROWS], MIMIC_LEAD_ORDER,
                          defects.get(i), rng, ".dat", gain=MIMIC_GAIN, comments=[f"# <subject_id>: {subject[i]}"])
            mimic_header(directory / f"{study[i]}.hea", str(times[i]))
    rows = pd.DataFrame({k: knobs[k] for k in ("hr_bpm", "st_region")}).to_dict("records")
    reports = [mimic_statements(p, rows[i], poor[i], defects.get(i), unseen, rng) for i, p in enumerate(plans)]
    head = pd.DataFrame({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": times,
                         "path": paths})
    order = np.lexsort((times, subject))
    head.iloc[order].to_csv(root / "record_list.csv", index=False)
    fields = pd.DataFrame([r + [""] * (datasets.N_REPORT_FIELDS - len(r)) for r in reports],
                          columns=list(datasets.REPORT_COLUMNS))
    table = pd.concat([head[["subject_id", "study_id"]],
                       pd.DataFrame({"cart_id": rng.integers(6000, 6030, n), "ecg_time": times}), fields,
                       mimic_measurements(plans, knobs, rng)], axis=1)
    table.iloc[order].to_csv(root / "machine_measurements.csv", index=False)
    return _truth("mimic", [str(s) for s in study], ["pretrain"] * n, plans, defects, unseen)


# --------------------------------------------------------------------------- PTB-XL


def _heart_axis(axis: float) -> str:
    """PTB-XL ``heart_axis`` code from a frontal QRS axis."""
    return "LAD" if axis < -30 else "RAD" if axis > 90 else "MID"


def ptbxl_database(plans, knobs, folds, rng) -> pd.DataFrame:
    """``ptbxl_database.csv`` rows with the real columns."""
    n = len(plans)
    ids = np.arange(1, n + 1)
    names = [f"{i // 1000 * 1000:05d}/{i:05d}" for i in ids]
    paced = ["ja, pacemaker" if "paced_rhythm" in p.concepts else np.nan for p in plans]
    beats = ["1ES" if {"premature_ventricular_complexes", "premature_atrial_complexes"} & set(p.concepts) else np.nan
             for p in plans]
    return pd.DataFrame({
        "ecg_id": ids, "patient_id": rng.choice(21_000, n, replace=False).astype(float) + 1.0,
        "age": rng.integers(18, 90, n).astype(float), "sex": rng.integers(0, 2, n),
        "height": np.nan, "weight": np.where(rng.random(n) < 0.5, rng.integers(50, 110, n), np.nan),
        "nurse": rng.integers(0, 12, n).astype(float), "site": rng.integers(0, 50, n).astype(float),
        "device": rng.choice(["CS-12   E", "AT-6 C", "AT-60    3", "CS100    3"], n),
        "recording_date": _timestamps(rng, n, 1984, 2001), "report": [ptbxl_report(p, rng) for p in plans],
        "scp_codes": [str(scp_codes(p)) for p in plans],
        "heart_axis": [_heart_axis(a) for a in knobs["qrs_axis_deg"]],
        "infarction_stadium1": np.nan, "infarction_stadium2": np.nan,
        "validated_by": rng.integers(0, 12, n).astype(float), "second_opinion": False,
        "initial_autogenerated_report": False, "validated_by_human": True,
        "baseline_drift": np.where(knobs["baseline_wander_mv"] > 0.1, ", I-AVF", None),
        "static_noise": np.where(knobs["mains_mv"] > 0.02, ", alles", None), "burst_noise": np.nan,
        "electrodes_problems": np.nan, "extra_beats": beats, "pacemaker": paced, "strat_fold": folds,
        "filename_lr": [f"records100/{x}_lr" for x in names], "filename_hr": [f"records500/{x}_hr" for x in names],
    })


def scp_statements_table() -> pd.DataFrame:
    """``scp_statements.csv`` from the catalogue's statement facts, with the real columns."""
    table = datasets.load_scp_statements()
    for column in ("diagnostic", "form", "rhythm"):
        table[column] = table[column].where(table[column] == 1)
    table["Statement Category"] = np.nan
    table["SCP-ECG Statement Description"] = table["description"]
    for column in ("AHA code", "aECG REFID", "CDISC Code", "DICOM Code"):
        table[column] = np.nan
    return table


def write_ptbxl(root: Path, plans, knobs, folds, defects, rng) -> pd.DataFrame:
    """PTB-XL layout: records500/NNNNN/NNNNN_hr WFDB-16, ptbxl_database.csv, scp_statements.csv."""
    database = ptbxl_database(plans, knobs, folds, rng)
    for start, batch in render_batches(knobs, rng):
        for k, signal in enumerate(batch):
            path = root / database["filename_hr"].iat[start + k]
            _write_record(formats.write_wfdb16, path.parent, path.name, signal, PTBXL_LEADS,
                          defects.get(start + k), rng, ".dat")
    database.to_csv(root / "ptbxl_database.csv", index=False)
    scp_statements_table().to_csv(root / "scp_statements.csv")
    splits = [datasets.PTBXL_FOLD_SPLIT[int(f)] for f in folds]
    return _truth("ptbxl", [f"ptbxl/{i}" for i in database["ecg_id"]], splits, plans, defects, ())


# --------------------------------------------------------------------------- CinC form (CPSC2018, CSN)


def cinc_comments(plan: Plan, dataset: str, age: int, sex: str) -> list[str]:
    """CinC header comments: Age, Sex, Dx (SNOMED), Rx/Hx/Sx."""
    return [f"Age: {age}", f"Sex: {sex}", f"Dx: {','.join(dx_codes(plan, dataset))}",
            "Rx: Unknown", "Hx: Unknown", "Sx: Unknown"]


def _mat_first_token(hea: Path) -> None:
    """Rewrite a header's first token as ``NAME.mat`` (a quirk of real CinC files)."""
    lines = hea.read_text().split("\n")
    lines[0] = lines[0].replace(hea.stem, f"{hea.stem}.mat", 1)
    hea.write_text("\n".join(lines))


def write_cinc(root: Path, dataset: str, plans, knobs, paths, lengths, defects, quirks, rng) -> None:
    """CinC-form records (``.hea`` + v4 ``.mat``) at ``root/paths[i]``, cropped to ``lengths[i]``."""
    ages = rng.integers(18, 90, len(plans))
    sexes = rng.choice(["Male", "Female"], len(plans))
    for start, batch in render_batches(knobs, rng, n_samples=int(max(lengths))):
        for k, signal in enumerate(batch):
            i = start + k
            path = root / paths[i]
            comments = cinc_comments(plans[i], dataset, int(ages[i]), str(sexes[i]))
            _write_record(formats.write_cinc_mat, path.parent, path.name, signal[:, : lengths[i]],
                          CANONICAL_LEADS, defects.get(i), rng, ".mat", comments=comments)
            if i in quirks:
                _mat_first_token(path.parent / f"{path.name}.hea")


def cinc_split_groups(dataset: str, names: list[str]) -> np.ndarray:
    """The benchmark split each record will get from :func:`supreme_ecg.datasets.random_split`."""
    split = datasets.random_split([f"{dataset}/{name}" for name in names])
    return np.array([split[f"{dataset}/{name}"] for name in names])


def csn_paths(n: int) -> list[str]:
    """``WFDBRecords/NN/NNN/JSNNNNN`` (100 records per sub-folder, 10 sub-folders per folder)."""
    out = []
    for i in range(n):
        sub = i // 100
        top = sub // 10 + 1
        out.append(f"WFDBRecords/{top:02d}/{top:02d}{sub % 10}/JS{i + 1:05d}")
    return out


def condition_names_table() -> pd.DataFrame:
    """``ConditionNames_SNOMED-CT.csv`` from the CSN task classes plus SB."""
    rows = [(c.name, c.description, c.snomed[0]) for c in catalogue.task_classes("csn")]
    rows.append(("SB", "sinus bradycardia", "426177001"))
    return pd.DataFrame(rows, columns=["Acronym Name", "Full Name", "Snomed_CT"])


# --------------------------------------------------------------------------- truth and driver


def _truth(dataset, record_ids, splits, plans, defects, unseen) -> pd.DataFrame:
    """demo_truth rows of one set."""
    return pd.DataFrame({
        "record_id": record_ids, "dataset": dataset, "split": splits,
        "concepts": [list(p.concepts) for p in plans],
        "hedged": [sorted(p.hedged) for p in plans],
        "variants": [sorted(p.variants) for p in plans],
        "unnamed": [[c for c in p.concepts if c in unseen] for p in plans],
        "defect": [defects[i][0] if i in defects else None for i in range(len(plans))],
        "defect_lead": [defects[i][1] if i in defects else None for i in range(len(plans))],
    })


def _check_unseen(unseen) -> tuple[str, ...]:
    """Validate the unseen concept ids (renderable, not a sinus rhythm or normal ECG)."""
    unseen = tuple(unseen)
    bad = [c for c in unseen if c not in renderable() or c in ("sinus_rhythm", "normal_ecg")]
    if bad:
        raise ValueError(f"unseen_concepts must be renderable concepts, got {bad}")
    return unseen


def _n_defects(n: int, share: float, downstream: bool) -> int:
    """Defective records of a set: ``share`` of MIMIC, half that downstream; ≥ one per kind if any."""
    if share <= 0 or n == 0:
        return 0
    return min(n, max(len(DEFECT_KINDS), round(n * share / (2 if downstream else 1))))


def _fresh_dir(path: Path) -> Path:
    """Remove and recreate a set folder (no stale records from an earlier run)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _set_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per set, so each set depends only on the seed and its own size."""
    children = np.random.SeedSequence(seed).spawn(4)
    return {name: np.random.default_rng(s) for name, s in zip(("mimic", "ptbxl", "cpsc2018", "csn"), children)}


def _generate_mimic(root, n, rng, unseen, defect_share) -> pd.DataFrame:
    """Plan, render and write the pre-training set."""
    plans = plan_conditions(n, rng, MIN_POSITIVES["mimic"], mimic=True)
    add_variants(plans, rng)
    knobs, poor = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, False), rng)
    return write_mimic(_fresh_dir(root / SET_FOLDERS["mimic"]), plans, knobs, poor, defects, unseen, rng)


def _generate_ptbxl(root, n, rng, defect_share) -> pd.DataFrame:
    """Plan (stratified over 10 folds), render and write PTB-XL."""
    folds = rng.permutation(np.arange(n) % 10 + 1)
    plans = stratify(plan_conditions(n, rng, MIN_POSITIVES["downstream"]), folds, rng)
    knobs, _ = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, True), rng)
    return write_ptbxl(_fresh_dir(root / SET_FOLDERS["ptbxl"]), plans, knobs, folds, defects, rng)


def _generate_cinc(root, dataset, n, rng, defect_share) -> pd.DataFrame:
    """Plan (stratified over the benchmark split), render and write CPSC2018 or CSN."""
    if dataset == "cpsc2018":
        paths = [f"training/cpsc_2018/g{i // 1000 + 1}/A{i + 1:04d}" for i in range(n)]
        lengths = rng.integers(6 * FS, 20 * FS + 1, n)
    else:
        paths, lengths = csn_paths(n), np.full(n, 10 * FS)
    names = [p.rsplit("/", 1)[1] for p in paths]
    groups = cinc_split_groups(dataset, names)
    plans = stratify(plan_conditions(n, rng, MIN_POSITIVES["downstream"]), groups, rng)
    knobs, _ = sample_knobs(plans, rng)
    defects = pick_defects(plans, _n_defects(n, defect_share, True), rng)
    n_quirks = min(n, max(2, round(0.02 * n))) if dataset == "cpsc2018" else 0
    quirks = set(rng.choice(n, size=n_quirks, replace=False).tolist())
    set_root = _fresh_dir(root / SET_FOLDERS[dataset])
    write_cinc(set_root, dataset, plans, knobs, paths, lengths, defects, quirks, rng)
    if dataset == "csn":
        condition_names_table().to_csv(set_root / "ConditionNames_SNOMED-CT.csv", index=False)
    return _truth(dataset, [f"{dataset}/{name}" for name in names], list(groups), plans, defects, ())


def generate_demo(out_root, seed: int, n_pretrain: int = 2000, n_ptbxl: int = 400, n_cpsc: int = 300,
                  n_csn: int = 400, unseen_concepts=UNSEEN_DEFAULT, defect_share: float = 0.02) -> dict:
    """Write the four demo sets and ``demo_truth.parquet`` under ``out_root``; returns counts."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    unseen = _check_unseen(unseen_concepts)
    rngs = _set_rngs(seed)
    truth = pd.concat([
        _generate_mimic(root, n_pretrain, rngs["mimic"], unseen, defect_share),
        _generate_ptbxl(root, n_ptbxl, rngs["ptbxl"], defect_share),
        _generate_cinc(root, "cpsc2018", n_cpsc, rngs["cpsc2018"], defect_share),
        _generate_cinc(root, "csn", n_csn, rngs["csn"], defect_share),
    ], ignore_index=True)
    truth.to_parquet(root / "demo_truth.parquet", index=False)
    defects = truth["defect"].dropna()
    return {
        "records": truth.groupby("dataset", sort=False).size().to_dict(),
        "defects": {f"{d}/{k}": int(v) for (d, k), v in defects.groupby([truth["dataset"], defects]).size().items()},
        "unseen_concepts": list(unseen),
    }
