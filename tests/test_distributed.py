"""Two CPU processes (gloo, through Accelerate under torchrun) train the same student as one process.

Same global batch, same data order, same initialization: each process takes every other example of a
step, and DDP averages gradients scaled so that the step's gradient is the one-process gradient. The
two differ only by floating-point summation order (fp32, a different reduction tree), so the weights
and loss curves agree to a tolerance, not bit for bit; the tolerances below are a few times the
differences measured here: the tolerance is about 100 times the measured weight difference.

The same holds under `accelerate launch` with the README's example config, and with
`training.sharding: fsdp` (torch's FSDP2 over the same two gloo processes): there each process
holds half of every weight, gradients are reduce-scattered instead of all-reduced and the gradient
norm for clipping is a sum of per-shard sums, so the fp32 summation order differs in other places
than under DDP, by as little (FSDP_WEIGHT_TOL). Checkpoints are whole either way: one written by
two sharded processes resumes in one process, and one written by one process resumes sharded over
two. Accelerate's own FSDP and DeepSpeed launches are refused, before anything is elicited or
written, with a message naming the setting and the fix.
"""

from __future__ import annotations

import json
import os
import re
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
ALL_TERMS = {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 2.0},
             "hidden": {"weight": 0.5}, "balance": {"weight": 0.3}}
FSDP_WEIGHT_TOL = 1e-5  # the same bound under FSDP2; measured here: 1.2e-7 (3.6e-8 for 1 -> 2 -> 1 processes)


def _config(tmp_path, tiny_models, name: str, objective: dict | None = None, **training) -> Path:
    cfg = tiny_config_dict(tmp_path, tiny_models, name=name, **({"objective": objective} if objective else {}),
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


def _assert_close_runs(one, two, weight_tol: float = WEIGHT_TOL):
    (weights_1, training_1, results_1), (weights_2, training_2, results_2) = one, two
    assert sorted(weights_1) == sorted(weights_2)
    worst = max(float((weights_1[k] - weights_2[k]).abs().max()) for k in weights_1)
    assert worst <= weight_tol, f"max |Δ weight| {worst:.2e}"
    records_1 = [r for r in training_1["history"] if "train_ce" in r]
    records_2 = [r for r in training_2["history"] if "train_ce" in r]
    assert [r["step"] for r in records_1] == [r["step"] for r in records_2]
    loss_rel = max(abs(b[t] - a[t]) / abs(a[t]) for a, b in zip(records_1, records_2) for t in ("train_ce", "train_kd"))
    print(f"max |Δ weight| {worst:.2e}, max relative |Δ loss| {loss_rel:.2e}")  # the figures quoted above (-s)
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
        # the finished student's checkpoints are kept here, to look at what the processes wrote
        done = _launch(_config(tmp_path, tiny_models, name, keep_finished_checkpoints=True), "run", processes)
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
def test_two_fsdp_processes_train_the_same_student_as_one(tmp_path, tiny_models):
    """`training.sharding: fsdp` under torchrun: each process holds half of the student (FSDP2), the
    student saved at the end is whole, and the run matches one process with the same global batch."""
    sharded = {"sharding": "fsdp", "grad_accum_steps": 2}  # 2 micro-batches: FSDP2's gradient accumulation too
    for name, processes in (("one", 1), ("two", 2)):
        done = _launch(_config(tmp_path, tiny_models, name, **sharded), "run", processes)
        assert done.returncode == 0, _errors(done)
        held = [int(h) for h in re.findall(r"holds (\d+)% of the student", done.stderr)]
        assert len(held) == processes and all(abs(h - 100 / processes) <= 2 for h in held), held  # its half, sharded
    _assert_close_runs(_outputs(tmp_path, "one"), _outputs(tmp_path, "two"), FSDP_WEIGHT_TOL)


@pytest.mark.slow
def test_a_checkpoint_moves_between_one_process_and_two_fsdp_processes(tmp_path, tiny_models):
    """1 process to step 6 (checkpoint at 4), 2 sharded processes from 4 to 10 (checkpoint at 8), 1
    process from 8 to the end (13 steps, one epoch): the same student as an uninterrupted
    one-process run. With every term: the hidden term's projections are sharded too, and the
    balance term calls the sharded student outside the training forward."""
    done = _launch(_config(tmp_path, tiny_models, "one", ALL_TERMS, sharding="fsdp", epochs=1), "run", 1)
    assert done.returncode == 0, _errors(done)
    resumed = _config(tmp_path, tiny_models, "resumed", ALL_TERMS, sharding="fsdp", epochs=1)
    for mode, processes, steps in (("crash-at-6", 1, 6), ("resume-crash-at-10", 2, 10)):
        crashed = _launch(resumed, mode, processes)
        assert crashed.returncode != 0 and f"stopped after {steps} steps" in crashed.stderr, _errors(crashed)
    done = _launch(resumed, "resume", 1)
    assert done.returncode == 0, _errors(done)
    _assert_close_runs(_outputs(tmp_path, "one"), _outputs(tmp_path, "resumed"), FSDP_WEIGHT_TOL)
    projections = [load_file(tmp_path / "runs" / name / "students" / "distilled-seed0.objective.safetensors")
                   for name in ("one", "resumed")]
    assert sorted(projections[0]) == sorted(projections[1]) and projections[0]
    assert all((projections[0][k] - projections[1][k]).abs().max() <= FSDP_WEIGHT_TOL for k in projections[0])


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
    from kdistill.train.loop import _accelerator

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


def test_an_accelerate_fsdp_launch_is_pointed_to_training_sharding(monkeypatch):
    from kdistill import distributed
    from kdistill.errors import KdistillError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(KdistillError, match="set `training.sharding: fsdp` in the run's config and launch with DDP"):
        distributed.barrier()


def test_fsdp_shards_each_transformer_block_of_an_encoder_and_a_causal_lm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from kdistill.distributed import transformer_blocks

    encoder = AutoModelForSequenceClassification.from_pretrained(tiny_models["encoder"], num_labels=2)
    lm = AutoModelForCausalLM.from_pretrained(tiny_models["lm"])
    for model in (encoder, lm):
        blocks = transformer_blocks(model)
        assert len(blocks) == model.config.num_hidden_layers > 0
        assert all(type(b).__name__ in model._no_split_modules for b in blocks)


def test_fsdp_refuses_fp16_with_the_setting_and_the_fix():
    from kdistill.config import TrainingConfig
    from kdistill.errors import KdistillError

    with pytest.raises(KdistillError, match="training.sharding: fsdp does not train in fp16.*bf16"):
        TrainingConfig(sharding="fsdp", mixed_precision="fp16")
    TrainingConfig(sharding="fsdp", mixed_precision="bf16")
