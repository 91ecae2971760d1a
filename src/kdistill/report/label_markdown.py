"""The report card: results.json rendered as Markdown. Every figure comes from results.json."""

from __future__ import annotations

from typing import Any

ROW_NAMES = {
    "teacher": "teacher",
    "student_untrained": "student, untrained",
    "student_labels_only": "student, labels only",
    "student_distilled": "student, distilled",
}


def _row_name(key: str, entry: dict[str, Any]) -> str:
    if "ensemble" in entry:
        return f"teachers' ensemble ({entry['ensemble']['combine']})"
    if key.startswith("teacher:"):
        return f"teacher {key.removeprefix('teacher:')}"
    return ROW_NAMES.get(key, key)


def _fmt_bytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f} MB"


def _comparison_table(rows: list[dict[str, Any]], models: dict[str, Any]) -> list[str]:
    lines = ["| model | macro-F1 | accuracy | % of teacher | params | size on disk | latency p50 / p95 (ms, batch 1) "
             "| throughput (ex/s) | speed-up (latency / throughput) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cost = models[row["model"]]["cost"]
        f1 = f"{row['macro_f1']:.3f}" + (f" ± {row['macro_f1_std']:.3f} ({row['seeds']} seeds)" if row["seeds"] else "")
        retained = "—" if row["retained_pct"] is None else f"{row['retained_pct']:.1f} %"
        lines.append(
            f"| {_row_name(row['model'], models[row['model']])} (`{row['name']}`) | {f1} | {row['accuracy']:.3f} | {retained} "
            f"| {row['parameters'] / 1e6:,.1f} M | {_fmt_bytes(cost['size_on_disk_bytes'])} "
            f"| {cost['latency_p50_ms']:.1f} / {cost['latency_p95_ms']:.1f} | {row['throughput_examples_per_s']:.1f} "
            f"| {row['speedup_latency']:.1f}× / {row['speedup_throughput']:.1f}× |")
    return lines


def _model_metrics(key: str, entry: dict[str, Any], labels: list[str]) -> list[str]:
    metrics = entry["metrics"] if "metrics" in entry else next(iter(entry["seeds"].values()))
    note = "" if "metrics" in entry else f" (first seed, {next(iter(entry['seeds']))}; mean ± std over seeds below)"
    lines = [f"### {_row_name(key, entry)}{note}", ""]
    if "ensemble" in entry:
        weights = entry["ensemble"].get("weights") or entry["ensemble"].get("mean_weights")
        lines += [f"Combined by `{entry['ensemble']['combine']}`, weights "
                  + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
                  + ("" if "weights" in entry["ensemble"] else " (mean of the per-example weights)")
                  + ". Its cost is the sum of its members' measured costs.", ""]
    lines.append(f"macro precision {metrics['macro_precision']:.3f} · macro recall {metrics['macro_recall']:.3f} · "
                 f"macro-F1 {metrics['macro_f1']:.3f} · accuracy {metrics['accuracy']:.3f} · "
                 f"most-predicted class {metrics['majority_prediction_label']!r} gets "
                 f"{100 * metrics['majority_prediction_share']:.1f} % of predictions"
                 + (f" · agreement with the teacher {100 * metrics['teacher_agreement']:.1f} %"
                    if "teacher_agreement" in metrics else ""))
    if metrics.get("collapse_warning"):
        lines += ["", f"⚠ {metrics['collapse_warning']}"]
    lines += ["", "| gold \\ predicted | " + " | ".join(labels) + " | recall |",
              "|---" * (len(labels) + 2) + "|"]
    for label, row in zip(labels, metrics["confusion_matrix"]):
        lines.append(f"| **{label}** | " + " | ".join(str(v) for v in row)
                     + f" | {metrics['per_class_recall'][label]:.3f} |")
    if "summary" in entry:
        s = entry["summary"]
        lines += ["", "Over seeds: " + " · ".join(f"{k} {s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
                                                  for k in ("macro_f1", "accuracy", "macro_precision", "macro_recall",
                                                            "majority_prediction_share", "teacher_agreement") if k in s)]
    return lines + [""]


def warnings_of(entry: dict[str, Any]) -> list[str]:
    """A model's collapse warnings: its own, or each seed's (a collapse in one seed of three is still news)."""
    if "metrics" in entry:
        return [entry["metrics"]["collapse_warning"]] if entry["metrics"].get("collapse_warning") else []
    return [f"seed {seed}: {metrics['collapse_warning']}"
            for seed, metrics in entry["seeds"].items() if metrics.get("collapse_warning")]


def _warning_lines(results: dict[str, Any]) -> list[str]:
    """Every collapse, of every model and seed, at the top of the card: the detail shows the first seed only."""
    return [f"⚠ {_row_name(key, entry)}: {w}" for key, entry in results["models"].items() for w in warnings_of(entry)]


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["model"]: r for r in rows}
    if "student_distilled" not in by:
        return []
    d = by["student_distilled"]
    lines = [f"The distilled student keeps **{d['retained_pct']:.1f} %** of the teacher's macro-F1 "
             f"({d['macro_f1']:.3f} vs {by['teacher']['macro_f1']:.3f}) and answers "
             f"**{d['speedup_latency']:.1f}×** faster at batch 1 ({d['speedup_throughput']:.1f}× the throughput)."]
    if "student_labels_only" in by:
        lo = by["student_labels_only"]
        delta = d["macro_f1"] - lo["macro_f1"]
        word = "better than" if delta > 0 else "worse than" if delta < 0 else "the same as"
        lines.append(f"Against the same student trained on the labels alone ({lo['macro_f1']:.3f} ± "
                     f"{lo['macro_f1_std']:.3f}), distillation is {word} it by {abs(delta):.3f} macro-F1.")
        if delta < 0:  # the teacher's signal cost quality: a user must not ship this student believing otherwise
            lines.append("⚠ **The distilled student trails the labels-only baseline**: here the teacher's labels hurt. "
                         "Compare the teacher's own macro-F1 and most-predicted share above; a weak or skewed teacher "
                         "wants a lower `objective.kd.weight` or a better teacher.")
    return lines


