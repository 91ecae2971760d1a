"""The card's "Deployable forms" section: the student as PyTorch fp32, ONNX fp32 and ONNX int8, and the
teacher, from `<run>/eval/exports.json` (written by `kdistill export`) and the run's own results.

Each export is timed right after the PyTorch student, by the same harness, in the same `kdistill export`
call; its speed-up is against that PyTorch timing, not against one taken at another time. The teacher's row
is the run's evaluation of it (same harness, another process).
"""

from __future__ import annotations

import html
from typing import Any

Record = dict[str, Any]
NAMES = {"pytorch": "PyTorch fp32 (the student)", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8",
         "teacher": "teacher"}


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def rows(measurements: Record, results: Record | None) -> list[list[str]]:
    """Table rows: PyTorch (the latest call's timing), each export, then the teacher."""
    calls = sorted(measurements.values(), key=lambda call: call["measured_at"])
    latest_pytorch = calls[-1]["rows"]["pytorch"]
    table = [_row("pytorch", latest_pytorch, None)]
    for call in calls:
        for form, row in call["rows"].items():
            if form != "pytorch":
                table.append(_row(form, row, call["rows"]["pytorch"]))
    teacher = _teacher_row(results)
    return table + ([teacher] if teacher else [])


def _row(form: str, row: Record, pytorch: Record | None) -> list[str]:
    speedup = pytorch["p50_ms_batch1"] / row["p50_ms_batch1"] if pytorch else 1.0
    speed = row.get("per_s_batch32")
    speed_text = (_num(speed, ".1f") + f" ex/s (batch {row.get('throughput_batch_size', 32)})" if speed is not None
                  else _num(row.get("tokens_per_s"), ".1f") + " tokens/s")
    return [NAMES.get(form, form), _num(row["quality"], ".3f"), _num(row["size_mb"], ".1f"),
            _num(row["p50_ms_batch1"], ".1f"), _num(row["p95_ms_batch1"], ".1f"), speed_text, f"{speedup:.2f}×"]


def _teacher_row(results: Record | None) -> list[str] | None:
    teacher = (results or {}).get("models", {}).get("teacher")
    if not teacher:
        return None
    cost, metrics = teacher["cost"], teacher["metrics"]
    quality = metrics.get("macro_f1", metrics.get("rougeL"))
    size = cost.get("size_on_disk_bytes")
    if "latency_p50_ms" in cost:
        p50, p95 = cost["latency_p50_ms"], cost["latency_p95_ms"]
        speed = _num(cost["throughput_examples_per_s"], ".1f") + f" ex/s (batch {cost['throughput_batch_size']})"
    else:
        p50, p95 = 1000 * cost["seconds_p50"], 1000 * cost["seconds_p95"]
        speed = _num(cost["tokens_per_s"], ".1f") + " tokens/s"
    return [NAMES["teacher"] + " (the run's evaluation)", _num(quality, ".3f"),
            _num(size / 1e6 if size else None, ".1f"), _num(p50, ".1f"), _num(p95, ".1f"), speed, "–"]


COLUMNS = ["form", "test quality", "size (MB)", "p50 ms (batch 1)", "p95 ms (batch 1)", "throughput",
           "p50 speed-up vs PyTorch (same call)"]


def _note(measurements: Record) -> str:
    first = next(iter(measurements.values()))
    metric = next(iter(first["rows"].values()))["quality_metric"]
    return (f"Test quality is {metric}. Each export was timed right after the PyTorch student in its own "
            "`kdistill export` call, by the card's one cost harness (end to end from text); size is the graph and "
            "its weights (safetensors for PyTorch). Agreement with the PyTorch student on the test split: "
            + ", ".join(f"{fmt} {call['test_agreement']:.3f}" for fmt, call in measurements.items()) + ".")


def export_lines(measurements: Record, results: Record | None) -> list[str]:
    """The section in markdown."""
    table = rows(measurements, results)
    lines = ["## Deployable forms", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return lines + ["", _note(measurements), ""]


def export_html(measurements: Record, results: Record | None) -> str:
    """The section as an html table."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows(measurements, results))
    return (f"<h2>Deployable forms</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>{html.escape(_note(measurements))}</p>")
