"""The plain functions behind `kdistill cache info | verify | export`.

Each takes a path that is either one entry folder or a cache root holding several entries.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from kdistill.cache.entry import CacheEntry, open_entry
from kdistill.cache.verify import verify_entry
from kdistill.errors import KdistillError


def entry_folders(path: str | Path) -> list[Path]:
    """[path] if it is an entry folder, else the entry folders directly inside it."""
    path = Path(path)
    if _is_entry(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and _is_entry(p)) if path.is_dir() else []
    if not found:
        raise KdistillError(f"{path} is neither a teacher cache entry (a folder with manifest.json or entry.json) "
                            f"nor a cache root containing entries. Pass the cache folder, e.g. runs/NAME/teacher_cache.")
    return found


def _is_entry(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "entry.json").is_file()


def cache_info(path: str | Path) -> str:
    """A few lines per entry: status, what it was keyed by, and its size per example and per token."""
    return "\n\n".join(_entry_info(open_entry(folder)) for folder in entry_folders(path))


def _entry_info(entry: CacheEntry) -> str:
    manifest = entry.manifest()
    names = entry.shard_names()
    indexes = entry.shard_indexes()
    num_examples = sum(index["num_examples"] for index in indexes)  # indexes only; `verify` checks the data
    num_tokens = sum(index["num_tokens"] for index in indexes)
    disk_bytes = sum(p.stat().st_size for p in entry.folder.rglob("*") if p.is_file())
    keyed = {name: value for name, value in entry.fields.items() if name not in ("kind",)}
    lines = [f"{entry.folder}  [{'complete' if manifest else 'INCOMPLETE (no manifest; elicit again to finish)'}]",
             f"  kind: {entry.kind}   key: {entry.key}",
             f"  shards: {len(names)}   examples: {num_examples:,}   target tokens: {num_tokens:,}",
             f"  on disk: {disk_bytes:,} bytes" + (f"  ({disk_bytes / num_tokens:.1f} B/token)" if num_tokens else "")]
    lines += [f"  {name}: {_short(value)}" for name, value in keyed.items()]
    return "\n".join(lines)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."


def cache_verify(path: str | Path) -> tuple[bool, str]:
    """(all entries complete and undamaged, a report) after re-computing every checksum."""
    reports = [verify_entry(open_entry(folder)) for folder in entry_folders(path)]
    return all(r.ok for r in reports), "\n".join(r.text() for r in reports)


def cache_repair(path: str | Path) -> list[str]:
    """Delete the damaged shards of every entry under ``path`` and write a damaged entry.json again, so that the
    next elicitation asks the teacher for exactly those shards; returns the shards removed (entry/shards/name)."""
    from kdistill.cache.resumable import writer_lock

    removed = []
    for folder in entry_folders(path):
        entry = open_entry(folder)
        with writer_lock(entry):
            report = verify_entry(entry)
            entry.repair_record()
            for name in report.damaged_shards:
                entry.delete_shard(name)
                removed.append(f"{folder.name}/shards/{name}")
    return removed


def cache_export(path: str | Path, out_jsonl: str | Path) -> int:
    """Write one JSON line per example id (OpenAI-like top_logprobs shape, see docs/cache-format.md).

    Token ids are written as "token_id:N", vLLM's form for --return-tokens-as-token-ids, so the file
    needs no tokenizer and `import_openai_top_logprobs` reads it back. Returns the number of lines.
    """
    folders = entry_folders(path)
    if len(folders) != 1:
        raise KdistillError(f"{path} holds {len(folders)} cache entries; pass one of them to export: "
                            f"{', '.join(f.name for f in folders)}.")
    entry = open_entry(folders[0])
    if not entry.complete:
        raise KdistillError(f"teacher cache entry {entry.folder} is incomplete (no manifest.json); elicit again "
                            f"to finish it before exporting.")
    out_jsonl = Path(out_jsonl)
    tmp = out_jsonl.with_name(f".{out_jsonl.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for example_id in entry.ids():
            f.write(json.dumps(export_record(entry, example_id), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_jsonl)
    return len(entry.ids())


def export_record(entry: CacheEntry, example_id: str) -> dict:
    """One example as plain JSON; -inf log-probs (padding, an empty tail) become null."""
    if entry.kind == "labels":
        row_l = entry.labels([example_id])[0].tolist()
        return {"id": example_id, "label_logprobs": dict(zip(entry.fields["labels"], map(_finite, row_l)))}
    if entry.kind == "vectors":
        return {"id": example_id, "shape": entry.fields["shape"], "values": entry.vectors([example_id])[0].flatten().tolist()}
    targets = entry.tokens(example_id)
    content = [{"top_logprobs": [{"token": f"token_id:{t}", "logprob": _finite(lp)}
                                 for t, lp in zip(ids_k, lps_k) if lp != -math.inf],
                "tail_logmass": _finite(tail)}
               for ids_k, lps_k, tail in zip(targets.token_ids.tolist(), targets.logprobs.tolist(),
                                             targets.tail_logmass.tolist())]
    record = {"id": example_id, "logprobs": {"content": content}}
    generation = entry.generation(example_id)
    if generation is not None:
        record["generation"], record["seed"] = generation
    return record


def _finite(value: float) -> float | None:
    return None if value == -math.inf else value
