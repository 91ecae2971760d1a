"""The pipeline as plain functions: validate, elicit, train, evaluate, report, run, predict.

Each takes a config (a RunConfig, a YAML path, or None for the built-in default job) and writes
into the run directory `<output_dir>/<name>/`. The CLI is a thin table over these functions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from kdistill import distributed
from kdistill.config import RunConfig, TeacherConfig, dump_yaml, load_config
from kdistill.data import Example, PreparedData, format_report, prepare_data
from kdistill.cache import TeacherCache
from kdistill.elicit import cache_fields, elicit_hidden
from kdistill.errors import KdistillError
from kdistill.evaluate import label_metrics, measure_cost, predict as predict_logits
from kdistill.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from kdistill.models import LabelModel, load_label_model, load_saved, pick_device, resolve_model_path
from kdistill.objective import HiddenTarget, Objective, layer_pairs
from kdistill.targets import TeacherTargets
from kdistill.stages import check_stage_dirs, init_student, report_stages, run_stages, stage_configs
from kdistill.teachers import TeacherSignal, load_member, member_path, teacher_signal
from kdistill.tracking import tensorboard_records
from kdistill.train import Trainer

log = logging.getLogger(__name__)

VARIANTS = {"labels_only": "student trained on hard labels only", "distilled": "distilled student"}
ConfigLike = RunConfig | str | Path | None


def _config(config: ConfigLike, overrides: dict[str, Any] | None = None) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_config(config, overrides)


def _single_run(cfg: RunConfig, command: str) -> RunConfig:
    """Commands other than run, validate and report work on one run, not on a config with stages."""
    if cfg.stages:
        raise KdistillError(f"`kdistill {command}` works on one run, and this config has {len(cfg.stages)} stages; "
                            f"use `kdistill run`, or point `{command}` at a stage's config "
                            f"({cfg.run_dir}/stages/<i>-<name>/config.yaml once the run has started).")
    return cfg


def _data(cfg: RunConfig) -> PreparedData:
    return prepare_data(cfg.data, cfg.task)


def validate(config: ConfigLike = None, *, check_models: bool = True) -> str:
    """Check a config, its data and the verbalizers against the tokenizers; write nothing."""
    cfg = _config(config)
    if cfg.task.kind == "generation":
        return _validate_generation(cfg, check_models)
    if cfg.stages:
        return "\n\n".join(f"stage {i}: {stage_cfg.name}\n" + validate(stage_cfg, check_models=check_models)
                           for i, stage_cfg in enumerate(stage_configs(cfg), 1))
    text = format_report(_data(cfg))
    if check_models:
        from transformers import AutoTokenizer

        from kdistill.models.causal_lm import verbalizer_token_ids

        roles = [(f"teacher {t.display_name}", t) for t in cfg.members if not t.finetune and not t.is_endpoint]
        roles.append(("student", cfg.student))
        for role, model_cfg in roles:
            path = resolve_model_path(model_cfg.model)
            tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.revision,
                                                      trust_remote_code=model_cfg.trust_remote_code)
            if model_cfg.kind != "encoder" and cfg.task.verbalizers and cfg.task.choice_scoring != "likelihood":
                verbalizer_token_ids(tokenizer, [cfg.task.verbalizers[label] for label in cfg.task.labels], model_cfg.model)
            text += f"\n{role}: {model_cfg.model} -> {path} (tokenizer ok, {len(tokenizer)} tokens)"
        for t in cfg.members:
            if t.is_endpoint:
                text += f"\nteacher {t.display_name}: {t.model} at {t.endpoint.base_url} (not contacted by validate)"
    return text + "\nconfig ok"


def _validate_generation(cfg: RunConfig, check_models: bool) -> str:
    from kdistill.data.gen_data import format_generation_report, prepare_generation

    text = format_generation_report(prepare_generation(cfg.data, cfg.task))
    if check_models:
        from transformers import AutoTokenizer

        for role, model_cfg in [("teacher", cfg.teacher), ("student", cfg.student)]:
            path = resolve_model_path(model_cfg.model)
            tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.revision,
                                                      trust_remote_code=model_cfg.trust_remote_code)
            text += f"\n{role}: {model_cfg.model} -> {path} (tokenizer ok, {len(tokenizer)} tokens)"
    return text + "\nconfig ok"


def load_teachers(cfg: RunConfig, data: PreparedData, *, progress: bool = True) -> dict[str, LabelModel]:
    """Every teacher of the run, by name (fine-tuned first where asked)."""
    return {t.display_name: load_member(cfg, data, t, progress=progress) for t in cfg.members}


def elicit(config: ConfigLike = None, *, progress: bool = True,
           teachers: dict[str, LabelModel] | None = None) -> TeacherSignal:
    """Every teacher's label distributions for the train, validation and test splits, from the store or
    computed once, recalibrated, and combined when there are several. A generation task returns the
    teacher's token rows (and written targets) instead: a ``gen_teacher.GenTargets``."""
    cfg = _single_run(_config(config), "elicit")
    if cfg.task.kind == "generation":
        from kdistill.gen_pipeline import _targets_for
        from kdistill.data.gen_data import prepare_generation

        return _targets_for(cfg, prepare_generation(cfg.data, cfg.task), progress=progress)
    return teacher_signal(cfg, _data(cfg), progress=progress, models=teachers)


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
    entry = TeacherCache(cfg.run_dir / "teacher_cache").entry(cache_fields(
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


def label_prior(cfg: RunConfig, data: PreparedData) -> torch.Tensor:
    """(L,) label shares among the labelled training examples: the balance term's default target."""
    counts = torch.zeros(len(cfg.task.labels))
    for e in data.labelled:
        counts[cfg.task.labels.index(e.label)] += 1
    return counts / counts.sum()


def _student_dir(cfg: RunConfig, variant: str, seed: int) -> Path:
    return cfg.run_dir / "students" / f"{variant}-seed{seed}"


def _optimizer_path(student_dir: Path) -> Path:
    """Where a student's final optimizer state is kept for a next stage that carries it."""
    return student_dir.parent / f"{student_dir.name}.optimizer.safetensors"


def train(config: ConfigLike = None, *, variant: str = "distilled", seed: int | None = None, resume: bool = False,
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
    cfg = _single_run(_config(config), "train")
    if cfg.task.kind == "generation":
        return _train_generation(cfg, variant, seed, resume, progress, on_record)
    if variant not in VARIANTS:
        raise KdistillError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    seed = cfg.evaluation.seeds[0] if seed is None else seed
    data = data or _data(cfg)
    objective_cfg = cfg.objective.labels_only() if variant == "labels_only" else cfg.objective
    train_examples, labelled_ids = data.train, None
    if data.labelled_train is not None:  # a transfer set: only the distilled student sees its text
        labelled_ids = {e.id for e in data.labelled_train}
        if variant == "labels_only":
            train_examples, labelled_ids = data.labelled_train, None
            # a fair baseline: as many optimizer steps as the distilled student, over its smaller set
            epochs = math.ceil(cfg.training.epochs * len(data.train) / len(data.labelled_train))
            cfg = replace(cfg, training=replace(cfg.training, epochs=epochs))
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
    records = (tensorboard_records(cfg.run_dir / "tensorboard" / f"{variant}-seed{seed}", resume=resume, then=on_record)
               if cfg.training.tensorboard and distributed.is_main() else contextlib.nullcontext(on_record))
    with records as record:  # the TensorBoard writer is closed (flushed) even if training fails
        trainer = Trainer(student, train_examples=train_examples, val_examples=data.validation, objective=objective,
                          targets=targets.subset(ids) if needs_targets else None,
                          teacher_hidden=[h.subset(ids) for h in hidden] if hidden else None,
                          label_prior=label_prior(cfg, data), cfg=cfg.training, seed=seed, labelled_ids=labelled_ids,
                          checkpoint_dir=cfg.run_dir / "checkpoints" / f"{variant}-seed{seed}", progress=progress,
                          on_record=record)
        if optimizer_from is not None and not resume:
            carried, total = trainer.carry_optimizer_state(load_file(optimizer_from))
            log.info("carried the optimizer state of %d of %d parameters from %s", carried, total, optimizer_from)
        result = trainer.run(resume=resume)
    out = _student_dir(cfg, variant, seed)
    if distributed.is_main():  # every process holds the same student; one saves it
        _save_student(out, student, objective, trainer, result, save_optimizer=save_optimizer,
                      variant=variant, seed=seed, hidden_targets=hidden_targets)
    distributed.barrier()
    return out


def _train_generation(cfg: RunConfig, variant: str, seed: int | None, resume: bool, progress: bool,
                      on_record: Callable[[dict[str, Any]], None] | None) -> Path:
    from kdistill.data.gen_data import prepare_generation
    from kdistill.gen_pipeline import _targets_for, train_generation

    variant = "sequence_kd" if variant == "labels_only" else variant
    data = prepare_generation(cfg.data, cfg.task)
    return train_generation(cfg, variant=variant, seed=cfg.evaluation.seeds[0] if seed is None else seed, data=data,
                            targets=_targets_for(cfg, data, progress=progress), resume=resume, progress=progress,
                            on_record=on_record)


def _save_student(out: Path, student: LabelModel, objective: Objective, trainer: Trainer, result: Any, *,
                  save_optimizer: bool, variant: str, seed: int, hidden_targets: list[HiddenTarget]) -> None:
    student.save(out)
    if save_optimizer:
        atomic_write_bytes(_optimizer_path(out), save_safetensors(trainer.optimizer_state_by_name()))
    if len(objective.state_dict()):  # the projections belong to the run, not to the exported student
        atomic_write_bytes(out.parent / f"{out.name}.objective.safetensors",
                           save_safetensors({k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}))
    atomic_write_json(out.parent / f"{out.name}.training.json", {
        "variant": variant, "seed": seed, "seconds": result.seconds, "steps": result.state.global_step,
        "best_step": result.state.best_step, "best_val_macro_f1": result.state.best_metric,
        "stopped_early": result.state.stopped_early, "layer_pairs": {t.teacher: t.pairs for t in hidden_targets} or None,
        "history": result.state.history})


def _metrics_for(model: LabelModel, examples: list[Example], cfg: RunConfig, teacher_pred: list[int],
                 progress: bool, desc: str) -> dict[str, Any]:
    logits = predict_logits(model, examples, batch_size=cfg.student.batch_size, desc=desc, progress=progress)
    gold = [cfg.task.labels.index(e.label) for e in examples]
    metrics = label_metrics(gold, logits.argmax(-1).tolist(), cfg.task.labels, teacher_pred)
    if metrics["collapse_warning"]:
        log.warning("%s: %s", desc, metrics["collapse_warning"])
    return metrics


def _cost(model: LabelModel, examples: list[Example], cfg: RunConfig, model_dir: str | Path | None) -> dict[str, Any]:
    ev = cfg.evaluation
    # an endpoint teacher is timed on real requests, not on answers read back from its journal
    with getattr(model, "fresh_requests", contextlib.nullcontext)():
        return measure_cost(model, examples, latency_examples=ev.latency_examples,
                            throughput_batch_size=ev.throughput_batch_size, throughput_batches=ev.throughput_batches,
                            warmup_batches=ev.warmup_batches, model_dir=model_dir)


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: {"mean": statistics.fmean(r[k] for r in runs),
                "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0} for k in keys}


def evaluate(config: ConfigLike = None, *, progress: bool = True,
             teachers: dict[str, LabelModel] | None = None) -> Path:
    """Score every teacher (and their ensemble), the untrained student and every trained student on the
    test split; cost of each."""
    cfg = _single_run(_config(config), "eval")
    if cfg.task.kind == "generation":
        from kdistill.data.gen_data import prepare_generation
        from kdistill.gen_pipeline import evaluate_generation

        return evaluate_generation(cfg, data=prepare_generation(cfg.data, cfg.task), progress=progress)
    data = _data(cfg)
    test = data.test
    gold = [cfg.task.labels.index(e.label) for e in test]
    teachers = teachers or load_teachers(cfg, data, progress=progress)
    signal = teacher_signal(cfg, data, progress=progress, models=teachers)
    test_ids = [e.id for e in test]
    teacher_pred = signal.targets.rows(test_ids).argmax(-1).tolist()
    members: dict[str, Any] = {}
    for member in cfg.members:
        name = member.display_name
        pred = signal.members[name].rows(test_ids).argmax(-1).tolist()
        entry = {"name": member.model, "metrics": label_metrics(gold, pred, cfg.task.labels),
                 "cost": _cost(teachers[name], test, cfg, member_path(cfg, data, member)),
                 "prompt": {"few_shot_per_label": member.few_shot_per_label, "finetuned": member.finetune,
                            "content_free_calibration": member.calibrate,
                            "recalibration": signal.info["members"][name]}}
        members["teacher" if len(cfg.members) == 1 else f"teacher:{name}"] = entry
    models: dict[str, Any] = {}
    if len(cfg.members) > 1:  # the ensemble is what the students learn from: "the teacher" of the report
        models["teacher"] = _ensemble_entry(cfg, members, label_metrics(gold, teacher_pred, cfg.task.labels),
                                            signal.info["ensemble"])
    models.update(members)
    del teachers
    gc.collect()
    if cfg.evaluation.baselines:
        torch.manual_seed(cfg.evaluation.seeds[0])
        untrained = load_label_model(cfg.student, cfg.task, device=pick_device(cfg.training.device))
        models["student_untrained"] = {"name": cfg.student.model,
                                       "metrics": _metrics_for(untrained, test, cfg, teacher_pred, progress, "untrained"),
                                       "cost": _cost(untrained, test, cfg, resolve_model_path(cfg.student.model))}
    for variant in VARIANTS:
        per_seed, cost, training = {}, None, {}
        for seed in cfg.evaluation.seeds:
            folder = _student_dir(cfg, variant, seed)
            if not folder.exists():
                continue
            student = load_saved(folder, device=pick_device(cfg.training.device))
            per_seed[seed] = _metrics_for(student, test, cfg, teacher_pred, progress, f"{variant} seed {seed}")
            training[seed] = {k: v for k, v in json.loads((folder.parent / f"{folder.name}.training.json")
                                                          .read_text()).items() if k != "history"}
            if cost is None:
                cost = _cost(student, test, cfg, folder)
        if per_seed:
            models[f"student_{variant}"] = {"name": cfg.student.model, "seeds": per_seed, "training": training,
                                            "summary": _mean_std(list(per_seed.values())), "cost": cost}
    results = {"run": cfg.name, "task": cfg.task.name, "labels": cfg.task.labels,
               "test_examples": len(test), "data": data.report, "models": models,
               "comparison": _comparison(models)}
    path = cfg.run_dir / "eval" / "results.json"
    atomic_write_json(path, results)
    return path


def _ensemble_entry(cfg: RunConfig, models: dict[str, Any], metrics: dict[str, Any],
                    info: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's row: its own metrics; its cost is every member's measured cost added up (one
    example goes through each member in turn), not a separate measurement."""
    costs = [models[f"teacher:{t.display_name}"]["cost"] for t in cfg.members]
    cost = {**costs[0], "parameters": sum(c["parameters"] for c in costs),
            "size_on_disk_bytes": sum(c["size_on_disk_bytes"] or 0 for c in costs) or None,
            "latency_p50_ms": sum(c["latency_p50_ms"] for c in costs),
            "latency_p95_ms": sum(c["latency_p95_ms"] for c in costs),
            "throughput_examples_per_s": 1.0 / sum(1.0 / c["throughput_examples_per_s"] for c in costs),
            "derived": "sum of the members' measured costs"}
    return {"name": " + ".join(t.display_name for t in cfg.members), "metrics": metrics, "cost": cost,
            "ensemble": info}


def _comparison(models: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: macro-F1 (mean ± std), % of the teacher's macro-F1 kept, speed-up."""
    teacher = models["teacher"]
    rows = []
    for key, entry in models.items():
        if "summary" in entry:
            f1, std = entry["summary"]["macro_f1"]["mean"], entry["summary"]["macro_f1"]["std"]
            acc = entry["summary"]["accuracy"]["mean"]
        else:
            f1, std, acc = entry["metrics"]["macro_f1"], 0.0, entry["metrics"]["accuracy"]
        cost = entry["cost"]
        rows.append({
            "model": key, "name": entry["name"], "seeds": len(entry.get("seeds", {})) or None,
            "macro_f1": f1, "macro_f1_std": std, "accuracy": acc,
            "retained_pct": 100 * f1 / teacher["metrics"]["macro_f1"] if teacher["metrics"]["macro_f1"] else None,
            "parameters": cost["parameters"], "latency_p50_ms": cost["latency_p50_ms"],
            "throughput_examples_per_s": cost["throughput_examples_per_s"],
            "speedup_latency": teacher["cost"]["latency_p50_ms"] / cost["latency_p50_ms"],
            "speedup_throughput": cost["throughput_examples_per_s"] / teacher["cost"]["throughput_examples_per_s"],
        })
    return rows


def report(config: ConfigLike = None) -> Path:
    """report.md, and report.html with its figures (also written to plots/), from eval/results.json and
    the students' training histories; returns report.md's path. A config with stages: every stage's
    reports, then the run's combined report.md and report.html (kdistill.stages)."""
    from kdistill.report import render_markdown
    from kdistill.report_html import write_html_report

    cfg = _config(config)
    if cfg.stages:
        return report_stages(cfg)
    if cfg.task.kind == "generation":
        from kdistill.gen_pipeline import report_generation

        return report_generation(cfg)
    results_path = cfg.run_dir / "eval" / "results.json"
    if not results_path.exists():
        raise KdistillError(f"{results_path}: no results yet; run `kdistill eval` (or `kdistill run`) first.")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    config_yaml = dump_yaml(cfg)
    write_html_report(cfg.run_dir, results, config_yaml)
    path = cfg.run_dir / "report.md"
    atomic_write_text(path, render_markdown(results, config_yaml))
    return path


def run(config: ConfigLike = None, *, resume: bool = False, progress: bool = True,
        overrides: dict[str, Any] | None = None, init_dir: Path | None = None, carry_optimizer: bool = False,
        save_optimizer: bool = False) -> Path:
    """The whole pipeline: data, elicitation, every student variant and seed, evaluation, report.

    A config with `stages` runs each stage in turn (kdistill.stages). Within a stage, ``init_dir`` is
    the previous stage's run directory, whose students this stage's start from."""
    start = time.perf_counter()
    cfg = _config(config, overrides)
    if cfg.stages:
        return run_stages(cfg, resume=resume, progress=progress)
    if cfg.task.kind == "generation":
        if init_dir is not None:
            raise KdistillError("multi-stage runs carry label-space students; a generation task cannot be a stage yet.")
        from kdistill.gen_pipeline import run_generation

        return run_generation(cfg, resume=resume, progress=progress)
    data = _data(cfg)  # a bad row stops the run here, before anything is written
    write_run_start(cfg, data.splits())
    timings = {}
    t = time.perf_counter()
    with distributed.main_first():  # a teacher kdistill fine-tunes is fine-tuned once, by the main process
        teachers = load_teachers(cfg, data, progress=progress)
    targets = teacher_signal(cfg, data, progress=progress, models=teachers).targets  # shards split over processes
    timings["elicit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for seed in cfg.evaluation.seeds:
        for variant in VARIANTS:
            if variant == "labels_only" and not cfg.evaluation.baselines:
                continue
            init_from = check_stage_dirs(init_dir, variant, seed) if init_dir is not None else None
            train(cfg, variant=variant, seed=seed, resume=resume, progress=progress, targets=targets,
                  teachers=teachers, init_from=init_from, save_optimizer=save_optimizer,
                  optimizer_from=_optimizer_path(init_from) if carry_optimizer and init_from else None)
    timings["train_s"] = time.perf_counter() - t
    held = {"teachers": teachers}  # evaluation takes the teachers, so they are freed once it is done
    del teachers
    return finish_run(cfg, timings, start, evaluate_fn=lambda: evaluate(cfg, progress=progress,
                                                                         teachers=held.pop("teachers")),
                      export_fn=lambda: export_best_student(cfg, "distilled", "best_val_macro_f1"),
                      report_fn=lambda: report(cfg))


def write_run_start(cfg: RunConfig, splits: dict[str, list]) -> None:
    """config.yaml and data/splits.json: what ran, and on which examples (written by the main process)."""
    if distributed.is_main():
        atomic_write_text(cfg.run_dir / "config.yaml", dump_yaml(cfg))
        atomic_write_json(cfg.run_dir / "data" / "splits.json",
                          {split: [e.id for e in examples] for split, examples in splits.items()})


def finish_run(cfg: RunConfig, timings: dict[str, float], start: float, *, evaluate_fn: Callable[[], Path],
               export_fn: Callable[[], None], report_fn: Callable[[], Any]) -> Path:
    """Evaluation, the exported student and the report, written once by the main process (the others
    wait); the wall time of each phase goes into results.json."""
    if not distributed.is_main():
        distributed.barrier()
        return cfg.run_dir
    t = time.perf_counter()
    with distributed.alone():
        results_path = evaluate_fn()
        timings["eval_s"] = time.perf_counter() - t
        export_fn()
        results = json.loads(results_path.read_text(encoding="utf-8"))
        results["timings"] = {**timings, "total_s": time.perf_counter() - start}
        atomic_write_json(results_path, results)
        report_fn()
    distributed.barrier()
    return cfg.run_dir


def export_best_student(cfg: RunConfig, variant: str, score_key: str, *, lower_is_better: bool = False) -> None:
    """runs/<name>/student: the seed of ``variant`` with the best validation score (chosen on validation)."""
    scores = {}
    for seed in cfg.evaluation.seeds:
        folder = _student_dir(cfg, variant, seed)
        scores[folder] = json.loads(folder.with_name(f"{folder.name}.training.json").read_text())[score_key]
    scored = {folder: score for folder, score in scores.items() if score is not None}
    # without a validation split no seed was scored: the first seed's student, not a pick
    best = ((min if lower_is_better else max)(scored, key=scored.get) if scored
            else _student_dir(cfg, variant, cfg.evaluation.seeds[0]))
    with atomic_dir(cfg.run_dir / "student") as tmp:
        shutil.copytree(best, tmp, dirs_exist_ok=True)


def predict(model_dir: str | Path, texts: list[str]) -> list[dict[str, Any]]:
    """Label and probabilities for each text, from a saved student."""
    model = load_saved(model_dir)
    probs = torch.softmax(model.predict_logits(texts), dim=-1)
    return [{"text": text, "label": model.labels[int(p.argmax())],
             "probabilities": {label: round(float(v), 4) for label, v in zip(model.labels, p)}}
            for text, p in zip(texts, probs)]
