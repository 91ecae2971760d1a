"""A teacher behind an OpenAI-compatible HTTP API (llama.cpp's llama-server, vLLM, TGI, hosted APIs).

The server is asked for the first answer token's top log-probabilities (``max_tokens: 1``,
``temperature: 0``, ``logprobs``); a label's score is the log-probability of its verbalizer's first
token after the same prompt (few-shot prefix + template) the in-process causal-LM teacher uses, so
the two teachers are directly comparable.

A label outside the returned top-N is *not* given probability zero: it gets the largest
probability consistent with what the server said — the mass the top-N leaves over, shared among
the missing labels, and never more than the smallest top-N probability — and the example is
flagged (``missing_bl``). See ``label_scores``.

Elicitation is the expensive step and servers fail, so every request is retried with exponential
back-off and jitter on timeouts, connection errors, HTTP 5xx, 429 (honouring Retry-After, which
pauses every worker) and malformed replies; at most ``max_concurrency`` requests are in flight; and
every answer is appended to a journal (one fsynced JSON line each) before it is used, so a crash or
an outage loses nothing and a re-run asks only for what is missing. The API key is read from an
environment variable when a request is sent; it is never logged, journaled or put in metadata, and
it is redacted from any server text we repeat.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import requests
import torch

from kdistill.errors import KdistillError
from kdistill.models.base import LabelModel

log = logging.getLogger(__name__)

MISSING_FLOOR = 1e-8
"""Smallest probability a label is ever given, so no log-probability is -inf."""
MAX_RETRY_AFTER_S = 300.0
"""Longest Retry-After we honour; a server asking for more is treated as asking for this."""


@dataclass(kw_only=True)
class EndpointSettings:
    """How to reach the server and how hard to try (the TeacherConfig fields of an endpoint teacher)."""

    base_url: str
    """OpenAI-style base URL, e.g. http://127.0.0.1:8080/v1; a bare http://host:port means /v1."""
    model: str
    """Model name sent with each request (llama-server serves one model whatever the name)."""
    api: Literal["completions", "chat"] = "completions"
    """completions: /v1/completions on the raw prompt (comparable with the in-process teacher);
    chat: /v1/chat/completions with the prompt as one user message (for chat-only APIs)."""
    api_key_env: str = "KDISTILL_API_KEY"
    """Name of the environment variable holding the API key; unset or empty sends no key."""
    top_logprobs: int = 20
    """Alternatives asked for the first answer token (OpenAI allows 20 for chat, 5 for completions)."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds to wait for the server to send data before the attempt counts as timed out."""
    max_retries: int = 6
    """Retries per request after the first attempt, for timeouts, 5xx, 429 and malformed replies."""
    backoff_s: float = 1.0
    """First retry delay; doubled each retry, with jitter, up to max_backoff_s."""
    max_backoff_s: float = 30.0
    """Longest delay between retries (a Retry-After header may ask for longer, up to 300 s)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields for every request (server-specific options); part of the journal key."""

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        if not re.match(r"^https?://[^/@\s]+(/\S*)?$", url):
            raise KdistillError(
                f"teacher.base_url {_hide_userinfo(self.base_url)!r} is not an http(s) URL without credentials; "
                f"write it like http://127.0.0.1:8080/v1 and put the key in ${self.api_key_env}.")
        self.base_url = url if re.match(r"^https?://[^/]+/.", url) else url + "/v1"
        if self.api not in ("completions", "chat"):
            raise KdistillError(f"teacher.api must be 'completions' or 'chat'; found {self.api!r}.")
        if self.top_logprobs < 1 or self.max_concurrency < 1 or self.max_retries < 0:
            raise KdistillError("teacher.top_logprobs and teacher.max_concurrency must be >= 1 and "
                                f"teacher.max_retries >= 0; found {self.top_logprobs}, {self.max_concurrency}, "
                                f"{self.max_retries}.")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise KdistillError("teacher.timeout_s must be > 0 and 0 <= teacher.backoff_s <= teacher.max_backoff_s.")

    @property
    def server_root(self) -> str:
        """Where llama.cpp's non-OpenAI routes (/tokenize, /health) live."""
        return re.sub(r"/v1$", "", self.base_url)


@dataclass(frozen=True)
class Candidate:
    """One of the top-N alternatives for the first answer token."""

    token: str
    id: int | None
    logprob: float


@dataclass(frozen=True)
class LabelToken:
    """The first token of a label's verbalizer: its text, and its id when the server told us."""

    piece: str
    id: int | None = None


