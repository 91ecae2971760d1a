"""A faithfulness judge: a prompted causal LM asked whether an article supports a summary.

    judge = FaithfulnessJudge(model, tokenizer, name="qwen2.5-1.5b-instruct")
    judge.scores(articles, summaries) -> [P(supported)]   one float in [0, 1] per pair
    judge.describe()                  -> dict             what results.json records about the judge

The score is the judge's next-token probability of " Yes" against " No" after a fixed question,
renormalized over those two tokens. It is an LLM's opinion, not an NLI model's entailment
probability: no NLI model is reachable offline here, and the report says which judge it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from kdistill.errors import KdistillError
from kdistill.models.causal_lm import verbalizer_token_ids

log = logging.getLogger(__name__)

JUDGE_PROMPT = ("Article: {source}\n\nSummary: {summary}\n\n"
                "Is every claim in the summary supported by the article? Answer Yes or No.")
ANSWER_CUE = "\nAnswer:"  # plain prompts only; in a chat the assistant's turn is the cue
PLAIN_VERBALIZERS = (" Yes", " No")  # after "Answer:" the word comes with its space
CHAT_VERBALIZERS = ("Yes", "No")  # the assistant's turn starts with the bare word
JUDGE_NOTE = "an LLM judge, not an NLI model: no NLI model is reachable offline"


class FaithfulnessJudge:
    """P(the article supports the summary) from a causal LM the caller has loaded.

    ``model`` is any transformers ``AutoModelForCausalLM`` (put in eval mode here) and ``tokenizer``
    its tokenizer, which is not modified. With ``use_chat_template`` the question is sent as a user
    message through the tokenizer's chat template and the answer is the assistant's first token
    (verbalizers ``Yes`` / ``No``); otherwise the prompt ends in ``Answer:`` and the verbalizers are
    `` Yes`` / `` No``. ``verbalizers`` overrides either pair as (supported, not supported).

    Each source is cut from the RIGHT to its first ``max_source_tokens`` tokens (the article's lead
    is kept, its end is dropped), so a claim supported only late in a long article can be judged
    unsupported; summaries are never cut.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str, max_source_tokens: int = 768,
                 batch_size: int = 4, use_chat_template: bool = False,
                 verbalizers: tuple[str, str] | None = None) -> None:
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise KdistillError(f"use_chat_template is set, but the tokenizer of {name} has no chat template; "
                                "unset it to use the plain prompt.")
        if max_source_tokens < 1 or batch_size < 1:
            raise KdistillError(f"max_source_tokens and batch_size must be at least 1; found {max_source_tokens} "
                                f"and {batch_size}.")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_source_tokens, self.batch_size = max_source_tokens, batch_size
        self.use_chat_template = use_chat_template
        self.verbalizers = verbalizers or (CHAT_VERBALIZERS if use_chat_template else PLAIN_VERBALIZERS)
        self.yes_no_ids = verbalizer_token_ids(tokenizer, list(self.verbalizers), name,
                                               setting="the judge's verbalizers")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise KdistillError(f"the tokenizer of {name} has neither a pad nor an EOS token to pad batches with.")

    def truncate_source(self, source: str) -> str:
        """The source cut to its first ``max_source_tokens`` tokens (unchanged when it fits)."""
        ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        return source if len(ids) <= self.max_source_tokens else self.tokenizer.decode(ids[:self.max_source_tokens])

    def prompt_ids(self, source: str, summary: str) -> list[int]:
        """The token ids of the whole question for one pair, the next token being the answer."""
        question = JUDGE_PROMPT.format(source=self.truncate_source(source), summary=summary)
        if not self.use_chat_template:
            return self.tokenizer(question + ANSWER_CUE)["input_ids"]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has its own BOS

    @torch.no_grad()
    def scores(self, sources: Sequence[str], summaries: Sequence[str]) -> list[float]:
        """P(supported) for each (source, summary) pair, in input order: the softmax over the judge's
        next-token logits of the two verbalizers' first tokens, taking the first."""
        if len(sources) != len(summaries):
            raise KdistillError(f"the judge needs one summary per source; got {len(sources)} sources and "
                                f"{len(summaries)} summaries.")
        prompts = [self.prompt_ids(source, summary) for source, summary in zip(sources, summaries)]
        out: list[float] = []
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="judging faithfulness", unit="batch",
                          leave=False):
            out += self._batch_scores(prompts[start:start + self.batch_size])
        return out

    def _batch_scores(self, prompts: list[list[int]]) -> list[float]:
        device = next(self.model.parameters()).device
        length = max(map(len, prompts))
        # left padding keeps every prompt's last token at the end, where the one kept logit is
        input_ids_bt = torch.tensor([[self.pad_id] * (length - len(p)) + p for p in prompts])  # (B, T)
        mask_bt = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])  # (B, T)
        position_ids_bt = (mask_bt.cumsum(-1) - 1).clamp(min=0)  # the positions each prompt has alone
        out = self.model(input_ids=input_ids_bt.to(device), attention_mask=mask_bt.to(device),
                         position_ids=position_ids_bt.to(device), logits_to_keep=1, use_cache=False)
        yes_no_b2 = out.logits[:, -1, self.yes_no_ids].float()  # (B, 2)
        return yes_no_b2.softmax(-1)[:, 0].cpu().tolist()

    def describe(self) -> dict[str, Any]:
        """What a report needs to say which judge scored faithfulness, and how."""
        return {"model": self.name, "prompt": JUDGE_PROMPT + ("" if self.use_chat_template else ANSWER_CUE),
                "chat_template": self.use_chat_template, "verbalizers": list(self.verbalizers),
                "max_source_tokens": self.max_source_tokens, "score": "P(first verbalizer) renormalized over the two",
                "note": JUDGE_NOTE}
