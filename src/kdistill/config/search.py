"""`kdistill search`'s configuration: the trial budget, the sampler and pruner, and the search space,
whose keys are checked against RunConfig's own fields when the config is built.

RunConfig (config.run) holds a SearchConfig.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from kdistill.config.convert import _convert, _type_name
from kdistill.errors import KdistillError

_SEARCHABLE = ("objective", "training", "student")
_SPEC_KEYS = {"low", "high", "log", "choices", "complement"}


def _space_field_type(key: str, root: type) -> Any:
    """The type of the field a dotted search-space key names (e.g. objective.kd.temperature) in ``root``."""
    parts = key.split(".")
    tp: Any = root
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            raise KdistillError(f"search.space: {key!r}: {'.'.join(parts[:depth])} is a field, not a section.")
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if part not in names:
            hint = difflib.get_close_matches(part, names, n=1)
            extra = (f" Did you mean {'.'.join(parts[:depth] + hint)!r}?" if hint
                     else f" Fields of {'.'.join(parts[:depth])}: {', '.join(names)}.")
            raise KdistillError(f"search.space: unknown config key {key!r}.{extra}")
        tp = typing.get_type_hints(tp)[part]
    if dataclasses.is_dataclass(tp):
        raise KdistillError(f"search.space: {key!r} is a section; name one of its fields, e.g. {key}.weight.")
    if parts[0] not in _SEARCHABLE:
        raise KdistillError(f"search.space: {key!r} cannot vary between trials: a search asks the teacher once and "
                            "keeps the data fixed, so only objective.*, training.* and student.* keys are searchable.")
    not_none = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(not_none) == 1:
        return not_none[0]  # an optional field (learning_rate: float | None): a trial always sets a value
    return tp


def _checked_spec(key: str, spec: Any, space: dict[str, Any], root: type) -> dict[str, Any]:
    """``spec`` with its values converted to the field's type; a sentence naming the key if it is wrong."""
    tp, where = _space_field_type(key, root), f"search.space.{key}"
    if not isinstance(spec, dict) or not spec or set(spec) - _SPEC_KEYS:
        raise KdistillError(f"{where}: expected a range {{low, high, log}} or a list {{choices: [...]}}, "
                            f"found {spec!r}.")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise KdistillError(f"{where}: give a non-empty list `choices: [...]` and nothing else; found {spec!r}.")
        return {"choices": [_convert(c, tp, f"{where}.choices[{i}]") for i, c in enumerate(spec["choices"])]}
    if tp not in (int, float) or not {"low", "high"} <= set(spec):
        raise KdistillError(f"{where}: a range needs low and high, and a number field (a {_type_name(tp)} here); "
                            f"list the values instead with `choices: [...]`.")
    out = {"low": _convert(spec["low"], tp, f"{where}.low"), "high": _convert(spec["high"], tp, f"{where}.high"),
           "log": _convert(spec.get("log", False), bool, f"{where}.log")}
    if not out["low"] < out["high"] or (out["log"] and out["low"] <= 0):
        raise KdistillError(f"{where}: need low < high (and low > 0 with log: true); found {spec!r}.")
    if "complement" in spec:  # α: kd.weight = α and ce.weight = 1 - α, one parameter
        other = spec["complement"]
        if tp is not float or _space_field_type(str(other), root) is not float or other == key or other in space:
            raise KdistillError(f"{where}.complement: {other!r} must be another number field that is not itself "
                                "searched, e.g. objective.ce.weight for objective.kd.weight.")
        out["complement"] = other
    return out


@dataclass(kw_only=True)
class SearchConfig:
    """`kdistill search`: an optuna search over the distilled student's settings, on a subsample."""

    trials: int = 12
    """Trials to finish (completed, pruned or failed); a resumed search runs only the missing ones."""
    sampler: Literal["tpe", "random"] = "tpe"
    """tpe: optuna's Tree-structured Parzen Estimator after `startup_trials` random trials; random: random
    search throughout."""
    pruner: Literal["median", "none"] = "median"
    """median: stop a trial whose validation macro-F1 is below the median of finished trials at the same
    step; none: every trial trains to the end."""
    startup_trials: int = 4
    """Trials drawn at random before TPE models the results, and finished before the pruner may stop one."""
    subsample: float = 0.25
    """Share of the training split each trial trains on: stratified by label (and by labelled / unlabelled
    with data.num_labelled), the same examples in every trial. Validation and test stay whole."""
    metric: Literal["val_macro_f1"] = "val_macro_f1"
    """A trial's score, maximized: its best validation macro-F1."""
    seed: int = 0
    """Seed of the sampler and of the subsample; each trial trains with evaluation.seeds[0]."""
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dotted config key -> {low, high, log: false} (a number; an int field gives integers) or
    {choices: [...]}, e.g. objective.kd.temperature: {low: 1, high: 8}. `complement: objective.ce.weight`
    on objective.kd.weight sets ce.weight to 1 - kd.weight (one α). objective.*, training.*, student.* only."""

    def __post_init__(self) -> None:
        if self.trials < 1 or self.startup_trials < 0:
            raise KdistillError(f"search.trials must be >= 1 and search.startup_trials >= 0; found {self.trials} "
                                f"and {self.startup_trials}.")
        if not 0 < self.subsample <= 1:
            raise KdistillError(f"search.subsample is the share of the training split a trial uses, in (0, 1]; "
                                f"found {self.subsample}.")


def checked_space(space: dict[str, Any], root: type) -> dict[str, Any]:
    """The search space with each key checked against the run config ``root`` (the RunConfig that holds it:
    passed in, so this module needs no import of it) and its values converted to the field's type."""
    return {key: _checked_spec(key, spec, space, root) for key, spec in space.items()}
