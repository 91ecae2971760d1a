"""Evaluation of a label task (classification, multiple choice): every teacher and their ensemble, the
untrained student and every trained student on the test split, each with its measured cost."""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from kdistill.config import RunConfig
from kdistill.data import Example
from kdistill.data.prepare import PreparedData, prepare_data
from kdistill.eval.labels import label_metrics, measure_cost
from kdistill.eval.labels import predict as predict_logits
from kdistill.io import atomic_write_json
from kdistill.models import LabelModel, load_label_model, load_saved, pick_device, resolve_model_path
from kdistill.recipes.common import read_training, verify_students
from kdistill.recipes.selection import selected_data, selection_results
from kdistill.teachers.cost import teacher_cost
from kdistill.teachers.signal import TeacherSignal, elicited_examples, load_teachers, member_path, teacher_signal

log = logging.getLogger(__name__)
# the label recipe's student variants, in the order they are trained, evaluated and shown
VARIANTS = {"labels_only": "student trained on hard labels only", "distilled": "distilled student"}


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
                            warmup_batches=ev.warmup_batches, model_dir=model_dir,
                            desc=f"timing {Path(str(model_dir)).name if model_dir else 'the model'}")


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: {"mean": statistics.fmean(r[k] for r in runs),
                "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0} for k in keys}


def evaluate(cfg: RunConfig, *, progress: bool = True, teachers: dict[str, LabelModel] | None = None) -> Path:
    """Score every teacher (and their ensemble), the untrained student and every trained student on the
    test split; cost of each."""
    verify_students(cfg, list(VARIANTS))  # a damaged student is found before the teachers are asked
    data = prepare_data(cfg.data, cfg.task)
    selection = selection_results(cfg, data)
    data = selected_data(cfg, data)  # under a teacher budget: the texts the teacher was asked about
    test = data.test
    teachers = teachers or load_teachers(cfg, data, progress=progress)
    signal = teacher_signal(cfg, data, progress=progress, models=teachers)
    teacher_pred = signal.targets.rows([e.id for e in test]).argmax(-1).tolist()
    models = _teacher_entries(cfg, data, teachers, signal, teacher_pred)
    del teachers
    gc.collect()
    if cfg.evaluation.baselines:
        torch.manual_seed(cfg.evaluation.seeds[0])
        untrained = load_label_model(cfg.student, cfg.task, device=pick_device(cfg.training.device))
        models["student_untrained"] = {"name": cfg.student.model,
                                       "metrics": _metrics_for(untrained, test, cfg, teacher_pred, progress, "untrained"),
                                       "cost": _cost(untrained, test, cfg, resolve_model_path(cfg.student.model))}
    for variant in VARIANTS:
        entry = _trained_entry(cfg, variant, test, teacher_pred, progress)
        if entry:
            models[f"student_{variant}"] = entry
    answered = len(elicited_examples(data))
    results = {"run": cfg.name, "task": cfg.task.name, "labels": cfg.task.labels,
               "test_examples": len(test), "data": data.report, "models": models,
               "comparison": _comparison(models),
               "teacher_cost": teacher_cost(cfg.paths.teacher_calls, {m.display_name: answered for m in cfg.members})}
    if selection is not None:
        results["selection"] = selection
    path = cfg.paths.results
    atomic_write_json(path, results)
    return path


def _teacher_entries(cfg: RunConfig, data: PreparedData, teachers: dict[str, LabelModel], signal: TeacherSignal,
                     teacher_pred: list[int]) -> dict[str, Any]:
    """Each teacher's row (its metrics, cost and prompt), and with several the ensemble's, "the teacher"."""
    test_ids = [e.id for e in data.test]
    gold = [cfg.task.labels.index(e.label) for e in data.test]
    members: dict[str, Any] = {}
    for member in cfg.members:
        name = member.display_name
        pred = signal.members[name].rows(test_ids).argmax(-1).tolist()
        entry = {"name": member.model, "metrics": label_metrics(gold, pred, cfg.task.labels),
                 "cost": _cost(teachers[name], data.test, cfg, member_path(cfg, data, member)),
                 "prompt": {"few_shot_per_label": member.few_shot_per_label, "finetuned": member.finetune,
                            "content_free_calibration": member.calibrate,
                            "recalibration": signal.info["members"][name]}}
        members["teacher" if len(cfg.members) == 1 else f"teacher:{name}"] = entry
    models: dict[str, Any] = {}
    if len(cfg.members) > 1:  # the ensemble is what the students learn from: "the teacher" of the report
        models["teacher"] = _ensemble_entry(cfg, members, label_metrics(gold, teacher_pred, cfg.task.labels),
                                            signal.info["ensemble"])
    models.update(members)
    return models


def _trained_entry(cfg: RunConfig, variant: str, test: list[Example], teacher_pred: list[int],
                   progress: bool) -> dict[str, Any] | None:
    """A trained variant's row: its metrics per seed and their mean and std, its training records, its cost."""
    per_seed, cost, training = {}, None, {}
    for seed in cfg.evaluation.seeds:
        folder = cfg.paths.student(variant, seed)
        if not folder.exists():
            continue
        student = load_saved(folder, device=pick_device(cfg.training.device))
        per_seed[seed] = _metrics_for(student, test, cfg, teacher_pred, progress, f"{variant} seed {seed}")
        training[seed] = {k: v for k, v in read_training(folder).items() if k != "history"}
        if cost is None:
            cost = _cost(student, test, cfg, folder)
    if not per_seed:
        return None
    return {"name": cfg.student.model, "seeds": per_seed, "training": training,
            "summary": _mean_std(list(per_seed.values())), "cost": cost}


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
