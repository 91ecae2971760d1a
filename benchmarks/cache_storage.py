"""Benchmark: bytes per target token of the teacher cache at top-k on Qwen's vocabulary, and what fp16 costs.

    python benchmarks/cache_storage.py [--vocab 151936] [--top-k 32] [--examples 32] [--tokens-per-example 256]
                                       [--shard-size 8]

A synthetic teacher gives each token Gaussian logits with a per-token scale drawn from [1.5, 6] (from
nearly flat to peaked); its top-k and tail are taken in fp32 with `SparseTargets.from_logits`, written with
`elicit_resumable`, and every byte in the entry folder (data, indexes, manifest, plan) is counted. The
stored log-probs are compared with the fp32 input, and forward KL against a random student is computed
from both. Writes benchmarks/results/cache_storage.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from kdistill.cache import TeacherCache, TokenRow, elicit_resumable, key_fields
from kdistill.losses.divergences import SparseTargets, divergence

HERE = Path(__file__).resolve().parent


def teacher_targets(example_id: str, num_tokens: int, vocab: int, top_k: int, chunk_tokens: int = 64) -> SparseTargets:
    """fp32 top-k targets of one example, seeded by its id; (chunk, V) logits at a time."""
    gen = torch.Generator().manual_seed(int(example_id.split("-")[1]))
    parts = []
    for start in range(0, num_tokens, chunk_tokens):
        rows = min(chunk_tokens, num_tokens - start)
        scale_c1 = torch.empty(rows, 1).uniform_(1.5, 6.0, generator=gen)
        parts.append(SparseTargets.from_logits(torch.randn(rows, vocab, generator=gen) * scale_c1, top_k))  # (c, V)
    return SparseTargets(torch.cat([p.token_ids for p in parts]), torch.cat([p.logprobs for p in parts]),
                         torch.cat([p.tail_logmass for p in parts]))


def _compute_fn(args, teacher_seconds: list[float]):
    """The synthetic teacher, timing itself so the write time can be told apart."""
    def compute(batch: list[str]) -> list[TokenRow]:
        start, rows = time.perf_counter(), []
        for example_id in batch:
            targets = teacher_targets(example_id, args.tokens_per_example, args.vocab, args.top_k)
            rows.append(TokenRow(targets.token_ids.numpy(), targets.logprobs.numpy(), targets.tail_logmass.numpy()))
        teacher_seconds.append(time.perf_counter() - start)
        return rows
    return compute


def _sizes(entry, num_tokens: int) -> dict:
    """Bytes on disk, in total and per target token, split into the data sections and the rest."""
    disk = sum(p.stat().st_size for p in entry.folder.rglob("*") if p.is_file())
    sections: dict[str, int] = {}
    for index in entry.shard_indexes():
        for section, meta in index["sections"].items():
            sections[section] = sections.get(section, 0) + meta["bytes"]
    metadata = disk - sum(sections.values())
    return {"disk_bytes": disk, "bytes_per_token": disk / num_tokens,
            "section_bytes_per_token": {name: b / num_tokens for name, b in sections.items()},
            "metadata_and_padding_bytes_per_token": metadata / num_tokens}


def _precision(entry, args, num_examples: int = 4) -> dict:
    """Largest error of the stored log-probs against the fp32 input, and its effect on forward KL."""
    abs_err, rel_err, tail_err, kl_rel = 0.0, 0.0, 0.0, 0.0
    for example_id in entry.ids()[:num_examples]:
        live = teacher_targets(example_id, args.tokens_per_example, args.vocab, args.top_k)
        cached = entry.tokens(example_id)
        assert torch.equal(cached.token_ids, live.token_ids), "ids must be lossless"
        err_tk = (cached.logprobs - live.logprobs).abs()
        abs_err = max(abs_err, err_tk.max().item())
        rel_err = max(rel_err, (err_tk / live.logprobs.abs().clamp_min(1e-30)).max().item())
        tail_err = max(tail_err, (cached.tail_logmass - live.tail_logmass).abs().max().item())
        student_tv = torch.randn(args.tokens_per_example, args.vocab, generator=torch.Generator().manual_seed(1))
        want_t = divergence(student_tv, live, kind="forward_kl")
        got_t = divergence(student_tv, cached, kind="forward_kl")
        kl_rel = max(kl_rel, ((got_t - want_t).abs() / want_t.abs()).max().item())
    return {"max_abs_logprob_error": abs_err, "max_rel_logprob_error": rel_err, "fp16_half_ulp_rel": 2.0**-11,
            "max_abs_tail_logmass_error": tail_err, "max_rel_forward_kl_error": kl_rel}


def _read_speed(entry, data_bytes: int) -> dict:
    """Random-order reads of every example through a fresh entry object (memory-mapped, CRC-checked),
    and a full verify (sha256 of every byte), both from a warm page cache."""
    fresh = TeacherCache(entry.folder.parent).entry(entry.fields)
    ids = random.Random(0).sample(entry.ids(), len(entry.ids()))
    start = time.perf_counter()
    num_tokens = sum(fresh.tokens(example_id).token_ids.shape[0] for example_id in ids)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    assert fresh.verify().ok
    verify_s = time.perf_counter() - start
    return {"read_s": read_s, "read_tokens_per_s": num_tokens / read_s, "verify_s": verify_s,
            "verify_mb_per_s": data_bytes / 2**20 / verify_s}


def run(args) -> dict:
    ids = [f"ex-{i}" for i in range(args.examples)]
    fields = key_fields(kind="tokens", teacher="synthetic", weights="none", tokenizer="none", prompt="none",
                        data="synthetic", example_ids=ids, k=args.top_k, temperature=1.0, vocab_size=args.vocab)
    num_tokens = args.examples * args.tokens_per_example
    with tempfile.TemporaryDirectory() as root:
        entry = TeacherCache(root).entry(fields)
        teacher_seconds: list[float] = []
        start = time.perf_counter()
        elicit_resumable(entry, ids, _compute_fn(args, teacher_seconds), shard_size=args.shard_size, progress=False)
        write_s = time.perf_counter() - start - sum(teacher_seconds)
        sizes = _sizes(entry, num_tokens)
        data_bytes = sum(index["data_bytes"] for index in entry.shard_indexes())
        result = {"args": vars(args), "target_tokens": num_tokens, "shards": len(entry.shard_names()), **sizes,
                  "teacher_s": sum(teacher_seconds), "write_s": write_s, "write_tokens_per_s": num_tokens / write_s,
                  **_read_speed(entry, data_bytes), **_precision(entry, args), "load_average": os.getloadavg()[0]}
    result["compare_bytes_per_token"] = {
        "dense_bf16": 2 * args.vocab, "topk_int32_ids_fp32_logprobs": 8 * args.top_k + 4,
        "topk_int32_ids_fp16_logprobs": 6 * args.top_k + 4, "distillkit_reported_range": [114, 300]}
    return result


def _markdown(r: dict) -> str:
    a, cmp = r["args"], r["compare_bytes_per_token"]
    sec = r["section_bytes_per_token"]
    return "\n".join([
        "# Teacher cache: storage per target token", "",
        f"V = {a['vocab']:,}, k = {a['top_k']}, {a['examples']} examples x {a['tokens_per_example']} target tokens "
        f"= {r['target_tokens']:,} tokens in {r['shards']} shards. Every file in the entry folder is counted.", "",
        "| layout | bytes / target token |", "|---|---|",
        f"| **kdistill cache (18-bit ids, fp16 log-probs, fp32 tail)** | **{r['bytes_per_token']:.1f}** |",
        f"| top-k, int32 ids + fp16 log-probs | {cmp['topk_int32_ids_fp16_logprobs']} |",
        f"| top-k, int32 ids + fp32 log-probs | {cmp['topk_int32_ids_fp32_logprobs']} |",
        f"| DistillKit (reported) | {cmp['distillkit_reported_range'][0]}-{cmp['distillkit_reported_range'][1]} |",
        f"| dense bf16 | {cmp['dense_bf16']:,} |", "",
        "Breakdown: " + ", ".join(f"{name} {b:.1f}" for name, b in sec.items())
        + f", indexes + manifest + alignment {r['metadata_and_padding_bytes_per_token']:.2f} B/token.", "",
        f"Precision: token ids are lossless; log-probs are fp16, max abs error {r['max_abs_logprob_error']:.2e}, "
        f"max relative error {r['max_rel_logprob_error']:.2e} (half an fp16 ulp is {r['fp16_half_ulp_rel']:.2e}); "
        f"the tail log-mass is fp32 (max error {r['max_abs_tail_logmass_error']:.1e}). Forward KL against a random "
        f"student from the cached targets differs from the fp32 targets' by at most "
        f"{100 * r['max_rel_forward_kl_error']:.3f} % per token.", "",
        f"Speed (one run on {os.cpu_count()} CPU cores at load average {r['load_average']:.1f}, warm page cache; "
        f"indicative only): encoding + atomic writes "
        f"{r['write_tokens_per_s']:,.0f} tokens/s (the synthetic teacher's own {r['teacher_s']:.0f} s excluded); "
        f"reading every example in random order {r['read_tokens_per_s']:,.0f} tokens/s; a full verify (sha256 of "
        f"every byte) {r['verify_mb_per_s']:,.0f} MB/s.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--tokens-per-example", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=8, help="examples per shard")
    result = run(parser.parse_args())
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cache_storage.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (HERE / "results" / "cache_storage.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
