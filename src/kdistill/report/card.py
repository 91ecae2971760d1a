"""The one card writer: `plots/*.png`, `report.html` and `report.md` of a run from its eval/results.json.

What the card shows depends on the task family, and each family plugs in its own sections: the label card
(`label_markdown`, `html`) and the generation card (`generation`). Everything else (the training histories,
the figures written to plots/, where each file goes, atomic writes) is done here, once; so is the card of a
multi-stage run (`stages`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdistill.io import atomic_write_text
from kdistill.report.exports import export_html, export_lines
from kdistill.report.generation import generation_figures, render_generation_html, render_generation_markdown
from kdistill.report.html import render_html, report_figures, training_histories, write_plots
from kdistill.report.label_markdown import render_markdown
from kdistill.report.plots import Plot
from kdistill.rundir import RunDir

Record = dict[str, Any]


@dataclass(frozen=True)
class Sections:
    """A task family's part of the card: its figures, its page and its markdown."""

    figures: Callable[[Record, dict[str, dict[int, list[Record]]]], list[Plot]]
    html: Callable[..., str]  # (results, histories, config_yaml, *, plots) -> the page
    markdown: Callable[[Record, str], str]  # (results, config_yaml) -> report.md


SECTIONS = {"label": Sections(report_figures, render_html, render_markdown),
            "generation": Sections(generation_figures, render_generation_html, render_generation_markdown)}


def family_of(results: Record) -> str:
    """The family whose sections draw these results (a generation run's results.json says so)."""
    return "generation" if results.get("task_kind") == "generation" else "label"


def write_card(run_dir: str | Path, results: Record, config_yaml: str) -> Path:
    """plots/, report.html (the same figures, embedded) and report.md; returns report.md's path."""
    paths, sections = RunDir(run_dir), SECTIONS[family_of(results)]
    histories = training_histories(paths.root, results)
    plots = sections.figures(results, histories)
    write_plots(paths.root, plots)
    page, markdown = sections.html(results, histories, config_yaml, plots=plots), sections.markdown(results, config_yaml)
    if paths.export_measurements.is_file():  # `kdistill export` measured the deployable forms
        measurements = json.loads(paths.export_measurements.read_text(encoding="utf-8"))
        page = page.replace("</main>", export_html(measurements, results) + "\n</main>", 1)
        markdown = _before(markdown, "## Resolved config", "\n".join(export_lines(measurements, results)))
    atomic_write_text(paths.report_html, page)
    atomic_write_text(paths.report_md, markdown)
    return paths.report_md


def _before(markdown: str, heading: str, section: str) -> str:
    """``section`` inserted before ``heading`` (at the end when there is none)."""
    at = markdown.find(heading)
    return markdown + "\n" + section if at < 0 else markdown[:at] + section + "\n" + markdown[at:]
