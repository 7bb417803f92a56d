"""The entity-extraction stage: machine reports → statements → entities → concept labels.

Pipeline (:func:`extract_reports`): stream the manifest (``record_id``, ``report``) → split each
report into normalised units (statements, or the whole report) → answer each distinct unit once,
from the persistent :class:`~supreme_ecg.llm_cache.AnswerCache` or else from an
:class:`ExtractionBackend` → write entities, per-record accounting, the label vocabulary, multi-hot
labels and an audit table of unmapped entities.

Every backend answers in the JSON of :data:`ANSWER_SCHEMA`; :func:`validate_answer` checks it
against the schema and the concept vocabulary (unknown concept ids become ``"unmapped"``, kept
for audit, never invented). :class:`LexiconBackend` is the deterministic offline backend:
synonym matching plus hedge/negation cues. The LLM backends (``ollama``, ``openai``:
:mod:`supreme_ecg.llm_backends`) implement the same protocol, render their prompt with
:func:`render_prompt`, and also yield answers as they complete (``extract_as_completed``) so that
each one is committed to the cache at once: a killed run loses only the requests in flight.
Units a backend could not answer are written to ``quarantine.parquet`` with the reason; they are
never cached and are asked again on the next run.
"""

from __future__ import annotations

import json
import re
import string
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from supreme_ecg.catalogue import concepts, concepts_version
from supreme_ecg.llm_cache import AnswerCache, CachedAnswer, cache_key

SCHEMA_VERSION = 1
PROMPT_VERSION = "entity_extraction_v1"
UNMAPPED = "unmapped"
POLARITIES = ("present", "absent", "uncertain")
CATEGORIES = ("rhythm", "conduction", "morphology", "ischaemia_infarction", "hypertrophy", "axis", "other")
UNITS = ("statement", "report")
UNCERTAIN_POLICIES = ("positive", "negative", "ignore")
BACKEND_CHUNK = 256  # units per backend call: answers reach the cache in chunks
MEMO_SIZE = 200_000  # answers kept in memory between manifest batches

ANSWER_SCHEMA: dict = {
    "title": "ECG statement entities",
    "type": "object",
    "additionalProperties": False,
    "required": ["entities"],
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["text", "concept", "polarity", "category"],
                "properties": {
                    "text": {"type": "string", "description": "verbatim span of the statement"},
                    "concept": {"type": "string", "description": "concept id of the vocabulary, or 'unmapped'"},
                    "polarity": {"type": "string", "enum": list(POLARITIES)},
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                },
            },
        }
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(ANSWER_SCHEMA)


class AnswerError(ValueError):
    """An answer that violates :data:`ANSWER_SCHEMA` (or is not JSON, or quotes text not in its unit)."""


@dataclass(frozen=True)
class Entity:
    """One extracted finding: ``text`` span, ``concept`` id (or ``"unmapped"``), polarity, category."""

    text: str
    concept: str
    polarity: str
    category: str


@dataclass
class Answer:
    """A backend's answer for one unit: raw text, validated entities, latency, error (None if fine)."""

    raw: str
    entities: list[Entity]
    latency_s: float
    error: str | None = None


@runtime_checkable
class ExtractionBackend(Protocol):
    """Anything that turns units (normalised statements or reports) into one :class:`Answer` each.

    Optional extras the stage uses when present: ``extract_as_completed(units)`` yielding
    ``(index, answer)`` as each answer is finished (committed to the cache at once), ``check()``
    raising when the backend cannot work (called by :func:`make_backend`), and a ``stats`` Counter
    of requests, retries, repairs and quarantined units (reported as ``llm_*`` counts).
    """

    name: str
    model: str
    prompt_version: str

    def extract(self, units: list[str]) -> list[Answer]:
        """One answer per unit, in order; failures are answers with ``error`` set."""
        ...


# --------------------------------------------------------------------------- text units

_ABBREVIATION = re.compile(r"(?<!\w)(?:v\.a|z\.n|e\.g|i\.e|ca|bzw|vs|incl|approx)\.", re.IGNORECASE)
_PROTECTED_DOT = "\u2024"
_SEPARATOR = re.compile(r"[;\n\r]+|\.(?!\w)")  # a dot followed by a letter/digit ("0.5", "st.t") is kept
_STARS = re.compile(r"\*{3,}")
_EDGE_PUNCTUATION = " \t.,;:!*-–—_'\"`|"
NOISE_PATTERNS = (
    r"(?:warning: )?(?:poor |suboptimal |bad )?(?:data|signal|recording) quality\b.*",
    r"baseline (?:wander|drift)\b.*",
    r"(?:muscle |motion )?(?:artifact|artefact)s?\b.*",
    r"leads?(?:\(s\))? .*(?:unsuitable for analysis|artifact|artefact).*",
    r"technically (?:unsatisfactory|limited|poor)\b.*",
    r"trace only requested",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in NOISE_PATTERNS))


