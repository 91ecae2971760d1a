"""Loss terms as pure tensor functions, each returning one value per example (B,).

Normalizing per example (not per batch) is what lets the training loop sum micro-batches and divide
by the step's example count, so the gradient does not depend on how a batch is split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _atleast_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 logits are upcast for the loss; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cross_entropy(student_logits_bl: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy per example, (B,)."""
    return F.cross_entropy(_atleast_fp32(student_logits_bl), labels_b, reduction="none")


def kl_divergence(student_logits_bl: torch.Tensor, teacher_logprobs_bl: torch.Tensor, *,
                  temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher_T || student_T) per example, (B,), both softened by ``temperature``.

    The teacher arrives as log-probabilities (what the teacher store holds); softening them is
    ``softmax(log p / T)``, the same as softening the logits they came from.
    """
    student_logp = F.log_softmax(_atleast_fp32(student_logits_bl) / temperature, dim=-1)
    teacher_logp = F.log_softmax(_atleast_fp32(teacher_logprobs_bl) / temperature, dim=-1)
    # xlogy-style: a zero-probability teacher label contributes 0, not nan
    teacher_p = teacher_logp.exp()
    return (teacher_p * (teacher_logp - student_logp)).where(teacher_p > 0, 0.0).sum(-1)


LOSSES = {
    "ce": "hard-label cross-entropy; weight 1 - alpha",
    "kd": "forward KL(teacher_T || student_T) * T^2 over the labels; weight alpha, temperature objective.kd_temperature",
}


def distillation_loss(student_logits_bl: torch.Tensor, labels_b: torch.Tensor,
                      teacher_logprobs_bl: torch.Tensor | None, *, alpha: float, temperature: float,
                      labelled_b: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1 - alpha) * CE + alpha * T^2 * KL, per example (B,), with each term for logging.

    T^2 keeps the KD gradient's scale independent of the temperature (Hinton et al., 2015).
    An example whose gold label is hidden (``labelled_b`` False: transfer-set text) is taught by
    the teacher alone: its loss is the KD term at full weight.
    """
    terms = {"ce": cross_entropy(student_logits_bl, labels_b)}
    if alpha == 0:
        return terms["ce"], terms
    if teacher_logprobs_bl is None:
        raise ValueError("alpha > 0 needs teacher targets")
    terms["kd"] = temperature**2 * kl_divergence(student_logits_bl, teacher_logprobs_bl, temperature=temperature)
    total = (1.0 - alpha) * terms["ce"] + alpha * terms["kd"]
    if labelled_b is not None:
        total = torch.where(labelled_b, total, terms["kd"])
    return total, terms
