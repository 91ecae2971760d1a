"""The parity check an export must pass before it is written: the exported student against the PyTorch one,
on the same texts (the validation split).

    label_parity(reference, exported, examples, labels)        agreement, macro-F1 of each, max |logit difference|
    generation_parity(reference, exported, prompts, ...)       ROUGE-L to the PyTorch outputs, of each, logits
    Thresholds.for_format(fmt) / .failures(parity)             what is checked, and the sentence when it fails
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from kdistill.eval.labels import label_metrics
from kdistill.eval.labels import predict as predict_logits


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """What an export must reach on the validation texts to be written."""

    min_agreement: float
    """Label tasks: the share of texts given the same label as the PyTorch student. Generation: the mean ROUGE-L
    of the export's greedy output against the PyTorch student's (1 when every output is the same text; int8
    weights change a word here and there, which an exact-match share would count as a whole miss)."""
    max_quality_drop: float
    """How far the export's validation quality (macro-F1; ROUGE-L for generation, where the references are in
    the data) may fall below the PyTorch student's, as a fraction (0.01 = 1 point)."""
    max_logit_diff: float | None
    """The largest absolute difference of any logit (label logits; next-token logits after each prompt);
    None reports it without a limit (int8 weights move logits by design: agreement and quality judge them)."""

    @classmethod
    def for_format(cls, fmt: str, **overrides: float | None) -> "Thresholds":
        """The defaults of a format, with ``overrides`` (None: keep the default)."""
        base = (cls(min_agreement=0.99, max_quality_drop=0.005, max_logit_diff=1e-2) if fmt == "onnx"
                else cls(min_agreement=0.95, max_quality_drop=0.01, max_logit_diff=None))
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{f.name: given.get(f.name, getattr(base, f.name)) for f in fields(cls)})

    def failures(self, parity: dict[str, Any]) -> list[str]:
        """Each threshold the parity misses, as a phrase; empty when the export may be written."""
        out = []
        if parity["agreement"] < self.min_agreement:
            out.append(f"agreement {parity['agreement']:.3f} < {self.min_agreement} (--min-agreement)")
        drop = parity.get("quality_drop")
        if drop is not None and drop > self.max_quality_drop:
            out.append(f"{parity['quality_metric']} drop {drop:.4f} > {self.max_quality_drop} (--max-quality-drop)")
        if self.max_logit_diff is not None and parity["max_logit_diff"] > self.max_logit_diff:
            out.append(f"max logit difference {parity['max_logit_diff']:.2g} > {self.max_logit_diff} "
                       "(--max-logit-diff)")
        return out


def label_parity(reference, exported, examples: list, labels: list[str], *, batch_size: int) -> dict[str, Any]:
    """The exported label student against the PyTorch one on ``examples`` (which carry gold labels)."""
    ref_bl = predict_logits(reference, examples, batch_size=batch_size, progress=False)  # (N, L)
    out_bl = predict_logits(exported, examples, batch_size=batch_size, progress=False)  # (N, L)
    gold = [labels.index(e.label) for e in examples]
    ref_f1 = label_metrics(gold, ref_bl.argmax(-1).tolist(), labels)["macro_f1"]
    out_f1 = label_metrics(gold, out_bl.argmax(-1).tolist(), labels)["macro_f1"]
    return {"examples": len(examples), "agreement": float((ref_bl.argmax(-1) == out_bl.argmax(-1)).float().mean()),
            "quality_metric": "macro_f1", "pytorch_quality": ref_f1, "export_quality": out_f1,
            "quality_drop": ref_f1 - out_f1, "max_logit_diff": float((ref_bl - out_bl).abs().max())}


def generation_parity(reference: tuple, exported: tuple, prompts: list[str], references: list[str] | None, *,
                      generate) -> dict[str, Any]:
    """``reference`` and ``exported`` are (model, tokenizer) pairs; ``generate(model, tokenizer, prompts)`` gives
    their greedy texts. Quality (ROUGE-L) is scored where the data hold ``references``."""
    from kdistill.eval.text_metrics import rouge

    ref_texts, out_texts = generate(*reference, prompts), generate(*exported, prompts)
    parity: dict[str, Any] = {
        "examples": len(prompts), "agreement": _output_agreement(out_texts, ref_texts),
        "identical_outputs": float(np.mean([a == b for a, b in zip(ref_texts, out_texts)])), "quality_metric": "rougeL",
        "max_logit_diff": _next_token_logit_diff(reference, exported, prompts)}
    if references:
        ref_q, out_q = rouge(ref_texts, references)["rougeL"].mean, rouge(out_texts, references)["rougeL"].mean
        parity |= {"pytorch_quality": ref_q, "export_quality": out_q, "quality_drop": ref_q - out_q}
    return parity


def _output_agreement(outputs: list[str], references: list[str]) -> float:
    """Mean ROUGE-L of each output against the PyTorch one; the same text counts 1 (even one with no words)."""
    from kdistill.eval.text_metrics import rouge

    scores = rouge(outputs, references)["rougeL"].per_example
    return float(np.mean([1.0 if a == b else s for a, b, s in zip(outputs, references, scores)]))


def _next_token_logit_diff(reference: tuple, exported: tuple, prompts: list[str]) -> float:
    """The largest |difference| of the next-token logits after each prompt (one prompt at a time: no padding)."""
    (module, tokenizer), (graph, _) = reference, exported
    worst = 0.0
    for prompt in prompts:
        enc = tokenizer([prompt], return_tensors="pt")
        with torch.no_grad():
            ref_v = module(**enc).logits[0, -1].float().numpy()  # (V,)
        out_v, _ = graph.forward(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), graph.empty_cache(1))
        worst = max(worst, float(np.abs(ref_v - out_v[0, -1]).max()))
    return worst
