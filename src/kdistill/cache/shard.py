"""One shard: a data file of aligned little-endian arrays plus a small JSON index that describes them.

The data file has no header: the index names each section's byte offset, dtype and shape, so any tool can
np.memmap it. Every example carries a CRC-32 of its own bytes, checked whenever that example is read, so a
damaged shard is never used silently and reading one example reads only that example's bytes. The whole
data file's sha256 (in the index and the manifest) is what `verify` and resumption check.

Token ids are bit-packed at ceil(log2 V) bits (18 for Qwen's 151,936), each token's k ids padded to whole
bytes; log-probs are float16 (relative error <= 2**-11); the tail log-mass is float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.cache.keys import canonical_json
from kdistill.errors import KdistillError

SHARD_FORMAT = "kdistill-teacher-cache-shard/1"
ALIGN_BYTES = 64
SECTION_ORDER = ("token_ids", "logprobs", "tail_logmass", "text")  # layout order, and the order CRCs chain in
PACK_BLOCK_TOKENS = 4096  # bounds the (tokens, k, bits) temporary of bit-packing to ~20 MB


class CacheCorruptError(KdistillError):
    """A shard, index or manifest does not match its checksum or size: it is never used."""


@dataclass(frozen=True)
class TokenRow:
    """One example's token-level teacher targets, as written to and read from a shard.

    A generation (sequence-level KD) is stored only with the seed that sampled it, so that it can be
    reproduced; pass seed=0 for greedy decoding.
    """

    token_ids: Any  # (T, k) integer ids, distinct within a row
    logprobs: Any  # (T, k) log-probs of token_ids at the entry's temperature
    tail_logmass: Any  # (T,) log(1 - sum(exp(logprobs))); -inf when nothing is left
    generation: str | None = None
    seed: int | None = None


def id_bits(vocab_size: int) -> int:
    """Bits per token id: ceil(log2 V), at least 1."""
    return max(1, (vocab_size - 1).bit_length())


def pack_ids(ids_tk: np.ndarray, bits: int) -> np.ndarray:
    """(T, k) ids -> (T, ceil(k * bits / 8)) uint8, little-endian bit order, each token row byte-aligned."""
    num_tokens, k = ids_tk.shape
    out_tb = np.empty((num_tokens, math.ceil(k * bits / 8)), dtype=np.uint8)
    shifts_b = np.arange(bits, dtype=np.int64)
    for start in range(0, num_tokens, PACK_BLOCK_TOKENS):
        block_tk = ids_tk[start:start + PACK_BLOCK_TOKENS].astype(np.int64)
        bits_tkb = ((block_tk[..., None] >> shifts_b) & 1).astype(np.uint8)  # (t, k, bits)
        out_tb[start:start + len(block_tk)] = np.packbits(bits_tkb.reshape(len(block_tk), k * bits), axis=-1,
                                                          bitorder="little")
    return out_tb


def unpack_ids(packed_tb: np.ndarray, k: int, bits: int) -> np.ndarray:
    """Inverse of pack_ids: (T, row_bytes) uint8 -> (T, k) int64."""
    bits_tkb = np.unpackbits(np.asarray(packed_tb), axis=-1, count=k * bits, bitorder="little")
    weights_b = np.left_shift(1, np.arange(bits, dtype=np.int64))
    return bits_tkb.reshape(len(packed_tb), k, bits).astype(np.int64) @ weights_b  # (T, k)


def encode_label_shard(ids: list[str], logprobs_nl: Any, *, num_labels: int) -> tuple[bytes, dict]:
    """The data bytes and index of a shard of label-space rows."""
    logprobs_nl = np.ascontiguousarray(np.asarray(logprobs_nl, dtype="<f4"))
    if logprobs_nl.shape != (len(ids), num_labels):
        raise KdistillError(f"label rows must have shape (num_ids, num_labels) = ({len(ids)}, {num_labels}); "
                            f"found {logprobs_nl.shape}.")
    sections = {"logprobs": (logprobs_nl, "example")}
    offsets = {"example": list(range(len(ids) + 1))}
    header = {"kind": "labels", "num_examples": len(ids), "num_tokens": 0, "num_labels": num_labels}
    return _assemble(ids, sections, offsets, header, extra_examples={})


def encode_token_shard(ids: list[str], rows: list[TokenRow], *, k: int, vocab_size: int) -> tuple[bytes, dict]:
    """The data bytes and index of a shard of token-level rows (one TokenRow per id)."""
    if len(rows) != len(ids):
        raise KdistillError(f"expected one TokenRow per id ({len(ids)}); found {len(rows)}.")
    arrays = [_checked_row(example_id, row, k, vocab_size) for example_id, row in zip(ids, rows)]
    token_offsets = np.cumsum([0] + [len(a[0]) for a in arrays]).tolist()
    bits = id_bits(vocab_size)
    ids_tk = np.concatenate([a[0] for a in arrays]) if arrays else np.zeros((0, k), np.int64)
    sections = {
        "token_ids": (pack_ids(ids_tk, bits), "token"),
        "logprobs": (_to_float16(np.concatenate([a[1] for a in arrays] or [np.zeros((0, k))])), "token"),
        "tail_logmass": (np.concatenate([a[2] for a in arrays] or [np.zeros(0)]).astype("<f4"), "token"),
    }
    offsets = {"token": token_offsets}
    extra = {"seeds": [row.seed if row.generation is not None else None for row in rows]}
    if any(row.generation is not None for row in rows):
        texts = [(row.generation or "").encode("utf-8") for row in rows]
        sections["text"] = (np.frombuffer(b"".join(texts), dtype=np.uint8), "text")
        offsets["text"] = np.cumsum([0] + [len(t) for t in texts]).tolist()
    header = {"kind": "tokens", "num_examples": len(ids), "num_tokens": token_offsets[-1], "k": k,
              "vocab_size": vocab_size, "id_bits": bits}
    return _assemble(ids, sections, offsets, header, extra_examples=extra)


def _to_float16(logprobs: np.ndarray) -> np.ndarray:
    """Log-probs below float16's range (-65504) become -inf: a probability that small is zero anyway."""
    with np.errstate(over="ignore"):
        return logprobs.astype("<f2")


