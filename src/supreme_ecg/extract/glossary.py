"""The general ECG glossary of the offline extractor (``resources/glossary.yaml``), compiled.

:func:`glossary` loads the YAML; :func:`matcher` compiles every entry into one regex over *folded*
text (casefolded, diacritics stripped character by character so that spans keep their offsets;
see :func:`fold`). :func:`rules_version` is a content hash of the glossary and of the source of the
modules that apply it; it goes into the lexicon's model name and cache keys, so editing a rule or the
code that reads statements never reuses an old answer. Nothing here reads the benchmark definition.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

#: modules whose source is part of :func:`rules_version` (the offline backend's code)
RULE_MODULES = ("glossary.py", "lexicon.py")

#: sections in match priority order (an entry listed in two sections takes the first)
KINDS = ("remarks", "verdicts", "lead_groups", "acuity", "severity", "hedges_before", "hedges_after",
         "negations_before", "negations_after", "findings", "connectors", "modifiers", "words")  # fmt: skip


def _text() -> str:
    return resources.files("supreme_ecg.resources").joinpath("glossary.yaml").read_text("utf-8")


@lru_cache(maxsize=1)
def glossary() -> dict:
    """The parsed glossary (``version`` plus one mapping or list per section)."""
    data = yaml.safe_load(_text())
    missing = [k for k in KINDS if k not in data]
    if missing or "version" not in data:
        raise ValueError(f"glossary.yaml lacks {missing or ['version']}")
    return data


@lru_cache(maxsize=1)
def rules_version() -> str:
    """sha256 (hex) of the glossary text and the offline backend's source: the offline rules' version."""
    here = resources.files("supreme_ecg.extract")
    sources = [here.joinpath(name).read_text("utf-8") for name in RULE_MODULES]
    return hashlib.sha256("\n".join([_text(), *sources]).encode()).hexdigest()


_GARBLED_U = re.compile(r"(?<=[a-z])#(?=[a-z])|(?<![\w#])#(?=[a-z])")


def fold(s: str) -> str:
    """Casefolded, each character's diacritics dropped (ä→a, å→a, é→e), '#' between letters → 'u'.

    The result has the same length as ``s`` (offsets stay valid); ß stays ß.
    """
    out = "".join(unicodedata.normalize("NFD", c)[0] if c != "ß" else c for c in s.casefold()) if s else s
    if len(out) != len(s):  # casefold changed the length (rare letters): fold character by character
        out = "".join((unicodedata.normalize("NFD", c.lower())[0] if len(c.casefold()) != 1 else
                       unicodedata.normalize("NFD", c.casefold())[0]) for c in s)  # fmt: skip
    return _GARBLED_U.sub("u", out)


_UMLAUT = {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "ae", "Ö": "oe", "Ü": "ue"}


def _variants(phrase: str) -> set[str]:
    """The phrase folded, and with German umlauts written ae/oe/ue (both spellings occur)."""
    p = " ".join(phrase.casefold().split())
    forms = {fold(p)}
    if any(c in _UMLAUT for c in p):
        forms.add(fold("".join(_UMLAUT.get(c, c) for c in p)))
    return forms


def phrase_pattern(p: str) -> str:
    """Regex for a folded phrase: word boundaries, spaces and hyphens interchangeable and optional."""
    out: list[str] = []
    for i, c in enumerate(p):
        if c in " -":
            if not out or out[-1] != r"[\s\-]*":
                out.append(r"[\s\-]*")
        else:
            out.append(re.escape(c) + ("-?" if c.isalnum() and i + 1 < len(p) and p[i + 1].isalnum() else ""))
    start = "(?<![\\w#])" if p[0].isalnum() else ""
    end = "(?![\\w#])" if p[-1].isalnum() else ""
    return start + "".join(out) + end


def key(text: str) -> str:
    """Lookup key of an entry or a matched text: folded, spaces and hyphens removed."""
    return re.sub(r"[\s\-]+", "", fold(" ".join(text.casefold().split())))


@dataclass(frozen=True)
class Term:
    """One glossary entry: its section (``kind``) and value (English text, qualifier or lead group)."""

    kind: str
    value: object


@dataclass(frozen=True)
class Matcher:
    """All entries as one regex (longest first) plus key → :class:`Term`."""

    pattern: re.Pattern
    terms: dict

    def finditer(self, folded: str, start: int = 0, end: int | None = None):
        """(start, end, Term) of non-overlapping entries in ``folded[start:end]``."""
        for m in self.pattern.finditer(folded, start, len(folded) if end is None else end):
            if m.end() > m.start():
                yield m.start(), m.end(), self.terms[key(m.group(0))]


def _entries(data: dict):
    """(phrase, Term) for every entry; hedges listed before and after become ``hedges_both``."""
    both = set(data["hedges_before"]) & set(data["hedges_after"])
    for kind in KINDS:
        section = data[kind]
        items = section.items() if isinstance(section, dict) else ((p, None) for p in section)
        for phrase, value in items:
            k = "hedges_both" if kind.startswith("hedges") and phrase in both else kind
            if kind == "lead_groups":
                for prefix in ("in the ", "in ", ""):
                    yield prefix + phrase, Term(k, (value["region"], tuple(value["leads"])))
            else:
                yield str(phrase), Term(k, value)


@lru_cache(maxsize=1)
def matcher() -> Matcher:
    """The compiled glossary (first section in :data:`KINDS` order wins for a phrase listed twice)."""
    terms: dict[str, Term] = {}
    phrases: set[str] = set()
    for phrase, term in _entries(glossary()):
        for form in _variants(phrase):
            if form.strip():
                terms.setdefault(key(form), term)
                phrases.add(form.strip())
    ordered = sorted(phrases, key=lambda p: (-len(p), p))
    return Matcher(re.compile("|".join(f"(?:{phrase_pattern(p)})" for p in ordered)), terms)
