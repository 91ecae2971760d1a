"""The generation recipe (summaries, answers): the teacher's targets, the students, evaluation
(generation_eval) and the report card. The student variants:

    sequence_kd   CE on the target texts alone: the teacher's written targets (sequence-level KD), or
                  the data's references (plain fine-tuning): the labels-only analogue
    distilled     CE + token-level KD on the same target tokens, from the teacher's cached top-k + tail (with
                  `teachers`, their per-token mixture), and the hidden term where objective.hidden asks for it

Both see only target tokens as targets; the prompt is context (see `losses.token_kd`). A student with another
tokenizer than the teacher's can only take sequence-level KD (objective.kd.weight: 0). kdistill.api calls
these with a RunConfig of one run.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill import distributed
from kdistill.config import CETerm, ObjectiveConfig, RunConfig
from kdistill.data.gen_data import GenData, format_generation_report, prepare_generation
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json
from kdistill.losses.objective import HiddenTarget, Objective
from kdistill.models import pick_device, resolve_model_path
from kdistill.models.generative import GenStudent, freeze_lower_layers, load_causal_lm
from kdistill.recipes.common import drop_checkpoints, export_best_student, finish_run, finished, report, write_run_start
from kdistill.recipes.generation_eval import GEN_VARIANTS, evaluate, variants
from kdistill.recipes.preflight import check_output, load_tokenizers
from kdistill.rundir import RunDir
from kdistill.targets import TeacherTargets
from kdistill.teachers.gen_hidden import generation_pool, hidden_inputs
from kdistill.teachers.generation import GenTargets, check_same_tokenizer, targets_for
from kdistill.train.loop import Trainer
from kdistill.train.token_steps import OnPolicy, TokenSteps
from kdistill.train.tracking import tensorboard_records

log = logging.getLogger(__name__)
__all__ = ["evaluate", "elicit", "report", "run", "train", "validate", "variants"]


def validate(cfg: RunConfig, *, check_models: bool = True) -> str:
    """Check the data and that the teachers' and student's tokenizers load (an ensemble's teachers share the
    first one's); write nothing."""
    text = format_generation_report(prepare_generation(cfg.data, cfg.task)) + "\n" + check_output(cfg)
    if check_models:
        loaded = load_tokenizers(cfg)
        for other in loaded[1:]:
            if other.key.startswith("teachers["):  # an ensemble mixes its teachers token by token
                check_same_tokenizer(loaded[0].tokenizer, other.tokenizer, other.model.display_name,
                                     teacher_name=cfg.teacher.display_name)
        for one in loaded:
            text += f"\n{one.role}: {one.model.model} -> {one.path} (tokenizer ok, {len(one.tokenizer)} tokens)"
    return text + "\nconfig ok"


def elicit(cfg: RunConfig, *, progress: bool = True, teachers: Any = None) -> GenTargets:
    """The teacher's token rows (and written targets), cached: of every split when the teacher writes the
    references, else of the training split. ``teachers``: the loaded teacher (module, tokenizer)."""
    return targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=progress, teacher=teachers)


def _objective(cfg: RunConfig, variant: str) -> ObjectiveConfig:
    if variant == "sequence_kd":
        return ObjectiveConfig(ce=CETerm(weight=1.0), kd=replace(cfg.objective.kd, weight=0.0))
    return cfg.objective


def train(cfg: RunConfig, *, variant: str = "distilled", seed: int | None = None, resume: bool = False,
          progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None,
          data: GenData | None = None, targets: GenTargets | None = None) -> Path:
    """Train one generative student variant with one seed; returns its saved folder. ``labels_only`` (the
    label recipe's name for the baseline) means ``sequence_kd`` here."""
    variant = "sequence_kd" if variant == "labels_only" else variant
    if variant not in GEN_VARIANTS:
        raise KdistillError(f"unknown variant {variant!r} for a generation task; choose one of {', '.join(GEN_VARIANTS)}.")
    seed = cfg.evaluation.seeds[0] if seed is None else seed
    if resume and finished(cfg, variant, seed):
        return cfg.paths.student(variant, seed)
    data = data or prepare_generation(cfg.data, cfg.task)
    targets = targets or targets_for(cfg, data, progress=progress)
    objective_cfg = _objective(cfg, variant)
    if objective_cfg.kd.weight > 0 and not targets.token_rows:  # teacher.endpoint.tokenizer_mismatch: sequence_kd
        log.warning("%s: the served teacher gave no per-token rows (its tokenizer differs); training on its written "
                    "targets alone", variant)
        objective_cfg = replace(objective_cfg, kd=replace(objective_cfg.kd, weight=0.0))
    # before the seed: a teacher loaded for its states must not move the projections' initialization
    hidden_targets, teacher_hidden = _hidden_inputs(cfg, objective_cfg, data, targets, progress=progress)
    torch.manual_seed(seed)
    module, tokenizer = load_causal_lm(cfg.student, pick_device(cfg.training.device))
    module.train()
    trainable, total = freeze_lower_layers(module, cfg.training.trainable_layers)
    log.info("%s student: %d of %d parameters train", variant, trainable, total)
    student = GenStudent(module, tokenizer, max_length=cfg.student.max_length, name=cfg.student.model)
    if objective_cfg.kd.weight > 0 and not cfg.teacher.is_endpoint:  # a served teacher's rows are along our tokens
        from transformers import AutoTokenizer

        teacher_tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.teacher.model), revision=cfg.teacher.revision)
        check_same_tokenizer(teacher_tok, tokenizer, cfg.student.model)
    val = data.validation if cfg.task.targets == "teacher" else [e for e in data.validation if e.target]
    on_policy = _on_policy(cfg, seed, tokenizer) if objective_cfg.kd.weight > 0 else None
    objective = Objective(objective_cfg, hidden_targets=hidden_targets, student_width=module.config.hidden_size)
    steps = TokenSteps(student, objective, template=cfg.task.prompt_template, target_of=targets.target,
                       teacher_rows=targets.rows if objective_cfg.kd.weight > 0 else None,
                       batch_size=cfg.student.batch_size, mixed_precision=cfg.training.mixed_precision,
                       on_policy=on_policy, select_by=cfg.training.select_by, max_new_tokens=cfg.task.max_new_tokens,
                       stop=tuple(cfg.task.stop), novel_token_weight=cfg.training.novel_token_weight,
                       teacher_hidden=teacher_hidden, pool=generation_pool(cfg))
    records = (tensorboard_records(cfg.paths.tensorboard(variant, seed), resume=resume, then=on_record)
               if cfg.training.tensorboard and distributed.is_main() else contextlib.nullcontext(on_record))
    with records as record:
        trainer = Trainer(student, train_examples=data.train, val_examples=val, objective=objective,
                          cfg=cfg.training, seed=seed, checkpoint_dir=cfg.paths.checkpoints(variant, seed),
                          progress=progress, on_record=record, steps=steps,
                          desc=f"training {variant} seed {seed}")
        result = trainer.run(resume=resume)
    out = cfg.paths.student(variant, seed)
    if distributed.is_main():
        _save_student(out, student, cfg, variant, seed, result, hidden_targets)
    distributed.barrier()
    drop_checkpoints(cfg, variant, seed)
    return out


