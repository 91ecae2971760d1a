"""Multiple choice scored by likelihood: a causal LM's score for option i is the mean log-probability of
the option's tokens after the question's prompt (as lm-evaluation-harness scores multiple choice), instead
of the next-token logit of the option's number.

The example's text is the rendered question (`kdistill.data.choice.render_choice`: the question, then one
"i. option" line per option), so the label space, the teacher cache and every student stay those of the
number-verbalizer route; only how a causal LM scores the options differs. Length-normalized (mean, not
sum), so a long option is not penalized for its length.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from kdistill.errors import KdistillError
from kdistill.models.causal_lm import CausalLMLabelModel

_OPTION_LINE = re.compile(r"^(\d+)\. (.*)$")


def split_choice(text: str, num_options: int) -> tuple[str, list[str]]:
    """(question, options) of a rendered multiple-choice text: its last ``num_options`` lines are "i. option"."""
    lines = text.split("\n")
    matches = [_OPTION_LINE.match(line) for line in lines[-num_options:]]
    if len(lines) <= num_options or not all(m and int(m.group(1)) == i for i, m in enumerate(matches, 1)):
        raise KdistillError(f"a multiple-choice text must end with {num_options} lines '1. …' to '{num_options}. …' "
                            f"(as render_choice writes them); found {text[-120:]!r}.")
    return "\n".join(lines[:-num_options]), [m.group(2) for m in matches]


class ChoiceLikelihoodModel(CausalLMLabelModel):
    """Label logits (B, N) = each option's mean token log-probability after the question's prompt."""

    def __init__(self, module: torch.nn.Module, tokenizer: Any, *, labels: list[str], prompt_template: str,
                 prefix: str = "", max_length: int = 512, name: str = "model") -> None:
        self.module, self.tokenizer, self.labels = module, tokenizer, labels
        self.verbalizers, self.prompt_template, self.prefix = [], prompt_template, prefix
        self.max_length, self.name = max_length, name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._prefix_cache = None

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """One right-padded row per (example, option): prompt + " option"; `option_mask` marks the positions
        whose next token is an option token."""
        rows = []
        for text in texts:
            question, options = split_choice(text, len(self.labels))
            prompt_ids = self.tokenizer(self.prompt(question))["input_ids"]
            for option in options:
                option_ids = self.tokenizer(" " + option, add_special_tokens=False)["input_ids"] or [
                    self.tokenizer.unk_token_id or 0]
                rows.append((prompt_ids[-max(self.max_length - len(option_ids), 1):], option_ids))
        width = max(len(p) + len(o) for p, o in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        option_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (prompt_ids, option_ids) in enumerate(rows):
            ids[r, :len(prompt_ids) + len(option_ids)] = torch.tensor(prompt_ids + option_ids)
            mask[r, :len(prompt_ids) + len(option_ids)] = 1
            option_mask[r, len(prompt_ids) - 1:len(prompt_ids) + len(option_ids) - 1] = True
        return {"input_ids": ids, "attention_mask": mask, "option_mask": option_mask}

    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids_rt, mask_rt, option_rt = batch["input_ids"], batch["attention_mask"], batch["option_mask"]
        logprobs_rtv = self.module(input_ids=ids_rt, attention_mask=mask_rt, use_cache=False).logits.float().log_softmax(-1)
        next_rt = torch.cat([ids_rt[:, 1:], torch.zeros_like(ids_rt[:, :1])], dim=1)  # the token each position predicts
        token_rt = logprobs_rtv.gather(-1, next_rt.unsqueeze(-1)).squeeze(-1) * option_rt
        mean_r = token_rt.sum(-1) / option_rt.sum(-1).clamp(min=1)
        return mean_r.view(-1, len(self.labels))  # (B, N)

    def label_logits_and_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        raise KdistillError("hidden-state alignment is not available with task.choice_scoring: likelihood (each "
                            "option is its own sequence); use choice_scoring: number, or objective.hidden.weight: 0.")

    @torch.no_grad()
    def predict_logits(self, texts: list[str]) -> torch.Tensor:
        self.module.eval()
        batch = {k: v.to(self.device) for k, v in self.encode(texts).items()}
        return self.label_logits(batch).float().cpu()

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "choice_scoring": "likelihood"}
