"""Cache keys: the sha256 of the canonical JSON of everything that determines a teacher's values.

A key that forgets one input (the tokenizer, the prompt, k) silently serves one teacher's answers for
another's (lm-evaluation-harness #2715), so `entry()` refuses key fields that lack any of the required
names, and `key_fields` is the one place that spells them out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from kdistill.errors import KdistillError

KINDS = ("labels", "tokens", "vectors")
REQUIRED_FIELDS = {
    "common": ("kind", "teacher", "weights", "tokenizer", "prompt", "data", "example_ids"),
    "labels": ("labels",),
    "tokens": ("k", "temperature", "vocab_size"),
    "vectors": ("shape",),  # one float32 array of this shape per example (e.g. pooled hidden states)
}


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: the same fields give the same bytes in any tool."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise KdistillError(f"cache key fields must be plain JSON (str, number, bool, None, list, dict); "
                            f"{err}. Convert the value to a string or a fingerprint first.") from err


def fingerprint(obj: Any) -> str:
    """sha256 hex of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("ascii")).hexdigest()


def key_of(fields: dict[str, Any]) -> str:
    """The full cache key of these fields (64 hex digits); entry folders use its first 16."""
    return fingerprint(fields)


def ids_fingerprint(example_ids: Iterable[str]) -> str:
    """Order-free fingerprint of a set of example ids (the cache is looked up by id, never by position)."""
    return fingerprint(sorted(str(i) for i in example_ids))


def key_fields(*, kind: str, teacher: str, weights: str, tokenizer: str, prompt: str, data: str,
               example_ids: Iterable[str], labels: list[str] | None = None, k: int | None = None,
               temperature: float | None = None, vocab_size: int | None = None, shape: list[int] | None = None,
               **elicitation: Any) -> dict[str, Any]:
    """The key fields of one entry; ``elicitation`` holds any further parameter that changes the values.

    ``weights`` and ``tokenizer`` are content hashes (see `kdistill.teachers.elicit.weights_fingerprint`), ``data``
    a fingerprint of the examples' inputs, ``prompt`` the full template (or its fingerprint).
    """
    fields = {"kind": kind, "teacher": teacher, "weights": weights, "tokenizer": tokenizer, "prompt": prompt,
              "data": data, "example_ids": ids_fingerprint(example_ids)}
    given = {"labels": None if labels is None else list(labels), "k": k, "temperature": temperature,
             "vocab_size": vocab_size, "shape": None if shape is None else [int(n) for n in shape]}
    fields.update({name: value for name, value in given.items() if value is not None}, **elicitation)
    check_fields(fields)
    return fields


def check_fields(fields: dict[str, Any]) -> None:
    """Raise a KdistillError naming what is missing or malformed in a set of key fields."""
    kind = fields.get("kind")
    if kind not in KINDS:
        raise KdistillError(f"cache key field 'kind' must be one of {list(KINDS)}; found {kind!r}.")
    required = REQUIRED_FIELDS["common"] + REQUIRED_FIELDS[kind]
    absent = [name for name in required if fields.get(name) is None]
    if absent:
        raise KdistillError(f"cache key fields lack {absent}; a {kind} entry is keyed by all of {list(required)} "
                            f"so that a change to any of them is a cache miss. Build them with key_fields().")
    if kind == "tokens":
        _check_positive_int(fields, "k")
        _check_positive_int(fields, "vocab_size")
        if not (isinstance(fields["temperature"], (int, float)) and fields["temperature"] > 0):
            raise KdistillError(f"cache key field 'temperature' must be a number > 0; found {fields['temperature']!r}.")
        if fields["k"] > fields["vocab_size"]:
            raise KdistillError(f"cache key field 'k' ({fields['k']}) exceeds 'vocab_size' ({fields['vocab_size']}).")
    elif kind == "vectors":
        shape = fields["shape"]
        if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
            raise KdistillError(f"cache key field 'shape' must be a non-empty list of positive integers; found {shape!r}.")
    elif not (isinstance(fields["labels"], list) and fields["labels"]):
        raise KdistillError(f"cache key field 'labels' must be a non-empty list of label names; "
                            f"found {fields['labels']!r}.")
    canonical_json(fields)


def _check_positive_int(fields: dict[str, Any], name: str) -> None:
    value = fields[name]
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise KdistillError(f"cache key field {name!r} must be an integer > 0; found {value!r}.")
