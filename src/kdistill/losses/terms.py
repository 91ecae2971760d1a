"""Label-space loss terms as pure tensor functions, each returning one value per example (B,).

Normalizing per example (not per batch) is what lets the training loop sum micro-batches and divide
by the step's example count, so the gradient does not depend on how a batch is split. The one term
that is not per example, `balance` (a function of the batch-averaged prediction), is handed to the
loop as a per-example surrogate with the same gradient; see `balance_surrogate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.divergences import divergence


def _atleast_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 logits are upcast for the loss; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cross_entropy(student_logits_bl: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy per example, (B,)."""
    return F.cross_entropy(_atleast_fp32(student_logits_bl), labels_b, reduction="none")


def soft_label_loss(student_logits_bl: torch.Tensor, teacher_logprobs_bl: torch.Tensor, *, kind: str = "forward_kl",
                    temperature: float = 1.0, beta: float = 0.5, skew: float = 0.1) -> torch.Tensor:
    """divergence(teacher_T, student_T) per example, (B,); the Objective scales it by T^2 (`Objective.scaled_kd`).

    The teacher arrives as log-probabilities (what the teacher store holds); softening them is
    softmax(log p / T), the same as softening the logits they came from.
    """
    return divergence(_atleast_fp32(student_logits_bl), _atleast_fp32(teacher_logprobs_bl), kind=kind,
                      temperature=temperature, beta=beta, skew=skew)


def hidden_alignment(student_bnd: torch.Tensor, teacher_bnd: torch.Tensor, *, loss: str = "mse",
                     normalize: bool = True) -> torch.Tensor:
    """Distance between (projected) student and teacher states, averaged over the n layer pairs, (B,).

    Both sides are (B, n, D) with the teacher's width D. With ``normalize`` each vector is
    layer-normalized (no affine) first: models differ in the scale of their residual streams by orders
    of magnitude (Gemma's reach the hundreds), and an unnormalized MSE would be about scale, not content.
    """
    student_bnd, teacher_bnd = _atleast_fp32(student_bnd), _atleast_fp32(teacher_bnd)
    if normalize:
        student_bnd = F.layer_norm(student_bnd, student_bnd.shape[-1:])
        teacher_bnd = F.layer_norm(teacher_bnd, teacher_bnd.shape[-1:])
    if loss == "mse":
        per_pair_bn = (student_bnd - teacher_bnd).square().mean(-1)
    elif loss == "cosine":
        per_pair_bn = 1.0 - F.cosine_similarity(student_bnd, teacher_bnd, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"unknown hidden alignment loss {loss!r}")
    return per_pair_bn.mean(-1)


def supervised_contrastive(embeddings_bd: torch.Tensor, labels_b: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al., 2020) per example, (B,): -mean over the anchor's positives p of
    log(exp(s_ap / tau) / sum over the other taking-part examples a' of exp(s_aa' / tau)), s the cosine similarity.

    Only examples with a label >= 0 take part (-100: none); one without another example of its label in the batch
    adds 0. Unlike the other terms it couples the examples of a batch, so it is computed per micro-batch.
    """
    z_bd = F.normalize(_atleast_fp32(embeddings_bd), dim=-1)
    taking_part_b = labels_b >= 0
    others_bb = taking_part_b[:, None] & taking_part_b[None, :] & ~torch.eye(len(labels_b), dtype=torch.bool,
                                                                              device=labels_b.device)
    positives_bb = others_bb & (labels_b[:, None] == labels_b[None, :])
    # a finite stand-in for -inf: a row with nobody else taking part must give 0, not 0 * nan, in backward too
    logits_bb = (z_bd @ z_bd.T / temperature).masked_fill(~others_bb, -1e9)
    log_prob_bb = logits_bb - torch.logsumexp(logits_bb, dim=-1, keepdim=True)
    num_positives_b = positives_bb.sum(-1)
    summed_b = torch.where(positives_bb, log_prob_bb, 0.0).sum(-1)
    return torch.where(num_positives_b > 0, -summed_b / num_positives_b.clamp(min=1), 0.0)


def balance_value(mean_probs_l: torch.Tensor, target_l: torch.Tensor) -> torch.Tensor:
    """KL(target || batch-mean student prediction), a scalar: large when the student neglects a label
    the target expects, which is what collapsing onto the majority answer does."""
    mean_probs_l = mean_probs_l.clamp(min=torch.finfo(mean_probs_l.dtype).tiny)
    return torch.special.xlogy(target_l, target_l).sum() - (target_l * mean_probs_l.log()).sum()


def balance_surrogate(student_logits_bl: torch.Tensor, step_mean_probs_l: torch.Tensor,
                      target_l: torch.Tensor) -> torch.Tensor:
    """Per-example values (B,) whose mean over the step has the gradient of `balance_value` at the
    step's mean prediction.

    The balance term is a function of the mean prediction over the whole optimizer step, which a
    micro-batch alone cannot compute. Its gradient is linear in each example's probabilities given
    that mean: d/dp_i KL(t || mean_j p_j) = g / B with g = -t / mean. So each example contributes g . p_i
    with g fixed (detached) from the step's mean: summed over micro-batches and divided by the step's
    example count, that is exactly the full-batch gradient, however the step is split. The values
    themselves are not the balance value; log `balance_value` instead.
    """
    mean_l = step_mean_probs_l.detach().clamp(min=torch.finfo(step_mean_probs_l.dtype).tiny)
    direction_l = -(target_l / mean_l)  # (L,)
    probs_bl = F.softmax(_atleast_fp32(student_logits_bl), dim=-1)
    return (probs_bl * direction_l).sum(-1)
