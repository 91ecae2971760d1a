"""The model contract: every adapter turns texts into logits over the task's labels.

Teacher and student may be of different families and tokenizers: label space needs no shared
vocabulary. Token-level targets for generation (later) extend this contract, they don't replace it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from kdistill.io import atomic_dir


class LabelModel(ABC):
    """A model that scores the task's labels for a batch of texts."""

    kind: str
    labels: list[str]
    module: torch.nn.Module  # the trainable network
    tokenizer: Any

    @abstractmethod
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch (on CPU); the result goes to `label_logits` after `.to(device)`."""

    @abstractmethod
    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalized scores over the labels, (B, L), in the order of `labels`."""

    def metadata(self) -> dict[str, Any]:
        """What `kdistill predict` needs besides the transformers files."""
        return {"kind": self.kind, "labels": self.labels}

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @torch.no_grad()
    def predict_logits(self, texts: list[str]) -> torch.Tensor:
        """(B, L) float32 logits on CPU, in eval mode."""
        self.module.eval()
        batch = {k: v.to(self.device) for k, v in self.encode(texts).items()}
        return self.label_logits(batch).float().cpu()

    def save(self, path: str | Path) -> None:
        """save_pretrained + tokenizer + kdistill.json, atomically: loads with plain transformers."""
        with atomic_dir(path) as tmp:
            self.module.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "kdistill.json").write_text(json.dumps(self.metadata(), indent=2) + "\n", encoding="utf-8")
