"""A generation task's teacher on a server (`teacher.endpoint`): its written targets and its top-k at every target
token, in the same keyed, resumable cache (and the same TokenRow layout) as the in-process teacher's.

    served_targets(cfg, examples, tokenizer, progress=) -> (cache entry, whether it holds per-token rows, vocab size)
    served_member_entry(cfg, member, key, examples, targets, tokenizer) -> an ensemble member's rows on its server

The rows are along the *student's* tokens: prompt and target go to the server as the student tokenizer's ids
(as `encode_targets` makes them for training), after the server's /tokenize has been shown to split probe texts
and prompts the same way; when it does not, the run stops, or with `endpoint.tokenizer_mismatch: sequence_kd`
keeps only the written targets. Examples are asked concurrently (one per server slot); the cache's shards are
the unit a kill can lose, and every request is retried (and a server kdistill started is restarted) on failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kdistill.cache.entry import CacheEntry, TeacherCache
from kdistill.cache.keys import fingerprint, key_fields
from kdistill.cache.openai import token_lookup
from kdistill.cache.resumable import elicit_resumable
from kdistill.cache.shard import TokenRow
from kdistill.config import RunConfig, TeacherConfig
from kdistill.data.generative import prompt_text
from kdistill.data.records import GenExample
from kdistill.errors import KdistillError
from kdistill.losses.token_kd import encode_targets
from kdistill.teachers.elicit import tokenizer_fingerprint
from kdistill.teachers.served import serving
from kdistill.teachers.served_tokens import ServedTokens, Written, rows_to_arrays

log = logging.getLogger(__name__)


@dataclass
class Asked:
    """What one example needs from the server."""

    prompt: str
    target: str | None  # None: the teacher writes it


def served_client(t: TeacherConfig, config_key: str = "teacher") -> tuple[ServedTokens, Any]:
    """A teacher's client, its server started when kdistill serves it; (client, server or None)."""
    settings, server = serving(t.endpoint, t.model, config_key)
    if server is not None:  # a whole target comes back in one reply, and a busy CPU server takes minutes for it; a
        settings = replace(settings, timeout_s=max(settings.timeout_s, 600.0))  # dead one is a refused connection
    client = ServedTokens(settings, model=t.model, k=t.token_top_k, config_key=config_key)
    client.transport.revive = server.revive if server is not None else None
    return client, server


def token_rows_wanted(cfg: RunConfig, client: ServedTokens, tokenizer, examples: list[GenExample]) -> bool:
    """Whether per-token rows are asked: the kd term wants them and the server tokenizes as the student does."""
    if cfg.objective.kd.weight <= 0:
        return cfg.task.targets != "teacher"  # data-given targets: the rows are all a teacher gives
    probes = [prompt_text(cfg.task.prompt_template, e) for e in examples[:3]]
    differs = client.check_tokenizer(tokenizer, probes)
    if differs is None:
        return True
    if cfg.teacher.endpoint.tokenizer_mismatch == "sequence_kd" and cfg.task.targets == "teacher":
        log.warning("the served teacher tokenizes differently from the student (%s); as teacher.endpoint."
                    "tokenizer_mismatch asks, only its written targets are kept (sequence-level KD)", differs)
        return False
    raise KdistillError(f"token-level KD needs the teacher and student to share a tokenizer, and {differs}. Pick a "
                        "student of the teacher's family, or set teacher.endpoint.tokenizer_mismatch: sequence_kd "
                        "(the teacher's written targets only; needs task.targets: teacher), or objective.kd.weight: 0.")


