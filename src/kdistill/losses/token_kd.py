"""Token-level distillation of a causal-LM student on the target tokens of prompt + target sequences.

A generation example is a prompt (a question, an article) and a target (an answer, a summary: from the
data, or written by the teacher). The student reads prompt + target, and only the positions whose next
token is a target token are trained: CE against that token and KD against the teacher's distribution
there. The prompt is context, never a target: the seeds' summarization code put its KL on the prompt
tokens, so its student learned to copy the source (DESIGN.md).

    encode_targets(tokenizer, prompts, targets)       -> TargetBatch (ids, attention, which positions train)
    target_token_terms(hidden_bth, lm_head_vh, batch, teacher, ...) -> {"ce", "kd": (B,) per-example terms}
    (weighed, and KD scaled by T^2, by the one `Objective`: `Objective.token_total`)

Each example's loss is the mean over its own target tokens, so a long target does not outweigh a short
one and the Trainer's per-example normalization (sum over the step / its example count) keeps
accumulation invariance. The teacher is `SparseTargets` rows for the batch's target tokens in order (from
the cache: top-k + tail, one row per target token) or a live teacher's dense (B, T, V) logits, of which
only the target positions are ever read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from kdistill.errors import KdistillError
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.divergences import SparseTargets, divergence
from kdistill.losses.terms import cross_entropy


@dataclass
class TargetBatch:
    """Prompt + target sequences, right-padded, and which positions are trained."""

    input_ids_bt: torch.Tensor
    attention_mask_bt: torch.Tensor
    loss_mask_bt: torch.Tensor  # True where the *next* token is a target token (the logits there predict it)
    next_ids_bt: torch.Tensor  # the token each position predicts (input_ids shifted left; 0 past the end)
    weight_bt: torch.Tensor | None = None  # each trained position's weight in its example's mean; None: all 1

    @property
    def num_target_tokens_b(self) -> torch.Tensor:
        return self.loss_mask_bt.sum(-1)

    def to(self, device: torch.device) -> "TargetBatch":
        return TargetBatch(*(t.to(device) for t in (self.input_ids_bt, self.attention_mask_bt,
                                                    self.loss_mask_bt, self.next_ids_bt)),
                           weight_bt=None if self.weight_bt is None else self.weight_bt.to(device))


def encode_targets(tokenizer, prompts: list[str], targets: list[str], *, max_length: int,
                   add_eos: bool = True, novel_weight: float = 1.0) -> TargetBatch:
    """Tokenize each prompt and target separately (so the boundary is exact), join them, and cut the
    prompt from the left when the pair is too long; the target is kept whole (or an error says so).
    The target is tokenized as the text that follows its prompt (`continuation`): "Summary:" + "Plans"
    trains " Plans", the token a model writes there, not the word-start-less "Plans".
    With ``novel_weight`` other than 1, a target token that does not continue a token bigram found in the
    prompt (a word the target writes rather than copies; the EOS excepted) gets that weight in its
    example's mean, the rest 1 (`novel_token_weights`)."""
    if len(prompts) != len(targets):
        raise KdistillError(f"encode_targets: {len(prompts)} prompts but {len(targets)} targets.")
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    # a tokenizer that starts every text with BOS (Llama, Gemma) gets it once, before the prompt
    bos_id = tokenizer.bos_token_id
    bos = [bos_id] if bos_id is not None and tokenizer("x")["input_ids"][:1] == [bos_id] else []
    space = "" if writes_its_own_space(tokenizer) else " "
    rows = []
    for prompt, target in zip(prompts, targets):
        prompt_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(continuation(prompt, target, space), add_special_tokens=False)["input_ids"] + eos
        if not target_ids:
            raise KdistillError(f"encode_targets: an empty target after the prompt {prompt[:60]!r}; every "
                                "generation example needs a target text.")
        room = max_length - len(target_ids)
        if room < 1:
            raise KdistillError(f"a target of {len(target_ids)} tokens does not fit in max_length {max_length} with "
                                "its prompt; raise the student's max_length or shorten the targets.")
        prompt_ids = prompt_ids[-room:]
        rows.append((prompt_ids, target_ids))
    width = max(len(p) + len(t) for p, t in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (prompt_ids, target_ids) in enumerate(rows):
        ids = prompt_ids + target_ids
        input_ids[b, :len(ids)] = torch.tensor(ids)
        attention[b, :len(ids)] = 1
        # position t predicts token t + 1: the last prompt position predicts the first target token
        loss_mask[b, len(prompt_ids) - 1:len(ids) - 1] = True
    next_ids = torch.zeros_like(input_ids)
    next_ids[:, :-1] = input_ids[:, 1:]
    weight = None
    if novel_weight != 1.0:
        weight = torch.zeros((len(rows), width))
        for b, (prompt_ids, target_ids) in enumerate(rows):
            start = len(prompt_ids) - 1
            weight[b, start:start + len(target_ids)] = novel_token_weights(prompt_ids, target_ids, novel_weight,
                                                                           ends_with_eos=bool(eos))
    return TargetBatch(input_ids, attention, loss_mask, next_ids, weight)


def continuation(prompt: str, target: str, space: str = " ") -> str:
    """``target`` as the text after ``prompt``: with ``space`` before it when the prompt ends in a word or a
    mark and the target starts with one, as multiple-choice scoring joins an option and as a model writes
    after "Answer:". Stored targets are stripped (the teacher's " Plans to …" is kept as "Plans to …"), and
    a byte-level BPE tokenizer (Qwen, GPT-2, Llama 3) has a different token for a word with no space
    before it. Trained on those, the bbc-summary students wrote sentences and words run together
    ("…in Parliament.Labour MPs…", "AUS TV network"), the likely effect of learning space-less tokens."""
    if prompt and target and not prompt[-1].isspace() and not target[0].isspace():
        return space + target
    return target


def writes_its_own_space(tokenizer) -> bool:
    """True when the tokenizer starts every text it is given as a new word (SentencePiece's dummy prefix:
    Llama 2, Mistral v1, T5; a word-level tokenizer): "a" alone begins as " a" after a word does, with the
    word-start mark ("▁a"), and one more space would be a token of its own. False for byte-level BPE
    (Qwen, GPT-2, Llama 3), where "a" alone is "a" and " a" is "Ġa"."""
    def pieces(text: str) -> list[str]:
        return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])

    alone, word = pieces("a"), pieces("b")
    after_a_word = pieces("b a")[len(word):]
    return bool(alone and after_a_word) and alone[0][:1] == after_a_word[0][:1]


