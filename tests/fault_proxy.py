"""Loopback test servers for the endpoint teacher: a fake OpenAI-compatible server and a fault proxy.

The fake answers deterministically (the top log-probs are a function of the prompt alone), so a
run through faults must give exactly the fault-free answers. The proxy sits in front of the fake
or of a real llama-server and injects, by request number, the failures a teacher server shows in
practice: stalls past the client's timeout, HTTP 500, 429 with Retry-After, replies cut short,
replies that are not JSON or lack fields, and dropped connections. Both bind to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

VOCAB = [" positive", " negative", " neutral", " the", " a", " it", " yes", " no", "\n", " good", " bad", " maybe"]


def fake_logprobs(prompt: str) -> list[tuple[int, float]]:
    """(token id, log-prob) over VOCAB, sorted best first, fixed by the prompt."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    logits = [(digest[i] / 255.0) * 8.0 - 4.0 for i in range(len(VOCAB))]
    norm = math.log(sum(math.exp(x) for x in logits)) + 0.05  # 5 % of the mass sits outside VOCAB
    return sorted(((i, x - norm) for i, x in enumerate(logits)), key=lambda pair: -pair[1])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that gave up (its timeout) breaks the pipe: expected here, not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Server:
    """A ThreadingHTTPServer on a free loopback port, run in a daemon thread; use as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        # a subclass per server: two stand-ins alive at once would otherwise share the class's owner
        handler = type(handler.__name__, (handler,), {"owner": self})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _Handler(BaseHTTPRequestHandler):
    owner: Any

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class FakeOpenAI(_Server):
    """/v1/models, /v1/completions, /v1/chat/completions and llama.cpp's /tokenize, deterministic."""

    def __init__(self, *, api_key: str | None = None, legacy: bool = False, tokenize: bool = True,
                 delay_s: float = 0.0, model_ids: tuple[str, ...] = ("fake-lm",), usage: bool = False) -> None:
        """``model_ids``: what GET /v1/models lists (with several, a request must name one of them); ``usage``:
        replies carry OpenAI's `usage`, one prompt token per whitespace-separated word."""
        self.api_key, self.legacy, self.tokenize, self.delay_s = api_key, legacy, tokenize, delay_s
        self.usage = usage
        self.model_ids = model_ids
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(_FakeHandler)

    def answer(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        if path == "/tokenize":
            word = request["content"]
            return {"tokens": [{"id": VOCAB.index(word) if word in VOCAB else 999, "piece": word}]}
        chat = path.endswith("/chat/completions")
        prompt = request["messages"][0]["content"] if chat else request["prompt"]
        count = request["top_logprobs"] if chat else request["logprobs"]
        top = [(VOCAB[i].strip() if chat else VOCAB[i], i, lp) for i, lp in fake_logprobs(prompt)[:count]]
        if self.legacy and not chat:
            logprobs = {"tokens": [top[0][0]], "token_logprobs": [top[0][2]],
                        "top_logprobs": [{token: lp for token, _, lp in top}]}
        else:
            entries = [{"token": token, "id": i, "logprob": lp, "bytes": list(token.encode())} for token, i, lp in top]
            logprobs = {"content": [{**entries[0], "top_logprobs": entries}]}
        text_key = "message" if chat else "text"
        text = {"role": "assistant", "content": top[0][0]} if chat else top[0][0]
        reply = {"id": "x", "object": "text_completion", "model": request["model"],
                 "choices": [{"index": 0, text_key: text, "logprobs": logprobs, "finish_reason": "length"}]}
        if self.usage:
            reply["usage"] = {"prompt_tokens": len(prompt.split()), "completion_tokens": 1}
        return reply


class _FakeHandler(_Handler):
    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "tests",
                 "meta": {"n_params": 1234}} for model_id in self.owner.model_ids]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        server: FakeOpenAI = self.owner
        request = json.loads(self._body())
        known = {"/v1/completions", "/v1/chat/completions"} | ({"/tokenize"} if server.tokenize else set())
        if self.path not in known:
            return self._send(404, b'{"error": "not found"}')
        if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            return self._send(401, b'{"error": "invalid api key"}')
        with server.lock:
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(server.delay_s)
            if "<too long>" in json.dumps(request):
                return self._send(400, b'{"error": "the request exceeds the available context size"}')
            reply = server.answer(self.path, request)
            with server.lock:
                server.counts[self.path] += 1
            self._send(200, json.dumps(reply).encode())
        finally:
            with server.lock:
                server.in_flight -= 1


FAULTS = ("timeout", "500", "429", "truncated", "not_json", "missing", "reset", "echo_key")
# what asking again cannot fix: a refused key, a wrong route, a server that does not give log-probabilities
REFUSALS = ("401", "403", "404", "no_logprobs")


class FaultProxy(_Server):
    """Forwards to ``upstream`` (http://host:port), injecting ``plan(n, path)`` for the n-th request:
    None forwards it untouched, else one of FAULTS or REFUSALS. ``events`` records (n, path, fault, monotonic time)."""

    def __init__(self, upstream: str, plan: Callable[[int, str], str | None], *, stall_s: float = 1.0,
                 retry_after: str = "0") -> None:
        self.upstream = urlsplit(upstream)
        self.plan, self.stall_s, self.retry_after = plan, stall_s, retry_after
        self.events: list[tuple[int, str, str | None, float]] = []
        self.lock = threading.Lock()
        super().__init__(_ProxyHandler)

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            n = len(self.events) + 1
            fault = self.plan(n, path)
            self.events.append((n, path, fault, time.monotonic()))
        return fault

    def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

    def faults_injected(self) -> Counter[str]:
        return Counter(fault for _, _, fault, _ in self.events if fault)


class _ProxyHandler(_Handler):
    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")

    def _relay(self, method: str) -> None:
        proxy: FaultProxy = self.owner
        body = self._body()
        fault = proxy.next_fault(self.path)
        if fault == "timeout":
            time.sleep(proxy.stall_s)  # the client has given up by now
            self.close_connection = True
            return
        if fault == "reset":
            self.close_connection = True
            return
        if fault == "500":
            return self._send(500, b'{"error": "internal error"}')
        if fault == "echo_key":  # a careless server that repeats the credentials it was sent
            echoed = {"error": f"bad gateway for {self.headers.get('Authorization')}"}
            return self._send(502, json.dumps(echoed).encode())
        if fault in ("401", "403", "404"):
            return self._send(int(fault), b'{"error": "refused by the fault proxy"}')
        if fault == "429":
            return self._send(429, b'{"error": "rate limited"}', {"Retry-After": proxy.retry_after})
        if fault == "not_json":
            return self._send(200, b"<html>upstream is restarting</html>")
        if fault == "missing":
            return self._send(200, b'{"choices": []}')
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        status, payload, _ = proxy.forward(method, self.path, body, headers)
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        if fault == "no_logprobs":  # a server that ignores the request's logprobs
            reply = json.loads(payload)
            for choice in reply.get("choices", []):
                choice.pop("logprobs", None)
            payload = json.dumps(reply).encode()
        self._send(status, payload)
