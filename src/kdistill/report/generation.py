"""The report card of a generative run (summaries, QA answers): Markdown, and one self-contained HTML page.

    render_generation_markdown(results, config_yaml)           -> str   report.md
    render_generation_html(results, histories, config_yaml)    -> str   report.html (figures embedded)

Every figure comes from eval/results.json and the students' training histories. Each table and
sentence is built once, as text with the few Markdown marks `report.html._inline` knows, and drawn
as Markdown or HTML from there, so the two cards cannot disagree. Any model may be missing.
"""

from __future__ import annotations

from typing import Any

from kdistill.eval.generation import HEADLINE, METRICS, MODEL_ORDER, ordered_models
from kdistill.report.html import _e, _figure, _inline, config_section, html_page
from kdistill.report.label_markdown import _fmt_bytes
from kdistill.report.plots import KIND_COLOURS, Plot, _slug, generation_comparison_chart, training_curves

Record = dict[str, Any]
Table = tuple[list[str], list[list[str]], list[str]]  # header, rows of cells, each row's model key ("" if none)

ROW_NAMES = {"teacher": "teacher", "student_untrained": "student, before training",
             "student_sequence_kd": "student, sequence-level KD only",
             "student_distilled": "student, token-level KD + CE"}
SENTENCE_NAMES = {"student_untrained": "student before training",
                  "student_sequence_kd": "student trained with sequence-level KD only",
                  "student_distilled": "student distilled with token-level KD + CE"}
HEADLINE_NAMES = {"rougeL": "ROUGE-L", "token_f1": "token F1"}
OUTPUT_NOUNS = {"summary": "summaries", "qa": "answers"}
SOURCE_PREVIEW_WORDS = 60
ONE_DECIMAL = {"compression_ratio", "output_words"}  # not shares: a ratio of lengths and a word count


def _name(key: str) -> str:
    return ROW_NAMES.get(key, key)


def _headline_name(results: Record) -> str:
    metric = HEADLINE[results["evaluate_as"]]
    return HEADLINE_NAMES.get(metric, metric)


def _num(value: float | None, metric: str = "") -> str:
    return "—" if value is None else f"{value:.1f}" if metric in ONE_DECIMAL else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def _metric(entry: Record, metric: str) -> str:
    """A model's metric as the card prints it: mean ± std over seeds, or its one value."""
    if "summary" in entry:
        stats = entry["summary"].get(metric)
        return "—" if stats is None else f"{_num(stats['mean'], metric)} ± {_num(stats['std'], metric)}"
    return _num(entry["metrics"].get(metric), metric)


# ---------------------------------------------------------------- sentences


def _verdict(results: Record) -> list[str]:
    """What the card says first: the distilled student against the teacher, then against its siblings."""
    rows = {r["model"]: r for r in results["comparison"]}
    student = rows.get("student_distilled") or rows.get("student_sequence_kd")
    if student is None or "teacher" not in rows or student["headline"] is None:
        return []
    metric = _headline_name(results)
    teacher = rows["teacher"]
    spread = f" ± {_num(student['headline_std'])}" if student["seeds"] else ""
    line = (f"The {SENTENCE_NAMES[student['model']]} keeps **{_pct(student['headline_retained_pct'])}** of the "
            f"teacher's {metric} ({_num(student['headline'])}{spread} vs {_num(teacher['headline'])})")
    if student["faithfulness"] is not None and teacher["faithfulness"] is not None:
        line += (f" and **{_pct(student['faithfulness_retained_pct'])}** of its judged faithfulness "
                 f"({_num(student['faithfulness'])} vs {_num(teacher['faithfulness'])})")
    lines = [line + f". Its generation speed-up over the teacher is **{_times(student['speedup_tokens_per_s'])}** "
             f"in tokens/s{' at a fixed output length' if student.get('speedup_at_fixed_length') else ''} and "
             f"{_times(student['speedup_seconds_p50'])} in seconds per output (p50)."]
    for other in ("student_sequence_kd", "student_untrained"):
        if other != student["model"] and other in rows and rows[other]["headline"] is not None:
            delta = student["headline"] - rows[other]["headline"]
            where = "matches it" if delta == 0 else f"is {abs(delta):.3f} {'above' if delta > 0 else 'below'} it"
            spread = f" ± {_num(rows[other]['headline_std'])}" if rows[other]["seeds"] else ""
            lines.append(f"The {SENTENCE_NAMES[other]} scores {_num(rows[other]['headline'])}{spread} {metric}; "
                         f"the {SENTENCE_NAMES[student['model']]} {where}.")
    return lines


