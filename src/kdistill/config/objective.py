"""The distillation objective's configuration: one dataclass per term (see `kdistill ls losses`).

Re-exported by kdistill.config, where RunConfig holds an ObjectiveConfig.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from kdistill.errors import KdistillError

DIVERGENCE_KINDS = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]


def _check_weight(name: str, weight: float) -> None:
    if weight < 0:
        raise KdistillError(f"objective.{name}.weight must be >= 0; found {weight}.")


@dataclass(kw_only=True)
class CETerm:
    """Hard-label cross-entropy on examples that have a gold label."""

    weight: float = 0.5
    """Weight of the term; on examples without a gold label (a transfer set) it moves to `kd`."""
    average: Literal["batch", "labelled"] = "batch"
    """Label tasks: what the CE of a step is averaged over. batch: every example of the step (an example
    without a gold label adds 0), so with 100 labels in a pool of 600 the gold signal per step is 1/6 of a
    labels-only student's; labelled: only the step's examples with a gold label, as labels-only averages it."""

    def __post_init__(self) -> None:
        _check_weight("ce", self.weight)


@dataclass(kw_only=True)
class KDTerm:
    """T^2 * divergence(teacher_T, student_T) over the labels: the soft-label term."""

    weight: float = 0.5
    """Weight of the term (at full strength of its schedule)."""
    divergence: DIVERGENCE_KINDS = "forward_kl"
    """Which divergence; see `kdistill ls losses`."""
    temperature: float = 2.0
    """KD temperature, applied to teacher and student alike."""
    beta: float = 0.5
    """jsd only: the teacher's weight in the mixture (0 = forward KL, 1 = reverse KL)."""
    skew: float = 0.1
    """skew_forward_kl / skew_reverse_kl only: the skew (DistiLLM's alpha)."""
    schedule: Literal["constant", "linear_warmup", "linear_decay", "cosine_decay"] = "constant"
    """How the weight moves over training: constant, rising from 0 (warmup), or falling to 0 (decay)."""

    def __post_init__(self) -> None:
        _check_weight("kd", self.weight)
        if self.temperature <= 0:
            raise KdistillError(f"objective.kd.temperature must be > 0; found {self.temperature}.")
        for name in ("beta", "skew"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise KdistillError(f"objective.kd.{name} must be in [0, 1]; found {getattr(self, name)}.")


@dataclass(kw_only=True)
class HiddenTerm:
    """Hidden-state alignment: student states, through a learned linear projection, against the teacher's."""

    weight: float = 0.0
    """Weight of the term; 0 turns it off (and the teacher's hidden states are not elicited)."""
    loss: Literal["mse", "cosine"] = "mse"
    """mse: mean squared error per dimension; cosine: 1 - cosine similarity."""
    layers: str | list[list[int]] = "uniform"
    """Layer map: uniform, last-K, every-K, or explicit [[student_layer, teacher_layer], ...] pairs.
    Layer i is the output of block i; 0 is the embeddings."""
    pool: Literal["auto", "mean", "last", "cls"] = "auto"
    """How a sequence becomes one vector per layer (teacher and student may tokenize differently):
    auto = mean for encoders, the last token for causal LMs; for a generation task, the mean over the
    prompt + target (its last token is the same EOS in every example)."""
    normalize: bool = True
    """Layer-normalize (no affine) both sides before comparing, so no model's scale dominates."""
    teachers: list[str] = field(default_factory=list)
    """Names of the teachers to align with (their `name`, or model folder name); empty: the first
    teacher. With several, each has its own layer map and projections, and the term is their mean."""

    def __post_init__(self) -> None:
        _check_weight("hidden", self.weight)
        if isinstance(self.layers, str) and not re.fullmatch(r"uniform|(last|every)-[1-9]\d*", self.layers):
            raise KdistillError(f"objective.hidden.layers: {self.layers!r} is not a layer map; use uniform, "
                                "last-K, every-K (K >= 1) or [[student_layer, teacher_layer], ...].")


@dataclass(kw_only=True)
class BalanceTerm:
    """Anti-shortcut guard: KL(target || the student's batch-averaged prediction)."""

    weight: float = 0.0
    """Weight of the term; 0 turns it off."""
    target: Literal["prior", "teacher"] = "prior"
    """prior: the label distribution of the labelled training examples; teacher: the teacher's
    batch-averaged prediction on the same batch."""

    def __post_init__(self) -> None:
        _check_weight("balance", self.weight)


@dataclass(kw_only=True)
class ContrastiveTerm:
    """Supervised contrastive loss (SupCon, Khosla et al. 2020) on the student's sequence vectors: examples of one
    label are pulled together, others pushed apart, within each micro-batch. Label tasks only."""

    weight: float = 0.0
    """Weight of the term; 0 turns it off."""
    temperature: float = 0.1
    """Temperature of the cosine similarities (SupCon's tau)."""
    labels: Literal["gold", "gold_and_teacher"] = "gold"
    """Which examples take part: gold, only those with a gold label (so the labels-only baseline keeps the term);
    gold_and_teacher, also the rest, under the teacher's most likely label."""
    pool: Literal["auto", "mean", "last", "cls"] = "auto"
    """The vector compared: auto = what the classification head reads (the first token for an encoder, the last for a
    causal LM), so the head starts from separated classes."""

    def __post_init__(self) -> None:
        _check_weight("contrastive", self.weight)
        if self.temperature <= 0:
            raise KdistillError(f"objective.contrastive.temperature must be > 0; found {self.temperature}.")


@dataclass(kw_only=True)
class ObjectiveConfig:
    """A weighted sum of terms: ce.weight * CE + kd.weight * T^2 * D(teacher_T, student_T)
    + hidden.weight * alignment + balance.weight * D(target || batch-mean student prediction)."""

    ce: CETerm = field(default_factory=CETerm)
    """Hard-label cross-entropy."""
    kd: KDTerm = field(default_factory=KDTerm)
    """Soft labels from the teacher."""
    hidden: HiddenTerm = field(default_factory=HiddenTerm)
    """Hidden-state alignment through a learned projection."""
    balance: BalanceTerm = field(default_factory=BalanceTerm)
    """Penalty against collapsing onto the most common answer."""
    contrastive: ContrastiveTerm = field(default_factory=ContrastiveTerm)
    """Classes pulled apart in the student's own representation (SetFit's idea, as a term)."""

    def __post_init__(self) -> None:
        if self.ce.weight + self.kd.weight + self.hidden.weight + self.balance.weight + self.contrastive.weight == 0:
            raise KdistillError("objective: every term has weight 0; give ce.weight or kd.weight a positive value.")

    @property
    def needs_teacher(self) -> bool:
        return (self.kd.weight > 0 or self.hidden.weight > 0 or (self.balance.weight > 0 and self.balance.target == "teacher")
                or (self.contrastive.weight > 0 and self.contrastive.labels == "gold_and_teacher"))

    def labels_only(self) -> "ObjectiveConfig":
        """The baseline: the same student fine-tuned on hard labels alone (a contrastive term on the gold labels stays:
        it needs no teacher, so the baseline is the same recipe without the teacher)."""
        return ObjectiveConfig(ce=CETerm(weight=1.0), kd=dataclasses.replace(self.kd, weight=0.0),
                               hidden=dataclasses.replace(self.hidden, weight=0.0),
                               balance=dataclasses.replace(self.balance, weight=0.0),
                               contrastive=dataclasses.replace(self.contrastive, labels="gold"))