def novel_token_weights(prompt_ids: list[int], target_ids: list[int], novel_weight: float, *,
                        ends_with_eos: bool) -> torch.Tensor:
    """(len(target_ids),) the weight of each target token: 1 where the token and the one before it (the
    prompt's last token, for the first) are a bigram of the prompt, i.e. copied; ``novel_weight`` elsewhere.
    A final EOS keeps weight 1: when to stop is not a question of copying."""
    bigrams = set(zip(prompt_ids, prompt_ids[1:]))
    before = prompt_ids[-1:] + target_ids[:-1]
    weights = torch.tensor([1.0 if pair in bigrams else novel_weight for pair in zip(before, target_ids)])
    if ends_with_eos:
        weights[-1] = 1.0
    return weights


def target_token_terms(hidden_bth: torch.Tensor, lm_head_vh: torch.Tensor, batch: TargetBatch, teacher=None, *,
                       ce: bool = True, kd: bool = True, divergence_kind: str = "forward_kl",
                       temperature: float = 1.0, beta: float = 0.5, skew: float = 0.1,
                       chunk_tokens: int = 64) -> dict[str, torch.Tensor]:
    """The ``ce`` and ``kd`` terms asked for, each (B,): per example, the mean over its target tokens (weighted by
    ``batch.weight_bt`` when it has one) of CE and of the divergence D(teacher_T, student_T), unweighted and
    without T^2 (both are the Objective's). Logits exist only for target positions, one chunk at a time (the
    student's hidden states go through ``lm_head_vh`` inside `chunked_token_loss`).

    ``teacher``: `SparseTargets` with one row per target token, in (example, position) order; or dense
    (B, T, V) teacher logits (only target positions are read); None without ``kd``.
    """
    mask_bt = batch.loss_mask_bt
    index_n = mask_bt.reshape(-1).nonzero().squeeze(-1)  # (N,) target positions, flattened
    hidden_nh = hidden_bth.reshape(-1, hidden_bth.shape[-1])[index_n]
    example_n = index_n // mask_bt.shape[1]  # which example each target token belongs to
    if batch.weight_bt is None:
        weight_n = torch.ones(len(index_n), dtype=hidden_nh.dtype, device=hidden_nh.device)
    else:
        weight_n = batch.weight_bt.reshape(-1)[index_n].to(hidden_nh.dtype)
    count_b = torch.zeros(mask_bt.shape[0], dtype=hidden_nh.dtype, device=hidden_nh.device)
    count_b = count_b.index_add(0, example_n, weight_n).clamp(min=1e-8)
    per_example = lambda values_n: torch.zeros_like(count_b).index_add(0, example_n, weight_n * values_n) / count_b
    # how per_example weighs each token: told to the chunked loss, whose backward is then a rescaling
    # (with every example weighted alike in the step's total, as the training loop sums them)
    grad_weight_n = (weight_n / count_b[example_n]).detach()
    chunked = functools.partial(chunked_token_loss, chunk_tokens=chunk_tokens, grad_weight_n=grad_weight_n)
    terms = {}
    if ce:
        labels_n = batch.next_ids_bt.reshape(-1)[index_n]
        terms["ce"] = per_example(chunked(hidden_nh, lm_head_vh, labels_n, cross_entropy))
    if kd:
        teacher_n = _teacher_rows(teacher, index_n, len(index_n))
        loss_fn = functools.partial(divergence, kind=divergence_kind, temperature=temperature, beta=beta, skew=skew)
        terms["kd"] = per_example(chunked(hidden_nh, lm_head_vh, teacher_n, loss_fn))
    if not terms:  # neither term on (a CE weight of 0 and no teacher): a zero loss of the batch's size
        terms["ce"] = torch.zeros_like(count_b)
    return terms


