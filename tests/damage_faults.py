"""Damaged files of the fault suite, shared by tests/test_faults_damage.py and benchmarks/faults.py.

Three benches, each set up once and then given one kind of damage at a time, in a copy:

- checkpoints: the newest step of a run stopped at step 9 is flipped, truncated or has a file deleted; a resume
  must name the file, never load that step, and train on from the step before to the undamaged student;
- saved students: a damaged student must never be loaded (predict names the file);
- the teacher cache: `cache verify` must name the damage, and elicitation must ask the teacher again for
  exactly the damaged shard and end with the same answers.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch


def flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def delete(path: Path) -> None:
    path.unlink()


DAMAGE = {"flip": flip, "truncate": truncate, "delete": delete}
CHECKPOINT_KINDS = [(name, how) for name in ("model.safetensors", "best.safetensors", "optimizer.pt", "rng.pt",
                                             "scheduler.pt", "state.json") for how in ("flip", "truncate")]
CHECKPOINT_KINDS += [("optimizer.pt", "delete"), ("checksums.json", "delete")]
STUDENT_KINDS = [("model.safetensors", "flip"), ("model.safetensors", "truncate"), ("tokenizer.json", "delete"),
                 ("config.json", "truncate"), ("kdistill.json", "flip"), ("checksums.json", "delete")]
CACHE_KINDS = [("shard-00001.bin", "flip"), ("shard-00001.bin", "truncate"), ("shard-00001.bin", "delete"),
               ("shard-00001.json", "truncate"), ("shard-00001.json", "flip"), ("manifest.json", "truncate"),
               ("entry.json", "truncate"), ("manifest.json", "delete"), ("plan.json", "truncate")]


@dataclass
class DamageOutcome:
    where: str
    kind: str
    detected: bool
    """Reported by name (a warning or an error that names the file)."""
    used: bool
    """The damaged file was loaded (or its answers read) anyway."""
    result_ok: bool
    """What came after is what it would have been without the damage (an error, where nothing can come)."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.detected and not self.used and self.result_ok


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class CheckpointBench:
    """A trainer on 48 examples (6 steps an epoch, a checkpoint and a validation every 2), its uninterrupted
    result, and the steps 6 and 8 a run stopped at step 9 kept."""

    def __init__(self, root: Path, models: dict[str, Path]) -> None:
        from conftest import tiny_config_dict
        from kdistill.config import RunConfig, from_dict
        from kdistill.data import prepare_data

        root.mkdir(parents=True, exist_ok=True)
        from kdistill.targets import TeacherTargets
        from kdistill.train.loop import StopTraining

        self.cfg = from_dict(RunConfig, tiny_config_dict(root, models))
        self.data = prepare_data(self.cfg.data, self.cfg.task)
        self.data.train, self.data.validation = self.data.train[:48], self.data.validation[:16]
        ids = [e.id for e in self.data.train]
        self.targets = TeacherTargets(ids, torch.randn(len(ids), 2, generator=torch.Generator().manual_seed(1))
                                      .log_softmax(-1))
        student, straight = self.trainer(root / "straight")
        straight.run()
        self.reference = {k: v.clone() for k, v in student.module.state_dict().items()}
        self.crashed = root / "crashed"
        try:
            self.trainer(self.crashed)[1].run(stop_after_steps=9)
        except StopTraining:
            pass
        assert sorted(p.name for p in self.crashed.glob("step-*")) == ["step-0000006", "step-0000008"]

    def trainer(self, folder: Path) -> tuple[Any, Any]:
        from kdistill.config import TrainingConfig
        from kdistill.losses.objective import Objective
        from kdistill.models import load_label_model
        from kdistill.train.loop import Trainer

        torch.manual_seed(0)
        student = load_label_model(self.cfg.student, self.cfg.task)
        train_cfg = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, checkpoint_every_steps=2,
                                   eval_every_steps=2, early_stopping_patience=0)
        objective = Objective(self.cfg.objective, hidden_targets=[], student_width=student.hidden_size)
        return student, Trainer(student, train_examples=self.data.train, val_examples=self.data.validation,
                                targets=self.targets, label_prior=torch.tensor([0.5, 0.5]), objective=objective,
                                cfg=train_cfg, seed=3, checkpoint_dir=folder, progress=False)

    def resume(self, folder: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
        """Resume from ``folder``: the student's weights, the steps loaded, and the warnings logged."""
        from kdistill.train import loop

        loaded, real, records = [], loop.load_checkpoint, _Records()
        logging.getLogger().addHandler(records)
        try:
            with mock.patch.object(loop, "load_checkpoint",
                                   lambda t, path: loaded.append(path.name) or real(t, path)):
                student, resumed = self.trainer(folder)
                resumed.run(resume=True)
        finally:
            logging.getLogger().removeHandler(records)
        return student.module.state_dict(), loaded, records.messages

    def run(self, name: str, how: str, folder: Path) -> DamageOutcome:
        shutil.copytree(self.crashed, folder)
        DAMAGE[how](folder / "step-0000008" / name)
        weights, loaded, warnings = self.resume(folder)
        named = [w for w in warnings if "step-0000008 is damaged" in w and (name in w or "checksums.json" in w)]
        same = all(torch.equal(tensor, weights[key]) for key, tensor in self.reference.items())
        return DamageOutcome("checkpoint", f"{how} {name}", bool(named), "step-0000008" in loaded, same,
                             named[0] if named else "; ".join(warnings))


class StudentBench:
    """One saved student (labels-only, one epoch)."""

    def __init__(self, root: Path, models: dict[str, Path]) -> None:
        from conftest import tiny_config_dict
        from kdistill import api
        from kdistill.config import RunConfig, from_dict

        root.mkdir(parents=True, exist_ok=True)
        self.cfg = from_dict(RunConfig, tiny_config_dict(root, models, evaluation={"seeds": [0]},
                                                         training={"epochs": 1}))
        self.folder = api.train(self.cfg, variant="labels_only", seed=0, progress=False)

    def run(self, name: str, how: str, folder: Path) -> DamageOutcome:
        from kdistill import api
        from kdistill.errors import KdistillError

        copy = folder / self.folder.name
        shutil.copytree(self.folder, copy)
        DAMAGE[how](copy / name)
        try:
            api.predict(copy, ["great fun"])
        except KdistillError as err:
            named = f"{copy}/{name}" in str(err) and "the student is not used" in str(err)
            return DamageOutcome("student", f"{how} {name}", named, False, True, str(err))
        return DamageOutcome("student", f"{how} {name}", False, True, False, "predict used the damaged student")


class CacheBench:
    """A teacher's answers in 32-example shards (5 shards), elicited once."""

    def __init__(self, root: Path, models: dict[str, Path]) -> None:
        from conftest import tiny_config_dict
        from kdistill import api
        from kdistill.config import RunConfig, from_dict

        root.mkdir(parents=True, exist_ok=True)
        self.cfg = from_dict(RunConfig, tiny_config_dict(root, models, teacher={"recalibrate": "none",
                                                                                "calibrate": False}))
        with self._small_shards():
            self.reference = api.elicit(self.cfg, progress=False).targets

    @staticmethod
    def _small_shards():
        from kdistill.teachers import elicit as elicit_module

        return mock.patch.object(elicit_module.elicit, "__kwdefaults__",
                                 {**elicit_module.elicit.__kwdefaults__, "shard_size": 32})

    def run(self, name: str, how: str, folder: Path) -> DamageOutcome:
        from kdistill import api
        from kdistill.cache import cache_verify
        from kdistill.teachers import elicit as elicit_module

        cfg = replace(self.cfg, output_dir=str(folder / "runs"))
        shutil.copytree(self.cfg.run_dir / "teacher_cache", cfg.run_dir / "teacher_cache")
        entry = next((cfg.run_dir / "teacher_cache").glob("*/entry.json")).parent
        DAMAGE[how](entry / ("shards/" + name if name.startswith("shard") else name))
        ok, text = cache_verify(cfg.run_dir / "teacher_cache")
        # the plan is a hint for a resumed elicitation, not part of the entry: rewritten, never reported
        named = name == "plan.json" or (not ok and (name in text or "no manifest.json" in text))
        asked, real = [], elicit_module.label_logprobs
        with self._small_shards(), mock.patch.object(elicit_module, "label_logprobs",
                                                     lambda *a, **kw: asked.append(len(a[1])) or real(*a, **kw)):
            again = api.elicit(cfg, progress=False).targets
        same = torch.equal(again.rows(self.reference.ids), self.reference.values) and cache_verify(
            cfg.run_dir / "teacher_cache")[0]
        expected = [32] if name.startswith("shard-00001") else []
        return DamageOutcome("cache", f"{how} {name}", named, False, same and asked == expected,
                             f"asked the teacher for {asked}, expected {expected}; {text.splitlines()[-1]}")