def clean_mimic_report(fields: Iterable[str | None]) -> str:
    """MERL's cleaning: join non-empty ``report_0..17`` with ". ", strip ``***``, lower-case."""
    parts = [f.strip() for f in fields if isinstance(f, str) and f.strip()]
    return ". ".join(parts).replace("***", "").lower().strip()


def _pieces(report: str | None) -> list[str]:
    """Stripped pieces between separators (empty ones included)."""
    if not isinstance(report, str):
        return []
    text = _ABBREVIATION.sub(lambda m: m.group(0).replace(".", _PROTECTED_DOT), report)
    return [p.replace(_PROTECTED_DOT, ".").strip() for p in _SEPARATOR.split(text)]


def split_statements(report: str | None) -> list[str]:
    """Statements of a report, in order: split on '.', ';', newlines (not decimals, abbreviations)."""
    return [p for p in _pieces(report) if p]


def normalise_statement(s: str) -> str:
    """NFC, casefolded, ``***`` removed, whitespace collapsed, surrounding punctuation stripped."""
    s = unicodedata.normalize("NFC", unicodedata.normalize("NFC", s).casefold())
    return " ".join(_STARS.sub(" ", s).split()).strip(_EDGE_PUNCTUATION)


def is_noise(statement: str) -> bool:
    """True for a normalised statement without letters or about recording quality only."""
    return not any(c.isalpha() for c in statement) or _NOISE.fullmatch(statement) is not None


@dataclass(frozen=True)
class Segmented:
    """A report's units plus the statements dropped as empty or noise."""

    units: tuple[str, ...]
    n_empty: int
    n_noise: int


def segment_report(report: str | None, unit: str = "statement") -> Segmented:
    """Normalised units of a report (statements, or one joined report) with drop counts."""
    normalised = [normalise_statement(s) for s in split_statements(report)]
    kept = [s for s in normalised if s and not is_noise(s)]
    n_empty = sum(1 for s in normalised if not s)
    units = kept if unit == "statement" or not kept else [". ".join(kept)]
    return Segmented(tuple(units), n_empty, len(normalised) - n_empty - len(kept))


# --------------------------------------------------------------------------- answers


def validate_answer(obj: str | dict, unit: str | None = None) -> list[Entity]:
    """Entities of a schema-valid answer; unknown concept ids become "unmapped" (catalogue category)."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise AnswerError(f"answer is not JSON: {exc}") from exc
    errors = sorted(_VALIDATOR.iter_errors(obj), key=lambda e: [str(p) for p in e.path])
    if errors:
        raise AnswerError("; ".join(f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors))
    return [_entity(e, unit) for e in obj["entities"]]


def _entity(item: dict, unit: str | None) -> Entity:
    """One schema-valid entity checked against its unit and the vocabulary."""
    text = " ".join(item["text"].split())
    if not text:
        raise AnswerError("entity text is empty")
    if unit is not None and _squash(text) not in _squash(unit):
        raise AnswerError(f"entity text {text!r} is not a span of the unit")
    concept = concepts().get(item["concept"])
    if concept is None:
        return Entity(text, UNMAPPED, item["polarity"], item["category"])
    return Entity(text, concept.id, item["polarity"], concept.category)


def _squash(s: str) -> str:
    """Casefolded with whitespace collapsed (span comparison)."""
    return " ".join(unicodedata.normalize("NFC", s).casefold().split())


def answer_from_cached(cached: CachedAnswer) -> Answer:
    """An :class:`Answer` rebuilt from a cache row (validated when it was stored)."""
    return Answer(cached.raw, [Entity(**e) for e in cached.entities], cached.latency_s or 0.0)


@lru_cache(maxsize=8)
def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The prompt template ``resources/prompts/{version}.txt``."""
    return resources.files("supreme_ecg.resources").joinpath(f"prompts/{version}.txt").read_text("utf-8")


def vocabulary_listing() -> str:
    """One line per concept: ``id: name (category)`` — the vocabulary shown to an LLM."""
    return "\n".join(f"{c.id}: {c.name} ({c.category})" for c in concepts().values())


def render_prompt(unit: str, version: str = PROMPT_VERSION) -> str:
    """The prompt for one unit: ``$vocabulary``, ``$schema``, ``$statement`` filled in."""
    return string.Template(load_prompt(version)).substitute(
        vocabulary=vocabulary_listing(), schema=json.dumps(ANSWER_SCHEMA, indent=2), statement=unit
    )


