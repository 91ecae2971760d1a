"""A teacher budget (teacher.budget): which pool texts the teacher is asked about, chosen in rounds.

Round r trains a student (the config's, on its first evaluation seed, with the run's objective) on the
labelled texts plus the pool texts the teacher has answered so far; picks budget / rounds of the pool texts
not yet asked (`kdistill.train.selection`: a seeded random draw, the default; the student's most uncertain
texts, spread over k-means clusters; or the most typical text of each cluster); and asks the teacher about
them. Under random selection the round's student only draws the card's curve of quality against teacher
calls. After the last round the run goes on as without a budget, on the labelled texts plus the chosen
ones (`PreparedData.with_selection`).

Each round is recorded atomically in selection/rounds.json, under a key of everything that decides the
choice, so `--resume` reuses the rounds done and a killed run chooses the same texts. Each round's texts
are their own teacher-cache entry (`teachers.signal.elicited_parts`): no text is ever asked twice.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from typing import Any

import torch

from kdistill import distributed
from kdistill.cache import fingerprint
from kdistill.checksums import read_json
from kdistill.config import RunConfig, to_dict
from kdistill.data import Example, PreparedData
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json
from kdistill.losses.objective import Objective
from kdistill.models import LabelModel, load_label_model, pick_device
from kdistill.recipes.common import label_prior, read_training
from kdistill.targets import TeacherTargets
from kdistill.teachers.signal import teacher_signal
from kdistill.train.loop import Trainer
from kdistill.train.selection import (
    pick_active,
    pick_random,
    pick_typical,
    predictive_entropy,
    round_sizes,
    student_view,
)

log = logging.getLogger(__name__)


def needs_selection(cfg: RunConfig, data: PreparedData) -> bool:
    """A budget smaller than the pool; a budget that covers the pool asks about all of it, as without one."""
    return cfg.teacher.budget is not None and cfg.teacher.budget < len(data.pool)


def selection_key(cfg: RunConfig, data: PreparedData) -> str:
    """Everything that decides which texts the rounds choose; a recorded round under another key is not reused."""
    training = {k: v for k, v in to_dict(cfg.training).items() if k not in ("tensorboard", "keep_finished_checkpoints")}
    return fingerprint({"budget": cfg.teacher.budget, "selection": to_dict(cfg.teacher.selection),
                        "teachers": [to_dict(m) for m in cfg.members], "ensemble": to_dict(cfg.ensemble),
                        "task": to_dict(cfg.task), "student": to_dict(cfg.student), "objective": to_dict(cfg.objective),
                        "training": training, "seed": cfg.evaluation.seeds[0],
                        "data": fingerprint([(e.id, e.text, e.label) for e in data.train + data.validation])})


def _read_record(cfg: RunConfig) -> dict[str, Any] | None:
    path = cfg.paths.selection_rounds
    return read_json(path, "delete it, and run again to choose the texts again.") if path.exists() else None


def selected_data(cfg: RunConfig, data: PreparedData) -> PreparedData:
    """The splits a run trains and evaluates on: ``data``, or under a budget its pool cut to the recorded choice."""
    if not needs_selection(cfg, data):
        return data
    record = _read_record(cfg)
    if (record is None or record.get("key") != selection_key(cfg, data)
            or len(record["rounds"]) < cfg.teacher.selection.rounds):
        raise KdistillError(f"teacher.budget: {cfg.paths.selection_rounds} holds no finished selection for this "
                            "config; `kdistill run` (or `kdistill run --resume`) chooses the texts first.")
    return data.with_selection([r["chosen"] for r in record["rounds"]])


def select_pool(cfg: RunConfig, data: PreparedData, teachers: dict[str, LabelModel], *, resume: bool = False,
                progress: bool = True) -> PreparedData:
    """Run the selection rounds not yet recorded (all of them without ``resume``) and return the data cut to the
    chosen texts; ``data`` itself without a budget (nothing is trained, drawn or written then)."""
    if not needs_selection(cfg, data):
        return data
    key, selection = selection_key(cfg, data), cfg.teacher.selection
    record = _read_record(cfg) if resume else None
    if record is not None and record.get("key") != key:
        log.warning("%s was chosen under another config; choosing again", cfg.paths.selection_rounds)
        record = None
    if record is None and distributed.is_main():  # a round student's checkpoint of another choice must not resume
        shutil.rmtree(cfg.paths.selection_checkpoints(), ignore_errors=True)
    record = record or {"key": key, "strategy": selection.strategy, "budget": cfg.teacher.budget,
                        "pool": len(data.pool), "rounds": []}
    sizes = round_sizes(cfg.teacher.budget, selection.rounds)
    for number in range(len(record["rounds"]) + 1, selection.rounds + 1):
        record["rounds"].append(_round(cfg, data, teachers, [r["chosen"] for r in record["rounds"]],
                                       number, sizes[number - 1], resume=resume, progress=progress))
        if distributed.is_main():
            atomic_write_json(cfg.paths.selection_rounds, record)
            if not cfg.training.keep_finished_checkpoints:  # the round is recorded: its student is not needed again
                shutil.rmtree(cfg.paths.selection_checkpoints(number), ignore_errors=True)
        log.info("selection round %d of %d: %d texts chosen (%s)", number, selection.rounds, sizes[number - 1],
                 selection.strategy)
    return data.with_selection([r["chosen"] for r in record["rounds"]])


def _round(cfg: RunConfig, data: PreparedData, teachers: dict[str, LabelModel], rounds_done: list[list[str]],
           number: int, size: int, *, resume: bool, progress: bool) -> dict[str, Any]:
    """One round: a student on what the teacher has answered so far, then the next ``size`` pool texts."""
    start = time.perf_counter()
    so_far = data.with_selection(rounds_done)
    targets = teacher_signal(cfg, so_far, progress=progress, models=teachers).targets
    student, val_macro_f1 = _round_student(cfg, so_far, targets, number, resume=resume, progress=progress)
    asked = {i for ids in rounds_done for i in ids}
    candidates = [e for e in data.pool if e.id not in asked]
    chosen = _choose(cfg, student, candidates, size, number)
    texts = len(so_far.labelled) + len(so_far.validation) + len(so_far.test) + len(asked)
    return {"round": number, "trained_on": len(so_far.train), "teacher_texts": texts,
            "teacher_calls": texts * len(cfg.members), "val_macro_f1": val_macro_f1,
            "seconds": time.perf_counter() - start, "chosen": chosen}


def _round_student(cfg: RunConfig, data: PreparedData, targets: TeacherTargets, number: int, *, resume: bool,
                   progress: bool) -> tuple[LabelModel, float | None]:
    """The round's student and its best validation macro-F1. The objective is the run's less its hidden term:
    that term would need the teacher's hidden states of every round's texts, a second pass of the teacher."""
    seed = cfg.evaluation.seeds[0]
    objective_cfg = dataclasses.replace(cfg.objective, hidden=dataclasses.replace(cfg.objective.hidden, weight=0.0))
    torch.manual_seed(seed)  # the new head's initialization, as for the run's own students
    student = load_label_model(cfg.student, cfg.task, device=pick_device(cfg.training.device))
    ids = [e.id for e in data.train]
    trainer = Trainer(student, train_examples=data.train, val_examples=data.validation,
                      objective=Objective(objective_cfg, student_width=student.hidden_size),
                      targets=targets.subset(ids), label_prior=label_prior(cfg, data), cfg=cfg.training, seed=seed,
                      labelled_ids={e.id for e in data.labelled}, checkpoint_dir=cfg.paths.selection_checkpoints(number),
                      progress=progress, desc=f"selection round {number}: student")
    result = trainer.run(resume=resume)
    return student, result.state.best_metric


def _choose(cfg: RunConfig, student: LabelModel, candidates: list[Example], size: int, number: int) -> list[str]:
    """The ids of the ``size`` candidates the strategy picks, in pool order."""
    selection, seed = cfg.teacher.selection, cfg.evaluation.seeds[0]
    if selection.strategy == "random":
        picked = pick_random(len(candidates), size, seed=(seed, number))
    else:
        logits_nl, embeddings_nd = student_view(student, [e.text for e in candidates], batch_size=cfg.student.batch_size)
        if selection.strategy == "typical":
            picked = pick_typical(embeddings_nd, size, seed=seed + number)
        else:
            picked = pick_active(predictive_entropy(logits_nl), embeddings_nd, size, diversity=selection.diversity,
                                 seed=seed + number)
    return [candidates[i].id for i in picked]


def selection_results(cfg: RunConfig, data: PreparedData) -> dict[str, Any] | None:
    """results.json's `selection`: the budget, and per round the teacher calls so far and the round student's
    validation macro-F1; `final` is the distilled student of the first seed, trained on every chosen text."""
    if not needs_selection(cfg, data):
        return None
    record = _read_record(cfg)
    rounds = [{k: v for k, v in r.items() if k != "chosen"} | {"chosen": len(r["chosen"])} for r in record["rounds"]]
    texts = rounds[-1]["teacher_texts"] + rounds[-1]["chosen"]
    final = {"teacher_texts": texts, "teacher_calls": texts * len(cfg.members), "val_macro_f1": None}
    student = cfg.paths.student("distilled", cfg.evaluation.seeds[0])
    if student.exists():
        final["val_macro_f1"] = read_training(student).get("best_val_macro_f1")
    return {"budget": cfg.teacher.budget, "strategy": record["strategy"], "pool": record["pool"],
            "diversity": cfg.teacher.selection.diversity, "rounds": rounds, "final": final}
