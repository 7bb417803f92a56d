"""What every extraction backend answers: open entities in a JSON schema, validated the same way.

An answer names each finding of a statement with the verbatim ``text`` span, a short normalised
English ``name`` (free text: the schema constrains structure, never names), its ``polarity`` and
``category`` (small fixed sets), and ``qualifiers`` kept apart from the name: ``leads``,
``acuity`` (age of an infarct: "old", "acute", "age undetermined") and ``severity`` ("marked",
"borderline"). The LLM prompt is a versioned file (``resources/prompts/<version>.txt``) that lists
no vocabulary; it teaches the task by examples.
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import jsonschema

PROMPT_VERSION = "entity_extraction_v2"
POLARITIES = ("present", "absent", "uncertain")
CATEGORIES = ("rhythm", "conduction", "morphology", "ischaemia_infarction", "hypertrophy", "axis", "other")

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
                "required": ["text", "name", "polarity", "category", "qualifiers"],
                "properties": {
                    "text": {"type": "string", "description": "verbatim span of the statement naming the finding"},
                    "name": {"type": "string", "description": "short normalised English name of the finding"},
                    "polarity": {"type": "string", "enum": list(POLARITIES)},
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                    "qualifiers": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["leads", "acuity", "severity"],
                        "properties": {
                            "leads": {"type": "array", "items": {"type": "string"}},
                            "acuity": {"type": "string", "description": "e.g. old, acute, recent, age undetermined"},
                            "severity": {"type": "string", "description": "e.g. marked, mild, borderline"},
                        },
                    },
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
    """One extracted finding with its qualifiers (see the module docstring)."""

    text: str
    name: str
    polarity: str
    category: str
    leads: tuple[str, ...] = ()
    acuity: str = ""
    severity: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> Entity:
        """From a cached entity dict (``leads`` stored as a list)."""
        return cls(**{**d, "leads": tuple(d.get("leads") or ())})


@dataclass
class Answer:
    """A backend's answer for one unit: raw text, validated entities, latency, error (None if fine)."""

    raw: str
    entities: list[Entity]
    latency_s: float
    error: str | None = None


def squash(s: str) -> str:
    """NFC, casefolded, whitespace collapsed (span comparison and names)."""
    return " ".join(unicodedata.normalize("NFC", s).casefold().split())


def validate_answer(obj: str | dict, unit: str | None = None) -> list[Entity]:
    """Entities of a schema-valid answer whose spans occur in ``unit``; raises :class:`AnswerError`."""
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
    """One schema-valid entity checked against its unit."""
    text = " ".join(item["text"].split())
    name = squash(item["name"]).strip(" .,;:")
    if not text or not name:
        raise AnswerError("entity text and name must not be empty")
    if unit is not None and squash(text) not in squash(unit):
        raise AnswerError(f"entity text {text!r} is not a span of the unit")
    q = item["qualifiers"]
    leads = tuple(dict.fromkeys(squash(lead) for lead in q["leads"] if lead.strip()))
    return Entity(text, name, item["polarity"], item["category"], leads, squash(q["acuity"]), squash(q["severity"]))


def answer_from_cached(cached) -> Answer:
    """An :class:`Answer` rebuilt from a cache row (validated when it was stored)."""
    return Answer(cached.raw, [Entity.from_dict(e) for e in cached.entities], cached.latency_s or 0.0)


@lru_cache(maxsize=8)
def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The prompt template ``resources/prompts/{version}.txt``."""
    return resources.files("supreme_ecg.resources").joinpath(f"prompts/{version}.txt").read_text("utf-8")


def render_prompt(unit: str, version: str = PROMPT_VERSION) -> str:
    """The prompt for one unit: ``$schema`` and ``$statement`` filled in."""
    return string.Template(load_prompt(version)).substitute(schema=json.dumps(ANSWER_SCHEMA, indent=2), statement=unit)


def prompt_fingerprint(version: str = PROMPT_VERSION) -> str:
    """SHA-256 of the prompt text and the answer schema: any edit of either changes cache keys."""
    payload = json.dumps([load_prompt(version), ANSWER_SCHEMA], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