# --------------------------------------------------------------------------- lexicon backend

# fmt: off
HEDGES_BEFORE = (
    "possible", "possibly", "probable", "probably", "likely", "may be", "may be due to", "consider",
    "cannot rule out", "can not rule out", "cannot exclude", "suggest", "suggests", "suggesting",
    "suggestive of", "borderline", "questionable", "v.a.", "verdacht auf", "wahrscheinlich", "vermutlich",
    "möglicher", "mögliche", "överväg", "misstänkt", "sannolikt", "möjligen", "möjlig",
)
HEDGES_AFTER = (
    "?", "möglich", "moeglich", "wahrscheinlich", "nicht auszuschliessen", "nicht auszuschließen",
    "nicht ausgeschlossen", "cannot be excluded", "cannot be entirely excluded", "cannot be ruled out",
    "can not be excluded", "not excluded", "is likely", "is a likely cause", "is possible", "is probable",
    "bör övervägas", "kan ej uteslutas", "kan inte uteslutas", "fraglich",
)
NEGATIONS_BEFORE = (
    "no", "not", "without", "no evidence of", "no ecg evidence of", "no definite evidence of", "negative for",
    "absence of", "kein", "keine", "keinen", "keiner", "ohne", "ingen", "inget", "inga", "utan",
)
NEGATIONS_AFTER = ("absent", "is absent", "not seen", "no longer present", "ausgeschlossen", "nicht nachweisbar")
PSEUDO_CUES = (  # look like cues but qualify something else (age, acuity, comparison, a P wave)
    "probably old", "possibly old", "possibly acute", "probably acute", "possibly recent", "wahrscheinlich alt",
    "sannolikt äldre", "möjligen färsk", "keine p-welle erkannt", "inga p-våg funna", "no significant change",
    "not significantly changed",
)
# fmt: on
SUMMARY_PATTERNS = (  # ECG-level verdicts that are no finding: no entity at all
    r"(?:otherwise |probably |possibly )?(?:abnormal|borderline|pathologic|pathological)(?: rhythm)? (?:ecg|ekg)",
    r"(?:ecg|ekg) (?:abnormal|borderline|pathologisch)",
    r"(?:pathologisches|path\.) ?(?:ekg|ecg)|pathologisch|grenzbefund|avvikande (?:ekg|ecg)|gransfall",
)
CUE_WINDOW_BEFORE = 3  # words between a cue and the mention it qualifies
CUE_WINDOW_AFTER = 1
COORDINATORS = frozenset(
    {",", "/", "&", "+", "and", "or", "and/or", ", and", ", or", "und", "oder", "sowie", "bzw.", "och", "eller"}
)


def _fold(s: str) -> str:
    """Strip diacritics character by character (same length: ä→a, ö→o, å→a; ß stays)."""
    return "".join(unicodedata.normalize("NFD", c)[0] for c in s)


def _phrase_pattern(phrase: str) -> str:
    """Regex for a phrase on folded text: word boundaries, spaces/hyphens interchangeable, hyphens optional."""
    p = _fold(normalise_statement(phrase))
    out = []
    for i, c in enumerate(p):
        if c in " -":
            if not out or out[-1] != r"[\s\-]*":
                out.append(r"[\s\-]*")
        else:
            out.append(re.escape(c) + ("-?" if c.isalnum() and i + 1 < len(p) and p[i + 1].isalnum() else ""))
    body = "".join(out)
    return ("(?<!\\w)" if p[0].isalnum() else "") + body + ("(?!\\w)" if p[-1].isalnum() else "")


def _alternation(phrases: Iterable[str]) -> re.Pattern:
    """One regex matching any phrase, longest phrase first (so the longest wins at a position)."""
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    return re.compile("|".join(f"(?:{_phrase_pattern(p)})" for p in ordered))


def _phrase_key(phrase: str) -> str:
    """Lookup key of a phrase or of a matched text: folded, normalised, spaces and hyphens removed."""
    return re.sub(r"[\s\-]+", "", _fold(normalise_statement(phrase)))


def _keyed(pairs: Iterable[tuple[str, object]]) -> dict[str, object]:
    """Phrase-key table; two phrases with one key must agree (else the matcher would be ambiguous)."""
    table: dict[str, object] = {}
    for phrase, value in pairs:
        key = _phrase_key(phrase)
        if table.setdefault(key, value) != value:
            raise ValueError(f"phrase {phrase!r} is ambiguous: {table[key]!r} vs {value!r}")
    return table


@dataclass(frozen=True)
class _Lexicon:
    """Compiled synonym and cue matchers with their phrase-key tables."""

    synonyms: re.Pattern
    concept_of: dict  # phrase key -> concept id
    cues: re.Pattern
    cue_of: dict  # phrase key -> (polarity, "before"|"after"|"both"), None for a pseudo cue
    summary: re.Pattern


