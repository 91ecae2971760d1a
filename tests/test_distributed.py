"""Two CPU processes (gloo, through Accelerate under torchrun) train the same student as one process.

Same global batch, same data order, same initialization: each process takes every other example of a
step, and DDP averages gradients scaled so that the step's gradient is the one-process gradient. The
two differ only by floating-point summation order (fp32, a different reduction tree), so the weights
and loss curves agree to a tolerance, not bit for bit; the tolerances below are a few times the
differences measured here: the tolerance is about 100 times the measured weight difference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import tiny_config_dict

HERE = Path(__file__).resolve().parent
WEIGHT_TOL = 1e-5  # max |Δ weight| after 2 epochs (26 AdamW steps); measured here: 1.2e-7
LOSS_RTOL = 1e-5


def _config(tmp_path, tiny_models, name: str, **training) -> Path:
    cfg = tiny_config_dict(tmp_path, tiny_models, name=name,
                           student={"model": str(tiny_models["encoder_nodrop"]), "max_length": 32},
                           training={"epochs": 2, "batch_size": 8, "checkpoint_every_steps": 4,
                                     "early_stopping_patience": 0, "tensorboard": False, **training},
                           evaluation={"seeds": [0], "baselines": False})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, mode: str, processes: int) -> subprocess.CompletedProcess:
    script = [str(HERE / "ddp_run_proc.py"), str(config), mode]
    command = ([sys.executable, *script] if processes == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *script])
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _errors(done: subprocess.CompletedProcess) -> str:
    """The lines that say what failed, from every process (torchrun's own trace buries them)."""
    lines = [line for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
    return "\n".join(lines[:40]) or done.stderr[-3000:]


def _outputs(tmp_path, name: str):
    run_dir = tmp_path / "runs" / name
    students = run_dir / "students"
    training = json.loads((students / "distilled-seed0.training.json").read_text())
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    return load_file(students / "distilled-seed0" / "model.safetensors"), training, results


def _assert_close_runs(one, two):
    (weights_1, training_1, results_1), (weights_2, training_2, results_2) = one, two
    worst = max(float((weights_1[k] - weights_2[k]).abs().max()) for k in weights_1)
    assert worst <= WEIGHT_TOL, f"max |Δ weight| {worst:.2e}"
    records_1 = [r for r in training_1["history"] if "train_ce" in r]
    records_2 = [r for r in training_2["history"] if "train_ce" in r]
    assert [r["step"] for r in records_1] == [r["step"] for r in records_2]
    for a, b in zip(records_1, records_2):
        for term in ("train_ce", "train_kd"):
            assert b[term] == pytest.approx(a[term], rel=LOSS_RTOL), (a["step"], term)
    val_1 = [r["val_macro_f1"] for r in training_1["history"] if "val_macro_f1" in r]
    assert val_1 == [r["val_macro_f1"] for r in training_2["history"] if "val_macro_f1" in r]
    f1 = lambda r: r["models"]["student_distilled"]["seeds"]["0"]["macro_f1"]
    assert f1(results_1) == f1(results_2)


@pytest.mark.slow
def test_two_processes_train_the_same_student_as_one(tmp_path, tiny_models):
    for name, processes in (("one", 1), ("two", 2)):
        done = _launch(_config(tmp_path, tiny_models, name), "run", processes)
        assert done.returncode == 0, _errors(done)
    _assert_close_runs(_outputs(tmp_path, "one"), _outputs(tmp_path, "two"))
    # only the main process wrote: one checkpoint folder per step, no stray temporaries
    checkpoints = sorted(p.name for p in (tmp_path / "runs" / "two" / "checkpoints" / "distilled-seed0").iterdir())
    assert checkpoints and all(name.startswith("step-") for name in checkpoints)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, tiny_models):
    done = _launch(_config(tmp_path, tiny_models, "one"), "run", 1)
    assert done.returncode == 0, _errors(done)
    resumed = _config(tmp_path, tiny_models, "resumed")
    crashed = _launch(resumed, "crash-at-10", 2)
    assert crashed.returncode != 0 and "stopped after 10 steps" in crashed.stderr
    done = _launch(resumed, "resume", 1)
    assert done.returncode == 0, _errors(done)
    _assert_close_runs(_outputs(tmp_path, "one"), _outputs(tmp_path, "resumed"))