def _copying_lines(results: Record) -> list[str]:
    """Each student's copy rate against the teacher's, paired by article, with its bootstrap interval."""
    lines = []
    for key in ordered_models(results["models"]):
        gap = results["models"][key].get("copy_gap_2")
        if gap is None:
            continue
        interval = ("" if gap["ci95"] is None else
                    f"95% interval {gap['ci95'][0]:+.1f} to {gap['ci95'][1]:+.1f}, bootstrap over the articles; ")
        seeds = f", mean of {gap['seeds']} seeds" if gap["seeds"] > 1 else ""
        lines.append(f"Copy rate of the {SENTENCE_NAMES.get(key, _name(key))}, minus the teacher's: "
                     f"**{gap['points']:+.1f} points** of word bigrams taken from the article ({interval}paired over "
                     f"{gap['sources']} test articles{seeds}).")
    return lines


def _references_note(results: Record) -> str:
    """Where the references come from, and with an ensemble, what the students learned from."""
    ensemble = results.get("teacher_ensemble")
    if not ensemble:
        return _reference_source(results)
    weights = ensemble["weights"]
    how = ("weights " + ", ".join(f"{name} {w:.2f}" for name, w in weights.items()) if weights
           else "weights by each teacher's top probability at each token")
    return (_reference_source(results) + f" The distilled students learned from the per-token mixture of the teachers "
            f"{', '.join(ensemble['teachers'])} ({ensemble['combine']}: {how}); the teacher row is the first of them.")


def _reference_source(results: Record) -> str:
    noun = OUTPUT_NOUNS.get(results["evaluate_as"], "outputs")
    if results["references"] == "teacher":
        note = (f"No human-written {noun} are reachable here: the references are the teacher's own {noun}, "
                "so ROUGE measures agreement with the teacher.")
        teacher = next((r for r in results["comparison"] if r["model"] == "teacher"), None)
        if teacher and teacher["headline"] is not None and teacher["headline"] > 0.999:
            note += (f" The teacher scores 1 against its own {noun} by construction, so a student's % of teacher "
                     "is its agreement with the teacher, not a share of the teacher's quality.")
        return note
    return f"The references are the {noun} that come with the data, not any model's output."


def _scorer_notes(results: Record) -> list[str]:
    scorers = results.get("scorers") or {}
    similarity, judge = scorers.get("similarity"), scorers.get("faithfulness")
    if similarity is None:
        lines = ["No similarity scorer was run."]
    else:
        pearson = similarity.get("pearson_with_humans")
        where = similarity.get("measured_on", "Lee corpus")
        trust = ("its agreement with human similarity ratings was not measured" if pearson is None else
                 f"its cosine agrees with human similarity ratings at Pearson {pearson:.3f}, measured in this run "
                 f"({where})")
        lines = [f"Similarity scorer: `{similarity['model']}`; {trust}."]
    if judge is None:
        lines.append("Faithfulness was not judged.")
    else:
        chat = " (sent as a user message through its chat template)" if judge.get("chat_template") else ""
        lines.append(f"Faithfulness judge: `{judge['model']}`, {judge['note']}. Its score is the probability of "
                     f"{judge['verbalizers'][0]!r} against {judge['verbalizers'][1]!r} as the next token after the "
                     f"prompt below{chat}, with the article cut to its first {judge['max_source_tokens']} tokens.")
        if judge["model"] == results["models"].get("teacher", {}).get("name"):
            lines.append("The judge is the teacher model itself, so it may favour summaries written like its own.")
        check = judge.get("check")
        if check:
            lines.append(f"How well the judge tells summaries apart, measured in this run: on the {check['pairs']} test "
                         f"articles it gave their own reference {check['mean_matched']:.3f} on average and the next "
                         f"article's reference {check['mean_mismatched']:.3f} (ROC AUC {check['auc']:.3f}; 0.5 is "
                         "chance). Read the faithfulness column with that in mind.")
    return lines


