"""Convert the `logprobs` JSON of OpenAI-compatible servers (vLLM, OpenAI, llama.cpp, TGI) into cache rows.

Two shapes are read, per record (one record per example):

    chat        {"content": [{"token": " Hi", "logprob": -0.1, "top_logprobs": [{"token": " Hi", "logprob": -0.1}, ...]}, ...]}
    completions {"tokens": [" Hi", ...], "token_logprobs": [-0.1, ...], "top_logprobs": [{" Hi": -0.1, ...}, ...]}

A server returns token *text*, which several vocabulary entries can share; "token_id:N" (vLLM's
--return-tokens-as-token-ids, and what `cache_export` writes) names the id itself and is always exact.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from kdistill.cache.shard import TokenRow
from kdistill.errors import KdistillError

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
NOT_GIVEN = object()  # a position without "tail_logmass": the tail is 1 - sum of the top-k probabilities


def import_openai_top_logprobs(records: Iterable[Mapping[str, Any]], vocab: Any, *,
                               k: int) -> tuple[list[str], list[TokenRow]]:
    """(example ids, one TokenRow per id) from records {"id": ..., "logprobs": {...}, "seed": optional}.

    A record may instead hold a whole response ({"choices": [{"logprobs": ...}]}). ``vocab`` maps a token's
    text to its id: a dict, or a transformers tokenizer (each id's decoded text). Per position the k most
    probable entries are kept (fewer are padded with -inf) and the tail is 1 - sum of their probabilities,
    clamped at 0, unless the record gives "tail_logmass". A generation is kept only with its "seed".
    """
    to_id = token_lookup(vocab)
    ids, rows = [], []
    for n, record in enumerate(records):
        example_id = str(record.get("id", n))
        logprobs = _logprobs_of(record, example_id)
        positions = [_position_row(pos, entries, tail, to_id, k, example_id)
                     for pos, (entries, tail) in enumerate(_positions(logprobs, example_id))]
        ids.append(example_id)
        rows.append(_token_row(positions, k, record.get("seed"), _generation(record, logprobs)))
    return ids, rows


def _logprobs_of(record: Mapping[str, Any], example_id: str) -> Mapping[str, Any]:
    logprobs = record.get("logprobs")
    if logprobs is None and record.get("choices"):
        logprobs = record["choices"][0].get("logprobs")
    if not isinstance(logprobs, Mapping):
        raise KdistillError(f"record {example_id!r}: expected a 'logprobs' object (or choices[0].logprobs); found "
                            f"{type(logprobs).__name__}. Ask the server for logprobs with top_logprobs > 0.")
    return logprobs


def _positions(logprobs: Mapping[str, Any], example_id: str) -> list[tuple[list[tuple[str, float]], Any]]:
    """Per target position: [(token text, logprob)] and the given tail log-mass (or NOT_GIVEN)."""
    if "content" in logprobs:  # chat completions
        items = logprobs["content"] or []
        tops = [item.get("top_logprobs") for item in items]
        tops = [None if top is None else [(e["token"], e["logprob"]) for e in top] for top in tops]
        tails = [_tail_logmass(item) for item in items]
    elif "top_logprobs" in logprobs:  # legacy completions
        tops = [None if top is None else list(top.items()) for top in logprobs["top_logprobs"]]
        tails = [NOT_GIVEN] * len(tops)
    else:
        raise KdistillError(f"record {example_id!r}: 'logprobs' has neither 'content' (chat) nor 'top_logprobs' "
                            f"(completions); found keys {sorted(logprobs)}.")
    for pos, top in enumerate(tops):
        if not top:
            raise KdistillError(f"record {example_id!r}, position {pos}: no top_logprobs (an echoed prompt token?); "
                                f"request top_logprobs >= 1 and pass only the generated positions.")
    return list(zip(tops, tails))


def _tail_logmass(item: Mapping[str, Any]) -> Any:
    """A position's given tail log-mass (JSON null, as cache_export writes an empty tail, is -inf)."""
    if "tail_logmass" not in item:
        return NOT_GIVEN
    return -math.inf if item["tail_logmass"] is None else float(item["tail_logmass"])


def _position_row(pos: int, entries: list[tuple[str, float]], tail: Any, to_id: Callable[[str], int],
                  k: int, example_id: str) -> tuple[list[int], list[float], float]:
    """(ids, logprobs, tail log-mass) of one position: the k most probable entries, in the order given."""
    pairs = [(to_id(token), -math.inf if lp is None else float(lp)) for token, lp in entries]
    if len({t for t, _ in pairs}) != len(pairs):
        raise KdistillError(f"record {example_id!r}, position {pos}: two top_logprobs entries map to the same "
                            f"token id; ask the server for token ids (vLLM --return-tokens-as-token-ids).")
    top = set(sorted(range(len(pairs)), key=lambda i: -pairs[i][1])[:k])
    kept = [pair for i, pair in enumerate(pairs) if i in top]
    dropped = [pair for i, pair in enumerate(pairs) if i not in top]
    dropped_mass = sum(math.exp(lp) for _, lp in dropped)
    if tail is NOT_GIVEN:
        tail_mass = max(0.0, 1.0 - sum(math.exp(lp) for _, lp in kept))
    else:  # what we dropped beyond k joins the given tail
        tail_mass = math.exp(tail) + dropped_mass
    ids_k, lps_k = _pad([t for t, _ in kept], [lp for _, lp in kept], k)
    return ids_k, lps_k, math.log(tail_mass) if tail_mass > 0 else -math.inf


def _pad(ids: list[int], logprobs: list[float], k: int) -> tuple[list[int], list[float]]:
    """Fill a short row to k with the smallest unused ids at log-prob -inf (zero probability)."""
    used, candidate = set(ids), 0
    while len(ids) < k:
        if candidate not in used:
            ids, logprobs = ids + [candidate], logprobs + [-math.inf]
        candidate += 1
    return ids, logprobs


def _token_row(positions: list[tuple[list[int], list[float], float]], k: int, seed: Any,
               generation: str | None) -> TokenRow:
    ids_tk = np.array([p[0] for p in positions], dtype=np.int64).reshape(-1, k)
    logprobs_tk = np.array([p[1] for p in positions], dtype=np.float32).reshape(-1, k)
    tail_t = np.array([p[2] for p in positions], dtype=np.float32)
    if seed is None:
        return TokenRow(ids_tk, logprobs_tk, tail_t)
    return TokenRow(ids_tk, logprobs_tk, tail_t, generation=generation or "", seed=int(seed))


def _generation(record: Mapping[str, Any], logprobs: Mapping[str, Any]) -> str | None:
    """The generated text: given outright, or the sampled tokens joined."""
    if "generation" in record:
        return record["generation"]
    if "content" in logprobs:
        return "".join(item.get("token", "") for item in logprobs["content"] or [])
    return "".join(logprobs.get("tokens") or [])


def token_lookup(vocab: Any) -> Callable[[str], int]:
    """text -> id, from a dict or a tokenizer; "token_id:N" is N; unknown or ambiguous text is an error."""
    if isinstance(vocab, Mapping):
        table, ambiguous = dict(vocab), set()
    elif hasattr(vocab, "get_vocab") and hasattr(vocab, "decode"):
        table, ambiguous = _decoded_vocab(vocab)
    else:
        raise KdistillError(f"vocab must be a dict of token text -> id or a transformers tokenizer; found "
                            f"{type(vocab).__name__}.")

    def to_id(token: str) -> int:
        match = _TOKEN_ID.match(token)
        if match:
            return int(match.group(1))
        if token in ambiguous:
            raise KdistillError(f"token {token!r} is the text of several vocabulary ids; ask the server for "
                                f"token ids (vLLM --return-tokens-as-token-ids gives 'token_id:N').")
        if token not in table:
            raise KdistillError(f"token {token!r} from the server is not in the teacher's vocabulary; check that "
                                f"the tokenizer is the served model's, or ask for token ids (vLLM "
                                f"--return-tokens-as-token-ids).")
        return table[token]

    return to_id


def _decoded_vocab(tokenizer: Any) -> tuple[dict[str, int], set[str]]:
    """Each id's decoded text -> id; texts shared by several ids (e.g. partial UTF-8 bytes) are ambiguous."""
    table: dict[str, int] = {}
    ambiguous: set[str] = set()
    for token_id in sorted(tokenizer.get_vocab().values()):
        text = tokenizer.decode([token_id])
        if text in table:
            ambiguous.add(text)
        table.setdefault(text, token_id)
    return table, ambiguous
