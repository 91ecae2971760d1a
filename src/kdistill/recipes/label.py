"""The label recipe (classification, multiple choice): the teacher's label distributions, the students
(labels-only and distilled, every seed), evaluation (label_eval) and the report card.

The student variants:

    labels_only   CE on the gold labels alone, with as many optimizer steps as the distilled student
    distilled     CE on the gold labels + KD on the teacher's distributions over the labels (and the hidden
                  and balance terms the objective names), on the labelled and the teacher-only examples

kdistill.api calls these with a RunConfig of one run (stages are composed by kdistill.recipes.stages).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from kdistill import distributed
from kdistill.cache.entry import TeacherCache
from kdistill.config import RunConfig, TeacherConfig
from kdistill.data import PreparedData, format_report, prepare_data
from kdistill.data.records import Example
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_bytes, atomic_write_json
from kdistill.losses.objective import HiddenTarget, Objective, layer_pairs
from kdistill.models import LabelModel, load_label_model, pick_device
from kdistill.recipes.common import (
    drop_checkpoints,
    export_best_student,
    finish_run,
    finished,
    label_prior,
    report,
    write_run_start,
)
from kdistill.recipes.label_eval import VARIANTS, evaluate
from kdistill.recipes.preflight import check_output, load_tokenizers
from kdistill.recipes.selection import needs_selection, select_pool, selected_data
from kdistill.rundir import RunDir
from kdistill.targets import TeacherTargets
from kdistill.teachers.elicit import cache_fields, elicit_hidden
from kdistill.teachers.signal import TeacherSignal, load_member, load_teachers, member_path, teacher_signal
from kdistill.train.loop import Trainer
from kdistill.train.stage_start import check_stage_dirs, init_student
from kdistill.train.tracking import tensorboard_records

log = logging.getLogger(__name__)
__all__ = ["evaluate", "elicit", "report", "run", "train", "validate", "variants"]


def variants(cfg: RunConfig) -> list[str]:
    """The variants this config trains: the labels-only baseline only where evaluation.baselines asks for it."""
    return [v for v in VARIANTS if v != "labels_only" or cfg.evaluation.baselines]


def prepared_data(cfg: RunConfig) -> PreparedData:
    return prepare_data(cfg.data, cfg.task)


def run_data(cfg: RunConfig) -> PreparedData:
    """The splits the students train on: under a teacher budget, the pool cut to the texts selection chose."""
    return selected_data(cfg, prepared_data(cfg))


def validate(cfg: RunConfig, *, check_models: bool = True) -> str:
    """Check the data and the verbalizers against the tokenizers; write nothing."""
    text = format_report(prepared_data(cfg)) + "\n" + check_output(cfg)
    if check_models:
        from kdistill.models.causal_lm import verbalizer_token_ids

        for loaded in load_tokenizers(cfg):
            model_cfg, fine_tuned = loaded.model, getattr(loaded.model, "finetune", False)  # then a classifier
            if (model_cfg.kind != "encoder" and not fine_tuned and cfg.task.verbalizers
                    and cfg.task.choice_scoring != "likelihood"):
                verbalizer_token_ids(loaded.tokenizer, [cfg.task.verbalizers[label] for label in cfg.task.labels],
                                     model_cfg.model)
            text += f"\n{loaded.role}: {model_cfg.model} -> {loaded.path} (tokenizer ok, {len(loaded.tokenizer)} tokens)"
        for t in cfg.members:
            if t.is_endpoint:
                text += f"\nteacher {t.display_name}: {t.model} at {t.endpoint.base_url} (not contacted by validate)"
    return text + "\nconfig ok"


def elicit(cfg: RunConfig, *, progress: bool = True, teachers: dict[str, LabelModel] | None = None) -> TeacherSignal:
    """Every teacher's label distributions for the train, validation and test splits, from the store or
    computed once, recalibrated, and combined when there are several."""
    return teacher_signal(cfg, run_data(cfg), progress=progress, models=teachers)


def _teacher_shape(cfg: RunConfig, data: PreparedData, member: TeacherConfig) -> tuple[int, int]:
    """(layers, width) of a teacher, from its config alone: the weights need not be loaded."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(member_path(cfg, data, member), revision=member.revision,
                                    trust_remote_code=member.trust_remote_code).get_text_config()
    return int(hf.num_hidden_layers), int(hf.hidden_size)


def teacher_hidden(cfg: RunConfig, data: PreparedData, member: TeacherConfig, teacher_layers: list[int], *,
                   progress: bool = True, teacher: LabelModel | None = None) -> TeacherTargets:
    """A teacher's pooled hidden states of ``teacher_layers`` for the training split, stored like its targets."""
    examples = data.train
    model = teacher or load_member(cfg, data, member, progress=progress)
    pool = model.default_pool if cfg.objective.hidden.pool == "auto" else cfg.objective.hidden.pool
    entry = TeacherCache(cfg.paths.teacher_cache).entry(cache_fields(
        member, model, member_path(cfg, data, member), examples, kind="vectors",
        shape=[len(teacher_layers), _teacher_shape(cfg, data, member)[1]], layers=teacher_layers, pool=pool))
    share = distributed.elicitation_share() if distributed.launched() else None  # split over processes
    return elicit_hidden(model, examples, entry, layers=teacher_layers, pool=pool, batch_size=member.batch_size,
                         progress=progress, share=share)


