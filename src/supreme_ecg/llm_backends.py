"""LLM backends of the extraction stage: a local Ollama server or any OpenAI-compatible server.

Both backends implement :class:`~supreme_ecg.extract.ExtractionBackend` and share
:class:`ChatBackend`'s machinery:

* one chat request per unit, the prompt of :func:`~supreme_ecg.extract.render_prompt` (a versioned
  file that lists no vocabulary: names are free text, the schema constrains structure), temperature 0, a fixed seed and the answer's JSON Schema as the constrained output format
  (Ollama ``format=``, OpenAI ``response_format={"type": "json_schema", ...}``);
* transport failures (connection refused or dropped, time-outs, HTTP 5xx/429/408) are retried with
  exponential back-off up to ``max_retries`` times; other HTTP errors are not retried;
* an answer that is not JSON, violates the schema or quotes text that is not in the unit is sent
  back with the validation error (a *repair request*) up to ``max_repairs`` times;
* a unit that still fails becomes a *quarantine* answer: ``error`` says why, there are no
  entities (nothing is invented), the stage does not cache it and asks again on the next run;
* ``concurrency`` requests are in flight at once (a thread pool); :meth:`ChatBackend.extract_as_completed`
  yields each answer as soon as it is finished so the stage can commit it to the cache at once;
* ``identity`` (part of every cache key) is the served model's identity — Ollama's digest of the
  pulled model from ``/api/tags``, the OpenAI-compatible server's model entry (id, root, created) —
  and the SHA-256 of the prompt text and answer schema: re-pulling a model or editing the prompt
  never reuses an old answer;
* :meth:`ChatBackend.check` runs at start: the server must answer and serve the model, otherwise
  :class:`BackendUnavailable` says how to start it; ``max_consecutive_failures`` units in a row that
  fail at the transport level stop the stage the same way (the server went away midway).

:class:`FallbackBackend` wraps a primary and a fallback backend (usually ``lexicon``): if the
primary is unreachable at start the fallback answers every unit, and since ``name``/``model``/
``prompt_version`` are the active backend's, every output row and cache key says which one did.

Nothing here reads secrets from configuration: the OpenAI-compatible backend takes its API key
from the environment variable *named* by ``api_key_env`` (default ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import httpx

from supreme_ecg.config_schema import schema_defaults
from supreme_ecg.extract.answers import (
    ANSWER_SCHEMA,
    PROMPT_VERSION,
    Answer,
    AnswerError,
    prompt_fingerprint,
    render_prompt,
    validate_answer,
)
from supreme_ecg.extract.backends import ExtractionBackend

log = logging.getLogger(__name__)

SCHEMA_NAME = "ecg_statement_entities"
RETRY_STATUS = frozenset({408, 425, 429})
REPAIR_MESSAGE = (
    "Your answer is invalid: {error}\n"
    "Answer again for the same statement with a single JSON object, and nothing else, that validates "
    "against the JSON Schema given above. Every \"text\" must be copied verbatim from the statement."
)
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class BackendUnavailable(RuntimeError):
    """The server cannot be used (unreachable, model missing, or it stopped answering): stop the stage."""


class _Transient(Exception):
    """A failed request worth retrying (transport error, time-out, 5xx, 429)."""


class _Permanent(Exception):
    """A failed request not worth retrying (4xx other than 408/425/429)."""


class RequestFailed(Exception):
    """A unit's request failed for good (after the retries)."""


def _strip_fence(raw: str) -> str:
    """The JSON inside a Markdown code fence, if the whole answer is one (some models add them)."""
    m = _FENCE.match(raw)
    return m.group(1) if m else raw


