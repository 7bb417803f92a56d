"""The offline open extractor: statement → finding phrases → entities, with no closed label list.

A statement is read left to right as a stream of tokens: lead lists ("in ii, iii, avf", "v1-3",
"v5,6"), glossary entries (:mod:`~supreme_ecg.extract.glossary`: findings, modifiers, word
translations, hedges, negations, acuity, severity, connectors, verdicts, remarks, lead groups) and
plain words. Tokens build *phrases*: a connector ("with", "and", ",", "oder"), a hedge or negation
cue, a lead list or a glossary finding closes the phrase before it (German and Swedish machine
reports are run-ons: "sinusrhythmus linkstyp t abnorm ..."). Cues become the phrase's polarity
(negation → absent, hedge → uncertain; a cue before a phrase also covers phrases coordinated with it
by "and"/"or"), acuity, severity and leads its qualifiers; verdicts, remarks (comparisons, report
status, quality, commentary) and what follows a remark yield nothing. Each phrase's English words,
minus edge stop words, are the entity's ``name``; a phrase no rule knows keeps its own words.

Phrase rules after reading: a region list before one finding is distributed, one entity per region
("inferior/lateral st-t changes" → "inferior st-t changes" + "lateral st-t changes"); a predicate after
"is/are" moves before its subject ("st-t changes are nonspecific" → "nonspecific st-t changes"); a
one-word noun after "/" borrows its partner's modifiers ("atrial flutter/fibrillation"); a phrase whose
name extends the one before it replaces it ("2nd degree a-v block, mobitz ii" → one entity).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from supreme_ecg.extract.answers import Answer, validate_answer
from supreme_ecg.extract.glossary import fold, matcher, rules_version
from supreme_ecg.extract.statements import is_noise, normalise_statement, split_statements

_LEAD = r"(?:avr|avl|avf|v[1-9]r?|iii|ii|i)"
_ITEM = rf"(?:{_LEAD}(?:\s*-\s*v?[1-9](?!\d))?|[1-9](?![\d.:x]))"
_LEADS = re.compile(
    rf"(?<![\w\-/.])(?P<prefix>(?:in|i|leads?|ableitung(?:en)?|uber)\s+)?(?P<list>{_ITEM}(?:(?:\s*[,/&]\s*|\s+(?:and|und|och)\s+|\s+){_ITEM})*)(?![\w(])"
)
_ITEMS = re.compile(rf"{_LEAD}(?:\s*-\s*v?[1-9](?!\d))?|[1-9]")
_PLURAL = re.compile(r"\((?:s|es|n|en|er|a|e)\)")
_EDGE_WORDS = frozenset(
    ["the", "a", "an", "is", "are", "was", "were", "in", "of", "at", "to", "for", "also", "these", "this", "there", "which", "that", "it", "its", "by", "as", "on", "from", "seen", "noted", "present", "findings", "finding", "evidence", "persist", "persists", "some"]
)
_COORDINATION = frozenset({"and", "or", "and/or", "/", "&", "+", "und", "oder", "sowie", "bzw.", "och", "eller"})
CONTENT = ("findings", "modifiers", "words", "text")

# category by general keywords, first rule that matches wins
CATEGORY_RULES = (
    ("ischaemia_infarction", r"infarct|ischem|injur|myocardial damage|aneurysm|\bmi\b|necrosis|myocardial involvement"),
    ("conduction", r"block|conduction|fascic|hemiblock|wpw|pre-?excitation|\bpr\b|\bpq\b|aberra|delay|av dissociation"),
    ("hypertrophy", r"hypertroph|enlargement|overload|strain|voltage criteria|p (?:pulmonale|mitrale|sinistro|dextro)"
                    r"|atrial abnormality"),
    ("rhythm", r"rhythm|tachy|brady|fibrillation|flutter|arrhythm|premature|extrasystol|ectopic|escape|bigemin"
               r"|trigemin|paced|pacemaker|pacing|beats?\b|contraction|ventricular response|ventricular rate|pause"
               r"|asystole|sinus"),
    ("axis", r"axis|transition|rotation"),
    ("morphology", r"\bst\b|st-t|t waves?|\bqt|qrs|q waves?|r waves?|p waves?|voltage|u waves?|repolari|\bj\b"
                   r"|\bqs\b|complex|amplitude|low|flat|invert"),
)  # fmt: skip
_CATEGORY = [(c, re.compile(p)) for c, p in CATEGORY_RULES]


def category_of(name: str) -> str:
    """The category of a finding name by :data:`CATEGORY_RULES` ("other" if none applies)."""
    return next((c for c, p in _CATEGORY if p.search(name)), "other")


@dataclass
class _Token:
    kind: str  # a glossary section, "text", "leads" or "dash"
    value: object
    start: int
    end: int


@dataclass
class _Phrase:
    parts: list = field(default_factory=list)  # (english, start, end, kind)
    polarity: str = "present"
    cue_before: bool = False
    acuity: str = ""
    severity: str = ""
    region: str = ""
    leads: list = field(default_factory=list)
    sealed: bool = False
    joined_by: str = ""  # the connector before this phrase

    def content(self) -> bool:
        return bool(self.parts)

    def only_modifiers(self) -> bool:
        return all(p[3] == "modifiers" for p in self.parts)


def _expand_leads(text: str) -> list[str]:
    """Lead names of a lead list: "v2-5" → v2..v5, "v5,6" → v5, v6, "ii, iii, avf" as written."""
    out: list[str] = []
    for item in _ITEMS.findall(text):
        item = re.sub(r"\s+", "", item)
        if item.isdigit():
            if out and out[-1].startswith("v"):
                out.append(f"v{item}")
            continue
        m = re.fullmatch(r"v([1-9])-v?([1-9])", item)
        out.extend(f"v{i}" for i in range(int(m[1]), int(m[2]) + 1)) if m else out.append(item.split("-")[0])
    return list(dict.fromkeys(out))


def _lead_spans(folded: str) -> list[_Token]:
    """Lead lists: with a prefix ("in", "leads"), or of two or more leads, or naming a v/aV lead."""
    found = []
    for m in _LEADS.finditer(folded):
        items = _ITEMS.findall(m["list"])
        named = m["prefix"] or len(items) > 1 or not re.fullmatch(r"i{1,3}", items[0].strip())
        if named and items and not items[0].strip().isdigit():
            found.append(_Token("leads", _expand_leads(m["list"]), m.start(), m.end()))
    return found


def tokens(statement: str) -> list[_Token]:
    """Lead lists, glossary entries and plain words of a normalised statement, in order."""
    folded = fold(statement)
    out: list[_Token] = []
    pos = 0
    for lead in [*_lead_spans(folded), None]:
        end = lead.start if lead is not None else len(folded)
        for s, e, term in matcher().finditer(folded, pos, end):
            out.extend(_words(statement, pos, s))
            out.append(_Token(term.kind, term.value, s, e))
            pos = e
        out.extend(_words(statement, pos, end))
        if lead is not None:
            out.append(lead)
            pos = lead.end
    return out


def _words(statement: str, start: int, end: int) -> list[_Token]:
    """Plain words of ``statement[start:end]``; a free-standing dash is a "dash" token."""
    out = []
    for m in re.finditer(r"\S+", statement[start:end]):
        word = m.group(0)
        s = start + m.start()
        if word in ("-", "\u2013", "\u2014", "--"):
            out.append(_Token("dash", None, s, s + len(word)))
            continue
        left = len(word) - len(word.lstrip(_STRIP))
        core = word.strip(_STRIP)
        if core.startswith("(") and ")" not in core:
            core, left = core[1:], left + 1
        if core.endswith(")") and "(" not in core:
            core = core[:-1]
        if core:
            out.append(_Token("text", core, s + left, s + left + len(core)))
    return out


_STRIP = ".,:;!*[]'\"-?"


class _Reader:
    """Builds phrases from tokens (see the module docstring)."""

    def __init__(self, toks: list[_Token], folded: str):
        self.folded = folded
        self.toks, self.phrases, self.cur, self.pending = toks, [], _Phrase(), {}

    def close(self, joined_by: str = "") -> None:
        if self.cur.content():
            self.phrases.append(self.cur)
        carry = self.cur.polarity if joined_by in _COORDINATION and self.cur.cue_before else None
        self.cur = _Phrase(joined_by=joined_by)
        if carry:
            self.pending.setdefault("polarity", carry)

    def start(self) -> None:
        """Apply the pending before-cues to the (new) current phrase."""
        if not self.cur.content():
            if "polarity" in self.pending:
                self.cur.polarity, self.cur.cue_before = self.pending.pop("polarity"), True
            for q in ("acuity", "severity"):
                if q in self.pending:
                    setattr(self.cur, q, self.pending.pop(q))

    def content_follows(self, i: int) -> bool:
        """True if a content token comes before the next boundary."""
        for t in self.toks[i + 1:]:
            if t.kind in CONTENT:
                return True
            if t.kind not in ("acuity", "severity", "hedges_before", "hedges_both", "negations_before"):
                return False
        return False

    def target(self) -> _Phrase | None:
        """The phrase a trailing qualifier belongs to: the current one, else the last closed one."""
        return self.cur if self.cur.content() else (self.phrases[-1] if self.phrases else None)

    def qualify(self, i: int, attr: str, value: str) -> None:
        """Acuity trails its finding ("infarct, old"; "infarkt alter unbest."), severity leads ("marked ...")."""
        follows = self.content_follows(i)
        if attr == "acuity" and self.cur.content():
            self.cur.acuity = value
        elif follows:
            if attr == "severity" and self.cur.content():
                self.close()
            self.pending[attr] = value
        elif (t := self.target()) is not None:
            setattr(t, attr, value)

    def cue_after(self, polarity: str) -> None:
        t = self.target()
        if t is not None and t.polarity != "absent":
            t.polarity = polarity
        self.close()

    def add(self, t: _Token, english: str) -> None:
        """Append a content token; a finding is a phrase boundary (after modifiers it merges with them)."""
        if self.cur.sealed or (t.kind == "findings" and self.cur.content() and not self.cur.only_modifiers()):
            self.close()
        self.start()
        self.cur.parts.append((english, t.start, t.end, t.kind))
        self.cur.sealed = t.kind == "findings"

    def read(self) -> list[_Phrase]:
        for i, t in enumerate(self.toks):
            k = t.kind
            if k in ("remarks",):
                self.close()
                break
            if k == "verdicts":
                self.close()
            elif k in CONTENT:
                self.add(t, str(t.value))
            elif k in ("connectors", "dash"):
                self.close(joined := " ".join(self.folded[t.start:t.end].split()) or "-")
                if joined.endswith(" possible"):  # "with possible", "and possible": a hedged partner
                    self.pending["polarity"] = "uncertain"
            elif k == "hedges_before" or (k == "hedges_both" and self.content_follows(i)):
                self.close()
                self.pending["polarity"] = "uncertain"
            elif k in ("hedges_after", "hedges_both"):
                self.cue_after("uncertain")
            elif k == "negations_before":
                self.close()
                self.pending["polarity"] = "absent"
            elif k == "negations_after":
                self.cue_after("absent")
            elif k in ("acuity", "severity"):
                self.qualify(i, k, str(t.value))
            elif k in ("leads", "lead_groups"):
                region, leads = ("", t.value) if k == "leads" else t.value
                target = self.target()
                if target is not None:
                    target.leads.extend(leads)
                    target.region = target.region or region
                    self.cur.sealed = self.cur.content()
        self.close()
        return self.phrases


def _clean_name(words: list[str]) -> str:
    """Lower-case name from English parts: plural markers and edge stop words dropped."""
    name = _PLURAL.sub("", " ".join(words).casefold())
    toks = name.replace("(", " (").split()
    while toks and toks[0].strip(",:;") in _EDGE_WORDS:
        toks.pop(0)
    while toks and toks[-1].strip(",:;") in _EDGE_WORDS:
        toks.pop()
    return " ".join(" ".join(toks).replace(" (", "(").split()).strip(" .,;:-/&+")


def _borrow_heads(phrases: list[_Phrase], names: list[str]) -> list[str]:
    """"sinus or ectopic atrial rhythm": a one-word plain part borrows the head noun of its partner."""
    out = list(names)
    for i in range(len(phrases) - 1):
        a, b = phrases[i], phrases[i + 1]
        if (b.joined_by in _COORDINATION and len(a.parts) == 1 and a.parts[0][3] == "text"
                and len(out[i].split()) == 1 and len(out[i + 1].split()) >= 2 and b.parts[-1][3] == "text"):  # fmt: skip
            out[i] = f"{out[i]} {out[i + 1].split()[-1]}"
    return out


_REGION_WORDS = frozenset(["high", "inferior", "anterior", "lateral", "septal", "posterior", "apical", "anteroseptal", "anterolateral", "inferolateral", "inferoposterior", "posterolateral"])


def _is_region(ph: _Phrase) -> bool:
    return all(w in _REGION_WORDS for p in ph.parts for w in p[0].split())


def _region_only(ph: _Phrase) -> bool:
    """A phrase of region words only ("inferior", "ant/septal"), no finding."""
    return bool(ph.parts) and all(p[3] != "findings" for p in ph.parts) and _is_region(ph)


def _distribute_regions(phrases: list[_Phrase]) -> list[_Phrase]:
    """"inferior/lateral st-t changes", "inferior and lateral st elevation": a region list before one finding.

    Rule: the finding is *distributed*, one entity per region ("inferior st-t changes" + "lateral st-t
    changes"), never merged into a compound region word. A region-only phrase coordinated with the phrase
    after it takes that phrase's finding words (its parts after the leading region words); acuity and
    severity written before the list cover every member. Right to left, so chains ("inferior, anterior and
    lateral st elevation") work.
    """
    for i in range(len(phrases) - 2, -1, -1):
        a, b = phrases[i], phrases[i + 1]
        if not (_region_only(a) and b.joined_by in (*_COORDINATION, ",") and not a.leads):
            continue
        k = next((j for j, p in enumerate(b.parts) if not all(w in _REGION_WORDS for w in p[0].split())), None)
        if k is None or k == 0:
            continue
        a.parts = a.parts + b.parts[k:]
        a.sealed = b.sealed
        for q in ("acuity", "severity"):
            setattr(b, q, getattr(b, q) or getattr(a, q))
            setattr(a, q, getattr(a, q) or getattr(b, q))
        if a.polarity == "present" and not a.cue_before:
            a.polarity = b.polarity
    return phrases


_PREDICATES = frozenset(["inverted", "flat", "low", "tall", "negative", "biphasic", "peaked", "notched", "flattened", "abnormal", "prolonged", "wide", "short", "deep", "prominent", "borderline"])


def _front_predicates(phrases: list[_Phrase]) -> list[_Phrase]:
    """"lateral st-t changes are nonspecific" → "nonspecific lateral st-t changes": a predicate adjective after
    "is/are" moves before its subject (the copula goes)."""
    for ph in phrases:
        cop = [j for j, p in enumerate(ph.parts) if p[3] == "text" and p[0] in ("is", "are")]
        if not cop or cop[-1] == 0 or cop[-1] == len(ph.parts) - 1:
            continue
        j = cop[-1]
        tail = ph.parts[j + 1:]
        if all(p[3] == "modifiers" or p[0] in _PREDICATES for p in tail):
            ph.parts = tail + ph.parts[:j]
    return phrases


def _attach_trailing_modifiers(phrases: list[_Phrase]) -> list[_Phrase]:
    """"flacka t-vågor anterolateralt": a modifier-only phrase after a finding becomes its region (else dropped)."""
    out: list[_Phrase] = []
    for ph in phrases:
        if ph.only_modifiers() and out and not ph.cue_before and _is_region(ph):
            prev = out[-1]
            if not prev.region and not any(p[3] == "modifiers" for p in prev.parts):
                prev.region = _clean_name([p[0] for p in ph.parts])
                prev.leads.extend(ph.leads)
            continue
        out.append(ph)
    return out


_BARE = frozenset(["inverted", "flat", "low", "tall", "negative", "biphasic", "peaked", "positive", "notched", "isoelectric", "flattened"])
_T_WAVE = re.compile(r"\bt(?: |-)?waves?\b|^t \w+$|\bt wave")


def _resolve_ellipsis(names: list[str]) -> list[str]:
    """"t waves are inverted in avl and flat in i": a bare adjective borrows "t wave" from the phrase before."""
    out = list(names)
    for i in range(1, len(out)):
        if out[i] in _BARE and _T_WAVE.search(out[i - 1]):
            out[i] = f"{out[i]} t wave"
    return out


def _borrow_modifiers(phrases: list[_Phrase], names: list[str]) -> list[str]:
    """"atrial flutter/fibrillation", "myocardial injury/ischemia": a one-word noun after "/" borrows the words
    before its partner's head ("atrial fibrillation", "myocardial ischemia"). Not after "or": "lv strain or
    ischaemia" is two findings, not "left ventricular ischemia")."""
    out = list(names)
    for i in range(1, len(out)):
        a, b = out[i - 1].split(), out[i].split()
        ph = phrases[i]
        if (ph.joined_by == "/" and len(b) == 1 and len(a) >= 2 and len(ph.parts) == 1 and a[-1].isalpha()
                and b[0].isalpha() and len(b[0]) >= 4 and ph.parts[0][3] in ("text", "words")
                and b[0] not in _REGION_WORDS | _BARE):  # fmt: skip
            out[i] = " ".join(a[:-1] + b)
    return out


def _absorb_restatements(phrases: list[_Phrase], names: list[str]) -> tuple[list, list]:
    """"2nd degree a-v block, mobitz ii": a phrase whose name extends the one before it ("second degree av
    block" → "second degree av block mobitz ii") replaces it (one entity, the text spans both)."""
    ph_out: list[_Phrase] = []
    nm_out: list[str] = []
    for ph, name in zip(phrases, names):
        if nm_out and nm_out[-1] and name.startswith(nm_out[-1] + " ") and ph.joined_by in (",", "-", ""):
            prev = ph_out.pop()
            nm_out.pop()
            ph.parts = prev.parts + ph.parts
            ph.leads = prev.leads + ph.leads
            if ph.polarity == "present":
                ph.polarity = prev.polarity
            for q in ("acuity", "severity"):
                setattr(ph, q, getattr(ph, q) or getattr(prev, q))
        ph_out.append(ph)
        nm_out.append(name)
    return ph_out, nm_out


def statement_entities(statement: str) -> list[dict]:
    """Answer items (schema dicts: text, name, polarity, category, qualifiers) of one statement."""
    statement = normalise_statement(statement)
    if not statement or is_noise(statement):
        return []
    phrases = _Reader(tokens(statement), fold(statement)).read()
    phrases = _attach_trailing_modifiers(_front_predicates(_distribute_regions(phrases)))
    names = [_clean_name([p[0] for p in ph.parts]) for ph in phrases]
    names = _resolve_ellipsis(_borrow_modifiers(phrases, _borrow_heads(phrases, names)))
    phrases, names = _absorb_restatements(phrases, names)
    items = []
    for ph, name in zip(phrases, names):
        if not any(c.isalpha() for c in name):
            continue
        if ph.region and not name.startswith(ph.region):
            name = f"{ph.region} {name}"
        inner = [p for p in ph.parts if p[0].casefold() not in _EDGE_WORDS] or ph.parts
        text = statement[min(p[1] for p in inner): max(p[2] for p in inner)]
        items.append({
            "text": text, "name": name, "polarity": ph.polarity, "category": category_of(name),
            "qualifiers": {"leads": list(dict.fromkeys(ph.leads)), "acuity": ph.acuity, "severity": ph.severity},
        })  # fmt: skip
    return items


class LexiconBackend:
    """Deterministic offline backend: the open extractor of this module (never fails, no label list)."""

    name = "lexicon"
    prompt_version = "none"

    def __init__(self) -> None:
        """Bind to the current glossary (its hash is the model's identity)."""
        self.identity = rules_version()
        self.model = f"open-lexicon-{self.identity[:12]}"

    def extract(self, units: list[str]) -> list[Answer]:
        """One validated answer per unit (all statements of the unit)."""
        return [self._answer(u) for u in units]

    def _answer(self, unit: str) -> Answer:
        t0 = time.perf_counter()
        obj = {"entities": [e for s in split_statements(unit) for e in statement_entities(s)]}
        try:
            entities = validate_answer(obj, unit)
        except Exception as exc:
            obj, entities = {"entities": [], "rule_error": str(exc)}, []
        return Answer(json.dumps(obj, ensure_ascii=False), entities, time.perf_counter() - t0)

    @staticmethod
    def statement_entities(statement: str) -> list[dict]:
        """Answer items of one statement (see :func:`statement_entities`)."""
        return statement_entities(statement)
