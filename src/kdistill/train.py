"""The one training loop every method shares; methods differ only by objective and teacher targets.

AdamW with linear warm-up and decay, gradient accumulation that does not change the gradient
(each micro-batch's per-example losses are summed and divided by the whole step's example count),
mixed precision where the device supports it, validation macro-F1 with early stopping and
best-weights restore, and atomic checkpoints holding everything needed for a bit-identical resume:
weights, optimizer, scheduler, RNG, data position and the early-stopping state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from kdistill.config import TrainingConfig
from kdistill.io import atomic_dir
from kdistill.models import LabelModel, pick_device
from kdistill.models.base import pool_states
from kdistill.objective import Objective, StepTargets
from kdistill.targets import TeacherTargets

if TYPE_CHECKING:
    from kdistill.data import Example

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint (JSON)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = -1.0
    best_step: int = 0
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    state: LoopState
    seconds: float


class StopTraining(Exception):
    """Raised by the `stop_after_steps` hook (tests: a crash at a chosen step)."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def _optimizer(module: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # cloned one by one: tied weights become separate tensors, which safetensors can store
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def macro_f1(model: LabelModel, examples: list["Example"], batch_size: int) -> float:
    label_ids = {label: i for i, label in enumerate(model.labels)}
    preds = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        preds += model.predict_logits([e.text for e in chunk]).argmax(-1).tolist()
    gold = [label_ids[e.label] for e in examples]
    return float(f1_score(gold, preds, average="macro", labels=list(range(len(model.labels))), zero_division=0))


