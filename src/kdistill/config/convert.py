"""Plain data -> typed config: conversion with errors that name the field and suggest the fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from kdistill.errors import KdistillError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for alternative in inner:
            try:
                return _convert(value, alternative, where)
            except KdistillError as err:
                errors.append(str(err))
        raise KdistillError(errors[0] if len(errors) == 1 else
                            f"{where}: {value!r} fits none of {', '.join(_type_name(a) for a in inner)}.")
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise KdistillError(f"{where}: {value!r} is not one of {list(args)}.{extra}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise KdistillError(f"{where}: expected a list, found {type(value).__name__} {value!r}.")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KdistillError(f"{where}: expected a mapping, found {type(value).__name__} {value!r}.")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        try:  # YAML reads 2e-4 (no dot) as a string
            if not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
        except (TypeError, ValueError, OverflowError):
            pass
        raise KdistillError(f"{where}: expected a finite number, found {type(value).__name__} {value!r}.")
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise KdistillError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}.")
    return value


_RENAMED = {  # fields of earlier releases, and what replaces them
    "alpha": "write `ce: {weight: 1 - alpha}` and `kd: {weight: alpha}` instead.",
    "kd_temperature": "write `kd: {temperature: T}` instead.",
}


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise KdistillError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise KdistillError(f"{where}: expected a mapping of fields, found {type(data).__name__} {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names and key in _RENAMED:
            raise KdistillError(f"{where}: {key!r} is gone; {_RENAMED[key]}")
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else f" Known fields: {', '.join(names)}."
            raise KdistillError(f"{where}: unknown field {key!r}.{extra}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except KdistillError as err:
        raise KdistillError(f"{where}: {err}") from None


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (what `kdistill ls` and the README show)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config (what `config.yaml` in a run directory holds)."""
    return dataclasses.asdict(obj)


