"""Damaged files are found before they are used: checkpoint steps (resume falls back to the newest intact one),
saved students (never evaluated, exported or predicted with; a resumed run trains them again) and the teacher
cache (verify names each damaged shard; elicitation asks the teacher for exactly those again)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from kdistill import api
from kdistill.cache import cache_repair, cache_verify
from kdistill.config import TrainingConfig
from kdistill.data import prepare_data
from kdistill.errors import KdistillError
from kdistill.losses.objective import Objective
from kdistill.models import load_label_model
from kdistill.recipes.common import finished
from kdistill.targets import TeacherTargets
from kdistill.train import loop
from kdistill.train.loop import StopTraining, Trainer


def flip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def delete(path):
    path.unlink()


DAMAGE = {"flip": flip, "truncate": truncate, "delete": delete}
# (file of the newest checkpoint step, how it is damaged): 14 kinds
CHECKPOINT_DAMAGE = [(name, how) for name in ("model.safetensors", "best.safetensors", "optimizer.pt", "rng.pt",
                                              "scheduler.pt", "state.json") for how in ("flip", "truncate")]
CHECKPOINT_DAMAGE += [("optimizer.pt", "delete"), ("checksums.json", "delete")]


# ------------------------------------------------------------------------------------------------
# checkpoints


@pytest.fixture(scope="module")
def training(tmp_path_factory, tiny_models):
    """A trainer's inputs, the uninterrupted result, and the checkpoints of a run stopped at step 9."""
    from conftest import tiny_config_dict
    from kdistill.config import RunConfig, from_dict

    root = tmp_path_factory.mktemp("damage")
    cfg = from_dict(RunConfig, tiny_config_dict(root, tiny_models))
    data = prepare_data(cfg.data, cfg.task)
    data.train, data.validation = data.train[:48], data.validation[:16]  # 6 steps an epoch: a quick resume
    ids = [e.id for e in data.train]
    targets = TeacherTargets(ids, torch.randn(len(ids), 2, generator=torch.Generator().manual_seed(1)).log_softmax(-1))

    def trainer(folder):
        torch.manual_seed(0)
        student = load_label_model(cfg.student, cfg.task)
        train_cfg = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, checkpoint_every_steps=2,
                                   eval_every_steps=2, early_stopping_patience=0)
        objective = Objective(cfg.objective, hidden_targets=[], student_width=student.hidden_size)
        return student, Trainer(student, train_examples=data.train, val_examples=data.validation, targets=targets,
                                label_prior=torch.tensor([0.5, 0.5]), objective=objective, cfg=train_cfg, seed=3,
                                checkpoint_dir=folder, progress=False)

    student, straight = trainer(root / "straight")
    straight.run()
    reference = {k: v.clone() for k, v in student.module.state_dict().items()}
    _, crashing = trainer(root / "crashed")
    with pytest.raises(StopTraining):
        crashing.run(stop_after_steps=9)
    steps = sorted(p.name for p in (root / "crashed").glob("step-*"))
    assert steps == ["step-0000006", "step-0000008"]  # keep_checkpoints: 2 by default
    return trainer, reference, root / "crashed"


def _resume(trainer, folder, monkeypatch):
    """Resume from ``folder``; returns the student's weights and the steps it loaded."""
    loaded = []
    real = loop.load_checkpoint
    monkeypatch.setattr(loop, "load_checkpoint", lambda t, path: loaded.append(path.name) or real(t, path))
    student, resumed = trainer(folder)
    resumed.run(resume=True)
    return student.module.state_dict(), loaded


@pytest.mark.parametrize("name,how", CHECKPOINT_DAMAGE, ids=[f"{h}-{n}" for n, h in CHECKPOINT_DAMAGE])
def test_a_damaged_newest_step_is_named_never_loaded_and_resume_falls_back(training, tmp_path, monkeypatch, caplog,
                                                                          name, how):
    trainer, reference, crashed = training
    folder = tmp_path / "checkpoints"
    shutil.copytree(crashed, folder)
    DAMAGE[how](folder / "step-0000008" / name)
    with caplog.at_level(logging.WARNING):
        weights, loaded = _resume(trainer, folder, monkeypatch)
    assert loaded == ["step-0000006"]  # the damaged step was not loaded
    warned = [r.getMessage() for r in caplog.records if "step-0000008 is damaged" in r.getMessage()]
    assert len(warned) == 1 and (name in warned[0] or "checksums.json" in warned[0]), caplog.text
    for key, tensor in reference.items():
        assert torch.equal(tensor, weights[key]), key  # the same student as without the damage


def test_no_intact_step_is_a_clear_error_and_a_partial_step_is_removed(training, tmp_path, monkeypatch):
    trainer, _, crashed = training
    folder = tmp_path / "checkpoints"
    shutil.copytree(crashed, folder)
    partial = folder / ".step-0000009.x1y2.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    flip(folder / "step-0000006" / "model.safetensors")
    truncate(folder / "step-0000008" / "optimizer.pt")
    with pytest.raises(KdistillError, match=r"no intact checkpoint to resume from .*run without --resume"):
        _resume(trainer, folder, monkeypatch)
    assert not partial.exists()


# ------------------------------------------------------------------------------------------------
# saved students


