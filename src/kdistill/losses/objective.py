"""The objective: the one place where loss terms are weighted, scheduled and combined.

    total_b = ce.weight * CE + kd.weight(t) * T^2 * D(teacher_T, student_T)
              + hidden.weight * alignment(W h_student, h_teacher) + balance.weight * balance
              + contrastive.weight * SupCon(student vectors, labels)

An example without a gold label (transfer-set text) has no CE; its CE weight moves to the KD term, so it
is taught by the teacher alone. The learned projections W of the hidden term live here, not in the
student: they are trained and checkpointed with the run, and the exported student does not carry them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from kdistill.config import ObjectiveConfig
from kdistill.errors import KdistillError
from kdistill.losses.terms import (
    balance_surrogate,
    balance_value,
    cross_entropy,
    hidden_alignment,
    soft_label_loss,
    supervised_contrastive,
)


def layer_pairs(spec: str | list[list[int]], num_student_layers: int,
                num_teacher_layers: int) -> list[tuple[int, int]]:
    """Resolve a layer map into (student, teacher) pairs of hidden-state indices (0 = embeddings).

    uniform:  student block s <-> teacher block round(s T / S), s = 1..S (TinyBERT's uniform map)
    last-K:   the last K blocks of each, in order (PKD-Last)
    every-K:  student block s <-> teacher block s K (PKD-Skip; DistilBERT's one layer out of two is every-2)
    explicit: [[s, t], ...]
    """
    S, T = num_student_layers, num_teacher_layers
    where = "objective.hidden.layers"
    if isinstance(spec, list):
        pairs = [tuple(p) for p in spec]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise KdistillError(f"{where}: explicit pairs are [[student_layer, teacher_layer], ...]; found {spec}.")
    elif spec == "uniform":
        pairs = [(s, round(s * T / S)) for s in range(1, S + 1)]
    elif match := re.fullmatch(r"(last|every)-(\d+)", spec):
        kind, k = match.group(1), int(match.group(2))
        if k < 1:
            raise KdistillError(f"{where}: K in {spec!r} must be >= 1.")
        if kind == "last":
            pairs = [(S - k + j, T - k + j) for j in range(1, k + 1)]
        else:
            pairs = [(s, s * k) for s in range(1, S + 1) if s * k <= T]
    else:
        raise KdistillError(f"{where}: {spec!r} is not a layer map; use uniform, last-K, every-K "
                            "or [[student_layer, teacher_layer], ...].")
    for s, t in pairs:
        if not (0 <= s <= S and 0 <= t <= T):
            raise KdistillError(f"{where}: pair ({s}, {t}) is out of range; the student has layers 0..{S} "
                                f"and the teacher 0..{T} (0 = embeddings).")
    return list(pairs)


def schedule_factor(schedule: str, progress: float) -> float:
    """The KD weight's multiplier at ``progress`` = share of training done, in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return {"constant": 1.0, "linear_warmup": p, "linear_decay": 1.0 - p,
            "cosine_decay": 0.5 * (1.0 + math.cos(math.pi * p))}[schedule]


@dataclass(frozen=True)
class HiddenTarget:
    """One teacher the hidden term aligns with: its name, its (student, teacher) layer pairs, its width."""

    teacher: str
    pairs: list[tuple[int, int]]
    width: int


@dataclass
class StepTargets:
    """What one micro-batch is compared against."""

    labels_b: torch.Tensor
    teacher_logprobs_bl: torch.Tensor | None = None
    teacher_hidden: list[torch.Tensor] | None = None  # per hidden target: (B, n_k, D_k) pooled states
    labelled_b: torch.Tensor | None = None  # False: the gold label must not be used (transfer set)
    balance_mean_probs_l: torch.Tensor | None = None  # the whole step's mean student prediction
    balance_target_l: torch.Tensor | None = None
    ce_scale: float = 1.0  # objective.ce.average = labelled: step size / labelled examples in the step
    contrastive_labels_b: torch.Tensor | None = None  # the contrastive term's label per example, -100: not taking part


class Objective(nn.Module):
    """Weighted terms; holds the hidden term's projections (per teacher, one per layer pair), if any.

    With several hidden targets (teachers), the hidden term is the mean over teachers of each one's
    alignment, so a teacher with more layer pairs does not count more.
    """

    def __init__(self, cfg: ObjectiveConfig, *, hidden_targets: list[HiddenTarget] | None = None,
                 student_width: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.hidden_targets = list(hidden_targets or [])
        if cfg.hidden.weight > 0 and not any(t.pairs for t in self.hidden_targets):
            raise ValueError("the hidden term needs at least one teacher with layer pairs")
        self.student_layers = sorted({s for t in self.hidden_targets for s, _ in t.pairs})
        """The student layers whose pooled states the hidden term needs, in this order."""
        self.projections = nn.ModuleList(
            nn.ModuleList(nn.Linear(student_width, t.width) for _ in t.pairs) for t in self.hidden_targets)
        self._slots = [[self.student_layers.index(s) for s, _ in t.pairs] for t in self.hidden_targets]

    @property
    def uses_hidden(self) -> bool:
        return self.cfg.hidden.weight > 0

    @property
    def uses_balance(self) -> bool:
        return self.cfg.balance.weight > 0

    @property
    def uses_contrastive(self) -> bool:
        return self.cfg.contrastive.weight > 0

    def kd_weight(self, progress: float) -> float:
        """kd.weight at ``progress`` (0 to 1) through training, after its schedule."""
        return self.cfg.kd.weight * schedule_factor(self.cfg.kd.schedule, progress)

    def scaled_kd(self, divergence_b: torch.Tensor) -> torch.Tensor:
        """T^2 * D: the only place the KD temperature's T^2 is applied, for label and token steps alike. It keeps
        the gradient's scale independent of T (Hinton et al., 2015); the divergences themselves leave it out."""
        return self.cfg.kd.temperature**2 * divergence_b

    def token_total(self, raw: dict[str, torch.Tensor], *, kd_weight: float,
                    ce_mask_b: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total_b, terms) of a token step from its per-example ``raw`` terms (`token_kd.target_token_terms`):
        ce.weight * CE + kd_weight * T^2 * D. ``ce_mask_b`` (B,) 0/1 drops the CE of the examples marked 0 from
        the total (their target is the student's own text: on-policy); their CE is still reported."""
        terms = dict(raw)
        total_b = torch.zeros_like(next(iter(raw.values())))
        if "ce" in terms:
            total_b = total_b + self.cfg.ce.weight * (terms["ce"] if ce_mask_b is None
                                                      else terms["ce"] * ce_mask_b.to(terms["ce"]))
        if "kd" in terms:
            terms["kd"] = self.scaled_kd(terms["kd"])
            total_b = total_b + kd_weight * terms["kd"]
        return total_b, terms

    def forward(self, logits_bl: torch.Tensor, targets: StepTargets, *, progress: float = 0.0,
                student_hidden_bnd: torch.Tensor | None = None,
                student_vector_bd: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total_b, terms) of a label step: the per-example loss and each term per example, for logging.
        ``student_vector_bd``: the contrastive term's one vector per example."""
        cfg = self.cfg
        kd_weight = self.kd_weight(progress)
        terms = {"ce": cross_entropy(logits_bl, targets.labels_b)}
        labelled_b = targets.labelled_b
        total_b = cfg.ce.weight * targets.ce_scale * terms["ce"]
        if labelled_b is not None:
            total_b = torch.where(labelled_b, total_b, 0.0)
        if kd_weight > 0 or (labelled_b is not None and not bool(labelled_b.all())):
            if targets.teacher_logprobs_bl is None:
                raise ValueError("the kd term (or an example without a gold label) needs teacher targets")
            terms["kd"] = self.scaled_kd(soft_label_loss(logits_bl, targets.teacher_logprobs_bl, kind=cfg.kd.divergence,
                                                         temperature=cfg.kd.temperature, beta=cfg.kd.beta,
                                                         skew=cfg.kd.skew))
            kd_weight_b = torch.full_like(terms["kd"], kd_weight)
            if labelled_b is not None:  # no gold label: the CE weight goes to the teacher
                kd_weight_b = torch.where(labelled_b, kd_weight_b, kd_weight + cfg.ce.weight)
            total_b = total_b + kd_weight_b * terms["kd"]
        if self.uses_hidden:
            weighted_b, hidden_terms = self.hidden_term(student_hidden_bnd, targets.teacher_hidden)
            terms.update(hidden_terms)
            total_b = total_b + weighted_b
        if self.uses_balance:
            surrogate_b = balance_surrogate(logits_bl, targets.balance_mean_probs_l, targets.balance_target_l)
            total_b = total_b + cfg.balance.weight * surrogate_b
            value = balance_value(targets.balance_mean_probs_l.detach(), targets.balance_target_l)
            terms["balance"] = value.expand(logits_bl.shape[0])
        if self.uses_contrastive:
            terms["contrastive"] = supervised_contrastive(student_vector_bd, targets.contrastive_labels_b,
                                                          temperature=cfg.contrastive.temperature)
            total_b = total_b + cfg.contrastive.weight * terms["contrastive"]
        return total_b, terms


    def hidden_term(self, student_hidden_bnd: torch.Tensor,
                    teacher_hidden: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(hidden.weight * the hidden term, (B,); {"hidden": the term, (B,), and with several teachers each one's
        "hidden:<teacher>"}). ``student_hidden_bnd``: the student's pooled states of `student_layers`;
        ``teacher_hidden``: each hidden target's (B, n_k, D_k). The label step and the token step both add it."""
        cfg, terms, per_teacher = self.cfg, {}, []
        for target, projections, slots, teacher_bnd in zip(self.hidden_targets, self.projections, self._slots,
                                                          teacher_hidden):
            projected_bnd = torch.stack([proj(student_hidden_bnd[:, i]) for i, proj in zip(slots, projections)], 1)
            per_teacher.append(hidden_alignment(projected_bnd, teacher_bnd, loss=cfg.hidden.loss,
                                                normalize=cfg.hidden.normalize))
            if len(self.hidden_targets) > 1:
                terms[f"hidden:{target.teacher}"] = per_teacher[-1]
        terms["hidden"] = torch.stack(per_teacher).mean(0)
        return cfg.hidden.weight * terms["hidden"], terms


def describe_terms() -> dict[str, str]:
    """`kdistill ls losses`: each term, its parameters with defaults, and the divergences."""
    from dataclasses import fields

    from kdistill.config import BalanceTerm, CETerm, ContrastiveTerm, HiddenTerm, KDTerm, field_docs
    from kdistill.losses.divergences import DIVERGENCES

    out = {}
    for name, cls in (("ce", CETerm), ("kd", KDTerm), ("hidden", HiddenTerm), ("balance", BalanceTerm),
                      ("contrastive", ContrastiveTerm)):
        defaults, docs = cls(), field_docs(cls)
        lines = [f"{f.name}={getattr(defaults, f.name)!r}: {docs.get(f.name, '')}" for f in fields(cls)]
        out[name] = " ".join((cls.__doc__ or "").split()) + "".join(f"\n{'':25}{line}" for line in lines)
    out.update({f"kd.divergence: {k}": v for k, v in DIVERGENCES.items()})
    return out
