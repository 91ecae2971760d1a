"""Training a generative (causal-LM) student in the one loop of `train.py`: the token-level step.

    TokenStep    the trainable module: student hidden states -> CE + KD on the target tokens only (+ the
                 objective's hidden term on the sequence's pooled states, when it has one)
    TokenSteps   what the Trainer asks of a kind of training: a micro-batch's arguments, validation, length
    OnPolicy     GKD's mixing: a share of each step's examples learn from the student's own continuation
    GenStudent   a causal LM and its tokenizer, shaped like the label models the Trainer holds

The variants of a generation run differ only in the objective they pass here: `sequence_kd` is CE on
the targets (the teacher's written targets: sequence-level KD; or the data's references: fine-tuning);
`distilled` adds the teacher's per-token distributions (token-level KD) on the same target tokens, and the
hidden term where objective.hidden asks for it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdistill.config import CETerm, KDTerm, ObjectiveConfig
from kdistill.data.generative import prompt_text
from kdistill.data.records import GenExample
from kdistill.errors import KdistillError
from kdistill.eval.text_metrics import copy_rate, rouge
from kdistill.losses.divergences import SparseTargets
from kdistill.losses.objective import Objective
from kdistill.losses.token_kd import TargetBatch, encode_targets, target_token_terms
from kdistill.models.base import pool_states
from kdistill.models.generative import GenStudent
from kdistill.targets import TeacherTargets
from kdistill.train.precision import autocast


class TokenStep(nn.Module):
    """The student's loss on one micro-batch: CE and KD on target tokens, each example's mean over its
    own target tokens. Logits are only ever formed for target positions, chunk by chunk (the lm_head is
    fused into the loss), so a 150k vocabulary costs a few MB per chunk, not (B, T, V). With the hidden term,
    the ``objective`` (a submodule: its projections train with the student) adds it on the student's states
    of the whole sequence, pooled by ``pool`` as the teacher's were. Parameter names: `student.*`, `objective.*`."""

    def __init__(self, student: nn.Module, objective: Objective, *, chunk_tokens: int = 64,
                 mixed_precision: str = "auto", pool: str = "mean") -> None:
        super().__init__()
        self.student = student
        self.objective, self.chunk_tokens, self.mixed_precision = objective, chunk_tokens, mixed_precision
        self.pool = pool
        if getattr(student.config.get_text_config(), "final_logit_softcapping", None):
            raise KdistillError(f"{type(student).__name__} caps its logits (final_logit_softcapping); token-level "
                                "KD through the fused lm_head does not apply that cap yet. Choose another student.")

    def forward(self, progress: float, batch: TargetBatch, teacher: SparseTargets | None,
                ce_mask_b: torch.Tensor | None = None, teacher_hidden: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        uses_hidden = self.objective.uses_hidden
        with autocast(batch.input_ids_bt.device, self.mixed_precision):
            # every layer's states only for the hidden term: without it the forward is what it always was
            outputs = self.student.base_model(input_ids=batch.input_ids_bt, attention_mask=batch.attention_mask_bt,
                                              **({"output_hidden_states": True} if uses_hidden else {}))
        hidden_bth = outputs.last_hidden_state.float()  # the fused lm_head loss works in fp32
        kd = self.objective.cfg.kd
        kd_weight = self.objective.kd_weight(progress) if teacher is not None else 0.0
        raw = target_token_terms(hidden_bth, self.student.get_output_embeddings().weight, batch, teacher,
                                 ce=self.objective.cfg.ce.weight > 0, kd=kd_weight > 0, divergence_kind=kd.divergence,
                                 temperature=kd.temperature, beta=kd.beta, skew=kd.skew, chunk_tokens=self.chunk_tokens)
        total_b, terms = self.objective.token_total(raw, kd_weight=kd_weight, ce_mask_b=ce_mask_b)
        if uses_hidden:
            pooled_bnd = pool_states(outputs.hidden_states, batch.attention_mask_bt, self.objective.student_layers,
                                     self.pool).float()
            hidden_b, hidden_terms = self.objective.hidden_term(pooled_bnd, teacher_hidden)
            if ce_mask_b is not None:  # an on-policy example reads the student's own text, not the teacher's sequence
                hidden_b = hidden_b * ce_mask_b.to(hidden_b)
            total_b = total_b + hidden_b
            terms.update(hidden_terms)
        if ce_mask_b is not None:
            terms["on_policy"] = 1.0 - ce_mask_b  # recorded as the step's share of on-policy examples
        return total_b, terms


def concat_rows(rows: list[SparseTargets]) -> SparseTargets:
    """One SparseTargets for a batch: the examples' rows one after another (their target tokens in order)."""
    return SparseTargets(torch.cat([r.token_ids for r in rows]), torch.cat([r.logprobs for r in rows]),
                         torch.cat([r.tail_logmass for r in rows]), stored_temperature=rows[0].stored_temperature)


def _to(rows: SparseTargets, device: torch.device) -> SparseTargets:
    return SparseTargets(rows.token_ids.to(device), rows.logprobs.to(device), rows.tail_logmass.to(device),
                         stored_temperature=rows.stored_temperature)


@dataclass
class OnPolicy:
    """GKD's on-policy mixing (Agarwal et al., 2024, lambda): each training example is, with probability
    ``fraction`` at each step, replaced by the student's own continuation of its prompt, which the live
    ``teacher`` scores token by token; such an example takes the kd term only. The draw and the sampling
    seed depend on (seed, step, example id) alone, so they do not depend on how a batch is split into
    micro-batches or processes, and a resumed run draws the same."""

    teacher: nn.Module
    fraction: float
    temperature: float
    seed: int
    k: int
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    eos_id: int | None = None

    def _random(self, step: int, example_id: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}:{step}:{example_id}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def chosen(self, step: int, example_id: str) -> bool:
        return self.fraction > 0 and self._random(step, example_id).random() < self.fraction

    @torch.no_grad()
    def continuation(self, student: "GenStudent", prompt: str, step: int, example_id: str) -> str:
        from kdistill.models.generate import generate

        was_training = student.module.training
        student.module.eval()
        try:
            [g] = generate(student.module, student.tokenizer, [prompt], max_new_tokens=self.max_new_tokens,
                           batch_size=1, do_sample=self.temperature > 0, temperature=self.temperature or 1.0,
                           seed=self._random(step, example_id).randrange(2 ** 31),
                           max_prompt_tokens=student.max_length - self.max_new_tokens, stop=self.stop)
        finally:
            student.module.train(was_training)
        return g.text.strip()

    def rows(self, student: "GenStudent", prompt: str, text: str) -> SparseTargets:
        """The teacher's top-k rows for ``text`` after ``prompt``; at the end (the target's EOS), the teacher's
        own chance of ending there, a stop string's tokens counted as EOS (`stopping_as_eos`). One example per
        forward pass, like the sampling: batched, padding would make the rows depend on which examples share
        the micro-batch (the cost next to the generation that precedes it is small)."""
        from kdistill.losses.token_kd import stopping_as_eos
        from kdistill.models.token_rows import token_targets

        [row] = token_targets(self.teacher, student.tokenizer, [prompt], [text], k=self.k,
                              max_length=student.max_length, batch_size=1)
        sparse = SparseTargets(torch.from_numpy(row.token_ids), torch.from_numpy(row.logprobs),
                               torch.from_numpy(row.tail_logmass), stored_temperature=1.0)
        if self.eos_id is None:
            return sparse
        from kdistill.models.generate import end_token_ids

        stop_ids = {i for i in sparse.token_ids[-1].tolist()
                    if any(s in student.tokenizer.decode([i]) for s in self.stop if s)}
        stop_ids |= set(end_token_ids(self.teacher, student.tokenizer)) - {self.eos_id}  # other ways to end
        return stopping_as_eos(sparse, self.eos_id, stop_ids)


class TokenSteps:
    """The Trainer's `Steps` for a generative student. ``target_of`` gives each example's target text (the teacher's
    written one or the data's); ``teacher_rows`` each example's token-level teacher targets, or None for the
    CE-only variant. ``objective``: its config, or the `Objective` the Trainer holds (needed for the hidden
    term, whose projections it owns); ``teacher_hidden``: then each hidden target's pooled states by example
    id, in ``objective.hidden_targets`` order, pooled as ``pool``. Validation records the CE per target token
    on the validation examples' targets; the score the Trainer keeps the best weights by is, with ``select_by``
    target_ce, its negative, and with rouge_l the ROUGE-L of the student's greedy outputs (``max_new_tokens``,
    ``stop``) against those targets, with their bigram copy rate from the source recorded beside it."""

    def __init__(self, student: GenStudent, objective: ObjectiveConfig | Objective, *, template: str,
                 target_of: Callable[[GenExample], str],
                 teacher_rows: Callable[[str], SparseTargets] | None, batch_size: int,
                 mixed_precision: str = "auto", on_policy: OnPolicy | None = None,
                 select_by: str = "target_ce", max_new_tokens: int = 0, stop: tuple[str, ...] = (),
                 novel_token_weight: float = 1.0, teacher_hidden: list[TeacherTargets] | None = None,
                 pool: str = "mean") -> None:
        objective = objective if isinstance(objective, Objective) else Objective(objective)
        if objective.uses_hidden and (teacher_hidden is None or len(teacher_hidden) != len(objective.hidden_targets)):
            raise ValueError("objective.hidden.weight > 0 needs the hidden states of each of its teachers")
        if on_policy is not None and teacher_rows is None:
            raise KdistillError("on-policy mixing scores the student's text with the teacher's distributions, so it "
                                "needs the kd term (objective.kd.weight > 0).")
        if select_by not in ("target_ce", "rouge_l"):
            raise KdistillError(f"training.select_by must be target_ce or rouge_l; found {select_by!r}.")
        if select_by == "rouge_l" and max_new_tokens < 1:
            raise KdistillError("training.select_by: rouge_l generates on the validation split, so it needs "
                                f"task.max_new_tokens >= 1; found {max_new_tokens}.")
        self.student, self.template, self.target_of = student, template, target_of
        self.teacher_rows, self.batch_size, self.on_policy = teacher_rows, batch_size, on_policy
        self.select_by, self.max_new_tokens, self.stop = select_by, max_new_tokens, tuple(stop)
        self.novel_token_weight = novel_token_weight
        self.teacher_hidden = teacher_hidden if objective.uses_hidden else None
        self.module = TokenStep(student.module, objective, mixed_precision=mixed_precision, pool=pool)

    def encode(self, chunk: list[GenExample], own: dict[str, str] | None = None, *,
               novel_weight: float = 1.0) -> TargetBatch:
        """The chunk's prompts and targets: the given ones, or for the ids in ``own`` the student's own text."""
        own = own or {}
        return encode_targets(self.student.tokenizer, [prompt_text(self.template, e) for e in chunk],
                              [own[e.id] if e.id in own else self.target_of(e) for e in chunk],
                              max_length=self.student.max_length, novel_weight=novel_weight)

    def begin_step(self, batch: list[GenExample], chunks: list[list[GenExample]], *, counts: bool) -> None:
        """Nothing to prepare: a token step has no term that spans the whole step."""

    def arguments(self, chunk: list[GenExample], device: torch.device, step: int) -> tuple:
        """(batch, teacher rows, CE mask) of a micro-batch at optimizer step ``step``; with on-policy mixing,
        the chosen examples' targets are the student's continuations and their rows the live teacher's."""
        prompts = {e.id: prompt_text(self.template, e) for e in chunk}
        own = {}
        if self.on_policy is not None:
            own = {e.id: self.on_policy.continuation(self.student, prompts[e.id], step, e.id)
                   for e in chunk if self.on_policy.chosen(step, e.id)}
        batch = self.encode(chunk, own, novel_weight=self.novel_token_weight).to(device)
        rows = None
        if self.teacher_rows is not None:
            rows = _to(concat_rows([self.on_policy.rows(self.student, prompts[e.id], own[e.id])
                                    if e.id in own else self.teacher_rows(e.id) for e in chunk]), device)
        # with mixing on, every micro-batch has the mask (and so records the on-policy share): the terms
        # recorded must be the same in every process
        ce_mask_b = (torch.tensor([0.0 if e.id in own else 1.0 for e in chunk], device=device)
                     if self.on_policy is not None else None)
        if self.teacher_hidden is None:
            return batch, rows, ce_mask_b
        ids = [e.id for e in chunk]
        return batch, rows, ce_mask_b, [states.rows(ids).to(device) for states in self.teacher_hidden]

    @torch.no_grad()
    def validate(self, examples: list[GenExample]) -> tuple[dict[str, float], float]:
        self.module.eval()
        ce_only = ObjectiveConfig(ce=CETerm(weight=1.0), kd=KDTerm(weight=0.0))
        scorer = TokenStep(self.module.student, Objective(ce_only), chunk_tokens=self.module.chunk_tokens,
                           mixed_precision=self.module.mixed_precision)
        total, tokens = 0.0, 0
        device = self.student.device
        for start in range(0, len(examples), self.batch_size):
            batch = self.encode(examples[start:start + self.batch_size]).to(device)
            loss_b, _ = scorer(1.0, batch, None)
            counts_b = batch.num_target_tokens_b.float()
            total += float((loss_b * counts_b).sum())
            tokens += int(counts_b.sum())
        ce = total / max(tokens, 1)
        if self.select_by == "target_ce":
            return {"val_target_ce": ce}, -ce
        outputs = self.greedy_outputs(examples)
        rouge_l = rouge(outputs, [self.target_of(e) for e in examples])["rougeL"].mean
        copied = copy_rate(outputs, [e.prompt for e in examples], 2).mean
        return {"val_target_ce": ce, "val_rouge_l": rouge_l, "val_copy_rate_2": copied}, rouge_l

    def greedy_outputs(self, examples: list[GenExample]) -> list[str]:
        """The student's greedy continuations of the examples' prompts, decoded as evaluation decodes them."""
        from kdistill.models.generate import greedy_texts

        was_training = self.student.module.training
        try:
            return greedy_texts(self.student.module, self.student.tokenizer,
                                [prompt_text(self.template, e) for e in examples], max_new_tokens=self.max_new_tokens,
                                max_length=self.student.max_length, batch_size=self.batch_size, stop=self.stop)
        finally:
            self.student.module.train(was_training)

    def length(self, example: GenExample) -> int:
        return len(example.prompt) + len(self.target_of(example))


def load_gen_student_info(folder: Path) -> dict:
    """The kdistill.json of a saved generative student (raises a clear error if it is not one)."""
    path = Path(folder) / "kdistill.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if info.get("kind") != "causal_lm_generator":
        raise KdistillError(f"{folder}: not a generative student saved by kdistill (no kdistill.json of kind "
                            "causal_lm_generator).")
    return info
