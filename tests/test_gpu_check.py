"""benchmarks/gpu_check.py: refuses without CUDA in one line, and its CPU dry run exercises every section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_without_cuda_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    done = _run(tmp_path=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--allow-cpu" in lines[0]
    assert not list(tmp_path.iterdir())


def test_the_cpu_dry_run_runs_every_section_and_its_checks_hold(tmp_path):
    done = _run("--allow-cpu", "--tiny", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = result["sections"]
    assert set(sections) == {"training", "chunked", "equality", "generation"} and result["tiny"]
    assert all(s["ok"] and "error" not in s for s in sections.values())
    training = sections["training"]
    assert training["runs"]["bf16"]["autocast_dtypes"] == ["torch.bfloat16"]
    assert training["runs"]["no"]["autocast_dtypes"] == ["none"]
    assert "random" in training["models"]
    chunked = sections["chunked"]["variants"]
    assert {"naive", "chunked:8", "chunked:32"} <= set(chunked)
    assert sections["chunked"]["loss_spread"] <= 1e-5  # chunked equals naive on the same tokens
    assert sections["equality"]["max"] == 0.0  # the "GPU" is the CPU here: bit-identical
    assert all(r["new_tokens"] == result["sizes"]["gen_new_tokens"] for r in sections["generation"]["rows"].values())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
