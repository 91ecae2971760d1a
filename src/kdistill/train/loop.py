"""The one training loop every method shares; methods differ only by objective and teacher targets.

AdamW with linear warm-up and decay, gradient accumulation that does not change the gradient
(each micro-batch's per-example losses are summed and divided by the whole step's example count),
mixed precision where the device supports it, validation macro-F1 with early stopping and
best-weights restore, and atomic checkpoints holding everything needed for a bit-identical resume:
weights, optimizer, scheduler, RNG, data position and the early-stopping state. Launched as several
processes: DDP through Accelerate, or FSDP2 sharding of its own (`training.sharding: fsdp`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill import distributed
from kdistill.config import TrainingConfig
from kdistill.errors import KdistillError
from kdistill.io import remove_partial
from kdistill.losses.objective import Objective
from kdistill.models import LabelModel, pick_device
from kdistill.targets import TeacherTargets
from kdistill.train.checkpoints import (
    LoopState,
    cpu_state,
    gather_checkpoint,
    load_checkpoint,
    load_state,
    newest_intact_step,
    write_checkpoint,
)
from kdistill.train.label_steps import LabelSteps

if TYPE_CHECKING:
    from kdistill.data import Example

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    state: LoopState
    seconds: float


class Steps(Protocol):
    """What the loop needs from a kind of training: `label_steps.LabelSteps` (label space, the default) or
    `token_steps.TokenSteps` (a generative student's target tokens)."""

    module: nn.Module
    """The trainable step: student (+ any objective parameters); called as module(progress, *arguments)
    and returning ((B,) per-example losses, {term: (B,) values})."""

    def begin_step(self, batch: list[Any], chunks: list[list[Any]], *, counts: bool) -> None:
        """Called once per optimizer step, before its micro-batches (``chunks`` of this process's share of
        ``batch``); ``counts`` is False for a process whose share is empty."""

    def arguments(self, chunk: list[Any], device: torch.device, step: int) -> tuple:
        """A micro-batch's forward arguments, on ``device``, at optimizer step ``step`` (0-based)."""

    def validate(self, examples: list[Any]) -> tuple[dict[str, float], float]:
        """(what to record, the score early stopping maximizes) on the validation examples."""

    def length(self, example: Any) -> int:
        """An example's size, for length-grouped batches."""


class StopTraining(Exception):
    """Raised by the `stop_after_steps` hook (tests: a crash at a chosen step)."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(module: torch.nn.Module, cfg: TrainingConfig, default_lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate or default_lr)


def _accelerator():
    """Accelerate's view of this launch: DDP (Accelerate's FSDP and DeepSpeed are refused, see
    `distributed.refuse_sharded`; kdistill shards with FSDP2 itself). kdistill keeps its own
    autocast, so Accelerate is asked for no mixed precision of its own."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    engine = distributed.sharded_engine()
    if engine is not None:  # before Accelerator(): on CPU it would fail, or quietly fall back to DDP
        raise distributed.refuse_sharded(engine)
    # some models leave parameters unused in a label-space forward (e.g. a pooler); DDP must allow that
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    engine = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}.get(accelerator.distributed_type)
    if engine is not None:  # asked for some other way than the launcher's variables
        raise distributed.refuse_sharded(engine)
    return accelerator


