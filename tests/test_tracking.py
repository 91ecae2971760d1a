"""TensorBoard logs of training: every history record is there, read back as TensorBoard reads it, and a
resumed run shows each step once."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdistill import api


class Crash(Exception):
    pass


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _history_scalars(run_dir, name: str) -> dict[str, list[tuple[int, float]]]:
    history = json.loads((run_dir / "students" / f"{name}.training.json").read_text())["history"]
    tags: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for key, value in record.items():
            if key not in ("step", "epoch"):
                tags.setdefault(key, []).append((record["step"], pytest.approx(value, rel=1e-6)))
    return tags


def test_every_record_is_logged_and_a_resumed_run_logs_each_step_once(tiny_config):
    cfg = tiny_config(objective={"balance": {"weight": 0.1}}, evaluation={"seeds": [0]})
    seen = []

    def crash_at_step_20(record):
        seen.append(record)
        if record["step"] == 20:  # after step 15's checkpoint, so the resumed run logs steps 16-20 again
            raise Crash

    with pytest.raises(Crash):
        api.train(cfg, variant="distilled", seed=0, progress=False, on_record=crash_at_step_20)
    api.train(cfg, variant="distilled", seed=0, resume=True, progress=False, on_record=seen.append)
    log_dir = cfg.run_dir / "tensorboard" / "distilled-seed0"
    scalars = _scalars(log_dir)
    assert {"train_ce", "train_kd", "train_balance", "lr", "val_macro_f1"} <= set(scalars)
    assert scalars == _history_scalars(cfg.run_dir, "distilled-seed0")
    assert sum(r["step"] == 20 for r in seen) == 2, "the chained on_record saw step 20 before and after the crash"

    # a fresh run starts its logs over, as it does its checkpoints
    api.train(cfg, variant="distilled", seed=0, progress=False)
    assert _scalars(log_dir) == _history_scalars(cfg.run_dir, "distilled-seed0")


def test_tensorboard_off_writes_nothing(tiny_config):
    cfg = tiny_config(training={"epochs": 1, "tensorboard": False})
    api.train(cfg, variant="labels_only", seed=0, progress=False)
    assert not (cfg.run_dir / "tensorboard").exists()
