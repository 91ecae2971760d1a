"""Benchmark: does distillation beat the labels alone and SetFit, and does a teacher budget keep it? (real models)

    python benchmarks/efficacy.py [--tasks sentiment news-topics sentiment3 news-topics-5] [--labels 32 200]
        [--seeds 0 1 2] [--methods teacher labels_only setfit ...] [--out DIR] [--smoke] [--report-only]

For each task and label count, every method is measured on the same splits (the built-in job's, with
`data.num_labelled: N`; the rest of the training split is the unlabelled pool): one kdistill run gives the
teacher, the labels-only and the distilled student on the full pool; one run per teacher budget (25 % and
50 % of the pool, chosen actively, as the most typical texts or at random) gives a budget's distilled
student; SetFit trains on the same labelled texts and is scored on the same test texts. Each task keeps its
own job's settings. `--report-only` runs nothing and writes the results of the cells finished so far. Writes
benchmarks/results/efficacy.{json,md} (`--smoke`: efficacy_smoke.*, tiny settings for an end-to-end check).
Resumable: each finished (task, labels, method, seed) cell is kept in OUT/partial.json and not run again,
and a killed kdistill run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _efficacy_report import markdown
from _setfit_peer import REFERENCE_SETTINGS, SMOKE_SETTINGS, train_setfit
from _variants import run_linked
from kdistill.config import load_config
from kdistill.data.prepare import PreparedData, prepare_data
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.models import resolve_model_path

HERE = Path(__file__).resolve().parent
TASKS = {"sentiment": "default", "news-topics": "news-topics", "sentiment3": "sentiment3",
         "news-topics-5": str(HERE / "configs" / "news-topics-5.yaml")}
FULL_RUN = {"teacher": "teacher", "labels_only": "student_labels_only", "distilled_full": "student_distilled"}
BUDGETS = {"active_25": ("active", 0.25), "active_50": ("active", 0.50),
           "random_25": ("random", 0.25), "random_50": ("random", 0.50),
           # not in the list: the most typical text of each cluster, for when uncertainty picks teacher noise
           "typical_25": ("typical", 0.25), "typical_50": ("typical", 0.50)}
METHODS = [*FULL_RUN, "setfit", *BUDGETS]
# tiny settings that still go through every step: a smaller sample, one epoch, two selection rounds, quick timing
SMOKE_OVERRIDES = {"data.max_examples": 200, "training.epochs": 1, "teacher.selection.rounds": 2,
                   "evaluation.latency_examples": 4, "evaluation.throughput_batches": 1,
                   "evaluation.warmup_batches": 1}


class Suite:
    """The cells finished so far (kept in OUT/partial.json after each one) and the jobs that make the rest."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.settings = {"smoke": args.smoke, "tasks": args.tasks, "labels": args.labels, "seeds": args.seeds,
                         "methods": args.methods, "overrides": SMOKE_OVERRIDES if args.smoke else {},
                         "setfit": SMOKE_SETTINGS if args.smoke else REFERENCE_SETTINGS}
        self.partial = self.out / "partial.json"
        state = json.loads(self.partial.read_text()) if self.partial.exists() else {"cells": {}, "seconds": {}}
        if state.get("smoke", args.smoke) != args.smoke:  # smoke cells must never mix with real figures
            raise SystemExit(f"{self.partial} holds {'smoke' if state['smoke'] else 'full'} cells; "
                             "use another --out for this run.")
        self.cells: dict[str, dict[str, Any]] = state["cells"]
        self.seconds: dict[str, float] = state["seconds"]

    def missing(self, task: str, n_labels: int, methods: list[str]) -> bool:
        wanted = [m for m in methods if m in self.args.methods]
        return any(_key(task, n_labels, m, s) not in self.cells for m in wanted for s in self.args.seeds)

    def keep(self, rows: list[dict[str, Any]], job: str, seconds: float) -> None:
        for row in rows:
            if row["method"] in self.args.methods:
                self.cells[_key(row["task"], row["n_labels"], row["method"], row["seed"])] = row
        self.seconds[job] = self.seconds.get(job, 0.0) + seconds
        atomic_write_json(self.partial, {"smoke": self.args.smoke, "cells": self.cells, "seconds": self.seconds})
        print(f"{job}: {seconds / 60:.1f} min", flush=True)

    def overrides(self, n_labels: int) -> dict[str, Any]:
        return {**self.settings["overrides"], "data.num_labelled": n_labels, "evaluation.seeds": self.args.seeds}

    def run_task(self, task: str, n_labels: int) -> None:
        """Every requested method of one task at one label count, on one set of splits."""
        config, overrides = TASKS[task], self.overrides(n_labels)
        cfg = load_config(config, overrides)
        data = prepare_data(cfg.data, cfg.task)  # the splits every method below sees
        store = self.out / task / "teacher_cache"  # one per task: its teacher is asked about a text once
        store.mkdir(parents=True, exist_ok=True)
        folder = self.out / task / f"labels{n_labels}"
        if self.missing(task, n_labels, list(FULL_RUN)):
            start = time.perf_counter()
            run_dir = run_linked(config, overrides, folder / "full", store, resume=True)
            _check_same_splits(run_dir, data)
            self.keep(_full_rows(task, n_labels, run_dir, len(data.pool)), f"{task}/{n_labels}/full",
                      time.perf_counter() - start)
        for method, (strategy, share) in BUDGETS.items():
            if self.missing(task, n_labels, [method]):
                budget = max(1, round(share * len(data.pool)))
                # the labels-only baseline and the teacher are the full run's: not trained again for each budget
                budget_overrides = {**overrides, "teacher.budget": budget, "teacher.selection.strategy": strategy,
                                    "evaluation.baselines": False}
                start = time.perf_counter()
                run_dir = run_linked(config, budget_overrides, folder / method, store, resume=True)
                _check_same_splits(run_dir, data)
                self.keep(_budget_rows(task, n_labels, method, run_dir), f"{task}/{n_labels}/{method}",
                          time.perf_counter() - start)
        if self.missing(task, n_labels, ["setfit"]):
            self.run_setfit(task, n_labels, cfg, data)

    def run_setfit(self, task: str, n_labels: int, cfg: Any, data: PreparedData) -> None:
        body = resolve_model_path(cfg.student.model)  # the student's own sentence-transformers folder
        for seed in self.args.seeds:
            if _key(task, n_labels, "setfit", seed) in self.cells:
                continue
            peer = train_setfit(body, cfg.task.labels, data.labelled, data.test, seed=seed,
                                settings=self.settings["setfit"])
            row = _row(task, n_labels, seed, "setfit", peer.metrics["macro_f1"], 0)
            self.keep([row], f"{task}/{n_labels}/setfit", peer.seconds)

    def rows(self) -> list[dict[str, Any]]:
        """The finished cells this invocation asked for, in a stable order."""
        order = {m: i for i, m in enumerate(METHODS)}
        rows = [r for r in self.cells.values() if r["task"] in self.args.tasks and r["n_labels"] in self.args.labels
                and r["method"] in self.args.methods and r["seed"] in self.args.seeds]
        return sorted(rows, key=lambda r: (self.args.tasks.index(r["task"]), r["n_labels"], order[r["method"]], r["seed"]))


