"""Token-level losses through the student's output projection, one chunk of (tokens x vocab) logits at a time.

    chunked_token_loss(hidden_nh, lm_head_vh, targets, loss_fn) -> (N,)  loss_fn(hidden_nh @ lm_head_vh.T, targets)

Where the time goes (benchmarks/results/chunked_kd_profile.md): the three (N x H x V) matmuls of the output
projection (logits; the gradients w.r.t. hidden and lm_head) dominate, and a chunked loss that recomputes
each chunk's logits and loss in the backward pays a fourth matmul and the loss's forward twice. So the
gradients are formed in the forward pass instead, chunk by chunk, as Liger-Kernel's fused linear losses do:
each chunk's logits are used once and dropped, and the backward only rescales. That needs the gradient
arriving at the (N,) values to be known up to one scalar: the caller says how the values will be weighted
(``grad_weight_n``; by default alike, as `token_mean` weighs them). When the backward finds another weighting
(say a random one in a test), it recomputes the lm_head's gradient chunk by chunk, so the result is exact
whatever is asked; the gradient w.r.t. hidden is per row and exact either way.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets, _compute_dtype, _kl, _on_kept_rows, divergence, take_rows
from kdistill.losses.terms import cross_entropy

# the backward takes the forward's lm_head gradient when the incoming gradient is s * grad_weight_n to within
# this many float32 ulps: autograd's own rounding of a per-example normalisation, not a different weighting
_SCALE_ULPS = 8


def chunked_token_loss(hidden_nh: torch.Tensor, lm_head_vh: torch.Tensor, targets, loss_fn: Callable, *,
                       chunk_tokens: int = 32, mask_n: torch.Tensor | None = None,
                       grad_weight_n: torch.Tensor | None = None) -> torch.Tensor:
    """``loss_fn(hidden_nh @ lm_head_vh.T, targets)`` per token, (N,), never holding more than
    ``chunk_tokens`` rows of logits.

    ``loss_fn(logits_cv, targets_rows) -> (C,)`` is any token-level loss whose value for a row depends on that
    row's logits only: a divergence via ``functools.partial(divergence, kind=..., temperature=...)``, or
    ``losses.cross_entropy`` with (N,) labels. ``targets`` is anything `take_rows` can slice: dense teacher
    logits, labels, SparseTargets. Value and gradients (w.r.t. hidden and lm_head) equal the unchunked
    computation's. ``grad_weight_n`` (N,): how the caller will weigh the values, up to one factor (None: alike,
    as a mean does); with it right the backward costs nothing, otherwise it recomputes (see the module doc).
    Working memory is a few (chunk_tokens, V) float32 tensors and one (N, H) buffer, whatever N.
    """
    if chunk_tokens < 1:
        raise KdistillError(f"chunk_tokens must be >= 1; found {chunk_tokens}.")
    if hidden_nh.dim() != 2 or lm_head_vh.dim() != 2 or hidden_nh.shape[1] != lm_head_vh.shape[1]:
        raise KdistillError(f"chunked_token_loss expects hidden (N, H) and lm_head weight (V, H); found "
                            f"{tuple(hidden_nh.shape)} and {tuple(lm_head_vh.shape)}. Flatten (B, T, H) first.")
    if not (torch.is_grad_enabled() and (hidden_nh.requires_grad or lm_head_vh.requires_grad)):
        return _on_kept_rows(lambda h, t: _values(h, lm_head_vh, t, loss_fn, chunk_tokens), mask_n, hidden_nh, targets)
    if grad_weight_n is None:
        grad_weight_n = hidden_nh.new_ones(hidden_nh.shape[0])
    return _on_kept_rows(lambda h, t, w: _FusedHeadLoss.apply(h, lm_head_vh, t, loss_fn, chunk_tokens, w.detach()),
                         mask_n, hidden_nh, targets, grad_weight_n)


def _values(hidden_nh, lm_head_vh, targets, loss_fn, chunk_tokens) -> torch.Tensor:
    """The values alone (no gradient wanted: evaluation)."""
    with torch.no_grad():
        values = [loss_fn(hidden_nh[rows] @ lm_head_vh.T, take_rows(targets, rows))  # (C, V) -> (C,)
                  for rows in _chunks(hidden_nh.shape[0], chunk_tokens)]
    return torch.cat(values) if values else hidden_nh.new_zeros(0)


def _value_and_grad(loss_fn, logits_cv: torch.Tensor, targets_rows, upstream_c: torch.Tensor | None = None):
    """loss_fn's values (C,) and d(sum upstream_c * values_c) / d logits (C, V), each row its own (rows are
    independent, so with upstream 1 row i is the gradient of value i alone). May overwrite ``logits_cv``."""
    closed_form = _closed_form(loss_fn)
    if closed_form is not None:
        values_c, grad_cv = closed_form(logits_cv, targets_rows)
        return values_c, grad_cv if upstream_c is None else grad_cv.mul_(upstream_c[:, None].to(grad_cv))
    with torch.enable_grad():
        logits_cv = logits_cv.detach().requires_grad_()
        values_c = loss_fn(logits_cv, targets_rows)
        upstream_c = torch.ones_like(values_c) if upstream_c is None else upstream_c.to(values_c.dtype)
        (grad_cv,) = torch.autograd.grad(values_c, logits_cv, upstream_c, allow_unused=True)
    return values_c.detach(), torch.zeros_like(logits_cv) if grad_cv is None else grad_cv


def _closed_form(loss_fn):
    """(values, grad) in closed form, in place, for the losses training uses most: cross-entropy and forward
    KL (the default divergence). About a third of the passes over (C, V) that autograd makes through the same
    formulas, and three (C, V) buffers instead of about eight. None for any other loss (autograd does it)."""
    if loss_fn is cross_entropy:
        return _cross_entropy_value_and_grad
    if not (isinstance(loss_fn, functools.partial) and loss_fn.func is divergence and not loss_fn.args):
        return None
    keywords = loss_fn.keywords
    temperature = keywords.get("temperature", 1.0)
    if set(keywords) - {"kind", "temperature", "beta", "skew"} or not temperature > 0:
        return None  # a mask, or a bad temperature that divergence() itself reports
    if keywords.get("kind") == "forward_kl":
        return functools.partial(_forward_kl_value_and_grad, temperature=float(temperature))
    return None


def _forward_kl_value_and_grad(logits_cv: torch.Tensor, teacher, *, temperature: float):
    """KL(P || Q) per row and its gradient (Q - P) / T w.r.t. the logits; P, Q the tempered teacher and student.
    Against sparse targets the k ids and the tail are the buckets, as in `divergence`."""
    logq_cv = logits_cv.to(_compute_dtype(logits_cv)).div_(temperature)  # (C, V) s = z / T, in place when fp32
    if isinstance(teacher, SparseTargets):
        return _sparse_forward_kl(logq_cv, teacher, temperature)
    if teacher.shape != logits_cv.shape:
        raise KdistillError(f"dense teacher targets must have the student's shape {tuple(logits_cv.shape)}; "
                            f"found {tuple(teacher.shape)}.")
    logq_cv.sub_(logq_cv.logsumexp(-1, keepdim=True))
    logp_cv = torch.div(teacher.to(logq_cv.dtype), temperature)  # (C, V) a new buffer: the teacher is an input
    logp_cv.sub_(logp_cv.logsumexp(-1, keepdim=True))
    gap_cv = torch.sub(logp_cv, logq_cv)
    p_cv = logp_cv.exp_()
    # a token the teacher gives probability 0 contributes 0, as in divergence's _kl (not 0 * -inf = nan)
    values_c = gap_cv.mul_(p_cv).masked_fill_(p_cv == 0, 0.0).sum(-1)
    del gap_cv
    return values_c, logq_cv.exp_().sub_(p_cv).div_(temperature)  # (Q - P) / T


def _sparse_forward_kl(s_cv: torch.Tensor, teacher: SparseTargets, temperature: float):
    """Forward KL over the k ids + tail buckets from tempered logits ``s_cv`` (overwritten with the gradient).
    d/ds_j is q_j - p_j on an id and q_j (1 - p_tail / q_tail) in the tail: the tail bucket's pull is shared
    among its tokens in proportion to their probability."""
    ids_ck = teacher.token_ids
    s_ck = s_cv.gather(-1, ids_ck)
    if ids_ck.shape[-1] == s_cv.shape[-1]:  # no tail
        lse_tail_c = s_ck.new_full(s_ck.shape[:1], -math.inf)
    else:  # the tail's logsumexp without a copy of (C, V): hide the ids, then put them back
        lse_tail_c = s_cv.scatter_(-1, ids_ck, -math.inf).logsumexp(-1)
        s_cv.scatter_(-1, ids_ck, s_ck)
    lse_c = torch.logaddexp(s_ck.logsumexp(-1), lse_tail_c)
    logq_ck = s_ck - lse_c[:, None]
    logq_tail_c = lse_tail_c - lse_c
    logp_cb = teacher.bucket_logprobs(temperature, s_cv.shape[-1]).to(s_cv.dtype)  # (C, k + 1)
    values_c = _kl(logp_cb, torch.cat([logq_ck, logq_tail_c[:, None]], -1))
    tail_factor_c = torch.where(logq_tail_c > -math.inf, -torch.expm1(logp_cb[:, -1] - logq_tail_c), 1.0)
    grad_cv = s_cv.sub_(lse_c[:, None]).exp_().mul_(tail_factor_c[:, None])  # q, tail-scaled
    grad_cv.scatter_(-1, ids_ck, logq_ck.exp() - logp_cb[:, :-1].exp())
    return values_c, grad_cv.div_(temperature)


def _cross_entropy_value_and_grad(logits_cv: torch.Tensor, labels_c: torch.Tensor):
    """-log softmax(z)[label] per row and its gradient softmax(z) - onehot(label); label -100 is ignored, as
    F.cross_entropy ignores it."""
    z_cv = logits_cv.to(_compute_dtype(logits_cv))
    kept_c = labels_c != -100
    labels_c1 = torch.where(kept_c, labels_c, 0)[:, None]
    lse_c = z_cv.logsumexp(-1)
    values_c = torch.where(kept_c, lse_c - z_cv.gather(-1, labels_c1)[:, 0], 0.0)
    grad_cv = z_cv.sub_(lse_c[:, None]).exp_()
    grad_cv.scatter_add_(-1, labels_c1, grad_cv.new_full(labels_c1.shape, -1.0))
    return values_c, grad_cv.mul_(kept_c[:, None])


def _common_scale(grad_n: torch.Tensor, weight_n: torch.Tensor) -> torch.Tensor | None:
    """s such that grad_n == s * weight_n to within rounding, as a 0-d tensor; None if there is none."""
    ref = weight_n.abs().argmax()
    if weight_n[ref] == 0:
        return grad_n.new_zeros(()) if bool((grad_n == 0).all()) else None
    scale = grad_n[ref] / weight_n[ref]
    tolerance = _SCALE_ULPS * torch.finfo(torch.float32).eps * grad_n.abs().max()
    return scale if bool((grad_n - scale * weight_n).abs().max() <= tolerance) else None


class _FusedHeadLoss(torch.autograd.Function):
    """Per-token loss of the output projection with its gradients formed in the forward pass, chunk by chunk.

    Forward, per chunk of C rows: logits (C, V); the loss's values and its gradient D (C, V) w.r.t. them;
    D @ lm_head into an (N, H) buffer (the per-row gradient w.r.t. hidden, before the incoming gradient scales
    it); and D.T @ (grad_weight * hidden) added in place into one (V, H) buffer. Backward: rows of the first
    scaled by the incoming gradient, the second by its one common factor (or recomputed, if it has none).
    """

    @staticmethod
    def forward(ctx, hidden_nh, lm_head_vh, targets, loss_fn, chunk_tokens, grad_weight_n):
        want_hidden, want_head = ctx.needs_input_grad[:2]
        num_rows = hidden_nh.shape[0]
        values_n = hidden_nh.new_empty(num_rows)
        unit_grad_hidden_nh = torch.empty_like(hidden_nh) if want_hidden else None
        grad_head_vh = torch.zeros_like(lm_head_vh) if want_head else None
        for rows in _chunks(num_rows, chunk_tokens):
            hidden_ch = hidden_nh[rows]
            values_c, grad_logits_cv = _value_and_grad(loss_fn, hidden_ch @ lm_head_vh.T, take_rows(targets, rows))
            values_n[rows] = values_c
            grad_logits_cv = grad_logits_cv.to(lm_head_vh.dtype)
            if want_hidden:
                torch.mm(grad_logits_cv, lm_head_vh, out=unit_grad_hidden_nh[rows])  # (C, H)
            if want_head:
                # the row weights go on the (C, H) side: C x H multiplications instead of C x V
                grad_head_vh.addmm_(grad_logits_cv.T, hidden_ch * grad_weight_n[rows, None].to(hidden_ch))  # (V, H)
            del grad_logits_cv
        ctx.save_for_backward(hidden_nh, lm_head_vh, grad_weight_n)
        ctx.targets, ctx.loss_fn, ctx.chunk_tokens = targets, loss_fn, chunk_tokens
        # not saved tensors (they are neither inputs nor outputs): plain attributes, dropped once used
        ctx.unit_grad_hidden_nh, ctx.grad_head_vh = unit_grad_hidden_nh, grad_head_vh
        return values_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values_n):
        if ctx.grad_head_vh is None and ctx.unit_grad_hidden_nh is None and any(ctx.needs_input_grad[:2]):
            raise RuntimeError("chunked_token_loss: a second backward through the same loss; its gradient buffers "
                               "were handed over by the first. Compute the loss again instead of retain_graph.")
        hidden_nh, lm_head_vh, grad_weight_n = (t.detach() for t in ctx.saved_tensors)
        grad_hidden_nh, ctx.unit_grad_hidden_nh = ctx.unit_grad_hidden_nh, None
        if grad_hidden_nh is not None:
            grad_hidden_nh.mul_(grad_values_n[:, None].to(grad_hidden_nh))  # in place: it becomes hidden's grad
        grad_head_vh, ctx.grad_head_vh = ctx.grad_head_vh, None  # so autograd can take it without a copy
        if grad_head_vh is not None:
            scale = _common_scale(grad_values_n, grad_weight_n) if grad_values_n.numel() else grad_values_n.new_zeros(())
            if scale is not None:
                grad_head_vh.mul_(scale.to(grad_head_vh))
            else:
                grad_head_vh.zero_()
                for rows in _chunks(hidden_nh.shape[0], ctx.chunk_tokens):
                    _, grad_logits_cv = _value_and_grad(ctx.loss_fn, hidden_nh[rows] @ lm_head_vh.T,
                                                        take_rows(ctx.targets, rows), grad_values_n[rows])
                    grad_head_vh.addmm_(grad_logits_cv.to(lm_head_vh.dtype).T, hidden_nh[rows])  # (V, H)
        return grad_hidden_nh, grad_head_vh, None, None, None, None


def _chunks(num_rows: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, num_rows)) for start in range(0, num_rows, chunk_rows)]
