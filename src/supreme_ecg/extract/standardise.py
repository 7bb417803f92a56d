"""Standardise open-vocabulary finding names: surface normalisation, a modifier guard, clustering.

Deterministic and auditable: ``normalise_surface`` changes spelling and morphology only (never
synonyms); ``cluster_forms`` merges forms with equal ``order_key`` and then near-duplicates by the
cosine of a frozen text encoder, unless ``modifier_conflict`` says the two differ in a contrastive
ECG modifier (left/right, anterior/inferior, first/second degree, ...). The guard is general ECG
language knowledge; nothing here reads a benchmark or a concept list.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from supreme_ecg.config_schema import schema_defaults

# The config schema's extract.merge_threshold (0.80): a MiniLM cosine chosen on the general ECG phrase
# pairs in tests/test_standardise.py: the highest different-finding pair the guard lets through scored
# 0.762, so 0.80 merges none of them.
DEFAULT_MERGE_THRESHOLD = schema_defaults("extract")["merge_threshold"]

_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth"}
_DEGREE = {"1": "first", "2": "second", "3": "third", "i": "first", "ii": "second", "iii": "third"}
_SPELLING = [  # British -> American, word-internal patterns (pure spelling)
    (r"aemi", "emi"), (r"\bhaem", "hem"), (r"\boedem", "edem"), (r"\boesoph", "esoph"),
    (r"\bpaed", "ped"), (r"\bfoet", "fet"), (r"isation", "ization"), (r"(al|ar|on)ised\b", r"\1ized"),
    (r"\bcentre", "center"), (r"\bfibre", "fiber"), (r"\bekg", "ecg"),
]
_COMBINING = r"(non|antero|infero|postero|latero|intra|inter|supra|bi|tri|pre|post|peri|sub|hemi)"
_SINGULAR_KEEP = {"axes": "axis", "series": "series", "this": "this", "does": "does", "always": "always"}


def _singular(tok: str) -> str:
    """Plural -> singular for one token (words of >= 4 letters, no digits)."""
    if tok in _SINGULAR_KEEP:
        return _SINGULAR_KEEP[tok]
    if len(tok) < 4 or not tok.isalpha() or tok.endswith(("ss", "us", "is")) or not tok.endswith("s"):
        return tok
    if tok.endswith("ies"):
        return tok[:-3] + "y"
    if tok.endswith(("xes", "ches", "shes", "sses")):
        return tok[:-2]
    return tok[:-1]


@lru_cache(maxsize=65536)
def normalise_surface(name: str) -> str:
    """Surface form of a finding name: NFC, casefold, punctuation, spelling, ordinals, plurals.

    Hyphens/slashes between single letters join ("a-v" -> "av", "q-t" -> "qt"), others become a
    space ("st-t" -> "st t"); combining prefixes join ("non-specific", "antero septal" ->
    "nonspecific", "anteroseptal"); "1st"/"1°"/"i°" -> "first (degree)". Idempotent.
    """
    s = unicodedata.normalize("NFC", str(name)).casefold()
    s = re.sub(r"(?<=[a-z])\((?:s|es|n|en|e)\)", "", s)  # optional plural endings: pvc(s), extrasystole(n)
    s = re.sub(r"\b([a-z])\.(?=[a-z]\b)", r"\1", s)  # a.v. -> av.
    s = re.sub(r"\b([a-z])\s*[-/]\s*(?=[a-z]\b)", r"\1", s)  # a-v -> av, s-t -> st
    s = re.sub(r"\b(1|2|3|iii|ii|i)\s*(°|degree\b)", lambda m: _DEGREE[m.group(1)] + " degree ", s)
    s = re.sub(r"\b(1st|2nd|3rd|4th)\b", lambda m: _ORDINALS[m.group(1)], s)
    s = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", s)  # keep "0.2" and "2:1"
    s = re.sub(r"[^\w.:]+|_", " ", s)
    s = re.sub(rf"\b{_COMBINING} (?=[a-z]{{3,}})", r"\1", s)  # non specific -> nonspecific
    for pat, rep in _SPELLING:
        s = re.sub(pat, rep, s)
    return " ".join(_singular(t) for t in s.split())


# Contrastive modifier groups: token -> value. Two phrases conflict when a group's value sets differ;
# for "optional" groups only when both phrases name a value and the values differ.
_GROUPS: dict[str, tuple[dict[str, str], bool]] = {}


def _group(name: str, spec: dict[str, str] | str, optional: bool = False) -> None:
    """Register a group; a plain string lists tokens that are their own values."""
    _GROUPS[name] = ({t: t for t in spec.split()} if isinstance(spec, str) else spec, optional)


_group("side", {"left": "left", "leftward": "left", "right": "right", "rightward": "right"})
_group("location", "anterior inferior lateral posterior septal apical superior basal extensive high")
_group("degree", "first second third")
_group("roman", "i ii iii iv")
_group("completeness", {"incomplete": "incomplete", "partial": "incomplete"})
_group("site", {**{t: t for t in ["atrial", "ventricular", "supraventricular", "junctional", "sinus", "fascicular", "bifascicular", "trifascicular", "biatrial", "biventricular"]}, "nodal": "junctional", "atrium": "atrial",
                "atria": "atrial", "ventricle": "ventricular"})
_group("node", {"av": "av", "atrioventricular": "av", "sa": "sa", "sinoatrial": "sa"})
_group("direction", {"elevation": "up", "elevated": "up", "depression": "down", "depressed": "down"})
_group("rate", {"tachycardia": "fast", "tachycardic": "fast", "rapid": "fast", "fast": "fast",
                "bradycardia": "slow", "bradycardic": "slow", "slow": "slow"})
_group("amplitude", {"high": "hi", "tall": "hi", "increased": "hi", "large": "hi", "giant": "hi",
                     "low": "lo", "small": "lo", "reduced": "lo", "decreased": "lo", "diminished": "lo",
                     "poor": "lo"})
_group("duration", {"prolonged": "long", "prolongation": "long", "long": "long", "lengthened": "long",
                    "wide": "long", "widened": "long", "broad": "long", "short": "short", "shortened": "short",
                    "shortening": "short", "narrow": "short"})
_group("acuity", {"acute": "acute", "hyperacute": "acute", "recent": "recent", "evolving": "acute",
                  "subacute": "recent", "old": "old", "prior": "old", "previous": "old",
                  "healed": "old", "chronic": "old", "undetermined": "undetermined"})
_group("negation", {"no": "neg", "not": "neg", "without": "neg", "absent": "neg", "absence": "neg",
                    "non": "neg"})
_group("arrhythmia", "fibrillation flutter bigeminy trigeminy quadrigeminy couplet triplet")
_group("timing", {"premature": "early", "early": "early", "escape": "late", "late": "late", "delayed": "late"})
_group("shape", {"inversion": "inv", "inverted": "inv", "negative": "inv", "flat": "flat",
                 "flattened": "flat", "flattening": "flat", "peaked": "peak", "biphasic": "biphasic",
                 "notched": "notch", "notching": "notch", "upright": "up"})
_group("wave", {**{t: t for t in ["p", "q", "r", "s", "t", "u", "j", "qrs", "st", "pr", "qt", "rr", "delta"]}, "qtc": "qt"})
_group("leads", {"limb": "limb", "extremity": "limb", "precordial": "chest", "chest": "chest"})
_group("normality", "normal abnormal borderline", optional=True)
_group("number", {})  # filled per phrase: tokens with a digit ("2:1", "v1") must match exactly
_group("hyperhypo", {})  # filled per phrase: hyper-/hypo- words by stem ("hyperkalemia" vs "hypokalemia")

# Compound locations, split only inside the guard (never in the surface form).
_COMPOUNDS = {
    "anteroseptal": "anterior septal", "anterolateral": "anterior lateral", "inferolateral": "inferior lateral",
    "inferoposterior": "inferior posterior", "posterolateral": "posterior lateral",
}


@lru_cache(maxsize=1)
def _expansions() -> dict[str, str]:
    """Single-word abbreviations of the stage's general glossary (lbbb, lvh, pvc, ...) and compound locations."""
    from supreme_ecg.extract.glossary import glossary

    words = {k: v for k, v in glossary()["words"].items() if re.fullmatch(r"[a-z0-9]{2,6}", k) and " " in v}
    return {**words, **_COMPOUNDS}


