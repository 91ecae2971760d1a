"""Benchmark: peak memory and time of token-level forward KL through the student's lm_head, chunked vs naive.

    python benchmarks/chunked_kd_memory.py [--vocab 151936] [--tokens 4096] [--hidden 896] [--chunk-tokens 16 32]
                                           [--teacher dense|sparse] [--top-k 64] [--naive-tokens 1024] [--repeats 2]

naive:   divergence(hidden @ lm_head.T, teacher, kind="forward_kl"), all (tokens x vocab) logits at once.
chunked: chunked_token_loss(hidden, lm_head, teacher, divergence), `--chunk-tokens` rows of logits at a time
         (one variant per value given).

Each variant runs in a fresh subprocess. It builds its inputs, reads its peak resident set size (getrusage
ru_maxrss), runs forward + backward, and reads the peak again: the difference is what the loss needed above
its inputs. RSS counts every page torch's CPU allocator touched, so it cannot miss a tensor (tracemalloc
does not see torch's allocations); allocator slack can only make it an over-estimate. Writes
benchmarks/results/chunked_kd_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdistill.losses.divergences import SparseTargets, chunked_token_loss, divergence, token_mean

HERE = Path(__file__).resolve().parent


def _inputs(tokens: int, vocab: int, hidden: int, teacher_kind: str, top_k: int):
    """Student hidden states, lm_head weight and teacher targets, built without large temporaries (the
    baseline reading must not already hold a peak above the inputs)."""
    gen = torch.Generator().manual_seed(0)
    hidden_nh = torch.randn(tokens, hidden, generator=gen).requires_grad_()
    lm_head_vh = torch.randn(vocab, hidden, generator=gen).mul_(hidden**-0.5).requires_grad_()
    if teacher_kind == "dense":
        return hidden_nh, lm_head_vh, torch.randn(tokens, vocab, generator=gen).mul_(2.0)  # (N, V)
    # distinct ids per row: a strided comb, shifted per row
    offsets_n = torch.randint(0, vocab, (tokens, 1), generator=gen)
    token_ids_nk = (offsets_n + torch.arange(top_k) * (vocab // top_k)) % vocab
    logprobs_nk = torch.randn(tokens, top_k, generator=gen).log_softmax(-1) + torch.tensor(0.95).log()
    return hidden_nh, lm_head_vh, SparseTargets(token_ids_nk, logprobs_nk, torch.full((tokens,), 0.05).log())


def _loss(variant: str, hidden_nh, lm_head_vh, teacher, chunk_tokens: int) -> torch.Tensor:
    forward_kl = functools.partial(divergence, kind="forward_kl")
    if variant == "naive":
        return token_mean(forward_kl(hidden_nh @ lm_head_vh.T, teacher))  # (N, V) logits
    return token_mean(chunked_token_loss(hidden_nh, lm_head_vh, teacher, forward_kl, chunk_tokens=chunk_tokens))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(args) -> dict:
    """One variant ("naive" or "chunked:<tokens>"), in this fresh process."""
    variant, _, chunk = args.variant.partition(":")
    chunk_tokens = int(chunk or 0)
    tokens = args.naive_tokens if variant == "naive" else args.tokens
    small = _inputs(8, 64, args.hidden, args.teacher, min(args.top_k, 64))
    _loss(variant, *small, 4).backward()  # warm-up: thread pools, kernels
    del small
    hidden_nh, lm_head_vh, teacher = _inputs(tokens, args.vocab, args.hidden, args.teacher, args.top_k)
    baseline = _peak_rss_bytes()
    seconds = []
    for _ in range(args.repeats):
        hidden_nh.grad = lm_head_vh.grad = None
        start = time.perf_counter()
        loss = _loss(variant, hidden_nh, lm_head_vh, teacher, chunk_tokens)
        loss.backward()
        seconds.append(time.perf_counter() - start)
        value = loss.item()
        del loss
    above_inputs = _peak_rss_bytes() - baseline
    # any implementation must return these two; what is left is the loss's own working memory
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (hidden_nh, lm_head_vh))
    return {"variant": args.variant, "tokens": tokens, "loss": value, "seconds": seconds,
            "median_s": statistics.median(seconds), "above_inputs_bytes": above_inputs, "grad_bytes": grad_bytes,
            "kb_per_token": above_inputs / 1024 / tokens,
            "working_kb_per_token": (above_inputs - grad_bytes) / 1024 / tokens,
            "ms_per_token": 1000 * statistics.median(seconds) / tokens, "threads": torch.get_num_threads()}


def _markdown(result: dict) -> str:
    a, rows = result["args"], result["variants"]
    naive = rows["naive"]
    teacher = f"sparse teacher (top-{a['top_k']} + tail)" if a["teacher"] == "sparse" else "dense teacher (N, V)"
    md = ["# Token-level forward KL through the lm_head: chunked vs naive", "",
          f"V = {a['vocab']:,}, hidden {a['hidden']}, {teacher}, fp32, forward + backward, median of "
          f"{a['repeats']}, {naive['threads']} threads.", "",
          "Memory is the rise in the process's peak resident set size (ru_maxrss) from after the inputs were "
          "built to after the last backward, each variant in a fresh subprocess; RSS sees every page torch "
          "touched, and allocator slack can only inflate it (glibc's mmap threshold is fixed at 64 KiB with "
          "MALLOC_MMAP_THRESHOLD_, else its heap fragments and RSS grows with the number of chunks, though "
          "no tensor is kept). *Above inputs* includes the gradients w.r.t. "
          "hidden (N, H) and lm_head (V, H), which any implementation returns (the lm_head one alone is "
          f"{a['vocab'] * a['hidden'] * 4 / 2**20:,.1f} MB); *working* excludes them and is what chunking "
          "controls: about six live (chunk x V) fp32 tensors, independent of the number of tokens.", "",
          "| variant | tokens | above inputs, MB | working, KB/token | ms/token | time vs naive | working vs naive |",
          "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['tokens']:,} | {r['above_inputs_bytes'] / 2**20:,.0f} | "
                  f"{r['working_kb_per_token']:,.1f} | {r['ms_per_token']:.3f} | "
                  f"{r['ms_per_token'] / naive['ms_per_token']:.2f}x | "
                  f"{r['working_kb_per_token'] / naive['working_kb_per_token']:.4f}x |")
    if any(r["tokens"] != naive["tokens"] for r in rows.values()):
        md += ["", f"The naive variant ran on {naive['tokens']:,} tokens (`--naive-tokens`), as at {a['tokens']:,} "
                   "its peak may exceed the machine's memory. Its working memory and time grow linearly with tokens, "
                   "so the per-token columns compare; the chunked variants' working memory does not grow, so their "
                   "KB/token falls as tokens grow."]
    else:
        diffs = [abs(r["loss"] - naive["loss"]) for r in rows.values()]
        md += ["", f"Losses agree to {max(diffs):.1e}."]
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[16, 32],
                        help="one chunked variant per value; working memory ~ 6 x chunk x vocab x 4 bytes")
    parser.add_argument("--teacher", choices=("dense", "sparse"), default="dense")
    parser.add_argument("--top-k", type=int, default=64, help="ids per token for --teacher sparse")
    parser.add_argument("--naive-tokens", type=int, default=None,
                        help="tokens for the naive variant (default: --tokens, at most 1024); it needs ~5 MB per "
                             "token at V = 151,936")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # "naive" or "chunked:<tokens>", for the subprocesses
    args = parser.parse_args()
    args.naive_tokens = args.naive_tokens or min(args.tokens, 1024)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure(args)))
        return
    rows = {}
    for variant in ["naive"] + [f"chunked:{c}" for c in args.chunk_tokens]:
        # glibc raises its mmap threshold after freeing a large block, then serves equal-sized blocks
        # from a heap that fragments: RSS then grows with the number of chunks though no tensor is
        # kept. A fixed threshold returns freed blocks to the OS, so RSS tracks live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            sys.exit(f"{variant} failed (exit {child.returncode}; -9 is usually out of memory):\n{child.stderr}")
        rows[variant] = json.loads(child.stdout.splitlines()[-1])
    result = {"args": {k: v for k, v in vars(args).items() if k != "variant"}, "variants": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "chunked_kd_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    (HERE / "results" / "chunked_kd_memory.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
