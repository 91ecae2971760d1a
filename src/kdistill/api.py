"""kdistill as plain functions: what the `kdistill` command runs, and the Python API.

    validate(config)  elicit(config)  train(config, variant=, seed=)  evaluate(config)  report(config)
    run(config)       predict(student_dir, texts)                     distill(config) -> Result

Each takes a config (a RunConfig, a YAML path, a built-in job's name, or None for the built-in default
job) and writes into the run directory `<output_dir>/<name>/` (kdistill.rundir). The task family's
recipe (label or generation, kdistill.recipes.registry) is picked here, once, from the task's kind; a
config with `stages` is composed by kdistill.recipes.stages. A teacher kdistill serves itself
(`teacher.endpoint.serve`) is stopped when the command that started it returns or fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdistill.config import RunConfig, load_config
from kdistill.errors import KdistillError
from kdistill.recipes.preflight import preflight
from kdistill.recipes.registry import recipe_for
from kdistill.recipes.stages import report_stages, run_stages, stage_configs
from kdistill.teachers.served import session as served_session

ConfigLike = RunConfig | str | Path | None


def _config(config: ConfigLike, overrides: dict[str, Any] | None = None) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_config(config, overrides)


def _checked(cfg: RunConfig, *, models: bool = True, student: bool = True) -> RunConfig:
    """``cfg`` after the checks a command makes before any work or write (recipes.preflight): the output
    folder, the device and each model's config and tokenizer, of every stage when it has stages."""
    for one in stage_configs(cfg) if cfg.stages else [cfg]:
        preflight(one, models=models, student=student)
    return cfg


def _single_run(cfg: RunConfig, command: str) -> RunConfig:
    """Commands other than run, validate and report work on one run, not on a config with stages."""
    if cfg.stages:
        raise KdistillError(f"`kdistill {command}` works on one run, and this config has {len(cfg.stages)} stages; "
                            f"use `kdistill run`, or point `{command}` at a stage's config "
                            f"({cfg.run_dir}/stages/<i>-<name>/config.yaml once the run has started).")
    return cfg


def validate(config: ConfigLike = None, *, check_models: bool = True) -> str:
    """Check a config, its data and its models' tokenizers (and verbalizers); write nothing."""
    cfg = _config(config)
    if cfg.stages:
        return "\n\n".join(f"stage {i}: {stage_cfg.name}\n" + validate(stage_cfg, check_models=check_models)
                           for i, stage_cfg in enumerate(stage_configs(cfg), 1))
    return recipe_for(cfg.task).validate(cfg, check_models=check_models)


@served_session()
def elicit(config: ConfigLike = None, *, progress: bool = True, teachers: Any = None) -> Any:
    """The teacher's answers for the run's examples, from the cache or asked once: a label task's
    ``TeacherSignal`` (every teacher's label distributions, recalibrated and combined), a generation
    task's ``GenTargets`` (token rows, and the written targets where the teacher writes them)."""
    cfg = _checked(_single_run(_config(config), "elicit"), student=False)
    return recipe_for(cfg.task).elicit(cfg, progress=progress, teachers=teachers)


@served_session()
def train(config: ConfigLike = None, *, variant: str = "distilled", seed: int | None = None, resume: bool = False,
          progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> Path:
    """Train one student variant with one seed (default: the first of evaluation.seeds); returns the saved
    student folder. ``on_record`` sees each training-history record as it is made. ``options`` go to the
    recipe's train (the label recipe's `targets`, `teachers`, `data`, `init_from` ...)."""
    cfg = _checked(_single_run(_config(config), "train"))
    return recipe_for(cfg.task).train(cfg, variant=variant, seed=seed, resume=resume, progress=progress,
                                      on_record=on_record, **options)


@served_session()
def evaluate(config: ConfigLike = None, *, progress: bool = True, teachers: Any = None) -> Path:
    """Score the teacher(s), the untrained student and every trained student on the test split, with the
    cost of each; returns eval/results.json's path."""
    cfg = _checked(_single_run(_config(config), "eval"))
    return recipe_for(cfg.task).evaluate(cfg, progress=progress, teachers=teachers)


def report(config: ConfigLike = None) -> Path:
    """report.md, report.html and plots/ from eval/results.json; returns report.md's path. A config with
    stages: every stage's reports, then the run's combined ones."""
    cfg = _checked(_config(config), models=False)
    return report_stages(cfg) if cfg.stages else recipe_for(cfg.task).report(cfg)


@served_session()
def run(config: ConfigLike = None, *, resume: bool = False, progress: bool = True,
        overrides: dict[str, Any] | None = None) -> Path:
    """The whole run: data, elicitation, every student variant and seed, evaluation, the exported student
    and the report card; returns the run directory. ``overrides``: dotted keys set on a YAML config."""
    cfg = _checked(_config(config, overrides))
    if cfg.stages:
        return run_stages(cfg, resume=resume, progress=progress)
    return recipe_for(cfg.task).run(cfg, resume=resume, progress=progress)


def predict(model_dir: str | Path, texts: list[str]) -> list[dict[str, Any]]:
    """Label and probabilities for each text, from a saved label-task student."""
    import torch

    from kdistill.models import load_saved

    model = load_saved(model_dir)
    probs = torch.softmax(model.predict_logits(texts), dim=-1)
    return [{"text": text, "label": model.labels[int(p.argmax())],
             "probabilities": {label: round(float(v), 4) for label, v in zip(model.labels, p)}}
            for text, p in zip(texts, probs)]


@dataclass(frozen=True)
class Result:
    """What `distill` made: where it is, and the card's figures."""

    run_dir: Path
    """The run directory (kdistill.rundir)."""
    student: Path
    """The exported student: a plain 🤗 folder, the best seed chosen on validation."""
    report: Path
    """report.md (report.html beside it)."""
    results: dict[str, Any]
    """eval/results.json: every model's metrics and cost, and the `comparison` rows of the card."""

    @property
    def comparison(self) -> list[dict[str, Any]]:
        """One row per model: its quality, share of the teacher's quality kept, and speed-up."""
        return self.results.get("comparison", [])


def distill(config: ConfigLike = None, *, overrides: dict[str, Any] | None = None, resume: bool = False,
            progress: bool = True) -> Result:
    """Run a whole distillation (see `run`) and return its `Result`."""
    cfg = _config(config, overrides)
    run_dir = run(cfg, resume=resume, progress=progress)
    return Result(run_dir=run_dir, student=cfg.paths.exported_student, report=cfg.paths.report_md,
                  results=json.loads(cfg.paths.results.read_text(encoding="utf-8")))
