"""Benchmark: does a code change keep a run's result? Runs a config and fingerprints what it made.

    python benchmarks/parity.py --label after [--config PATH] [--name default_job_parity]
    python benchmarks/parity.py --compare default_job_parity            # before vs after, side by side

A run's fingerprint is every figure of its `eval/results.json` that does not measure time (latency,
throughput, tokens/s, wall seconds and the like vary from run to run on a shared machine), and the sha256
of every saved student's `model.safetensors`. Run it once on the old code (for example with
`PYTHONPATH=<old checkout>/src`) labelled `before`, once on the new code labelled `after`, then
`--compare`: writes benchmarks/results/<name>.json and .md with both fingerprints and what differs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# keys whose values are timings or derived from timings: they differ between any two runs
TIMED = ("latency", "throughput", "tokens_per_s", "seconds", "timings", "speedup", "wall", "_s",
         "per_s", "fixed_length")


def _timed(key: str) -> bool:
    return any(part in key for part in TIMED)


def untimed(value: Any) -> Any:
    """``value`` without the keys that hold timings, at any depth."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not _timed(str(k))}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(run_dir: Path) -> dict[str, Any]:
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    weights = sorted(run_dir.glob("student*/**/model.safetensors")) + sorted(run_dir.glob("students/*/model.safetensors"))
    return {"results": untimed(results),
            "weights_sha256": {str(p.relative_to(run_dir)): sha256(p) for p in dict.fromkeys(weights)}}


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def disk(run_dir: Path) -> dict[str, int]:
    """What the run left on disk: the run directory (and its checkpoints), and kdistill's home of assets."""
    home = Path(os.environ.get("KDISTILL_HOME", Path.home() / ".cache" / "kdistill"))
    return {"run_dir_bytes": disk_bytes(run_dir), "checkpoints_bytes": disk_bytes(run_dir / "checkpoints"),
            "kdistill_home_bytes": disk_bytes(home)}


def run_once(config: str | None, out: Path) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "kdistill.cli", "run"] + ([config] if config else []) + ["--set", f"output_dir={out}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return next(p.parent.parent for p in out.glob("*/eval/results.json")), time.perf_counter() - start


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (differences(a.get(k), b.get(k), f"{where}.{k}") if k in a and k in b
                          else [f"{where}.{k}: only in {'before' if k in a else 'after'}"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"[:300]]


def compare(name: str) -> None:
    both = {label: json.loads((RESULTS / f"{name}.{label}.json").read_text()) for label in ("before", "after")}
    diffs = differences(both["before"]["fingerprint"], both["after"]["fingerprint"])
    summary = {"name": name, "identical": not diffs, "differences": diffs, **both}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {name}: the same config and seed before and after the change", "",
             f"Config: `{both['after']['config'] or 'the built-in default job'}`. "
             f"**{'Identical' if not diffs else f'{len(diffs)} differences'}** in every untimed figure of "
             "`eval/results.json` and in every saved student's weights.", "",
             "| weights | before sha256 | after sha256 |", "|---|---|---|"]
    for path, digest in both["after"]["fingerprint"]["weights_sha256"].items():
        lines.append(f"| `{path}` | `{both['before']['fingerprint']['weights_sha256'].get(path, '-')}` | `{digest}` |")
    lines += ["", "| model | headline figure | before | after |", "|---|---|---|---|"]
    rows = {label: {r["model"]: r for r in both[label]["fingerprint"]["results"]["comparison"]} for label in both}
    for model, row in rows["after"].items():
        key = "macro_f1" if "macro_f1" in row else "headline"  # a generation card's headline: ROUGE-L or EM
        metric = "macro-F1" if key == "macro_f1" else row.get("headline_metric", key)
        lines.append(f"| {model} | {metric} | {rows['before'].get(model, {}).get(key)} | {row.get(key)} |")
    lines += [""] + [f"- {d}" for d in diffs[:40]]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="run config (default: the built-in default job)")
    parser.add_argument("--name", default="default_job_parity")
    parser.add_argument("--label", choices=["before", "after"])
    parser.add_argument("--compare", metavar="NAME", help="compare NAME.before.json with NAME.after.json")
    parser.add_argument("--keep", metavar="DIR", help="run into DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare)
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="kdistill-parity-")) as tmp:
        run_dir, wall = run_once(args.config, Path(tmp))
        record = {"config": args.config, "label": args.label, "wall_s": wall, "disk": disk(run_dir),
                  "fingerprint": fingerprint(run_dir)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["fingerprint"]["weights_sha256"], indent=2))


if __name__ == "__main__":
    main()
