"""The teacher cache: entries keyed by everything that determines a teacher's values, read lazily by id.

    <root>/<key[:16]>/entry.json          key + fields, written before the first shard
                      shards/shard-NNNNN.bin + .json   data + index (one per shard, each atomic)
                      manifest.json       written last, by finalize(): the entry is complete

An entry is complete only while its manifest exists; writing a shard removes it. Reads go through the
manifest's shard list when there is one, through the shard indexes on disk otherwise, and every example
is CRC-checked as it is read. See docs/cache-format.md for the byte layout.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from kdistill.cache.keys import canonical_json, check_fields, ids_fingerprint, key_of
from kdistill.cache.shard import (
    CacheCorruptError,
    ShardReader,
    TokenRow,
    encode_label_shard,
    encode_token_shard,
    index_bytes,
    unpack_ids,
)
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import torch

    from kdistill.losses.divergences import SparseTargets

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "kdistill-teacher-cache/1"


class TeacherCache:
    """A folder of cache entries, one per distinct set of key fields."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, fields: dict[str, Any]) -> CacheEntry:
        """The entry for exactly these key fields (it may be empty); looking it up writes nothing."""
        check_fields(fields)
        fields = json.loads(canonical_json(fields))  # our own plain copy: tuples become lists, as when re-read
        key = key_of(fields)
        return CacheEntry(self._folder(key), key, fields)

    def _folder(self, key: str) -> Path:
        """<root>/<key[:16]>, or <root>/<key> if that short folder belongs to another key (a collision)."""
        short = self.root / key[:16]
        owner = _read_json(short / "entry.json")
        return short if owner is None or owner.get("key") == key else self.root / key


def open_entry(folder: str | Path) -> CacheEntry:
    """An existing entry from its folder alone (for the CLI and other tools), its key re-derived from its fields."""
    folder = Path(folder)
    recorded = _read_json(folder / "manifest.json") or _read_json(folder / "entry.json")
    if recorded is None:
        raise KdistillError(f"{folder} is not a teacher cache entry: it has no readable manifest.json or entry.json. "
                            f"Pass an entry folder (<cache root>/<key prefix>).")
    fields = recorded.get("fields")
    if not isinstance(fields, dict) or key_of(fields) != recorded.get("key"):
        raise CacheCorruptError(f"{folder}: the recorded key does not match the sha256 of the recorded fields; "
                                f"the entry is damaged. Delete the folder and elicit again.")
    return CacheEntry(folder, recorded["key"], fields)


