"""Teacher outputs in memory, one row per example id, always looked up by id (never by position)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TeacherTargets:
    """Teacher outputs, one row per example id: label log-probs (N, L) or pooled hidden states (N, n, D)."""

    ids: list[str]
    values: torch.Tensor  # (N, ...)

    def __post_init__(self) -> None:
        assert self.values.shape[0] == len(self.ids), "one row per id"
        self._row = {example_id: i for i, example_id in enumerate(self.ids)}

    def rows(self, ids: list[str]) -> torch.Tensor:
        """(len(ids), ...) rows for these examples; a missing id is a bug upstream, so it raises."""
        return self.values[[self._row[i] for i in ids]]

    def subset(self, ids: list[str]) -> "TeacherTargets":
        return TeacherTargets(list(ids), self.rows(ids))