def hidden_term_inputs(cfg: RunConfig, data: PreparedData, student: LabelModel, *, progress: bool = True,
                       teachers: dict[str, LabelModel] | None = None) -> tuple[list[HiddenTarget], list[TeacherTargets]]:
    """For each teacher the hidden term aligns with: its layer pairs and width, and its pooled states."""
    targets, states = [], []
    for member in cfg.hidden_teachers:
        num_layers, width = _teacher_shape(cfg, data, member)
        pairs = layer_pairs(cfg.objective.hidden.layers, student.num_layers, num_layers)
        targets.append(HiddenTarget(member.display_name, pairs, width))
        states.append(teacher_hidden(cfg, data, member, [t for _, t in pairs], progress=progress,
                                     teacher=(teachers or {}).get(member.display_name)))
    return targets, states


def train(cfg: RunConfig, *, variant: str = "distilled", seed: int | None = None, resume: bool = False,
          progress: bool = True, targets: TeacherTargets | None = None,
          teachers: dict[str, LabelModel] | None = None,
          on_record: Callable[[dict[str, Any]], None] | None = None, init_from: Path | None = None,
          optimizer_from: Path | None = None, save_optimizer: bool = False,
          data: PreparedData | None = None) -> Path:
    """Train one student variant with one seed; returns the saved student folder. ``on_record`` sees
    each training-history record as it is made (see `Trainer`). Multi-stage runs: ``init_from`` is
    the previous stage's student to start from, ``optimizer_from`` its saved optimizer state to carry
    on, and ``save_optimizer`` keeps this student's optimizer state for the next stage. ``data``: the
    prepared splits to use instead of the config's (a search trains on a subsample)."""
    if variant not in VARIANTS:
        raise KdistillError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    seed = cfg.evaluation.seeds[0] if seed is None else seed
    if resume and finished(cfg, variant, seed):
        return cfg.paths.student(variant, seed)
    data = data or run_data(cfg)
    objective_cfg = cfg.objective.labels_only() if variant == "labels_only" else cfg.objective
    cfg, train_examples, labelled_ids, max_steps = _training_set(cfg, data, variant)
    needs_targets = objective_cfg.needs_teacher or labelled_ids is not None
    if needs_targets and targets is None:
        if teachers is None:
            with distributed.main_first():  # a teacher kdistill fine-tunes is fine-tuned once, by the main process
                teachers = load_teachers(cfg, data, progress=progress)
        targets = teacher_signal(cfg, data, progress=progress, models=teachers).targets
    torch.manual_seed(seed)  # the new head's and the projections' initialization depend on the seed
    device = pick_device(cfg.training.device)
    if init_from is not None:
        student = init_student(init_from, cfg, device)
    else:
        student = load_label_model(cfg.student, cfg.task, device=device)
    hidden_targets, hidden = [], None
    if objective_cfg.hidden.weight > 0:
        hidden_targets, hidden = hidden_term_inputs(cfg, data, student, progress=progress, teachers=teachers)
    objective = Objective(objective_cfg, hidden_targets=hidden_targets, student_width=student.hidden_size)
    ids = [e.id for e in train_examples]
    records = (tensorboard_records(cfg.paths.tensorboard(variant, seed), resume=resume, then=on_record)
               if cfg.training.tensorboard and distributed.is_main() else contextlib.nullcontext(on_record))
    with records as record:  # the TensorBoard writer is closed (flushed) even if training fails
        trainer = Trainer(student, train_examples=train_examples, val_examples=data.validation, objective=objective,
                          targets=targets.subset(ids) if needs_targets else None,
                          teacher_hidden=[h.subset(ids) for h in hidden] if hidden else None,
                          label_prior=label_prior(cfg, data), cfg=cfg.training, seed=seed, labelled_ids=labelled_ids,
                          checkpoint_dir=cfg.paths.checkpoints(variant, seed), progress=progress,
                          on_record=record, desc=f"training {variant} seed {seed}", max_steps=max_steps)
        if optimizer_from is not None and not resume:
            carried, total = trainer.carry_optimizer_state(load_file(optimizer_from))
            log.info("carried the optimizer state of %d of %d parameters from %s", carried, total, optimizer_from)
        result = trainer.run(resume=resume)
    out = cfg.paths.student(variant, seed)
    if distributed.is_main():  # every process holds the same student; one saves it
        _save_student(out, student, objective, trainer, result, save_optimizer=save_optimizer,
                      variant=variant, seed=seed, hidden_targets=hidden_targets)
    distributed.barrier()
    drop_checkpoints(cfg, variant, seed)
    return out