class Trainer:
    """Trains one student; `run()` resumes from the newest checkpoint in `checkpoint_dir` if asked.

    Launched as several processes (`accelerate launch`, `torchrun`), each process takes its share of
    every global batch and Accelerate wraps the student and objective in DDP, or, with
    `training.sharding: fsdp`, the trainer shards a copy of them with FSDP2 and copies the trained
    weights back into the caller's whole student at the end of `run()`. The batch size, the step
    count and the data order stay those of one process, and checkpoints hold whole tensors, so a
    checkpoint resumes on any number of processes. Only the main process writes checkpoints.
    """

    def __init__(self, model: LabelModel, *, train_examples: list["Example"], val_examples: list["Example"],
                 objective: Objective, cfg: TrainingConfig, seed: int, checkpoint_dir: str | Path,
                 targets: TeacherTargets | None = None, teacher_hidden: list[TeacherTargets] | None = None,
                 label_prior: torch.Tensor | None = None, labelled_ids: set[str] | None = None,
                 progress: bool = True, on_record: Callable[[dict[str, Any]], None] | None = None,
                 steps: "Steps | None" = None, desc: str = "training", max_steps: int | None = None) -> None:
        """``targets``, ``teacher_hidden``, ``label_prior``, ``labelled_ids``: the label-space steps' inputs (see
        `label_steps.LabelSteps`); ``steps``: another kind of training in their place (a generative student's
        `token_steps.TokenSteps`). ``on_record``: called with each record as it joins the history (training
        terms every 10 steps, each validation), for loggers such as TensorBoard, or a search that prunes a bad
        trial by raising. ``desc``: what the progress bar says it trains. ``max_steps``: stop after this many
        optimizer steps even within an epoch (a baseline given the distilled student's step count)."""
        self.model, self.train_examples, self.val_examples = model, train_examples, val_examples
        self.objective, self.cfg, self.seed = objective, cfg, seed
        self.checkpoint_dir, self.progress = Path(checkpoint_dir), progress
        self.on_record, self.desc = on_record, desc
        self.together = distributed.launched()  # several processes train this student
        self.sharded = self.together and cfg.sharding == "fsdp"
        if self.sharded and not isinstance(steps, (LabelSteps, type(None))):
            raise KdistillError("training.sharding: fsdp trains label-space students only for now; train a generative "
                                "student with training.sharding: none (DDP).")
        self.accelerator = _accelerator() if self.together and not self.sharded else None
        self.device = (self.accelerator.device if self.accelerator else
                       distributed.device() if self.sharded else pick_device(cfg.device))
        self.steps_per_epoch = math.ceil(len(train_examples) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if max_steps:
            self.total_steps = min(self.total_steps, max_steps)
        _seed_everything(seed)
        self.whole = (model, objective)  # what the caller holds: whole again at the end of `run()`
        if self.sharded:  # FSDP2 shards in place, so it shards copies; the caller's wait on the CPU (`_copy_back`)
            model.module.to("cpu")
            model, objective = copy.copy(model), copy.deepcopy(objective)
            model.module = copy.deepcopy(model.module)
            self.model, self.objective = model, objective
        model.module.to(self.device)
        objective.to(self.device)
        # label space unless told otherwise; the projections of the hidden term train alongside the student
        self.steps: Steps = steps or LabelSteps(self, targets=targets, teacher_hidden=teacher_hidden,
                                                label_prior=label_prior, labelled_ids=labelled_ids)
        self.trainable = self.steps.module
        if self.sharded:
            distributed.fully_shard_step(self.trainable, model.module)
        self.optimizer = _optimizer(self.trainable, cfg, model.default_learning_rate)
        self.forward_step: nn.Module = self.trainable
        if self.accelerator is not None:  # the scheduler is ours: it counts global steps, not per-process ones
            self.forward_step, self.optimizer = self.accelerator.prepare(self.trainable, self.optimizer)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(enabled=cfg.mixed_precision == "fp16")
        self.state = LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- the loop
    def _done(self) -> bool:
        return self.state.stopped_early or self.state.global_step >= self.total_steps

    def run(self, *, resume: bool = False, stop_after_steps: int | None = None) -> TrainResult:
        start = time.perf_counter()
        if resume:
            self._load_latest()
        elif not self.together or distributed.is_main():  # a fresh start: older checkpoints are not ours
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        if self.together:
            distributed.barrier()
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc=self.desc, unit="step",
                   disable=not self.progress)
        while self.state.epoch < self.cfg.epochs and not self._done():
            order = self._epoch_order(self.state.epoch)
            while self.state.step_in_epoch < self.steps_per_epoch and not self._done():
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
        if self.sharded:
            self._copy_back()
        if self.best_weights is not None:
            load_state(self.whole[0].module, self.best_weights)
        return TrainResult(self.state, time.perf_counter() - start)

    def _copy_back(self) -> None:
        """The sharded copies' weights, gathered whole (collective), into the caller's student and
        objective, which the pipeline saves from the main process alone."""
        student, objective = self.whole
        load_state(student.module, cpu_state(self.model.module))
        student.module.to(self.device)
        load_state(objective, cpu_state(self.objective))

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
        length = [self.steps.length(e) for e in self.train_examples]
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: length[i], reverse=True)
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        tail = [batches.pop()] if len(batches[-1]) < size else []  # a short batch must stay last
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()] + tail
        return [i for batch in shuffled for i in batch]

    def _step(self, batch: list["Example"]) -> dict[str, float]:
        """One optimizer step over `batch`: this process's share of it, split into `grad_accum_steps`
        micro-batches. Each example's loss is divided by the whole step's example count (times the
        process count, which DDP's gradient averaging divides out): accumulation- and split-invariant."""
        self.trainable.train()
        world, rank = (distributed.world_size(), distributed.rank()) if self.together else (1, 0)
        local, weight = batch[rank::world], world / len(batch)
        if not local:  # a last batch smaller than the process count: still join the gradient sync
            local, weight = batch[:1], 0.0
        micro = math.ceil(len(local) / self.cfg.grad_accum_steps)
        chunks = [local[s:s + micro] for s in range(0, len(local), micro)]
        self.steps.begin_step(batch, chunks, counts=weight > 0)
        progress = self.state.global_step / max(self.total_steps, 1)
        sums: dict[str, torch.Tensor] = {}
        for j, chunk in enumerate(chunks):
            arguments = self.steps.arguments(chunk, self.device, self.state.global_step)
            last = j == len(chunks) - 1  # gradients are synchronized once per step, after the last micro-batch
            with self._gradient_sync(last):
                total_b, terms = self.forward_step(progress, *arguments)
                loss = total_b.sum() * weight
                if self.accelerator is not None:
                    self.accelerator.backward(loss)
                else:
                    self.scaler.scale(loss).backward()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float().sum() * (weight > 0)
        self._optimizer_step()
        names = sorted(sums)
        totals = torch.stack([sums[n] for n in names]) if names else torch.zeros(0)
        totals = distributed.all_sum(totals) if self.together else totals
        return {name: float(total) / len(batch) for name, total in zip(names, totals)}

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Whether this backward reduces the gradients over the processes (False: accumulate locally)."""
        if self.sharded:
            self.forward_step.set_requires_gradient_sync(sync)  # FSDP2's no_sync
        elif self.accelerator is not None and not sync:
            return self.accelerator.no_sync(self.forward_step)
        return contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        if self.cfg.max_grad_norm > 0:
            if self.accelerator is not None:
                self.accelerator.clip_grad_norm_(self.trainable.parameters(), self.cfg.max_grad_norm)
            else:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

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
        record, score = self.steps.validate(self.val_examples)
        st = self.state
        self._record({"step": st.global_step, "epoch": st.epoch, **record})
        if st.best_metric is None or score > st.best_metric:
            st.best_metric, st.best_step, st.bad_validations = score, st.global_step, 0
            self.best_weights = cpu_state(self.model.module)
        else:
            st.bad_validations += 1
            patience = self.cfg.early_stopping_patience
            if patience and st.bad_validations >= patience:
                log.info("early stopping at step %d: no better validation score for %d validations",
                         st.global_step, patience)
                st.stopped_early = True

    # ---------------------------------------------------------------- optimizer state across stages
    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.trainable.named_parameters() if p.requires_grad]

    def optimizer_state_by_name(self) -> dict[str, torch.Tensor]:
        """AdamW's per-parameter state keyed ``<parameter name>::<exp_avg|exp_avg_sq|step>``, so a
        later stage, whose parameter list may differ (a new head, other projections), can carry it."""
        self._refuse_carry_when_sharded()
        out = {}
        for name, param in self._named_parameters():
            for key, value in self.optimizer.state.get(param, {}).items():
                out[f"{name}::{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return out

    def carry_optimizer_state(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        """Load ``optimizer_state_by_name`` output for every parameter of the same name and shape;
        the others start fresh. Returns (parameters carried, parameters in all)."""
        self._refuse_carry_when_sharded()
        by_param: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            name, _, slot = key.rpartition("::")
            by_param.setdefault(name, {})[slot] = value
        named = self._named_parameters()
        carried = 0
        for name, param in named:
            saved = by_param.get(name)
            if saved and saved.get("exp_avg") is not None and saved["exp_avg"].shape == param.shape:
                self.optimizer.state[param] = {k: v.to(param.device) if k != "step" else v for k, v in saved.items()}
                carried += 1
        return carried, len(named)

    def _refuse_carry_when_sharded(self) -> None:
        if self.sharded:
            raise KdistillError("carrying the optimizer state from one stage to the next (a stage's `optimizer: carry`) "
                                "is not done with training.sharding: fsdp yet; set training.sharding: none.")

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> None:
        if not self.together:
            self._write_checkpoint()
            return
        gathered = gather_checkpoint(self) if self.sharded else None  # sharded: every process takes part
        if distributed.is_main():  # every process holds the same weights (or its share); one writes them
            self._write_checkpoint(gathered)
        distributed.barrier()

    def _write_checkpoint(self, gathered: dict[str, Any] | None = None) -> None:
        write_checkpoint(self, self.checkpoint_dir / f"step-{self.state.global_step:07d}", gathered)
        for old in sorted(self.checkpoint_dir.glob("step-*"))[:-max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_latest(self) -> None:
        """The newest intact checkpoint, after removing what a killed write left (`.step-*.tmp`)."""
        main = not self.together or distributed.is_main()
        if main and self.checkpoint_dir.is_dir():
            for partial in remove_partial(self.checkpoint_dir):
                log.info("removed %s, a checkpoint a kill interrupted", partial)
        step = newest_intact_step(self.checkpoint_dir, remove_damaged=main)
        if step is not None:
            log.info("resuming from %s", step)
            load_checkpoint(self, step)
