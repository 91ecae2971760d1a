"""Evaluation: task metrics (scikit-learn), collapse and agreement, and one cost harness for every model."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from tqdm.auto import tqdm

from kdistill.models import LabelModel

if TYPE_CHECKING:
    from kdistill.data import Example


def predict(model: LabelModel, examples: list["Example"], *, batch_size: int, desc: str = "evaluating",
            progress: bool = True) -> torch.Tensor:
    """(N, L) logits in example order."""
    out = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch", disable=not progress):
        out.append(model.predict_logits([e.text for e in examples[start:start + batch_size]]))
    return torch.cat(out) if out else torch.empty(0, len(model.labels))


def label_metrics(gold: list[int], pred: list[int], labels: list[str],
                  reference_pred: list[int] | None = None) -> dict[str, Any]:
    """Accuracy, macro P/R/F1, per-class recall, confusion matrix, majority share, agreement."""
    ids = list(range(len(labels)))
    precision, recall, f1, _ = precision_recall_fscore_support(gold, pred, labels=ids, average="macro", zero_division=0)
    _, per_recall, _, _ = precision_recall_fscore_support(gold, pred, labels=ids, average=None, zero_division=0)
    counts = [pred.count(i) for i in ids]
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_precision": float(precision), "macro_recall": float(recall), "macro_f1": float(f1),
        "per_class_recall": {label: float(r) for label, r in zip(labels, per_recall)},
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        # the seeds' "shortcutting" symptom: everything goes to one answer
        "majority_prediction_share": max(counts) / max(len(pred), 1),
        "majority_prediction_label": labels[counts.index(max(counts))],
    }
    metrics["collapse_warning"] = collapse_warning(metrics, gold, labels)
    if reference_pred is not None:
        metrics["teacher_agreement"] = sum(a == b for a, b in zip(pred, reference_pred)) / max(len(pred), 1)
    return metrics


def collapse_warning(metrics: dict[str, Any], gold: list[int], labels: list[str],
                     excess_share: float = 0.2, taken_share: float = 0.5) -> str | None:
    """The seeds' "shortcutting": a model that sends far more answers to one class than the data
    holds, or never predicts a class at all. None when neither happens.

    "Far more" is an excess of ``excess_share`` of all answers, or of ``taken_share`` of what the other
    classes hold, whichever is smaller: on a 65/35 set, 85 % of answers to the majority (half the minority's
    answers taken) is a collapse although the excess is only 20 points."""
    top = metrics["majority_prediction_label"]
    gold_share = gold.count(labels.index(top)) / max(len(gold), 1)
    never = [label for label, recall in metrics["per_class_recall"].items() if recall == 0]
    if metrics["majority_prediction_share"] - gold_share > min(excess_share, taken_share * (1 - gold_share)) > 0:
        return (f"collapse: {100 * metrics['majority_prediction_share']:.0f} % of predictions are {top!r}, "
                f"which is {100 * gold_share:.0f} % of the test labels")
    if never:
        return f"collapse: no example of {never} is ever recognized (recall 0)"
    return None


def size_on_disk(path: str | Path | None) -> int | None:
    """Bytes of weight files in a model folder (what a deployment ships)."""
    if path is None or not Path(path).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.suffix in {".safetensors", ".bin"})


def measure_cost(model: LabelModel, examples: list["Example"], *, latency_examples: int,
                 throughput_batch_size: int, throughput_batches: int, warmup_batches: int,
                 model_dir: str | Path | None = None, desc: str | None = None) -> dict[str, Any]:
    """Latency per example at batch 1 (p50 / p95) and throughput at a fixed batch, end to end from text.

    Every model is timed by this same function, on the same examples, tokenization included. ``desc``: a
    progress bar saying this, moved between timed calls (its own cost is outside every timing).
    """
    texts = [e.text for e in examples]
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    for text in texts[:warmup_batches]:
        model.predict_logits([text])
    latencies = []
    for text in tqdm(texts[:latency_examples], desc=desc, unit="ex", disable=desc is None, leave=False):
        start = time.perf_counter()
        model.predict_logits([text])
        sync()
        latencies.append(time.perf_counter() - start)
    batches = [texts[i:i + throughput_batch_size] for i in range(0, len(texts), throughput_batch_size)]
    batches = [b for b in batches if len(b) == throughput_batch_size][:throughput_batches] or batches[:1]
    model.predict_logits(batches[0])  # warm-up at this batch size
    start = time.perf_counter()
    for batch in batches:
        model.predict_logits(batch)
    sync()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "parameters": model.num_parameters(),
        "size_on_disk_bytes": size_on_disk(model_dir),
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "latency_examples": len(latencies),
        "throughput_examples_per_s": sum(len(b) for b in batches) / elapsed,
        "throughput_batch_size": len(batches[0]),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
    }