def _cue_pairs() -> list[tuple[str, tuple[str, str] | None]]:
    """(phrase, kind) for every cue; a hedge listed before and after becomes "both"."""
    both = set(HEDGES_BEFORE) & set(HEDGES_AFTER)
    kinds = (
        (HEDGES_BEFORE, ("uncertain", "before")),
        (HEDGES_AFTER, ("uncertain", "after")),
        (NEGATIONS_BEFORE, ("absent", "before")),
        (NEGATIONS_AFTER, ("absent", "after")),
        (PSEUDO_CUES, None),
    )
    return [(p, ("uncertain", "both") if p in both else kind) for phrases, kind in kinds for p in phrases]


@lru_cache(maxsize=4)
def _lexicon(vocabulary_version: int) -> _Lexicon:
    """Matchers for the current concept vocabulary (cached per vocabulary version)."""
    synonyms = [(s, c.id) for c in concepts().values() for s in (c.name, *c.synonyms)]
    cues = _cue_pairs()
    return _Lexicon(
        synonyms=_alternation(s for s, _ in synonyms),
        concept_of=_keyed(synonyms),
        cues=_alternation(p for p, _ in cues),
        cue_of=_keyed(cues),
        summary=re.compile("|".join(f"(?:{p})" for p in SUMMARY_PATTERNS)),
    )


@dataclass(frozen=True)
class _Cue:
    """A cue's span, the polarity it implies and the side of the mention it sits on."""

    start: int
    end: int
    polarity: str
    direction: str  # before | after | both


@dataclass
class _Mention:
    """A synonym match and the polarities its cues imply."""

    start: int
    end: int
    concept: str
    polarity_before: str | None = None
    polarity_after: str | None = None
    polarity_inside: str | None = None


