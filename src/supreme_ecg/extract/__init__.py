"""The entity-extraction stage: reports → statements → open entities → standardised labels.

Modules, in the order data flows through them:

* :mod:`~supreme_ecg.extract.statements` — split reports into normalised statements, drop noise;
* :mod:`~supreme_ecg.extract.answers` — the answer schema every backend fills, its validation, the prompt;
* :mod:`~supreme_ecg.extract.glossary` and :mod:`~supreme_ecg.extract.lexicon` — the offline backend;
  the LLM backends live in :mod:`supreme_ecg.llm_backends`; :mod:`~supreme_ecg.extract.backends` names them;
* :mod:`~supreme_ecg.extract.standardise` — surface forms → merged labels (text-encoder similarity);
* :mod:`~supreme_ecg.extract.stage` — the stage: cache, passes over the manifest, output tables.

No module here reads the benchmark definition: labels come from the reports alone.
"""

from supreme_ecg.extract.answers import (
    ANSWER_SCHEMA,
    CATEGORIES,
    POLARITIES,
    PROMPT_VERSION,
    Answer,
    AnswerError,
    Entity,
    render_prompt,
    validate_answer,
)
from supreme_ecg.extract.backends import BACKENDS, ExtractionBackend, backend_class, make_backend
from supreme_ecg.extract.statements import (
    UNITS,
    clean_mimic_report,
    is_noise,
    normalise_statement,
    segment_report,
    split_statements,
)

__all__ = [
    "ANSWER_SCHEMA", "BACKENDS", "CATEGORIES", "POLARITIES", "PROMPT_VERSION", "UNITS", "Answer", "AnswerError",
    "Entity", "ExtractionBackend", "backend_class", "clean_mimic_report", "extract_reports", "is_noise",
    "make_backend", "normalise_statement", "render_prompt", "segment_report", "split_statements", "validate_answer",
]


def __getattr__(name: str):
    """``extract_reports`` is imported on first use (the stage pulls in pyarrow and the cache)."""
    if name == "extract_reports":
        from supreme_ecg.extract.stage import extract_reports

        return extract_reports
    raise AttributeError(name)
