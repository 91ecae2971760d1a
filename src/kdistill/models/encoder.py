"""Encoder classifier (BERT / RoBERTa / DistilBERT / MiniLM) with a sequence-classification head."""

from __future__ import annotations

from typing import Any

import torch

from kdistill.models.base import LabelModel


class EncoderLabelModel(LabelModel):
    kind = "encoder"

    def __init__(self, module: torch.nn.Module, tokenizer: Any, *, labels: list[str],
                 input_template: str = "{text}", max_length: int = 256) -> None:
        self.module, self.tokenizer, self.labels = module, tokenizer, labels
        self.input_template, self.max_length = input_template, max_length

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        inputs = [self.input_template.replace("{text}", t) for t in texts]
        batch = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return dict(batch)

    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(**batch).logits  # (B, L)

    def label_logits_and_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        out = self.module(**batch, output_hidden_states=True)
        return out.logits, out.hidden_states, batch["attention_mask"]

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "input_template": self.input_template, "max_length": self.max_length}