class ChatBackend:
    """Shared machinery of the chat-API backends; subclasses implement :meth:`check` and :meth:`_chat`."""

    name = "chat"
    default_host = ""

    def __init__(
        self,
        model: str | None = None,
        *,
        host: str | None = None,
        prompt_version: str = PROMPT_VERSION,
        seed: int = 0,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        concurrency: int = 4,
        max_retries: int = 3,
        max_repairs: int = 2,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_tokens: int = 1024,
        max_consecutive_failures: int = 20,
    ):
        """Settings only; no connection is made until :meth:`check` or the first request."""
        if not model:
            raise ValueError(f"backend {self.name!r} needs a model (e.g. --model llama3.1:70b-instruct-q4_K_M)")
        if concurrency < 1 or max_retries < 0 or max_repairs < 0 or max_consecutive_failures < 1:
            raise ValueError("concurrency and max_consecutive_failures must be ≥ 1, max_retries and max_repairs ≥ 0")
        self.model = model
        self.host = (host or self.default_host).rstrip("/")
        self.prompt_version = prompt_version
        self.seed = int(seed)
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.concurrency = int(concurrency)
        self.max_retries, self.max_repairs = int(max_retries), int(max_repairs)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.max_tokens = int(max_tokens)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._stop = threading.Event()
        self._model_identity: str | None = None
        render_prompt("", prompt_version)  # fail now if the prompt version does not exist

    # ------------------------------------------------------------------ subclass hooks

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` unless the server answers and serves ``model``; note its identity."""
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """The served model's identity and the prompt's hash (asks the server once if :meth:`check` did not)."""
        if self._model_identity is None:
            self.check()
        return f"{self._model_identity}|{prompt_fingerprint(self.prompt_version)}"

    def _chat(self, messages: list[dict]) -> str:
        """One chat request; the assistant's text. Raises :class:`_Transient` or :class:`_Permanent`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release HTTP connections."""

    # ------------------------------------------------------------------ the protocol

    def extract(self, units: list[str]) -> list[Answer]:
        """One answer per unit, in order (``concurrency`` requests in flight)."""
        answers: list[Answer | None] = [None] * len(units)
        for i, answer in self.extract_as_completed(units):
            answers[i] = answer
        return answers  # type: ignore[return-value]

    def extract_as_completed(self, units: list[str]) -> Iterator[tuple[int, Answer]]:
        """``(index, answer)`` pairs in completion order, so each can be committed as soon as it exists.

        Raises :class:`BackendUnavailable` (after the answers finished so far were yielded) when
        ``max_consecutive_failures`` units in a row failed at the transport level.
        """
        units = list(units)
        if not units:
            return
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(units)), thread_name_prefix=f"{self.name}-llm")
        pending: dict[Future, int] = {pool.submit(self.answer, u): i for i, u in enumerate(units)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    yield i, future.result()
        finally:
            self._stop.set()  # a failure or an abandoned generator: running requests give up early
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            self._stop.clear()

    def answer(self, unit: str) -> Answer:
        """A validated answer for one unit, or a quarantine answer (``error`` set, no entities)."""
        t0 = time.perf_counter()
        messages = [{"role": "user", "content": render_prompt(unit, self.prompt_version)}]
        raw = ""
        for repair in range(self.max_repairs + 1):
            try:
                raw = self._request(messages)
            except RequestFailed as exc:
                return self._quarantine(raw, f"request failed: {exc}", t0)
            try:
                entities = validate_answer(_strip_fence(raw), unit)
            except AnswerError as exc:
                if repair == self.max_repairs:
                    return self._quarantine(raw, f"invalid answer after {repair} repair request(s): {exc}", t0)
                self._count("repairs")
                messages = [*messages, {"role": "assistant", "content": raw},
                            {"role": "user", "content": REPAIR_MESSAGE.format(error=exc)}]  # fmt: skip
                continue
            self._count("answers")
            return Answer(raw, entities, time.perf_counter() - t0)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ retries

    def _request(self, messages: list[dict]) -> str:
        """One chat exchange with retries and back-off; raises :class:`RequestFailed`."""
        reason = ""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise RequestFailed("stage stopping")
            if attempt:
                self._count("retries")
                if self._stop.wait(self._backoff(attempt)):
                    raise RequestFailed(f"stage stopping ({reason})")
            self._count("requests")
            try:
                raw = self._chat(messages)
            except _Transient as exc:
                reason = str(exc)
                continue
            except _Permanent as exc:
                self._failure(str(exc))
                raise RequestFailed(str(exc)) from None
            with self._lock:
                self._consecutive_failures = 0
            return raw
        self._failure(reason)
        raise RequestFailed(f"{reason} (after {self.max_retries + 1} attempts)")

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with jitter: ``backoff_s · 2^(attempt-1)`` capped, times U(0.5, 1)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _failure(self, reason: str) -> None:
        """Count a unit lost at the transport level; too many in a row means the server is gone."""
        with self._lock:
            self._consecutive_failures += 1
            self.stats["failed_requests"] += 1
            gone = self._consecutive_failures >= self.max_consecutive_failures
        if gone:
            self._stop.set()
            raise BackendUnavailable(
                f"{self.name} server at {self.host} stopped answering: {self.max_consecutive_failures} units in a "
                f"row failed (last: {reason}). Answers completed so far are cached; fix the server and rerun."
            )

    def _quarantine(self, raw: str, reason: str, t0: float) -> Answer:
        """A failed answer: the reason, no entities."""
        self._count("quarantined")
        return Answer(raw, [], time.perf_counter() - t0, error=reason)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, host={self.host!r}, concurrency={self.concurrency})"


def _model_served(model: str, served: list[str]) -> str | None:
    """The served name that is ``model`` (``name`` and ``name:latest`` are the same model), or None."""
    want = {model, model + ":latest"} if ":" not in model else {model}
    if model.endswith(":latest"):
        want.add(model[: -len(":latest")])
    return next((name for name in served if name in want), None)


# --------------------------------------------------------------------------- Ollama


class OllamaBackend(ChatBackend):
    """A local Ollama server through the ``ollama`` client (``/api/chat`` with ``format`` = the schema)."""

    name = "ollama"
    default_host = "http://127.0.0.1:11434"

    def __init__(self, model: str | None = None, *, keep_alive: str | float | None = "30m", num_ctx: int = 8192,
                 **settings):  # fmt: skip
        """``keep_alive`` keeps the model loaded between requests; ``num_ctx`` must hold the prompt (~3k tokens).

        ``host`` defaults to ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``.
        """
        host = settings.pop("host", None) or os.environ.get("OLLAMA_HOST") or self.default_host
        host = host if "://" in host else "http://" + host
        super().__init__(model, host=host, **settings)
        import ollama

        self._ollama = ollama
        self.keep_alive = keep_alive
        self.num_ctx = int(num_ctx)
        self._client = ollama.Client(host=self.host, timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s))

    def check(self) -> None:
        """``/api/tags``: the server answers and has pulled the model."""
        how = (
            f"Start the server with `ollama serve` (or point extract.host / $OLLAMA_HOST at a running one) "
            f"and pull the model with `ollama pull {self.model}`"
        )
        try:
            with self._ollama.Client(host=self.host, timeout=self.connect_timeout_s) as client:
                listing = client.list()
        except (ConnectionError, httpx.TransportError) as exc:
            raise BackendUnavailable(f"cannot reach an Ollama server at {self.host} ({exc}). {how}.") from None
        except self._ollama.ResponseError as exc:
            raise BackendUnavailable(f"Ollama server at {self.host} answered /api/tags with {exc.status_code}: "
                                     f"{exc.error}. {how}.") from None  # fmt: skip
        served = {m.model: m for m in listing.models if m.model}
        name = _model_served(self.model, list(served))
        if not name:
            raise BackendUnavailable(
                f"model {self.model!r} is not pulled on the Ollama server at {self.host}: run `ollama pull {self.model}` "
                f"(pulled: {', '.join(sorted(served)) or 'none'})."
            )
        entry = served[name]
        self._model_identity = entry.digest or f"{name}@{entry.modified_at}"

    def _chat(self, messages: list[dict]) -> str:
        try:
            response = self._client.chat(
                model=self.model,
                messages=messages,
                format=ANSWER_SCHEMA,
                options={"temperature": 0, "seed": self.seed, "num_predict": self.max_tokens, "num_ctx": self.num_ctx},
                keep_alive=self.keep_alive,
            )
        except self._ollama.ResponseError as exc:
            message = f"HTTP {exc.status_code}: {str(exc.error)[:300]}"
            if exc.status_code >= 500 or exc.status_code in RETRY_STATUS or exc.status_code < 0:
                raise _Transient(message) from None
            raise _Permanent(message) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a response body that is not the chat JSON
            raise _Transient(f"malformed response: {str(exc)[:300]}") from None
        return response.message.content or ""

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAICompatibleBackend(ChatBackend):
    """vLLM, llama.cpp server, Ollama's ``/v1`` or any ``/v1/chat/completions`` with a JSON-schema ``response_format``.

    ``host`` is the base URL including ``/v1``. The API key (if any) comes from the environment
    variable named ``api_key_env``; local servers usually need none.
    """

    name = "openai"
    default_host = "http://127.0.0.1:8000/v1"

    def __init__(self, model: str | None = None, *, api_key_env: str | None = "OPENAI_API_KEY", **settings):
        super().__init__(model, **settings)
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.host + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency + 2, max_keepalive_connections=self.concurrency + 2),
        )

    def check(self) -> None:
        """``/v1/models``: the server answers and serves the model."""
        how = (
            f"Start an OpenAI-compatible server, e.g. `vllm serve {self.model} --port 8000`, "
            f"`llama-server -m MODEL.gguf --port 8000`, or `ollama serve` with host http://127.0.0.1:11434/v1, "
            f"and set extract.host to its base URL"
        )
        try:
            r = self._http.get("models", timeout=self.connect_timeout_s)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach an OpenAI-compatible server at {self.host} ({exc}). {how}.") from None
        if r.status_code in (401, 403):
            raise BackendUnavailable(
                f"server at {self.host} refused the request ({r.status_code}): set the API key in the environment "
                f"variable ${self.api_key_env}."
            )
        if r.status_code != 200:
            raise BackendUnavailable(f"server at {self.host} answered /models with {r.status_code}. {how}.")
        try:
            served = {m["id"]: m for m in r.json()["data"]}
        except (ValueError, KeyError, TypeError):
            raise BackendUnavailable(f"server at {self.host} does not speak the OpenAI /models API. {how}.") from None
        name = _model_served(self.model, list(served))
        if not name:
            raise BackendUnavailable(
                f"model {self.model!r} is not served at {self.host} (served: {', '.join(sorted(served)) or 'none'}); "
                "start the server with that model or set extract.model to one of these."
            )
        entry = served[name]
        self._model_identity = json.dumps({k: entry.get(k) for k in ("id", "root", "created")}, sort_keys=True)

    def _chat(self, messages: list[dict]) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": ANSWER_SCHEMA, "strict": True},
            },
        }
        try:
            r = self._http.post("chat/completions", json=body)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            message = f"HTTP {r.status_code}: {r.text[:300]}"
            if r.status_code >= 500 or r.status_code in RETRY_STATUS:
                raise _Transient(message)
            raise _Permanent(message)
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Transient(f"malformed response: {r.text[:300]}") from None

    def close(self) -> None:
        self._http.close()


# --------------------------------------------------------------------------- fallback


class FallbackBackend:
    """The primary backend, or the fallback one if the primary is unavailable at :meth:`check`.

    ``name``, ``model`` and ``prompt_version`` are those of the backend that answers (cache keys and
    output rows name it); ``fell_back`` and ``reason`` say whether and why the fallback was taken.
    """

    def __init__(self, primary: ExtractionBackend, fallback: ExtractionBackend):
        self.primary, self.fallback = primary, fallback
        self.active: ExtractionBackend = primary
        self.fell_back = False
        self.reason: str | None = None

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def model(self) -> str:
        return self.active.model

    @property
    def prompt_version(self) -> str:
        return self.active.prompt_version

    @property
    def identity(self) -> str:
        return getattr(self.active, "identity", "")

    @property
    def stats(self) -> Counter:
        return getattr(self.active, "stats", Counter())

    def __getattr__(self, attribute: str):
        """Other attributes (``model``-specific settings) are the active backend's."""
        if attribute in ("active", "primary", "fallback"):
            raise AttributeError(attribute)
        return getattr(self.active, attribute)

    def check(self) -> None:
        """Check the primary; if it is unavailable, switch to the fallback (and check that)."""
        try:
            self.primary.check()  # type: ignore[attr-defined]
            self.active, self.fell_back, self.reason = self.primary, False, None
        except BackendUnavailable as exc:
            log.warning("primary backend %s unavailable, using fallback %s: %s", self.primary.name, self.fallback.name, exc)
            self.active, self.fell_back, self.reason = self.fallback, True, str(exc)
            if hasattr(self.fallback, "check"):
                self.fallback.check()  # type: ignore[attr-defined]

    def extract(self, units: list[str]) -> list[Answer]:
        return self.active.extract(units)

    def extract_as_completed(self, units: list[str]) -> Iterator[tuple[int, Answer]]:
        if hasattr(self.active, "extract_as_completed"):
            yield from self.active.extract_as_completed(units)  # type: ignore[attr-defined]
        else:
            yield from enumerate(self.active.extract(units))

    def close(self) -> None:
        for b in (self.primary, self.fallback):
            if hasattr(b, "close"):
                b.close()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"FallbackBackend(active={self.active!r}, primary={self.primary!r}, fallback={self.fallback!r})"


# --------------------------------------------------------------------------- command-line helpers

_EXTRACT_DEFAULTS = schema_defaults("extract")
_OPTION_HELP = {  # option -> (type, help)
    "model": (str, "model name as the server knows it (required for ollama/openai)"),
    "host": (str, f"server URL (ollama: {OllamaBackend.default_host}; openai: base URL with /v1, "
                  f"{OpenAICompatibleBackend.default_host})"),
    "fallback": (str, "backend to use if the primary one is unreachable at start (e.g. lexicon)"),
    "concurrency": (int, "requests in flight at once"),
    "seed": (int, "sampling seed (temperature is always 0)"),
    "timeout_s": (float, "seconds per request before it is retried"),
    "max_retries": (int, "retries of a request after connection errors, time-outs, 5xx"),
    "max_repairs": (int, "repair requests after an invalid answer before the unit is quarantined"),
    "backoff_s": (float, "first back-off delay; doubles per retry"),
    "max_tokens": (int, "answer length limit"),
    "keep_alive": (str, "ollama only: how long the server keeps the model loaded"),
    "api_key_env": (str, "openai only: NAME of the environment variable holding the API key"),
    "prompt_version": (str, "prompt file resources/prompts/<version>.txt"),
}
#: option -> (type, default, help); defaults from the config schema's ``extract`` section (None = the
#: backend's own default)
OPTION_DEFAULTS = {option: (kind, _EXTRACT_DEFAULTS.get(option), text) for option, (kind, text) in _OPTION_HELP.items()}
_ONLY = {"keep_alive": "ollama", "api_key_env": "openai"}


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--host``, ``--fallback``, ``--concurrency``, … (see :data:`OPTION_DEFAULTS`)."""
    for option, (kind, default, text) in OPTION_DEFAULTS.items():
        parser.add_argument("--" + option.replace("_", "-"), type=kind, default=default, help=text)


def backend_options(args: argparse.Namespace, backend: str) -> dict:
    """The :func:`~supreme_ecg.extract.make_backend` keyword options from parsed arguments."""
    options = {o: getattr(args, o) for o in OPTION_DEFAULTS if getattr(args, o, None) is not None}
    return {o: v for o, v in options.items() if _ONLY.get(o, backend) == backend or o == "fallback"}
