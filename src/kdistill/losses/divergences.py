"""Token-level distillation divergences as pure tensor functions.

    divergence(student_logits_nv, teacher, kind=...)           -> (N,)  one value per target token
    token_mean(values_n, mask_n)                                 -> ()    average over target tokens

(`losses.chunked.chunked_token_loss` computes any of them through the student's lm_head, chunk by chunk.)

The teacher is either dense, an (N, V) tensor of logits or log-probs, or sparse, `SparseTargets`: its
top-k log-probs plus the log of the mass left over (the "tail"). Against a sparse teacher the student
is compared on k + 1 buckets: the k ids and one bucket holding all other tokens. With k = V the tail
bucket is empty on both sides and the result equals the dense one.

P is the teacher and Q the student, both softened by the same KD temperature T (softmax(z / T)):

    forward_kl       KL(P || Q)
    reverse_kl       KL(Q || P)
    jsd              [beta KL(P || M) + (1 - beta) KL(Q || M)] / (beta (1 - beta)),  M = beta P + (1 - beta) Q
    skew_forward_kl  KL(P || skew P + (1 - skew) Q)                                  (DistiLLM's alpha = skew)
    skew_reverse_kl  KL(Q || skew Q + (1 - skew) P)
    tvd              1/2 sum |P - Q|

beta is the teacher's weight in the mixture M, as in TRL's GKD. Dividing by beta (1 - beta) makes jsd
continuous in beta, with the two KLs as its end points: beta = 0 is forward KL and beta = 1 is reverse KL
(the un-divided JSD tends to 0 at both ends). For 0 < beta < 1 the value is therefore TRL's / the GKD
paper's generalized JSD times 1 / (beta (1 - beta)), e.g. 4x at beta = 0.5. skew = 0 gives the plain KLs.

Not applied here: the T^2 factor that keeps the gradient's scale independent of T (Hinton et al., 2015).
The objective applies it once, where it weights the terms; these functions are the divergence only.

Reverse KL is +inf where the teacher gives a token zero probability and the student does not. So that one
such token cannot end a run, reverse KL floors the teacher's log-probs at log(smallest normal number of
the dtype), about -87 in float32, below which a probability is zero to that dtype anyway. Every other
kind is finite without a floor.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from kdistill.errors import KdistillError

DIVERGENCES = {
    "forward_kl": "KL(teacher_T || student_T), mass-covering; parameters: temperature",
    "reverse_kl": "KL(student_T || teacher_T), mode-seeking; parameters: temperature",
    "jsd": "generalized JSD / (beta (1 - beta)); beta = teacher weight in the mixture, 0 = forward KL, "
           "1 = reverse KL; parameters: beta, temperature",
    "skew_forward_kl": "KL(teacher || skew teacher + (1 - skew) student) (DistiLLM); parameters: skew, temperature",
    "skew_reverse_kl": "KL(student || skew student + (1 - skew) teacher) (DistiLLM); parameters: skew, temperature",
    "tvd": "total variation 1/2 sum |teacher_T - student_T|; parameters: temperature",
}


@dataclass(frozen=True, eq=False)
class SparseTargets:
    """A teacher's top-k log-probs per target token, stored at one temperature.

    Re-tempering to another T: the k stored log-probs l_i = z_i / T0 - log Z scale exactly, by r = T0 / T,
    up to the normalizer. The normalizer also needs the tail's tokens, whose individual probabilities were
    not kept; only their total m is. We assume m is spread evenly over the V - k unseen tokens (the
    maximum-entropy completion), so the tail re-tempers to (V - k) (m / (V - k))^r, i.e. in log space
    r log m + (1 - r) log(V - k), before all k + 1 buckets are renormalized. That is exact when
    T = T0, when k = V and when the real tail is uniform; otherwise, for T > T0 it is an upper bound on the
    tail's tempered mass (and for T < T0 a lower bound), the opposite bound being m^r (all of m on one token).
    """

    token_ids: torch.Tensor  # (N, k) long, distinct within a row
    logprobs: torch.Tensor  # (N, k) teacher log-probs of token_ids at stored_temperature
    tail_logmass: torch.Tensor  # (N,) log(1 - sum exp(logprobs)); -inf when k = V
    stored_temperature: float = 1.0

    def __post_init__(self):
        if self.token_ids.dtype != torch.long:
            raise KdistillError(f"SparseTargets.token_ids must be int64 (long); found {self.token_ids.dtype}.")
        if self.logprobs.shape != self.token_ids.shape or self.tail_logmass.shape != self.token_ids.shape[:1]:
            raise KdistillError(f"SparseTargets expects token_ids (N, k), logprobs (N, k) and tail_logmass (N,); "
                                f"found {tuple(self.token_ids.shape)}, {tuple(self.logprobs.shape)} and "
                                f"{tuple(self.tail_logmass.shape)}.")
        if not self.stored_temperature > 0:
            raise KdistillError(f"SparseTargets.stored_temperature must be > 0; found {self.stored_temperature}.")

    @classmethod
    def from_logits(cls, teacher_logits_nv: torch.Tensor, k: int, *, temperature: float = 1.0) -> SparseTargets:
        """The top-k of a dense teacher at ``temperature``, as a teacher store would keep it."""
        logp_nv = (teacher_logits_nv.to(_compute_dtype(teacher_logits_nv)) / temperature).log_softmax(-1)
        top = logp_nv.topk(k, dim=-1)
        return cls(top.indices, top.values, _logmass_outside(logp_nv, top.indices), temperature)

    def rows(self, index) -> SparseTargets:
        """The targets of some rows (a slice, index tensor or boolean mask)."""
        return replace(self, token_ids=self.token_ids[index], logprobs=self.logprobs[index],
                       tail_logmass=self.tail_logmass[index])

    def bucket_logprobs(self, temperature: float, vocab_size: int) -> torch.Tensor:
        """Teacher log-probs at ``temperature`` over the k ids and the tail, (N, k + 1); see the class doc."""
        r = self.stored_temperature / temperature
        logprobs_nk = self.logprobs.to(_compute_dtype(self.logprobs))
        num_tail_tokens = vocab_size - self.token_ids.shape[-1]
        if num_tail_tokens == 0:  # log(0) * (1 - r) would be nan; the tail is empty
            tail_n = logprobs_nk.new_full(logprobs_nk.shape[:1], -math.inf)
        else:
            tail_n = r * self.tail_logmass.to(logprobs_nk.dtype) + (1 - r) * math.log(num_tail_tokens)
        unnormalized_nb = torch.cat([r * logprobs_nk, tail_n[:, None]], dim=-1)  # (N, k + 1)
        # renormalizing also absorbs the rounding of log-probs that were stored in low precision
        return unnormalized_nb - unnormalized_nb.logsumexp(-1, keepdim=True)


def _logmass_outside(logp_nv: torch.Tensor, token_ids_nk: torch.Tensor) -> torch.Tensor:
    """log of the probability outside ``token_ids``, (N,): a logsumexp over the rest, so no 1 - sum cancels."""
    if token_ids_nk.shape[-1] == logp_nv.shape[-1]:  # empty set; a constant, as logsumexp's grad would be nan
        return logp_nv.new_full(logp_nv.shape[:1], -math.inf)
    return logp_nv.scatter(-1, token_ids_nk, -math.inf).logsumexp(-1)


def take_rows(targets, index):
    """Rows of a token-level target: a tensor (logits, labels) or anything with ``.rows`` (SparseTargets)."""
    return targets[index] if isinstance(targets, torch.Tensor) else targets.rows(index)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """bf16 / fp16 logits are upcast for the loss; fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def _bucket_logprobs(student_logits_nv, teacher, temperature):
    """(teacher, student) log-probs at ``temperature`` over the buckets compared: V tokens, or k ids + tail."""
    dtype = _compute_dtype(student_logits_nv)
    logq_nv = (student_logits_nv.to(dtype) / temperature).log_softmax(-1)
    if isinstance(teacher, SparseTargets):
        logp_nb = teacher.bucket_logprobs(temperature, logq_nv.shape[-1]).to(dtype)  # (N, k + 1)
        ids_nk = teacher.token_ids
        logq_nb = torch.cat([logq_nv.gather(-1, ids_nk), _logmass_outside(logq_nv, ids_nk)[:, None]], -1)
        return logp_nb, logq_nb
    if teacher.shape != student_logits_nv.shape:
        raise KdistillError(f"dense teacher targets must have the student's shape {tuple(student_logits_nv.shape)}; "
                            f"found {tuple(teacher.shape)}.")
    return (teacher.to(dtype) / temperature).log_softmax(-1), logq_nv


