"""Benchmark: the default job, run N times from scratch (assets prepared), wall time and quality.

    python benchmarks/default_job.py [--runs 3] [--config PATH]

Each run gets a fresh output folder (no teacher store carried over). Writes
benchmarks/results/<name>.json and .md with the median wall time and the per-run report figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_run(config: str | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kdistill.cli", "run", "--set", f"output_dir={out}"]
    if config:
        cmd.insert(4, config)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results_path = next(out.glob("*/eval/results.json"))
    results = json.loads(results_path.read_text())
    rows = {r["model"]: r for r in results["comparison"]}
    return {"wall_s": wall, "timings": results["timings"], "comparison": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default=None, help="run config (default: the built-in default job)")
    parser.add_argument("--name", default="default_job")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "kdistill.cli", "validate"] + ([args.config] if args.config else []),
                   check=True, stdout=subprocess.DEVNULL)  # prepares assets once, outside the timing
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kdistill-bench-") as tmp:
            runs.append(one_run(args.config, Path(tmp)))
        print(f"run {i + 1}: {runs[-1]['wall_s']:.0f} s", flush=True)
    summary = {
        "runs": args.runs,
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "wall_s": [r["wall_s"] for r in runs],
        "macro_f1": {m: [r["comparison"][m]["macro_f1"] for r in runs] for m in runs[0]["comparison"]},
        "last_run": runs[-1],
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = runs[-1]["comparison"]
    lines = [f"# {args.name}: {args.runs} runs from scratch (assets prepared)", "",
             f"Wall time per run: median **{summary['wall_s_median']:.0f} s** "
             f"({', '.join(f'{w:.0f}' for w in summary['wall_s'])} s).", "",
             "| model | macro-F1 per run (mean over seeds for students) | % of teacher (last run) "
             "| speed-up latency / throughput (last run) |", "|---|---|---|---|"]
    for model, values in summary["macro_f1"].items():
        row = last[model]
        lines.append(f"| {model} | {', '.join(f'{v:.3f}' for v in values)} | {row['retained_pct']:.1f} % "
                     f"| {row['speedup_latency']:.1f}× / {row['speedup_throughput']:.1f}× |")
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
