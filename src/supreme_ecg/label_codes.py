"""AUDIT ONLY: label names → SCP-ECG codes / SNOMED CT codes, for extraction-quality figures and reports.

Never used for training labels (the extraction stage does not import this module). Inputs are file
paths given by the caller: PTB-XL's ``scp_statements.csv`` (code in the first column; names from
``description`` and ``SCP-ECG Statement Description``) and PhysioNet Challenge SNOMED tables
(``snomed_code``, ``dx_name``, ``abbreviation``). Each name becomes one or more normalised *forms*
(:func:`normalise`; "a/b" gives both words, a parenthesised part is optional, "ischemic in X leads" and
"X ischemia" read alike; general synonyms such as "non-diagnostic" = "nonspecific", "abnormal t wave" =
"t wave abnormality", "intraventricular delay" = "conduction disturbance"). A form that is a code's own
normalised name wins over a form derived from another code's name. A label name maps to a code by

1. exact match of its normalised form against the forms of every code (``method = "exact"``), else
2. the nearest form by the text encoder (:class:`supreme_ecg.model.TextEncoder`, MiniLM, L2-normalised
   embeddings, so cosine = dot product), accepted if its similarity ≥ ``threshold``
   (``method = "nearest"``; the similarity is always written down).

:data:`DEFAULT_THRESHOLD` was chosen on the *tune* split of the extraction-quality audit only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

DEFAULT_THRESHOLD = 0.80
# spelling and synonym rewrites applied to both sides before matching (general ECG usage)
_SPELLING = ((r"isch(a)?em(ic|ia)?", "ischemia"), (r"\bwolf\b", "wolff"), (r"\ba v\b", "av"),
             (r"\b([qrtp]) waves\b", r"\1 wave"), (r"\(former [^)]*\)", ""),
             (r"\b(?:myocardial )?infarct(?:ion)?\b", "infarct"), (r"\bmyocardial ischemia\b", "ischemia"),
             (r"\bextrasystoles?\b", "premature complex"), (r"\b(?:contractions?|beats?|complexes)\b", "complex"),
             (r"\bpremature complex complex\b", "premature complex"), (r"\blong\b", "prolonged"),
             (r"\b(qt|pr|pq) interval\b", r"\1"), (r"\batrial abnormality\b", "atrial enlargement"),
             (r"\bvoltages\b", "voltage"), (r"\bsupraventricular premature\b", "atrial premature"),
             (r"\bintraventricular (?:conduction )?(?:delay|disorder|disturbance|block)\b",
              "intraventricular conduction disturbance"),
             (r"\bbigeminy\b", "bigeminal pattern"), (r"\btrigeminy\b", "trigeminal pattern"),
             (r"\belectrolytic\b", "electrolyte"),
             (r"\b(?:artificial )?(?:pacemaker|paced)(?: rhythm)?\b", "artificial pacemaker"),
             (r"\bnon diagnostic\b", "nonspecific"), (r"\babnormalities\b", "abnormality"),
             (r"(?<![(\w])(?<!st )([ptu])\b(?! waves?\b)(?!\))", r"\1 wave"),
             (r"\babnormal ((?:st t|st|qrs|[pqrtu])(?:\(t\)| wave| segment)?)(?!\w)", r"\1 abnormality"),
             (r"\bnonspecific ((?:st t|st|t)(?: wave)?) (?:flattening|flat)\b", r"nonspecific \1 changes"))  # fmt: skip


def normalise(name: str) -> str:
    """Lower case, punctuation dropped, then the spelling/synonym rewrites of ``_SPELLING``."""
    s = str(name).casefold().replace("non-specific", "nonspecific")
    s = re.sub(r"\((?:s|es)\)", "", s)
    s = " ".join(re.sub(r"[^\w()/+]+", " ", s.replace("-", " ")).split())
    for pattern, repl in _SPELLING:
        s = re.sub(pattern, repl, s)
    return " ".join(s.split())


def forms(name: str) -> set[str]:
    """Normalised variants of a code's name: with and without a parenthesised part, each "/" option."""
    base = normalise(name)
    out = {base, " ".join(re.sub(r"\([^)]*\)", " ", base).split()), " ".join(base.replace("(", " ").replace(")", " ").split())}
    for f in list(out):
        m = re.search(r"(\w+)/(\w+)", f)
        if m:
            out |= {f.replace(m.group(0), m.group(1)), f.replace(m.group(0), m.group(2))}
    for f in list(out):  # "ischemic in anterior leads" also reads "anterior ischemia"
        m = re.fullmatch(r"(ischemia|subendocardial injury) in (\w+) leads", f)
        if m:
            out.add(f"{m.group(2)} {m.group(1)}")
        if f.startswith("nonspecific "):  # the head without its qualifier: "st depression"
            out.add(f.removeprefix("nonspecific "))
        if f.startswith("normal functioning "):  # "normal functioning artificial pacemaker"
            out.add(f.removeprefix("normal functioning "))
        if " or " in f and len(f.split(" or ")[0].split()) > 1:  # "electrolyte disturbance or drug"
            out.add(f.split(" or ")[0])
    return {f for f in out if f and "/" not in f and "(" not in f}


