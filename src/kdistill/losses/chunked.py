"""Token-level losses through the student's output projection, one chunk of (tokens x vocab) logits at a time.

    chunked_token_loss(hidden_nh, lm_head_vh, targets, loss_fn) -> (N,)  loss_fn(hidden_nh @ lm_head_vh.T, targets)

Where the time went (benchmarks/results/chunked_kd_profile.md): the three (N x H x V) matmuls of the output
projection (logits; the gradients w.r.t. hidden and lm_head) dominate; a chunked loss that recomputes each
chunk's logits and loss in the backward pays a fourth matmul and the loss twice (once through autograd);
and on a CPU, small chunks slow every matmul, hidden @ lm_head.T most. So:

- the gradients are formed in the forward pass, chunk by chunk, as Liger-Kernel's fused linear losses do:
  each chunk's logits are used once and dropped, and the backward only rescales. That needs the gradient
  arriving at the (N,) values to be known up to one scalar: the caller says how it will weigh them
  (``grad_weight_n``; by default alike, as `token_mean` does). When the backward finds another weighting
  (a random one, in a test) it recomputes the lm_head's gradient chunk by chunk, so the result is exact
  whatever is asked; the gradient w.r.t. hidden is per row and exact either way;
- CE and forward KL (dense or top-k) have closed forms, written in place over the chunk's logits with two
  scratch buffers: a third of autograd's passes over (C, V), and no (C, V) temporaries;
- the logits are lm_head @ hidden.T into one reused (V, C) buffer, the faster operand order for a CPU BLAS.
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
                       chunk_tokens: int = 64, mask_n: torch.Tensor | None = None,
                       grad_weight_n: torch.Tensor | None = None) -> torch.Tensor:
    """``loss_fn(hidden_nh @ lm_head_vh.T, targets)`` per token, (N,), never holding more than
    ``chunk_tokens`` rows of logits.

    ``loss_fn(logits_cv, targets_rows) -> (C,)`` is any token-level loss whose value for a row depends on that
    row's logits only: a divergence via ``functools.partial(divergence, kind=..., temperature=...)``, or
    ``losses.cross_entropy`` with (N,) labels. ``targets`` is anything `take_rows` can slice: dense teacher
    logits, labels, SparseTargets. Value and gradients (w.r.t. hidden and lm_head) equal the unchunked
    computation's. ``grad_weight_n`` (N,): how the caller will weigh the values, up to one factor (None: alike,
    as a mean does); with it right the backward costs nothing, otherwise it recomputes (see the module doc).
    Working memory, whatever N: three (chunk_tokens, V) float32 buffers for CE and forward KL; for the other
    divergences two, plus autograd's temporaries on 16 rows at a time. (The (N, H) and (V, H) buffers the
    forward fills become hidden's and lm_head's gradients.)
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
        logits = _LogitsBuffer(lm_head_vh, min(chunk_tokens, hidden_nh.shape[0]))
        values = [loss_fn(logits(hidden_nh[rows])[0], take_rows(targets, rows)).clone()  # (C, V) -> (C,)
                  for rows in _chunks(hidden_nh.shape[0], chunk_tokens)]
    return torch.cat(values) if values else hidden_nh.new_zeros(0)


def _value_and_grad(loss_fn, logits_cv: torch.Tensor, targets_rows, upstream_c: torch.Tensor | None = None,
                    scratch: "_Scratch | None" = None):
    """loss_fn's values (C,) and d(sum upstream_c * values_c) / d logits (C, V), each row its own (rows are
    independent, so with upstream 1 row i is the gradient of value i alone). A closed form writes the gradient
    over ``logits_cv`` and uses ``scratch``'s (C, V) buffers; autograd makes its own."""
    closed_form = _closed_form(loss_fn)
    if closed_form is not None:
        values_c, grad_cv = closed_form(logits_cv, targets_rows, scratch=scratch or _Scratch())
        return values_c, grad_cv if upstream_c is None else grad_cv.mul_(upstream_c[:, None].to(grad_cv))
    with torch.enable_grad():
        logits_cv = logits_cv.detach().requires_grad_()
        values_c = loss_fn(logits_cv, targets_rows)
        upstream_c = torch.ones_like(values_c) if upstream_c is None else upstream_c.to(values_c.dtype)
        (grad_cv,) = torch.autograd.grad(values_c, logits_cv, upstream_c, allow_unused=True)
    return values_c.detach(), torch.zeros_like(logits_cv) if grad_cv is None else grad_cv


# a loss without a closed form runs through autograd on at most this many rows at a time: its temporaries,
# several (rows, V) tensors, stay small while the matmuls work on the whole chunk
_AUTOGRAD_ROWS = 16


