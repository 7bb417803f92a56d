"""A scripted LLM server on the loopback interface that speaks enough of Ollama's and OpenAI's APIs.

Endpoints: Ollama ``GET /api/tags`` and ``POST /api/chat``; OpenAI ``GET /v1/models`` and
``POST /v1/chat/completions``. A chat request's *unit* is the statement at the end of the first
user message (the prompt of :func:`supreme_ecg.extract.render_prompt`). How the server answers
depends on the unit and on how often that unit was asked before (see :data:`MODES`):

``valid``             the offline :class:`~supreme_ecg.extract.lexicon.LexiconBackend`'s answer
``broken_json``       a truncated JSON text
``schema_violation``  JSON with a polarity outside the schema's enum
``inject``            an "obedient" answer to a prompt injection: name ``pwned`` on a real span
``invent``            an entity whose text is not in the unit (invented)
``error_500``         HTTP 500
``slow``              waits ``slow_s`` (longer than the client's time-out), then answers validly
``drop``              closes the connection without an answer

Every request is counted per endpoint (:attr:`FakeLLMServer.counts`), chat requests also per unit
(:attr:`FakeLLMServer.unit_counts`). ``latency_s`` delays every chat answer (a model's latency).
The server binds 127.0.0.1 on a free port, runs in daemon threads, and stops when the context
manager exits (sleeping handlers wake up at once).

``python -m supreme_ecg.testing.fake_llm_server --latency-ms 20`` serves in its own process (so
that client and server do not share one interpreter lock, as in real use): it prints its URL,
serves ``GET /_fake/counts`` and ``GET /_fake/reset``, and stops when its standard input closes
or after ``--max-seconds``.

    with FakeLLMServer(model="m", script={"sinus rhythm": ["error_500", "valid"]}) as server:
        OllamaBackend("m", host=server.url) ...; OpenAICompatibleBackend("m", host=server.openai_url) ...
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("valid", "broken_json", "schema_violation", "inject", "invent", "error_500", "slow", "drop")
Script = dict[str, "str | list[str]"] | Callable[[str, int], str]
MAX_SLOW_S = 30.0


class FakeLLMServer:
    """Loopback Ollama/OpenAI chat server with scripted answers and call counters."""

    def __init__(
        self,
        model: str = "fake-model",
        *,
        latency_s: float = 0.0,
        default_mode: str = "valid",
        script: Script | None = None,
        slow_s: float = 2.0,
        served_models: list[str] | None = None,
        digest: str = "0" * 64,
    ):
        """``script`` maps a unit to a mode or to a list of modes by attempt (the last one repeats),
        or is a function ``(unit, n_previous_calls) -> mode``; other units get ``default_mode``.
        ``digest`` is the model digest ``/api/tags`` reports and the weights folder (``root``) of
        ``/v1/models`` (change it to mimic a re-pulled model)."""
        self.model = model
        self.served_models = served_models if served_models is not None else [model]
        self.digest = digest
        self.latency_s = float(latency_s)
        self.default_mode = _checked(default_mode)
        self.script: Script = script or {}
        self.slow_s = min(float(slow_s), MAX_SLOW_S)
        self.counts: Counter = Counter()
        self.unit_counts: Counter = Counter()
        self.requests: list[dict] = []  # the last chat request bodies (at most 100)
        self.headers: list[dict] = []  # their HTTP headers (lower-case names)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lexicon = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeLLMServer:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        from supreme_ecg.extract.lexicon import LexiconBackend

        self._lexicon = LexiconBackend()
        self._lexicon.extract(["sinus rhythm"])  # compile its rules now, not inside a timed request
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers, close the socket."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Ollama host URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """OpenAI base URL (with ``/v1``)."""
        return self.url + "/v1"

    def reset_counts(self) -> None:
        """Forget all counts and recorded requests."""
        with self._lock:
            self.counts.clear()
            self.unit_counts.clear()
            self.requests.clear()
            self.headers.clear()

    @property
    def chat_calls(self) -> int:
        """Chat requests on both APIs."""
        return self.counts["/api/chat"] + self.counts["/v1/chat/completions"]

    # ------------------------------------------------------------------ answers

    def _mode(self, unit: str, n_before: int) -> str:
        if callable(self.script):
            return _checked(self.script(unit, n_before))
        spec = self.script.get(unit, self.default_mode)
        if isinstance(spec, str):
            return _checked(spec)
        return _checked(spec[min(n_before, len(spec) - 1)])

    def _content(self, mode: str, unit: str) -> str:
        """The assistant text of a chat answer in ``mode``."""
        if mode == "broken_json":
            return '{"entities": [{"text": "' + unit[:12]
        if mode == "schema_violation":
            return json.dumps({"entities": [_item(unit, "sinus rhythm", "rhythm", polarity="positive")]})
        if mode == "inject":
            return json.dumps({"entities": [_item(unit, "pwned", "other")]})
        if mode == "invent":
            return json.dumps({"entities": [_item("pwned by the report", "st elevation", "ischaemia_infarction")]})
        return self._lexicon.extract([unit])[0].raw

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; True if it stopped."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


def _item(text: str, name: str, category: str, polarity: str = "present") -> dict:
    """One answer entity without qualifiers."""
    return {"text": text, "name": name, "polarity": polarity, "category": category,
            "qualifiers": {"leads": [], "acuity": "", "severity": ""}}  # fmt: skip


def _checked(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return mode


def unit_of(messages: list[dict]) -> str:
    """The statement the prompt asks about: after the last ``Statement: `` of the first user message."""
    first = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
    tail = first.rsplit("Statement: ", 1)[-1]
    return tail.rsplit("\nAnswer:", 1)[0].strip()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    fake: FakeLLMServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections end by themselves
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: dict | str) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (time-out)
            self.close_connection = True

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            return {}

    def _count(self, path: str) -> None:
        fake = self.server.fake
        with fake._lock:
            fake.counts[path] += 1

    # ------------------------------------------------------------------ endpoints

    def do_GET(self) -> None:
        fake = self.server.fake
        path = self.path.split("?")[0].rstrip("/")
        if path == "/_fake/counts":  # the counters, for a server in another process (not counted)
            with fake._lock:
                self._send(200, {"counts": dict(fake.counts), "unit_counts": dict(fake.unit_counts)})
            return
        if path == "/_fake/reset":
            fake.reset_counts()
            self._send(200, {"reset": True})
            return
        self._count(path)
        if path == "/api/tags":
            models = [{"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1, "digest": fake.digest,
                       "details": {"format": "gguf", "family": "fake"}} for m in fake.served_models]  # fmt: skip
            self._send(200, {"models": models})
        elif path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake", "root": f"/models/{fake.digest}"}
                    for m in fake.served_models]  # fmt: skip
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:
        fake = self.server.fake
        path = self.path.split("?")[0].rstrip("/")
        body = self._body()
        self._count(path)
        if path not in ("/api/chat", "/v1/chat/completions"):
            self._send(404, {"error": f"no route {path}"})
            return
        if body.get("model") not in fake.served_models:
            self._send(404, {"error": f"model '{body.get('model')}' not found"})
            return
        unit = unit_of(body.get("messages") or [])
        with fake._lock:
            n_before = fake.unit_counts[unit]
            fake.unit_counts[unit] += 1
            fake.requests.append(body)
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            del fake.requests[:-100], fake.headers[:-100]
        mode = fake._mode(unit, n_before)
        if fake._sleep(fake.latency_s):
            return
        if mode == "drop":
            self.close_connection = True
            return
        if mode == "error_500":
            self._send(500, {"error": "scripted internal server error"})
            return
        if mode == "slow" and fake._sleep(fake.slow_s):
            return
        content = fake._content(mode, unit)
        if path == "/api/chat":
            self._send(200, {"model": body["model"], "created_at": "2025-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": content}, "done": True,
                             "done_reason": "stop", "total_duration": int(fake.latency_s * 1e9)})  # fmt: skip
        else:
            self._send(200, {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": 0,
                             "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                             "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Serve in this process until stdin closes or ``--max-seconds`` pass; print the URL first."""
    parser = argparse.ArgumentParser(description="scripted loopback Ollama/OpenAI server")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--mode", default="valid", choices=MODES)
    parser.add_argument("--slow-s", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    with FakeLLMServer(args.model, latency_s=args.latency_ms / 1000, default_mode=args.mode,
                       slow_s=args.slow_s) as server:  # fmt: skip
        print(server.url, flush=True)
        done.wait(args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