def _hidden_inputs(cfg: RunConfig, objective_cfg: ObjectiveConfig, data: GenData, targets: GenTargets, *,
                   progress: bool) -> tuple[list[HiddenTarget], list[TeacherTargets] | None]:
    """The hidden term's teachers (layer pairs, width) and their pooled states, where the objective has the term."""
    if objective_cfg.hidden.weight <= 0:
        return [], None
    from transformers import AutoConfig

    student = AutoConfig.from_pretrained(resolve_model_path(cfg.student.model), revision=cfg.student.revision,
                                         trust_remote_code=cfg.student.trust_remote_code).get_text_config()
    return hidden_inputs(cfg, data.train, targets, int(student.num_hidden_layers), progress=progress)


def _on_policy(cfg: RunConfig, seed: int, tokenizer) -> OnPolicy | None:
    """GKD's mixing, where training.on_policy_fraction asks for it: the teacher stays in memory."""
    if cfg.training.on_policy_fraction <= 0:
        return None
    teacher_module, _ = load_causal_lm(cfg.teacher, pick_device(cfg.training.device))
    return OnPolicy(teacher_module, fraction=cfg.training.on_policy_fraction,
                    temperature=cfg.training.on_policy_temperature, seed=seed, k=cfg.teacher.token_top_k,
                    max_new_tokens=cfg.task.max_new_tokens, stop=tuple(cfg.task.stop), eos_id=tokenizer.eos_token_id)


def _save_student(out: Path, student: GenStudent, cfg: RunConfig, variant: str, seed: int, result: Any,
                  hidden_targets: list[HiddenTarget]) -> None:
    student.save(out)
    state = result.state
    # the validation record of the kept weights: its target CE (and ROUGE-L, copy rate) whichever selected them
    kept = next((r for r in state.history if r["step"] == state.best_step and "val_target_ce" in r), {})
    atomic_write_json(RunDir.beside(out, "training.json"), {
        "variant": variant, "seed": seed, "seconds": result.seconds, "steps": state.global_step,
        "select_by": cfg.training.select_by, "best_step": state.best_step, "best_val_score": state.best_metric,
        **{f"best_{key}": kept.get(key) for key in ("val_target_ce", "val_rouge_l", "val_copy_rate_2")},
        "stopped_early": state.stopped_early, "history": state.history,
        **({"layer_pairs": {t.teacher: t.pairs for t in hidden_targets}} if hidden_targets else {})})


def run(cfg: RunConfig, *, resume: bool = False, progress: bool = True, init_dir: Path | None = None,
        **_stage_options: Any) -> Path:
    """Data, teacher targets, every variant and seed, evaluation, report, the best student exported."""
    if init_dir is not None:
        raise KdistillError("multi-stage runs carry label-space students; a generation task cannot be a stage yet.")
    start = time.perf_counter()
    data = prepare_generation(cfg.data, cfg.task)  # a bad record stops the run here, before anything is written
    write_run_start(cfg, data.splits())
    timings = {}
    t = time.perf_counter()
    targets = targets_for(cfg, data, progress=progress)
    gc.collect()
    timings["elicit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for seed in cfg.evaluation.seeds:
        for variant in variants(cfg):
            train(cfg, variant=variant, seed=seed, data=data, targets=targets, resume=resume, progress=progress)
    timings["train_s"] = time.perf_counter() - t
    # runs/<name>/student: the seed of the strongest variant with the best validation score (training.select_by)
    return finish_run(cfg, timings, start,
                      evaluate_fn=lambda: evaluate(cfg, data=data, targets=targets, progress=progress),
                      export_fn=lambda: export_best_student(cfg, variants(cfg)[-1], "best_val_score"),
                      report_fn=lambda: report(cfg))