def _cost_note(results: Record) -> str:
    keys = ordered_models(results["models"])
    if not keys:
        return ""
    cost = results["models"][keys[0]]["cost"]  # the harness's settings are the same for every model
    note = (f"Generation cost measured by one harness for every model: greedy, one output at a time, end to end "
            f"from text, over {cost['outputs']} test prompts, at most {cost['max_new_tokens']} new tokens, "
            f"{cost['threads']} threads. Speed-up = the model's tokens/s over the teacher's "
            "(and the teacher's seconds per output over the model's).")
    if "fixed_length_tokens_per_s" in cost:
        note += (f" The tokens/s in brackets, and the speed-up in tokens/s, are timed again on the same prompts with "
                 f"every output written to exactly {cost['max_new_tokens']} tokens (EOS and stop strings held back), "
                 "so a model that writes longer outputs (its prompt's cost spread over more tokens) is not favoured.")
    if any(row.get("speedup_paired_median") for row in results["comparison"]):
        note += (" Each student's speed-up in tokens/s is the median, over those prompts, of its tokens/s over the "
                 "teacher's on the same prompt, timed right after it, so that load on a shared machine changes both "
                 "timings alike; the teacher's row shows its own first timing.")
    if "timings" in results:
        note += " Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                                          for k, v in results["timings"].items()) + "."
    return note


# ---------------------------------------------------------------- tables


def _card(results: Record) -> Table:
    metric = _headline_name(results)
    header = ["model", metric, "% of teacher", "faithfulness", "% of teacher", "params (size on disk)",
              "s per output p50 / p95", "tokens/s (fixed length)", "speed-up (tokens/s / p50)"]
    rows, keys = [], []
    for row in results["comparison"]:
        cost = results["models"][row["model"]]["cost"]
        seeds = f" ({row['seeds']} seeds)" if row["seeds"] else ""
        headline = "—" if row["headline"] is None else _num(row["headline"]) + (
            f" ± {_num(row['headline_std'])}{seeds}" if row["seeds"] else "")
        faithfulness = "—" if row["faithfulness"] is None else _num(row["faithfulness"]) + (
            f" ± {_num(row['faithfulness_std'])}" if row["seeds"] else "")
        rows.append([f"{_name(row['model'])} (`{row['name']}`)", headline, _pct(row["headline_retained_pct"]),
                     faithfulness, _pct(row["faithfulness_retained_pct"]),
                     f"{row['parameters'] / 1e6:,.1f} M ({_fmt_bytes(cost.get('size_on_disk_bytes'))})",
                     f"{cost['seconds_p50']:.2f} / {cost['seconds_p95']:.2f}", f"{cost['tokens_per_s']:.1f}" + (
                         f" ({cost['fixed_length_tokens_per_s']:.1f})" if "fixed_length_tokens_per_s" in cost else ""),
                     f"{_times(row['speedup_tokens_per_s'])} / {_times(row['speedup_seconds_p50'])}"])
        keys.append(row["model"])
    return header, rows, keys


def _every_metric(results: Record) -> Table:
    models, keys = results["models"], ordered_models(results["models"])
    present = [m for m in METRICS if any(m in e.get("metrics", e.get("summary", {})) for e in models.values())]
    header = ["metric", *(_name(k) + (f" ({len(models[k]['seeds'])} seeds)" if "seeds" in models[k] else "")
                          for k in keys), "meaning"]
    rows = [[f"`{m}`", *(_metric(models[k], m) for k in keys), METRICS[m]] for m in present]
    return header, rows, [""] * len(rows)


def _shorten(text: str, num_words: int = SOURCE_PREVIEW_WORDS) -> str:
    words = text.split()
    return text if len(words) <= num_words else " ".join(words[:num_words]) + " …"


def _examples(results: Record) -> Table:
    examples = results.get("examples") or []
    keys = [k for k in MODEL_ORDER if any(k in ex for ex in examples)]
    header = ["id", f"source (first {SOURCE_PREVIEW_WORDS} words)", "reference"] + [_name(k) for k in keys]
    rows = [[ex["id"], _shorten(ex["source"]), ex["reference"]] + [ex.get(k, "—") for k in keys] for ex in examples]
    return header, rows, [""] * len(rows)


def _md_cell(text: str) -> str:
    # model output is data, not Markdown: a stray "|" would split the row, a "<tag>" render as HTML
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _md_table(table: Table) -> list[str]:
    header, rows, _ = table
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(_md_cell, row)) + " |" for row in rows)]


