"""Benchmark: how many epochs a teacher needs when kdistill fine-tunes it on a few labels (real model).

    python benchmarks/teacher_finetune_epochs.py [--config sentiment3] [--labels 200] [--epochs 3 10]

For each epoch count, the config's teacher (`finetune: true`) is fine-tuned on the job's `--labels`
labelled texts exactly as `kdistill run` does it (the same splits, early stopping on validation
macro-F1, the best epoch kept), and its validation macro-F1 after every epoch is recorded. The
fine-tuned folders are kept under benchmarks/runs/teacher_finetune_epochs, so a second call only
reports. Writes benchmarks/results/teacher_finetune_epochs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdistill.config import load_config
from kdistill.data.prepare import prepare_data
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.teachers.signal import finetune

HERE = Path(__file__).resolve().parent


def fine_tune(config: str, labels: int, epochs: int, out: Path) -> dict:
    cfg = load_config(config, {"data.num_labelled": labels, "teacher.finetune_epochs": epochs,
                               "output_dir": str(out)})
    data = prepare_data(cfg.data, cfg.task)
    folder = finetune(cfg, data, cfg.members[0], progress=False)
    record = json.loads(folder.with_name(folder.name + ".training.json").read_text(encoding="utf-8"))
    curve = [h["val_macro_f1"] for h in record["history"] if "val_macro_f1" in h]
    return {"epochs": epochs, "learning_rate": cfg.members[0].finetune_learning_rate, "steps": record["steps"],
            "best_val_macro_f1": record["best_val_macro_f1"], "best_epoch": curve.index(max(curve)) + 1,
            "val_macro_f1_per_epoch": curve, "seconds": record["seconds"],
            "labelled": len(data.labelled), "validation": len(data.validation)}


def markdown(summary: dict) -> str:
    lines = [f"# Teacher fine-tuning epochs: `{summary['config']}`, {summary['labels']} labels", "",
             f"Teacher `{summary['teacher']}` fine-tuned by kdistill on the job's labelled texts (batch "
             f"{summary['batch_size']}), early stopping on validation macro-F1 with the best epoch kept. Seconds are "
             "the fine-tuning's own wall time on this 2-core machine.", "",
             "| epochs asked | optimizer steps run | best validation macro-F1 | best epoch | validation macro-F1 per "
             "epoch | seconds |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['epochs']} | {r['steps']} | {r['best_val_macro_f1']:.3f} | {r['best_epoch']} | "
                     f"{', '.join(f'{x:.3f}' for x in r['val_macro_f1_per_epoch'])} | {r['seconds']:.0f} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sentiment3")
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--out", default=str(HERE / "runs" / "teacher_finetune_epochs"))
    args = parser.parse_args()
    cfg = load_config(args.config)
    rows = [fine_tune(args.config, args.labels, e, Path(args.out) / f"epochs{e}") for e in args.epochs]
    summary = {"config": args.config, "labels": args.labels, "teacher": cfg.members[0].model,
               "batch_size": cfg.training.batch_size, "rows": rows}
    atomic_write_json(HERE / "results" / "teacher_finetune_epochs.json", summary)
    atomic_write_text(HERE / "results" / "teacher_finetune_epochs.md", markdown(summary))


if __name__ == "__main__":
    main()
