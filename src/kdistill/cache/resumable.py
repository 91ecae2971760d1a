"""Resumable elicitation: compute only the missing shards, each written atomically, then the manifest.

The shards are a fixed partition of the sorted example ids (shard i = ids[i*s:(i+1)*s], s recorded in
plan.json on the first run), so a run killed at any point and started again recomputes exactly the shards
that are absent or damaged: no id is computed into two shards, none is left out, and the finished entry
is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from kdistill.cache.entry import CacheEntry, _read_json
from kdistill.cache.keys import ids_fingerprint
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json

log = logging.getLogger(__name__)


def elicit_resumable(entry: CacheEntry, ids: list[str], compute_fn: Callable[[list[str]], Any], *,
                     shard_size: int, progress: bool = True, rank: int = 0, world_size: int = 1,
                     barrier: Callable[[], None] | None = None) -> CacheEntry:
    """Fill ``entry`` with ``compute_fn(batch_of_ids) -> rows`` for every id, one shard per batch, and finalize.

    ``rows`` is what `CacheEntry.write_shard` takes. Safe to kill at any point and run again with the same
    arguments; a shard that is missing, truncated or corrupt is computed again. One writer per entry: a
    second concurrent writer gets a KdistillError. Several processes of one launch (``world_size`` > 1,
    every one calling this with its ``rank`` and a ``barrier`` over all of them) share the work: process
    r computes the missing shards i with i % world_size == r.
    """
    sorted_ids = _checked_ids(entry, ids)
    if world_size > 1:
        return _elicit_together(entry, sorted_ids, compute_fn, shard_size=shard_size, progress=progress,
                                rank=rank, world_size=world_size, barrier=barrier)
    with writer_lock(entry):
        _remove_temporaries(entry)
        entry.repair_record()
        shard_size = _planned_shard_size(entry, sorted_ids, shard_size)
        batches = [sorted_ids[start:start + shard_size] for start in range(0, len(sorted_ids), shard_size)]
        _remove_unplanned_shards(entry, len(batches))
        todo = [i for i, batch in enumerate(batches) if not entry.holds_shard(_shard_name(i), batch)]
        done_ids = len(sorted_ids) - sum(len(batches[i]) for i in todo)
        with tqdm(total=len(sorted_ids), initial=done_ids, unit="ex", desc="teacher cache",
                  disable=not progress) as bar:
            for i in todo:
                entry.write_shard(batches[i], compute_fn(list(batches[i])), index=i)
                bar.update(len(batches[i]))
        if todo or not entry.manifest_is_current():
            entry.finalize()
    return entry


def _elicit_together(entry: CacheEntry, sorted_ids: list[str], compute_fn: Callable[[list[str]], Any], *,
                     shard_size: int, progress: bool, rank: int, world_size: int,
                     barrier: Callable[[], None] | None) -> CacheEntry:
    """The shards split over the processes of a launch: the main one plans and finalizes, under the lock;
    each writes only its own shards (distinct files, each atomic)."""
    if barrier is None:
        raise KdistillError("elicit_resumable: several processes need a barrier to wait for each other.")
    if rank == 0:
        with writer_lock(entry):
            _remove_temporaries(entry)
            entry.repair_record()
            batches = _planned_batches(entry, sorted_ids, shard_size)
            _remove_unplanned_shards(entry, len(batches))
    barrier()
    batches = _planned_batches(entry, sorted_ids, shard_size)  # the plan rank 0 wrote
    mine = [i for i in range(rank, len(batches), world_size) if not entry.holds_shard(_shard_name(i), batches[i])]
    log.info("process %d of %d: %d of %d teacher-cache shards to compute", rank, world_size, len(mine), len(batches))
    with tqdm(total=sum(len(batches[i]) for i in mine), unit="ex", desc=f"teacher cache [{rank}]",
              disable=not progress) as bar:
        for i in mine:
            entry.write_shard(batches[i], compute_fn(list(batches[i])), index=i)
            bar.update(len(batches[i]))
    barrier()
    if rank == 0:
        with writer_lock(entry):
            if not entry.manifest_is_current():
                entry.finalize()
    barrier()
    return entry


def _planned_batches(entry: CacheEntry, sorted_ids: list[str], shard_size: int) -> list[list[str]]:
    size = _planned_shard_size(entry, sorted_ids, shard_size)
    return [sorted_ids[start:start + size] for start in range(0, len(sorted_ids), size)]


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _checked_ids(entry: CacheEntry, ids: list[str]) -> list[str]:
    """The ids sorted, after checking they are distinct and the very ids the entry's key was made from."""
    as_str = [str(i) for i in ids]
    if len(set(as_str)) != len(as_str):
        raise KdistillError("elicit_resumable: the example ids repeat; each example needs a distinct id.")
    if ids_fingerprint(as_str) != entry.fields["example_ids"]:
        raise KdistillError(f"elicit_resumable: these {len(as_str)} ids are not the ones the cache key was built "
                            f"from (its 'example_ids' fingerprint differs); pass the same ids to key_fields().")
    return sorted(as_str)


def _planned_shard_size(entry: CacheEntry, sorted_ids: list[str], shard_size: int) -> int:
    """The shard size of the entry's first run (plan.json), so a rerun partitions the ids the same way."""
    if not (isinstance(shard_size, int) and shard_size > 0):
        raise KdistillError(f"elicit_resumable: shard_size must be an integer > 0; found {shard_size!r}.")
    plan_path = entry.folder / "plan.json"
    plan = _read_json(plan_path)
    if plan is not None and plan.get("num_ids") == len(sorted_ids):
        if plan["shard_size"] != shard_size:
            log.info("teacher cache %s was planned with shard_size=%d; keeping it", entry.folder, plan["shard_size"])
        return int(plan["shard_size"])
    entry._claim()
    atomic_write_json(plan_path, {"shard_size": shard_size, "num_ids": len(sorted_ids)})
    return shard_size


def _remove_unplanned_shards(entry: CacheEntry, num_shards: int) -> None:
    """Shards outside the plan (written by hand, or by an older plan) would duplicate ids; remove them."""
    planned = {_shard_name(i) for i in range(num_shards)}
    for index_path in sorted(entry.shards_dir.glob("shard-*.json")):
        if index_path.stem not in planned:
            log.warning("removing %s: it is not part of this entry's shard plan", index_path)
            entry.delete_shard(index_path.stem)


def _remove_temporaries(entry: CacheEntry) -> None:
    """Half-written files a killed writer left behind (atomic writes name them .<name>.<random>.tmp)."""
    for folder in (entry.folder, entry.shards_dir):
        for tmp in folder.glob(".*.tmp") if folder.exists() else ():
            tmp.unlink(missing_ok=True)


@contextmanager
def writer_lock(entry: CacheEntry) -> Iterator[None]:
    """An exclusive flock on <entry>/.lock; the kernel releases it when the process dies, even by SIGKILL."""
    entry.folder.mkdir(parents=True, exist_ok=True)
    with open(entry.folder / ".lock", "a+b") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KdistillError(f"another process is writing teacher cache entry {entry.folder}; wait for it "
                                f"to finish, or stop it, then run again.") from None
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
