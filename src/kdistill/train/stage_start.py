"""Where a stage's student starts: the previous stage's student of the same variant and seed, fitted to
this stage's labels (multi-stage runs, kdistill.recipes.stages)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdistill.config import RunConfig
from kdistill.errors import KdistillError
from kdistill.models import LabelModel, load_saved
from kdistill.models.causal_lm import CausalLMLabelModel
from kdistill.rundir import RunDir

log = logging.getLogger(__name__)


def init_student(folder: Path, cfg: RunConfig, device: torch.device) -> LabelModel:
    """The previous stage's student, fitted to this stage's task.

    Same labels: used as it is. Other labels: an encoder gets a new head whose rows for the labels
    both stages share are copied from the old head (the rest freshly initialized, so seed it first);
    a causal LM answers through this task's prompt and verbalizers.
    """
    old = load_saved(folder, device=device)
    labels = cfg.task.labels
    if old.kind == "causal_lm":
        return CausalLMLabelModel(old.module, old.tokenizer, labels=labels,
                                  verbalizers=[cfg.task.verbalizers[label] for label in labels],
                                  prompt_template=cfg.task.prompt_template, prefix="",
                                  max_length=cfg.student.max_length, name=str(folder))
    if old.labels == labels:
        return old
    from transformers import AutoModelForSequenceClassification

    from kdistill.models.encoder import EncoderLabelModel

    module = AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
    copied = _copy_shared_label_rows(old.module, module, old.labels, labels)
    log.info("stage student from %s: new head for labels %s; rows of %s carried over", folder, labels, copied)
    model = EncoderLabelModel(module, old.tokenizer, labels=labels, input_template=cfg.student.input_template,
                              max_length=cfg.student.max_length)
    model.module.to(device)
    return model


def _copy_shared_label_rows(old: torch.nn.Module, new: torch.nn.Module, old_labels: list[str],
                            new_labels: list[str]) -> list[str]:
    """Copy, in every head tensor whose first dimension is the label count, the rows of shared labels."""
    shared = [label for label in new_labels if label in old_labels]
    old_state = old.state_dict()
    with torch.no_grad():
        for name, tensor in new.state_dict().items():
            source = old_state.get(name)
            if source is None or source.shape == tensor.shape or source.shape[1:] != tensor.shape[1:]:
                continue
            if source.shape[0] != len(old_labels) or tensor.shape[0] != len(new_labels):
                continue
            for label in shared:
                tensor[new_labels.index(label)] = source[old_labels.index(label)]
    return shared


def check_stage_dirs(init_dir: Path, variant: str, seed: int) -> Path:
    """The previous stage's student of this variant and seed, or a sentence saying what is missing."""
    folder = RunDir(init_dir).student(variant, seed)
    if not (folder / "kdistill.json").exists():
        raise KdistillError(f"{folder}: the previous stage has no {variant} student for seed {seed}; stages must "
                            "share evaluation.seeds and evaluation.baselines (re-run the previous stage with them).")
    return folder
