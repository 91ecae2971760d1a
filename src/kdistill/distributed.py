"""Several processes through 🤗 Accelerate: who this process is, and waiting for the others.

kdistill never makes a process group of its own. Under `accelerate launch` or `torchrun`,
Accelerate's PartialState reads the launcher's environment and joins the group (gloo on CPU, NCCL on
GPUs); a plain `python` or `kdistill` call is one process, and every helper here is then a no-op.
With `training.sharding: fsdp`, `fully_shard_step` shards the student over that same group.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from kdistill.errors import KdistillError

_alone = 0  # > 0 inside `alone()`: this process works by itself, whatever the launch


def launched() -> bool:
    """True when a launcher started several processes (or asked for a distributed engine), and this
    process is not inside an `alone()` block."""
    if _alone:
        return False
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or sharded_engine() is not None


def sharded_engine() -> str | None:
    """"FSDP" or "DeepSpeed" when `accelerate launch` was configured for one (its config file's
    `distributed_type`, which the launcher exports as ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED)."""
    for engine, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(variable, "false").lower() == "true":
            return engine
    return None


def refuse_sharded(engine: str) -> KdistillError:
    """Why kdistill does not train with ``engine`` as Accelerate runs it, and what to launch instead."""
    ddp = ("`distributed_type: MULTI_GPU` in the config file (without a GPU too, as in "
           "examples/accelerate/ddp_cpu.yaml), `accelerate launch --multi_gpu`, or `torchrun` (README: "
           "'Several processes or GPUs')")
    if engine == "FSDP":
        return KdistillError(
            "`accelerate launch` was configured for FSDP (`distributed_type: FSDP` in its config file), but kdistill "
            "shards the student itself, with torch's FSDP2: set `training.sharding: fsdp` in the run's config and "
            f"launch with DDP: {ddp}. (Accelerate's own FSDP does not run without a GPU: it stops with 'There are "
            "currently no available devices found' (FSDP1) or quietly trains with DDP (FSDP2).)")
    on_cpu = "" if torch.cuda.is_available() else " On a machine without a GPU, Accelerate quietly trains with DDP instead."
    return KdistillError(
        "`accelerate launch` was configured for DeepSpeed (`distributed_type: DEEPSPEED` in its config file), which "
        "kdistill does not train with yet: DeepSpeed ZeRO partitions the optimizer state (and with stage 3 the "
        "weights) over the processes and runs gradient accumulation and clipping itself, while kdistill's checkpoints, "
        f"best weights and saved students are taken from one process that holds the whole model.{on_cpu} Launch with "
        f"DDP instead: {ddp}; `training.sharding: fsdp` shards the weights and the optimizer state.")


def device() -> torch.device:
    """This process's device in the launch (its own GPU, or the CPU)."""
    return _state().device


def transformer_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a 🤗 model: the ModuleList entries whose class the model names in
    `_no_split_modules` (BertLayer, Qwen2DecoderLayer ...), else those of a ModuleList called `layers`."""
    no_split = set(getattr(module, "_no_split_modules", None) or ())
    lists = [(name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.ModuleList)]
    named = [block for _, m in lists for block in m if type(block).__name__ in no_split]
    return named or [block for name, m in lists if name.rsplit(".", 1)[-1] == "layers" for block in m]


def fully_shard_step(step: torch.nn.Module, student: torch.nn.Module) -> None:
    """Shard ``step`` (the student and the objective, `train.TrainStep`) over this launch's processes with
    torch's FSDP2: each transformer block, then the student (its embeddings and head), then ``step``
    (the objective's projections). The process group is the launcher's, joined by Accelerate."""
    from torch.distributed.fsdp import fully_shard

    _state()  # joins the launcher's process group, if nothing has yet
    for block in transformer_blocks(student):
        fully_shard(block)
    fully_shard(student)  # on its own too: validation and the balance term call the student directly
    fully_shard(step)
    # FSDP2 takes as its root the first sharded module to run forward; a direct call of the student
    # (the balance term's look at the whole step comes before the first training forward) would
    # make the student the root and the step's first forward fail. So the step becomes root now.
    step._get_fsdp_state()._lazy_init()


@contextmanager
def alone() -> Iterator[None]:
    """Work that one process does by itself while the others wait elsewhere (the main process's
    evaluation, or its fine-tuning of a teacher): no collective call may happen inside."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def _state():
    from accelerate import PartialState

    engine = sharded_engine()
    if engine is not None:  # refused before anything is built or elicited (see `refuse_sharded`)
        raise refuse_sharded(engine)
    return PartialState(cpu=not torch.cuda.is_available())


def _in_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return _state().num_processes if launched() else 1


def rank() -> int:
    """This process's index in the launch (also inside `alone()`, where it still is who it is)."""
    return _state().process_index if _in_launch() else 0


def is_main() -> bool:
    """The process that writes checkpoints, reports and students."""
    return rank() == 0


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. fills the teacher cache); the others then run it and
    find the work done."""
    if not launched():
        yield
        return
    with _state().main_process_first():
        yield


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every process (itself when there is one)."""
    if not launched():
        return tensor
    from accelerate.utils import reduce

    return reduce(tensor, reduction="sum")


def elicitation_share() -> dict:
    """Keyword arguments for `elicit_resumable`: this process's share of a launch's elicitation."""
    return {"rank": rank(), "world_size": world_size(), "barrier": barrier}
