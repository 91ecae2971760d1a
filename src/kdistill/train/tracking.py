"""TensorBoard logging of the training history: each record the Trainer makes becomes scalars."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

Record = dict[str, Any]

# a record's position, not a quantity to plot
_POSITION_KEYS = ("step", "epoch")


@contextmanager
def tensorboard_records(log_dir: str | Path, *, resume: bool,
                        then: Callable[[Record], None] | None = None) -> Iterator[Callable[[Record], None]]:
    """Yield an ``on_record`` callback that writes every numeric field of a record (``train_<term>``,
    ``lr``, ``val_macro_f1``) as a scalar tagged with its history key, at the record's step, then
    calls ``then``. The writer is closed (flushed) when the block ends, even on an error.

    A fresh run starts from an empty folder, as its checkpoints do. A resumed run appends to the
    same folder and purges the steps it logs again (TensorBoard hides events at or after the first
    re-logged step), so curves show each step once.
    """
    from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only when logging is on

    log_dir = Path(log_dir)
    if not resume:
        shutil.rmtree(log_dir, ignore_errors=True)
    writer: SummaryWriter | None = None

    def on_record(record: Record) -> None:
        nonlocal writer
        if writer is None:  # opened at the first record: a resumed run's first step is known only then
            writer = SummaryWriter(str(log_dir), purge_step=record["step"] if resume else None)
        for key, value in record.items():
            if key not in _POSITION_KEYS and isinstance(value, (int, float)):
                writer.add_scalar(key, value, global_step=record["step"])
        if then is not None:
            then(record)

    try:
        yield on_record
    finally:
        if writer is not None:
            writer.close()