@lru_cache(maxsize=65536)
def _signature(phrase: str) -> tuple[tuple[str, frozenset], ...]:
    """Per guard group, the set of modifier values the phrase names."""
    toks: list[str] = []
    for t in normalise_surface(phrase).split():
        t = _expansions().get(t, t)
        if t.startswith("non") and len(t) > 5:
            t = "non " + t[3:]  # nonspecific -> non specific: "non" negates
        toks.extend(t.split())
    sig = []
    for name, (mapping, _) in _GROUPS.items():
        if name == "number":
            vals = frozenset(t for t in toks if any(c.isdigit() for c in t))
        elif name == "hyperhypo":
            vals = frozenset(m.group(1) + m.group(2)[:4] for t in toks if t != "hypertrophy"
                             for m in [re.match(r"(hyper|hypo)(\w+)", t)] if m)
        else:
            vals = frozenset(mapping[t] for t in toks if t in mapping)
        sig.append((name, vals))
    return tuple(sig)


def _conflict_sig(sa, sb) -> bool:
    """True when two signatures differ in a contrastive group."""
    return any(va != vb and not (_GROUPS[name][1] and not (va and vb)) for (name, va), (_, vb) in zip(sa, sb))


def modifier_conflict(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ in a contrastive ECG modifier; such phrases never merge."""
    return _conflict_sig(_signature(a), _signature(b))


def order_key(surface: str) -> str:
    """Sorted tokens of the normalised form; the form itself when it names two values of one
    guard group (e.g. "left atrial right ventricular ..."), where order carries the meaning."""
    s = normalise_surface(surface)
    if any(len(v) > 1 for n, v in _signature(s) if n not in ("number", "location", "hyperhypo")):
        return s
    return " ".join(sorted(s.split()))


def _as_numpy(x) -> np.ndarray:
    """Tensor or array -> float32 numpy, rows L2-normalised."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    arr = np.asarray(arr, dtype=np.float32).reshape(len(arr), -1)
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


def embed(encoder, texts: list[str]) -> np.ndarray:
    """(n, d) L2-normalised float32 embeddings of ``texts`` by ``encoder.encode``."""
    return _as_numpy(encoder.encode(list(texts))) if texts else np.zeros((0, 1), np.float32)


def cosine_matrix(encoder, a: list[str], b: list[str]) -> np.ndarray:
    """(len(a), len(b)) cosine similarities (float32)."""
    if not a or not b:
        return np.zeros((len(a), len(b)), np.float32)
    return embed(encoder, a) @ embed(encoder, b).T


class Assignment(NamedTuple):
    """One surface form's cluster: its name (the most frequent member) and cosine to it."""

    surface_form: str
    cluster_name: str
    similarity: float


def cluster_forms(forms: list[str], n_records: list[int], categories: list[str], encoder=None,
                  threshold: float = DEFAULT_MERGE_THRESHOLD) -> list[Assignment]:
    """Greedy deterministic clustering; returns one Assignment per input, in input order.

    Forms are visited by (-n_records, form, category). A form whose ``order_key`` equals any member's
    joins that cluster (similarity 1.0 to a name with the same key, else that member's similarity);
    otherwise it joins the cluster whose name has the highest cosine >= ``threshold``, in the same
    category and without ``modifier_conflict``; otherwise it starts a cluster named after itself.
    ``encoder=None`` merges by ``order_key`` only. The result does not depend on input order.
    """
    if not (len(forms) == len(n_records) == len(categories)):
        raise ValueError("forms, n_records and categories must have the same length")
    order = sorted(range(len(forms)), key=lambda i: (-int(n_records[i]), forms[i], categories[i]))
    uniq = sorted(set(forms))
    emb = embed(encoder, uniq) if encoder is not None and uniq else None
    row = {f: i for i, f in enumerate(uniq)}
    names: list[str] = []  # cluster index -> name form
    name_cat: list[str] = []
    name_sig: list = []
    name_rows = np.zeros((len(uniq), emb.shape[1] if emb is not None else 1), np.float32)
    by_key: dict[str, tuple[int, float]] = {}  # order_key -> (cluster, similarity)
    out: dict[int, Assignment] = {}
    for i in order:
        form, cat = forms[i], categories[i]
        key = order_key(form)
        hit = by_key.get(key)
        if hit is None and emb is not None and names:
            sims = name_rows[:len(names)] @ emb[row[form]]
            sig = _signature(form)
            cand = np.flatnonzero(sims >= threshold)
            for c in cand[np.argsort(-sims[cand], kind="stable")]:
                if name_cat[c] == cat and not _conflict_sig(sig, name_sig[c]):
                    hit = (int(c), float(sims[c]))
                    break
        if hit is None:
            hit = (len(names), 1.0)
            name_rows[len(names)] = emb[row[form]] if emb is not None else 0.0
            names.append(form)
            name_cat.append(cat)
            name_sig.append(_signature(form))
        elif order_key(names[hit[0]]) == key:
            hit = (hit[0], 1.0)
        by_key.setdefault(key, hit)
        out[i] = Assignment(form, names[hit[0]], round(min(hit[1], 1.0), 6))
    return [out[i] for i in range(len(forms))]


def label_id(name: str) -> str:
    """Slug of a label name: ASCII lower case, [a-z0-9_] ("2:1 av block" -> "2_1_av_block")."""
    s = unicodedata.normalize("NFKD", str(name).casefold()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_") or "label"


def unique_label_ids(names: list[str]) -> list[str]:
    """``label_id`` of each name; a repeated slug gets _2, _3, ... in list order."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = cand = label_id(name)
        k = 1
        while cand in seen:
            k += 1
            cand = f"{base}_{k}"
        seen.add(cand)
        out.append(cand)
    return out


def nearest_labels(queries: list[str], label_names: list[str], encoder=None) -> list[tuple[int, float]]:
    """For each query, (index, cosine) of the nearest label name; (-1, nan) without labels.

    Equal ``order_key`` counts as cosine 1.0. ``encoder=None`` finds only such matches
    (otherwise (-1, 0.0)).
    """
    if not label_names:
        return [(-1, float("nan")) for _ in queries]
    keys = {order_key(n): j for j, n in reversed(list(enumerate(label_names)))}  # first label wins
    sims = cosine_matrix(encoder, list(queries), list(label_names)) if encoder is not None else None
    out = []
    for q, query in enumerate(queries):
        j = keys.get(order_key(query))
        if j is not None:
            out.append((j, 1.0))
        elif sims is None:
            out.append((-1, 0.0))
        else:
            j = int(np.argmax(sims[q]))
            out.append((j, float(min(sims[q, j], 1.0))))
    return out


def is_seen(query: str, label_name: str, similarity: float, threshold: float) -> bool:
    """A class counts as seen: same normalised name, or cosine >= threshold and no modifier conflict."""
    if normalise_surface(query) == normalise_surface(label_name):
        return True
    return bool(similarity >= threshold) and not modifier_conflict(query, label_name)