def _words(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def _gap_is_coordination(gap: str) -> bool:
    """True if the text between two mentions only coordinates them ("or", ", and", "/")."""
    return " ".join(gap.split()) in COORDINATORS


class LexiconBackend:
    """Deterministic offline backend: concept synonyms on word boundaries plus hedge/negation cues.

    Cues are scoped to their statement: a cue *before* a mention applies to the next mention within
    ``CUE_WINDOW_BEFORE`` words (and to mentions coordinated with it: "no X or Y"), a cue *after*
    one to the previous mention within ``CUE_WINDOW_AFTER`` words; hedges inside a matched synonym
    ("consider anterior ischemia") apply to it. Statements that are ECG-level verdicts ("abnormal ecg", "borderline ecg") yield no entity;
    any other statement without a known synonym yields one ``unmapped`` entity (the whole statement,
    category ``other``) so that unmapped.parquet lists what the vocabulary does not cover.
    """

    name = "lexicon"
    prompt_version = "none"

    def __init__(self) -> None:
        """Bind to the current concept vocabulary."""
        self.vocabulary_version = concepts_version()
        self.model = f"concepts-v{self.vocabulary_version}"
        self._lex = _lexicon(self.vocabulary_version)

    def extract(self, units: list[str]) -> list[Answer]:
        """One answer per unit (never fails)."""
        return [self._answer(u) for u in units]

    def _answer(self, unit: str) -> Answer:
        """Entities of every statement of a unit, as a validated answer."""
        t0 = time.perf_counter()
        obj = {"entities": [e for s in split_statements(unit) for e in self.statement_entities(normalise_statement(s))]}
        entities = validate_answer(obj, unit)
        return Answer(json.dumps(obj, ensure_ascii=False), entities, time.perf_counter() - t0)

    def statement_entities(self, statement: str) -> list[dict]:
        """Answer items (schema dicts) of one normalised statement."""
        folded = _fold(statement)
        if is_noise(statement) or self._lex.summary.fullmatch(folded):
            return []
        mentions = self._mentions(folded)
        cues = self._cues(folded)
        if not mentions:
            polarity = next((p for p in ("absent", "uncertain") if any(c.polarity == p for c in cues)), "present")
            return [{"text": statement, "concept": UNMAPPED, "polarity": polarity, "category": "other"}]
        _assign_cues(mentions, cues, folded)
        vocab = concepts()
        return [
            {
                "text": statement[m.start : m.end],
                "concept": m.concept,
                "polarity": _polarity(m),
                "category": vocab[m.concept].category,
            }
            for m in mentions
        ]

    def _mentions(self, folded: str) -> list[_Mention]:
        """Non-overlapping synonym matches, leftmost then longest."""
        return [
            _Mention(m.start(), m.end(), self._lex.concept_of[_phrase_key(m.group(0))])
            for m in self._lex.synonyms.finditer(folded)
        ]

    def _cues(self, folded: str) -> list[_Cue]:
        """Cue matches (pseudo cues consume their text and are dropped)."""
        found = ((m, self._lex.cue_of[_phrase_key(m.group(0))]) for m in self._lex.cues.finditer(folded))
        return [_Cue(m.start(), m.end(), *kind) for m, kind in found if kind is not None]


def _assign_cues(mentions: list[_Mention], cues: list[_Cue], text: str) -> None:
    """Set each mention's before/after/inside polarity from the cues, then spread over coordination."""
    previous_ends = [0, *(m.end for m in mentions)]
    next_starts = [*(m.start for m in mentions[1:]), len(text)]
    for m, left, right in zip(mentions, previous_ends, next_starts):
        for c in cues:
            if c.direction != "after" and left <= c.start and c.end <= m.start:
                if _words(text[c.end : m.start]) <= CUE_WINDOW_BEFORE:
                    m.polarity_before = c.polarity
            elif c.direction != "before" and m.end <= c.start and c.end <= right:
                if m.polarity_after is None and _words(text[m.end : c.start]) <= CUE_WINDOW_AFTER:
                    m.polarity_after = c.polarity
            elif c.polarity == "uncertain" and m.start <= c.start and c.end <= m.end:
                m.polarity_inside = c.polarity
    for a, b in zip(mentions, mentions[1:]):
        if _gap_is_coordination(text[a.end : b.start]):
            b.polarity_before = b.polarity_before or a.polarity_before
    for a, b in reversed(list(zip(mentions, mentions[1:]))):
        if _gap_is_coordination(text[a.end : b.start]):
            a.polarity_after = a.polarity_after or b.polarity_after


def _polarity(m: _Mention) -> str:
    """Absent beats uncertain beats present."""
    found = {m.polarity_before, m.polarity_after, m.polarity_inside}
    return "absent" if "absent" in found else "uncertain" if "uncertain" in found else "present"


# --------------------------------------------------------------------------- the stage


def unit_key(backend: ExtractionBackend, unit: str, vocabulary_version: int | None = None) -> str:
    """Cache key of a unit: backend, model, prompt version, schema and vocabulary versions, text."""
    version = concepts_version() if vocabulary_version is None else vocabulary_version
    return cache_key(
        backend.name, backend.model, backend.prompt_version, SCHEMA_VERSION, version, normalise_statement(unit)
    )


class _Resolver:
    """Unit → answer: in-memory memo, then the persistent cache, then the backend (misses only)."""

    def __init__(self, backend: ExtractionBackend, cache: AnswerCache, counts: Counter):
        self.backend, self.cache, self.counts = backend, cache, counts
        self.vocabulary_version = concepts_version()
        self.memo: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}

    def resolve(self, units: Iterable[str]) -> dict[str, Answer | None]:
        """Answers for the distinct ``units`` (None where the backend failed in this run)."""
        units = list(dict.fromkeys(units))
        if len(self.memo) + len(units) > MEMO_SIZE:
            self.memo.clear()
        todo = [u for u in units if u not in self.memo and u not in self.failed]
        keys = {u: unit_key(self.backend, u, self.vocabulary_version) for u in todo}
        found = self.cache.get_many(keys.values())
        self.counts["n_cache_hits"] += len(found)
        for u in todo:
            if keys[u] in found:
                self.memo[u] = answer_from_cached(found[keys[u]])
        misses = [u for u in todo if keys[u] not in found]
        for i in range(0, len(misses), BACKEND_CHUNK):
            self._ask(misses[i : i + BACKEND_CHUNK], keys)
        return {u: self.memo.get(u) for u in units}

    def _ask(self, units: list[str], keys: dict[str, str]) -> None:
        """Send units to the backend once; commit each good answer as it arrives, remember failures."""
        self.counts.update(n_backend_calls=1)
        as_completed = getattr(self.backend, "extract_as_completed", None)
        if as_completed is not None:
            for i, a in as_completed(units):
                self._store(units[i], a, keys)
        else:
            answers = self.backend.extract(units)
            if len(answers) != len(units):
                raise RuntimeError(f"backend {self.backend.name} returned {len(answers)} answers for {len(units)} units")
            for u, a in zip(units, answers):
                self._store(u, a, keys)

    def _store(self, u: str, a: Answer, keys: dict[str, str]) -> None:
        """Commit a good answer to the cache at once; a failed one is remembered for quarantine."""
        self.counts["n_backend_units"] += 1
        if a.error is not None:
            self.failed[u] = a.error
        else:
            b = self.backend
            self.cache.put(keys[u], a, unit=u, backend=b.name, model=b.model, prompt_version=b.prompt_version)
            self.memo[u] = a
        self.counts["n_failed_units"] = len(self.failed)


