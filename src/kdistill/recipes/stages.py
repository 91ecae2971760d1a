"""Multi-stage runs (seed 001: Winogrande, then Social IQA): each stage is a whole kdistill run, and
stage N's students start from stage N-1's.

A stage is the run's own config with the stage's `set` overrides applied, so each stage can have its
own task, data, teachers and objective. Every student variant and seed continues its own line: the
distilled student of seed 1 in stage 2 starts from the distilled student of seed 1 in stage 1, and
likewise the labels-only baseline, so the report card compares like with like at every stage.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import RunConfig, apply_overrides, dump_yaml, from_dict
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, atomic_write_json, atomic_write_text
from kdistill.recipes.registry import recipe_for
from kdistill.report.stages import render_stages, write_stages_html
from kdistill.rundir import RunDir

log = logging.getLogger(__name__)


def stage_configs(cfg: RunConfig) -> list[RunConfig]:
    """One full RunConfig per stage, each run in ``<run_dir>/stages/<i>-<name>/``.

    A stage that names another built-in task (`task: NAME`) takes that task's own data section, with
    the stage's `data.*` settings on top; the run's data settings belong to the run's task.
    """
    base = yaml.safe_load(dump_yaml(cfg))
    base.pop("stages")
    configs = []
    for i, stage in enumerate(cfg.stages, 1):
        where = f"stages[{i - 1}] ({stage.name})"
        data = copy.deepcopy(base)
        if isinstance(stage.set.get("task"), str):  # another built-in task: its data, not the run's
            data["data"] = {}
        apply_overrides(data, stage.set)
        folder = cfg.paths.stage(i, stage.name)
        data.update(name=folder.name, output_dir=str(folder.parent))
        configs.append(from_dict(RunConfig, data, where))
    return configs


def run_stages(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Every stage in order, then one report with a section per stage; returns the run directory."""
    configs = stage_configs(cfg)
    atomic_write_text(cfg.paths.config, dump_yaml(cfg))
    previous: Path | None = None
    for i, (stage, stage_cfg) in enumerate(zip(cfg.stages, configs)):
        carry_next = i + 1 < len(cfg.stages) and cfg.stages[i + 1].optimizer == "carry"
        log.info("stage %d of %d: %s (task %s)", i + 1, len(configs), stage.name, stage_cfg.task.name)
        previous = recipe_for(stage_cfg.task).run(stage_cfg, resume=resume, progress=progress, init_dir=previous,
                                carry_optimizer=stage.optimizer == "carry" and previous is not None,
                                save_optimizer=carry_next)
    _export_final_student(cfg, previous)
    write_stage_reports(cfg, _stage_records(cfg, configs))
    return cfg.run_dir


def report_stages(cfg: RunConfig) -> Path:
    """`kdistill report` on a config with stages: each stage's own report, then the combined ones, all
    from the stages' eval/results.json; returns the combined report.md's path."""
    configs = stage_configs(cfg)
    stages = _stage_records(cfg, configs)  # first, so that a missing stage stops before anything is written
    for stage_cfg in configs:
        recipe_for(stage_cfg.task).report(stage_cfg)
    return write_stage_reports(cfg, stages)


def _stage_records(cfg: RunConfig, configs: list[RunConfig]) -> list[dict[str, Any]]:
    """One record per stage for the combined results.json: where it ran, what it started from, its results."""
    stages, previous = [], None
    for i, (stage, stage_cfg) in enumerate(zip(cfg.stages, configs), 1):
        results_path = stage_cfg.paths.results
        if not results_path.exists():
            raise KdistillError(f"{results_path}: stage {i} ({stage.name}) has no results yet; finish the run "
                                "with `kdistill run CONFIG --resume` (the same config and --set options).")
        results = json.loads(results_path.read_text(encoding="utf-8"))
        stages.append({"stage": i, "name": stage.name, "task": stage_cfg.task.name, "run_dir": str(stage_cfg.run_dir),
                       "starts_from": str(previous) if previous else "the pretrained student",
                       "optimizer": stage.optimizer if previous else "new", "results": results})
        previous = stage_cfg.run_dir
    return stages


def write_stage_reports(cfg: RunConfig, stages: list[dict[str, Any]]) -> Path:
    """The run's eval/results.json (every stage), report.md and report.html; returns report.md's path."""
    combined = {"run": cfg.name, "stages": stages}
    atomic_write_json(cfg.paths.results, combined)
    write_stages_html(cfg.run_dir, combined, dump_yaml(cfg))
    path = cfg.paths.report_md
    atomic_write_text(path, render_stages(cfg.name, stages))
    return path


def _export_final_student(cfg: RunConfig, last_stage_dir: Path) -> None:
    """runs/<name>/student: the last stage's exported student (the run's product)."""
    import shutil

    source = RunDir(last_stage_dir).exported_student
    if not source.exists():
        return
    with atomic_dir(cfg.paths.exported_student) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