def _kl(loga_nb: torch.Tensor, logb_nb: torch.Tensor) -> torch.Tensor:
    """KL(A || B) per row from log-probs, (N,); buckets where A is 0 contribute 0, in value and gradient."""
    a_nb = loga_nb.exp()
    # where() after the subtraction: its backward selects without multiplying, so a -inf - -inf = nan in a
    # dropped bucket never reaches a gradient
    log_ratio_nb = torch.where(a_nb > 0, loga_nb - logb_nb, 0.0)
    return (a_nb * log_ratio_nb).sum(-1)


def _log_mix(loga_nb: torch.Tensor, logb_nb: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w A + (1 - w) B) in log space; a mixture of exp()s would underflow to log(0) (TRL #2202, Liger #769)."""
    if weight_a in (0.0, 1.0):
        return loga_nb if weight_a == 1.0 else logb_nb
    return torch.logaddexp(loga_nb + math.log(weight_a), logb_nb + math.log1p(-weight_a))


def _reverse_kl(logp_nb: torch.Tensor, logq_nb: torch.Tensor) -> torch.Tensor:
    """KL(Q || P) with P floored at the dtype's smallest normal number, so a zero-probability teacher
    token costs a large finite amount instead of inf (and nan gradients); see the module doc."""
    return _kl(logq_nb, logp_nb.clamp(min=math.log(torch.finfo(logp_nb.dtype).tiny)))


def _jsd(logp, logq, beta):
    if beta in (0.0, 1.0):  # the limits of the divided JSD, computed without the 0 / 0
        return _kl(logp, logq) if beta == 0.0 else _reverse_kl(logp, logq)
    logm = _log_mix(logp, logq, beta)
    return (beta * _kl(logp, logm) + (1 - beta) * _kl(logq, logm)) / (beta * (1 - beta))


_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": lambda logp, logq, beta, skew: _kl(logp, logq),
    "reverse_kl": lambda logp, logq, beta, skew: _reverse_kl(logp, logq),
    "jsd": lambda logp, logq, beta, skew: _jsd(logp, logq, beta),
    "skew_forward_kl": lambda logp, logq, beta, skew: _kl(logp, _log_mix(logp, logq, skew)),
    "skew_reverse_kl": lambda logp, logq, beta, skew: _kl(logq, _log_mix(logq, logp, skew)),
    "tvd": lambda logp, logq, beta, skew: 0.5 * (logp.exp() - logq.exp()).abs().sum(-1),
}