class RetryableError(Exception):
    """A failed attempt worth repeating: timeout, lost connection, 5xx, 429 or a malformed reply."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A request that still failed after every retry."""


# ------------------------------------------------------------------------------------------------
# Replies -> label scores (pure functions)


def parse_top_logprobs(reply: Any) -> list[Candidate]:
    """The first generated token's top-N alternatives, from either layout servers use.

    Chat layout (also llama.cpp's /v1/completions): ``logprobs.content[0].top_logprobs`` = a list
    of {token, logprob, id?}. Legacy completions layout (OpenAI, vLLM): ``logprobs.top_logprobs[0]``
    = {token: logprob}. Anything else is a malformed reply, worth asking again.
    """
    try:
        logprobs = reply["choices"][0]["logprobs"]
        if isinstance(logprobs.get("content"), list):
            top = [Candidate(str(t["token"]), _int_or_none(t.get("id")), float(t["logprob"]))
                   for t in logprobs["content"][0]["top_logprobs"]]
        else:
            top = [Candidate(str(token), None, float(lp)) for token, lp in logprobs["top_logprobs"][0].items()]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise RetryableError(f"a reply without top log-probabilities for the first token "
                             f"({type(err).__name__}: {err})") from None
    if not top or any(math.isnan(c.logprob) or c.logprob > 1e-4 for c in top):
        raise RetryableError("a reply whose top log-probabilities are empty, NaN or above 0")
    return top


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _matches(candidate: Candidate, label: LabelToken, chat: bool) -> bool:
    """A chat answer starts a fresh turn, so there " positive" and "positive" are the same answer;
    a completion continues the prompt, where only the verbalizer's own first token counts."""
    if chat:
        return candidate.token.strip() != "" and candidate.token.strip() == label.piece.strip()
    if candidate.id is not None and label.id is not None:
        return candidate.id == label.id
    return candidate.token == label.piece


def label_scores(top: list[Candidate], labels: list[LabelToken], *,
                 chat: bool = False) -> tuple[list[float], list[bool]]:
    """Log-probability of each label's first token, and which labels were not in the top-N.

    A missing label's probability is unknown but bounded: it is at most the smallest top-N
    probability (or it would have been listed) and, with the other missing labels, at most the mass
    the top-N leaves over. We give each missing label that bound, min(leftover / missing, smallest),
    floored at MISSING_FLOOR: the largest value consistent with the reply, so a missing label is
    never scored as impossible (log 0) and a confident teacher stays confident.
    """
    probs = [0.0] * len(labels)
    found = [False] * len(labels)
    for candidate in top:
        for k, label in enumerate(labels):
            if _matches(candidate, label, chat):
                probs[k] += math.exp(candidate.logprob)
                found[k] = True
    missing = [not f for f in found]
    if any(missing):
        listed = [math.exp(c.logprob) for c in top]
        leftover = max(0.0, 1.0 - sum(listed))
        bound = min(leftover / sum(missing), min(listed))
        probs = [bound if m else p for p, m in zip(probs, missing)]
    return [math.log(max(p, MISSING_FLOOR)) for p in probs], missing


# ------------------------------------------------------------------------------------------------
# The journal: every answered request, kept before it is used


