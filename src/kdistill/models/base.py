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

from kdistill.checksums import CHECKSUMS, write_checksums
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

    def label_logits_and_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        """(B, L) label logits, every layer's hidden states ((B, S, D) each, 0 = embeddings) and the
        (B, S) attention mask that says which positions are real tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not expose hidden states")

    @property
    def num_layers(self) -> int:
        return int(self.module.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.module.config.hidden_size)

    @property
    def default_learning_rate(self) -> float:
        """training.learning_rate when the config leaves it unset: a new head on a small encoder needs a higher rate
        than a pretrained causal LM tolerates (benchmarks/results/collapse.md)."""
        return 2e-4 if self.kind == "encoder" else 5e-5

    @property
    def default_pool(self) -> str:
        """How one vector stands for a sequence: the last token for a causal LM, the mean for an encoder."""
        return "last" if self.kind == "causal_lm" else "mean"

    @torch.no_grad()
    def predict_logits_and_hidden(self, texts: list[str], layers: list[int], pool: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) float32 logits and (B, n, D) pooled float32 hidden states of ``layers``, on CPU."""
        self.module.eval()
        batch = {k: v.to(self.device) for k, v in self.encode(texts).items()}
        logits_bl, states, mask_bs = self.label_logits_and_hidden(batch)
        return logits_bl.float().cpu(), pool_states(states, mask_bs, layers, pool).float().cpu()

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
            self._save_tokenizer(tmp)
            meta = {**self.metadata(), "checksums": CHECKSUMS}  # a folder that names them must have them
            (tmp / "kdistill.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            write_checksums(tmp)


    def _save_tokenizer(self, folder: Path) -> None:
        """The tokenizer, with the model's input limit as its own: `tokenizer(text, truncation=True)` and
        `pipeline(..., truncation=True)` then cut a text where training and `kdistill predict` cut it, not at the
        pretrained model's limit (512 for MiniLM, where a student trained on 96 tokens would see more)."""
        limit = getattr(self, "max_length", None)
        pretrained_limit = self.tokenizer.model_max_length
        try:
            if limit:
                self.tokenizer.model_max_length = limit
            self.tokenizer.save_pretrained(folder)
        finally:
            self.tokenizer.model_max_length = pretrained_limit


def pool_states(hidden_states: tuple, mask_bs: torch.Tensor, layers: list[int], how: str) -> torch.Tensor:
    """One vector per sequence for each of ``layers``: (B, n, D).

    mean: over real tokens; last: the last real token (right or left padding alike); cls: the first.
    """
    picked_bnsd = torch.stack([hidden_states[i] for i in layers], dim=1)  # (B, n, S, D)
    mask_bs = mask_bs.to(picked_bnsd.device)
    if how == "mean":
        weights_bs = mask_bs.to(picked_bnsd.dtype)
        summed_bnd = (picked_bnsd * weights_bs[:, None, :, None]).sum(2)
        return summed_bnd / weights_bs.sum(-1).clamp(min=1)[:, None, None]
    num_positions = mask_bs.shape[1]
    if how == "last":
        index_b = num_positions - 1 - mask_bs.flip(-1).int().argmax(-1)
    elif how == "cls":
        index_b = mask_bs.int().argmax(-1)
    else:
        raise ValueError(f"unknown pooling {how!r}")
    index = index_b[:, None, None, None].expand(-1, picked_bnsd.shape[1], 1, picked_bnsd.shape[-1])
    return picked_bnsd.gather(2, index).squeeze(2)