def divergence(student_logits_nv: torch.Tensor, teacher, *, kind: str, temperature: float = 1.0,
               beta: float = 0.5, skew: float = 0.1, mask_n: torch.Tensor | None = None) -> torch.Tensor:
    """One divergence between teacher and student per target token, (N,); 0 at masked-out tokens.

    ``teacher`` is dense (N, V) logits or log-probs, or `SparseTargets`. Masked rows are never computed,
    so padding there (even -inf or nan) reaches neither the value nor any gradient.
    """
    if kind not in _KINDS:
        hint = difflib.get_close_matches(kind, list(_KINDS), n=1)
        raise KdistillError(f"unknown divergence {kind!r}.{f' Did you mean {hint[0]!r}?' if hint else ''} "
                            f"Known: {', '.join(_KINDS)}.")
    if not temperature > 0:
        raise KdistillError(f"divergence temperature must be > 0; found {temperature}.")
    for name, weight in (("beta", beta), ("skew", skew)):
        if not 0.0 <= weight <= 1.0:
            raise KdistillError(f"divergence {name} must be in [0, 1]; found {weight}.")

    def per_token(student_nv, teacher_rows):
        logp_nb, logq_nb = _bucket_logprobs(student_nv, teacher_rows, temperature)
        return _KINDS[kind](logp_nb, logq_nb, float(beta), float(skew))

    return _on_kept_rows(per_token, mask_n, student_logits_nv, teacher)


def token_mean(values_n: torch.Tensor, mask_n: torch.Tensor | None = None, *,
               num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum over kept tokens divided by their count, or by ``num_tokens`` (the whole step's count, so that
    summing micro-batches gives the same loss however the step is split)."""
    kept_n = torch.ones_like(values_n, dtype=torch.bool) if mask_n is None else mask_n.bool()
    total = torch.where(kept_n, values_n, 0.0).sum()  # where, not *: an inf in a masked row stays out
    return total / (kept_n.sum().clamp(min=1) if num_tokens is None else num_tokens)


def _on_kept_rows(fn, mask_n, *row_inputs):
    """fn(*row_inputs) on the rows where ``mask_n`` holds, scattered into zeros (N,)."""
    if mask_n is None:
        return fn(*row_inputs)
    num_rows = row_inputs[0].shape[0]
    if mask_n.shape != (num_rows,):
        raise KdistillError(f"mask_n must have shape ({num_rows},), one entry per target token; "
                            f"found {tuple(mask_n.shape)}.")
    kept_m = mask_n.bool().nonzero().squeeze(-1)  # (M,)
    values_m = fn(*(take_rows(x, kept_m) for x in row_inputs))
    return values_m.new_zeros(mask_n.shape[0]).index_put((kept_m,), values_m)
