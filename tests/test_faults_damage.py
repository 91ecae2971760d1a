"""Damaged files are found before they are used: checkpoint steps (resume falls back to the newest intact one),
saved students (never evaluated, exported or predicted with; a resumed run trains them again) and the teacher
cache (verify names each damaged shard; elicitation asks the teacher for exactly those again). The benches are
in damage_faults.py, which benchmarks/faults.py runs too."""

from __future__ import annotations

import logging
import shutil

import pytest

from damage_faults import (
    CACHE_KINDS,
    CHECKPOINT_KINDS,
    STUDENT_KINDS,
    CacheBench,
    CheckpointBench,
    StudentBench,
    flip,
    truncate,
)
from kdistill import api
from kdistill.cache import cache_repair, cache_verify
from kdistill.errors import KdistillError
from kdistill.recipes.common import finished


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_models):
    return CheckpointBench(tmp_path_factory.mktemp("checkpoints"), tiny_models)


@pytest.fixture(scope="module")
def students(tmp_path_factory, tiny_models):
    return StudentBench(tmp_path_factory.mktemp("students"), tiny_models)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_models):
    return CacheBench(tmp_path_factory.mktemp("cache"), tiny_models)


@pytest.mark.parametrize("name,how", CHECKPOINT_KINDS, ids=[f"{h}-{n}" for n, h in CHECKPOINT_KINDS])
def test_a_damaged_newest_step_is_named_never_loaded_and_resume_falls_back(checkpoints, tmp_path, name, how):
    outcome = checkpoints.run(name, how, tmp_path / "checkpoints")
    assert outcome.detected and not outcome.used, outcome.detail
    assert outcome.result_ok, "the resumed student differs from the undamaged one"


def test_no_intact_step_is_a_clear_error_and_a_partial_step_is_removed(checkpoints, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(checkpoints.crashed, folder)
    partial = folder / ".step-0000009.x1y2.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    flip(folder / "step-0000006" / "model.safetensors")
    truncate(folder / "step-0000008" / "optimizer.pt")
    with pytest.raises(KdistillError, match=r"no intact checkpoint to resume from .*run without --resume"):
        checkpoints.resume(folder)
    assert not partial.exists()


@pytest.mark.parametrize("name,how", STUDENT_KINDS, ids=[f"{h}-{n}" for n, h in STUDENT_KINDS])
def test_a_damaged_student_is_never_used_and_names_the_file(students, tmp_path, name, how):
    outcome = students.run(name, how, tmp_path)
    assert outcome.ok, outcome.detail


def test_a_resumed_run_trains_a_damaged_student_again_to_the_same_weights(students, caplog):
    cfg, folder = students.cfg, students.folder
    weights = (folder / "model.safetensors").read_bytes()
    flip(folder / "model.safetensors")
    with pytest.raises(KdistillError, match="model.safetensors fails its sha256 check"):
        api.evaluate(cfg, progress=False)  # before any model is scored
    with caplog.at_level(logging.WARNING):
        assert not finished(cfg, "labels_only", 0)
    assert "training this student again" in caplog.text
    api.train(cfg, variant="labels_only", seed=0, resume=True, progress=False)
    assert (folder / "model.safetensors").read_bytes() == weights and finished(cfg, "labels_only", 0)


@pytest.mark.parametrize("name,how", CACHE_KINDS, ids=[f"{h}-{n}" for n, h in CACHE_KINDS])
def test_cache_damage_is_reported_by_name_and_only_the_damaged_shard_is_asked_again(cache, tmp_path, name, how):
    outcome = cache.run(name, how, tmp_path)
    assert outcome.ok, outcome.detail


def test_cache_verify_repair_removes_the_damaged_shards_and_names_them(cache, tmp_path):
    root = tmp_path / "teacher_cache"
    shutil.copytree(cache.cfg.run_dir / "teacher_cache", root)
    entry = next(root.glob("*/entry.json")).parent
    flip(entry / "shards" / "shard-00002.bin")
    truncate(entry / "entry.json")
    assert cache_repair(root) == [f"{entry.name}/shards/shard-00002"]
    assert not (entry / "shards" / "shard-00002.bin").exists()
    ok, text = cache_verify(root)
    assert not ok and "entry.json" not in text  # written again; only the removed shard is missing
