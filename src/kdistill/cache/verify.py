"""Full verification of one cache entry: every checksum re-computed, every id in exactly one shard.

Unlike reads, which check only the examples they touch, this reads every byte, so it is what
`kdistill cache verify` runs and what a user runs after copying a cache between machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kdistill.cache.entry import _read_json
from kdistill.cache.keys import ids_fingerprint
from kdistill.cache.shard import CacheCorruptError, ShardReader

if TYPE_CHECKING:
    from kdistill.cache.entry import CacheEntry


@dataclass
class VerifyReport:
    """What `CacheEntry.verify` found; ok is False on any problem, notes are harmless."""

    folder: Path
    complete: bool
    num_shards: int = 0
    num_examples: int = 0
    num_tokens: int = 0
    data_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    damaged_shards: list[str] = field(default_factory=list)
    """The names of the shards that failed a check (what `kdistill cache verify --repair` asks again)."""

    @property
    def ok(self) -> bool:
        return self.complete and not self.problems

    def text(self) -> str:
        status = "OK" if self.ok else "DAMAGED" if self.problems else "INCOMPLETE"
        lines = [f"{self.folder}: {status} - {self.num_shards} shards, {self.num_examples} examples, "
                 f"{self.num_tokens} tokens, {self.data_bytes} data bytes"]
        return "\n".join(lines + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes])


def verify_entry(entry: CacheEntry) -> VerifyReport:
    manifest = entry.manifest()
    report = VerifyReport(entry.folder, complete=manifest is not None)
    if manifest is None:
        _explain_incomplete(entry, report)
    record_problem = entry.record_problem()
    if record_problem is not None:
        report.problems.append(record_problem)
    listed = {s["name"]: s for s in manifest["shards"]} if manifest else {}
    owner: dict[str, str] = {}
    for name in entry.shard_names():
        reader = _check_shard(entry, name, listed.get(name), report)
        if reader is None:
            report.damaged_shards.append(name)
            continue
        report.num_shards += 1
        report.num_tokens += reader.index["num_tokens"]
        report.data_bytes += reader.index["data_bytes"]
        for example_id in reader.ids:
            if example_id in owner:
                report.problems.append(f"example {example_id!r} is in both {owner[example_id]} and {name}.")
            owner.setdefault(example_id, name)
    report.num_examples = len(owner)
    if manifest is not None and ids_fingerprint(owner) != entry.fields["example_ids"]:
        report.problems.append(f"the shards hold {len(owner)} ids whose fingerprint differs from the key's "
                               f"'example_ids': ids are missing or extra.")
    if manifest is not None:
        _note_unlisted(entry, listed, report)
    return report


def _explain_incomplete(entry: CacheEntry, report: VerifyReport) -> None:
    raw = _read_json(entry.manifest_path)
    if raw is None and entry.manifest_path.exists():
        report.problems.append(f"{entry.manifest_path} is not valid JSON; delete it and finalize again.")
    elif raw is not None:
        report.problems.append(f"{entry.manifest_path} records key {str(raw.get('key'))[:16]}..., not this entry's "
                               f"{entry.key[:16]}...; delete it and elicit again.")
    else:
        report.notes.append("no manifest.json: elicitation was interrupted or not finished; run it again to "
                            "complete the entry (only the missing shards are computed).")


def _check_shard(entry: CacheEntry, name: str, listed: dict | None, report: VerifyReport) -> ShardReader | None:
    """The shard's reader if its index, data size and data sha256 are all right; else None and a problem."""
    try:
        reader = ShardReader(entry.shards_dir / f"{name}.json")
    except CacheCorruptError as err:
        report.problems.append(str(err))
        return None
    if listed is not None and (listed["index_sha256"], listed["data_sha256"]) != \
            (reader.index["index_sha256"], reader.index["data_sha256"]):
        report.problems.append(f"{reader.index_path} differs from the shard the manifest lists.")
        return None
    if not reader.data_path.exists():
        report.problems.append(f"{reader.data_path} is missing.")
        return None
    size = reader.data_path.stat().st_size
    if size != reader.index["data_bytes"]:
        report.problems.append(f"{reader.data_path} has {size} bytes, its index says {reader.index['data_bytes']} "
                               f"(truncated or overwritten).")
        return None
    if not reader.data_checksum_ok():
        report.problems.append(f"{reader.data_path} fails its sha256 check (the file is damaged).")
        return None
    return reader


def _note_unlisted(entry: CacheEntry, listed: dict, report: VerifyReport) -> None:
    on_disk = {p.stem for p in entry.shards_dir.glob("shard-*.json")}
    for name in sorted(on_disk - set(listed)):
        report.notes.append(f"shards/{name}.json is not in the manifest and is ignored.")
