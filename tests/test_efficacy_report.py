"""The efficacy suite's summary (benchmarks/_efficacy_report.py): medians over seeds, and each acceptance check
passed, failed or not judged exactly where the issue's thresholds put it. Pure: no model, no run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _efficacy_report import acceptance, markdown, medians  # noqa: E402


def _rows(task: str, figures: dict[str, list[float]]) -> list[dict]:
    return [{"task": task, "n_labels": 200, "seed": seed, "method": method, "macro_f1": f1, "teacher_calls": 0}
            for method, values in figures.items() for seed, f1 in enumerate(values)]


def test_medians_take_the_middle_seed_and_the_range():
    stats = medians(_rows("t", {"setfit": [0.70, 0.90, 0.72]}))
    assert stats[("t", 200, "setfit")] == {"median": 0.72, "min": 0.70, "max": 0.90, "seeds": 3, "teacher_calls": 0}


def test_checks_pass_at_their_thresholds_and_fail_just_below():
    passing = _rows("pass", {"teacher": [0.80] * 3, "distilled_full": [0.76] * 3, "labels_only": [0.73] * 3,
                             "setfit": [0.75] * 3, "active_25": [0.75] * 3, "random_25": [0.74] * 3})
    failing = _rows("fail", {"teacher": [0.80] * 3, "distilled_full": [0.759] * 3, "labels_only": [0.73] * 3,
                             "setfit": [0.75] * 3, "active_25": [0.748] * 3, "random_25": [0.748] * 3})
    checks = acceptance(medians(passing + failing), 200)
    for name in ("distilled ≥ 95 % of teacher", "active 25 % within 1 point of the full pool",
                 "active 25 % above random 25 %"):
        assert checks[name] == {"fail": False, "pass": True}, name
    assert checks["distilled ≥ labels only + 3 points"]["pass"] and checks["distilled ≥ SetFit + 1 point"]["pass"]
    assert checks["active 50 % above random 50 %"] == {"fail": None, "pass": None}  # not run: not judged


def test_markdown_marks_a_smoke_run_and_counts_the_tasks_that_passed():
    rows = _rows("t", {"teacher": [0.8], "distilled_full": [0.79], "labels_only": [0.7], "setfit": [0.75]})
    settings = {"smoke": True, "tasks": ["t"], "labels": [200], "seeds": [0], "overrides": {}, "setfit": {}}
    text = markdown({"settings": settings, "rows": rows, "seconds": {"t/200/full": 60.0}})
    assert "SMOKE RUN" in text and "| distilled ≥ 95 % of teacher | 1 of 1 | t yes |" in text
    assert "| distilled, full pool | 0.790 | 0.790–0.790 | +4.0 | +9.0 | 98.8 % | 0 | 1 |" in text