def _checked_row(example_id: str, row: TokenRow, k: int, vocab_size: int):
    """(ids (T, k) int64, logprobs (T, k) float32, tail (T,) float32) of a row, or a KdistillError saying why not."""
    ids_tk = np.asarray(row.token_ids)
    logprobs_tk = np.asarray(row.logprobs, dtype=np.float32)
    tail_t = np.asarray(row.tail_logmass, dtype=np.float32)
    where = f"teacher cache row for example {example_id!r}"
    if ids_tk.ndim != 2 or ids_tk.shape[1] != k or logprobs_tk.shape != ids_tk.shape or tail_t.shape != ids_tk.shape[:1]:
        raise KdistillError(f"{where}: expected token_ids (T, {k}), logprobs (T, {k}) and tail_logmass (T,); found "
                            f"{ids_tk.shape}, {logprobs_tk.shape} and {tail_t.shape}.")
    if ids_tk.size and (not np.issubdtype(ids_tk.dtype, np.integer) or ids_tk.min() < 0 or ids_tk.max() >= vocab_size):
        raise KdistillError(f"{where}: token_ids must be integers in [0, {vocab_size}); "
                            f"found dtype {ids_tk.dtype}, range [{ids_tk.min()}, {ids_tk.max()}].")
    if ids_tk.size and (np.diff(np.sort(ids_tk, axis=1), axis=1) == 0).any():
        raise KdistillError(f"{where}: token_ids repeat an id within a row; the top-k ids must be distinct.")
    if np.isnan(logprobs_tk).any() or np.isnan(tail_t).any():
        raise KdistillError(f"{where}: logprobs or tail_logmass contain NaN; the teacher's output is broken.")
    if row.generation is not None and not isinstance(row.seed, int):
        raise KdistillError(f"{where}: a generation is cached only with the integer seed that sampled it "
                            f"(0 for greedy decoding); found seed={row.seed!r}.")
    return ids_tk.astype(np.int64), logprobs_tk, tail_t


def _assemble(ids, sections, offsets, header, extra_examples) -> tuple[bytes, dict]:
    """Lay the sections out at aligned offsets and describe them, with a CRC-32 per example."""
    if len(set(ids)) != len(ids) or not all(isinstance(i, str) for i in ids):
        raise KdistillError("the example ids of a shard must be distinct strings.")
    chunks, described, position = [], {}, 0
    for name, (array, rows) in sections.items():
        pad = -position % ALIGN_BYTES
        chunks.append(b"\0" * pad)
        position += pad
        data = np.ascontiguousarray(array).tobytes()
        dtype = "bitpacked-le" if name == "token_ids" else np.dtype(array.dtype).str
        described[name] = {"offset": position, "bytes": len(data), "dtype": dtype, "shape": list(array.shape),
                           "rows": rows}
        chunks.append(data)
        position += len(data)
    crcs = [_example_crc({n: a for n, (a, _) in sections.items()}, described, offsets, i) for i in range(len(ids))]
    examples = {"ids": list(ids), **{f"{axis}_offsets": v for axis, v in offsets.items() if axis != "example"},
                **extra_examples, "crc32": crcs}
    data = b"".join(chunks)
    index = {"format": SHARD_FORMAT, **header, "data_bytes": len(data),
             "data_sha256": hashlib.sha256(data).hexdigest(), "sections": described, "examples": examples}
    return data, index


