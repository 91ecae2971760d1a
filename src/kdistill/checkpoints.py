"""A trainer's checkpoint: everything a bit-identical resume needs, written atomically.

Weights (safetensors), the best weights so far, the hidden term's projections, optimizer, scheduler,
grad scaler, RNG states and the loop state (epoch, step, early stopping, history). Loaded with
`torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from kdistill.io import atomic_dir

if TYPE_CHECKING:
    from kdistill.train import Trainer


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # cloned one by one: tied weights become separate tensors, which safetensors can store
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def write_checkpoint(trainer: "Trainer", path: Path) -> None:
    t = trainer
    with atomic_dir(path) as tmp:
        save_file(cpu_state(t.model.module), str(tmp / "model.safetensors"))
        if len(t.objective.state_dict()):
            save_file(cpu_state(t.objective), str(tmp / "objective.safetensors"))
        if t.best_weights is not None:
            save_file(t.best_weights, str(tmp / "best.safetensors"))
        torch.save(t.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict()}, tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(t.state), indent=1), encoding="utf-8")


def load_checkpoint(trainer: "Trainer", path: Path) -> None:
    from kdistill.train import LoopState

    t, device = trainer, str(trainer.device)
    t.model.module.load_state_dict(load_file(str(path / "model.safetensors"), device=device))
    if (path / "objective.safetensors").exists():
        t.objective.load_state_dict(load_file(str(path / "objective.safetensors"), device=device))
    if (path / "best.safetensors").exists():
        t.best_weights = load_file(str(path / "best.safetensors"))
    t.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=t.device))
    sched = torch.load(path / "scheduler.pt", weights_only=True)
    t.scheduler.load_state_dict(sched["scheduler"])
    t.scaler.load_state_dict(sched["scaler"])
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuple(rng["python"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    t.state = LoopState(**json.loads((path / "state.json").read_text(encoding="utf-8")))


def _as_tuple(state: Any) -> Any:
    return tuple(_as_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