def _fields(cfg: RunConfig, client: ServedTokens, tokenizer, examples: list[GenExample], with_rows: bool,
            vocab_size: int, member: TeacherConfig | None = None, targets: dict[str, str] | None = None
            ) -> dict[str, Any]:
    """Everything that determines the served rows: the served model (its own description, and for a server kdistill
    starts its GGUF's name and arguments), the student tokenizer the rows are along, prompt, decoding, k, data.
    ``member`` and ``targets``: an ensemble member's rows along the first teacher's targets (it writes none)."""
    t, task = member or cfg.teacher, cfg.task
    served = {"served": client.served_model(), "server_args": list(t.endpoint.server_args),
              "api": "llama.cpp /completion" if client.is_llama_cpp() else "openai /v1/completions"}
    decoding = ({"sampling": True, "sampling_temperature": t.sampling_temperature, "top_p": t.top_p,
                 "seed": t.sampling_seed} if t.sampling else {"sampling": False})
    return key_fields(
        kind="tokens", teacher=f"served:{t.model}", weights=f"served:{fingerprint(served)}",
        tokenizer=tokenizer_fingerprint(tokenizer), prompt=fingerprint([task.prompt_template, task.targets, task.stop]),
        data=fingerprint([(e.id, e.prompt, targets[e.id] if targets else e.target) for e in examples]),
        example_ids=[e.id for e in examples],
        k=t.token_top_k if with_rows else 1, temperature=1.0, vocab_size=vocab_size,
        max_length=cfg.student.max_length, target_after_prompt="continuation: a space unless either side has one",
        token_rows=with_rows,
        written_targets=decoding | {"max_new_tokens": task.max_new_tokens, "ends": "eos, stop strings"}
        if task.targets == "teacher" and targets is None else None)


def _split(tokenizer, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids + EOS) exactly as training tokenizes the pair (`encode_targets`)."""
    batch = encode_targets(tokenizer, [prompt], [target], max_length=max_length)
    ids = batch.input_ids_bt[0][batch.attention_mask_bt[0].bool()].tolist()
    first = int(batch.loss_mask_bt[0].nonzero()[0]) + 1  # the last prompt position predicts the first target token
    return ids[:first], ids[first:]


def _known_rows(written: Written, target_ids: list[int]) -> dict[int, Any]:
    """The rows the server gave while writing, for the leading tokens where its tokens are the student's."""
    known = {}
    for j, (token, row) in enumerate(zip(written.token_ids, written.rows)):
        if j >= len(target_ids) or token != target_ids[j]:
            break
        known[j] = row
    return known


def _one(cfg: RunConfig, client: ServedTokens, tokenizer, asked: Asked, with_rows: bool, to_id: Any) -> TokenRow:
    t, task, max_length = cfg.teacher, cfg.task, cfg.student.max_length
    written, seed, prompt_ids = None, None, None
    if asked.target is None:
        prompt_ids = tokenizer(asked.prompt, truncation=True, max_length=max_length - task.max_new_tokens)["input_ids"]
        written = client.write(prompt_ids, max_new_tokens=task.max_new_tokens, sampling=t.sampling,
                               temperature=t.sampling_temperature, top_p=t.top_p, seed=t.sampling_seed,
                               stop=list(task.stop))
        target, seed = written.text.strip(), t.sampling_seed if t.sampling else 0
    else:
        target = asked.target
    if not with_rows:  # one placeholder row (the shard format holds at least one); token_rows: false in the key
        eos = np.array([[tokenizer.eos_token_id or 0]], dtype=np.int64)
        return TokenRow(eos, np.zeros((1, 1), dtype=np.float32), np.full(1, -np.inf, dtype=np.float32),
                        generation=target, seed=seed)
    score_prompt, target_ids = _split(tokenizer, asked.prompt, target, max_length)
    # the rows written along the very prompt the scoring sees (a prompt cut for writing differs) are the rows
    known = _known_rows(written, target_ids) if written is not None and score_prompt == prompt_ids else {}
    rows = client.score(score_prompt, target_ids, known, to_id=to_id)
    return TokenRow(*rows_to_arrays(rows, t.token_top_k), generation=target if seed is not None else None, seed=seed)