def _grad_over_logits(loss_fn, logits: "_LogitsBuffer", hidden_ch: torch.Tensor, targets, rows: slice,
                      values_n: torch.Tensor | None = None, upstream_n: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk's logits, then the loss's gradient w.r.t. them written over them, (C, V); the values go into
    ``values_n[rows]``. ``upstream_n``: the incoming gradient (None: 1 per row)."""
    logits_cv, scratch = logits(hidden_ch)
    closed = _closed_form(loss_fn) is not None
    for sub in _chunks(logits_cv.shape[0], logits_cv.shape[0] if closed else _AUTOGRAD_ROWS):
        rows_sub = slice(rows.start + sub.start, rows.start + sub.stop)
        upstream = None if upstream_n is None else upstream_n[rows_sub]
        values_c, grad_cv = _value_and_grad(loss_fn, logits_cv[sub], take_rows(targets, rows_sub), upstream, scratch)
        if grad_cv.data_ptr() != logits_cv[sub].data_ptr():
            logits_cv[sub] = grad_cv  # autograd's gradient, or an upcast copy's
        if values_n is not None:
            values_n[rows_sub] = values_c
    return logits_cv


def _row_logsumexp(x_cv: torch.Tensor, scratch_cv: torch.Tensor) -> torch.Tensor:
    """logsumexp per row, (C,), through ``scratch_cv`` (left holding exp(x - rowmax)): torch's own makes (C, V)
    temporaries, and a chunk's memory is its few (C, V) buffers."""
    max_c1 = x_cv.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)  # an all -inf row: logsumexp -inf, not nan
    return torch.sub(x_cv, max_c1, out=scratch_cv).exp_().sum(-1).log_().add_(max_c1[:, 0])


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


def _forward_kl_value_and_grad(logits_cv: torch.Tensor, teacher, *, temperature: float, scratch: "_Scratch"):
    """KL(P || Q) per row and its gradient (Q - P) / T w.r.t. the logits, written over ``logits_cv``; P, Q the
    tempered teacher and student. Against sparse targets the k ids and the tail are the buckets, as in
    `divergence`. Nothing of size (C, V) is made: two scratch buffers hold what the logits' one does not."""
    s_cv = logits_cv.to(_compute_dtype(logits_cv))  # the same tensor when it is float32 already
    if temperature != 1.0:
        s_cv.div_(temperature)  # s = z / T
    if isinstance(teacher, SparseTargets):
        return _sparse_forward_kl(s_cv, teacher, temperature, scratch.first(s_cv))
    if teacher.shape != logits_cv.shape:
        raise KdistillError(f"dense teacher targets must have the student's shape {tuple(logits_cv.shape)}; "
                            f"found {tuple(teacher.shape)}.")
    first_cv, second_cv = scratch.first(s_cv), scratch.second(s_cv)
    logp_cv = torch.div(teacher.to(s_cv.dtype), temperature, out=first_cv)
    lse_p_c = _row_logsumexp(logp_cv, second_cv)
    logp_cv.sub_(lse_p_c[:, None])
    lse_q_c = _row_logsumexp(s_cv, second_cv)
    logq_cv = s_cv.sub_(lse_q_c[:, None])
    q_cv = torch.exp(logq_cv, out=second_cv)
    gap_cv = logq_cv.sub_(logp_cv).neg_()  # log P - log Q, over the logits (log Q is no longer needed)
    p_cv = logp_cv.exp_()
    # p = 0 makes p * (-inf - log q) nan: nan_to_num puts the 0 that divergence's _kl gives there, and keeps inf
    values_c = gap_cv.mul_(p_cv).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf).sum(-1)
    # but a row that was nan to begin with (nan logits) stays nan, as in divergence
    values_c = torch.where(lse_p_c.isnan() | lse_q_c.isnan(), math.nan, values_c)
    return values_c, torch.sub(q_cv, p_cv, out=logits_cv).div_(temperature)  # (Q - P) / T


def _sparse_forward_kl(s_cv: torch.Tensor, teacher: SparseTargets, temperature: float, scratch_cv: torch.Tensor):
    """Forward KL over the k ids + tail buckets from tempered logits ``s_cv`` (overwritten with the gradient).
    d/ds_j is q_j - p_j on an id and q_j (1 - p_tail / q_tail) in the tail: the tail bucket's pull is shared
    among its tokens in proportion to their probability."""
    ids_ck = teacher.token_ids
    s_ck = s_cv.gather(-1, ids_ck)
    if ids_ck.shape[-1] == s_cv.shape[-1]:  # no tail
        lse_tail_c = s_ck.new_full(s_ck.shape[:1], -math.inf)
    else:  # the tail's logsumexp without a copy of (C, V): hide the ids, then put them back
        lse_tail_c = _row_logsumexp(s_cv.scatter_(-1, ids_ck, -math.inf), scratch_cv)
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