class Trainer:
    """Trains one student; `run()` resumes from the newest checkpoint in `checkpoint_dir` if asked."""

    def __init__(self, model: LabelModel, *, train_examples: list["Example"], val_examples: list["Example"],
                 objective: Objective, cfg: TrainingConfig, seed: int, checkpoint_dir: str | Path,
                 targets: TeacherTargets | None = None, teacher_hidden: list[TeacherTargets] | None = None,
                 label_prior: torch.Tensor | None = None, labelled_ids: set[str] | None = None,
                 progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``targets``: teacher label log-probs by id; ``teacher_hidden``: for the hidden term, each hidden
        target's (teacher's) pooled hidden states (N, n_k, D_k), in ``objective.hidden_targets`` order; ``label_prior``: (L,) for the balance term's prior target;
        ``labelled_ids``: the examples whose gold label may be used (None: all); ``on_record``: called
        with each record as it joins the history (training terms every 10 steps, each validation):
        for loggers such as TensorBoard, or a search that prunes a bad trial by raising."""
        terms = objective.cfg
        if terms.kd.weight > 0 and targets is None:
            raise ValueError("objective.kd.weight > 0 needs teacher targets")
        if labelled_ids is not None and targets is None:
            raise ValueError("examples without gold labels need teacher targets")
        if objective.uses_hidden and (teacher_hidden is None or len(teacher_hidden) != len(objective.hidden_targets)):
            raise ValueError("objective.hidden.weight > 0 needs the hidden states of each of its teachers")
        if objective.uses_balance and (label_prior if terms.balance.target == "prior" else targets) is None:
            raise ValueError(f"the balance term's target {terms.balance.target!r} is missing")
        self.model, self.train_examples, self.val_examples = model, train_examples, val_examples
        self.targets, self.teacher_hidden, self.label_prior = targets, teacher_hidden, label_prior
        self.objective, self.cfg, self.seed = objective, cfg, seed
        self.checkpoint_dir, self.progress = Path(checkpoint_dir), progress
        self.labelled_ids, self.on_record = labelled_ids, on_record
        self.device = pick_device(cfg.device)
        self.label_ids = {label: i for i, label in enumerate(model.labels)}
        self.steps_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        _seed_everything(seed)
        model.module.to(self.device)
        objective.to(self.device)
        # the projections of the hidden term train alongside the student
        self.trainable = torch.nn.ModuleDict({"student": model.module, "objective": objective})
        self.optimizer = _optimizer(self.trainable, cfg)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(enabled=cfg.mixed_precision == "fp16")
        self.state = LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- the loop
    def run(self, *, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        start = time.perf_counter()
        if resume:
            self._load_latest()
        else:  # a fresh start: an older run's checkpoints must not be mistaken for ours
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc="training", unit="step",
                   disable=not self.progress)
        while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
            order = self._epoch_order(self.state.epoch)
            while self.state.step_in_epoch < self.steps_per_epoch and not self.state.stopped_early:
                s = self.state.step_in_epoch * self.cfg.batch_size
                terms = self._step([self.train_examples[i] for i in order[s:s + self.cfg.batch_size]])
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
                self._after_step(terms)
                if stop_after_steps is not None and self.state.global_step >= stop_after_steps:
                    raise StopTraining(f"stopped after {self.state.global_step} steps")
            if not self.state.stopped_early:
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                if self.cfg.eval_every_steps == 0:
                    self._validate()
                self._checkpoint()
        bar.close()
        if self.best_weights is not None:
            self.model.module.load_state_dict(self.best_weights)
        return TrainResult(self.state, time.perf_counter() - start)

    def _epoch_order(self, epoch: int) -> list[int]:
        """Example order for one epoch: a function of (seed, epoch) only, so a resumed run sees the same.

        With `group_by_length`, examples of similar length share a batch (less padding, the same
        examples per epoch): shuffle, sort within windows of 16 batches, then shuffle whole batches.
        """
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_examples), generator=gen).tolist()
        if not self.cfg.group_by_length:
            return order
        size, window = self.cfg.batch_size, self.cfg.batch_size * 16
        length = [len(e.text) for e in self.train_examples]
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: length[i], reverse=True)
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        tail = [batches.pop()] if len(batches[-1]) < size else []  # a short batch must stay last
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + tail
        return [i for batch in shuffled for i in batch]

    def _step(self, batch: list["Example"]) -> dict[str, float]:
        """One optimizer step over `batch`, split into `grad_accum_steps` micro-batches."""
        self.model.module.train()
        self.objective.train()
        micro = math.ceil(len(batch) / self.cfg.grad_accum_steps)
        chunks = [batch[s:s + micro] for s in range(0, len(batch), micro)]
        balance = self._balance_inputs(batch, chunks) if self.objective.uses_balance else {}
        progress = self.state.global_step / max(self.total_steps, 1)
        sums: dict[str, float] = {}
        for chunk in chunks:
            inputs = {k: v.to(self.device) for k, v in self.model.encode([e.text for e in chunk]).items()}
            targets = self._targets(chunk, **balance)
            with _autocast(self.device, self.cfg.mixed_precision):
                if self.objective.uses_hidden:
                    logits_bl, states, mask_bs = self.model.label_logits_and_hidden(inputs)
                    hidden_bnd = pool_states(states, mask_bs, self.objective.student_layers, self._pool)
                else:
                    logits_bl, hidden_bnd = self.model.label_logits(inputs), None
            if self.objective.uses_balance and len(chunks) == 1:  # the step's mean is this batch's
                targets.balance_mean_probs_l = torch.softmax(logits_bl.detach().float(), -1).mean(0)
            total_b, terms = self.objective(logits_bl, targets, progress=progress, student_hidden_bnd=hidden_bnd)
            # divide by the step's example count, not the micro-batch's: accumulation-invariant
            self.scaler.scale(total_b.sum() / len(batch)).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach().sum())
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {name: total / len(batch) for name, total in sums.items()}

    @property
    def _pool(self) -> str:
        pool = self.objective.cfg.hidden.pool
        return self.model.default_pool if pool == "auto" else pool

    def _targets(self, chunk: list["Example"], **balance: torch.Tensor) -> StepTargets:
        ids = [e.id for e in chunk]
        return StepTargets(
            labels_b=torch.tensor([self.label_ids[e.label] for e in chunk], device=self.device),
            teacher_logprobs_bl=self.targets.rows(ids).to(self.device) if self.targets else None,
            teacher_hidden=[t.rows(ids).to(self.device) for t in self.teacher_hidden] if self.objective.uses_hidden
            else None,
            labelled_b=None if self.labelled_ids is None else
            torch.tensor([i in self.labelled_ids for i in ids], device=self.device),
            **balance)

    def _balance_inputs(self, batch: list["Example"], chunks: list[list["Example"]]) -> dict[str, torch.Tensor]:
        """The balance term's target and, when the step is split, the whole step's mean prediction.

        A split step needs one extra forward without gradients to see all of its examples first; an
        unsplit step takes the mean from its own forward (see `_step`).
        """
        if self.objective.cfg.balance.target == "prior":
            target_l = self.label_prior.to(self.device)
        else:
            target_l = self.targets.rows([e.id for e in batch]).exp().mean(0).to(self.device)
        out = {"balance_target_l": target_l.float()}
        if len(chunks) > 1:
            with torch.no_grad(), _autocast(self.device, self.cfg.mixed_precision):
                probs = [torch.softmax(self.model.label_logits(
                    {k: v.to(self.device) for k, v in self.model.encode([e.text for e in c]).items()}).float(), -1)
                    for c in chunks]
            out["balance_mean_probs_l"] = torch.cat(probs).mean(0)
        return out

    def _after_step(self, terms: dict[str, float]) -> None:
        step = self.state.global_step
        if step % 10 == 0 or step == 1:
            self._record({"step": step, "epoch": self.state.epoch, "lr": self.scheduler.get_last_lr()[0],
                          **{f"train_{k}": v for k, v in terms.items()}})
        validated = self.cfg.eval_every_steps > 0 and step % self.cfg.eval_every_steps == 0
        if validated:
            self._validate()
        if validated or (self.cfg.checkpoint_every_steps > 0 and step % self.cfg.checkpoint_every_steps == 0):
            self._checkpoint()

    def _record(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def _validate(self) -> None:
        if not self.val_examples:
            return
        score = macro_f1(self.model, self.val_examples, batch_size=max(self.cfg.batch_size, 32))
        st = self.state
        self._record({"step": st.global_step, "epoch": st.epoch, "val_macro_f1": score})
        if score > st.best_metric:
            st.best_metric, st.best_step, st.bad_validations = score, st.global_step, 0
            self.best_weights = _cpu_state(self.model.module)
        else:
            st.bad_validations += 1
            patience = self.cfg.early_stopping_patience
            if patience and st.bad_validations >= patience:
                log.info("early stopping at step %d: no better validation macro-F1 for %d validations",
                         st.global_step, patience)
                st.stopped_early = True

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> None:
        path = self.checkpoint_dir / f"step-{self.state.global_step:07d}"
        with atomic_dir(path) as tmp:
            save_file(_cpu_state(self.model.module), str(tmp / "model.safetensors"))
            if len(self.objective.state_dict()):
                save_file(_cpu_state(self.objective), str(tmp / "objective.safetensors"))
            if self.best_weights is not None:
                save_file(self.best_weights, str(tmp / "best.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save({"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}, tmp / "scheduler.pt")
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            (tmp / "state.json").write_text(json.dumps(asdict(self.state), indent=1), encoding="utf-8")
        for old in sorted(self.checkpoint_dir.glob("step-*"))[:-max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_latest(self) -> None:
        found = sorted(self.checkpoint_dir.glob("step-*")) if self.checkpoint_dir.exists() else []
        if not found:
            return
        path = found[-1]
        log.info("resuming from %s", path)
        self.model.module.load_state_dict(load_file(str(path / "model.safetensors"), device=str(self.device)))
        if (path / "objective.safetensors").exists():
            self.objective.load_state_dict(load_file(str(path / "objective.safetensors"), device=str(self.device)))
        if (path / "best.safetensors").exists():
            self.best_weights = load_file(str(path / "best.safetensors"))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=self.device))
        sched = torch.load(path / "scheduler.pt", weights_only=True)
        self.scheduler.load_state_dict(sched["scheduler"])
        self.scaler.load_state_dict(sched["scaler"])
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_tuple(rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.state = LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def _as_tuple(state: Any) -> Any:
    return tuple(_as_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
