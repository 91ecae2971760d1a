"""Several teachers' distributions mixed into one, by fixed, learned or per-example weights.

In label space teachers may be of any family and tokenizer (a prompted LLM, a fine-tuned encoder): they
all answer the same question. Per target token (a generation task), teachers that share one tokenizer
are mixed over the union of their top-k ids (`token_mixture`). The mixture is of probabilities,
log sum_k w_k p_k computed with logsumexp (never the log of a sum of exps, which underflows to -inf and
then NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets


def mixture(logprobs_knl: torch.Tensor, weights_nk: torch.Tensor) -> torch.Tensor:
    """(N, L) log of sum_k w_nk p_knl, with the weights of each example normalized to sum to 1."""
    weights_nk = weights_nk / weights_nk.sum(-1, keepdim=True)
    log_w_kn1 = weights_nk.clamp(min=0).log().T.unsqueeze(-1)  # (K, N, 1); log 0 = -inf drops a teacher
    return torch.logsumexp(logprobs_knl + log_w_kn1, dim=0)


def confidence_weights(logprobs_knl: torch.Tensor) -> torch.Tensor:
    """(N, K) each teacher's top probability for each example: the more certain count more."""
    return logprobs_knl.exp().amax(-1).T


def gold_agreement_weights(logprobs_knl: torch.Tensor, gold_n: torch.Tensor, has_gold_n: torch.Tensor) -> torch.Tensor:
    """(N, K) the probability each teacher gives the gold label; its confidence where there is no gold label.

    Only for training targets: it looks at the answer, so it must never weigh a test example.
    """
    gold_kn = logprobs_knl.exp().gather(-1, gold_n.view(1, -1, 1).expand(logprobs_knl.shape[0], -1, 1)).squeeze(-1)
    weights_nk = torch.where(has_gold_n[:, None], gold_kn.T, confidence_weights(logprobs_knl))
    return weights_nk.clamp(min=1e-6)  # a teacher wrong on every label still counts a little, never 0/0


