"""Two CPU processes (gloo, through Accelerate under torchrun) train the same student as one process.

Same global batch, same data order, same initialization: each process takes every other example of a
step, and DDP averages gradients scaled so that the step's gradient is the one-process gradient. The
two differ only by floating-point summation order (fp32, a different reduction tree), so the weights
and loss curves agree to a tolerance, not bit for bit; the tolerances below are a few times the
differences measured here: the tolerance is about 100 times the measured weight difference.

The same holds under `accelerate launch` with the README's example config. FSDP and DeepSpeed are
refused, before anything is elicited or written, with a message naming the setting and the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import tiny_config_dict

HERE = Path(__file__).resolve().parent
ACCELERATE_CONFIGS = HERE.parent / "examples" / "accelerate"
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
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())


def _env() -> dict[str, str]:
    # kdistill is imported from where this test's process imports it (an installed copy or PYTHONPATH)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _accelerate_launch(accelerate_config: Path, config: Path, mode: str, processes: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
               "--num_processes", str(processes), str(HERE / "ddp_run_proc.py"), str(config), mode]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())


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


@pytest.mark.slow
def test_the_example_ddp_cpu_config_trains_the_same_student_as_one_process(tmp_path, tiny_models):
    """The README's `accelerate launch --config_file examples/accelerate/ddp_cpu.yaml`, not torchrun."""
    done = _launch(_config(tmp_path, tiny_models, "one"), "run", 1)
    assert done.returncode == 0, _errors(done)
    done = _accelerate_launch(ACCELERATE_CONFIGS / "ddp_cpu.yaml", _config(tmp_path, tiny_models, "two"), "run", 2)
    assert done.returncode == 0, _errors(done)
    assert "process 1 of 2" in done.stderr  # Accelerate's MULTI_CPU, for one, would have started one process
    _assert_close_runs(_outputs(tmp_path, "one"), _outputs(tmp_path, "two"))


@pytest.mark.parametrize("engine", ["FSDP", "DeepSpeed"])
def test_fsdp_and_deepspeed_are_refused_with_the_setting_and_the_fix(monkeypatch, engine):
    from kdistill import distributed
    from kdistill.errors import KdistillError
    from kdistill.train import _accelerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP" if engine == "FSDP" else "ACCELERATE_USE_DEEPSPEED", "true")
    assert distributed.launched()
    for first_distributed_call in (distributed.barrier, _accelerator):  # refused before Accelerate is built
        with pytest.raises(KdistillError) as refused:
            first_distributed_call()
        message = str(refused.value)
        assert f"configured for {engine} (`distributed_type: {engine.upper()}`" in message
        assert "MULTI_GPU" in message and "ddp_cpu.yaml" in message and "torchrun" in message


@pytest.mark.slow
def test_an_fsdp_launch_is_refused_before_anything_is_elicited_or_written(tmp_path, tiny_models):
    """On CPU, Accelerate itself would quietly train with DDP here (its FSDP runs only on GPUs)."""
    config = _config(tmp_path, tiny_models, "fsdp")
    done = _accelerate_launch(ACCELERATE_CONFIGS / "fsdp.yaml", config, "run", 2)
    assert done.returncode != 0
    assert "KdistillError: `accelerate launch` was configured for FSDP" in done.stderr
    assert not (tmp_path / "runs" / "fsdp").exists()


def test_every_example_accelerate_config_is_one_that_accelerate_reads_as_named():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp_cpu": "MULTI_GPU", "ddp_gpu": "MULTI_GPU", "fsdp": "FSDP",
                "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    found = {path.stem: path for path in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert sorted(found) == sorted(expected)
    for name, path in found.items():
        config = load_config_from_file(str(path))
        assert config.distributed_type.value == expected[name], name
        assert config.mixed_precision == "no", name  # kdistill's training.mixed_precision decides
    zero = {n: load_config_from_file(str(found[n])).deepspeed_config["zero_stage"] for n in ("deepspeed_zero2", "deepspeed_zero3")}
    assert zero == {"deepspeed_zero2": 2, "deepspeed_zero3": 3}
