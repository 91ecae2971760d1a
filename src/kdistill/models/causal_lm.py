"""Causal LM in label space: the logits of each label's verbalizer token after the prompt.

Works as a prompted teacher and as a student trained in label space (seed 000 trains LLaMA-8B this
way). Batches are left-padded with explicit position ids, so a padded example scores exactly as it
would alone, and only the last position's logits are computed (`logits_to_keep=1`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from kdistill.errors import KdistillError
from kdistill.models.base import LabelModel, pool_states

log = logging.getLogger(__name__)


def verbalizer_token_ids(tokenizer: Any, verbalizers: list[str], model_name: str, *,
                         setting: str = "task.verbalizers") -> list[int]:
    """First token of each verbalizer; they must exist and differ, or the answers can't be told apart.
    ``setting`` names, in the error, where the verbalizers come from."""
    ids = []
    for word in verbalizers:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise KdistillError(f"{setting}: {word!r} is empty for the tokenizer of {model_name}; use a real word.")
        if len(tokens) > 1:
            log.warning("verbalizer %r is %d tokens for %s; scoring its first token %r",
                        word, len(tokens), model_name, tokenizer.convert_ids_to_tokens(tokens[0]))
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        raise KdistillError(
            f"{setting} {list(verbalizers)} start with the same token for {model_name} ({pieces}), so the answers "
            "cannot be told apart; choose words whose first tokens differ (a leading space usually matters)."
        )
    return ids


class CausalLMLabelModel(LabelModel):
    kind = "causal_lm"

    def __init__(self, module: torch.nn.Module, tokenizer: Any, *, labels: list[str], verbalizers: list[str],
                 prompt_template: str, prefix: str = "", max_length: int = 512, name: str = "model") -> None:
        self.module, self.tokenizer, self.labels = module, tokenizer, labels
        self.verbalizers, self.prompt_template, self.prefix = verbalizers, prompt_template, prefix
        self.max_length = max_length
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.label_token_ids = verbalizer_token_ids(tokenizer, verbalizers, name)
        self._prefix_cache: tuple[torch.Tensor, Any] | None = None  # (prefix ids, KV cache), inference only

    def prompt(self, text: str) -> str:
        return self.prefix + self.prompt_template.replace("{text}", text)

    def _fit(self, text: str) -> str:
        """Shorten the example's text (never the instructions) until the prompt fits max_length."""
        overflow = len(self.tokenizer(self.prompt(text))["input_ids"]) - self.max_length
        if overflow <= 0:
            return text
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = max(len(text_ids) - overflow, 1)
        return self.tokenizer.decode(text_ids[:keep])

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        prompts = [self.prompt(self._fit(t)) for t in texts]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        mask = batch["attention_mask"]
        # left padding shifts the real tokens right; give them the positions they'd have alone
        batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return dict(batch)

    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.module(**batch, logits_to_keep=1, use_cache=False)
        last_bv = out.logits[:, -1, :]  # (B, V): the next-token scores after the prompt
        return last_bv[:, self.label_token_ids]  # (B, L)

    def label_logits_and_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        out = self.module(**batch, logits_to_keep=1, use_cache=False, output_hidden_states=True)
        return out.logits[:, -1, self.label_token_ids], out.hidden_states, batch["attention_mask"]

    @torch.no_grad()
    def predict_logits(self, texts: list[str]) -> torch.Tensor:
        """Like the base, but a shared few-shot prefix is run once and its KV cache reused."""
        if not self.prefix:
            return super().predict_logits(texts)
        out, _ = self._forward_after_prefix(texts, hidden=False)
        return out.logits[:, -1, self.label_token_ids].float().cpu()  # (B, L)

    @torch.no_grad()
    def predict_logits_and_hidden(self, texts: list[str], layers: list[int], pool: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states are pooled over the example's own tokens, never the shared few-shot prefix."""
        if not self.prefix:
            return super().predict_logits_and_hidden(texts, layers, pool)
        out, mask_bs = self._forward_after_prefix(texts, hidden=True)
        pooled_bnd = pool_states(out.hidden_states, mask_bs, layers, pool)
        return out.logits[:, -1, self.label_token_ids].float().cpu(), pooled_bnd.float().cpu()

    def _forward_after_prefix(self, texts: list[str], *, hidden: bool) -> tuple[Any, torch.Tensor]:
        self.module.eval()
        prefix_ids, prefix_cache = self._prefix_state()
        suffixes = [self.prompt_template.replace("{text}", self._fit(t)) for t in texts]
        batch = self.tokenizer(suffixes, return_tensors="pt", padding=True, add_special_tokens=False)
        mask_bs = batch["attention_mask"]  # (B, S), left-padded
        num_prefix = prefix_ids.shape[1]
        # pads sit between prefix and text; masking them and continuing positions after the prefix
        # makes each row score as its unpadded full prompt would
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(texts))
        full_mask = torch.cat([torch.ones(len(texts), num_prefix, dtype=mask_bs.dtype), mask_bs], dim=1)
        position_ids = num_prefix + (mask_bs.cumsum(-1) - 1).clamp(min=0)
        out = self.module(input_ids=batch["input_ids"].to(self.device), attention_mask=full_mask.to(self.device),
                          position_ids=position_ids.to(self.device), past_key_values=cache,
                          use_cache=True, logits_to_keep=1, output_hidden_states=hidden)
        return out, mask_bs

    def _prefix_state(self) -> tuple[torch.Tensor, Any]:
        if self._prefix_cache is None:
            ids = self.tokenizer(self.prefix, return_tensors="pt")["input_ids"]  # with BOS, as a full prompt has
            out = self.module(input_ids=ids.to(self.device), use_cache=True)
            self._prefix_cache = (ids, out.past_key_values)
        return self._prefix_cache

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "verbalizers": self.verbalizers,
                "prompt_template": self.prompt_template, "prefix": self.prefix, "max_length": self.max_length}
