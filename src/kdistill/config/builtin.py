"""Built-in tasks (YAML in kdistill/tasks/) and built-in run configs (YAML in kdistill/configs/), by name."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from kdistill.errors import KdistillError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TASK_DIR = PACKAGE_DIR / "tasks"
CONFIG_DIR = PACKAGE_DIR / "configs"


def builtin_tasks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TASK_DIR.glob("*.yaml"))}


def builtin_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def _pick(kind: str, name: str, table: dict[str, Path]) -> Path:
    if name not in table:
        hint = difflib.get_close_matches(name, list(table), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KdistillError(f"unknown built-in {kind} {name!r}.{extra} Built-in: {', '.join(table)}.")
    return table[name]


def load_builtin_task(name: str) -> dict[str, Any]:
    """The `task:` and default `data:` sections of a built-in task."""
    return yaml.safe_load(_pick("task", name, builtin_tasks()).read_text(encoding="utf-8"))


def builtin_config_path(name: str) -> Path:
    return _pick("config", name, builtin_configs())