class CacheEntry:
    """The cached teacher outputs for one key: write shards, finalize, then read by example id."""

    def __init__(self, folder: Path, key: str, fields: dict[str, Any]) -> None:
        self.folder, self.key, self.fields = Path(folder), key, fields
        self.kind = fields["kind"]
        self._readers: dict[str, ShardReader] = {}  # shard name -> reader (index loaded, data mapped lazily)
        self._verified: dict[str, tuple] = {}  # shard name -> (size, mtime_ns, sha256) that passed sha256
        self._lookup: dict[str, str] | None = None  # example id -> shard name

    # -- paths and state -------------------------------------------------------------------------------

    @property
    def shards_dir(self) -> Path:
        return self.folder / "shards"

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> dict | None:
        """The manifest if it exists and is this key's; anything else means the entry is incomplete."""
        manifest = _read_json(self.manifest_path)
        if manifest is None or manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != self.key:
            return None
        return manifest

    @property
    def complete(self) -> bool:
        return self.manifest() is not None

    def shard_names(self) -> list[str]:
        """The shards that make up the entry: the manifest's when complete, else every index on disk."""
        manifest = self.manifest()
        if manifest is not None:
            return [shard["name"] for shard in manifest["shards"]]
        return sorted(p.stem for p in self.shards_dir.glob("shard-*.json"))

    def manifest_is_current(self) -> bool:
        """True if the manifest lists exactly the shard indexes on disk (an unlink lost in a power cut
        could leave a manifest that describes older shards)."""
        manifest = self.manifest()
        if manifest is None:
            return False
        on_disk = sorted(p.stem for p in self.shards_dir.glob("shard-*.json"))
        readers = [self._try_reader(name) for name in on_disk]
        return None not in readers and manifest["shards"] == [_manifest_shard(r.index_path.stem, r.index)
                                                               for r in readers]

    def shard_indexes(self) -> list[dict]:
        """The readable indexes of `shard_names()` (metadata only; no data file is read)."""
        return [reader.index for reader in map(self._try_reader, self.shard_names()) if reader is not None]

    # -- writing ---------------------------------------------------------------------------------------

    def write_shard(self, ids: list[str], rows: Any, *, index: int | None = None) -> str:
        """Write one shard atomically (data, then index) and return its name; the entry becomes incomplete.

        ``rows`` is an (n, L) array of label log-probs for a labels entry, a list of n TokenRow for a
        tokens entry. ``index`` picks the shard's number (resumable elicitation rewrites the same one).
        """
        ids = [str(i) for i in ids]
        data, shard_index = self._encode(ids, rows)
        name = f"shard-{self._next_index() if index is None else index:05d}"
        self._claim()
        self.manifest_path.unlink(missing_ok=True)  # the manifest would no longer describe the shards
        atomic_write_bytes(self.shards_dir / f"{name}.bin", data)
        atomic_write_bytes(self.shards_dir / f"{name}.json", index_bytes({**shard_index, "data_file": f"{name}.bin"}))
        self._forget(name)
        self._remember_verified(name, shard_index["data_sha256"])
        return name

    def _encode(self, ids: list[str], rows: Any) -> tuple[bytes, dict]:
        if self.kind == "labels":
            return encode_label_shard(ids, _as_numpy(rows), num_labels=len(self.fields["labels"]))
        if self.kind == "vectors":  # stored as flat float32 rows, the same layout as label rows
            width = int(np.prod(self.fields["shape"]))
            return encode_label_shard(ids, _as_numpy(rows).reshape(len(ids), width), num_labels=width)
        if not all(isinstance(row, TokenRow) for row in rows):
            raise KdistillError("a tokens entry takes one kdistill.cache.TokenRow per example id.")
        return encode_token_shard(ids, list(rows), k=self.fields["k"], vocab_size=self.fields["vocab_size"])

    def _claim(self) -> None:
        """Write entry.json (key + fields) once, so the folder's owner is known before any shard exists."""
        if _read_json(self.folder / "entry.json") is None:
            atomic_write_json(self.folder / "entry.json", self._record())

    def _record(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "key": self.key, "fields": self.fields}

    def record_problem(self) -> str | None:
        """What is wrong with entry.json (None: it is this entry's key and fields, or there is no entry yet)."""
        path = self.folder / "entry.json"
        if not path.exists():
            return f"{path} is missing" if self.shards_dir.exists() else None
        if _read_json(path) != self._record():
            return f"{path} is damaged (not this entry's key and fields)"
        return None

    def repair_record(self) -> bool:
        """Write entry.json again if it is damaged or missing (the key and fields are known from the lookup or
        the manifest); True if it was. Called by the one writer, under its lock."""
        problem = self.record_problem()
        if problem is None or not self.folder.exists():
            return False
        log.warning("%s; writing it again", problem)
        atomic_write_json(self.folder / "entry.json", self._record())
        return True

    def _next_index(self) -> int:
        numbers = [int(p.stem.split("-")[1]) for p in self.shards_dir.glob("shard-*.json")]
        return max(numbers, default=-1) + 1

    def delete_shard(self, name: str) -> None:
        """Remove a shard (index first, so it stops counting at once); the entry becomes incomplete."""
        self.manifest_path.unlink(missing_ok=True)
        (self.shards_dir / f"{name}.json").unlink(missing_ok=True)
        (self.shards_dir / f"{name}.bin").unlink(missing_ok=True)
        self._forget(name)

    def finalize(self) -> dict:
        """Check every shard and write the manifest, last; raises if a shard is damaged or ids are missing."""
        names = sorted(p.stem for p in self.shards_dir.glob("shard-*.json"))
        shards, seen = [], {}
        for name in names:
            reader = self._reader(name)
            if not self._data_ok(name, reader):
                raise CacheCorruptError(f"{reader.data_path} does not match the sha256 in its index; delete the "
                                        f"shard ({name}.json and .bin) and write it again before finalizing.")
            for example_id in reader.ids:
                if example_id in seen:
                    raise KdistillError(f"{self.folder}: example {example_id!r} is in both {seen[example_id]} and "
                                        f"{name}; an id must be written to exactly one shard.")
                seen[example_id] = name
            shards.append(_manifest_shard(name, reader.index))
        self._check_ids_match_key(seen)
        manifest = {"format": MANIFEST_FORMAT, "key": self.key, "fields": self.fields, "kind": self.kind,
                    "num_examples": len(seen), "num_tokens": sum(s["num_tokens"] for s in shards), "shards": shards}
        atomic_write_json(self.manifest_path, manifest)
        self._lookup = None
        return manifest

    def _check_ids_match_key(self, ids: Iterable[str]) -> None:
        if ids_fingerprint(ids) != self.fields["example_ids"]:
            raise KdistillError(f"{self.folder}: the shards hold {len(list(ids))} example ids whose fingerprint differs "
                                f"from the key's 'example_ids'; some ids are missing or extra. Write the missing "
                                f"shards (elicit_resumable does) before finalizing.")

    # -- checking --------------------------------------------------------------------------------------

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids (in the given order) that are not in a shard whose data matches its sha256."""
        covered: set[str] = set()
        for name in self.shard_names():
            reader = self._try_reader(name)
            if reader is not None and self._data_ok(name, reader):
                covered.update(reader.ids)
        return [i for i in map(str, ids) if i not in covered]

    def holds_shard(self, name: str, ids: list[str]) -> bool:
        """True if shard ``name`` exists, holds exactly ``ids`` and its data matches its sha256."""
        reader = self._try_reader(name)
        return reader is not None and reader.ids == ids and self._data_ok(name, reader)

    def _data_ok(self, name: str, reader: ShardReader) -> bool:
        """sha256 of the shard's data file, computed once per entry object unless the file changes."""
        stamp = _stamp(reader.data_path)
        if stamp is not None and self._verified.get(name) == (*stamp, reader.index["data_sha256"]):
            return True
        if not reader.data_checksum_ok():
            log.warning("teacher cache shard %s is damaged or incomplete; it will be elicited again", reader.data_path)
            return False
        self._remember_verified(name, reader.index["data_sha256"])
        return True

    def _remember_verified(self, name: str, sha256: str) -> None:
        stamp = _stamp(self.shards_dir / f"{name}.bin")
        if stamp is not None:
            self._verified[name] = (*stamp, sha256)

    # -- reading ---------------------------------------------------------------------------------------

    def labels(self, ids: Iterable[str]) -> torch.Tensor:
        """(n, L) float32 label log-probs of these ids, in this order."""
        import torch

        self._require_kind("labels")
        rows_nl = [self._example(str(i))["logprobs"][0] for i in ids]
        num_labels = len(self.fields["labels"])
        return torch.from_numpy(np.stack(rows_nl).astype(np.float32) if rows_nl else np.zeros((0, num_labels),
                                                                                             np.float32))

    def vectors(self, ids: Iterable[str]) -> torch.Tensor:
        """(n, *shape) float32 rows of these ids, in this order."""
        import torch

        self._require_kind("vectors")
        shape = tuple(self.fields["shape"])
        rows = [self._example(str(i))["logprobs"][0] for i in ids]
        flat = np.stack(rows).astype(np.float32) if rows else np.zeros((0, int(np.prod(shape))), np.float32)
        return torch.from_numpy(flat.reshape(len(rows), *shape))

    def tokens(self, example_id: str) -> SparseTargets:
        """One example's top-k targets, (T, k), read from one memory-mapped shard."""
        import torch

        from kdistill.losses.divergences import SparseTargets

        self._require_kind("tokens")
        parts = self._example(str(example_id))
        token_ids_tk = unpack_ids(parts["token_ids"], self.fields["k"], self._reader_of(example_id).index["id_bits"])
        return SparseTargets(torch.from_numpy(token_ids_tk), torch.from_numpy(parts["logprobs"].astype(np.float32)),
                             torch.from_numpy(parts["tail_logmass"].astype(np.float32)),
                             stored_temperature=float(self.fields["temperature"]))

    def generation(self, example_id: str) -> tuple[str, int] | None:
        """The teacher's generation for this example and the seed that sampled it, if one was cached."""
        self._require_kind("tokens")
        parts = self._example(str(example_id))
        reader = self._reader_of(example_id)
        seed = reader.index["examples"]["seeds"][reader.row_of(str(example_id))]
        return None if seed is None else (parts["text"].tobytes().decode("utf-8"), seed)

    def ids(self) -> list[str]:
        """Every example id the entry's shards hold, in shard order."""
        return list(self._ids_to_shards())

    def _example(self, example_id: str) -> dict[str, np.ndarray]:
        return self._reader_of(example_id).example(example_id)

    def _reader_of(self, example_id: str) -> ShardReader:
        name = self._ids_to_shards().get(str(example_id))
        if name is None:
            raise KdistillError(f"example {example_id!r} is not in teacher cache entry {self.folder}; elicit it "
                                f"first (elicit_resumable computes only what is missing).")
        return self._reader(name)

    def _ids_to_shards(self) -> dict[str, str]:
        """example id -> shard name, from the indexes only; the first shard holding an id wins."""
        if self._lookup is None:
            manifest = self.manifest()
            lookup: dict[str, str] = {}
            for name in self.shard_names():
                reader = self._reader(name) if manifest is not None else self._try_reader(name)
                if reader is None:
                    continue
                if manifest is not None:
                    _check_against_manifest(reader, manifest)
                for example_id in reader.ids:
                    lookup.setdefault(example_id, name)
            self._lookup = lookup
        return self._lookup

    def _require_kind(self, kind: str) -> None:
        if self.kind != kind:
            raise KdistillError(f"teacher cache entry {self.folder} holds {self.kind}, not {kind}; "
                                f"use .{self.kind}() to read it.")

    def _reader(self, name: str) -> ShardReader:
        if name not in self._readers:
            self._readers[name] = ShardReader(self.shards_dir / f"{name}.json")
        return self._readers[name]

    def _try_reader(self, name: str) -> ShardReader | None:
        """The shard's reader, or None if its index is absent (not written yet) or damaged (logged)."""
        if name not in self._readers and not (self.shards_dir / f"{name}.json").exists():
            return None
        try:
            return self._reader(name)
        except CacheCorruptError as err:
            log.warning("%s", err)
            return None

    def _forget(self, name: str) -> None:
        self._readers.pop(name, None)
        self._verified.pop(name, None)
        self._lookup = None

    def opened_shards(self) -> list[str]:
        """Shards whose data file this object has memory-mapped (a read touches only the shards it needs)."""
        return sorted(name for name, reader in self._readers.items() if reader._data is not None)


