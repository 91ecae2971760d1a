"""Token-level distillation needs teacher and student logits over the same token ids; check that they are.

    alignment = align_vocab(teacher_tok, student_tok, teacher_cfg.vocab_size, student_cfg.vocab_size,
                            teacher_name=..., student_name=...)
    divergence(alignment.slice_student(student_logits_nv), alignment.slice_teacher(teacher_logits_nv), ...)

A model's logits are often wider than its tokenizer: the embedding is padded to a round size (Qwen2.5-7B
has 152,064 logits, Qwen2.5-0.5B 151,936, both for a 151,665-token tokenizer). Ids past the tokenizer are
never produced by tokenization and never trained, so the two models can be compared on the ids below the
narrower width, provided the tokenizers give those ids the same tokens. Anything else is a real
difference of vocabulary (the seeds' code shared a tokenizer by luck of the family), and token-level
distillation cannot bridge it; label-space or sequence-level distillation can.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kdistill.errors import KdistillError

log = logging.getLogger(__name__)

NUM_SHOWN = 5  # differing ids quoted in an error
CROSS_TOKENIZER_ROUTES = (
    "Distillation across tokenizers works in label space (task.kind: classification, the default; the "
    "teacher's answer is a distribution over the task's labels, not over tokens) or at the sequence level "
    "(train the student on the teacher's generated text)."
)


@dataclass(frozen=True)
class VocabAlignment:
    """Teacher and student agree on token ids ``0 .. shared_size - 1``, which covers every real token."""

    teacher_name: str
    student_name: str
    teacher_vocab_size: int  # width of the teacher's logits
    student_vocab_size: int  # width of the student's logits
    shared_size: int  # min of the two widths
    num_tokens: int  # real tokens (known to the tokenizers and inside the logits), all below shared_size

    def slice(self, logits_xv: torch.Tensor) -> torch.Tensor:
        """Either model's logits (..., V) cut to the shared ids (..., shared_size); a view, no copy."""
        width = logits_xv.shape[-1]
        if width not in (self.teacher_vocab_size, self.student_vocab_size):
            raise KdistillError(
                f"logits of width {width} are neither the teacher's ({self.teacher_name}: {self.teacher_vocab_size}) "
                f"nor the student's ({self.student_name}: {self.student_vocab_size}); pass full-vocabulary logits.")
        return logits_xv[..., : self.shared_size]

    def slice_teacher(self, teacher_logits_xv: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (..., teacher_vocab_size) cut to the shared ids."""
        return self._slice_exact(teacher_logits_xv, self.teacher_vocab_size, f"teacher {self.teacher_name}")

    def slice_student(self, student_logits_xv: torch.Tensor) -> torch.Tensor:
        """The student's logits (..., student_vocab_size) cut to the shared ids."""
        return self._slice_exact(student_logits_xv, self.student_vocab_size, f"student {self.student_name}")

    def _slice_exact(self, logits_xv: torch.Tensor, width: int, who: str) -> torch.Tensor:
        if logits_xv.shape[-1] != width:
            raise KdistillError(f"the {who} has {width} logits per token (config.vocab_size), but these logits "
                                f"have {logits_xv.shape[-1]}; pass that model's full-vocabulary logits.")
        return logits_xv[..., : self.shared_size]


def align_vocab(teacher_tokenizer: Any, student_tokenizer: Any, teacher_vocab_size: int, student_vocab_size: int,
                *, teacher_name: str, student_name: str) -> VocabAlignment:
    """Check that the two models' logits mean the same tokens, and return how to compare them.

    ``*_vocab_size`` is the width of the model's logits (config.vocab_size), which may exceed
    len(tokenizer). Raises KdistillError if the tokenizers give any id different tokens (or a token on one
    side only), or if they agree but the teacher has real tokens beyond the student's width.
    """
    teacher_tokens = _real_tokens(teacher_tokenizer, teacher_vocab_size)
    student_tokens = _real_tokens(student_tokenizer, student_vocab_size)
    shared_size = min(teacher_vocab_size, student_vocab_size)
    names = f"teacher {teacher_name!r} and student {student_name!r}"
    differing = _differing_ids(teacher_tokens, student_tokens)
    if any(i < shared_size for i in differing):  # different vocabularies: the most telling message
        raise KdistillError(_differ_message(differing, teacher_tokens, student_tokens, names))
    if len(teacher_tokens) > student_vocab_size:  # same ids, but the teacher has more of them
        raise KdistillError(_cut_off_message(teacher_tokens, student_vocab_size, teacher_name, student_name))
    if differing:  # the student has tokens the teacher can neither read nor score
        raise KdistillError(_differ_message(differing, teacher_tokens, student_tokens, names))
    if len(teacher_tokens) != len(teacher_tokenizer) or len(student_tokens) != len(student_tokenizer):
        log.warning("%s: some tokenizer ids lie beyond the model's logits (teacher %d tokens / %d logits, student "
                    "%d / %d); those tokens can never be predicted and are left out", names,
                    len(teacher_tokenizer), teacher_vocab_size, len(student_tokenizer), student_vocab_size)
    return VocabAlignment(teacher_name, student_name, teacher_vocab_size, student_vocab_size, shared_size,
                          len(teacher_tokens))


def _real_tokens(tokenizer: Any, vocab_size: int) -> list[str | None]:
    """The token of each id the model can predict: below both len(tokenizer) and the logits' width.
    None marks a hole (an id the tokenizer skips)."""
    num_ids = min(len(tokenizer), vocab_size)
    tokens: list[str | None] = [None] * num_ids
    for token, token_id in tokenizer.get_vocab().items():  # includes added (special) tokens
        if token_id < num_ids:
            tokens[token_id] = token
    return tokens


def _differing_ids(teacher_tokens: list[str | None], student_tokens: list[str | None]) -> list[int]:
    """Ids whose tokens differ, counting a token that exists on one side only."""
    if teacher_tokens == student_tokens:  # the common case, at C speed
        return []
    num_ids = max(len(teacher_tokens), len(student_tokens))
    padded_t = teacher_tokens + [None] * (num_ids - len(teacher_tokens))
    padded_s = student_tokens + [None] * (num_ids - len(student_tokens))
    return [i for i in range(num_ids) if padded_t[i] != padded_s[i]]


def _token_at(tokens: list[str | None], token_id: int) -> str:
    return repr(tokens[token_id]) if token_id < len(tokens) and tokens[token_id] is not None else "(none)"


def _differ_message(differing: list[int], teacher_tokens, student_tokens, names: str) -> str:
    examples = ", ".join(f"id {i}: {_token_at(teacher_tokens, i)} vs {_token_at(student_tokens, i)}"
                         for i in differing[:NUM_SHOWN])
    return (f"{names} have different tokenizers, so their token-level logits cannot be compared: "
            f"{len(differing):,} token ids differ ({examples}{', ...' if len(differing) > NUM_SHOWN else ''}); "
            f"the teacher has {len(teacher_tokens):,} tokens and the student {len(student_tokens):,}. "
            f"{CROSS_TOKENIZER_ROUTES}")


def _cut_off_message(teacher_tokens, student_vocab_size: int, teacher_name: str, student_name: str) -> str:
    beyond = range(student_vocab_size, len(teacher_tokens))
    examples = ", ".join(f"id {i}: {_token_at(teacher_tokens, i)}" for i in list(beyond)[:NUM_SHOWN])
    return (f"teacher {teacher_name!r} has {len(beyond):,} real tokens at ids beyond the {student_vocab_size:,} "
            f"logits of student {student_name!r} ({examples}{', ...' if len(beyond) > NUM_SHOWN else ''}); slicing to "
            f"the shared ids would cut off tokens the teacher can predict. {CROSS_TOKENIZER_ROUTES}")
