"""Benchmark: peak memory and time of token-level forward KL through the student's lm_head, chunked vs naive.

    python benchmarks/chunked_kd_memory.py [--vocab 151936] [--tokens 4096] [--hidden 896] [--chunk-tokens 64]
                                           [--teacher dense|sparse] [--top-k 64] [--naive-tokens 1024] [--repeats 3]
                                           [--peer-python PYTHON] [--liger-chunk-tokens 1024]

naive:   divergence(hidden @ lm_head.T, teacher, kind="forward_kl"), all (tokens x vocab) logits at once.
chunked: chunked_token_loss(hidden, lm_head, teacher, divergence), `--chunk-tokens` rows of logits at a time
         (one variant per value given).
trl:     TRL's ChunkedDivergenceFunction (trl.kernels.chunked_divergence, beta = 0: forward KL), its CPU path.
liger:   Liger-Kernel's LigerFusedLinearJSDLoss (liger_kernel.chunked_loss, beta = 0, CE weight 0, not compiled),
         `--liger-chunk-tokens` rows at a time; and liger_fused_linear_jsd, its Triton LigerFusedLinearJSD,
         which on a CPU records the error it raises.
TRL and Liger run in ``--peer-python`` (a venv that has them; kdistill does not depend on either) and record
"not installed" where they cannot be imported. Their APIs take the teacher's hidden states and lm_head, not
its logits, so the teacher is built that way for every variant: kdistill and naive get its logits
precomputed as an input, TRL and Liger project them inside the loss (one more matmul in each of their passes).

Each variant runs in a fresh subprocess. It builds its inputs, reads its resident set size (/proc/self/statm),
runs forward + backward, and reads the peak resident set size (getrusage ru_maxrss): the difference is what
the loss needed above its inputs. RSS counts every page torch's CPU allocator touched, so it cannot miss a tensor (tracemalloc
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
import torch.nn.functional as F

from kdistill.io import atomic_write_text
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.divergences import SparseTargets, divergence, token_mean

HERE = Path(__file__).resolve().parent


def _inputs(tokens: int, vocab: int, hidden: int, teacher_kind: str, top_k: int, *, peer: bool = False):
    """Student hidden states and lm_head weight, and the teacher: its hidden states and lm_head for a peer
    (TRL, Liger), else its logits (dense) or top-k (sparse) made from them. Built without large temporaries:
    the baseline reading is a peak, so a freed input-sized tensor would hide that much of the loss's memory
    (the teacher's lm_head is made and used one block of rows at a time where it is not kept)."""
    gen = torch.Generator().manual_seed(0)
    hidden_nh = torch.randn(tokens, hidden, generator=gen).requires_grad_()
    lm_head_vh = torch.randn(vocab, hidden, generator=gen).mul_(hidden**-0.5).requires_grad_()
    teacher_hidden_nh = torch.randn(tokens, hidden, generator=gen)
    teacher_head_vh = torch.empty(vocab, hidden) if peer else None
    teacher_nv = None if peer else torch.empty(tokens, vocab)
    for rows in (slice(start, start + 4096) for start in range(0, vocab, 4096)):
        head_bh = torch.randn(min(rows.stop, vocab) - rows.start, hidden, generator=gen).mul_(2.0 * hidden**-0.5)
        if peer:  # logits' std ~2
            teacher_head_vh[rows] = head_bh
        else:
            torch.mm(teacher_hidden_nh, head_bh.T, out=teacher_nv[:, rows])  # (N, block)
    if peer:
        return hidden_nh, lm_head_vh, (teacher_hidden_nh, teacher_head_vh)
    if teacher_kind == "dense":
        return hidden_nh, lm_head_vh, teacher_nv
    return hidden_nh, lm_head_vh, SparseTargets.from_logits(teacher_nv, top_k)


def _loss(variant: str, hidden_nh, lm_head_vh, teacher, chunk_tokens: int) -> torch.Tensor:
    forward_kl = functools.partial(divergence, kind="forward_kl")
    if variant == "naive":
        return token_mean(forward_kl(hidden_nh @ lm_head_vh.T, teacher))  # (N, V) logits
    if variant == "chunked":
        return token_mean(chunked_token_loss(hidden_nh, lm_head_vh, teacher, forward_kl, chunk_tokens=chunk_tokens))
    teacher_hidden_nh, teacher_head_vh = teacher
    if variant == "trl":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        divergence_n, _entropy_n = ChunkedDivergenceFunction.apply(hidden_nh, lm_head_vh, None, teacher_hidden_nh,
                                                                   teacher_head_vh, None, 0.0, 1.0)
        return divergence_n.mean()
    labels_n = torch.zeros(hidden_nh.shape[0], dtype=torch.long)  # unused: the hard (CE) weight is 0
    if variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0, temperature=1.0,
                                       compiled=False, chunk_size=chunk_tokens)
        return loss(hidden_nh, lm_head_vh, teacher_hidden_nh, teacher_head_vh, labels_n)
    if variant == "liger_fused_linear_jsd":
        from liger_kernel.transformers import LigerFusedLinearJSD

        return LigerFusedLinearJSD(jsd_beta=0.0)(hidden_nh, lm_head_vh, teacher_hidden_nh, teacher_head_vh, None)
    raise ValueError(f"unknown variant {variant!r}")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    """The resident set now (not its peak): a temporary freed while the inputs were built is not counted."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


PEERS = ("trl", "liger", "liger_fused_linear_jsd")


def _versions(variant: str) -> dict:
    from importlib.metadata import version

    package = "trl" if variant == "trl" else "liger-kernel"
    return {"package": f"{package} {version(package)}", "torch": torch.__version__}


def measure(args) -> dict:
    """One variant ("naive", "chunked:<tokens>", "trl", "liger:<tokens>", ...), in this fresh process."""
    variant, _, chunk = args.variant.partition(":")
    chunk_tokens = int(chunk or 0)
    peer = variant in PEERS
    tokens = args.naive_tokens if variant == "naive" else args.peer_tokens if peer else args.tokens
    try:
        info = _versions(variant) if peer else {}
        small = _inputs(8, 64, args.hidden, args.teacher, min(args.top_k, 64), peer=peer)
        _loss(variant, *small, 4).backward()  # warm-up: thread pools, kernels
    except ImportError as err:
        return {"variant": args.variant, "error": f"not installed: {err}"}
    except Exception as err:  # a peer that does not run here (Triton on a CPU): its own words go in the results
        return {"variant": args.variant, **info, "error": f"{type(err).__name__}: {err}".strip()[:400]}
    del small
    hidden_nh, lm_head_vh, teacher = _inputs(tokens, args.vocab, args.hidden, args.teacher, args.top_k, peer=peer)
    baseline = _rss_bytes()
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
    return {"variant": args.variant, **info, "tokens": tokens, "loss": value, "seconds": seconds,
            "median_s": statistics.median(seconds), "above_inputs_bytes": above_inputs, "grad_bytes": grad_bytes,
            "kb_per_token": above_inputs / 1024 / tokens,
            "working_kb_per_token": (above_inputs - grad_bytes) / 1024 / tokens,
            "ms_per_token": 1000 * statistics.median(seconds) / tokens, "threads": torch.get_num_threads()}


def equality(args, tokens: int = 256) -> dict:
    """Relative differences of the chunked loss from F.kl_div on full logits (value, and the norm of each
    gradient's difference over the reference's norm), fp32, on ``tokens``; and of both from the same
    computed in float64, which shows how far float32 itself is from exact at this V."""
    hidden_nh, lm_head_vh, teacher = _inputs(tokens, args.vocab, args.hidden, "dense", args.top_k)

    def kl_div(h, w, t):
        return F.kl_div((h @ w.T).log_softmax(-1), t.log_softmax(-1), log_target=True,
                        reduction="none").sum(-1).mean()

    def rel(value, grads, ref_value, ref_grads):
        return {"value_rel": abs(value.item() - ref_value.item()) / abs(ref_value.item()),
                "grad_hidden_rel": ((grads[0].double() - ref_grads[0]).norm() / ref_grads[0].norm()).item(),
                "grad_lm_head_rel": ((grads[1].double() - ref_grads[1]).norm() / ref_grads[1].norm()).item()}

    exact_leaves = [x.detach().double().requires_grad_() for x in (hidden_nh, lm_head_vh)]
    exact = kl_div(*exact_leaves, teacher.double())
    exact_grads = [g.detach() for g in torch.autograd.grad(exact, exact_leaves)]
    del exact_leaves
    reference = kl_div(hidden_nh, lm_head_vh, teacher)
    ref_grads = torch.autograd.grad(reference, (hidden_nh, lm_head_vh))
    result = {"tokens": tokens, "F.kl_div fp32 vs float64": rel(reference, ref_grads, exact, exact_grads)}
    for chunk in args.chunk_tokens:
        value = _loss("chunked", hidden_nh, lm_head_vh, teacher, chunk)
        grads = torch.autograd.grad(value, (hidden_nh, lm_head_vh))
        result[f"chunked:{chunk}"] = rel(value, grads, reference, [g.double() for g in ref_grads])
        result[f"chunked:{chunk} vs float64"] = rel(value, grads, exact, exact_grads)
    return result


def _markdown(result: dict) -> str:
    a, rows = result["args"], result["variants"]
    naive = rows["naive"]
    teacher = f"sparse teacher (top-{a['top_k']} + tail)" if a["teacher"] == "sparse" else "dense teacher (N, V)"
    md = ["# Token-level forward KL through the lm_head: chunked vs naive, TRL and Liger-Kernel", "",
          f"V = {a['vocab']:,}, hidden {a['hidden']}, {teacher}, fp32, forward + backward, median of "
          f"{a['repeats']}, {naive['threads']} threads, all variants in one run.", "",
          "Memory is the process's peak resident set size (ru_maxrss) after the last backward less its resident "
          "set once the inputs were built, each variant in a fresh subprocess; RSS sees every page torch "
          "touched, and allocator slack can only inflate it (glibc's mmap threshold is fixed at 64 KiB with "
          "MALLOC_MMAP_THRESHOLD_, else its heap fragments and RSS grows with the number of chunks, though "
          "no tensor is kept). *Above inputs* includes the gradients w.r.t. "
          "hidden (N, H) and lm_head (V, H), which any implementation returns (the lm_head one alone is "
          f"{a['vocab'] * a['hidden'] * 4 / 2**20:,.1f} MB); *working* excludes them and is what chunking "
          "controls.", "",
          "| variant | tokens | above inputs, MB | working, KB/token | ms/token | time vs naive | working vs naive |",
          "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            md.append(f"| {name} | — | — | — | — | — | {r['error'].splitlines()[0][:120]} |")
            continue
        md.append(f"| {name} | {r['tokens']:,} | {r['above_inputs_bytes'] / 2**20:,.0f} | "
                  f"{r['working_kb_per_token']:,.1f} | {r['ms_per_token']:.3f} | "
                  f"{r['ms_per_token'] / naive['ms_per_token']:.2f}x | "
                  f"{r['working_kb_per_token'] / naive['working_kb_per_token']:.4f}x |")
    versions = sorted({r["package"] for r in rows.values() if "package" in r})
    if versions:
        md += ["", f"Peers: {', '.join(versions)}, on their CPU paths, run with `{a['peer_python']}`. Their APIs take "
                   "the teacher's hidden states and lm_head, so they project the teacher's logits inside the loss "
                   "(TRL in the forward and again in the backward; Liger once per chunk), a matmul per pass that "
                   "kdistill and naive are handed as precomputed logits: that much of their time is the teacher's."]
    if a["peer_tokens"] != a["tokens"]:
        md += ["", f"TRL and Liger ran on {a['peer_tokens']:,} tokens (`--peer-tokens`) to keep the run short; their "
                   "time per token does not depend on it, and their working memory is fixed buffers (TRL's tiles of "
                   "min(N, 4,096) x 32,768, Liger's chunk x V), so per token it is what it would be at that N."]
    if naive["tokens"] != a["tokens"]:
        md += ["", f"The naive variant ran on {naive['tokens']:,} tokens (`--naive-tokens`), as at {a['tokens']:,} "
                   "its peak may exceed the machine's memory. Its working memory and time grow linearly with tokens, "
                   "so the per-token columns compare; the chunked variants' working memory does not grow, so their "
                   "KB/token falls as tokens grow."]
    same = [r["loss"] for r in rows.values() if r.get("tokens") == a["tokens"]]
    if len(same) > 1:
        md += ["", f"The losses of the variants on {a['tokens']:,} tokens agree to {max(same) - min(same):.1e}."]
    eq = result["equality"]
    md += ["", f"Equality with `F.kl_div` on full logits ({eq['tokens']} tokens, fp32; |difference| / |reference| "
               "of the value, and ||difference|| / ||reference|| of each gradient); *vs float64*: the same against "
               "F.kl_div computed in float64, the exact figure that both float32 computations round:", ""]
    for name, e in eq.items():
        if name != "tokens":
            md.append(f"- {name}: value {e['value_rel']:.1e}, grad w.r.t. hidden {e['grad_hidden_rel']:.1e}, "
                      f"grad w.r.t. lm_head {e['grad_lm_head_rel']:.1e}")
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[64],
                        help="one chunked variant per value; working memory ~ 3 x chunk x vocab x 4 bytes")
    parser.add_argument("--teacher", choices=("dense", "sparse"), default="dense")
    parser.add_argument("--top-k", type=int, default=64, help="ids per token for --teacher sparse")
    parser.add_argument("--naive-tokens", type=int, default=None,
                        help="tokens for the naive variant (default: --tokens, at most 1024); it needs ~5 MB per "
                             "token at V = 151,936")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="the Python that runs the TRL and Liger-Kernel variants (a venv with trl==1.16.0 and "
                             "liger-kernel==0.8.5); default: this one")
    parser.add_argument("--liger-chunk-tokens", type=int, nargs="*", default=[1024],
                        help="one Liger variant per value (its chunk_size; Liger's default is 1024)")
    parser.add_argument("--peer-tokens", type=int, default=None,
                        help="tokens for the TRL and Liger variants (default: --tokens)")
    parser.add_argument("--no-peers", action="store_true", help="skip the TRL and Liger variants")
    parser.add_argument("--equality-only", action="store_true",
                        help="only the equality check (no timing): writes chunked_kd_equality.json and .md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, for the subprocesses
    args = parser.parse_args()
    args.naive_tokens = args.naive_tokens or min(args.tokens, 1024)
    args.peer_tokens = args.peer_tokens or args.tokens
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure(args)))
        return
    if args.equality_only:  # deterministic, so it may run on busy cores, unlike the timings
        eq = equality(args)
        atomic_write_text(HERE / "results" / "chunked_kd_equality.json", json.dumps(eq, indent=2) + "\n")
        lines = [f"# The chunked KD loss against F.kl_div: equality ({eq['tokens']} tokens, V = {args.vocab:,}, "
                 f"hidden {args.hidden}, fp32)", "",
                 "|difference| / |reference| of the value and ||difference|| / ||reference|| of each gradient; *vs "
                 "float64*: against F.kl_div computed in float64, the exact figure both float32 computations round.",
                 "", "| compared | value | grad w.r.t. hidden | grad w.r.t. lm_head |", "|---|---|---|---|"]
        lines += [f"| {name} | {e['value_rel']:.1e} | {e['grad_hidden_rel']:.1e} | {e['grad_lm_head_rel']:.1e} |"
                  for name, e in eq.items() if name != "tokens"]
        atomic_write_text(HERE / "results" / "chunked_kd_equality.md", "\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    variants = ["naive"] + [f"chunked:{c}" for c in args.chunk_tokens]
    if not args.no_peers:
        variants += ["trl"] + [f"liger:{c}" for c in args.liger_chunk_tokens] + ["liger_fused_linear_jsd"]
    rows = {}
    for variant in variants:
        # glibc raises its mmap threshold after freeing a large block, then serves equal-sized blocks
        # from a heap that fragments: RSS then grows with the number of chunks though no tensor is
        # kept. A fixed threshold returns freed blocks to the OS, so RSS tracks live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        python = args.peer_python if variant.partition(":")[0] in PEERS else sys.executable
        child = subprocess.run([python, __file__, *sys.argv[1:], "--variant", variant],
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            sys.exit(f"{variant} failed (exit {child.returncode}; -9 is usually out of memory):\n{child.stderr}")
        rows[variant] = json.loads(child.stdout.splitlines()[-1])
        print(variant, {k: rows[variant].get(k) for k in ("ms_per_token", "working_kb_per_token", "error")}, flush=True)
    result = {"args": {k: v for k, v in vars(args).items() if k != "variant"}, "variants": rows,
              "equality": equality(args)}
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "chunked_kd_memory.json", json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    atomic_write_text(HERE / "results" / "chunked_kd_memory.md", md)
    print(md)


if __name__ == "__main__":
    main()
