"""The card of a multi-stage run: each stage's own card in order, and one page with every stage's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdistill.io import atomic_write_text
from kdistill.report.html import render_stages_html, report_figures, training_histories
from kdistill.rundir import RunDir


def write_stages_html(run_dir: str | Path, combined: dict[str, Any], config_yaml: str) -> Path:
    """report.html of a multi-stage run from its combined results.json: each stage's figures are drawn from
    that stage's results and training histories (in ``run_dir``/stages/<i>-<name>/); returns its path."""
    run_dir = Path(run_dir)
    plots = []  # per stage, in order
    for stage in combined["stages"]:
        folder = RunDir(run_dir).stage(stage["stage"], stage["name"])
        plots.append(report_figures(stage["results"], training_histories(folder, stage["results"])))
    path = RunDir(run_dir).report_html
    atomic_write_text(path, render_stages_html(combined["run"], combined["stages"], plots, config_yaml))
    return path


def render_stages(name: str, stages: list[dict[str, Any]]) -> str:
    """report.md of a multi-stage run: each stage's report card, in order."""
    lines = [f"# kdistill report card: {name} ({len(stages)} stages)", "",
             "Each stage is a full run; its students start from the previous stage's students of the same "
             "variant and seed (distilled from distilled, labels-only from labels-only).", ""]
    for stage in stages:
        report = (Path(stage["run_dir"]) / "report.md").read_text(encoding="utf-8")
        body = [("#" + line if line.startswith("#") else line) for line in report.splitlines()[1:]]
        lines += [f"## Stage {stage['stage']}: {stage['name']} (task `{stage['task']}`)", "",
                  f"Starts from: {stage['starts_from']}; optimizer: {stage['optimizer']}. "
                  f"Run directory: `{stage['run_dir']}`.", "", *body, ""]
    return "\n".join(lines)
