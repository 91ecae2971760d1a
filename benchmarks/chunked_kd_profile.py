"""Benchmark: where the chunked token-level KD loss spends its time, phase by phase, against the naive loss.

    python benchmarks/chunked_kd_profile.py [--vocab 151936] [--hidden 896] [--tokens 512] [--chunk-tokens 16 32 64 128]
                                            [--repeats 3] [--implementation recompute|fused|both]

For each chunk size it times, per token and median of ``--repeats``, the pieces one chunk of the loss is made
of: the logits matmul (C, H) @ (H, V), the divergence's forward, its forward + autograd backward, the two
gradient matmuls (grad w.r.t. hidden (C, V) @ (V, H), and the lm_head's (V, C) @ (C, H) added in place), and
the whole chunked loss forward + backward. The naive loss's forward and backward are timed on the same tokens.
Writes benchmarks/results/chunked_kd_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from kdistill.io import atomic_write_text
from kdistill.losses.chunked import _chunks, chunked_token_loss
from kdistill.losses.divergences import divergence, token_mean

HERE = Path(__file__).resolve().parent


def _median_ms_per_token(fn, repeats: int, tokens: int) -> float:
    fn()  # warm-up: allocator, thread pool
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds) / tokens


class _RecomputeHeadLoss(torch.autograd.Function):
    """The chunked loss as it was before the fused one (kdistill 287c6a4), kept here as the profile's baseline:
    the forward keeps nothing but the inputs; the backward recomputes each chunk's logits and loss."""

    @staticmethod
    def forward(ctx, hidden_nh, lm_head_vh, targets, loss_fn, chunk_tokens):
        ctx.save_for_backward(hidden_nh, lm_head_vh)
        ctx.targets, ctx.loss_fn, ctx.chunk_tokens = targets, loss_fn, chunk_tokens
        return torch.cat([loss_fn(hidden_nh[rows] @ lm_head_vh.T, targets[rows])
                          for rows in _chunks(hidden_nh.shape[0], chunk_tokens)])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values_n):
        hidden_nh, lm_head_vh = (t.detach() for t in ctx.saved_tensors)
        grad_hidden_nh, grad_head_vh = torch.zeros_like(hidden_nh), torch.zeros_like(lm_head_vh)
        for rows in _chunks(hidden_nh.shape[0], ctx.chunk_tokens):
            with torch.enable_grad():
                logits_cv = (hidden_nh[rows] @ lm_head_vh.T).requires_grad_()  # (C, V)
                values_c = ctx.loss_fn(logits_cv, ctx.targets[rows])
                (grad_logits_cv,) = torch.autograd.grad(values_c, logits_cv, grad_values_n[rows])
            torch.mm(grad_logits_cv, lm_head_vh, out=grad_hidden_nh[rows])  # (C, H)
            grad_head_vh.addmm_(grad_logits_cv.T, hidden_nh[rows])  # (V, H)
        return grad_hidden_nh, grad_head_vh, None, None, None


def _recompute_loss(hidden_nh, lm_head_vh, teacher_nv, loss_fn, *, chunk_tokens):
    return _RecomputeHeadLoss.apply(hidden_nh, lm_head_vh, teacher_nv, loss_fn, chunk_tokens)


def _phases(chunk: int, hidden_nh, lm_head_vh, teacher_nv, repeats: int) -> dict[str, float]:
    """ms per token of each piece of one chunk, and of the whole chunked loss (both implementations)."""
    h_ch, t_cv = hidden_nh[:chunk].detach(), teacher_nv[:chunk]
    w_vh = lm_head_vh.detach()
    logits_cv = h_ch @ w_vh.T
    forward_kl = functools.partial(divergence, kind="forward_kl")
    grad_cv = torch.randn_like(logits_cv)
    grad_w_vh = torch.zeros_like(w_vh)

    def loss_grad():
        z = logits_cv.clone().requires_grad_()
        torch.autograd.grad(forward_kl(z, t_cv).sum(), z)

    def whole(loss):
        def run():
            h, w = hidden_nh.detach().requires_grad_(), lm_head_vh.detach().requires_grad_()
            token_mean(loss(h, w, teacher_nv, forward_kl, chunk_tokens=chunk)).backward()
        return run

    n = hidden_nh.shape[0]
    return {"logits_matmul": _median_ms_per_token(lambda: h_ch @ w_vh.T, repeats, chunk),
            "logits_matmul_vc": _median_ms_per_token(lambda: w_vh @ h_ch.T, repeats, chunk),
            "loss_forward": _median_ms_per_token(lambda: forward_kl(logits_cv, t_cv), repeats, chunk),
            "loss_forward_backward": _median_ms_per_token(loss_grad, repeats, chunk),
            "grad_hidden_matmul": _median_ms_per_token(lambda: grad_cv @ w_vh, repeats, chunk),
            "grad_head_addmm": _median_ms_per_token(lambda: grad_w_vh.addmm_(grad_cv.T, h_ch), repeats, chunk),
            "whole_recompute": _median_ms_per_token(whole(_recompute_loss), repeats, n),
            "whole_fused": _median_ms_per_token(whole(chunked_token_loss), repeats, n)}


