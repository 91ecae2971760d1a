"""Benchmark: does hidden-state alignment or the balance term help over CE + KD alone? (real models)

    python benchmarks/objective_terms.py [--config sentiment3] [--seeds 0 1 2]

Runs the built-in job once per objective variant (each with every seed), all sharing one teacher
store, and compares test macro-F1, accuracy and per-class recall (mean ± std over seeds) against the
CE + KD variant of the same run. Writes benchmarks/results/objective_terms.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kdistill import pipeline
from kdistill.config import load_config
from kdistill.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "ce+kd": {},
    "ce+kd+hidden": {"objective.hidden.weight": 1.0, "objective.hidden.layers": "uniform"},
    "ce+kd+balance": {"objective.balance.weight": 1.0, "objective.balance.target": "prior"},
}


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_variant(config: str, name: str, overrides: dict, seeds: list[int], out: Path, store: Path) -> dict:
    settings = {**overrides, "output_dir": str(out / name.replace("+", "_")), "evaluation.seeds": seeds,
                "evaluation.baselines": name == "ce+kd"}
    cfg = load_config(config, settings)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    link = cfg.run_dir / "teacher_cache"
    if not link.exists():  # one teacher store for every variant: the teacher is asked once
        link.symlink_to(store.resolve(), target_is_directory=True)
    start = time.perf_counter()
    run_dir = pipeline.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    per_seed = results["models"]["student_distilled"]["seeds"]
    labels = results["labels"]
    entry = {"overrides": overrides, "seconds": time.perf_counter() - start,
             "macro_f1": _stats([m["macro_f1"] for m in per_seed.values()]),
             "accuracy": _stats([m["accuracy"] for m in per_seed.values()]),
             "majority_prediction_share": _stats([m["majority_prediction_share"] for m in per_seed.values()]),
             "per_class_recall": {label: _stats([m["per_class_recall"][label] for m in per_seed.values()])
                                  for label in labels},
             "per_seed_macro_f1": {s: m["macro_f1"] for s, m in per_seed.items()}}
    for key in ("teacher", "student_labels_only"):
        if key in results["models"]:
            m = results["models"][key]
            entry[key] = m["metrics"] if "metrics" in m else {
                "macro_f1": m["summary"]["macro_f1"], "per_class_recall": {
                    label: _stats([s["per_class_recall"][label] for s in m["seeds"].values()]) for label in labels}}
    return entry


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(summary: dict) -> str:
    labels = summary["labels"]
    base = summary["variants"]["ce+kd"]
    lines = [f"# Objective terms on `{summary['config']}` ({len(summary['seeds'])} seeds, real teacher and student)", "",
             f"Label shares in the labelled training data: {summary['prior']}. Test examples: {summary['test_examples']}.",
             "", "| objective | macro-F1 | Δ macro-F1 vs CE+KD | accuracy | "
             + " | ".join(f"recall {label}" for label in labels) + " | majority share |",
             "|---|---|---|---|" + "---|" * len(labels) + "---|"]
    for name, v in summary["variants"].items():
        delta = v["macro_f1"]["mean"] - base["macro_f1"]["mean"]
        lines.append(f"| {name} | {_fmt(v['macro_f1'])} | {delta:+.3f} | {_fmt(v['accuracy'])} | "
                     + " | ".join(_fmt(v["per_class_recall"][label]) for label in labels)
                     + f" | {_fmt(v['majority_prediction_share'])} |")
    if "student_labels_only" in base:
        lo = base["student_labels_only"]
        lines.append(f"| labels only (baseline) | {_fmt(lo['macro_f1'])} | | | "
                     + " | ".join(_fmt(lo["per_class_recall"][label]) for label in labels) + " | |")
    if "teacher" in base:
        t = base["teacher"]
        lines.append(f"| teacher | {t['macro_f1']:.3f} | | {t['accuracy']:.3f} | "
                     + " | ".join(f"{t['per_class_recall'][label]:.3f}" for label in labels) + " | |")
    lines += ["", "Per-seed macro-F1: " + "; ".join(
        f"{name}: {', '.join(f'{x:.3f}' for x in v['per_seed_macro_f1'].values())}"
        for name, v in summary["variants"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sentiment3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "runs" / "objective_terms"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = parser.parse_args()
    out = Path(args.out)
    store = out / "teacher_cache"
    store.mkdir(parents=True, exist_ok=True)
    partial = out / "partial.json"  # a variant that finished is not run again after an interruption
    done = json.loads(partial.read_text()) if partial.exists() else {}
    for name, overrides in VARIANTS.items():
        if (args.only and name not in args.only) or name in done:
            continue
        done[name] = run_variant(args.config, name, overrides, args.seeds, out, store)
        atomic_write_json(partial, done)
        print(f"{name}: macro-F1 {_fmt(done[name]['macro_f1'])}", flush=True)
    cfg = load_config(args.config)
    data = pipeline._data(cfg)
    prior = pipeline.label_prior(cfg, data)
    summary = {"config": args.config, "seeds": args.seeds, "labels": cfg.task.labels,
               "prior": {label: round(float(p), 3) for label, p in zip(cfg.task.labels, prior)},
               "test_examples": len(data.test), "variants": done}
    atomic_write_json(HERE / "results" / "objective_terms.json", summary)
    atomic_write_text(HERE / "results" / "objective_terms.md", markdown(summary))


if __name__ == "__main__":
    main()
