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
it is redacted from any server text we repeat. The HTTP side (retries, journal) is
``kdistill.teachers.http``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError
from kdistill.models.base import LabelModel
from kdistill.teachers import http
from kdistill.teachers.http import Journal, RequestFailed, RetryableError, Transport, retry_hint

log = logging.getLogger(__name__)

MISSING_FLOOR = 1e-8
"""Smallest probability a label is ever given, so no log-probability is -inf."""


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


# ------------------------------------------------------------------------------------------------
# Replies -> label scores (pure functions)


def parse_top_logprobs(reply: Any) -> list[Candidate]:
    """The first generated token's top-N alternatives, from either layout servers use.

    Chat layout (also llama.cpp's /v1/completions): ``logprobs.content[0].top_logprobs`` = a list
    of {token, logprob, id?}. Legacy completions layout (OpenAI, vLLM): ``logprobs.top_logprobs[0]``
    = {token: logprob}. A completion without any log-probabilities is a server that does not give them,
    which asking again cannot change; anything else is a malformed reply, worth asking again.
    """
    _refuse_plain_completion(reply)
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


def _refuse_plain_completion(reply: Any) -> None:
    choice = (reply.get("choices") or [None])[0] if isinstance(reply, dict) else None
    answered = isinstance(choice, dict) and ("text" in choice or "message" in choice)
    if answered and not choice.get("logprobs"):
        raise KdistillError("the server answers without log-probabilities (its reply has no choices[0].logprobs); "
                            "kdistill needs the top log-probabilities of the first answer token: use a server that "
                            "returns them (llama-server, vLLM), or endpoint.api: chat for a chat API that does.")


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

    def __init__(self, settings: EndpointConfig, *, model: str, labels: list[str], verbalizers: list[str],
                 prompt_template: str, prefix: str = "", journal_path: str | Path | None = None,
                 config_key: str = "teacher") -> None:
        """``config_key``: where the run's config holds this teacher (teacher, teachers[0] ...), for the hints."""
        self.settings, self.model_name, self.labels, self.verbalizers = settings, model, labels, verbalizers
        self.config_key = config_key
        self.prompt_template, self.prefix = prompt_template, prefix
        self.transport = Transport(settings)
        self.journal = Journal(journal_path or default_journal_path(model))
        self.num_from_journal = 0
        self.num_asked = 0
        self.num_missing_examples = 0
        self.num_prompt_tokens = self.num_without_usage = 0  # the server's `usage`, for the card's teacher cost
        self._served: dict[str, Any] | None = None
        self._label_tokens: list[LabelToken] | None = None
        self._fresh = False

    def prompt(self, text: str) -> str:
        """Exactly the in-process CausalLMLabelModel's prompt: few-shot prefix + template."""
        return self.prefix + self.prompt_template.replace("{text}", text)

    # -- what the server serves, and how it spells the labels

    def served_model(self) -> dict[str, Any]:
        """The server's own description of the model (GET /models: id, owner, llama.cpp's meta),
        part of every journal key so that another model's answers are never reused."""
        if self._served is None:
            try:
                reply = self.transport.ask(self.settings.base_url + "/models", None, check=http.check_models_reply)
            except RequestFailed as err:  # down, slow or failing at start-up, after every retry and back-off
                raise KdistillError(f"the teacher's server did not answer: {self.transport.redact(str(err))}; start "
                                    f"it or check {self.config_key}.endpoint.base_url ({retry_hint(self.config_key)})."
                                    ) from None
            entries = reply["data"]
            entry = next((e for e in entries if e.get("id") == self.model_name), None)
            if entry is None and len(entries) == 1:
                entry = entries[0]  # llama-server: one model, whatever name is asked for
            if entry is None:
                names = [e.get("id") for e in entries]
                raise KdistillError(f"{self.settings.base_url} does not serve {self.config_key}.model "
                                    f"{self.model_name!r}; it serves {names}: set {self.config_key}.model to one of them.")
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
                                    f"{self.model_name} ({[t.piece for t in tokens]}); choose words whose "
                                    "first tokens differ (a leading space usually matters).")
            self._label_tokens = tokens
        return self._label_tokens

    def _first_token(self, word: str) -> LabelToken:
        url = self.settings.server_root + "/tokenize"
        try:
            reply = self.transport.ask(url, {"content": word, "add_special": False, "with_pieces": True},
                                       check=http.check_tokenize_reply)
        except (KdistillError, RequestFailed):
            return LabelToken(word)  # no /tokenize here (an OpenAI-style API without it)
        first = reply["tokens"][0]
        if len(reply["tokens"]) > 1:
            log.warning("verbalizer %r is %d tokens for %s; scoring its first token %r",
                        word, len(reply["tokens"]), self.model_name, first.get("piece"))
        return LabelToken(str(first.get("piece", word)), _int_or_none(first.get("id")))

    # -- requests

    def request_body(self, text: str) -> dict[str, Any]:
        s = self.settings
        if s.api == "chat":
            body = {"model": self.model_name, "messages": [{"role": "user", "content": self.prompt(text)}],
                    "logprobs": True, "top_logprobs": s.top_logprobs}
        else:
            body = {"model": self.model_name, "prompt": self.prompt(text), "logprobs": s.top_logprobs}
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
        if self._fresh:
            return self._ask_fresh(bodies)
        keys = [self.request_key(b) for b in bodies]
        todo: dict[str, tuple[dict[str, Any], str | None]] = {}
        for i, key in enumerate(keys):
            if self.journal.get(key) is None:
                todo.setdefault(key, (bodies[i], ids[i] if ids else None))
        self.num_from_journal += len(set(keys)) - len(todo)
        if todo:
            self._ask_all(todo, num_wanted=len(set(keys)))
        return [self.journal.get(key)["reply"] for key in keys]

    @contextmanager
    def fresh_requests(self) -> Iterator[None]:
        """Inside this block every call asks the server and keeps nothing: for timing the teacher
        (an answer read from the journal costs nothing and would make the server look instant)."""
        self._fresh = True
        try:
            yield
        finally:
            self._fresh = False

    def _ask_fresh(self, bodies: list[dict[str, Any]]) -> list[Any]:
        url = self._completion_url()
        try:
            if len(bodies) == 1:  # timed at batch 1: no thread in between
                return [self.transport.ask(url, bodies[0], check=parse_top_logprobs)]
            with ThreadPoolExecutor(max_workers=self.settings.max_concurrency) as pool:
                return list(pool.map(lambda body: self.transport.ask(url, body, check=parse_top_logprobs), bodies))
        except RequestFailed as err:
            raise KdistillError(f"timing the endpoint teacher failed: {self.transport.redact(str(err))}; its answers "
                                f"are kept in {self.journal.path}, so running the command again once the server "
                                f"answers costs only the timing ({retry_hint(self.config_key)}).") from None

    def _completion_url(self) -> str:
        return self.settings.base_url + ("/chat/completions" if self.settings.api == "chat" else "/completions")

    def _ask_all(self, todo: dict[str, tuple[dict[str, Any], str | None]], num_wanted: int) -> None:
        url = self._completion_url()
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
                    failures.append(err)
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            raise self._failure(failures)

    def _failure(self, failures: list[Exception]) -> KdistillError:
        """One error for a batch that failed: the first real cause, what is kept, and what to do: for an outage,
        wait longer (the retry settings); for a refusal, change what was refused (retrying cannot help)."""
        real = [f for f in failures if not str(f).startswith("stopped")] or failures
        kept = (f"{len(self.journal)} answers are kept in {self.journal.path} ({self.num_asked} of them asked by "
                "this run), and a re-run asks only for the rest")
        cause = self.transport.redact(str(real[0])).rstrip(".")
        if isinstance(real[0], KdistillError):
            return KdistillError(f"the endpoint teacher cannot go on: {cause}. {kept}.")
        return KdistillError(f"the endpoint teacher could not get an answer after retrying: {cause}. {kept}, once the "
                             f"server answers again ({retry_hint(self.config_key)}).")

    def _ask_and_keep(self, url: str, key: str, body: dict[str, Any], example_id: str | None,
                      stop: threading.Event) -> None:
        reply = self.transport.ask(url, body, check=parse_top_logprobs, stop=stop)
        self.journal.append({"key": key, "id": example_id, "reply": reply})
        usage = reply.get("usage") if isinstance(reply, dict) else None
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        self.num_prompt_tokens += tokens if isinstance(tokens, int) else 0
        self.num_without_usage += not isinstance(tokens, int)
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
                     "the reply allows (see kdistill.teachers.endpoint.label_scores)",
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
                "prompt_template": self.prompt_template, "prefix": self.prefix, "model": self.model_name,
                "api": s.api, "top_logprobs": s.top_logprobs, "extra_body": s.extra_body,
                "served": self.served_model()}

    def stats(self) -> dict[str, Any]:
        """Counts for a run's log or report (how much the journal saved, how flaky the server was)."""
        return {"asked": self.num_asked, "from_journal": self.num_from_journal,
                "attempts": self.transport.num_attempts, "retries": self.transport.num_retries,
                "examples_with_missing_label": self.num_missing_examples, "prompt_tokens": self.num_prompt_tokens,
                "replies_without_usage": self.num_without_usage, "journal": str(self.journal.path)}


def default_journal_path(model: str) -> Path:
    """$KDISTILL_HOME/endpoint-journals/<model>.jsonl; keys name the model and the request, so a
    shared file never mixes answers up."""
    from kdistill.assets import home

    return home() / "endpoint-journals" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") + ".jsonl")
