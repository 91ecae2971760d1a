"""The reports' figures as PNG bytes: training curves, the comparison charts, confusion matrices.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so making a report never changes
the caller's matplotlib backend or keeps figures alive in pyplot's registry.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

# one colour per kind of row, the same in every figure
KIND_COLOURS = {"teacher": "#4c72b0", "student_untrained": "#9a9a9a", "student_labels_only": "#dd8452",
                "student_sequence_kd": "#8172b3", "student_distilled": "#55a868"}
TERM_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
SEED_STYLES = ["-", "--", ":", "-."]


@dataclass(frozen=True)
class Plot:
    """One figure: its file name under `plots/`, a caption, and the PNG."""

    name: str
    title: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def training_curves(variant: str, histories: dict[int, list[Record]], *, val_key: str = "val_macro_f1",
                    val_label: str = "macro-F1") -> bytes:
    """Loss terms (left) and the validation figure ``val_key`` (right) against the optimizer step, one
    line style per seed."""
    fig = _figure(10, 3.6)
    loss_ax, val_ax = fig.subplots(1, 2)
    terms = sorted({k for h in histories.values() for r in h for k in r if k.startswith("train_")})
    for seed_index, (seed, history) in enumerate(sorted(histories.items())):
        style = SEED_STYLES[seed_index % len(SEED_STYLES)]
        for term_index, term in enumerate(terms):
            points = [(r["step"], r[term]) for r in history if term in r]
            if points:
                loss_ax.plot(*zip(*points), style, color=TERM_COLOURS[term_index % len(TERM_COLOURS)],
                             label=f"{term.removeprefix('train_')} (seed {seed})")
        val = [(r["step"], r[val_key]) for r in history if val_key in r]
        if val:
            val_ax.plot(*zip(*val), style, marker="o", color=KIND_COLOURS.get(f"student_{variant}", "#333333"),
                        label=f"seed {seed}")
    name = variant.replace("_", " ")
    loss_ax.set(title=f"{name}: training loss terms", xlabel="optimizer step", ylabel="per-example loss")
    val_ax.set(title=f"{name}: validation {val_label}", xlabel="optimizer step", ylabel=val_label)
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def _row_kind(key: str) -> str:
    return "teacher" if key.startswith("teacher") else key


def _bars(ax, rows: list[Record], values: list[float | None], stds: list[float], row_names: dict[str, str],
          teacher_value: float | None) -> None:
    """One horizontal bar per row of the card, top-down, ± std where a row has seeds; a missing value
    is written as — instead of a bar; the teacher's value as a dashed line."""
    rows, values, stds = rows[::-1], values[::-1], stds[::-1]  # barh draws bottom-up
    y = range(len(rows))
    ax.barh(y, [v or 0.0 for v in values], xerr=stds, capsize=4,
            color=[KIND_COLOURS.get(_row_kind(r["model"]), "#333333") for r in rows])
    for i, (r, value, std) in enumerate(zip(rows, values, stds)):
        label = "—" if value is None else f"{value:.3f}" + (f" ± {std:.3f}" if r["seeds"] else "")
        ax.text((value or 0.0) + std + 0.01, i, label, va="center", fontsize=8)
    if teacher_value is not None:
        ax.axvline(teacher_value, color=KIND_COLOURS["teacher"], linestyle="--", linewidth=1, label="teacher")
    ax.set_yticks(list(y), [row_names[r["model"]] for r in rows], fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.grid(axis="x", alpha=0.3)


def comparison_chart(comparison: list[Record], row_names: dict[str, str]) -> bytes:
    """Macro-F1 of every row of the report card, ± the std over seeds, with the teacher's as a line."""
    fig = _figure(9, 0.55 * len(comparison) + 1.4)
    ax = fig.subplots()
    teacher = next(r for r in comparison if r["model"] == "teacher")
    _bars(ax, comparison, [r["macro_f1"] for r in comparison], [r["macro_f1_std"] for r in comparison], row_names,
          teacher["macro_f1"])
    ax.set(xlabel="macro-F1 on the test split (± std over seeds)", title="Teacher vs students")
    return _png(fig)


def generation_comparison_chart(comparison: list[Record], row_names: dict[str, str], *,
                                headline_label: str | None = None) -> bytes:
    """A generative card's rows (`gen_eval.comparison_rows`): the headline metric (left) and judged
    faithfulness (right, when it was scored), ± the std over seeds, the teacher's as a dashed line."""
    panels = [("headline", headline_label or comparison[0]["headline_metric"])]
    if any(r["faithfulness"] is not None for r in comparison):
        panels.append(("faithfulness", "faithfulness (judge's P(supported))"))
    fig = _figure(5 * len(panels) + 1, 0.55 * len(comparison) + 1.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    teacher = next((r for r in comparison if r["model"] == "teacher"), {})
    for ax, (key, label) in zip(axes, panels):
        _bars(ax, comparison, [r[key] for r in comparison], [r[f"{key}_std"] for r in comparison], row_names,
              teacher.get(key))
        ax.set(xlabel="on the test split (± std over seeds)", title=label)
    return _png(fig)


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """Counts in each cell; colour is the share of the gold row (recall), so rare classes stay visible."""
    size = max(2.6, 0.4 * len(labels) + 1.6)  # inches: the page shows four side by side
    fig = _figure(size + 0.7, size)
    ax = fig.subplots()
    shares = [[v / max(sum(row), 1) for v in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 8 if len(labels) <= 8 else 6
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=fontsize,
                    color="white" if shares[i][j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
    ax.set_xlabel("predicted", fontsize=fontsize)
    ax.set_ylabel("gold", fontsize=fontsize)
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("share of the gold row", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return _png(fig)


def selection_curve(selection: Record) -> bytes:
    """Under a teacher budget: each selection round's student (and the distilled student trained on every chosen
    text) by its validation macro-F1 against the teacher calls its training data cost."""
    fig = _figure(6.5, 3.6)
    ax = fig.subplots()
    points = [(r["teacher_calls"], r["val_macro_f1"]) for r in selection["rounds"] if r["val_macro_f1"] is not None]
    final = selection["final"]
    if points:
        ax.plot(*zip(*points), "-o", color=KIND_COLOURS["student_labels_only"], label="selection round's student")
    if final["val_macro_f1"] is not None:
        ax.plot([final["teacher_calls"]], [final["val_macro_f1"]], "*", markersize=12,
                color=KIND_COLOURS["student_distilled"], label="distilled student (first seed)")
    ax.set(title=f"Student quality against teacher calls ({selection['strategy']} selection)",
           xlabel="teacher calls (texts asked, every teacher counted)", ylabel="validation macro-F1")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def _first_seed_metrics(entry: Record) -> tuple[Record, str]:
    """A model's metrics, and which seed they are (the report's per-model detail shows the first seed too)."""
    if "metrics" in entry:
        return entry["metrics"], ""
    seed, metrics = next(iter(entry["seeds"].items()))
    return metrics, f", seed {seed}"


def report_plots(results: Record, histories: dict[str, dict[int, list[Record]]],
                 row_names: dict[str, str]) -> list[Plot]:
    """Every figure of the report. ``histories``: variant → seed → training-history records;
    ``row_names``: model key → the name the report card gives it."""
    plots = [Plot("comparison.png", "Macro-F1 of every model (bars: ± std over seeds; dashed: the teacher)",
                  comparison_chart(results["comparison"], row_names))]
    if results.get("selection"):
        plots.append(Plot("selection.png", "Validation macro-F1 against teacher calls: each selection round's student "
                          "and the distilled student", selection_curve(results["selection"])))
    for variant, by_seed in histories.items():
        name = variant.replace("_", " ")
        plots.append(Plot(f"training_{_slug(variant)}.png", f"Training curves: {name} student, every seed",
                          training_curves(variant, by_seed)))
    for key, entry in results["models"].items():
        metrics, which = _first_seed_metrics(entry)
        title = f"{row_names[key]}{which}"
        plots.append(Plot(f"confusion_{_slug(key)}.png", f"Confusion matrix: {title}",
                          confusion_matrix(metrics["confusion_matrix"], results["labels"], title)))
    return plots
