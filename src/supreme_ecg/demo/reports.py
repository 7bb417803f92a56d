"""Report wording of the demo: MIMIC-IV-ECG machine statements, PTB-XL reports and label codes.

Machine statements read as the real ones are written ("Sinus rhythm with borderline 1st degree A-V
block", "Possible anterior infarct - age undetermined", "Borderline ECG", "*** ... ***"); unseen
concepts are never named (a guard replaces any statement that would). PTB-XL free text mixes
German/Swedish and English phrases; ``scp_codes`` and CinC ``#Dx`` codes come from the concepts.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

import numpy as np

from supreme_ecg.demo.conditions import conditions
from supreme_ecg.demo.plan import IMPLIED, SINUS_RHYTHMS, Plan
from supreme_ecg.leads import CANONICAL_LEADS, MIMIC_LEAD_ORDER, canonical_lead_name

#: Findings a machine reader calls borderline rather than abnormal.
MILD = frozenset({
    "first_degree_av_block", "incomplete_right_bundle_branch_block", "left_axis_deviation", "right_axis_deviation",
    "low_t_wave", "t_wave_abnormality", "nonspecific_st_t_abnormality", "premature_atrial_complexes",
    "high_qrs_voltage", "low_qrs_voltage", "early_repolarization", "u_wave", "sinus_arrhythmia",
})
MILD_MIMIC = MILD | {"premature_ventricular_complexes", "borderline_pr"}
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
MARKED_BRADY_BPM = 40.0
_ENGLISH_EXTRA = ["with", "rapid", "ventricular", "response", "marked", "complete", "1st", "2nd", "a-v", "pr", "mobitz", "wenckebach", "leftward", "rightward", "criteria", "for", "are", "voltages", "mitrale", "pulmonale", "overload", "segments", "depressed", "changes", "and", "non-specific", "inverted", "negative", "flat", "flattening", "long", "prolongation", "infarct", "mi", "old", "age", "undetermined", "-", "anteroseptal", "ischemia", "ischemic", "in", "leads", "anterolateral", "inferolateral", "contractions", "complex", "extrasystoles", "ectopic", "paroxysmal", "electronic", "pacemaker", "preexcitation", "pre-excitation", "parkinson", "white", "wolff", "within", "limits", "no", "definite", "pathology", "ekg", "irregularity", "abnormal", "repolarisation", "benign", "frontal", "horizontal", "the", "a", "fib", "aflutter", "a-fib", "a-flutter", "disturbance", "hemiblock", "af", "lbbb", "rbbb", "lvh", "elevations", "depressions"]


# --------------------------------------------------------------------------- vocabulary


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


@cache
def phrases(cid: str) -> dict[str, tuple[str, ...]]:
    """A concept's synonyms by kind: ``en``, ``abbr``, ``foreign``."""
    out: dict[str, list[str]] = {"en": [], "abbr": [], "foreign": []}
    for synonym in conditions()[cid].synonyms:
        out[_phrase_kind(synonym)].append(synonym)
    return {k: tuple(v) for k, v in out.items()}


@cache
def mention_pattern(cids: tuple[str, ...]) -> re.Pattern | None:
    """Case-insensitive word-boundary regex of every synonym, mention and name of ``cids`` (None if empty)."""
    terms = {s.lower() for cid in cids
             for s in (*conditions()[cid].synonyms, *conditions()[cid].mentions, conditions()[cid].name)}
    if not terms:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)



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

