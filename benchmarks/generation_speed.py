"""Benchmark: a generation config's teacher against its student, generating the same number of tokens.

    python benchmarks/generation_speed.py [--config bbc-summary] [--runs 3] [--prompts 4] [--tokens 32]

The one harness of the report card (`generate.generation_cost`: batch 1, end to end from text, a warm-up
first), with EOS held back so both models write exactly --tokens tokens per prompt: tokens/s then compares
the models, not the lengths of what they chose to write. Each run times the teacher and then the student
on the same test prompts; the speed-up is taken within each run, and the medians over runs are reported.
Writes benchmarks/results/generation_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    import torch

    from kdistill.config import load_config
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.models.generate import generation_cost
    from kdistill.models.generative import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bbc-summary")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    cfg = load_config(args.config)
    data = prepare_generation(cfg.data, cfg.task)
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in data.test[:args.prompts]]
    cpu = torch.device("cpu")
    models = {"teacher": load_causal_lm(cfg.teacher, cpu), "student": load_causal_lm(cfg.student, cpu)}
    runs = []
    for _ in range(args.runs):
        run = {name: generation_cost(module, tokenizer, prompts, max_new_tokens=args.tokens, fixed_length=True,
                                     max_prompt_tokens=cfg.student.max_length - args.tokens)
               for name, (module, tokenizer) in models.items()}
        run["speedup_tokens_per_s"] = run["student"]["tokens_per_s"] / run["teacher"]["tokens_per_s"]
        runs.append(run)
        print(f"teacher {run['teacher']['tokens_per_s']:.2f} tok/s, student {run['student']['tokens_per_s']:.2f} "
              f"tok/s, speed-up {run['speedup_tokens_per_s']:.2f}x", flush=True)
    median = lambda values: statistics.median(values)
    summary = {"config": args.config, "prompts": len(prompts), "tokens_per_output": args.tokens, "runs": runs,
               "teacher": cfg.teacher.model, "student": cfg.student.model, "threads": torch.get_num_threads(),
               "median_speedup_tokens_per_s": median([r["speedup_tokens_per_s"] for r in runs]),
               "median_teacher_tokens_per_s": median([r["teacher"]["tokens_per_s"] for r in runs]),
               "median_student_tokens_per_s": median([r["student"]["tokens_per_s"] for r in runs])}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "generation_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Generation speed: {cfg.teacher.model} (teacher) vs {cfg.student.model} (student)", "",
             f"`generate.generation_cost`, batch 1, {len(prompts)} test prompts of `{args.config}`, exactly "
             f"{args.tokens} new tokens each (EOS held back), {summary['threads']} threads, {args.runs} runs.", "",
             "| run | teacher tokens/s | student tokens/s | speed-up | teacher s/output p50 | student s/output p50 |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['teacher']['tokens_per_s']:.2f} | {r['student']['tokens_per_s']:.2f} | "
                     f"{r['speedup_tokens_per_s']:.2f}× | {r['teacher']['seconds_p50']:.2f} | "
                     f"{r['student']['seconds_p50']:.2f} |")
    lines += ["", f"Median speed-up in tokens/s: **{summary['median_speedup_tokens_per_s']:.2f}×** "
              f"(teacher {summary['median_teacher_tokens_per_s']:.2f}, student "
              f"{summary['median_student_tokens_per_s']:.2f} tokens/s)."]
    (HERE / "results" / "generation_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
