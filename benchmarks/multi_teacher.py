"""Benchmark: a student distilled from two real teachers of different families vs from each alone.

    python benchmarks/multi_teacher.py [--config sentiment3] [--labels 300] [--seeds 0 1 2] [--set data.max_examples=1500]

Teachers: Gemma-3-270m prompted (few-shot, calibrated) and all-mpnet-base-v2 fine-tuned on the
labelled examples (an encoder teacher kdistill trains first). Setting: `--labels` gold labels, the
rest of the training split a transfer set labelled by the teacher(s). The same MiniLM-L6 student
is distilled from Gemma alone, from MPNet alone and from their ensemble (weights learned on the
validation split), over the same seeds. Writes benchmarks/results/multi_teacher.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _variants import fmt, run_all
from kdistill.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
GEMMA = {"model": "gemma-3-270m", "name": "gemma", "few_shot_per_label": 1, "calibrate": True}
MPNET = {"model": "all-mpnet-base-v2", "name": "mpnet-ft", "kind": "encoder", "finetune": True,
         "finetune_epochs": 6, "finetune_learning_rate": 5e-5, "max_length": 64, "batch_size": 32,
         "calibrate": False, "recalibrate": "none"}


def variants(seeds: list[int], labels: int, combine: str, settings: dict) -> dict[str, dict]:
    common = {**settings, "data.num_labelled": labels, "evaluation.seeds": seeds}
    return {
        "gemma": {**common, "teacher": GEMMA, "evaluation.baselines": True},
        "mpnet-ft": {**common, "teacher": MPNET, "evaluation.baselines": False},
        "ensemble": {**common, "teacher": GEMMA, "teachers": [MPNET], "ensemble.combine": combine,
                     "evaluation.baselines": False},
    }


def markdown(summary: dict) -> str:
    done, labels = summary["variants"], summary["labels"]
    lines = [f"# Several teachers on `{summary['config']}`: {summary['num_labelled']} gold labels + transfer set, "
             f"{len(summary['seeds'])} seeds", "", f"Settings: {summary['settings'] or 'the built-in config'}.", "",
             "| row | macro-F1 | accuracy | " + " | ".join(f"recall {label}" for label in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]

    def row(title: str, m: dict) -> str:
        return (f"| {title} | {fmt(m['macro_f1'])} | {fmt(m['accuracy'])} | "
                + " | ".join(fmt(m["per_class_recall"][label]) for label in labels) + " |")

    ens = done["ensemble"]["models"]
    for key in ("teacher:gemma", "teacher:mpnet-ft"):
        lines.append(row(f"teacher {key.removeprefix('teacher:')}", ens[key]))
    weights = ens["teacher"].get("ensemble", {}).get("weights", {})
    lines.append(row(f"teachers' ensemble ({summary['combine']}; "
                     + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) + ")", ens["teacher"]))
    for name in ("gemma", "mpnet-ft", "ensemble"):
        lines.append(row(f"student distilled from {name}", done[name]["models"]["student_distilled"]))
    if "student_labels_only" in done["gemma"]["models"]:
        lines.append(row("student on the labels alone", done["gemma"]["models"]["student_labels_only"]))
    best_single = max(("gemma", "mpnet-ft"), key=lambda n: done[n]["models"]["student_distilled"]["macro_f1"]["mean"])
    delta = (ens["student_distilled"]["macro_f1"]["mean"]
             - done[best_single]["models"]["student_distilled"]["macro_f1"]["mean"])
    lines += ["", f"Student from the ensemble minus student from the best single teacher ({best_single}): "
              f"**{delta:+.3f}** macro-F1 (means over seeds).", "",
              "Per-seed distilled macro-F1: " + "; ".join(
                  f"{n}: {', '.join(f'{x:.3f}' for x in done[n]['models']['student_distilled']['per_seed_macro_f1'])}"
                  for n in done), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sentiment3")
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--combine", default="learned")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default=str(HERE / "runs" / "multi_teacher"))
    args = parser.parse_args()
    import yaml

    from kdistill.config import load_config

    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    done = run_all(args.config, variants(args.seeds, args.labels, args.combine, settings), Path(args.out))
    summary = {"config": args.config, "settings": settings, "num_labelled": args.labels, "seeds": args.seeds,
               "combine": args.combine,
               "labels": load_config(args.config).task.labels, "variants": done}
    atomic_write_json(HERE / "results" / "multi_teacher.json", summary)
    atomic_write_text(HERE / "results" / "multi_teacher.md", markdown(summary))


if __name__ == "__main__":
    main()