def fit_weights(logprobs_knl: torch.Tensor, gold_n: torch.Tensor, *, steps: int = 100) -> torch.Tensor:
    """(K,) mixture weights that maximize the gold labels' likelihood (fitted on the validation split)."""
    num_teachers = logprobs_knl.shape[0]
    logits_k = torch.zeros(num_teachers, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits_k], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        weights_nk = F.softmax(logits_k, -1).expand(logprobs_knl.shape[1], -1)
        loss = F.nll_loss(mixture(logprobs_knl, weights_nk), gold_n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return F.softmax(logits_k.detach(), -1)


def token_mixture(members: list[SparseTargets], weights_nk: torch.Tensor, *, k: int,
                  vocab_size: int | list[int]) -> SparseTargets:
    """The mixture sum_i w_i p_i at each target token, as top-``k`` ids + tail.

    ``members``: each teacher's rows for the same N target tokens (its own top-k_i, any k_i); ``weights_nk``
    (N, K) or (K,), normalized here; ``vocab_size`` one for all or one per member (models that share a
    tokenizer may pad their output layers differently). A member's probability of an id outside its
    top-k_i is its tail spread evenly over its V - k_i unseen ids (the maximum-entropy completion
    `SparseTargets.bucket_logprobs` assumes). The k most probable ids of the union are kept; the tail is
    the rest of every member's mass, summed as such rather than as 1 - kept (which would cancel), so
    logsumexp(kept, tail) = 0 up to the members' own rounding. Computed in float64, returned in the
    members' dtype.
    """
    if len({m.stored_temperature for m in members}) > 1:
        raise KdistillError("token_mixture: the members' rows are stored at different temperatures.")
    if not 1 <= k <= max(m.token_ids.shape[1] for m in members):
        raise KdistillError(f"token_mixture: k must be in [1, the largest member's k]; found {k}.")
    num_tokens = members[0].token_ids.shape[0]
    sizes = vocab_size if isinstance(vocab_size, list) else [vocab_size] * len(members)
    weights_nk = weights_nk.to(torch.float64).expand(num_tokens, len(members))
    log_w_kn = (weights_nk / weights_nk.sum(-1, keepdim=True)).clamp(min=0).log().T  # log 0 = -inf drops a member
    ids_nc = torch.cat([m.token_ids for m in members], -1)  # (N, C) candidates, C = sum k_i, with repeats
    logp_knc = torch.stack([_member_logprobs(m, ids_nc, v) for m, v in zip(members, sizes)])
    mixed_nc = torch.logsumexp(logp_knc + log_w_kn[..., None], 0)
    earlier_ncc = (ids_nc[:, :, None] == ids_nc[:, None, :]).tril(-1)  # [n, c, c'] c' < c holds the same id
    # each id once: a repeat scores -inf, below any id of the union, even one of probability 0
    score_nc = mixed_nc.clamp(min=torch.finfo(mixed_nc.dtype).min).masked_fill(earlier_ncc.any(-1), -math.inf)
    top_nk = score_nc.topk(k, -1).indices
    kept_nk = ids_nc.gather(-1, top_nk)
    outside_kn = torch.stack([_member_mass_outside(m, kept_nk, v) for m, v in zip(members, sizes)])
    tail_n = torch.logsumexp(outside_kn + log_w_kn, 0)
    dtype = members[0].logprobs.dtype
    return SparseTargets(kept_nk, mixed_nc.gather(-1, top_nk).to(dtype), tail_n.to(dtype),
                         stored_temperature=members[0].stored_temperature)


def token_confidence_weights(members: list[SparseTargets]) -> torch.Tensor:
    """(N, K) each teacher's top probability at each target token: the more certain count more there."""
    return torch.stack([m.logprobs.amax(-1).exp() for m in members], -1)


def _unseen_logprob(member: SparseTargets, vocab_size: int) -> torch.Tensor:
    """(N,) log-prob of each id outside the member's top-k: its tail over its V - k unseen ids (-inf if none)."""
    num_unseen = vocab_size - member.token_ids.shape[1]
    tail_n = member.tail_logmass.to(torch.float64)
    # with k = V the tail is -inf and log(0) would make -inf - -inf = nan; no id is unseen then
    return tail_n - math.log(num_unseen) if num_unseen > 0 else torch.full_like(tail_n, -math.inf)


def _member_logprobs(member: SparseTargets, ids_nc: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(N, C) the member's log-prob of each candidate id: from its top-k where it is there, else unseen's."""
    match_nck = ids_nc[:, :, None] == member.token_ids[:, None, :]
    logprobs_n1k = member.logprobs.to(torch.float64)[:, None, :]
    found_nc = torch.where(match_nck, logprobs_n1k, -math.inf).amax(-1)
    return torch.where(match_nck.any(-1), found_nc, _unseen_logprob(member, vocab_size)[:, None])


def _member_mass_outside(member: SparseTargets, kept_nk: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(N,) log of the member's mass outside the kept ids: its top-k ids not kept, and the share of its tail
    that the kept ids outside its top-k did not take (each took 1 / (V - k_i) of it)."""
    kept_in_top_nk = (member.token_ids[:, :, None] == kept_nk[:, None, :]).any(-1)  # (N, k_i)
    left_n = torch.where(kept_in_top_nk, -math.inf, member.logprobs.to(torch.float64)).logsumexp(-1)
    num_unseen = vocab_size - member.token_ids.shape[1]
    if num_unseen == 0:
        return left_n
    taken_n = (kept_nk.shape[1] - kept_in_top_nk.sum(-1)).to(torch.float64)  # kept ids from the member's tail
    tail_left_n = member.tail_logmass.to(torch.float64) + torch.log1p(-taken_n / num_unseen)
    return torch.logaddexp(left_n, tail_left_n)