class Journal:
    """Append-only JSONL of answered requests, one fsynced line each, keyed by the request's hash.

    A line cut short by a crash is ignored on reading (that request is simply asked again), and the
    next append starts on a fresh line. A key already present is never written twice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    records[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d is not a complete record (cut short by a crash?); that request "
                                "will be asked again", self.path, number)
        return records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if record["key"] in self._records:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write(b"\n")
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._records[record["key"]] = record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


# ------------------------------------------------------------------------------------------------
# HTTP: one attempt, and the retry loop around it


def _hide_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Transport:
    """Sends JSON requests with retries; shared by the worker threads, which pool their sessions."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self._sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._not_before = 0.0  # monotonic time before which no worker sends (after a 429)
        self._random = random.Random()
        self.num_attempts = 0
        self.num_retries = 0

    def redact(self, text: str) -> str:
        key = os.environ.get(self.settings.api_key_env, "")
        return text.replace(key, "***") if len(key) >= 4 else text

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.settings.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def attempt(self, url: str, body: dict[str, Any] | None) -> Any:
        """One HTTP round trip: the decoded JSON, a RetryableError, or a KdistillError for a request
        that asking again cannot fix (bad request, refused key, unknown route)."""
        with self._lock:
            self.num_attempts += 1
        # sessions keep connections open across batches; each is used by one worker at a time
        try:
            session = self._sessions.get_nowait()
        except queue.Empty:
            session = requests.Session()
        try:
            response = session.request("POST" if body is not None else "GET", url, json=body, headers=self._headers(),
                                       timeout=(min(10.0, self.settings.timeout_s), self.settings.timeout_s))
        except requests.Timeout:
            raise RetryableError(f"no answer within {self.settings.timeout_s:g} s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as err:
            raise RetryableError(f"the connection failed ({type(err).__name__})") from None
        finally:
            self._sessions.put(session)
        return self._decode(response, url)

    def _decode(self, response: requests.Response, url: str) -> Any:
        status = response.status_code
        said = self.redact(response.text[:200].strip().replace("\n", " "))
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(f"HTTP {status} ({said})", _retry_after_s(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise KdistillError(f"{url} refused the request (HTTP {status}); put a valid API key in the "
                                f"environment variable {self.settings.api_key_env}.")
        if status in (404, 405):
            raise KdistillError(f"{url} answered HTTP {status} ({said}); check teacher.base_url, teacher.model "
                                "and teacher.api.")
        if status >= 400:
            raise KdistillError(f"{url} rejected a request (HTTP {status}: {said}); if the prompt is too long, "
                                "lower data.max_chars or teacher.few_shot_per_label, or give the server more context.")
        try:
            return response.json()
        except ValueError:
            raise RetryableError(f"a reply that is not JSON ({said[:80]!r})") from None

    def ask(self, url: str, body: dict[str, Any] | None, check: Any = None,
            stop: threading.Event | None = None) -> Any:
        """The reply, after up to max_retries retries; ``check(reply)`` raising RetryableError marks
        a malformed reply. Raises RequestFailed when every attempt failed or ``stop`` was set."""
        last = "no attempt made"
        for attempt in range(self.settings.max_retries + 1):
            self._wait_if_paused()
            if stop is not None and stop.is_set():
                raise RequestFailed("stopped because another request failed")
            try:
                reply = self.attempt(url, body)
                if check is not None:
                    check(reply)
                return reply
            except RetryableError as err:
                last = str(err)
                if attempt == self.settings.max_retries:
                    break
                with self._lock:
                    self.num_retries += 1
                delay = self._delay(attempt, err.retry_after)
                log.warning("%s; retry %d of %d in %.1f s", self.redact(f"{url}: {last}"), attempt + 1,
                            self.settings.max_retries, delay)
                time.sleep(delay)
        raise RequestFailed(f"{url}: {last} (after {self.settings.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential back-off with jitter, so workers that failed together don't retry together;
        a server's Retry-After wins and pauses every worker, not just this one."""
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER_S)
            with self._lock:
                self._not_before = max(self._not_before, time.monotonic() + delay)
            return delay
        ceiling = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** attempt)
        return ceiling * (0.5 + 0.5 * self._random.random())

    def _wait_if_paused(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)


# ------------------------------------------------------------------------------------------------
# The teacher


class EndpointLabelModel(LabelModel):
    """Label log-probabilities from a server's top log-probabilities; a teacher only (no local weights).

    ``predict_logits`` returns (B, L) label log-probabilities (unnormalized over the labels, like
    the in-process teacher's logits), so ``elicit``, ``label_logprobs`` and content-free calibration
    work unchanged. ``label_logprobs`` also returns which labels were outside the top-N.
    """

    kind = "endpoint"
    module = None
    tokenizer = None

    def __init__(self, settings: EndpointSettings, *, labels: list[str], verbalizers: list[str],
                 prompt_template: str, prefix: str = "", journal_path: str | Path | None = None) -> None:
        self.settings, self.labels, self.verbalizers = settings, labels, verbalizers
        self.prompt_template, self.prefix = prompt_template, prefix
        self.transport = _Transport(settings)
        self.journal = Journal(journal_path or default_journal_path(settings.model))
        self.num_from_journal = 0
        self.num_asked = 0
        self.num_missing_examples = 0
        self._served: dict[str, Any] | None = None
        self._label_tokens: list[LabelToken] | None = None

    def prompt(self, text: str) -> str:
        """Exactly the in-process CausalLMLabelModel's prompt: few-shot prefix + template."""
        return self.prefix + self.prompt_template.replace("{text}", text)

    # -- what the server serves, and how it spells the labels

    def served_model(self) -> dict[str, Any]:
        """The server's own description of the model (GET /models: id, owner, llama.cpp's meta),
        part of every journal key so that another model's answers are never reused."""
        if self._served is None:
            reply = self.transport.ask(self.settings.base_url + "/models", None, check=_check_models)
            entries = reply["data"]
            entry = next((e for e in entries if e.get("id") == self.settings.model), None)
            if entry is None and len(entries) == 1:
                entry = entries[0]  # llama-server: one model, whatever name is asked for
            if entry is None:
                names = [e.get("id") for e in entries]
                raise KdistillError(f"{self.settings.base_url} does not serve teacher.model "
                                    f"{self.settings.model!r}; it serves {names}.")
            self._served = {k: entry[k] for k in ("id", "owned_by") if k in entry}
            if isinstance(entry.get("meta"), dict):  # llama.cpp: the model's shape; n_ctx is a server flag
                self._served["meta"] = {k: v for k, v in entry["meta"].items() if k != "n_ctx"}
        return self._served

    def label_tokens(self) -> list[LabelToken]:
        """Each verbalizer's first token, from the server's /tokenize when it has one (llama.cpp),
        else the verbalizer itself, assumed to be one token (true of common words with most BPEs)."""
        if self._label_tokens is None:
            tokens = [self._first_token(word) for word in self.verbalizers]
            if len({(t.id, t.piece) for t in tokens}) != len(tokens):
                raise KdistillError(f"task.verbalizers {self.verbalizers} start with the same token for "
                                    f"{self.settings.model} ({[t.piece for t in tokens]}); choose words whose "
                                    "first tokens differ (a leading space usually matters).")
            self._label_tokens = tokens
        return self._label_tokens

    def _first_token(self, word: str) -> LabelToken:
        url = self.settings.server_root + "/tokenize"
        try:
            reply = self.transport.ask(url, {"content": word, "add_special": False, "with_pieces": True},
                                       check=_check_tokenize)
        except (KdistillError, RequestFailed):
            return LabelToken(word)  # no /tokenize here (an OpenAI-style API without it)
        first = reply["tokens"][0]
        if len(reply["tokens"]) > 1:
            log.warning("verbalizer %r is %d tokens for %s; scoring its first token %r",
                        word, len(reply["tokens"]), self.settings.model, first.get("piece"))
        return LabelToken(str(first.get("piece", word)), _int_or_none(first.get("id")))

    # -- requests

    def request_body(self, text: str) -> dict[str, Any]:
        s = self.settings
        if s.api == "chat":
            body = {"model": s.model, "messages": [{"role": "user", "content": self.prompt(text)}],
                    "logprobs": True, "top_logprobs": s.top_logprobs}
        else:
            body = {"model": s.model, "prompt": self.prompt(text), "logprobs": s.top_logprobs}
        return {**body, "max_tokens": 1, "temperature": 0, **s.extra_body}

    def request_key(self, body: dict[str, Any]) -> str:
        """sha256 of the served model's description and the request body: the journal key."""
        blob = json.dumps([self.served_model(), body], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def replies(self, texts: list[str], ids: list[str] | None = None) -> list[Any]:
        """The server's reply for each text: from the journal when answered before, else asked
        (concurrently) and journaled. Raises KdistillError, after keeping every answer, if any
        request still fails after its retries."""
        bodies = [self.request_body(t) for t in texts]
        keys = [self.request_key(b) for b in bodies]
        todo: dict[str, tuple[dict[str, Any], str | None]] = {}
        for i, key in enumerate(keys):
            if self.journal.get(key) is None:
                todo.setdefault(key, (bodies[i], ids[i] if ids else None))
        self.num_from_journal += len(set(keys)) - len(todo)
        if todo:
            self._ask_all(todo, num_wanted=len(set(keys)))
        return [self.journal.get(key)["reply"] for key in keys]

    def _ask_all(self, todo: dict[str, tuple[dict[str, Any], str | None]], num_wanted: int) -> None:
        url = self.settings.base_url + ("/chat/completions" if self.settings.api == "chat" else "/completions")
        stop, failures = threading.Event(), []
        pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrency, thread_name_prefix="kdistill-endpoint")
        try:
            futures = [pool.submit(self._ask_and_keep, url, key, body, example_id, stop)
                       for key, (body, example_id) in todo.items()]
            for future in as_completed(futures):
                try:
                    future.result()
                except (RequestFailed, KdistillError) as err:  # the others finish and are kept
                    stop.set()
                    failures.append(str(err))
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            real = [f for f in failures if not f.startswith("stopped")] or failures
            answered = sum(self.journal.get(key) is not None for key in todo)
            raise KdistillError(
                f"the endpoint teacher could not get an answer: {self.transport.redact(real[0]).rstrip('.')}. "
                f"{num_wanted - len(todo) + answered} of {num_wanted} requests are answered and kept in "
                f"{self.journal.path}; once the cause is fixed, a re-run asks only for the other "
                f"{len(todo) - answered} (for an outage, raise teacher.max_retries or teacher.timeout_s).")

    def _ask_and_keep(self, url: str, key: str, body: dict[str, Any], example_id: str | None,
                      stop: threading.Event) -> None:
        reply = self.transport.ask(url, body, check=parse_top_logprobs, stop=stop)
        self.journal.append({"key": key, "id": example_id, "reply": reply})
        self.num_asked += 1

    # -- the LabelModel contract

    def label_logprobs(self, texts: list[str], ids: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) label log-probabilities of the first answer token (not renormalized over the
        labels) and (B, L) bool: True where the label was outside the top-N and was estimated."""
        self.served_model()  # a wrong URL or model name is reported before anything else is asked
        tokens = self.label_tokens()
        scores, missing = [], []
        for reply in self.replies(texts, ids):
            row, gone = label_scores(parse_top_logprobs(reply), tokens, chat=self.settings.api == "chat")
            scores.append(row)
            missing.append(gone)
        missing_bl = torch.tensor(missing, dtype=torch.bool).reshape(len(texts), len(self.labels))
        self.num_missing_examples += int(missing_bl.any(-1).sum())
        if missing_bl.any():
            log.info("%d of %d examples had a label outside the top-%d; its probability is the bound "
                     "the reply allows (see kdistill.models.endpoint.label_scores)",
                     int(missing_bl.any(-1).sum()), len(texts), self.settings.top_logprobs)
        return torch.tensor(scores, dtype=torch.float32).reshape(len(texts), len(self.labels)), missing_bl

    def predict_logits(self, texts: list[str]) -> torch.Tensor:
        return self.label_logprobs(texts)[0]

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise KdistillError("an endpoint teacher runs on its server: there are no local tokens to encode.")

    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise KdistillError("an endpoint teacher runs on its server: call predict_logits(texts) instead.")

    def predict_logits_and_hidden(self, texts: list[str], layers: list[int],
                                  pool: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise KdistillError("an endpoint teacher exposes no hidden states; set objective.hidden.weight to 0 "
                            "or use an in-process teacher for hidden-state distillation.")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def num_parameters(self) -> int:
        return int(self.served_model().get("meta", {}).get("n_params", 0))

    def save(self, path: str | Path) -> None:
        raise KdistillError("an endpoint teacher cannot be saved; only students are saved.")

    def metadata(self) -> dict[str, Any]:
        """Everything that determines the answers, for cache keys and reports. Not the base URL
        (a restarted server on another port serves the same answers) and never the API key."""
        s = self.settings
        return {"kind": self.kind, "labels": self.labels, "verbalizers": self.verbalizers,
                "prompt_template": self.prompt_template, "prefix": self.prefix, "model": s.model,
                "api": s.api, "top_logprobs": s.top_logprobs, "extra_body": s.extra_body,
                "served": self.served_model()}

    def stats(self) -> dict[str, Any]:
        """Counts for a run's log or report (how much the journal saved, how flaky the server was)."""
        return {"asked": self.num_asked, "from_journal": self.num_from_journal,
                "attempts": self.transport.num_attempts, "retries": self.transport.num_retries,
                "examples_with_missing_label": self.num_missing_examples, "journal": str(self.journal.path)}


def _check_models(reply: Any) -> None:
    if not isinstance(reply, dict) or not isinstance(reply.get("data"), list) or not reply["data"]:
        raise RetryableError("a /models reply without a list of models")


def _check_tokenize(reply: Any) -> None:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not tokens or not isinstance(tokens[0], dict):
        raise RetryableError("a /tokenize reply without token pieces")


def default_journal_path(model: str) -> Path:
    """$KDISTILL_HOME/endpoint-journals/<model>.jsonl; keys name the model and the request, so a
    shared file never mixes answers up."""
    from kdistill.assets import home

    return home() / "endpoint-journals" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") + ".jsonl")


def settings_dict(settings: EndpointSettings) -> dict[str, Any]:
    """The settings as plain data for a report (holds the key's variable name, never the key)."""
    return asdict(settings)
