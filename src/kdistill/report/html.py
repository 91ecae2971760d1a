"""The report card as one self-contained HTML page: inline CSS, figures as base64 PNG, no script,
nothing fetched. Every figure comes from results.json and the students' training histories."""

from __future__ import annotations

import base64
import html
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

from kdistill.io import atomic_write_bytes
from kdistill.report.label_markdown import (
    SELECTION_COLUMNS,
    TEACHER_COST_COLUMNS,
    _fmt_bytes,
    _row_name,
    _verdict,
    selection_rows,
    selection_sentence,
    teacher_cost_rows,
    teacher_cost_sentence,
    warnings_of,
)
from kdistill.report.plots import KIND_COLOURS, Plot, report_plots
from kdistill.rundir import RunDir

Record = dict[str, Any]

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f6f6f4; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; } h2 { font-size: 20px; margin: 32px 0 10px; border-bottom: 1px solid #ddd; }
h3 { font-size: 17px; margin: 24px 0 8px; } section.stage { margin-top: 40px; }
table.stages td:nth-child(-n+4), table.stages th:nth-child(-n+4) { text-align: left; }
table { border-collapse: collapse; font-size: 13.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 5px 9px; text-align: right; vertical-align: top; }
th { background: #f0f0ee; } td:first-child, th:first-child { text-align: left; }
table.card td { white-space: nowrap; } tr.distilled td { background: #eef7f0; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }
.warn { background: #fff4e0; border-left: 4px solid #e8a33d; padding: 8px 12px; margin: 8px 0; }
.note { color: #555; font-size: 13.5px; }
figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid figure { flex: 0 1 270px; }
.examples td { text-align: left; white-space: pre-wrap; max-width: 360px; }
table.described td:last-child { text-align: left; color: #555; }
pre { background: #f6f6f4; padding: 12px; overflow-x: auto; font-size: 12.5px; }
summary { cursor: pointer; color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _inline(markdown: str) -> str:
    """The few Markdown marks the shared sentences use (**bold**, `code`), after escaping."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _e(markdown))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


CARD_COLUMNS = ("model", "macro-F1", "accuracy", "% of teacher", "params", "size on disk",
                "latency p50 / p95 (ms, batch 1)", "throughput (ex/s)", "speed-up (latency / throughput)")


def _card(results: Record, names: dict[str, str]) -> str:
    """The report card: the same columns and figures as report.md's table, ⚠ on a model that collapsed."""
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in CARD_COLUMNS) + "</tr>"]
    for row in results["comparison"]:
        entry = results["models"][row["model"]]
        cost = entry["cost"]
        flag = ' <span title="collapse warning">⚠</span>' if warnings_of(entry) else ""
        colour = KIND_COLOURS.get("teacher" if row["model"].startswith("teacher") else row["model"], "#333")
        f1 = f"{row['macro_f1']:.3f}" + (f" ± {row['macro_f1_std']:.3f} ({row['seeds']} seeds)" if row["seeds"] else "")
        retained = "—" if row["retained_pct"] is None else f"{row['retained_pct']:.1f} %"
        cells = [f'<span class="swatch" style="background:{colour}"></span>{_e(names[row["model"]])}{flag}<br>'
                 f'<code>{_e(row["name"])}</code>', _e(f1), f"{row['accuracy']:.3f}", _e(retained),
                 f"{row['parameters'] / 1e6:,.1f} M", _e(_fmt_bytes(cost["size_on_disk_bytes"])),
                 f"{cost['latency_p50_ms']:.1f} / {cost['latency_p95_ms']:.1f}",
                 f"{row['throughput_examples_per_s']:.1f}",
                 f"{row['speedup_latency']:.1f}× / {row['speedup_throughput']:.1f}×"]
        css = ' class="distilled"' if row["model"] == "student_distilled" else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return '<table class="card">' + "\n".join(rows) + "</table>"


def _setting(results: Record) -> str:
    data = results["data"]
    num_train, num_labelled = data["totals"]["train"], data.get("labelled_train", data["totals"]["train"])
    if num_labelled >= num_train:
        return ""
    return (f"<p>Setting: gold labels for <strong>{num_labelled}</strong> of the {num_train} training examples. "
            f"The labels-only student trains on those {num_labelled}; the distilled student also learns from the "
            f"other {num_train - num_labelled} texts, labelled by the teacher alone (a transfer set).</p>")


def _cost_note(results: Record) -> str:
    cost = results["models"]["teacher"]["cost"]
    note = (f"Cost measured by one harness for every model: end to end from text, on "
            f"<code>{_e(cost['device'])}</code> with {_e(cost['threads'])} threads; latency over "
            f"{_e(cost['latency_examples'])} test examples one by one, throughput at batch "
            f"{_e(cost['throughput_batch_size'])}. % of teacher = macro-F1 / the teacher's macro-F1.")
    if "timings" in results:
        note += " Wall time: " + ", ".join(f"{_e(k.removesuffix('_s'))} {v:.0f} s"
                                          for k, v in results["timings"].items())
    return f'<p class="note">{note}</p>'


def _table(columns: list[str], rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    return "<table>" + head + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows) + \
        "</table>"


def _teacher_cost(results: Record) -> list[str]:
    """The teachers' calls, tokens and seconds, per teacher of an ensemble; under a budget, the selection rounds."""
    parts = [f'<p class="note">{_inline(teacher_cost_sentence(results))}</p>'] if teacher_cost_sentence(results) else []
    if teacher_cost_rows(results):
        parts.append(_table(TEACHER_COST_COLUMNS, teacher_cost_rows(results)))
    if selection_sentence(results):
        parts += [f"<p>{_inline(selection_sentence(results))}</p>", _table(SELECTION_COLUMNS, selection_rows(results))]
    return parts


def _warnings(results: Record, names: dict[str, str]) -> str:
    items = [f"{names[key]}: {w}" for key, entry in results["models"].items() for w in warnings_of(entry)]
    if results["data"].get("imbalance_warning"):
        items.append(f"data: {results['data']['imbalance_warning']}")
    return "".join(f'<div class="warn">⚠ {_e(item)}</div>' for item in items)


def _figure(plot: Plot, prefix: str = "") -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="{_e(prefix + plot.name)}"><img src="data:image/png;base64,{data}" alt="{_e(plot.title)}">'
            f"<figcaption>{_e(plot.title)}</figcaption></figure>")


def _examples(examples: list[Record], names: dict[str, str]) -> str:
    """Generative tasks: each input with the reference (if any) and every model's output side by side.

    ``examples``: ``[{"input": str, "reference": str | None, "outputs": {model key: str}}, ...]``.
    """
    models = list(dict.fromkeys(key for ex in examples for key in ex["outputs"]))
    with_reference = any(ex.get("reference") is not None for ex in examples)
    head = ["input"] + (["reference"] if with_reference else []) + [names.get(key, key) for key in models]
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for ex in examples:
        cells = [ex["input"]] + ([ex.get("reference") or "—"] if with_reference else [])
        cells += [ex["outputs"].get(key, "—") for key in models]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return '<table class="examples">' + "\n".join(rows) + "</table>"


def _names(results: Record) -> dict[str, str]:
    return {key: _row_name(key, entry) for key, entry in results["models"].items()}


def report_figures(results: Record, histories: dict[str, dict[int, list[Record]]]) -> list[Plot]:
    """Every figure of the page, named as the report card names its rows."""
    return report_plots(results, histories, _names(results))


def _heading(level: int, anchor: str, text: str) -> str:
    return f'<h{level} id="{_e(anchor)}">{_e(text)}</h{level}>'


def render_section(results: Record, plots: list[Plot], *, level: int = 2, prefix: str = "") -> list[str]:
    """One run's report card (verdict, card, comparison, curves, confusion matrices, examples) as HTML
    parts: the body of a single run's page and each stage's section of a multi-stage page. ``level``:
    the heading level of its sections; ``prefix``: put before every id so that ids stay unique."""
    names = _names(results)
    by_kind = {kind: [p for p in plots if p.name.startswith(kind)]
               for kind in ("comparison", "selection", "training", "confusion")}
    figure = partial(_figure, prefix=prefix)  # a multi-stage page holds each plot name once per stage
    card = f"Teacher vs students (held-out test split, {results['test_examples']} examples)"
    parts = [*(f"<p>{_inline(line)}</p>" for line in _verdict(results["comparison"])), _setting(results),
             _heading(level, prefix + "card", card), _card(results, names), _cost_note(results),
             *_teacher_cost(results), _warnings(results, names), _heading(level, prefix + "comparison", "Comparison"),
             *map(figure, by_kind["comparison"]), *map(figure, by_kind["selection"])]
    if by_kind["training"]:
        parts += [_heading(level, prefix + "training", "Training curves"), *map(figure, by_kind["training"])]
    parts += [_heading(level, prefix + "confusion", "Confusion matrices (test split)"),
              '<div class="grid">' + "".join(map(figure, by_kind["confusion"])) + "</div>"]
    if results.get("examples"):
        parts += [_heading(level, prefix + "examples", "Example outputs"), _examples(results["examples"], names)]
    return parts


def config_section(config_yaml: str) -> list[str]:
    # folded: the config is long and is what a reader looks at last
    return ['<h2 id="config">Resolved config</h2>',
            f"<details><summary>the config as it ran (YAML)</summary><pre>{_e(config_yaml.rstrip())}</pre></details>"]


def html_page(title: str, parts: list[str]) -> str:
    """The self-contained page around the sections ``parts`` (HTML; empty ones are skipped)."""
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def render_html(results: Record, histories: dict[str, dict[int, list[Record]]], config_yaml: str, *,
                plots: list[Plot] | None = None) -> str:
    """The page. ``histories``: variant → seed → training-history records (for the curves); ``plots``:
    figures already drawn by `report_figures` (`pipeline.report` also writes them to `plots/`)."""
    plots = report_figures(results, histories) if plots is None else plots
    title = f"Report card: {results['run']} ({results['task']})"
    return html_page(title, [f"<h1>{_e(title)}</h1>", *render_section(results, plots), *config_section(config_yaml)])


OPTIMIZER_NOTES = {"new": "new AdamW", "reset": "reset (new AdamW)",
                   "carry": "carried (previous stage's AdamW moments; a new head starts fresh)"}


def _stage_f1(results: Record, model: str) -> str:
    row = next((r for r in results["comparison"] if r["model"] == model), None)
    if row is None:
        return "—"
    return f"{row['macro_f1']:.3f}" + (f" ± {row['macro_f1_std']:.3f}" if row["seeds"] else "")


def _starts_from(stages: list[Record], i: int) -> str:
    if i == 0:
        return f"the pretrained {stages[0]['results']['models']['student_untrained']['name']}"
    return f"stage {stages[i - 1]['stage']}'s students (same variant and seed)"


def _stages_overview(stages: list[Record]) -> str:
    """What each stage starts from, its optimizer, its macro-F1s and wall time: one row per stage."""
    head = ["stage", "task (labels)", "starts from", "optimizer", "teacher", "labels only", "distilled", "wall time"]
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for i, stage in enumerate(stages):
        results = stage["results"]
        wall = results.get("timings", {}).get("total_s")
        cells = [f'<a href="#stage-{stage["stage"]}">{_e(stage["stage"])}. {_e(stage["name"])}</a>',
                 _e(f"{results['task']} ({', '.join(results['labels'])})"), _e(_starts_from(stages, i)),
                 _e(OPTIMIZER_NOTES.get(stage["optimizer"], stage["optimizer"])),
                 *(_e(_stage_f1(results, m)) for m in ("teacher", "student_labels_only", "student_distilled")),
                 "—" if wall is None else f"{wall / 60:.1f} min"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return '<table class="stages">' + "\n".join(rows) + "</table>"


def _wall_note(stages: list[Record]) -> str:
    walls = [s["results"].get("timings", {}).get("total_s") for s in stages]
    if None in walls:
        return ""
    return f'<p class="note">Wall time in all (the stages\' sum): {sum(walls) / 60:.1f} min.</p>'


def render_stages_html(name: str, stages: list[Record], plots: list[list[Plot]], config_yaml: str) -> str:
    """The page of a multi-stage run: an overview, then each stage's report card (as `render_html` draws
    it for one run) in order. ``stages``: the records of the run's eval/results.json; ``plots``: each
    stage's figures (`report_figures`), in the same order."""
    title = f"Report card: {name} ({len(stages)} stages)"
    parts = [f"<h1>{_e(title)}</h1>",
             "<p>Each stage is a full run; its students start from the previous stage's students of the same "
             "variant and seed (distilled from distilled, labels-only from labels-only). Macro-F1 on each "
             "stage's held-out test split, mean ± std over seeds.</p>",
             _stages_overview(stages), _wall_note(stages)]
    for stage, stage_plots in zip(stages, plots, strict=True):
        prefix = f"stage{stage['stage']}-"
        parts += [f'<section class="stage" id="stage-{_e(stage["stage"])}">',
                  _heading(2, prefix + "title", f"Stage {stage['stage']}: {stage['name']} (task {stage['task']})"),
                  f'<p class="note">Starts from: <code>{_e(stage["starts_from"])}</code>; optimizer: '
                  f'{_e(stage["optimizer"])}. Run directory: <code>{_e(stage["run_dir"])}</code>.</p>',
                  *render_section(stage["results"], stage_plots, level=3, prefix=prefix), "</section>"]
    return html_page(title, parts + config_section(config_yaml))


def training_histories(run_dir: Path, results: Record) -> dict[str, dict[int, list[Record]]]:
    """variant → seed → history, for exactly the students results.json scored (`students/<variant>-seed<N>`)."""
    histories: dict[str, dict[int, list[Record]]] = {}
    for key, entry in results["models"].items():
        variant = key.removeprefix("student_")
        for seed in entry.get("seeds", {}):
            path = RunDir(run_dir).training_record(variant, seed)
            if path.exists():  # a student copied without its history: the page just lacks its curve
                histories.setdefault(variant, {})[int(seed)] = json.loads(path.read_text(encoding="utf-8"))["history"]
    return histories


def write_plots(run_dir: Path, plots: list[Plot]) -> None:
    """Each figure as `plots/<name>.png` in the run directory (the page embeds the same images)."""
    for plot in plots:
        atomic_write_bytes(RunDir(run_dir).plots / plot.name, plot.png)