def _manifest_shard(name: str, index: dict) -> dict:
    ids = index["examples"]["ids"]
    return {"name": name, "index_file": f"shards/{name}.json", "data_file": f"shards/{index['data_file']}",
            "index_sha256": index["index_sha256"], "data_sha256": index["data_sha256"],
            "data_bytes": index["data_bytes"], "num_examples": len(ids), "num_tokens": index["num_tokens"]}


def _check_against_manifest(reader: ShardReader, manifest: dict) -> None:
    """A complete entry's shard must be the very one the manifest lists, not a later rewrite."""
    listed = next(s for s in manifest["shards"] if s["name"] == reader.index_path.stem)
    if (listed["index_sha256"], listed["data_sha256"]) != (reader.index["index_sha256"], reader.index["data_sha256"]):
        raise CacheCorruptError(f"teacher cache shard {reader.index_path} differs from the one its manifest lists; "
                                f"the entry was changed after it was finalized. Elicit again to repair it.")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None if it is absent or unreadable (a half-written file is absent)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _as_numpy(rows: Any) -> np.ndarray:
    """A torch tensor or array-like as a float32 numpy array."""
    if hasattr(rows, "detach"):
        rows = rows.detach().cpu().numpy()
    return np.asarray(rows, dtype=np.float32)
