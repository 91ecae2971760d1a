"""The efficacy suite's Markdown: per task and label count, each method's median macro-F1 over seeds with its
spread, its distance from SetFit and from the labels-only student, and the issue's acceptance checks."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

METHOD_TITLES = {
    "teacher": "teacher", "labels_only": "labels only", "setfit": "SetFit", "distilled_full": "distilled, full pool",
    "active_25": "active, 25 % of pool", "active_50": "active, 50 % of pool",
    "random_25": "random, 25 % of pool", "random_50": "random, 50 % of pool",
    "typical_25": "typical, 25 % of pool", "typical_50": "typical, 50 % of pool",
}
CHECK_LABELS = 200  # the issue states its acceptance checks at 200 labels


def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """(task, n_labels, method) → the median macro-F1 over seeds, its min and max, the seeds and teacher calls."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["n_labels"], row["method"])].append(row)
    return {key: {"median": statistics.median(r["macro_f1"] for r in group),
                  "min": min(r["macro_f1"] for r in group), "max": max(r["macro_f1"] for r in group),
                  "seeds": len(group), "teacher_calls": statistics.median(r["teacher_calls"] for r in group)}
            for key, group in groups.items()}


def _points(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{100 * (a - b):+.1f}"


def _table(task: str, n_labels: int, stats: dict[tuple[str, int, str], dict[str, Any]]) -> list[str]:
    def median(method: str) -> float | None:
        return stats[(task, n_labels, method)]["median"] if (task, n_labels, method) in stats else None

    lines = [f"### {task}, {n_labels} labels", "",
             "| method | macro-F1 (median) | min–max | Δ vs SetFit (points) | Δ vs labels only (points) "
             "| % of teacher | teacher calls | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for method, title in METHOD_TITLES.items():
        if (task, n_labels, method) not in stats:
            continue
        s, teacher = stats[(task, n_labels, method)], median("teacher")
        share = f"{100 * s['median'] / teacher:.1f} %" if teacher else ""
        lines.append(f"| {title} | {s['median']:.3f} | {s['min']:.3f}–{s['max']:.3f} "
                     f"| {_points(s['median'], median('setfit'))} | {_points(s['median'], median('labels_only'))} "
                     f"| {share} | {s['teacher_calls']:,.0f} | {s['seeds']} |")
    return lines + [""]


def acceptance(stats: dict[tuple[str, int, str], dict[str, Any]], n_labels: int) -> dict[str, dict[str, bool | None]]:
    """Check name → task → passed (None where a method it needs was not run), on medians at ``n_labels``."""
    tasks = sorted({task for task, n, _ in stats if n == n_labels})

    def m(task: str, method: str) -> float | None:
        return stats[(task, n_labels, method)]["median"] if (task, n_labels, method) in stats else None

    def check(test: Any, *needed: str) -> dict[str, bool | None]:
        return {task: (None if any(m(task, x) is None for x in needed) else bool(test(task))) for task in tasks}

    return {
        "distilled ≥ 95 % of teacher": check(lambda t: m(t, "distilled_full") >= 0.95 * m(t, "teacher"),
                                             "distilled_full", "teacher"),
        "distilled ≥ labels only + 3 points": check(lambda t: m(t, "distilled_full") >= m(t, "labels_only") + 0.03,
                                                    "distilled_full", "labels_only"),
        "distilled ≥ SetFit + 1 point": check(lambda t: m(t, "distilled_full") >= m(t, "setfit") + 0.01,
                                              "distilled_full", "setfit"),
        # the checks are active selection's; typical's are the same two, for the strategy tried when active lost
        **{f"{strategy} {p} % within 1 point of the full pool": check(
            lambda t, x=f"{strategy}_{p}": m(t, x) >= m(t, "distilled_full") - 0.01, f"{strategy}_{p}", "distilled_full")
           for strategy in ("active", "typical") for p in (25, 50)},
        **{f"{strategy} {p} % above random {p} %": check(
            lambda t, x=f"{strategy}_{p}", r=f"random_{p}": m(t, x) > m(t, r), f"{strategy}_{p}", f"random_{p}")
           for strategy in ("active", "typical") for p in (25, 50)},
    }


def _acceptance_lines(checks: dict[str, dict[str, bool | None]], n_labels: int) -> list[str]:
    lines = [f"## Acceptance checks at {n_labels} labels (medians over seeds)", "",
             "| check | tasks passed | per task |", "|---|---|---|"]
    for name, per_task in checks.items():
        judged = {t: ok for t, ok in per_task.items() if ok is not None}
        detail = ", ".join(f"{t} {'yes' if ok else 'no'}" for t, ok in judged.items()) or "not run"
        lines.append(f"| {name} | {sum(judged.values())} of {len(judged)} | {detail} |")
    return lines + [""]


def markdown(summary: dict[str, Any]) -> str:
    rows, settings = summary["rows"], summary["settings"]
    stats = medians(rows)
    label_counts = sorted({n for _, n, _ in stats})
    check_at = CHECK_LABELS if CHECK_LABELS in label_counts else max(label_counts, default=CHECK_LABELS)
    title = "Efficacy suite" + (" — SMOKE RUN: tiny settings, not figures to quote" if settings["smoke"] else "")
    lines = [f"# {title}", "",
             f"Tasks {', '.join(settings['tasks'])}; {' and '.join(map(str, settings['labels']))} gold labels; seeds "
             f"{', '.join(map(str, settings['seeds']))}; the rest of each training split is the unlabelled pool. "
             "Every method of a task and label count is scored on the same test texts, and the students and SetFit "
             f"see the same labelled texts. SetFit: setfit 1.2.0, {settings['setfit']}, on the student's body. "
             f"Overrides on every job: {settings['overrides'] or 'none'}.", "",
             "Macro-F1 on the test split: the median over seeds and its range. The teacher is deterministic, so its "
             "seeds repeat one figure. Teacher calls: for the teacher, the test texts it labels; for a distilled "
             "student, every text its run asked the teacher about (labelled, pool or chosen pool texts, validation "
             "and test: what the run costs from an empty cache); labels only and SetFit ask none.", ""]
    for task in settings["tasks"]:
        for n_labels in label_counts:
            if any(key[:2] == (task, n_labels) for key in stats):
                lines += _table(task, n_labels, stats)
    lines += _acceptance_lines(acceptance(stats, check_at), check_at)
    minutes = {job: f"{s / 60:.1f}" for job, s in summary["seconds"].items()}
    lines += ["Wall minutes per job: " + "; ".join(f"{job} {m}" for job, m in minutes.items()) + ".", ""]
    return "\n".join(lines)
