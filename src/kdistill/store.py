"""The teacher store: teacher outputs computed once, keyed by everything that determines them.

Layout: ``<root>/<key[:16]>/targets.safetensors`` + ``manifest.json``. The folder appears by an
atomic rename only when complete, the manifest records the full key and the shard's sha256, and a
read checks both, so a changed prompt or teacher can never reuse stale targets and a damaged shard
is never used. Targets are looked up by example id, never by position.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kdistill.io import atomic_dir, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the tensor is named "values" (label log-probs or pooled hidden states)


@dataclass
class TeacherTargets:
    """Teacher outputs, one row per example id: label log-probs (N, L) or pooled hidden states (N, n, D)."""

    ids: list[str]
    values: torch.Tensor  # (N, ...)

    def __post_init__(self) -> None:
        assert self.values.shape[0] == len(self.ids), "one row per id"
        self._row = {example_id: i for i, example_id in enumerate(self.ids)}

    def rows(self, ids: list[str]) -> torch.Tensor:
        """(len(ids), L) targets for these examples; a missing id is a bug upstream, so it raises."""
        return self.values[[self._row[i] for i in ids]]

    def subset(self, ids: list[str]) -> "TeacherTargets":
        return TeacherTargets(list(ids), self.rows(ids))


def key_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


class TeacherStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, key: str) -> Path:
        return self.root / key[:16]

    def load(self, fields: dict[str, Any]) -> TeacherTargets | None:
        """The stored targets for exactly these key fields, or None (a miss, or a damaged entry)."""
        key = key_of(fields)
        folder = self._dir(key)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("key") != key or manifest.get("format_version") != FORMAT_VERSION:
            return None
        shard = folder / "targets.safetensors"
        if not shard.exists() or sha256_file(shard) != manifest["sha256"]:
            log.warning("teacher store entry %s is damaged (checksum mismatch); eliciting again", folder)
            return None
        return TeacherTargets(manifest["ids"], load_file(shard)["values"])

    def save(self, fields: dict[str, Any], targets: TeacherTargets) -> Path:
        key = key_of(fields)
        with atomic_dir(self._dir(key)) as tmp:
            shard = tmp / "targets.safetensors"
            save_file({"values": targets.values.contiguous().float()}, str(shard))
            atomic_write_json(tmp / "manifest.json", {  # written last
                "format_version": FORMAT_VERSION, "key": key, "fields": fields,
                "sha256": sha256_file(shard), "ids": targets.ids,
            })
        return self._dir(key)
