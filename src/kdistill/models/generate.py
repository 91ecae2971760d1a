"""Text generation for teachers and students, and the one harness that times it for both.

    generate(model, tokenizer, prompts, ...)        -> [Generation]   texts, in input order
    generation_cost(model, tokenizer, prompts, ...) -> dict           seconds per output p50 / p95, tokens/s
    paired_fixed_length_cost(model, tokenizer, reference, prompts, ...) -> dict
                                                                      per prompt, timed beside a reference: speed-ups

A teacher's generations become sequence-level KD targets; a sampled one is reproducible only with its
seed, so `generate` takes one and every batch is seeded from it and the batch's first index (the same
prompts in the same order give the same texts, whatever ran before). Greedy decoding ignores the seed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kdistill.errors import KdistillError


@dataclass(frozen=True)
class Generation:
    text: str
    """The generated continuation, special tokens removed, prompt excluded."""
    num_tokens: int
    """Tokens generated (up to and including EOS, if it came)."""


def end_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a model's text: the tokenizer's EOS and pad token and the model's generation config's
    EOS ids. A chat model may end a turn with either of two: a Qwen2.5 instruct model converted from GGUF knows
    only <|im_end|> as EOS, and trained students also write <|endoftext|> (its pad token), after which
    generation went on past the summary with text a reader never sees the boundary of."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id,
           *(configured if isinstance(configured, (list, tuple)) else [configured])}
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 4,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             max_prompt_tokens: int | None = None, stop: tuple[str, ...] | list[str] = (),
             min_new_tokens: int = 0, desc: str | None = None) -> list[Generation]:
    """Continuations of ``prompts`` (left-padded batches, length-sorted; returned in input order). A
    continuation ends at an end token (`end_token_ids`) or at the first of the ``stop`` strings, which is cut
    off with what follows; ``min_new_tokens`` holds the end tokens back until that many tokens are out
    (fixed-length timing). ``desc``: a progress bar that moves every batch, saying this."""
    if max_new_tokens < 1:
        raise KdistillError(f"max_new_tokens must be >= 1; found {max_new_tokens}.")
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Generation | None] = [None] * len(prompts)
    ends = end_token_ids(model, tokenizer)
    # a long prompt loses its beginning, as in training (`token_kd.encode_targets`): the instruction at its end stays
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens)
            if do_sample:
                torch.manual_seed(seed * 1_000_003 + idx[0])
            new_bt = model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=max_new_tokens,
                                    min_new_tokens=min_new_tokens or None,
                                    do_sample=do_sample, temperature=temperature if do_sample else None,
                                    top_p=top_p if do_sample else None, top_k=None,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, eos_token_id=ends,
                                    stopping_criteria=_stop_criteria(tokenizer, stop, enc["input_ids"].shape[1])
                                    )[:, enc["input_ids"].shape[1]:]
            for row, i in zip(new_bt.cpu(), idx):
                out[i] = Generation(cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop),
                                    _num_generated(row, ends))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return out


def greedy_texts(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_length: int, batch_size: int,
                 stop: tuple[str, ...] | list[str] = (), desc: str | None = None) -> list[str]:
    """The greedy outputs that evaluation scores (and `select_by: rouge_l` validation too), stripped: each
    prompt keeps its last ``max_length - max_new_tokens`` tokens, so prompt and output fit ``max_length``."""
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           max_prompt_tokens=max_length - max_new_tokens, stop=stop, desc=desc)
    return [g.text.strip() for g in generations]


def _stop_criteria(tokenizer, stop, prompt_width: int):
    """Ends each row once its continuation holds a stop string (decoded text: works for any tokenizer)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids_bt: torch.Tensor, scores, **kwargs) -> torch.Tensor:
            texts = tokenizer.batch_decode(input_ids_bt[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids_bt.device)

    return StoppingCriteriaList([StopOnStrings()] if stop else [])


def cut_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """``text`` up to the first occurrence of any of the ``stop`` strings."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[:min(ends)] if ends else text


def _num_generated(row: torch.Tensor, ends: list[int]) -> int:
    """Tokens up to and including the first end token (the rest is padding after the sequence ended)."""
    end = torch.isin(row, torch.tensor(ends, dtype=row.dtype)).nonzero()
    return int(end[0, 0]) + 1 if len(end) else len(row)


def _timed(model, tokenizer, prompt: str, *, max_new_tokens: int, max_prompt_tokens: int | None,
           stop: tuple[str, ...] | list[str], fixed_length: bool) -> tuple[float, int]:
    """Seconds and tokens of one greedy output, end to end from text (CUDA synchronized before the clock stops)."""
    sync = torch.cuda.synchronize if next(model.parameters()).device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    (generation,) = generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, batch_size=1,
                             max_prompt_tokens=max_prompt_tokens, stop=stop,
                             min_new_tokens=max_new_tokens if fixed_length else 0)
    sync()
    return time.perf_counter() - start, generation.num_tokens


def generation_cost(model, tokenizer, prompts: list[str], *, max_new_tokens: int, warmup: int = 1,
                    max_prompt_tokens: int | None = None, stop: tuple[str, ...] | list[str] = (),
                    fixed_length: bool = False, desc: str | None = None) -> dict:
    """Greedy generation one prompt at a time, end to end from text: seconds per output (p50, p95) and
    generated tokens per second over all of them. Every model is timed by this same function. ``desc``: a
    progress bar saying this, moved between timed calls."""
    settings = dict(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, stop=stop,
                    fixed_length=fixed_length)
    for prompt in prompts[:warmup]:
        _timed(model, tokenizer, prompt, **settings)
    seconds, tokens = [], 0
    for prompt in tqdm(prompts, desc=desc, unit="output", disable=desc is None, leave=False):
        took, num_tokens = _timed(model, tokenizer, prompt, **settings)
        seconds.append(took)
        tokens += num_tokens
    ordered = sorted(seconds)
    return {"outputs": len(seconds), "seconds_p50": statistics.median(seconds),
            "seconds_p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "tokens_per_s": tokens / sum(seconds), "generated_tokens": tokens,
            "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads()}


def paired_fixed_length_cost(model, tokenizer, reference, prompts: list[str], *, max_new_tokens: int,
                             max_prompt_tokens: int | None = None) -> dict:
    """Each prompt written to exactly ``max_new_tokens`` by ``model`` and right after by ``reference`` (a
    (model, tokenizer) pair, e.g. the teacher), so the two timings of a prompt are seconds apart and load on a
    shared machine changes both alike. Both should be warm. Returns each one's tokens/s over all prompts, and
    per prompt the model's tokens/s over the reference's (``speedups``) with their median."""
    settings = dict(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, stop=(), fixed_length=True)
    pairs = [(_timed(model, tokenizer, prompt, **settings), _timed(*reference, prompt, **settings))
             for prompt in prompts]  # ((seconds, tokens), (reference seconds, tokens)) per prompt
    speedups = [(tokens / seconds) / (ref_tokens / ref_seconds)
                for (seconds, tokens), (ref_seconds, ref_tokens) in pairs]
    total = lambda side: [sum(values) for values in zip(*(pair[side] for pair in pairs))]  # [seconds, tokens]
    (seconds, tokens), (ref_seconds, ref_tokens) = total(0), total(1)
    return {"outputs": len(prompts), "tokens_per_s": tokens / seconds, "generated_tokens": tokens,
            "reference_tokens_per_s": ref_tokens / ref_seconds, "speedups": speedups,
            "speedup_median": statistics.median(speedups)}
