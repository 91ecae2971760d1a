"""Benchmark: what a run leaves on disk, in the run directory and in kdistill's home of prepared assets.

    python benchmarks/disk_use.py --run-dir runs/default [--home DIR] [--name disk_use]

With no --home, prepares the config's assets into a fresh temporary KDISTILL_HOME (`kdistill validate`:
downloads from pip's cache, the GGUF conversion) and measures that; --home measures one already prepared.
The run directory is one a finished `kdistill run` left. Writes benchmarks/results/<name>.json and .md with
the bytes of each top-level folder of both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def breakdown(root: Path, depth: int = 1) -> dict[str, int]:
    """Bytes of each folder ``depth`` levels below ``root`` (files at the top counted under their own name)."""
    parts = [p for p in root.glob("/".join(["*"] * depth))]
    return {str(p.relative_to(root)): folder_bytes(p) if p.is_dir() else p.stat().st_size for p in sorted(parts)}


def prepared_home(config: str | None) -> Path:
    home = Path(tempfile.mkdtemp(prefix="kdistill-home-"))
    env = {**os.environ, "KDISTILL_HOME": str(home)}
    cmd = [sys.executable, "-m", "kdistill.cli", "validate"] + ([config] if config else [])
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--home", type=Path, default=None, help="a prepared KDISTILL_HOME (default: prepare one)")
    parser.add_argument("--config", default=None, help="whose assets to prepare (default: the default job)")
    parser.add_argument("--name", default="disk_use")
    args = parser.parse_args()
    home = args.home or prepared_home(args.config)
    summary = {"run_dir": str(args.run_dir), "run_dir_bytes": folder_bytes(args.run_dir),
               "run_dir_folders": breakdown(args.run_dir), "home_bytes": folder_bytes(home),
               "home_folders": breakdown(home, depth=2)}
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    mb = lambda n: f"{n / 1e6:,.0f} MB"
    lines = [f"# {args.name}: what a run leaves on disk", "",
             f"Run directory `{args.run_dir}`: **{mb(summary['run_dir_bytes'])}**; kdistill's home of prepared "
             f"assets: **{mb(summary['home_bytes'])}**.", "", "| where | size |", "|---|---|"]
    lines += [f"| run dir: `{k}` | {mb(v)} |" for k, v in summary["run_dir_folders"].items()]
    lines += [f"| home: `{k}` | {mb(v)} |" for k, v in summary["home_folders"].items()]
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
