"""kdistill as plain functions: what the `kdistill` command runs, and the Python API.

    validate(config)  elicit(config)  train(config, variant=, seed=)  evaluate(config)  report(config)
    run(config)       predict(student_dir, texts)                     distill(config) -> Result
    export(run_dir, fmt=)  the student as ONNX (fp32 or int8), parity-checked, measured for the card

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
    """Label and probabilities for each text, from a saved label-task student or its export (`kdistill export`);
    a generation student's export gives each text's greedy output."""
    import torch

    from kdistill.export import is_export, load_export
    from kdistill.models import load_saved

    if is_export(model_dir) and not hasattr(model := load_export(model_dir), "labels"):
        return _generate_with_export(model_dir, model, texts)
    model = load_export(model_dir) if is_export(model_dir) else load_saved(model_dir)
    probs = torch.softmax(model.predict_logits(texts), dim=-1)
    return [{"text": text, "label": model.labels[int(p.argmax())],
             "probabilities": {label: round(float(v), 4) for label, v in zip(model.labels, p)}}
            for text, p in zip(texts, probs)]


def _generate_with_export(model_dir: str | Path, model: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Each text put into the task's prompt and continued greedily, as the run evaluated the student."""
    from kdistill.export.folder import metadata
    from kdistill.models.generate import greedy_texts

    meta = metadata(model_dir)["task"]
    prompts = [meta["prompt_template"].replace("{text}", t) for t in texts]
    outputs = greedy_texts(*model, prompts, max_new_tokens=meta["max_new_tokens"], max_length=meta["max_length"],
                           batch_size=1, stop=meta["stop"])
    return [{"text": text, "output": output} for text, output in zip(texts, outputs)]


def export(run_dir: str | Path, *, fmt: str = "onnx-int8", out: str | Path | None = None, measure: bool = True,
           parity_examples: int | None = None, **thresholds: float | None) -> Path:
    """The run's student as an ONNX folder (``fmt``: onnx or onnx-int8), written only if it passes the parity
    check on the validation split (``thresholds``: min_agreement, max_quality_drop, max_logit_diff; None keeps
    the format's default); with ``measure``, the PyTorch student and the export are then timed and scored on
    the test split into eval/exports.json, and the report card is rendered again with them."""
    from kdistill.export import Thresholds, export_student, measure_export
    from kdistill.export.student import run_config

    folder = export_student(run_dir, fmt=fmt, out=out, thresholds=Thresholds.for_format(fmt, **thresholds),
                            parity_examples=parity_examples)
    if measure:
        cfg = run_config(run_dir)
        measure_export(cfg, folder, fmt)
        if cfg.paths.results.is_file():
            report(cfg)
    return folder


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