STUDENT_DAMAGE = [("model.safetensors", "flip"), ("model.safetensors", "truncate"), ("tokenizer.json", "delete"),
                  ("config.json", "truncate"), ("kdistill.json", "flip"), ("checksums.json", "delete")]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models):
    from conftest import tiny_config_dict
    from kdistill.config import RunConfig, from_dict

    root = tmp_path_factory.mktemp("student")
    cfg = from_dict(RunConfig, tiny_config_dict(root, tiny_models, evaluation={"seeds": [0]}, training={"epochs": 1}))
    folder = api.train(cfg, variant="labels_only", seed=0, progress=False)
    return cfg, folder, (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("name,how", STUDENT_DAMAGE, ids=[f"{h}-{n}" for n, h in STUDENT_DAMAGE])
def test_a_damaged_student_is_never_used_and_names_the_file(saved, tmp_path, name, how):
    cfg, folder, _ = saved
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    DAMAGE[how](copy / name)
    with pytest.raises(KdistillError, match=rf"{copy}/{name} .*the student is not used"):
        api.predict(copy, ["great fun"])


def test_a_resumed_run_trains_a_damaged_student_again_to_the_same_weights(saved, caplog):
    cfg, folder, weights = saved
    flip(folder / "model.safetensors")
    with pytest.raises(KdistillError, match="model.safetensors fails its sha256 check"):
        api.evaluate(cfg, progress=False)  # before any model is scored
    with caplog.at_level(logging.WARNING):
        assert not finished(cfg, "labels_only", 0)
    assert "training this student again" in caplog.text
    api.train(cfg, variant="labels_only", seed=0, resume=True, progress=False)
    assert (folder / "model.safetensors").read_bytes() == weights and finished(cfg, "labels_only", 0)


# ------------------------------------------------------------------------------------------------
# the teacher cache


CACHE_DAMAGE = [("shard-00001.bin", "flip"), ("shard-00001.bin", "truncate"), ("shard-00001.bin", "delete"),
                ("shard-00001.json", "truncate"), ("shard-00001.json", "flip"), ("manifest.json", "truncate"),
                ("entry.json", "truncate"), ("manifest.json", "delete"), ("plan.json", "truncate")]


@pytest.fixture(scope="module")
def first_elicitation(tmp_path_factory, tiny_models):
    """The teacher's answers in 32-example shards, elicited once for every cache test."""
    from conftest import tiny_config_dict
    from kdistill.config import RunConfig, from_dict
    from kdistill.teachers import elicit as elicit_module

    root = tmp_path_factory.mktemp("cache")
    cfg = from_dict(RunConfig, tiny_config_dict(root, tiny_models, teacher={"recalibrate": "none", "calibrate": False}))
    defaults = elicit_module.elicit.__kwdefaults__
    elicit_module.elicit.__kwdefaults__ = {**defaults, "shard_size": 32}
    try:
        return cfg, api.elicit(cfg, progress=False).targets
    finally:
        elicit_module.elicit.__kwdefaults__ = defaults


@pytest.fixture
def elicited(first_elicitation, tmp_path, monkeypatch):
    """A copy of that run's teacher cache in a run of its own, and a list of each batch the teacher is asked."""
    from dataclasses import replace

    from kdistill.teachers import elicit as elicit_module

    first, reference = first_elicitation
    cfg = replace(first, output_dir=str(tmp_path / "runs"))
    shutil.copytree(first.run_dir / "teacher_cache", cfg.run_dir / "teacher_cache")
    monkeypatch.setattr(elicit_module.elicit, "__kwdefaults__", {**elicit_module.elicit.__kwdefaults__, "shard_size": 32})
    asked = []
    real = elicit_module.label_logprobs
    monkeypatch.setattr(elicit_module, "label_logprobs", lambda *a, **kw: asked.append(len(a[1])) or real(*a, **kw))
    entry = next((cfg.run_dir / "teacher_cache").glob("*/entry.json")).parent
    return cfg, reference, entry, asked


@pytest.mark.parametrize("name,how", CACHE_DAMAGE, ids=[f"{h}-{n}" for n, h in CACHE_DAMAGE])
def test_cache_damage_is_reported_by_name_and_only_the_damaged_shard_is_asked_again(elicited, name, how):
    cfg, reference, entry, asked = elicited
    path = entry / ("shards/" + name if name.startswith("shard") else name)
    DAMAGE[how](path)
    ok, text = cache_verify(cfg.run_dir / "teacher_cache")
    if name != "plan.json":  # the plan is a hint for a resumed elicitation, not part of the entry
        assert not ok and (name in text or "no manifest.json" in text), text
    again = api.elicit(cfg, progress=False).targets
    shard_asked = name.startswith("shard-00001")
    assert asked == ([32] if shard_asked else []), asked  # exactly the damaged shard, or nothing
    torch.testing.assert_close(again.rows(reference.ids), reference.values)
    assert cache_verify(cfg.run_dir / "teacher_cache")[0]


def test_cache_verify_repair_removes_the_damaged_shards_and_names_them(elicited):
    cfg, _, entry, _ = elicited
    flip(entry / "shards" / "shard-00002.bin")
    truncate(entry / "entry.json")
    assert cache_repair(cfg.run_dir / "teacher_cache") == [f"{entry.name}/shards/shard-00002"]
    assert not (entry / "shards" / "shard-00002.bin").exists()
    ok, text = cache_verify(cfg.run_dir / "teacher_cache")
    assert not ok and "entry.json" not in text  # written again; only the removed shard is missing
