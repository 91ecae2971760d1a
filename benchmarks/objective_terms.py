"""Benchmark: does hidden-state alignment or the balance term help over CE + KD alone? (real models)

    python benchmarks/objective_terms.py [--config sentiment3] [--seeds 0 1 2] [--set data.max_examples=1500]
        [--set 'teacher={model: all-mpnet-base-v2, finetune: true, ...}'] [--only ce+kd ...] [--name objective_terms]

Runs the built-in job once per objective variant (each with every seed), all sharing one teacher
cache, and compares the distilled students' test macro-F1, accuracy and per-class recall (mean ± std
over seeds) with the CE + KD variant. Writes benchmarks/results/objective_terms.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from _variants import fmt, run_all
from kdistill.config import load_config
from kdistill.data.prepare import prepare_data
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.recipes.common import label_prior

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "ce+kd": {},
    "ce+kd+balance": {"objective.balance.weight": 1.0, "objective.balance.target": "prior"},
    "ce+kd+hidden": {"objective.hidden.weight": 1.0, "objective.hidden.layers": "uniform"},
    "ce+kd+hidden(0.1)": {"objective.hidden.weight": 0.1, "objective.hidden.layers": "uniform"},
}


def markdown(summary: dict) -> str:
    labels, done = summary["labels"], summary["variants"]
    base = done["ce+kd"]["models"]
    lines = [f"# Objective terms on `{summary['config']}` ({len(summary['seeds'])} seeds, real teacher and student)", "",
             f"Settings: {summary['settings'] or 'the built-in config'}. Label shares in the labelled training data: "
             f"{summary['prior']}. Test examples: {summary['test_examples']}.", "",
             "| objective | macro-F1 | Δ macro-F1 vs CE+KD | accuracy | "
             + " | ".join(f"recall {label}" for label in labels) + " | majority share |",
             "|---|---|---|---|" + "---|" * len(labels) + "---|"]
    for name, v in done.items():
        m = v["models"]["student_distilled"]
        delta = m["macro_f1"]["mean"] - base["student_distilled"]["macro_f1"]["mean"]
        lines.append(f"| {name} | {fmt(m['macro_f1'])} | {delta:+.3f} | {fmt(m['accuracy'])} | "
                     + " | ".join(fmt(m["per_class_recall"][label]) for label in labels)
                     + f" | {fmt(m['majority_prediction_share'])} |")
    for key, title in (("student_labels_only", "labels only (baseline)"), ("teacher", "teacher")):
        if key in base:
            m = base[key]
            lines.append(f"| {title} | {fmt(m['macro_f1'])} | | {fmt(m['accuracy'])} | "
                         + " | ".join(fmt(m["per_class_recall"][label]) for label in labels)
                         + f" | {fmt(m['majority_prediction_share'])} |")
    lines += ["", "Per-seed macro-F1 of the distilled students: " + "; ".join(
        f"{name}: {', '.join(f'{x:.3f}' for x in v['models']['student_distilled']['per_seed_macro_f1'])}"
        for name, v in done.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sentiment3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default=str(HERE / "runs" / "objective_terms"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--name", default="objective_terms", help="results file name (benchmarks/results/NAME.md)")
    args = parser.parse_args()
    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    common = {**settings, "evaluation.seeds": args.seeds}
    variants = {name: {**common, **overrides, "evaluation.baselines": False}  # the labels-only baseline is the default job's
                for name, overrides in VARIANTS.items()}
    done = run_all(args.config, variants, Path(args.out), args.only)
    cfg = load_config(args.config, settings)
    data = prepare_data(cfg.data, cfg.task)
    prior = label_prior(cfg, data)
    summary = {"config": args.config, "settings": settings, "seeds": args.seeds, "labels": cfg.task.labels,
               "prior": {label: round(float(p), 3) for label, p in zip(cfg.task.labels, prior)},
               "test_examples": len(data.test), "variants": done}
    atomic_write_json(HERE / "results" / f"{args.name}.json", summary)
    atomic_write_text(HERE / "results" / f"{args.name}.md", markdown(summary))


if __name__ == "__main__":
    main()
