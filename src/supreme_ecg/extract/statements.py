"""Report text → statements: splitting, normalisation, noise filtering (no knowledge of findings)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

UNITS = ("statement", "report")

# abbreviations whose dot does not end a statement (German/Swedish machine reports: "intraventr. leitungsstörung",
# "infarkt mögl.", "av-block 1. grades")
_ABBREVIATION = re.compile(
    r"(?<!\w)(?:v\.a|z\.n|e\.g|i\.e|ca|bzw|vs|incl|approx|intraventr|supraventr|ventr|mögl|chron|neg|pos|unspez|kompl|"
    r"inkompl|path|indiff|unbest|rep|insbes|amplitudkrit|li|re)\.|(?<![\w.])[1-3]\.(?=\s*grad)",
    re.IGNORECASE,
)
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
