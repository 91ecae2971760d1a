"""Knowledge elicitation: ask the teacher once, in label space, and keep its answers.

Task-aligned prompting with optional solved examples (seed knowledge) in the prompt, and optional
content-free calibration: the label distribution a prompt gives to "N/A" is the prompt's own bias,
and dividing it out makes a small prompted LLM a usable teacher (see MODELS.md's probe).
Recalibration on labelled examples (temperature, per-label offset) then fixes what is left.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kdistill.cache import CacheEntry, elicit_resumable, fingerprint, key_fields
from kdistill.config import TaskConfig, TeacherConfig
from kdistill.io import atomic_write_json, sha256_file
from kdistill.models import LabelModel
from kdistill.targets import TeacherTargets

if TYPE_CHECKING:
    from kdistill.data import Example


def few_shot_prefix(task: TaskConfig, train: list[Example], per_label: int, seed: int,
                    max_chars: int = 200) -> str:
    """Solved examples for the prompt: `per_label` of each label, interleaved (a, b, a, b), drawn from
    texts of at most `max_chars` characters so the prompt stays short."""
    if per_label <= 0:
        return ""
    rng = random.Random(seed)
    chosen: list[Example] = []
    for label in task.labels:
        pool = [e for e in train if e.label == label and len(e.text) <= max_chars] or \
               [e for e in train if e.label == label]
        chosen += rng.sample(pool, min(per_label, len(pool)))
    rounds = [chosen[i::per_label] for i in range(per_label)]  # interleave: a, b, c, a, b, c
    shots = [e for group in rounds for e in group]
    return "".join(task.few_shot_template.replace("{prompt}", task.prompt_template.replace("{text}", e.text))
                   .replace("{verbalizer}", task.verbalizers[e.label]) for e in shots)


def label_logprobs(model: LabelModel, texts: list[str], *, batch_size: int, desc: str = "eliciting",
                   progress: bool = True) -> torch.Tensor:
    """(N, L) label log-probabilities in input order; batches are sorted by length to waste no padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), len(model.labels))
    bar = tqdm(total=len(texts), desc=desc, unit="ex", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        logits_bl = model.predict_logits([texts[i] for i in idx])
        out[idx] = F.log_softmax(logits_bl, dim=-1)
        bar.update(len(idx))
    bar.close()
    return out


def pooled_hidden(model: LabelModel, texts: list[str], *, layers: list[int], pool: str, batch_size: int,
                  progress: bool = True) -> torch.Tensor:
    """(N, n, D) the teacher's pooled hidden states of ``layers``, in input order, length-sorted batches."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: torch.Tensor | None = None
    bar = tqdm(total=len(texts), desc="teacher hidden states", unit="ex", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        _, pooled_bnd = model.predict_logits_and_hidden([texts[i] for i in idx], layers, pool)
        if out is None:
            out = torch.empty(len(texts), *pooled_bnd.shape[1:])
        out[idx] = pooled_bnd
        bar.update(len(idx))
    bar.close()
    return out


def elicit(model: LabelModel, examples: list[Example], cfg: TeacherConfig, entry: CacheEntry, *,
           progress: bool = True, shard_size: int = 256, share: dict | None = None) -> TeacherTargets:
    """Label log-probs for ``examples``, computed into the cache ``entry`` shard by shard.

    Only shards the entry lacks are computed, so a run killed mid-way continues where it stopped, and a
    finished entry is read back without asking the teacher at all. ``share``: this process's part of a
    launch of several (`distributed.elicitation_share()`), every process calling this together.
    """
    text_of = {e.id: e.text for e in examples}
    bias_l = None

    def compute(ids: list[str]):
        nonlocal bias_l
        # the shard's own bar moves every batch, under the cache's bar that moves every shard
        logprobs_nl = label_logprobs(model, [text_of[i] for i in ids], batch_size=cfg.batch_size, progress=progress,
                                     desc="teacher: this shard")
        if cfg.calibrate:
            if bias_l is None:  # deterministic, so a resumed run divides by the same bias
                bias_l = content_free_bias(model, cfg.content_free_inputs)
            logprobs_nl = calibrate(logprobs_nl, bias_l)
        return logprobs_nl.numpy()

    ids = [e.id for e in examples]
    elicit_resumable(entry, ids, compute, shard_size=shard_size, progress=progress, **(share or {}))
    return TeacherTargets(ids, entry.labels(ids))


def elicit_hidden(model: LabelModel, examples: list[Example], entry: CacheEntry, *, layers: list[int], pool: str,
                  batch_size: int, progress: bool = True, shard_size: int = 256,
                  share: dict | None = None) -> TeacherTargets:
    """The teacher's pooled hidden states (N, n, D) for ``examples``, computed into ``entry`` (kind vectors)."""
    text_of = {e.id: e.text for e in examples}

    def compute(ids: list[str]):
        return pooled_hidden(model, [text_of[i] for i in ids], layers=layers, pool=pool, batch_size=batch_size,
                             progress=False).numpy()

    ids = [e.id for e in examples]
    elicit_resumable(entry, ids, compute, shard_size=shard_size, progress=progress, **(share or {}))
    return TeacherTargets(ids, entry.vectors(ids))


def content_free_bias(model: LabelModel, inputs: list[str]) -> torch.Tensor:
    """(L,) log of the mean label distribution the prompt gives to content-free inputs."""
    logprobs = label_logprobs(model, inputs, batch_size=len(inputs), progress=False)
    return logprobs.exp().mean(0).log()


def calibrate(logprobs_nl: torch.Tensor, bias_l: torch.Tensor) -> torch.Tensor:
    """p(y|x) / p_cf(y), renormalized (Zhao et al., 2021, diagonal W)."""
    return F.log_softmax(logprobs_nl - bias_l, dim=-1)


@dataclass
class Recalibration:
    """log p' = log_softmax(log p / temperature + bias), fitted on labelled examples."""

    temperature: float
    bias: list[float]

    def apply(self, targets: TeacherTargets) -> TeacherTargets:
        logits_nl = targets.values / self.temperature + torch.tensor(self.bias)
        return TeacherTargets(targets.ids, F.log_softmax(logits_nl, dim=-1))


def fit_recalibration(logprobs_nl: torch.Tensor, gold_n: torch.Tensor, *, with_bias: bool,
                      steps: int = 200) -> Recalibration:
    """Minimize the gold labels' NLL under softmax(log p / T + b) (temperature / vector scaling).

    A prompted LLM's label probabilities are often timid and lean towards one label; one
    temperature (and, with ``with_bias``, one offset per label) fitted on the labelled examples
    fixes both. The temperature alone never changes the argmax; the bias may, on purpose.
    """
    log_t = torch.zeros((), requires_grad=True)
    bias_l = torch.zeros(logprobs_nl.shape[-1], requires_grad=with_bias)
    params = [log_t, bias_l] if with_bias else [log_t]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # the tiny penalty pins the bias's free shift (softmax ignores a constant)
        loss = F.cross_entropy(logprobs_nl / log_t.exp() + bias_l, gold_n) + 1e-4 * bias_l.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Recalibration(float(log_t.detach().exp()), bias_l.detach().tolist())


def weights_fingerprint(model_path: str) -> str:
    """sha256 over the weight files of a local model folder; a hub id stands for itself."""
    folder = Path(model_path)
    if not folder.is_dir():
        return f"hub:{model_path}"
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"})
    return ",".join(f"{p.name}:{_cached_sha256(p)}" for p in files)


def _cached_sha256(path: Path) -> str:
    """sha256 of a large file, remembered in $KDISTILL_HOME/hashes by path, size and mtime (1 GB takes seconds)."""
    from kdistill.assets import home

    stat = path.stat()
    memo = home() / "hashes" / f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()}.json"
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    atomic_write_json(memo, {"path": str(path), "stamp": stamp, "sha256": digest})
    return digest


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([vocab, type(tokenizer).__name__]).encode()).hexdigest()


def cache_fields(cfg: TeacherConfig, model: LabelModel, model_path: str | None, examples: list[Example], *,
                 kind: str = "labels", **extra: Any) -> dict[str, Any]:
    """Everything that determines a teacher's outputs for these examples; any change is a cache miss."""
    if model.kind == "endpoint":  # no local files: the server's own description of what it serves
        weights = tokenizer = f"served:{fingerprint(model.metadata()['served'])}"
    else:
        weights, tokenizer = weights_fingerprint(model_path), tokenizer_fingerprint(model.tokenizer)
    return key_fields(
        kind=kind, teacher=f"{cfg.model}@{cfg.revision or 'default'}", weights=weights, tokenizer=tokenizer,
        prompt=fingerprint(model.metadata()),  # labels, verbalizers, prompt template, few-shot prefix
        data=fingerprint([(e.id, e.text) for e in examples]), example_ids=[e.id for e in examples],
        labels=model.labels if kind == "labels" else None,
        calibrate=cfg.calibrate, content_free_inputs=cfg.content_free_inputs if cfg.calibrate else None,
        max_length=cfg.max_length, input_template=cfg.input_template, **extra)