def _cross_entropy_value_and_grad(logits_cv: torch.Tensor, labels_c: torch.Tensor, *, scratch: "_Scratch"):
    """-log softmax(z)[label] per row and its gradient softmax(z) - onehot(label), written over the logits;
    label -100 is ignored, as F.cross_entropy ignores it."""
    z_cv = logits_cv.to(_compute_dtype(logits_cv))
    kept_c = labels_c != -100
    labels_c1 = torch.where(kept_c, labels_c, 0)[:, None]
    lse_c = _row_logsumexp(z_cv, scratch.first(z_cv))
    values_c = torch.where(kept_c, lse_c - z_cv.gather(-1, labels_c1)[:, 0], 0.0)
    grad_cv = z_cv.sub_(lse_c[:, None]).exp_()
    grad_cv.scatter_add_(-1, labels_c1, grad_cv.new_full(labels_c1.shape, -1.0))
    return values_c, grad_cv if bool(kept_c.all()) else grad_cv.mul_(kept_c[:, None])


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
        logits = _LogitsBuffer(lm_head_vh, min(chunk_tokens, hidden_nh.shape[0]))
        for rows in _chunks(num_rows, chunk_tokens):
            hidden_ch = hidden_nh[rows]
            grad_logits_cv = _grad_over_logits(loss_fn, logits, hidden_ch, targets, rows, values_n)
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
                logits = _LogitsBuffer(lm_head_vh, min(ctx.chunk_tokens, hidden_nh.shape[0]))
                for rows in _chunks(hidden_nh.shape[0], ctx.chunk_tokens):
                    grad_logits_cv = _grad_over_logits(ctx.loss_fn, logits, hidden_nh[rows], ctx.targets, rows,
                                                       upstream_n=grad_values_n)
                    grad_head_vh.addmm_(grad_logits_cv.T, hidden_nh[rows])  # (V, H)
        return grad_hidden_nh, grad_head_vh, None, None, None, None


class _Scratch:
    """Up to two (C, V) scratch buffers for the closed forms, made on first use and kept for the next chunk; the
    first is the (V, C) matmul buffer's memory, free once the logits are copied out of it."""

    def __init__(self, first_vc: torch.Tensor | None = None):
        self._buffers = [] if first_vc is None else [first_vc.view(-1)]

    def _get(self, index: int, like_cv: torch.Tensor) -> torch.Tensor:
        while len(self._buffers) <= index:
            self._buffers.append(like_cv.new_empty(like_cv.numel()))
        flat = self._buffers[index]
        if flat.numel() < like_cv.numel() or flat.dtype != like_cv.dtype:
            flat = self._buffers[index] = like_cv.new_empty(like_cv.numel())
        return flat[:like_cv.numel()].view(like_cv.shape)

    def first(self, like_cv: torch.Tensor) -> torch.Tensor:
        return self._get(0, like_cv)

    def second(self, like_cv: torch.Tensor) -> torch.Tensor:
        return self._get(1, like_cv)


class _LogitsBuffer:
    """One chunk's logits (C, V), computed chunk after chunk into the same buffers: no fresh pages to fault in
    per chunk, and at most three (C, V) tensors for the closed-form losses.

    The matmul is lm_head @ hidden.T into a (V, C) buffer: on a CPU's BLAS that operand order ran 1.6x faster
    at C = 32 than hidden @ lm_head.T (benchmarks/results/chunked_kd_profile.md). One transposing copy then
    gives the losses contiguous rows, and the (V, C) buffer, free again, is their first scratch buffer."""

    def __init__(self, lm_head_vh: torch.Tensor, chunk_tokens: int):
        self.lm_head_vh = lm_head_vh
        self.product_vc = lm_head_vh.new_empty(lm_head_vh.shape[0], chunk_tokens)
        self.logits_cv = lm_head_vh.new_empty(chunk_tokens, lm_head_vh.shape[0])
        self.scratch = _Scratch(self.product_vc)

    def __call__(self, hidden_ch: torch.Tensor) -> tuple[torch.Tensor, _Scratch]:
        """(logits (C, V) contiguous, scratch); a shorter last chunk uses the front of the same buffers."""
        rows, vocab = hidden_ch.shape[0], self.lm_head_vh.shape[0]
        product_vc = self.product_vc.view(-1)[:vocab * rows].view(vocab, rows)
        logits_cv = self.logits_cv[:rows]
        torch.mm(self.lm_head_vh, hidden_ch.T, out=product_vc)
        logits_cv.copy_(product_vc.T)
        return logits_cv, self.scratch


def _chunks(num_rows: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, num_rows)) for start in range(0, num_rows, chunk_rows)]
