"""What every recipe does the same way: the record of what ran, the end of a run (evaluation, the exported
student, the report, phase timings) and picking the best seed's student."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill import distributed
from kdistill.checksums import read_json, student_damage, verify_student
from kdistill.config import RunConfig, dump_yaml
from kdistill.data import PreparedData
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, atomic_write_json, atomic_write_text, remove_partial
from kdistill.rundir import RunDir

log = logging.getLogger(__name__)


def write_run_start(cfg: RunConfig, splits: dict[str, list]) -> None:
    """config.yaml and data/splits.json: what ran, and on which examples (written by the main process), after
    removing what a killed run left half-written."""
    if distributed.is_main():
        remove_partial_writes(cfg)
        atomic_write_text(cfg.paths.config, dump_yaml(cfg))
        atomic_write_json(cfg.paths.splits,
                          {split: [e.id for e in examples] for split, examples in splits.items()})


def remove_partial_writes(cfg: RunConfig) -> None:
    """The `.tmp` files and folders of atomic writes a kill interrupted (a checkpoint step of a 0.5B student is
    about 1 GB): nothing reads them, and nothing else would ever remove them."""
    paths = cfg.paths
    steps = sorted(p for p in paths.all_checkpoints.iterdir() if p.is_dir()) if paths.all_checkpoints.is_dir() else []
    # the teacher cache's own files (elicitation speed, fine-tuned teachers), unless it is shared through a link
    cache = [] if paths.teacher_cache.is_symlink() else [paths.teacher_cache, paths.finetuned_teachers]
    for folder in paths.written_atomically + steps + cache:
        for partial in remove_partial(folder):
            log.info("removed %s, left half-written by an interrupted run", partial)


def label_prior(cfg: RunConfig, data: PreparedData) -> torch.Tensor:
    """(L,) label shares among the labelled training examples: the balance term's default target."""
    counts = torch.zeros(len(cfg.task.labels))
    for e in data.labelled:
        counts[cfg.task.labels.index(e.label)] += 1
    return counts / counts.sum()


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
        folder = cfg.paths.student(variant, seed)
        scores[folder] = read_training(folder).get(score_key)
    scored = {folder: score for folder, score in scores.items() if score is not None}
    # without a validation split no seed was scored: the first seed's student, not a pick
    best = ((min if lower_is_better else max)(scored, key=scored.get) if scored
            else cfg.paths.student(variant, cfg.evaluation.seeds[0]))
    with atomic_dir(cfg.paths.exported_student) as tmp:
        shutil.copytree(best, tmp, dirs_exist_ok=True)
        verify_student(tmp)  # the copy as it will be read: never export a damaged student


def verify_students(cfg: RunConfig, variants: list[str]) -> None:
    """Every saved student of ``variants`` against its checksums, before evaluation does any work."""
    for variant in variants:
        for seed in cfg.evaluation.seeds:
            if cfg.paths.student(variant, seed).exists():
                verify_student(cfg.paths.student(variant, seed))
                read_training(cfg.paths.student(variant, seed))


def read_training(student: Path) -> dict[str, Any]:
    """A saved student's training record (students/<variant>-seed<N>.training.json)."""
    record = read_json(RunDir.beside(student, "training.json"),
                       "train the student again (`kdistill run --resume` trains a student whose record is damaged).")
    if not isinstance(record, dict):
        raise KdistillError(f"{RunDir.beside(student, 'training.json')} is not a training record; train the "
                            "student again (`kdistill run --resume`).")
    return record


def finished(cfg: RunConfig, variant: str, seed: int) -> bool:
    """A saved student whose files match their checksums, with a readable training record: what a resumed run
    does not train again. A damaged one is reported and trained again (training is deterministic)."""
    folder = cfg.paths.student(variant, seed)
    if not ((folder / "kdistill.json").exists() and RunDir.beside(folder, "training.json").exists()):
        return False
    try:
        read_training(folder)
        problem = student_damage(folder)
    except KdistillError as err:
        problem = str(err).split(";")[0]
    if problem is not None:
        log.warning("%s: training this student again", problem)
        return False
    drop_checkpoints(cfg, variant, seed)  # a kill between saving the student and deleting them left them
    return True


def drop_checkpoints(cfg: RunConfig, variant: str, seed: int) -> None:
    """A saved student's checkpoints, deleted unless training.keep_finished_checkpoints (see there)."""
    if not cfg.training.keep_finished_checkpoints and distributed.is_main():
        shutil.rmtree(cfg.paths.checkpoints(variant, seed), ignore_errors=True)


def report(cfg: RunConfig) -> Path:
    """report.md, report.html and plots/ from eval/results.json (kdistill.report.card, for either family);
    returns report.md's path."""
    from kdistill.report.card import write_card

    if not cfg.paths.results.exists():
        raise KdistillError(f"{cfg.paths.results}: no results yet; run `kdistill eval` (or `kdistill run`) first.")
    results = read_json(cfg.paths.results, "run `kdistill eval` again to write it.")
    return write_card(cfg.run_dir, results, dump_yaml(cfg))