def _training_set(cfg: RunConfig, data: PreparedData,
                  variant: str) -> tuple[RunConfig, list[Example], set[str] | None, int | None]:
    """What ``variant`` trains on, which of it has gold labels (None: all), and its optimizer-step cap. With a
    transfer set (data.num_labelled, data.unlabeled), only the distilled student sees the teacher-only texts;
    the labels-only baseline cycles its smaller set for exactly as many optimizer steps as the distilled
    student takes (its cfg's epochs, rounded up, then capped), so neither side wins by training longer.
    Under a teacher budget, both take the steps of the whole pool: the budget limits what the teacher is
    asked, not how long the student trains (at 50 % of the pool, half the steps cost the default job's
    student 4 points; see docs/choices.md)."""
    if data.labelled_train is None:
        return cfg, data.train, None, None
    training = cfg.training
    epoch_steps = math.ceil((data.unbudgeted_train or len(data.train)) / training.batch_size)
    steps = epoch_steps * training.epochs
    examples = data.labelled_train if variant == "labels_only" else data.train
    labelled_ids = None if variant == "labels_only" else {e.id for e in data.labelled_train}
    if variant != "labels_only" and data.unbudgeted_train is None:
        return cfg, examples, labelled_ids, None
    epochs = math.ceil(steps / math.ceil(len(examples) / training.batch_size))
    # validated at the whole training set's epoch ends, not after each of a smaller set's short epochs: the
    # same validations at the same steps, so early stopping's patience means the same for every student
    eval_every = training.eval_every_steps or epoch_steps
    training = replace(training, epochs=epochs, eval_every_steps=eval_every)
    return replace(cfg, training=training), examples, labelled_ids, steps


def _save_student(out: Path, student: LabelModel, objective: Objective, trainer: Trainer, result: Any, *,
                  save_optimizer: bool, variant: str, seed: int, hidden_targets: list[HiddenTarget]) -> None:
    student.save(out)
    if save_optimizer:
        atomic_write_bytes(RunDir.beside(out, "optimizer.safetensors"), save_safetensors(trainer.optimizer_state_by_name()))
    if len(objective.state_dict()):  # the projections belong to the run, not to the exported student
        atomic_write_bytes(RunDir.beside(out, "objective.safetensors"),
                           save_safetensors({k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}))
    atomic_write_json(RunDir.beside(out, "training.json"), {
        "variant": variant, "seed": seed, "seconds": result.seconds, "steps": result.state.global_step,
        "best_step": result.state.best_step, "best_val_macro_f1": result.state.best_metric,
        "stopped_early": result.state.stopped_early, "layer_pairs": {t.teacher: t.pairs for t in hidden_targets} or None,
        "history": result.state.history})


def run(cfg: RunConfig, *, resume: bool = False, progress: bool = True, init_dir: Path | None = None,
        carry_optimizer: bool = False, save_optimizer: bool = False) -> Path:
    """The whole run: data, elicitation, every student variant and seed, evaluation, report.

    Within a multi-stage run, ``init_dir`` is the previous stage's run directory, whose students this
    stage's start from; ``carry_optimizer`` carries their optimizer state, ``save_optimizer`` keeps this
    stage's for the next."""
    start = time.perf_counter()
    data = prepared_data(cfg)  # a bad row stops the run here, before anything is written
    write_run_start(cfg, data.splits())
    timings = {}
    t = time.perf_counter()
    with distributed.main_first():  # a teacher kdistill fine-tunes is fine-tuned once, by the main process
        teachers = load_teachers(cfg, data, progress=progress)
    if needs_selection(cfg, data):  # a teacher budget: the pool texts to ask about are chosen first
        data = select_pool(cfg, data, teachers, resume=resume, progress=progress)
        timings["select_s"] = time.perf_counter() - t
    targets = teacher_signal(cfg, data, progress=progress, models=teachers).targets  # shards split over processes
    timings["elicit_s"] = time.perf_counter() - t - timings.get("select_s", 0.0)
    t = time.perf_counter()
    for seed in cfg.evaluation.seeds:
        for variant in variants(cfg):
            init_from = check_stage_dirs(init_dir, variant, seed) if init_dir is not None else None
            train(cfg, variant=variant, seed=seed, resume=resume, progress=progress, targets=targets,
                  teachers=teachers, init_from=init_from, save_optimizer=save_optimizer, data=data,
                  optimizer_from=RunDir.beside(init_from, "optimizer.safetensors") if carry_optimizer and init_from else None)
    timings["train_s"] = time.perf_counter() - t
    held = {"teachers": teachers}  # evaluation takes the teachers, so they are freed once it is done
    del teachers
    return finish_run(cfg, timings, start, evaluate_fn=lambda: evaluate(cfg, progress=progress,
                                                                         teachers=held.pop("teachers")),
                      export_fn=lambda: export_best_student(cfg, "distilled", "best_val_macro_f1"),
                      report_fn=lambda: report(cfg))


