"""Each deployable form of a student measured the same way: test quality, size on disk, p50 / p95 latency at
batch 1 and throughput at a batch, with the cost harness the report card uses for every model
(`eval.labels.measure_cost`; `models.generate.generation_cost` for generation).

    label_row(model, test, cfg, folder)            -> row   (a LabelModel: PyTorch, ONNX or the teacher)
    generation_row(model, tokenizer, prompts, references, cfg, folder) -> row
    measure_export(cfg, export_dir, fmt)           -> rows  the PyTorch student and the export, one after the other,
                                                            written to <run>/eval/exports.json for the card

A row: {quality, quality_metric, p50_ms_batch1, p95_ms_batch1, per_s_batch32, size_mb}. For generation,
p50 / p95 are milliseconds per greedy output at batch 1 and `tokens_per_s` is generated tokens per second;
per_s_batch32 is None (generation is timed one prompt at a time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdistill.config import RunConfig
from kdistill.eval.labels import label_metrics, measure_cost, size_on_disk
from kdistill.eval.labels import predict as predict_logits
from kdistill.export.folder import load_export, size_mb
from kdistill.io import atomic_write_json

FORM = {"onnx": "onnx_fp32", "onnx-int8": "onnx_int8"}
"""The form a format is shown as (benchmarks/results/export.json's `form`)."""


def _mb(folder: str | Path | None) -> float | None:
    if folder is None or not Path(folder).is_dir():
        return None
    return size_mb(folder) if (Path(folder) / "model.onnx").exists() else (size_on_disk(folder) or 0) / 1e6


def label_row(model, test: list, cfg: RunConfig, folder: str | Path | None) -> dict[str, Any]:
    """Macro-F1 on ``test`` and the card's cost figures of one label model."""
    ev = cfg.evaluation
    logits = predict_logits(model, test, batch_size=cfg.student.batch_size, progress=False)
    gold = [cfg.task.labels.index(e.label) for e in test]
    metrics = label_metrics(gold, logits.argmax(-1).tolist(), cfg.task.labels)
    cost = measure_cost(model, test, latency_examples=ev.latency_examples,
                        throughput_batch_size=ev.throughput_batch_size, throughput_batches=ev.throughput_batches,
                        warmup_batches=ev.warmup_batches)
    return {"quality": metrics["macro_f1"], "quality_metric": "macro_f1", "accuracy": metrics["accuracy"],
            "p50_ms_batch1": cost["latency_p50_ms"], "p95_ms_batch1": cost["latency_p95_ms"],
            "per_s_batch32": cost["throughput_examples_per_s"], "throughput_batch_size": cost["throughput_batch_size"],
            "latency_examples": cost["latency_examples"], "size_mb": _mb(folder), "threads": cost["threads"],
            "predictions": logits.argmax(-1).tolist()}


def generation_row(model, tokenizer, prompts: list[str], references: list[str] | None, cfg: RunConfig,
                   folder: str | Path | None, *, texts: list[str] | None = None) -> dict[str, Any]:
    """ROUGE-L against ``references`` and the generation cost of one model (PyTorch or ONNX); ``texts``: its
    greedy outputs on ``prompts`` when they are already made."""
    from kdistill.eval.text_metrics import rouge
    from kdistill.models.generate import generation_cost, greedy_texts

    limit = cfg.student.max_length - cfg.task.max_new_tokens
    texts = texts or greedy_texts(model, tokenizer, prompts, max_new_tokens=cfg.task.max_new_tokens,
                         max_length=cfg.student.max_length, batch_size=cfg.student.batch_size, stop=cfg.task.stop)
    n = max(1, min(cfg.evaluation.latency_examples, len(prompts)))
    cost = generation_cost(model, tokenizer, prompts[:n], max_new_tokens=cfg.task.max_new_tokens,
                           max_prompt_tokens=limit, stop=cfg.task.stop)
    fixed = generation_cost(model, tokenizer, prompts[:n], max_new_tokens=cfg.task.max_new_tokens, warmup=0,
                            max_prompt_tokens=limit, fixed_length=True)
    return {"quality": rouge(texts, references)["rougeL"].mean if references else None, "quality_metric": "rougeL",
            "p50_ms_batch1": 1000 * cost["seconds_p50"], "p95_ms_batch1": 1000 * cost["seconds_p95"],
            "per_s_batch32": None, "tokens_per_s": cost["tokens_per_s"],
            "fixed_length_tokens_per_s": fixed["tokens_per_s"], "latency_examples": cost["outputs"],
            "size_mb": _mb(folder), "threads": cost["threads"], "outputs": texts}


def scored_references(cfg: RunConfig, examples: list) -> list[str] | None:
    """The test references the run's evaluation scored against (eval/outputs.jsonl), else the data's targets."""
    path = cfg.paths.outputs
    if path.is_file():
        by_id = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            ref = record["reference"]
            by_id[record["id"]] = ref if isinstance(ref, str) else ref[0]
        if all(e.id in by_id for e in examples):
            return [by_id[e.id] for e in examples]
    return [e.target for e in examples] if cfg.task.targets != "teacher" else None


def measure_export(cfg: RunConfig, export_dir: str | Path, fmt: str) -> dict[str, Any]:
    """The PyTorch student, then the export, on the test split; recorded under ``fmt`` in eval/exports.json."""
    student = cfg.paths.exported_student
    kind = json.loads((student / "kdistill.json").read_text(encoding="utf-8"))["kind"]
    if kind == "encoder":
        from kdistill.data.prepare import prepare_data
        from kdistill.models import load_saved

        test = prepare_data(cfg.data, cfg.task).test
        rows = {"pytorch": label_row(load_saved(student), test, cfg, student),
                FORM[fmt]: label_row(load_export(export_dir), test, cfg, export_dir)}
        agreement = _agreement(rows["pytorch"].pop("predictions"), rows[FORM[fmt]].pop("predictions"))
    else:
        rows, agreement = _generation_rows(cfg, student, export_dir, fmt)
    record = {"export_dir": str(export_dir), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "test_agreement": agreement, "rows": rows}
    _record(cfg.paths.export_measurements, fmt, record)
    return record


def _agreement(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def _generation_rows(cfg: RunConfig, student: Path, export_dir: str | Path, fmt: str) -> tuple[dict, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text

    test = prepare_generation(cfg.data, cfg.task).test
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in test]
    references = scored_references(cfg, test)
    tokenizer = AutoTokenizer.from_pretrained(student)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    module = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    rows = {"pytorch": generation_row(module, tokenizer, prompts, references, cfg, student)}
    del module
    rows[FORM[fmt]] = generation_row(*load_export(export_dir), prompts, references, cfg, export_dir)
    return rows, _agreement(rows["pytorch"].pop("outputs"), rows[FORM[fmt]].pop("outputs"))


def _record(path: Path, fmt: str, record: dict[str, Any]) -> None:
    """Add (or replace) one format's measurement, keeping the others'."""
    held = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    atomic_write_json(path, {**held, fmt: record})