def _teacher_rows(teacher, index_n: torch.Tensor, num_tokens: int):
    """The teacher's rows for the target tokens: sparse rows as given, or dense logits at those positions."""
    if teacher is None:
        raise KdistillError("the kd term needs teacher targets for the target tokens.")
    if isinstance(teacher, SparseTargets):
        if teacher.token_ids.shape[0] != num_tokens:
            raise KdistillError(f"the teacher has {teacher.token_ids.shape[0]} token rows for {num_tokens} target "
                                "tokens; teacher and student must tokenize the target the same way (same "
                                "tokenizer), else use sequence-level KD.")
        return teacher
    if teacher.dim() != 3:
        raise KdistillError(f"dense teacher logits must be (B, T, V); found {tuple(teacher.shape)}.")
    return teacher.reshape(-1, teacher.shape[-1])[index_n]  # (N, V): prompt positions are never read


def stopping_as_eos(rows: SparseTargets, eos_id: int, stop_ids: set[int], *, floor: float = -30.0) -> SparseTargets:
    """The teacher's rows with the last one (the target's EOS) as the teacher's own chance of ending there.

    Decoding ends at EOS or at a stop string, so in the last row the top-k mass of EOS and of ``stop_ids``
    (tokens that hold a stop string) is EOS's; the stop tokens' slots keep ``floor`` under unused ids.
    For text the teacher did not write (a student's sample): forcing all the mass onto EOS there, as
    `ends_with_eos` does for the teacher's text, would tell the student that stopping is right wherever
    it stopped, an empty output included. A last row with neither EOS nor a stop token is left as it is.
    """
    ids, logprobs = rows.token_ids[-1], rows.logprobs[-1]
    ending = [j for j, i in enumerate(ids.tolist()) if i == eos_id or i in stop_ids]
    if not ending:
        return rows
    present = set(ids.tolist())
    unused = (i for i in range(len(ids) + len(ending) + 1) if i != eos_id and i not in present)
    token_ids, new_logprobs = rows.token_ids.clone(), rows.logprobs.clone()
    token_ids[-1, ending[0]], new_logprobs[-1, ending[0]] = eos_id, torch.logsumexp(logprobs[ending], 0)
    for j in ending[1:]:
        token_ids[-1, j], new_logprobs[-1, j] = next(unused), floor
    return SparseTargets(token_ids, new_logprobs, rows.tail_logmass, stored_temperature=rows.stored_temperature)


def ends_with_eos(rows: SparseTargets, eos_id: int, *, floor: float = -30.0) -> SparseTargets:
    """The teacher's rows with the last one (the target's EOS) as the teacher's decoding policy has it.

    A written target ends where the teacher's decoding stopped it: at EOS, at a stop string or at the
    length cap, so that policy puts all its mass on EOS there. The cached distribution at that position
    is the raw model's, which may want to go on (a raw-prompted instruct model continues with a made-up
    next turn), and KD towards it would teach the student not to stop. Applied on read; the cache keeps
    the raw rows. ``floor``: the log-prob of every other bucket (e^-30: nothing, without -inf's nans).
    """
    k = rows.token_ids.shape[1]
    others = [i for i in range(k + 1) if i != eos_id][:k - 1]
    token_ids, logprobs, tail = rows.token_ids.clone(), rows.logprobs.clone(), rows.tail_logmass.clone()
    token_ids[-1] = torch.tensor([eos_id, *others], dtype=token_ids.dtype)
    logprobs[-1] = floor
    logprobs[-1, 0] = 0.0
    tail[-1] = floor
    return SparseTargets(token_ids, logprobs, tail, stored_temperature=rows.stored_temperature)
