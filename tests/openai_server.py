"""A loopback stand-in for an OpenAI-compatible chat endpoint (vLLM ``serve``, TGI, llama.cpp), for tests.

It answers ``POST /v1/chat/completions`` the way those servers do (``choices[0].message.content``,
``finish_reason``, ``usage.completion_tokens``), from a *responder*: a function of the request's messages and
``max_tokens`` returning ``(text, finish_reason, completion_tokens)``. The default echoes the last user turn
(:func:`echo`); :func:`canned` answers from a dict; a test can answer with a tiny model.

Failure injection, to exercise a client's retries:

* ``server.script = ["503", "503"]``: the next requests get these failures, in order, then answers;
* ``server.fail_always = "500"``: every request fails;
* ``server.fail_after = (6, "503")``: the first 6 requests are answered, every later one fails (an endpoint that
  goes down mid-run);
* ``server.fail_if = lambda body: "500" if ... else None``: per request (e.g. for one prompt only).

A failure is an HTTP status (``"500"``, ``"503"``, ``"429"``: with ``Retry-After: <server.retry_after>``),
``"timeout"`` (the answer comes after ``server.delay`` seconds), ``"drop"`` (the connection is closed without an
answer), ``"malformed"`` (a 200 whose body is not JSON), ``"null"`` or ``"empty"`` (a 200 chat completion whose
``content`` is null or ``""``). Error bodies quote the request's ``Authorization`` header and URL, as a careless
proxy would, so a test can check that the client never surfaces them.

Every request is recorded (:attr:`OpenAIServer.requests`: path with its query, headers with lower-case names, JSON
body);
answers take ``server.latency`` seconds (0 by default; more, to see concurrent requests). With ``token`` set,
requests without ``Authorization: Bearer <token>`` get a 401.

Usage::

    with OpenAIServer() as server:
        print(server.base_url)  # http://127.0.0.1:<free port>/v1

The server listens on 127.0.0.1 only, its threads are daemons, every connection has a socket timeout, a
delayed answer waits at most ``MAX_DELAY`` seconds, and a timer stops the server after ``lifetime`` seconds
even if a test forgets to: it cannot outlive or hang the test run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from loopback import LoopbackServer

Responder = Callable[[list[dict[str, str]], int], tuple[str, str, int]]
MAX_DELAY = 5.0


def echo(messages: list[dict[str, str]], max_tokens: int) -> tuple[str, str, int]:
    """Answer ``"Echo: <last user turn>"``, one token per word, cut at ``max_tokens`` words ("length")."""
    words = f"Echo: {messages[-1]['content']}".split()
    if len(words) > max_tokens:
        return " ".join(words[:max_tokens]), "length", max_tokens
    return " ".join(words), "stop", len(words) + 1


def canned(answers: dict[str, str]) -> Responder:
    """Answer each last user turn from ``answers`` (``"stop"``, one token per word plus the end of turn)."""

    def respond(messages: list[dict[str, str]], max_tokens: int) -> tuple[str, str, int]:
        text = answers[messages[-1]["content"]]
        return text, "stop", len(text.split()) + 1

    return respond


class OpenAIServer(LoopbackServer):
    """The loopback endpoint: ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, responder: Responder = echo, *, token: str | None = None, lifetime: float = 120.0):
        super().__init__(lifetime)
        self.responder = responder
        self.token = token
        self.script: list[str] = []
        self.fail_always: str | None = None
        self.fail_if: Callable[[dict[str, Any]], str | None] | None = None
        self.fail_after: tuple[int, str] | None = None
        self.retry_after = 0.01
        self.delay = 1.0
        self.latency = 0.0
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.address}/v1"

    def _failure(self, body: dict[str, Any]) -> str | None:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.fail_after is not None and len(self.requests) > self.fail_after[0]:
                return self.fail_after[1]
        if self.fail_always is not None:
            return self.fail_always
        return self.fail_if(body) if self.fail_if is not None else None


class _Handler(BaseHTTPRequestHandler):
    server_double: OpenAIServer
    timeout = 10  # socket timeout: a stuck client cannot hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read server.requests
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def do_POST(self) -> None:
        double = self.server_double
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        auth = self.headers.get("Authorization")
        with double._lock:
            headers = {key.lower(): value for key, value in self.headers.items()}
            double.requests.append({"path": self.path, "headers": headers, "body": body})
            double._in_flight += 1
            double.max_in_flight = max(double.max_in_flight, double._in_flight)
        try:
            self._answer(double, body, auth)
        finally:
            with double._lock:
                double._in_flight -= 1

    def _answer(self, double: OpenAIServer, body: dict[str, Any], auth: str | None) -> None:
        if self.path.split("?")[0] != "/v1/chat/completions":
            return self._send(404, json.dumps({"error": f"no route {self.path}"}).encode())
        if double.token is not None and auth != f"Bearer {double.token}":
            return self._send(401, json.dumps({"error": "invalid token"}).encode())
        failure = double._failure(body)
        if failure == "timeout":
            time.sleep(min(double.delay, MAX_DELAY))
        elif failure == "malformed":
            return self._send(200, b'{"choices": [{"message": ')
        elif failure == "drop":
            self.close_connection = True
            return None
        elif failure not in (None, "null", "empty"):
            headers = {"Retry-After": str(double.retry_after)} if failure == "429" else {}
            message = {"error": f"injected failure {failure} for {self.path} with Authorization: {auth}"}
            return self._send(int(failure), json.dumps(message).encode(), headers)
        time.sleep(min(double.latency, MAX_DELAY))
        text, reason, tokens = double.responder(body["messages"], int(body.get("max_tokens") or 16))
        text = {"null": None, "empty": ""}.get(failure, text)
        answer = {
            "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
        }
        self._send(200, json.dumps(answer).encode())


OpenAIServer.handler = _Handler