def _example_crc(arrays: dict[str, np.ndarray], sections: dict, offsets: dict, i: int) -> int:
    """CRC-32 over example i's rows of every section, in section order."""
    crc = 0
    for name, meta in sections.items():
        axis_offsets = offsets[meta["rows"]]
        crc = zlib.crc32(np.ascontiguousarray(arrays[name][axis_offsets[i]:axis_offsets[i + 1]]).tobytes(), crc)
    return crc


def seal_index(index: dict) -> dict:
    """The index with its own sha256 (over its canonical JSON without that field) added."""
    body = {key: value for key, value in index.items() if key != "index_sha256"}
    return {**body, "index_sha256": hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()}


def index_bytes(index: dict) -> bytes:
    return (json.dumps(seal_index(index), separators=(",", ":")) + "\n").encode("utf-8")


class ShardReader:
    """Lazy reader of one shard: the index on construction, the data file memory-mapped on first use."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = Path(index_path)
        self.index = load_index(self.index_path)
        self.data_path = self.index_path.with_name(self.index["data_file"])
        self._row = {example_id: i for i, example_id in enumerate(self.index["examples"]["ids"])}
        self._data: np.memmap | None = None

    @property
    def ids(self) -> list[str]:
        return self.index["examples"]["ids"]

    def row_of(self, example_id: str) -> int | None:
        return self._row.get(example_id)

    def data(self) -> np.memmap:
        """The whole data file as a read-only uint8 memmap; its size must be the recorded one."""
        if self._data is None:
            if not self.data_path.exists():
                raise CacheCorruptError(f"teacher cache shard {self.data_path} is missing; its index "
                                        f"{self.index_path.name} refers to it. Elicit again to re-create it.")
            size = self.data_path.stat().st_size
            if size != self.index["data_bytes"]:
                raise CacheCorruptError(f"teacher cache shard {self.data_path} has {size} bytes, its index says "
                                        f"{self.index['data_bytes']} (truncated or overwritten). Elicit again to "
                                        f"re-create it.")
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        return self._data

    def example(self, example_id: str) -> dict[str, np.ndarray]:
        """Example's rows of every section (views into the memmap), after checking its CRC-32."""
        i = self._row[example_id]
        parts, crc = {}, 0
        for name in (name for name in SECTION_ORDER if name in self.index["sections"]):
            meta = self.index["sections"][name]
            start, stop = self._span(meta["rows"], i)
            row_bytes = meta["bytes"] // max(meta["shape"][0], 1)
            raw = self.data()[meta["offset"] + start * row_bytes:meta["offset"] + stop * row_bytes]
            crc = zlib.crc32(raw, crc)
            parts[name] = _view(raw, meta, stop - start)
        if crc != self.index["examples"]["crc32"][i]:
            raise CacheCorruptError(f"teacher cache shard {self.data_path}: example {example_id!r} fails its CRC-32 "
                                    f"check (the file is damaged). Run `kdistill cache verify` and elicit again; "
                                    f"the damaged shard is re-elicited.")
        return parts

    def _span(self, axis: str, i: int) -> tuple[int, int]:
        if axis == "example":
            return i, i + 1
        offsets = self.index["examples"][f"{axis}_offsets"]
        return offsets[i], offsets[i + 1]

    def data_checksum_ok(self) -> bool:
        """True if the data file exists with the recorded size and sha256 (reads the whole file)."""
        if not self.data_path.exists() or self.data_path.stat().st_size != self.index["data_bytes"]:
            return False
        from kdistill.io import sha256_file

        return sha256_file(self.data_path) == self.index["data_sha256"]


def _view(raw: np.ndarray, meta: dict, num_rows: int) -> np.ndarray:
    """Bytes of some rows of a section as that section's dtype and row shape."""
    if meta["dtype"] == "bitpacked-le":
        return raw.reshape(num_rows, -1)
    return raw.view(np.dtype(meta["dtype"])).reshape(num_rows, *meta["shape"][1:])


def load_index(path: Path) -> dict:
    """A shard index, checked against its own sha256; a damaged index raises CacheCorruptError."""
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheCorruptError(f"teacher cache shard index {path} is missing. Elicit again to re-create it.") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CacheCorruptError(f"teacher cache shard index {path} is not valid JSON ({err}); it is damaged. "
                                f"Elicit again to re-create it.") from None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise CacheCorruptError(f"teacher cache shard index {path}: expected format {SHARD_FORMAT!r}; found "
                                f"{index.get('format') if isinstance(index, dict) else type(index).__name__!r}.")
    if seal_index(index)["index_sha256"] != index.get("index_sha256"):
        raise CacheCorruptError(f"teacher cache shard index {path} fails its sha256 check (it is damaged). "
                                f"Elicit again to re-create it.")
    return index