def _html_table(table: Table, css: str, *, marks: bool = False) -> str:
    """``marks`` (the card's own text, not model output) renders **bold** and `code`; otherwise every
    cell is escaped as plain text. Rows with a model key get its colour swatch."""
    header, rows, keys = table
    cell = _inline if marks else _e
    lines = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row, key in zip(rows, keys):
        swatch = f'<span class="swatch" style="background:{KIND_COLOURS.get(key, "#333")}"></span>' if key else ""
        css_row = ' class="distilled"' if key == "student_distilled" else ""
        cells = [swatch + cell(row[0])] + [cell(c) for c in row[1:]]
        lines.append(f"<tr{css_row}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="{css}">' + "\n".join(lines) + "</table>"


# ---------------------------------------------------------------- the two cards


def _title(results: Record) -> str:
    return f"Report card: {results['run']} ({results['task']}, generation: {results['evaluate_as']})"


def render_generation_markdown(results: Record, config_yaml: str) -> str:
    """report.md of a generative run."""
    copying = [f"- {line}" for line in _copying_lines(results)]
    lines = [f"# {_title(results)}", "", *_verdict(results), "", _references_note(results), "",
             f"## Teacher vs students (held-out test split, {results['test_examples']} examples)", "",
             *_md_table(_card(results)), "", _cost_note(results), "",
             "## Every metric", "", "Quality is scored against the references, copying against the source.", "",
             *_md_table(_every_metric(results)), "", *(copying + [""] if copying else []),
             "## Scorers", "", *(f"- {line}" for line in _scorer_notes(results))]
    judge = (results.get("scorers") or {}).get("faithfulness")
    if judge:
        lines += ["", "```text", judge["prompt"], "```"]
    if results.get("examples"):
        lines += ["", "## Example outputs", "", *_md_table(_examples(results))]
    lines += ["", "## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def generation_figures(results: Record, histories: dict[str, dict[int, list[Record]]]) -> list[Plot]:
    """The comparison chart and each trained variant's curves (loss terms; validation CE on the targets, or
    the ROUGE-L of the greedy outputs when the weights were kept by it)."""
    names = {key: _name(key) for key in results["models"]}
    metric = _headline_name(results)
    plots = []
    if results["comparison"]:
        plots.append(Plot("comparison.png", f"{metric} and judged faithfulness of every model "
                          "(bars: ± std over seeds; dashed: the teacher)",
                          generation_comparison_chart(results["comparison"], names, headline_label=metric)))
    for variant, by_seed in histories.items():
        # the validation figure the kept weights were chosen by (training.select_by)
        by_rouge = any("val_rouge_l" in r for history in by_seed.values() for r in history)
        plots.append(Plot(f"training_{_slug(variant)}.png",
                          f"Training curves: {_name('student_' + variant)}, every seed",
                          training_curves(variant, by_seed, val_key="val_rouge_l" if by_rouge else "val_target_ce",
                                          val_label="ROUGE-L of greedy outputs" if by_rouge else "target CE")))
    return plots


def render_generation_html(results: Record, histories: dict[str, dict[int, list[Record]]], config_yaml: str, *,
                           plots: list[Plot] | None = None) -> str:
    """report.html of a generative run. ``histories``: variant → seed → training-history records;
    ``plots``: figures already drawn by `generation_figures`."""
    plots = generation_figures(results, histories) if plots is None else plots
    training = [p for p in plots if p.name.startswith("training")]
    parts = [f"<h1>{_e(_title(results))}</h1>", *(f"<p>{_inline(line)}</p>" for line in _verdict(results)),
             f'<div class="warn" id="references">{_e(_references_note(results))}</div>'
             if results["references"] == "teacher" else f"<p>{_e(_references_note(results))}</p>",
             f'<h2 id="card">Teacher vs students (held-out test split, {_e(results["test_examples"])} examples)</h2>',
             _html_table(_card(results), "gen-card", marks=True),  # not "card", whose cells never wrap
             f'<p class="note">{_e(_cost_note(results))}</p>',
             '<h2 id="comparison">Comparison</h2>', *map(_figure, [p for p in plots if p.name == "comparison.png"])]
    if training:
        parts += ['<h2 id="training">Training curves</h2>', *map(_figure, training)]
    parts += ['<h2 id="metrics">Every metric</h2>',
              '<p class="note">Quality is scored against the references, copying against the source.</p>',
              _html_table(_every_metric(results), "described", marks=True),
              *(f"<p>{_inline(line)}</p>" for line in _copying_lines(results)),
              '<h2 id="scorers">Scorers</h2>', "<ul>" + "".join(f"<li>{_inline(line)}</li>"
                                                               for line in _scorer_notes(results)) + "</ul>"]
    judge = (results.get("scorers") or {}).get("faithfulness")
    if judge:
        parts.append(f"<pre>{_e(judge['prompt'])}</pre>")
    if results.get("examples"):
        parts += ['<h2 id="examples">Example outputs</h2>', _html_table(_examples(results), "examples")]
    return html_page(_title(results), parts + config_section(config_yaml))
