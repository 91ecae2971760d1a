"""Causal LMs for generation tasks: loading one (teacher or student) and the student's saved form.

    load_causal_lm(cfg, device)   -> (module in fp32, tokenizer with a pad token)
    GenStudent                      a causal LM and its tokenizer, shaped like the label models the loop holds
    freeze_lower_layers(module, n)  train only the top n transformer blocks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill.checksums import CHECKSUMS, write_checksums
from kdistill.config import ModelConfig
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, atomic_write_json
from kdistill.models import resolve_model_path


def load_causal_lm(cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, object]:
    """A causal LM in fp32 on ``device`` and its tokenizer (given a pad token if it has none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.model)
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        archs = " ".join(AutoConfig.from_pretrained(path, **common).architectures or [])
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as err:
        raise KdistillError(f"model {cfg.model!r}: could not load it ({str(err).splitlines()[0]}). Name a built-in "
                            "model (kdistill ls models), a local folder, or a hub id while online.") from None
    if "CausalLM" not in archs and "LMHead" not in archs:
        raise KdistillError(f"model {cfg.model!r} ({archs or 'no architecture'}) is not a causal LM; a generation "
                            "task needs causal-LM teacher and student.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **common).to(device).eval()
    return module, tokenizer


@dataclass
class GenStudent:
    """A causal LM with its tokenizer; `module` and `labels` are what the Trainer reads of a model."""

    module: nn.Module
    tokenizer: object
    max_length: int
    name: str = ""
    labels: tuple = ()  # no label space: the Trainer's label lookup stays empty
    kind: str = "causal_lm"
    default_learning_rate: float = 5e-5  # training.learning_rate when the config leaves it unset

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def save(self, folder: Path) -> None:
        """A folder AutoModelForCausalLM and AutoTokenizer load as they are; written atomically."""
        with atomic_dir(folder) as tmp:
            self.module.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / "kdistill.json", {"kind": "causal_lm_generator", "max_length": self.max_length,
                                                      "name": self.name, "checksums": CHECKSUMS})
            write_checksums(tmp)


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