def teacher_cost_sentence(results: dict[str, Any]) -> str | None:
    """What asking the teachers cost this run, in one sentence (results.json's `teacher_cost`; absent in older runs)."""
    if "teacher_cost" not in results:
        return None
    total = results["teacher_cost"]["total"]
    tokens = ("prompt tokens unknown (the server reported no usage)" if total["prompt_tokens"] is None
              else f"{total['prompt_tokens']:,} prompt tokens")
    return (f"Teacher cost: **{total['calls']:,} calls** (texts a teacher computed an answer for, for this run, every "
            f"ensemble member counted; {total['from_cache']:,} of the {total['texts_answered']:,} answers used came "
            f"from the teacher cache and are not calls), {tokens}, {total['seconds']:.1f} s of elicitation.")


def teacher_cost_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per teacher of an ensemble: name, calls, from the cache, prompt tokens, seconds."""
    members = results.get("teacher_cost", {}).get("teachers", {})
    if len(members) < 2:
        return []
    return [[name, f"{m['calls']:,}", f"{m['from_cache']:,}",
             "—" if m["prompt_tokens"] is None else f"{m['prompt_tokens']:,}", f"{m['seconds']:.1f}"]
            for name, m in members.items()]


TEACHER_COST_COLUMNS = ["teacher", "calls", "from the cache", "prompt tokens", "seconds"]
SELECTION_COLUMNS = ["student", "trained on (texts)", "teacher calls so far", "validation macro-F1", "then chose"]


def selection_sentence(results: dict[str, Any]) -> str | None:
    """Under a teacher budget: how many pool texts the teacher was asked about, and how they were chosen."""
    selection = results.get("selection")
    if selection is None:
        return None
    how = {"active": "the student's most uncertain texts (predictive entropy)"
                     + (", spread over k-means clusters of its embeddings" if selection["diversity"] == "kmeans" else ""),
           "typical": "the most typical text of each k-means cluster of the student's embeddings",
           "random": "a seeded random draw"}[selection["strategy"]]
    return (f"Teacher budget: the teacher was asked about **{selection['budget']:,}** of the {selection['pool']:,} "
            f"texts without gold labels, chosen in {len(selection['rounds'])} rounds by {how}; each round's student "
            "trains on the labelled texts and the texts chosen before it.")


def selection_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per selection round's student, then the distilled student (first seed) on every chosen text."""
    def f1(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    selection = results["selection"]
    rows = [[f"round {r['round']}", f"{r['trained_on']:,}", f"{r['teacher_calls']:,}", f1(r["val_macro_f1"]),
             f"{r['chosen']:,}"] for r in selection["rounds"]]
    final = selection["final"]
    trained_on = results["data"]["totals"]["train"]
    return rows + [["distilled (first seed)", f"{trained_on:,}", f"{final['teacher_calls']:,}",
                    f1(final["val_macro_f1"]), "—"]]


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def _teacher_cost_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if teacher_cost_sentence(results):
        lines += [teacher_cost_sentence(results), ""]
    if teacher_cost_rows(results):
        lines += _table(TEACHER_COST_COLUMNS, teacher_cost_rows(results)) + [""]
    if selection_sentence(results):
        lines += [selection_sentence(results), "", *_table(SELECTION_COLUMNS, selection_rows(results)), ""]
    return lines


def render_markdown(results: dict[str, Any], config_yaml: str) -> str:
    models, labels = results["models"], results["labels"]
    data = results["data"]
    lines = [f"# Report card: `{results['run']}` ({results['task']})", ""]
    lines += _verdict(results["comparison"]) + [""]
    if _warning_lines(results):
        lines += _warning_lines(results) + [""]
    num_train, num_labelled = data["totals"]["train"], data.get("labelled_train", data["totals"]["train"])
    if num_labelled < num_train:
        lines += [f"Setting: gold labels for **{num_labelled}** of the {num_train} training examples. The labels-only "
                  f"student trains on those {num_labelled} (for as many optimizer steps as the distilled one); the "
                  f"distilled student also learns from the other {num_train - num_labelled} texts, labelled by the "
                  "teacher alone (a transfer set).", ""]
    lines += ["## Teacher vs students (held-out test split, "
              f"{results['test_examples']} examples)", ""]
    lines += _comparison_table(results["comparison"], models) + [""]
    cost = models["teacher"]["cost"]
    lines += [f"Cost measured by one harness for every model: end to end from text (tokenization included), "
              f"on `{cost['device']}` with {cost['threads']} threads; latency over {cost['latency_examples']} "
              f"test examples one by one, throughput at batch {cost['throughput_batch_size']}. "
              "% of teacher = macro-F1 / the teacher's macro-F1.", ""]
    if "timings" in results:
        t = results["timings"]
        lines += ["Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items()), ""]
    lines += _teacher_cost_lines(results)
    lines += ["## Per-model detail", ""]
    for key, entry in models.items():
        lines += _model_metrics(key, entry, labels)
    lines += ["## Data", "", "| split | " + " | ".join(labels) + " | total |", "|---" * (len(labels) + 2) + "|"]
    for split, counts in data["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(label, 0)) for label in labels)
                     + f" | {sum(counts.values())} |")
    lines += ["", f"Rows read {data['rows_read']}, duplicates removed {data['duplicates_removed']}, "
              f"label conflicts dropped {data['label_conflicts']['count']}, ignored rows {data['ignored_rows']}, "
              f"texts truncated {data['truncated']}. Test texts never appear in training (deduplicated before the split).",
              ""]
    if data.get("imbalance_warning"):
        lines += [f"⚠ {data['imbalance_warning']}", ""]
    lines += ["## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
