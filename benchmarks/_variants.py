"""Shared by the comparison benchmarks: run one built-in job per variant, every variant sharing one
teacher store (each teacher is asked once), and summarize the distilled students over seeds."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from kdistill import api
from kdistill.config import load_config
from kdistill.io import atomic_write_json


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def run_linked(config: str, overrides: dict[str, Any], output_dir: Path, store: Path, *,
               resume: bool = False) -> Path:
    """`kdistill run` of ``config`` with ``overrides`` under ``output_dir``, its teacher cache a link to the
    shared ``store`` (so each teacher is asked about a text once over every run); returns the run directory."""
    cfg = load_config(config, {**overrides, "output_dir": str(output_dir)})
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    link = cfg.run_dir / "teacher_cache"
    if not link.exists():
        link.symlink_to(store.resolve(), target_is_directory=True)
    return api.run(cfg, resume=resume, progress=False)


def run_variant(config: str, name: str, overrides: dict[str, Any], out: Path, store: Path) -> dict[str, Any]:
    """`kdistill run` of ``config`` with ``overrides``, in ``out/<name>``, with the shared ``store``."""
    start = time.perf_counter()
    run_dir = run_linked(config, overrides, out / name.replace("+", "_"), store)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    labels = results["labels"]
    entry: dict[str, Any] = {"overrides": overrides, "seconds": time.perf_counter() - start, "models": {},
                             **({"teacher_cost": results["teacher_cost"]} if "teacher_cost" in results else {})}
    for key, model in results["models"].items():
        runs = list(model["seeds"].values()) if "seeds" in model else [model["metrics"]]
        entry["models"][key] = {
            "name": model["name"], "seeds": len(runs),
            "macro_f1": stats([m["macro_f1"] for m in runs]), "accuracy": stats([m["accuracy"] for m in runs]),
            "majority_prediction_share": stats([m["majority_prediction_share"] for m in runs]),
            "per_class_recall": {label: stats([m["per_class_recall"][label] for m in runs]) for label in labels},
            "per_seed_macro_f1": [m["macro_f1"] for m in runs],
            **({"ensemble": model["ensemble"]} if "ensemble" in model else {}),
        }
    return entry


def run_all(config: str, variants: dict[str, dict[str, Any]], out: Path, only: list[str] | None = None) -> dict:
    """Every variant, resumable: one that finished is kept in out/partial.json and not run again."""
    store = out / "teacher_cache"
    store.mkdir(parents=True, exist_ok=True)
    partial = out / "partial.json"
    done = json.loads(partial.read_text()) if partial.exists() else {}
    for name, overrides in variants.items():
        if (only and name not in only) or name in done:
            continue
        done[name] = run_variant(config, name, overrides, out, store)
        atomic_write_json(partial, done)
        print(f"{name}: distilled macro-F1 {fmt(done[name]['models']['student_distilled']['macro_f1'])}", flush=True)
    return done
