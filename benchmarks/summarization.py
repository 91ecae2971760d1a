"""Benchmark: a generation run (default: the built-in bbc-summary config) end to end, and its acceptance figures.

    python benchmarks/summarization.py [--config bbc-summary] [--name bbc_summary] [--out benchmarks/runs] [--resume]
                                       [--set key=value ...]

Runs `kdistill run` on real models (resumable: --resume continues a killed run), then writes
benchmarks/results/<name>.json and .md: the wall time, each model's figures, and the issue's checks stated
with their numbers (the distilled student's ROUGE-L and faithfulness against the sequence-level-only
student's, mean over seeds; copy rate against the teacher's; generation speed-up in tokens/s). Nothing is
asserted: a check that fails is written down as failed. The run's report.md is copied beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _value(entry: dict, metric: str) -> tuple[float | None, float]:
    if "summary" in entry:
        stats = entry["summary"].get(metric)
        return (stats["mean"], stats["std"]) if stats else (None, 0.0)
    return entry["metrics"].get(metric), 0.0


def checks(results: dict) -> list[dict]:
    """The issue's acceptance checks, each with its numbers and whether it holds."""
    models = results["models"]
    out = []
    seq, dist, teacher = models.get("student_sequence_kd"), models.get("student_distilled"), models.get("teacher")
    if seq and dist:
        for metric in ("rougeL", "faithfulness"):
            d, s = _value(dist, metric)[0], _value(seq, metric)[0]
            if d is not None and s is not None:
                out.append({"check": f"distilled {metric} >= sequence-KD-only {metric} (mean over seeds)",
                            "distilled": d, "sequence_kd": s, "holds": d >= s})
    if dist and teacher:
        d, t = _value(dist, "copy_rate_2")[0], _value(teacher, "copy_rate_2")[0]
        if d is not None and t is not None:
            check = {"check": "distilled copy rate (2-grams) <= teacher's + 10 points", "distilled": d, "teacher": t,
                     "holds": d <= t + 0.10}
            gap = dist.get("copy_gap_2")  # the same gap paired by article, with its bootstrap interval
            if gap and gap["ci95"]:
                check |= {"points_above_teacher": gap["points"], "ci95_low": gap["ci95"][0],
                          "ci95_high": gap["ci95"][1]}
            out.append(check)
        # the card's own speed-up: at a fixed output length, the median of per-prompt ratios with the teacher
        # timed right after the student on each prompt, whichever of those the run measured
        row = next(r for r in results["comparison"] if r["model"] == "student_distilled")
        speed = row["speedup_tokens_per_s"]
        check = {"check": "student generation >= 2.5x the teacher's tokens/s" +
                 (" (same prompts, fixed output length)" if row.get("speedup_at_fixed_length") else "") +
                 (", median of per-prompt ratios" if row.get("speedup_paired_median") else ""),
                 "speedup": speed,
                 "natural_length_speedup": dist["cost"]["tokens_per_s"] / teacher["cost"]["tokens_per_s"],
                 "holds": speed >= 2.5}
        if row.get("speedup_paired_median"):
            check |= {"lowest_prompt": min(dist["cost"]["fixed_length_speedups"]),
                      "highest_prompt": max(dist["cost"]["fixed_length_speedups"])}
        out.append(check)
    return out


def _markdown(name: str, wall_s: float, results: dict, found: list[dict], resumed: bool = False) -> str:
    # a resumed run times only the stages it still had to do: say so, or its wall time reads as the whole run's
    what = "this command (`--resume`: the stages done before it are not in it)" if resumed else "the run"
    lines = [f"# {name}: `kdistill run {results['run']}` on real models", "",
             f"Wall time of {what}: **{wall_s / 60:.1f} min** (timings: " +
             ", ".join(f"{k} {v / 60:.1f} min" for k, v in results.get("timings", {}).items()) + "). "
             f"Test split: {results['test_examples']} examples; references: "
             f"{'written by the teacher' if results['references'] == 'teacher' else 'from the data'}.", "",
             "| model | ROUGE-L | faithfulness | similarity | copy rate 2-grams | compression | tokens/s "
             "(fixed length) | s/output p50 |",
             "|---|---|---|---|---|---|---|---|"]
    for key, entry in results["models"].items():
        cells = []
        for metric in ("rougeL", "faithfulness", "similarity", "copy_rate_2", "compression_ratio"):
            mean, std = _value(entry, metric)
            cells.append("–" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if "summary" in entry else ""))
        cost = entry["cost"]
        fixed = f" ({cost['fixed_length_tokens_per_s']:.2f})" if "fixed_length_tokens_per_s" in cost else ""
        lines.append(f"| {key} ({entry['name']}) | " + " | ".join(cells) +
                     f" | {cost['tokens_per_s']:.2f}{fixed} | {cost['seconds_p50']:.2f} |")
    kept = [(key, seed, t) for key, entry in results["models"].items() for seed, t in entry.get("training", {}).items()]
    if kept:
        lines += ["", "Weights kept per trained student (chosen on the validation split, never the test split):", "",
                  "| student | seed | kept by | step kept / steps | val ROUGE-L | val copy rate 2-grams | "
                  "val target CE |", "|---|---|---|---|---|---|---|"]
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        for key, seed, t in kept:
            lines.append(f"| {key} | {seed} | {t.get('select_by', 'target_ce')} | {t['best_step']} / {t['steps']} | "
                         f"{fmt(t.get('best_val_rouge_l'))} | {fmt(t.get('best_val_copy_rate_2'))} | "
                         f"{fmt(t.get('best_val_target_ce'))} |")
    lines += ["", "| check | figures | holds |", "|---|---|---|"]
    for c in found:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if isinstance(v, float))
        lines.append(f"| {c['check']} | {figures} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bbc-summary")
    parser.add_argument("--name", default="bbc_summary")
    parser.add_argument("--out", default=str(HERE / "runs"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "kdistill.cli", "run", args.config, "--set", f"output_dir={args.out}"]
    cmd += [x for kv in args.set for x in ("--set", kv)] + (["--resume"] if args.resume else [])
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall_s = time.perf_counter() - start
    run_dir = next(p.parent.parent for p in sorted(Path(args.out).glob("*/eval/results.json"),
                                                   key=lambda p: p.stat().st_mtime)[-1:])
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    found = checks(results)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.name}.json").write_text(
        json.dumps({"wall_s": wall_s, "resumed": args.resume, "checks": found, "results": results}, indent=2) + "\n")
    (HERE / "results" / f"{args.name}.md").write_text(_markdown(args.name, wall_s, results, found, args.resume))
    shutil.copyfile(run_dir / "report.md", HERE / "results" / f"{args.name}_report.md")
    print(_markdown(args.name, wall_s, results, found, args.resume))


if __name__ == "__main__":
    main()