def _key(task: str, n_labels: int, method: str, seed: int) -> str:
    return f"{task}|{n_labels}|{method}|{seed}"


def _row(task: str, n_labels: int, seed: int, method: str, macro_f1: float, teacher_calls: int,
         **extra: Any) -> dict[str, Any]:
    return {"task": task, "n_labels": n_labels, "seed": seed, "method": method, "macro_f1": macro_f1,
            "teacher_calls": teacher_calls, **extra}


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))


def _check_same_splits(run_dir: Path, data: PreparedData) -> None:
    """The run trained and tested on the splits SetFit gets: a config that split otherwise would be a wrong row."""
    splits = json.loads((run_dir / "data" / "splits.json").read_text(encoding="utf-8"))
    assert splits["test"] == [e.id for e in data.test], f"{run_dir}: another test split than the suite's"
    assert set(splits["train"]) <= {e.id for e in data.train}, f"{run_dir}: training texts outside the suite's"


def _full_rows(task: str, n_labels: int, run_dir: Path, pool: int) -> list[dict[str, Any]]:
    """The teacher, labels-only and distilled rows of one full-pool run, one per seed."""
    results, rows = _results(run_dir), []
    models, asked = results["models"], results["teacher_cost"]["total"]["texts_answered"]
    for seed_key, metrics in models[FULL_RUN["distilled_full"]]["seeds"].items():
        seed = int(seed_key)
        rows.append(_row(task, n_labels, seed, "teacher", models["teacher"]["metrics"]["macro_f1"],
                         results["test_examples"]))
        if FULL_RUN["labels_only"] in models:
            rows.append(_row(task, n_labels, seed, "labels_only",
                             models[FULL_RUN["labels_only"]]["seeds"][seed_key]["macro_f1"], 0))
        rows.append(_row(task, n_labels, seed, "distilled_full", metrics["macro_f1"], asked, pool_calls=pool))
    return rows


def _budget_rows(task: str, n_labels: int, method: str, run_dir: Path) -> list[dict[str, Any]]:
    """The distilled rows of one teacher-budget run, one per seed; calls are the texts the budget let it ask."""
    results = _results(run_dir)
    asked = results["teacher_cost"]["total"]["texts_answered"]
    chosen = results["data"]["teacher_budget"]["selected"]
    return [_row(task, n_labels, int(seed), method, metrics["macro_f1"], asked, pool_calls=chosen,
                 budget=results["selection"]["budget"])
            for seed, metrics in results["models"]["student_distilled"]["seeds"].items()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None,
                        help="default: all four (--smoke: sentiment)")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="gold labels kept (default: 32 200)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--smoke: 0)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--out", default=None, help="run folders and partial.json (default: benchmarks/runs/NAME)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, written to efficacy_smoke.*")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the results of the cells finished so far (a suite run in pieces)")
    args = parser.parse_args()
    args.name = "efficacy_smoke" if args.smoke else "efficacy"
    args.tasks = args.tasks or (["sentiment"] if args.smoke else list(TASKS))
    args.labels = args.labels or ([32] if args.smoke else [32, 200])
    args.seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    args.out = args.out or str(HERE / "runs" / args.name)
    return args


def main() -> None:
    args = parse_args()
    suite = Suite(args)
    if not args.report_only:
        for task in args.tasks:
            for n_labels in args.labels:
                suite.run_task(task, n_labels)
    summary = {"settings": suite.settings, "rows": suite.rows(), "seconds": suite.seconds}
    atomic_write_json(HERE / "results" / f"{args.name}.json", summary)
    atomic_write_text(HERE / "results" / f"{args.name}.md", markdown(summary))


if __name__ == "__main__":
    main()
