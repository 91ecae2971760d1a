"""Label-space training in the one loop (`loop.Trainer`): the student's logits over the task's labels against
gold labels and the teacher's label distributions (and hidden states, and the balance term's target).

    TrainStep    the trainable module: student (+ the hidden term's projections) -> the objective's losses
    LabelSteps   what the loop asks of a kind of training: a micro-batch's arguments, validation, length
    macro_f1     validation's score
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from sklearn.metrics import f1_score
from torch import nn

from kdistill import distributed
from kdistill.config import TrainingConfig
from kdistill.losses.objective import Objective, StepTargets
from kdistill.models import LabelModel
from kdistill.models.base import pool_states
from kdistill.targets import TeacherTargets
from kdistill.train.precision import autocast

if TYPE_CHECKING:
    from kdistill.data import Example


class StepHost(Protocol):
    """What label steps read of the loop that runs them (`loop.Trainer`): passed in, not imported, so the
    adapter knows the loop only by this contract."""

    model: LabelModel
    objective: Objective
    cfg: TrainingConfig
    device: torch.device
    together: bool


def macro_f1(model: LabelModel, examples: list["Example"], batch_size: int) -> float:
    label_ids = {label: i for i, label in enumerate(model.labels)}
    preds = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        preds += model.predict_logits([e.text for e in chunk]).argmax(-1).tolist()
    gold = [label_ids[e.label] for e in examples]
    return float(f1_score(gold, preds, average="macro", labels=list(range(len(model.labels))), zero_division=0))


class TrainStep(nn.Module):
    """The student and the objective as one module: what DDP / FSDP / DeepSpeed wrap, so that one
    forward call reaches every trainable parameter (the student's and the hidden term's projections).
    Its parameter names are `student.*` and `objective.*`."""

    def __init__(self, model: LabelModel, objective: Objective, *, mixed_precision: str) -> None:
        super().__init__()
        self.student, self.objective = model.module, objective
        self._model = [model]  # a LabelModel is not an nn.Module; a list keeps it out of the module tree
        self.mixed_precision = mixed_precision

    def forward(self, progress: float, inputs: dict[str, torch.Tensor], targets: StepTargets,
                pool: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self._model[0]
        objective, hidden_bnd, vector_bd = self.objective, None, None
        with autocast(model.device, self.mixed_precision):
            if objective.uses_hidden or objective.uses_contrastive:
                logits_bl, states, mask_bs = model.label_logits_and_hidden(inputs)
                if objective.uses_hidden:
                    hidden_bnd = pool_states(states, mask_bs, objective.student_layers, pool)
                if objective.uses_contrastive:
                    vector_bd = pool_states(states, mask_bs, [len(states) - 1], self._contrastive_pool(model))[:, 0]
            else:
                logits_bl = model.label_logits(inputs)
        if self.objective.uses_balance and targets.balance_mean_probs_l is None:  # the step is this batch
            targets.balance_mean_probs_l = torch.softmax(logits_bl.detach().float(), -1).mean(0)
        return self.objective(logits_bl, targets, progress=progress, student_hidden_bnd=hidden_bnd,
                              student_vector_bd=vector_bd)

    def _contrastive_pool(self, model: LabelModel) -> str:
        """auto: the token the classification head reads (an encoder's first, a causal LM's last)."""
        pool = self.objective.cfg.contrastive.pool
        return pool if pool != "auto" else ("last" if model.kind == "causal_lm" else "cls")


class LabelSteps:
    """Label-space steps for ``trainer``: ``targets``, teacher label log-probs by id; ``teacher_hidden``, for the
    hidden term, each hidden target's (teacher's) pooled hidden states (N, n_k, D_k), in
    ``objective.hidden_targets`` order; ``label_prior``, (L,), the balance term's prior target;
    ``labelled_ids``, the examples whose gold label may be used (None: all)."""

    def __init__(self, trainer: StepHost, *, targets: TeacherTargets | None, teacher_hidden: list[TeacherTargets] | None,
                 label_prior: torch.Tensor | None, labelled_ids: set[str] | None) -> None:
        self._check_inputs(trainer.objective, targets, teacher_hidden, label_prior, labelled_ids)
        self.trainer, self.targets, self.teacher_hidden = trainer, targets, teacher_hidden
        self.label_prior, self.labelled_ids = label_prior, labelled_ids
        self.label_ids = {label: i for i, label in enumerate(trainer.model.labels)}
        self.module = TrainStep(trainer.model, trainer.objective, mixed_precision=trainer.cfg.mixed_precision)
        self._balance: dict[str, torch.Tensor] = {}
        self._ce_scale = 1.0

    @staticmethod
    def _check_inputs(objective: Objective, targets, teacher_hidden, label_prior, labelled_ids) -> None:
        terms = objective.cfg
        if terms.kd.weight > 0 and targets is None:
            raise ValueError("objective.kd.weight > 0 needs teacher targets")
        if labelled_ids is not None and targets is None:
            raise ValueError("examples without gold labels need teacher targets")
        if objective.uses_hidden and (teacher_hidden is None or len(teacher_hidden) != len(objective.hidden_targets)):
            raise ValueError("objective.hidden.weight > 0 needs the hidden states of each of its teachers")
        if objective.uses_balance and (label_prior if terms.balance.target == "prior" else targets) is None:
            raise ValueError(f"the balance term's target {terms.balance.target!r} is missing")

    def begin_step(self, batch: list["Example"], chunks: list[list["Example"]], *, counts: bool) -> None:
        self._balance = self._balance_inputs(batch, chunks, counts) if self.trainer.objective.uses_balance else {}
        self._ce_scale = self._labelled_ce_scale(batch)

    def _labelled_ce_scale(self, batch: list["Example"]) -> float:
        """objective.ce.average = labelled: the loop divides a step's summed loss by the step's size, so the CE of
        its labelled examples is multiplied by size / labelled to become their mean. ``batch`` is the whole step
        (every process's share), so every process scales alike."""
        if self.trainer.objective.cfg.ce.average != "labelled":
            return 1.0
        labelled = sum(bool(e.label) and (self.labelled_ids is None or e.id in self.labelled_ids) for e in batch)
        return len(batch) / labelled if labelled else 1.0

    def arguments(self, chunk: list["Example"], device: torch.device, step: int) -> tuple:
        return self._label_arguments(chunk, self._balance)

    def validate(self, examples: list["Example"]) -> tuple[dict[str, float], float]:
        score = macro_f1(self.trainer.model, examples, batch_size=max(self.trainer.cfg.batch_size, 32))
        return {"val_macro_f1": score}, score

    def length(self, example: "Example") -> int:
        return len(example.text)

    def _label_arguments(self, chunk: list["Example"], balance: dict[str, torch.Tensor]) -> tuple:
        """`TrainStep`'s arguments for a micro-batch (after `progress`)."""
        inputs = {k: v.to(self.trainer.device) for k, v in self.trainer.model.encode([e.text for e in chunk]).items()}
        return inputs, self._targets(chunk, **balance), self._pool

    @property
    def _pool(self) -> str:
        pool = self.trainer.objective.cfg.hidden.pool
        return self.trainer.model.default_pool if pool == "auto" else pool

    def _targets(self, chunk: list["Example"], **balance: torch.Tensor) -> StepTargets:
        ids = [e.id for e in chunk]
        return StepTargets(
            # a pool text (data.unlabeled) has no gold label: -100, cross-entropy's ignore index; labelled_b masks it too
            labels_b=torch.tensor([self.label_ids[e.label] if e.label else -100 for e in chunk], device=self.trainer.device),
            teacher_logprobs_bl=self.targets.rows(ids).to(self.trainer.device) if self.targets else None,
            teacher_hidden=[t.rows(ids).to(self.trainer.device) for t in self.teacher_hidden] if self.trainer.objective.uses_hidden
            else None,
            labelled_b=None if self.labelled_ids is None else
            torch.tensor([i in self.labelled_ids for i in ids], device=self.trainer.device),
            ce_scale=self._ce_scale, contrastive_labels_b=self._contrastive_labels(chunk, ids), **balance)

    def _contrastive_labels(self, chunk: list["Example"], ids: list[str]) -> torch.Tensor | None:
        """Gold label ids where the gold label may be used; the rest -100, or with labels = gold_and_teacher the
        teacher's most likely label."""
        cfg = self.trainer.objective.cfg.contrastive
        if cfg.weight <= 0:
            return None
        labels = [self.label_ids[e.label] if e.label and (self.labelled_ids is None or e.id in self.labelled_ids)
                  else -100 for e in chunk]
        if cfg.labels == "gold_and_teacher" and self.targets is not None:
            teacher_b = self.targets.rows(ids).argmax(-1).tolist()
            labels = [gold if gold >= 0 else int(t) for gold, t in zip(labels, teacher_b)]
        return torch.tensor(labels, device=self.trainer.device)

    def _balance_inputs(self, batch: list["Example"], chunks: list[list["Example"]],
                        counts: bool = True) -> dict[str, torch.Tensor]:
        """The balance term's target and, when the step is split (into micro-batches or over processes),
        the whole step's mean prediction.

        A split step needs one extra forward without gradients to see all of its examples first; an
        unsplit step takes the mean from its own forward (see `TrainStep`). ``counts`` is False for a
        process whose share of the step is empty (it then adds nothing to the mean).
        """
        if self.trainer.objective.cfg.balance.target == "prior":
            target_l = self.label_prior.to(self.trainer.device)
        else:
            target_l = self.targets.rows([e.id for e in batch]).exp().mean(0).to(self.trainer.device)
        out = {"balance_target_l": target_l.float()}
        if len(chunks) > 1 or self.trainer.together:
            with torch.no_grad(), autocast(self.trainer.device, self.trainer.cfg.mixed_precision):
                probs_nl = torch.cat([torch.softmax(self.trainer.model.label_logits(
                    {k: v.to(self.trainer.device) for k, v in self.trainer.model.encode([e.text for e in c]).items()}).float(), -1)
                    for c in chunks])
            sum_and_count = torch.cat([probs_nl.sum(0), torch.tensor([len(probs_nl)], device=probs_nl.device)])
            sum_and_count = sum_and_count * counts
            sum_and_count = distributed.all_sum(sum_and_count) if self.trainer.together else sum_and_count
            out["balance_mean_probs_l"] = sum_and_count[:-1] / sum_and_count[-1]
        return out
