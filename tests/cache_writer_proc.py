"""A deterministic fake teacher and a writer process for the teacher cache's kill -9 test.

    python tests/cache_writer_proc.py ROOT

elicits NUM_IDS examples into a token-level entry under ROOT, printing "ready" just before elicitation
starts and "done <seconds>" after it; the test SIGKILLs it at random moments and resumes in-process.
Every value is seeded from the example id, so any process computes the same rows for the same id.
"""

from __future__ import annotations

import hashlib
import sys
import time

import numpy as np

from kdistill.cache import TeacherCache, TokenRow, elicit_resumable, key_fields

VOCAB_SIZE = 151_936
TOP_K = 32
NUM_IDS = 240
SHARD_SIZE = 8
SECONDS_PER_SHARD = 0.01  # a stand-in for the teacher's forward pass, so kills land mid-run


def example_ids() -> list[str]:
    return [f"doc-{i:04d}" for i in range(NUM_IDS)]


def fields(ids: list[str] | None = None) -> dict:
    return key_fields(kind="tokens", teacher="fake-teacher", weights="sha256:fake", tokenizer="sha256:qwen-like",
                      prompt="{text}", data="fake-data-v1", example_ids=ids or example_ids(), k=TOP_K,
                      temperature=1.0, vocab_size=VOCAB_SIZE)


def fake_row(example_id: str) -> TokenRow:
    """Top-k targets for one example, a pure function of its id."""
    seed = int(hashlib.sha256(example_id.encode()).hexdigest()[:12], 16)
    rng = np.random.default_rng(seed)
    num_tokens = 8 + seed % 24
    offsets_t1 = rng.integers(0, VOCAB_SIZE, (num_tokens, 1))
    token_ids_tk = (offsets_t1 + np.arange(TOP_K) * (VOCAB_SIZE // TOP_K)) % VOCAB_SIZE  # distinct per row
    probs_tb = rng.dirichlet(np.full(TOP_K + 1, 0.3), num_tokens)  # k ids + the tail bucket
    logprobs_tk = np.log(np.maximum(probs_tb[:, :TOP_K], 1e-30)).astype(np.float32)
    tail_t = np.log(probs_tb[:, TOP_K]).astype(np.float32)
    if seed % 3:
        return TokenRow(token_ids_tk, logprobs_tk, tail_t)
    return TokenRow(token_ids_tk, logprobs_tk, tail_t, generation=f"answer to {example_id} ✓", seed=seed % 1000)


def fake_teacher(batch: list[str]) -> list[TokenRow]:
    time.sleep(SECONDS_PER_SHARD)
    return [fake_row(example_id) for example_id in batch]


def main(root: str) -> None:
    entry = TeacherCache(root).entry(fields())
    print("ready", flush=True)
    start = time.perf_counter()
    elicit_resumable(entry, example_ids(), fake_teacher, shard_size=SHARD_SIZE, progress=False)
    print(f"done {time.perf_counter() - start:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
