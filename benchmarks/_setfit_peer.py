"""The efficacy suite's peer: SetFit (setfit 1.2.0), the few-shot method a user would pick instead of
distillation, trained on a run's labelled texts and scored on its test texts with kdistill's own metrics.

Its settings are those the issue measured SetFit with (20 pair iterations, batch 32, one epoch), on the
same sentence-transformers body as the student; everything else is setfit's default, so the peer is the one
a user gets, never a shortened one. `pip install -e ".[efficacy]"` installs it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from kdistill.data import Example
from kdistill.eval.labels import label_metrics

REFERENCE_SETTINGS = {"num_iterations": 20, "batch_size": 32, "num_epochs": 1}
SMOKE_SETTINGS = {"num_iterations": 1, "batch_size": 32, "num_epochs": 1}  # an end-to-end check, not a figure


@dataclass(frozen=True)
class PeerResult:
    """One SetFit seed's test figures and how long it took (training and prediction)."""

    metrics: dict[str, Any]
    seconds: float


def train_setfit(body: str, labels: list[str], labelled: list[Example], test: list[Example], *, seed: int,
                 settings: dict[str, int]) -> PeerResult:
    """SetFit on ``body`` (a local sentence-transformers folder), trained on ``labelled`` with ``seed``, scored
    on ``test``: contrastive pairs fine-tune the body, then a logistic-regression head fits its embeddings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the body is local; a hub lookup would be a mistake
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    start = time.perf_counter()
    model = SetFitModel.from_pretrained(body)
    train = Dataset.from_dict({"text": [e.text for e in labelled], "label": [labels.index(e.label) for e in labelled]})
    # setfit writes checkpoints to ./checkpoints by default: none are needed, and none may land in the repo
    with tempfile.TemporaryDirectory(prefix="setfit-") as scratch:
        args = TrainingArguments(output_dir=scratch, save_strategy="no", report_to="none", seed=seed, **settings)
        Trainer(model=model, args=args, train_dataset=train).train()
    pred = [int(p) for p in model.predict([e.text for e in test])]
    gold = [labels.index(e.label) for e in test]
    return PeerResult(metrics=label_metrics(gold, pred, labels), seconds=time.perf_counter() - start)
