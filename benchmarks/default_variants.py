"""Benchmark: what raises the default job's distilled student, each variant one change away from the default job.

    python benchmarks/default_variants.py [--only NAME ...] [--out DIR]

Issue 23 asks the default job's distilled student to beat labels-only by 3 points, keep 95 % of its teacher and
beat SetFit (0.750 macro-F1 on the same 200 labels and test texts) by a point. Each variant below is the built-in
default job with a few overrides, 3 seeds, on the same splits; all share one teacher store, so a teacher is asked
once. Variants that change only the distilled student skip the baselines (evaluation.baselines: false); the
labels-only row then is the default job's (benchmarks/results/default_job.md). Resumable: a finished variant is
kept in OUT/partial.json and not run again.

Writes benchmarks/results/default_variants.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _variants import fmt, run_all
from kdistill.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
QUIET = {"evaluation.latency_examples": 5, "evaluation.throughput_batches": 1}  # cost is not what this measures
MPNET_FT = [{"model": "all-mpnet-base-v2", "name": "mpnet-ft", "finetune": True, "recalibrate": "none"}]
CE_LABELLED = {"objective.ce.average": "labelled"}
CONTRASTIVE = {**CE_LABELLED, "objective.contrastive.weight": 1.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "ce-labelled": {**CE_LABELLED, "evaluation.baselines": False},
    "contrastive": {**CONTRASTIVE},
    "contrastive-4ep": {**CONTRASTIVE, "training.epochs": 4},
    "contrastive-ensemble": {**CONTRASTIVE, "teachers": MPNET_FT, "evaluation.baselines": False},  # + fine-tuned mpnet
}


def markdown(done: dict[str, Any]) -> str:
    lines = ["# The default job, one change at a time (3 seeds, same splits)", "",
             "Each row is the built-in default job with the overrides shown (see `benchmarks/default_variants.py`). "
             "A labels-only cell of — means the variant skipped the baselines because it changes only the distilled "
             "student: its labels-only student is the default job's, 0.704 ± 0.002 "
             "([default_job.md](default_job.md)), where today's defaults give the distilled student 0.729 ± 0.010. "
             "SetFit 1.2.0 on the same 200 labels and test texts: 0.750 ± 0.006 (issue 23's measurement). Wall seconds "
             "are those of a shared machine and include the teacher's elicitation where a variant was the first to need "
             "it: they are not timing figures.", "",
             "| variant | overrides | teacher(s) | labels-only | distilled | distilled per seed | distilled − labels-only "
             "| % of teacher | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, v in done.items():
        m = v["models"]
        teacher = m.get("ensemble") or m["teacher"]
        lo, d = m.get("student_labels_only"), m["student_distilled"]
        shown = {k: val for k, val in v["overrides"].items() if k not in QUIET and k != "evaluation.seeds"}
        delta = f"{d['macro_f1']['mean'] - lo['macro_f1']['mean']:+.3f}" if lo else "—"
        lines.append(f"| {name} | `{json.dumps(shown)}` | {teacher['macro_f1']['mean']:.3f} "
                     f"| {fmt(lo['macro_f1']) if lo else '—'} | {fmt(d['macro_f1'])} "
                     f"| {', '.join(f'{x:.3f}' for x in d['per_seed_macro_f1'])} | {delta} "
                     f"| {d['macro_f1']['mean'] / teacher['macro_f1']['mean']:.1%} | {v['seconds']:.0f} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "runs" / "default_variants"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = parser.parse_args()
    variants = {name: {**QUIET, **overrides} for name, overrides in VARIANTS.items()}
    done = run_all("default", variants, Path(args.out), args.only)
    atomic_write_json(HERE / "results" / "default_variants.json", done)
    atomic_write_text(HERE / "results" / "default_variants.md", markdown(done))


if __name__ == "__main__":
    main()