def _bag(form: str) -> tuple[str, ...]:
    return tuple(sorted(form.split()))


@dataclass(frozen=True)
class CodeMatch:
    """A label name's code: ``code`` ("" when none), the matched form, method, cosine similarity."""

    name: str
    code: str
    matched: str
    method: str  # exact | nearest | none
    similarity: float


def scp_names(scp_statements_csv) -> pd.DataFrame:
    """(code, form) rows of a PTB-XL ``scp_statements.csv``: description, statement description, code."""
    table = pd.read_csv(Path(scp_statements_csv), index_col=0)
    rows = []
    for code, r in table.iterrows():
        for col in ("description", "SCP-ECG Statement Description"):
            text = r.get(col)
            if isinstance(text, str) and text.strip() and not text.strip().startswith("in "):
                rows += [(str(code), f) for f in forms(text)]
    return _primary_first(rows, table[[c for c in ("description", "SCP-ECG Statement Description") if c in table]])


def _primary_first(rows: list, table: pd.DataFrame) -> pd.DataFrame:
    """(code, form) rows, each code's own normalised names before derived forms (a shared form keeps its owner)."""
    primary = {(str(c), normalise(t)) for c, r in table.iterrows() for t in r if isinstance(t, str)}
    rows = sorted(rows, key=lambda r: r not in primary)
    return pd.DataFrame(rows, columns=["code", "form"]).drop_duplicates(ignore_index=True)


def snomed_names(*snomed_csvs) -> pd.DataFrame:
    """(code, form) rows of PhysioNet Challenge SNOMED tables: ``dx_name`` and ``abbreviation``."""
    rows = []
    for path in snomed_csvs:
        table = pd.read_csv(Path(path), dtype={"snomed_code": str})
        for _, r in table.iterrows():
            for col in ("dx_name", "abbreviation"):
                if isinstance(r.get(col), str) and r[col].strip():
                    rows += [(str(r["snomed_code"]), f) for f in forms(r[col])]
    return pd.DataFrame(rows, columns=["code", "form"]).drop_duplicates(ignore_index=True)


class CodeMapper:
    """Maps label names onto the codes of one name table (:func:`scp_names` or :func:`snomed_names`)."""

    def __init__(self, names: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, encoder=None):
        """``encoder``: anything with ``encode(list[str]) -> (n, d)`` L2-normalised (default MiniLM)."""
        self.names, self.threshold, self._encoder = names.reset_index(drop=True), threshold, encoder
        self._exact: dict[str, str] = {}
        for form, code in zip(self.names.form, self.names.code):  # the first row of a form wins
            self._exact.setdefault(form, code)
        self._bags = {}
        for form, code in zip(self.names.form, self.names.code):
            self._bags.setdefault(_bag(form), code)
        self._form_emb = None
        self._memo: dict[str, CodeMatch] = {}

    @property
    def encoder(self):
        if self._encoder is None:
            from supreme_ecg.model import TextEncoder

            self._encoder = TextEncoder()
        return self._encoder

    def map(self, names) -> list[CodeMatch]:
        """One :class:`CodeMatch` per name (exact first, else nearest neighbour above the threshold)."""
        names = [str(n) for n in names]
        todo = [n for n in dict.fromkeys(names) if n not in self._memo]
        nearest = []
        for n in todo:
            form = normalise(n)
            if form in self._exact:
                self._memo[n] = CodeMatch(n, self._exact[form], form, "exact", 1.0)
            elif _bag(form) in self._bags:  # same words in another order
                self._memo[n] = CodeMatch(n, self._bags[_bag(form)], form, "exact", 1.0)
            else:
                nearest.append(n)
        if nearest:
            if self._form_emb is None:
                self._form_emb = self.encoder.encode(list(self.names.form))
            sims = self.encoder.encode([normalise(n) for n in nearest]) @ self._form_emb.T
            best = sims.max(dim=1)
            for n, sim, j in zip(nearest, best.values.tolist(), best.indices.tolist()):
                code = self.names.code[j] if sim >= self.threshold else ""
                self._memo[n] = CodeMatch(n, code, self.names.form[j], "nearest" if code else "none", float(sim))
        return [self._memo[n] for n in names]

    def table(self, names) -> pd.DataFrame:
        """The mapping of ``names`` as a table (name, code, matched, method, similarity)."""
        return pd.DataFrame([m.__dict__ for m in self.map(names)], columns=["name", "code", "matched", "method", "similarity"])