ENTITY_COLUMNS = ("record_id", "unit", "text", "concept_id", "concept_name", "polarity", "category", "backend", "model",
                  "prompt_version")  # fmt: skip
RECORD_COUNT_COLUMNS = ("n_units", "n_entities", "n_unmapped", "n_failed", "n_empty", "n_noise")


def _entity_schema(id_type: pa.DataType) -> pa.Schema:
    """entities.parquet: one row per entity."""
    return pa.schema([("record_id", id_type)] + [(n, pa.string()) for n in ENTITY_COLUMNS[1:]])


def _record_schema(id_type: pa.DataType) -> pa.Schema:
    """records.parquet: one row per manifest record."""
    counts = [(n, pa.int32()) for n in RECORD_COUNT_COLUMNS]
    return pa.schema([("record_id", id_type), *counts, ("backend", pa.string())])


def _concept_set_schema(id_type: pa.DataType) -> pa.Schema:
    """The temporary per-record concept sets between the two passes."""
    return pa.schema([("record_id", id_type), ("present", pa.list_(pa.string())), ("uncertain", pa.list_(pa.string()))])


VOCABULARY_SCHEMA = pa.schema(
    [
        ("label_index", pa.int32()),
        ("concept_id", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("n_present", pa.int64()),
        ("n_uncertain", pa.int64()),
        ("n_records", pa.int64()),
    ]
)
UNMAPPED_SCHEMA = pa.schema([("text", pa.string()), ("n_mentions", pa.int64()), ("example_unit", pa.string())])
QUARANTINE_COLUMNS = ("unit", "reason", "backend", "model", "prompt_version", "n_records", "first_record_id")


def _quarantine_schema(id_type: pa.DataType) -> pa.Schema:
    """quarantine.parquet: one row per unit the backend could not answer in this run."""
    return pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS[:5]] + [("n_records", pa.int64()),
                                                                            ("first_record_id", id_type)])  # fmt: skip


def _manifest_batches(manifest_path, batch_size: int) -> tuple[pa.DataType, Iterator[pa.RecordBatch]]:
    """Type of ``record_id`` and an iterator of (record_id, report) batches."""
    pf = pq.ParquetFile(manifest_path)
    missing = {"record_id", "report"} - set(pf.schema_arrow.names)
    if missing:
        raise ValueError(f"manifest {manifest_path} lacks columns {sorted(missing)}")
    id_type = pf.schema_arrow.field("record_id").type
    return id_type, pf.iter_batches(batch_size=batch_size, columns=["record_id", "report"])


def _positive_sets(entities: Iterable[Entity]) -> tuple[list[str], list[str]]:
    """Sorted concepts present, and uncertain (never present), in a record; absent ones drop out."""
    rank = {"absent": 0, "uncertain": 1, "present": 2}
    best: dict[str, str] = {}
    for e in entities:
        if e.concept != UNMAPPED and rank[e.polarity] >= rank[best.get(e.concept, "absent")]:
            best[e.concept] = e.polarity
    return tuple(sorted(c for c, p in best.items() if p == kind) for kind in ("present", "uncertain"))


CONCEPT_SETS = "_record_concepts.tmp.parquet"


