"""Range checks of numeric config fields, shared by every section: one sentence naming the field, the range
and the value found, raised on construction, so a bad value stops a run before anything is read or written."""

from __future__ import annotations

from typing import Any, Callable

from kdistill.errors import KdistillError

_RANGES: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "> 0": lambda v: v > 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
}


def check_ranges(section: str, obj: Any, **ranges: str) -> None:
    """Raise for the first field of ``obj`` outside its range (None, "not set", is always allowed), e.g.
    ``check_ranges("training.", cfg, batch_size=">= 1")``. ``section`` prefixes the field's name."""
    for name, allowed in ranges.items():
        value = getattr(obj, name)
        if value is not None and not _RANGES[allowed](value):
            raise KdistillError(f"{section}{name} must be {allowed}; found {value!r}.")
