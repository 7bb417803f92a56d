"""The extraction backends by name: the offline open lexicon, Ollama, any OpenAI-compatible server."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from supreme_ecg.extract.answers import Answer


@runtime_checkable
class ExtractionBackend(Protocol):
    """Anything that turns units (normalised statements or reports) into one :class:`Answer` each.

    Optional extras the stage uses when present: ``extract_as_completed(units)`` yielding
    ``(index, answer)`` as each answer is finished (committed to the cache at once), ``check()``
    raising when the backend cannot work (called by :func:`make_backend`), ``identity`` (what,
    beyond ``name``/``model``/``prompt_version``, makes an answer: the model's digest and the prompt
    text's hash, or the offline rules' version; part of every cache key) and a ``stats`` Counter of
    requests, retries, repairs and quarantined units (reported as ``llm_*`` counts).
    """

    name: str
    model: str
    prompt_version: str

    def extract(self, units: list[str]) -> list[Answer]:
        """One answer per unit, in order; failures are answers with ``error`` set."""
        ...


#: name -> "module:attribute", imported on first use
BACKENDS: dict[str, str] = {
    "lexicon": "supreme_ecg.extract.lexicon:LexiconBackend",
    "ollama": "supreme_ecg.llm_backends:OllamaBackend",
    "openai": "supreme_ecg.llm_backends:OpenAICompatibleBackend",
}


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {choices}")


def backend_class(name: str) -> type:
    """The class registered under ``name`` in :data:`BACKENDS`."""
    check_choice("backend", name, tuple(BACKENDS))
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


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
    if name == "lexicon":
        return cls()
    primary = cls(**{k: v for k, v in options.items() if v is not None})
    if fallback is not None and fallback != name:
        from supreme_ecg.llm_backends import FallbackBackend

        backend = FallbackBackend(primary, make_backend(fallback, check=False, **options))
    else:
        backend = primary
    if check:
        backend.check()
    return backend