class _FirstPass:
    """Per-batch bookkeeping of pass 1: entity rows, record rows, per-record concept sets, counts."""

    def __init__(self, out: Path, id_type: pa.DataType, backend: ExtractionBackend, counts: Counter):
        self.backend, self.counts = backend, counts
        self.schemas = _entity_schema(id_type), _record_schema(id_type), _concept_set_schema(id_type)
        self.writers = [
            pq.ParquetWriter(out / name, schema)
            for name, schema in zip(("entities.parquet", "records.parquet", CONCEPT_SETS), self.schemas)
        ]
        self.n_present: Counter = Counter()
        self.n_uncertain: Counter = Counter()
        self.unmapped: Counter = Counter()
        self.unmapped_example: dict[str, str] = {}
        self.failed_records: Counter = Counter()  # failed unit -> records containing it
        self.failed_example: dict[str, object] = {}  # failed unit -> first record containing it
        self.id_type = id_type

    def close(self) -> None:
        """Close the three writers."""
        for w in self.writers:
            w.close()

    def add(self, ids: list, segments: list[Segmented], answers: dict[str, Answer | None]) -> None:
        """Account one manifest batch."""
        rows: tuple[list, list, list] = ([], [], [])
        for rid, seg in zip(ids, segments):
            self._add_record(rid, seg, answers, rows)
        for w, schema, r in zip(self.writers, self.schemas, rows):
            w.write_table(pa.Table.from_pylist(r, schema))

    def _add_record(self, rid, seg: Segmented, answers: dict, rows: tuple[list, list, list]) -> None:
        """Rows and counts of one record."""
        got = [answers[u] for u in seg.units]
        for u in dict.fromkeys(u for u, a in zip(seg.units, got) if a is None):
            self.failed_records[u] += 1
            self.failed_example.setdefault(u, rid)
        pairs = [(u, e) for u, a in zip(seg.units, got) if a is not None for e in a.entities]
        rows[0].extend(self._entity_row(rid, u, e) for u, e in pairs)
        unmapped = [(u, e.text) for u, e in pairs if e.concept == UNMAPPED]
        for u, text in unmapped:
            self.unmapped[text] += 1
            self.unmapped_example.setdefault(text, u)
        n = {"n_units": len(seg.units), "n_entities": len(pairs), "n_unmapped": len(unmapped),
             "n_empty": seg.n_empty, "n_noise": seg.n_noise}  # fmt: skip
        rows[1].append({"record_id": rid, **n, "n_failed": got.count(None), "backend": self.backend.name})
        present, uncertain = _positive_sets(e for _, e in pairs)
        rows[2].append({"record_id": rid, "present": present, "uncertain": uncertain})
        self.n_present.update(present)
        self.n_uncertain.update(uncertain)
        self.counts.update(n_records=1, n_records_with_concept=int(len(pairs) > len(unmapped)), **n)

    def _entity_row(self, rid, unit: str, e: Entity) -> dict:
        """One row of entities.parquet."""
        concept, b = concepts().get(e.concept), self.backend
        return dict(zip(ENTITY_COLUMNS, (rid, unit, e.text, e.concept, concept.name if concept else None, e.polarity,
                                         e.category, b.name, b.model, b.prompt_version)))  # fmt: skip


def label_vocabulary(n_present: Counter, n_uncertain: Counter, uncertain_policy: str, min_label_count: int) -> pa.Table:
    """Concepts with ≥ ``min_label_count`` positive records, by descending count then id."""
    vocab = concepts()
    positives = {c: n_present[c] + (n_uncertain[c] if uncertain_policy == "positive" else 0) for c in vocab}
    kept = sorted((c for c, n in positives.items() if n >= min_label_count and n > 0), key=lambda c: (-positives[c], c))
    rows = [
        {
            "label_index": i,
            "concept_id": c,
            "name": vocab[c].name,
            "category": vocab[c].category,
            "n_present": n_present[c],
            "n_uncertain": n_uncertain[c],
            "n_records": positives[c],
        }
        for i, c in enumerate(kept)
    ]
    return pa.Table.from_pylist(rows, VOCABULARY_SCHEMA)


