"""Reading a run config: YAML files, built-in jobs and tasks by name, `--set` overrides, and writing it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdistill.config.convert import from_dict, to_dict
from kdistill.config.run import RunConfig
from kdistill.config.task_data import DataConfig
from kdistill.errors import KdistillError


def dump_yaml(config: RunConfig) -> str:
    data = to_dict(config)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise KdistillError(f"{path} is a folder; give the config's YAML file (e.g. {path}/config.yaml).")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KdistillError(f"{path}: no such config file.") from None
    except UnicodeDecodeError as err:
        raise KdistillError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8 YAML.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise KdistillError(f"{path}:{line} is not valid YAML: {getattr(err, 'problem', err)}.") from None
    if not isinstance(data, dict):
        raise KdistillError(f"{path}: a config must be a YAML mapping of sections (task, data, teacher, ...).")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run config from YAML (``None`` = the built-in default job).

    ``task: NAME`` pulls a built-in task, whose YAML also gives the default ``data`` section.
    """
    from kdistill.config.builtin import builtin_config_path  # tasks imports this module

    if path is None:
        path = builtin_config_path("default")
    elif not Path(path).exists() and not str(path).endswith((".yaml", ".yml")):
        path = builtin_config_path(str(path))  # a built-in config by name, e.g. `kdistill run news-topics`
    path = Path(path)
    data = _read_yaml(path)
    overrides = overrides or {}
    try:
        apply_overrides(data, overrides)
        config = from_dict(RunConfig, data, str(path))
    except KdistillError as err:
        raise _blame_override(err, str(path), overrides) from None
    _resolve_data_path(config.data, path.parent)
    return config


def _blame_override(err: KdistillError, where: str, overrides: dict[str, Any]) -> KdistillError:
    """An error in a value that a `--set` override gave names that override, not the YAML file it went into."""
    text = str(err)
    for key, value in overrides.items():
        parent, _, leaf = key.rpartition(".")
        section = f"{where}.{parent}" if parent else where
        parts = key.split(".")
        unknown = [(".".join([where, *parts[:i]]) + f": unknown field {part!r}", f": unknown field {part!r}")
                   for i, part in enumerate(parts)]  # the key's own field, or a section above it
        for prefix, keep in ((f"{where}.{key}", ""), (f"cannot set {key}", ""), *unknown,
                             (f"{section}: {key} ", f": {key} "),  # a section's check that names the key
                             (f"{section}: {leaf} ", f": {key} ")):  # ... or the field alone
            if text.startswith(prefix):
                return KdistillError(f"--set {key}={_shown(value)}{keep}{text[len(prefix):]}")
    named = [f"--set {key}={_shown(value)}" for key, value in overrides.items() if key in text]
    return KdistillError(f"{text} (given by {', '.join(named)})") if named else err


def _shown(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _resolve_data_path(data: DataConfig, config_dir: Path) -> None:
    """Make relative data paths (data.path and the split files) absolute, so the resolved config.yaml runs
    from anywhere."""
    for key, path in data.split_files.items():  # always files or folders, never a 🤗 hub name
        setattr(data, key, _absolute(path, config_dir))
    if data.source == "hf" or not data.path or data.path.startswith("asset:"):
        return
    data.path = _absolute(data.path, config_dir)


def _absolute(path: str, config_dir: Path) -> str:
    return path if Path(path).is_absolute() else str((config_dir / path).resolve())


def expand_builtin_task(data: dict[str, Any]) -> None:
    """``task: NAME`` in plain config data -> the built-in task's section, and the task's own data with
    the data settings already there (e.g. --set data.num_labelled=300) on top, unless they name a path,
    a source or a training file (data.train) of their own."""
    from kdistill.config.builtin import load_builtin_task  # tasks imports this module

    task = data.get("task")
    if not isinstance(task, str):
        return
    builtin = load_builtin_task(task)
    data["task"] = builtin["task"]
    user_data = data.get("data") or {}
    if "data" in builtin and not {"path", "source", "train"} & set(user_data):
        data["data"] = {**builtin["data"], **user_data}


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set each dotted key of ``overrides`` in plain config data, and expand a built-in task name. A setting
    inside the task (``task.max_new_tokens``) goes on after the expansion, onto the built-in task's
    section: before it, ``task`` is still a name."""
    inside_task = {key: value for key, value in overrides.items() if key.startswith("task.")}
    for key, value in overrides.items():
        if key not in inside_task:
            set_dotted(data, key, value)
    expand_builtin_task(data)
    for key, value in inside_task.items():
        set_dotted(data, key, value)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents, 1):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[:depth])
            raise KdistillError(f"cannot set {dotted}: {where} is the value {node!r}, not a section; set {where} "
                                "itself, or give it as a section first.")
    node[leaf] = value