def served_targets(cfg: RunConfig, examples: list[GenExample], tokenizer, *,
                   progress: bool = True) -> tuple[CacheEntry, bool, int]:
    """The served teacher's cache entry for ``examples``, filled with only what it lacked, whether it holds
    per-token rows (see `token_rows_wanted`), and the vocabulary size its rows index."""
    client, _ = served_client(cfg.teacher)
    with_rows = token_rows_wanted(cfg, client, tokenizer, examples)
    vocab_size = _vocab_size(client, tokenizer)
    entry = TeacherCache(cfg.paths.teacher_cache).entry(_fields(cfg, client, tokenizer, examples, with_rows, vocab_size))
    by_id = {e.id: e for e in examples}
    to_id = token_lookup(tokenizer) if with_rows and not client.is_llama_cpp() else None

    def one(example_id: str) -> TokenRow:
        example = by_id[example_id]
        asked = Asked(prompt_text(cfg.task.prompt_template, example),
                      None if cfg.task.targets == "teacher" else example.target)
        return _one(cfg, client, tokenizer, asked, with_rows, to_id)

    _elicit_in_parallel(client, entry, list(by_id), one, progress=progress)
    log.info("served teacher: %d requests, %d retries", client.num_requests, client.transport.num_retries)
    return entry, with_rows, vocab_size


def _vocab_size(client: ServedTokens, tokenizer) -> int:
    """The vocabulary size the served rows index: the server's n_vocab, or the tokenizer's if that is larger."""
    return max(int(client.served_model().get("meta", {}).get("n_vocab", 0)), len(tokenizer))


def _elicit_in_parallel(client: ServedTokens, entry: CacheEntry, ids: list[str], one: Callable[[str], TokenRow], *,
                        progress: bool) -> None:
    """Fill ``entry`` with ``one(id)`` for the ids it lacks, as many requests in flight as the client allows."""
    workers = client.settings.max_concurrency

    def compute(chunk: list[str]) -> list[TokenRow]:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdistill-served") as pool:
            return list(pool.map(one, chunk))

    # a shard per two rounds of the server's slots: every slot stays busy, and a kill loses at most that much
    elicit_resumable(entry, ids, compute, shard_size=max(8, 2 * workers), progress=progress)


def served_member_entry(cfg: RunConfig, member: TeacherConfig, config_key: str, examples: list[GenExample],
                        targets: dict[str, str], tokenizer, *, progress: bool = True) -> tuple[CacheEntry, int]:
    """An ensemble member on a server: its rows along the first teacher's ``targets`` (example id -> text),
    teacher-forced, along ``tokenizer``'s tokens (the student's, which the first teacher shares), in an entry of its
    own; (the entry, the vocabulary size its rows index). Its /tokenize must split text as ``tokenizer`` does."""
    client, _ = served_client(member, config_key)
    differs = client.check_tokenizer(tokenizer, [prompt_text(cfg.task.prompt_template, e) for e in examples[:3]])
    if differs is not None:
        raise KdistillError(f"{config_key} ({member.display_name!r}) tokenizes differently from the first teacher and "
                            f"the student: {differs}. A generation task mixes its teachers token by token, so they "
                            f"must share one tokenizer: remove it from `teachers`, or serve one of the same family.")
    vocab_size = _vocab_size(client, tokenizer)
    entry = TeacherCache(cfg.paths.teacher_cache).entry(
        _fields(cfg, client, tokenizer, examples, True, vocab_size, member=member, targets=targets))
    by_id = {e.id: e for e in examples}
    to_id = token_lookup(tokenizer) if not client.is_llama_cpp() else None

    def one(example_id: str) -> TokenRow:
        prompt_ids, target_ids = _split(tokenizer, prompt_text(cfg.task.prompt_template, by_id[example_id]),
                                        targets[example_id], cfg.student.max_length)
        return TokenRow(*rows_to_arrays(client.score(prompt_ids, target_ids, to_id=to_id), member.token_top_k))

    _elicit_in_parallel(client, entry, list(by_id), one, progress=progress)
    return entry, vocab_size