def _naive(hidden_nh, lm_head_vh, teacher_nv, repeats: int) -> dict[str, float]:
    n = hidden_nh.shape[0]
    forward_kl = functools.partial(divergence, kind="forward_kl")
    h, w = hidden_nh.detach(), lm_head_vh.detach()
    logits_nv = h @ w.T

    def whole():
        hg, wg = h.requires_grad_(), w.requires_grad_()
        token_mean(forward_kl(hg @ wg.T, teacher_nv)).backward()
        hg.grad = wg.grad = None
        hg.requires_grad_(False), wg.requires_grad_(False)

    return {"logits_matmul": _median_ms_per_token(lambda: h @ w.T, repeats, n),
            "loss_forward": _median_ms_per_token(lambda: forward_kl(logits_nv, teacher_nv), repeats, n),
            "whole": _median_ms_per_token(whole, repeats, n)}


def _markdown(result: dict) -> str:
    a = result["args"]
    md = ["# Where the chunked KD loss spends its time", "",
          f"V = {a['vocab']:,}, hidden {a['hidden']}, dense teacher, forward KL, fp32, {a['tokens']:,} tokens, "
          f"{result['threads']} threads; ms per token, median of {a['repeats']}. `recompute`: the backward recomputes "
          "each chunk's logits and the loss (4 matmuls + the loss twice); `fused`: each chunk's gradients are formed "
          "in the forward pass (3 matmuls + the loss once, in closed form).", "",
          "| chunk | logits matmul h @ W.T | the same as W @ h.T | loss fwd | loss fwd+bwd (autograd) | grad hidden mm | "
          "grad lm_head addmm | chunked, recompute | chunked, fused |", "|---|---|---|---|---|---|---|---|---|"]
    for chunk, p in result["chunks"].items():
        md.append(f"| {chunk} | {p['logits_matmul']:.3f} | {p['logits_matmul_vc']:.3f} | {p['loss_forward']:.3f} | {p['loss_forward_backward']:.3f} "
                  f"| {p['grad_hidden_matmul']:.3f} | {p['grad_head_addmm']:.3f} | {p['whole_recompute']:.3f} | "
                  f"{p['whole_fused']:.3f} |")
    nv = result["naive"]
    md += ["", f"Naive, all {a['tokens']:,} tokens at once: logits matmul {nv['logits_matmul']:.3f}, loss forward "
               f"{nv['loss_forward']:.3f}, forward + backward {nv['whole']:.3f} ms/token."]
    return "\n".join(md) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk-tokens", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    hidden_nh = torch.randn(args.tokens, args.hidden, generator=gen)
    lm_head_vh = torch.randn(args.vocab, args.hidden, generator=gen).mul_(args.hidden**-0.5)
    teacher_nv = torch.randn(args.tokens, args.vocab, generator=gen).mul_(2.0)
    result = {"args": vars(args), "threads": torch.get_num_threads(),
              "chunks": {c: _phases(c, hidden_nh, lm_head_vh, teacher_nv, args.repeats) for c in args.chunk_tokens},
              "naive": _naive(hidden_nh, lm_head_vh, teacher_nv, args.repeats)}
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "chunked_kd_profile.json", json.dumps(result, indent=2) + "\n")
    md = _markdown(result)
    atomic_write_text(HERE / "results" / "chunked_kd_profile.md", md)
    print(md)


if __name__ == "__main__":
    main()
