"""Benchmark: teacher elicitation, batched with the few-shot prefix's KV cache reused, vs the full prompt
at the same batch size, vs a naive forward per example (full prompt, batch 1).

    python benchmarks/teacher_prefix_reuse.py [--examples 96] [--repeats 3]

Same teacher (the default job's), same examples, measured in one process with the variants
interleaved in every repeat; writes benchmarks/results/teacher_prefix_reuse.{json,md} with medians
and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.data.prepare import prepare_data
from kdistill.models.base import LabelModel
from kdistill.teachers.elicit import label_logprobs
from kdistill.teachers.signal import load_member

HERE = Path(__file__).resolve().parent


class FullPrompt:
    """The same teacher without prefix reuse: every batch runs the whole prompt."""

    def __init__(self, teacher):
        self.teacher, self.labels = teacher, teacher.labels

    def predict_logits(self, texts):
        return LabelModel.predict_logits(self.teacher, texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config("sentiment-prompted")  # the prompted Gemma job (the default job until 2026-12)
    data = prepare_data(cfg.data, cfg.task)
    teacher = load_member(cfg, data, cfg.teacher, progress=False)
    texts = [e.text for e in data.train[: args.examples]]
    tokens = sum(len(ids) for ids in teacher.tokenizer(texts, add_special_tokens=False)["input_ids"])
    batch = cfg.teacher.batch_size
    variants = {"prefix_reuse": (teacher, batch), "full_prompt": (FullPrompt(teacher), batch),
                "naive_per_example": (FullPrompt(teacher), 1)}
    label_logprobs(teacher, texts[:16], batch_size=16, progress=False)  # warm-up, builds the prefix cache
    seconds = {name: [] for name in variants}
    outputs = {}
    for _ in range(args.repeats):
        for name, (model, batch_size) in variants.items():
            start = time.perf_counter()
            outputs[name] = label_logprobs(model, texts, batch_size=batch_size, progress=False)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    result = {
        "teacher": cfg.teacher.model, "few_shot_per_label": cfg.teacher.few_shot_per_label,
        "prefix_chars": len(teacher.prefix), "examples": len(texts), "batch_size": cfg.teacher.batch_size,
        "threads": torch.get_num_threads(), "seconds": seconds, "median_s": medians,
        "examples_per_s": {name: len(texts) / m for name, m in medians.items()},
        "text_tokens": tokens, "text_tokens_per_s": {name: tokens / m for name, m in medians.items()},
        "speedup": medians["full_prompt"] / medians["prefix_reuse"],
        "speedup_vs_naive": medians["naive_per_example"] / medians["prefix_reuse"],
        "max_abs_logprob_diff": float(max((outputs[n] - outputs["naive_per_example"]).abs().max() for n in variants)),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "teacher_prefix_reuse.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Teacher elicitation: few-shot prefix KV reuse vs full prompt", "",
          f"{result['teacher']}, {result['few_shot_per_label']} shots per label ({result['prefix_chars']} characters "
          f"of prefix), {len(texts)} examples, batch {result['batch_size']}, {result['threads']} threads, "
          f"median of {args.repeats}.", "",
          "| variant | batch | median s | examples/s | text tokens/s |", "|---|---|---|---|---|"]
    md += [f"| {name} | {variants[name][1]} | {medians[name]:.2f} | {result['examples_per_s'][name]:.1f} "
           f"| {result['text_tokens_per_s'][name]:.0f} |" for name in variants]
    md += ["", f"Batched with prefix reuse vs a naive forward per example: **{result['speedup_vs_naive']:.2f}×**; "
               f"vs the full prompt at the same batch: **{result['speedup']:.2f}×**. Largest difference in label "
               f"log-probabilities between any two variants: {result['max_abs_logprob_diff']:.1e}. Text tokens are "
               "the examples' own tokens (the prompt around them is not counted)."]
    (HERE / "results" / "teacher_prefix_reuse.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
