"""Training a generative (causal-LM) student in the one loop of `train.py`: the token-level step.

    TokenStep    the trainable module: student hidden states -> CE + KD on the target tokens only
    TokenSteps   what the Trainer asks of a kind of training: a micro-batch's arguments, validation, length
    GenStudent   a causal LM and its tokenizer, shaped like the label models the Trainer holds

The variants of a generation run differ only in the objective they pass here: `sequence_kd` is CE on
the targets (the teacher's written targets: sequence-level KD; or the data's references: fine-tuning);
`distilled` adds the teacher's per-token distributions (token-level KD) on the same target tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdistill.config import CETerm, KDTerm, ObjectiveConfig
from kdistill.data.generative import GenExample
from kdistill.divergences import SparseTargets
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, atomic_write_json
from kdistill.objective import schedule_factor
from kdistill.token_kd import TargetBatch, encode_targets, target_token_loss


@dataclass
class GenStudent:
    """A causal LM with its tokenizer; `module` and `labels` are what the Trainer reads of a model."""

    module: nn.Module
    tokenizer: object
    max_length: int
    name: str = ""
    labels: tuple = ()  # no label space: the Trainer's label lookup stays empty
    kind: str = "causal_lm"

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def save(self, folder: Path) -> None:
        """A folder AutoModelForCausalLM and AutoTokenizer load as they are; written atomically."""
        with atomic_dir(folder) as tmp:
            self.module.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "kdistill.json", {"kind": "causal_lm_generator", "max_length": self.max_length,
                                                      "name": self.name})


def freeze_lower_layers(module: nn.Module, trainable_layers: int | None) -> tuple[int, int]:
    """Keep all but the top ``trainable_layers`` transformer blocks (and the final norm) fixed; returns
    (trainable parameters, all parameters). None leaves every parameter trainable."""
    total = sum(p.numel() for p in module.parameters())
    if trainable_layers is None:
        return total, total
    layers = getattr(module.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise KdistillError(f"training.trainable_layers: {type(module).__name__} keeps no `layers` list of blocks "
                            "in its base model; set training.trainable_layers: null to train every parameter.")
    if trainable_layers > len(layers):
        raise KdistillError(f"training.trainable_layers is {trainable_layers}, but the student has {len(layers)} blocks.")
    module.requires_grad_(False)
    for block in layers[len(layers) - trainable_layers:]:
        block.requires_grad_(True)
    norm = getattr(module.base_model, "norm", None)
    if isinstance(norm, nn.Module):
        norm.requires_grad_(True)
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total


def prompt_text(template: str, example: GenExample) -> str:
    """The prompt the models see: the task's template with the example's source text in it."""
    return template.replace("{text}", example.prompt)


class TokenStep(nn.Module):
    """The student's loss on one micro-batch: CE and KD on target tokens, each example's mean over its
    own target tokens. Logits are only ever formed for target positions, chunk by chunk (the lm_head is
    fused into the loss), so a 150k vocabulary costs a few MB per chunk, not (B, T, V)."""

    def __init__(self, student: nn.Module, objective: ObjectiveConfig, *, chunk_tokens: int = 32,
                 mixed_precision: str = "auto") -> None:
        super().__init__()
        self.student = student
        self.objective, self.chunk_tokens, self.mixed_precision = objective, chunk_tokens, mixed_precision
        if getattr(student.config.get_text_config(), "final_logit_softcapping", None):
            raise KdistillError(f"{type(student).__name__} caps its logits (final_logit_softcapping); token-level "
                                "KD through the fused lm_head does not apply that cap yet. Choose another student.")

    def forward(self, progress: float, batch: TargetBatch,
                teacher: SparseTargets | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from kdistill.train import _autocast  # the label step's rule: bf16 on a CUDA device that has it

        with _autocast(batch.input_ids_bt.device, self.mixed_precision):
            hidden_bth = self.student.base_model(input_ids=batch.input_ids_bt,
                                                 attention_mask=batch.attention_mask_bt).last_hidden_state
        hidden_bth = hidden_bth.float()  # the fused lm_head loss works in fp32
        kd = self.objective.kd
        kd_weight = kd.weight * schedule_factor(kd.schedule, progress) if teacher is not None else 0.0
        return target_token_loss(hidden_bth, self.student.get_output_embeddings().weight, batch, teacher,
                                 ce_weight=self.objective.ce.weight, kd_weight=kd_weight, divergence_kind=kd.divergence,
                                 temperature=kd.temperature, beta=kd.beta, skew=kd.skew, chunk_tokens=self.chunk_tokens)


def concat_rows(rows: list[SparseTargets]) -> SparseTargets:
    """One SparseTargets for a batch: the examples' rows one after another (their target tokens in order)."""
    return SparseTargets(torch.cat([r.token_ids for r in rows]), torch.cat([r.logprobs for r in rows]),
                         torch.cat([r.tail_logmass for r in rows]), stored_temperature=rows[0].stored_temperature)


def _to(rows: SparseTargets, device: torch.device) -> SparseTargets:
    return SparseTargets(rows.token_ids.to(device), rows.logprobs.to(device), rows.tail_logmass.to(device),
                         stored_temperature=rows.stored_temperature)


class TokenSteps:
    """The Trainer's `Steps` for a generative student. ``target_of`` gives each example's target text
    (the teacher's written one or the data's); ``teacher_rows`` each example's token-level teacher
    targets, or None for the CE-only variant. Validation is the CE per target token on the validation
    examples' targets (lower is better; early stopping maximizes its negative)."""

    def __init__(self, student: GenStudent, objective: ObjectiveConfig, *, template: str,
                 target_of: Callable[[GenExample], str],
                 teacher_rows: Callable[[str], SparseTargets] | None, batch_size: int,
                 mixed_precision: str = "auto") -> None:
        self.student, self.template, self.target_of = student, template, target_of
        self.teacher_rows, self.batch_size = teacher_rows, batch_size
        self.module = TokenStep(student.module, objective, mixed_precision=mixed_precision)

    def encode(self, chunk: list[GenExample]) -> TargetBatch:
        return encode_targets(self.student.tokenizer, [prompt_text(self.template, e) for e in chunk],
                              [self.target_of(e) for e in chunk], max_length=self.student.max_length)

    def arguments(self, chunk: list[GenExample], device: torch.device) -> tuple:
        batch = self.encode(chunk).to(device)
        if self.teacher_rows is None:
            return batch, None
        rows = concat_rows([self.teacher_rows(e.id) for e in chunk])
        return batch, _to(rows, device)

    @torch.no_grad()
    def validate(self, examples: list[GenExample]) -> tuple[dict[str, float], float]:
        ce_only = ObjectiveConfig(ce=CETerm(weight=1.0), kd=KDTerm(weight=0.0))
        scorer = TokenStep(self.module.student, ce_only, chunk_tokens=self.module.chunk_tokens,
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
        return {"val_target_ce": ce}, -ce

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