def _write_labels(concept_sets: Path, out: Path, vocabulary: pa.Table, uncertain_policy: str) -> None:
    """Pass 2: multi-hot int8 labels per record (uncertain → 1, 0, or -1 = ignore)."""
    ids = vocabulary.column("concept_id").to_pylist()
    index = {c: i for i, c in enumerate(ids)}
    uncertain_value = {"positive": 1, "negative": 0, "ignore": -1}[uncertain_policy]
    source = pq.ParquetFile(concept_sets)
    schema = pa.schema([source.schema_arrow.field("record_id")] + [(c, pa.int8()) for c in ids])
    with pq.ParquetWriter(out, schema) as writer:
        for batch in source.iter_batches():
            sets = batch.to_pydict()
            matrix = np.zeros((batch.num_rows, len(ids)), dtype=np.int8)
            for r, (present, uncertain) in enumerate(zip(sets["present"], sets["uncertain"])):
                matrix[r, [index[c] for c in uncertain if c in index]] = uncertain_value
                matrix[r, [index[c] for c in present if c in index]] = 1
            columns = [batch.column("record_id")] + [pa.array(matrix[:, j]) for j in range(len(ids))]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def _write_unmapped(first: _FirstPass, path: Path) -> None:
    """Audit table of unmapped entity texts, most frequent first."""
    rows = [
        {"text": t, "n_mentions": n, "example_unit": first.unmapped_example[t]}
        for t, n in sorted(first.unmapped.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    pq.write_table(pa.Table.from_pylist(rows, UNMAPPED_SCHEMA), path)


def _write_quarantine(first: _FirstPass, failed: dict[str, str], backend: ExtractionBackend, path: Path) -> None:
    """Units without an answer (reason, backend, how many records they leave incomplete); schema even if empty."""
    rows = [
        {"unit": u, "reason": reason, "backend": backend.name, "model": backend.model,
         "prompt_version": backend.prompt_version, "n_records": first.failed_records[u],
         "first_record_id": first.failed_example.get(u)}  # fmt: skip
        for u, reason in sorted(failed.items(), key=lambda kv: (-first.failed_records[kv[0]], kv[0]))
    ]
    pq.write_table(pa.Table.from_pylist(rows, _quarantine_schema(first.id_type)), path)


# name -> backend class, or "module:attribute" imported on first use (the LLM backends import this module)
BACKENDS: dict[str, object] = {
    "lexicon": LexiconBackend,
    "ollama": "supreme_ecg.llm_backends:OllamaBackend",
    "openai": "supreme_ecg.llm_backends:OpenAICompatibleBackend",
}


def backend_class(name: str) -> type:
    """The class registered under ``name`` in :data:`BACKENDS`."""
    _check_choice("backend", name, tuple(BACKENDS))
    entry = BACKENDS[name]
    if isinstance(entry, str):
        import importlib

        module, attribute = entry.split(":")
        entry = BACKENDS[name] = getattr(importlib.import_module(module), attribute)
    return entry  # type: ignore[return-value]


def make_backend(name: str, *, fallback: str | None = None, check: bool = True, **options) -> ExtractionBackend:
    """The extraction backend configured by name: ``lexicon`` (offline), ``ollama`` or ``openai``.

    ``options`` go to the LLM backend's constructor (``model``, ``host``, ``concurrency``, ``seed``,
    ``timeout_s``, ``max_retries``, ``max_repairs``, ``keep_alive``, ``api_key_env``, …; see
    :mod:`supreme_ecg.llm_backends`); options that are None are dropped and ``lexicon`` takes none.
    With ``check`` an LLM backend checks at once that its server is up and serves the model, and
    raises :class:`~supreme_ecg.llm_backends.BackendUnavailable` (saying how to start it) if not —
    unless ``fallback`` names a backend, which then answers instead (rows name it).
    """
    cls = backend_class(name)
    if fallback is not None:
        backend_class(fallback)
    options = {k: v for k, v in options.items() if v is not None}
    if cls is LexiconBackend:
        return LexiconBackend()
    primary = cls(**options)
    if fallback is not None and fallback != name:
        from supreme_ecg.llm_backends import FallbackBackend

        backend = FallbackBackend(primary, make_backend(fallback, check=False, **options))
    else:
        backend = primary
    if check:
        backend.check()
    return backend


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {choices}")


def extract_reports(
    manifest_path,
    out_dir,
    backend: ExtractionBackend,
    cache_path,
    unit: str = "statement",
    uncertain_policy: str = "positive",
    min_label_count: int = 10,
    batch_size: int = 1000,
) -> dict:
    """Run the stage on a manifest Parquet; write the six tables to ``out_dir``; return counts.

    Tables: entities, records, label_vocabulary, labels, unmapped, quarantine. Every answer is
    committed to the cache at ``cache_path`` as soon as it exists; failed units are not cached.
    The counts include the backend's request statistics (``llm_requests``, ``llm_retries``,
    ``llm_repairs``, ``llm_quarantined``, …) when it keeps them.
    """
    _check_choice("unit", unit, UNITS)
    _check_choice("uncertain_policy", uncertain_policy, UNCERTAIN_POLICIES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter(n_backend_calls=0, n_backend_units=0, n_cache_hits=0, n_failed_units=0)
    id_type, batches = _manifest_batches(manifest_path, batch_size)
    stats_before = Counter(getattr(backend, "stats", None) or {})
    with AnswerCache(cache_path) as cache:
        resolver = _Resolver(backend, cache, counts)
        first = _FirstPass(out, id_type, backend, counts)
        try:
            for batch in batches:
                segments = [segment_report(r, unit) for r in batch.column("report").to_pylist()]
                answers = resolver.resolve(u for s in segments for u in s.units)
                first.add(batch.column("record_id").to_pylist(), segments, answers)
        finally:
            first.close()
    stats = Counter(getattr(backend, "stats", None) or {})
    stats.subtract(stats_before)
    counts.update({f"llm_{k}": v for k, v in stats.items() if v})
    _write_quarantine(first, resolver.failed, backend, out / "quarantine.parquet")
    vocabulary = label_vocabulary(first.n_present, first.n_uncertain, uncertain_policy, min_label_count)
    pq.write_table(vocabulary, out / "label_vocabulary.parquet")
    _write_labels(out / CONCEPT_SETS, out / "labels.parquet", vocabulary, uncertain_policy)
    _write_unmapped(first, out / "unmapped.parquet")
    (out / CONCEPT_SETS).unlink()
    return {**counts, "n_labels": vocabulary.num_rows, "n_unmapped_texts": len(first.unmapped)}
