"""A trainer's checkpoint: everything a bit-identical resume needs, written atomically.

Weights (safetensors), the best weights so far, the hidden term's projections, optimizer, scheduler,
grad scaler, RNG states and the loop state (epoch, step, early stopping, history), and last the size and
sha256 of each of them (kdistill.checksums). A resume loads the newest step whose files all match, and
says which file of a newer step is damaged; nothing is loaded unchecked. Loaded with
`torch.load(weights_only=True)` only.

One format, whoever wrote it: whole tensors and the optimizer state keyed by parameter index as
`optimizer.state_dict()` gives it. A trainer sharded with FSDP gathers the whole state first (a
collective: `gather_checkpoint` on every process, then the main process writes it) and loads a
checkpoint by parameter name, so a run resumes on any number of processes, sharded or not.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from kdistill.checksums import damage, write_checksums
from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, save_torch

if TYPE_CHECKING:
    from kdistill.train.loop import Trainer

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint (JSON)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def frozen_names(module: torch.nn.Module) -> set[str]:
    """The state keys of ``module``'s parameters that do not train (every name of a tied one)."""
    return {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy on CPU of ``module``'s state, frozen parameters left out: they are the pretrained weights
    the module is loaded with again on resume, and leaving them out keeps a checkpoint of a 0.5B student
    whose top blocks train at those blocks' size, not the whole model's. A tensor sharded by FSDP is
    gathered from every process (collective: every process calls this, for the same module)."""
    from torch.distributed.tensor import DTensor

    frozen = frozen_names(module)
    # cloned one by one: tied weights become separate tensors, which safetensors can store
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone()
            for k, v in module.state_dict().items() if k not in frozen}


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a `cpu_state` copy: every key but the frozen parameters', which keep their values."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or set(missing) - frozen_names(module):
        raise RuntimeError(f"weights do not fit the module: missing {sorted(set(missing) - frozen_names(module))}, "
                           f"unexpected {sorted(unexpected)}")


def gather_checkpoint(trainer: "Trainer") -> dict[str, Any]:
    """The weights, projections and optimizer state to write, whole; collective when sharded."""
    t = trainer
    out = {"model": cpu_state(t.model.module), "objective": cpu_state(t.objective)}
    if not t.sharded:
        out["optimizer"] = t.optimizer.state_dict()
        return out
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(t.trainable, t.optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out["optimizer"] = _by_index(by_name, _parameter_names(t)) if by_name else None  # whole on the main process only
    return out


def write_checkpoint(trainer: "Trainer", path: Path, gathered: dict[str, Any] | None = None) -> None:
    """Write ``gathered`` (`gather_checkpoint`'s output; gathered here when None) and the rest to ``path``."""
    t = trainer
    gathered = gathered or gather_checkpoint(t)
    with atomic_dir(path) as tmp:
        save_file(gathered["model"], str(tmp / "model.safetensors"))
        if gathered["objective"]:
            save_file(gathered["objective"], str(tmp / "objective.safetensors"))
        if t.best_weights is not None:
            save_file(t.best_weights, str(tmp / "best.safetensors"))
        save_torch(gathered["optimizer"], tmp / "optimizer.pt")
        save_torch({"scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()}, tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_torch(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(t.state), indent=1), encoding="utf-8")
        write_checksums(tmp)  # last: a step is whole if and only if its files match it


def newest_intact_step(checkpoint_dir: Path, *, remove_damaged: bool) -> Path | None:
    """The newest step-* of ``checkpoint_dir`` whose files match their checksums; None if there is no step.
    Each damaged newer step is reported (naming the file) and, with ``remove_damaged``, deleted, since it can
    only mislead; a folder of steps that are all damaged is an error, not a silent restart."""
    steps = sorted(p for p in checkpoint_dir.glob("step-*") if p.is_dir()) if checkpoint_dir.is_dir() else []
    problems = []
    for step in reversed(steps):
        problem = damage(step)
        if problem is None:
            return step
        problems.append(problem)
        log.warning("checkpoint %s is damaged and not loaded: %s; falling back to the step before", step.name, problem)
        if remove_damaged:
            shutil.rmtree(step, ignore_errors=True)
    if problems:
        raise KdistillError(f"{checkpoint_dir}: no intact checkpoint to resume from ({problems[0]}); run without "
                            "--resume to train this student from its start.")
    return None


def load_checkpoint(trainer: "Trainer", path: Path) -> None:
    """Load ``path`` (a step `newest_intact_step` verified) into ``trainer``; every process loads it (sharded,
    each keeps its own shards). A step that still does not load (it does not fit this student) is an error
    that names it."""
    try:
        _load_checkpoint(trainer, path)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
        if isinstance(err, KdistillError):
            raise
        raise KdistillError(f"checkpoint {path} does not load into this student ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]}); it was written for another config. Run without "
                            "--resume to train from the start.") from err


def _load_checkpoint(trainer: "Trainer", path: Path) -> None:
    t = trainer
    device = "cpu" if t.device.type == "cpu" else str(t.device)  # safetensors refuses "cpu:0" (a launch's CPU)
    _load_module(t, t.model.module, load_file(str(path / "model.safetensors"), device=device))
    if (path / "objective.safetensors").exists():
        _load_module(t, t.objective, load_file(str(path / "objective.safetensors"), device=device))
    if (path / "best.safetensors").exists():
        t.best_weights = load_file(str(path / "best.safetensors"))
    optimizer = torch.load(path / "optimizer.pt", weights_only=True, map_location=device)
    if t.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(t.trainable, t.optimizer, _by_name(optimizer, _parameter_names(t)),
                                 options=StateDictOptions(full_state_dict=True))
    else:
        t.optimizer.load_state_dict(optimizer)
    sched = torch.load(path / "scheduler.pt", weights_only=True)
    t.scheduler.load_state_dict(sched["scheduler"])
    t.scaler.load_state_dict(sched["scaler"])
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    t.state = LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def _load_module(trainer: "Trainer", module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if not trainer.sharded:
        load_state(module, state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True,  # each keeps its shards
                                                                 strict=not frozen_names(module)))


def _parameter_names(trainer: "Trainer") -> list[str]:
    """The optimizer's parameters by name, in the order `optimizer.state_dict()` numbers them."""
    names = {id(p): n for n, p in trainer.trainable.named_parameters()}
    return [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's) keyed by index instead."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of `_by_index`."""
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def _as_tuple(state: Any) -> Any:
    return tuple(_as_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
