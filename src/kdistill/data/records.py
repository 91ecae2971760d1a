"""What every reader of this package shares: the example records of each task family, how a text is
identified and normalized, where a data path points, and reading JSON lines and text files with errors
that name the file and line."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.config import DataConfig
from kdistill.errors import KdistillError


@dataclass(frozen=True)
class Example:
    """One labelled text, normalized and validated."""

    id: str
    """First 16 hex chars of the sha1 of the casefolded text: equal ids mean duplicate texts."""
    text: str
    """NFKC-normalized, whitespace runs collapsed to one space, stripped, cut to data.max_chars."""
    label: str
    """A task label (after data.label_map), or NO_LABEL for a text of the unlabelled pool (data.unlabeled)."""
    origin: str
    """Where the row came from: 'path:line' (csv, jsonl), 'path:row N' (parquet, hf; N counts
    from 0, as in ``ds[N]``) or the .txt file's path (folder)."""


@dataclass
class LoadedExamples:
    """The examples of a source plus what was dropped on the way, for the data report."""

    examples: list[Example] = field(default_factory=list)
    rows_read: int = 0
    ignored_by_label: Counter[str] = field(default_factory=Counter)
    truncated: int = 0


CHOICE_SOURCES = ("winogrande", "social_iqa", "aqua_rat")

NO_LABEL = ""
"""The label of a text that has none (data.unlabeled): only the teacher labels it, and no gold-label use
(CE, recalibration, few-shot examples, the labels-only student) ever sees it."""


def text_id(text: str) -> str:
    """The dedupe key: texts that differ only in case get the same id."""
    return hashlib.sha1(text.casefold().encode("utf-8")).hexdigest()[:16]


def normalize_text(text: str) -> str:
    """NFKC (so ligatures and full-width forms compare equal), one space per whitespace run."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def cut_at_word(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars] != " " and " " in cut:
        cut = cut[: cut.rindex(" ")]  # don't leave half a word at the end
    return cut.rstrip()


def source_path(data: DataConfig) -> Path:
    if data.path.startswith("asset:"):
        from kdistill.assets import fetch_data_asset  # may download; only asset paths need it

        return fetch_data_asset(data.path.removeprefix("asset:"))
    path = Path(data.path)
    want_folder = data.source in ("folder", "bbc_articles", "hf_disk")
    if not path.exists():
        kind = "folder" if want_folder else f"{data.source} file"
        raise KdistillError(
            f"{path}: no such {kind} (data.path); check the path (relative paths are relative to the config file)."
        )
    if path.is_dir() != want_folder:
        expected = ("a saved 🤗 dataset folder" if data.source == "hf_disk" else
                    "a folder of <label>/*.txt files" if want_folder else f"a {data.source} file")
        raise KdistillError(f"{path}: data.source is {data.source!r}, so data.path must be {expected}.")
    return path


def jsonl_objects(path: str | Path, text: str, what: str = "JSON-lines") -> Iterator[tuple[str, dict[str, Any]]]:
    """(origin 'path:line', object) for every non-blank line of a JSON-lines file's decoded ``text``."""
    # split on "\n" only: str.splitlines would also break on U+2028 inside JSON strings
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise KdistillError(
                f"{origin}: invalid JSON ({err.msg} at column {err.colno}); a {what} file has one JSON object per line."
            ) from None
        if not isinstance(obj, dict):
            raise KdistillError(f"{origin}: expected a JSON object, found {type(obj).__name__}; is this a {what} file?")
        yield origin, obj


@dataclass(frozen=True)
class GenExample:
    """One prompt for a generation task, with its reference target when the data has one."""

    id: str
    """First 16 hex chars of the sha1 of the casefolded prompt: equal ids mean duplicate prompts."""
    prompt: str
    """The source text (an article to summarize, a question), NFKC-normalized, one space per whitespace run."""
    target: str | None
    """The reference target (an answer, a summary) if the data has one; None when the teacher will write it."""
    answers: tuple[str, ...]
    """Every acceptable gold answer for QA (e.g. TriviaQA's value and aliases); empty otherwise."""
    origin: str
    """Where it came from: 'path:line', 'path:Data[N]' (TriviaQA json; N counts from 0) or the .txt file's path."""


@dataclass(frozen=True)
class ChoiceExample:
    """One multiple-choice question: the text, its options, and the index of the right one."""

    id: str
    """First 16 hex chars of the sha1 of the casefolded question: equal ids mean duplicate questions."""
    question: str
    """The context and question as the source format gives them (Winogrande: the sentence with its '_' blank)."""
    options: tuple[str, ...]
    """The answer options in source order, normalized, without labels such as AQuA-RAT's 'A)'."""
    answer: int | None
    """0-based index of the right option; None for unlabelled data (e.g. a test split)."""
    origin: str
    """Where it came from: 'path:line'."""
    rationale: str | None = None
    """A worked solution, when the source gives one (AQuA-RAT); None otherwise."""


def read_text(path: str | Path, fmt: str, *, fallback: str | None = None) -> str:
    """The decoded text of a UTF-8 file (a BOM is dropped); ``fallback`` decodes files that are not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise KdistillError(f"{path}: no such {fmt} file; check the path.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        if fallback:
            return raw.decode(fallback)
        line = raw[: err.start].count(b"\n") + 1
        raise KdistillError(
            f"{path}:{line}: bytes {raw[err.start:err.end]!r} are not UTF-8; {fmt} files are UTF-8, convert it."
        ) from None


def read_jsonl(path: str | Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(origin 'path:line', object) for every non-blank line of a JSON-lines file."""
    return jsonl_objects(path, read_text(path, fmt), fmt)


def text_field(obj: dict[str, Any], name: str, origin: str, fmt: str) -> str:
    """``obj[name]`` normalized; missing, not a string, or empty is an error naming the origin and field."""
    if name not in obj:
        raise KdistillError(
            f"{origin}: field '{name}' is missing (keys found: {', '.join(obj) or 'none'}); "
            f"fix the record, or check that the file is in the {fmt} format."
        )
    value = obj[name]
    if not isinstance(value, str):
        raise KdistillError(f"{origin}: field '{name}': expected a string, found {type(value).__name__} {value!r}.")
    text = normalize_text(value)
    if not text:
        raise KdistillError(f"{origin}: field '{name}' is empty; fix or remove the record.")
    return text


def deduplicate(examples: list[Example]) -> tuple[list[Example], int, list[list[Example]]]:
    """Keep the first of each id; drop every copy of a text that carries two different labels.

    Returns (kept examples in first-seen order, copies removed, groups of conflicting rows).
    """
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.id, []).append(example)
    kept, conflicts, duplicates_removed = [], [], 0
    for group in groups.values():
        if len({example.label for example in group}) > 1:
            conflicts.append(group)  # we cannot know which label is right, so neither is trusted
        else:
            kept.append(group[0])
            duplicates_removed += len(group) - 1
    return kept, duplicates_removed, conflicts
