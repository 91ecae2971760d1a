"""The user's own split files: data.train, data.validation, data.test, and data.unlabeled (a pool of texts).

Each file is read like the single source (the same columns, label_map, ignore_labels and row-level errors
naming the file and line); its format is taken from its extension. prepare.py splits and reports them.

No text may sit in two places. A text of the test file is dropped from every other split, one of the
validation file from train and the pool, one of train from the pool: the test file is used as given, so the
report card never scores a text the student trained on (or one the teacher labelled for it). The drops are
logged and counted in the data report.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kdistill.config import DataConfig, TaskConfig
from kdistill.config.task_data import SPLIT_FILE_KEYS
from kdistill.data.loaders import read_examples, read_texts
from kdistill.data.records import Example, LoadedExamples
from kdistill.errors import KdistillError

log = logging.getLogger(__name__)

FILE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
"""File extension -> how the file is read (.json means JSON lines, one object per line, as for data.path)."""
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files that make a folder a saved 🤗 dataset (`Dataset.save_to_disk` writes the first two; a DatasetDict's
folder has the third, and the reader then names one of its splits to give instead)."""
PRECEDENCE = ("test", "validation", "train", "unlabeled")
"""Where a text found in several files stays: in the first of these; it is dropped from the others."""
CHOICE_FILE_SOURCES = ("winogrande", "aqua_rat")
"""Multiple-choice sources whose split files are each a whole file of that set's jsonl format."""


def file_format(key: str, path: Path, data: DataConfig) -> str:
    """How the file of data.``key`` is read: its extension decides, unless data.source names a format the
    extension cannot (a multiple-choice set's jsonl, or jsonl / parquet for a file with another extension)."""
    if data.source in CHOICE_FILE_SOURCES and key != "unlabeled":
        return data.source
    if data.source == "social_iqa":
        raise KdistillError(f"data.{key}: Social IQA keeps its answers in one data.labels_path file, so it cannot "
                            "be split into your own files yet; give data.path and data.labels_path instead.")
    if path.is_dir():
        if any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            return "hf_disk"
        raise KdistillError(f"{path} (data.{key}): a folder, but not a saved 🤗 dataset (it has no dataset_info.json "
                            "or state.json); give a .csv, .jsonl or .parquet file, or a folder from Dataset.save_to_disk.")
    suffix = path.suffix.lower()
    if suffix in FILE_FORMATS:
        return FILE_FORMATS[suffix]
    if data.source in ("jsonl", "parquet"):  # set on purpose (csv is the default): the extension says nothing
        return data.source
    raise KdistillError(f"{path} (data.{key}): unknown file extension {suffix or '(none)'!r}; name the file .csv, "
                        ".jsonl or .parquet, or set data.source to jsonl or parquet to read it as that.")


def checked_split_files(data: DataConfig, task: TaskConfig) -> dict[str, DataConfig]:
    """For each split file given (data.train ...), the data settings that read it: its path and format. A missing
    file, an unknown format or a pool a task cannot use is an error here, before any work (the pre-flight)."""
    if data.unlabeled and task.kind == "multiple_choice":
        raise KdistillError("data.unlabeled is for classification tasks for now: a multiple-choice question has "
                            "options a plain text file cannot give. Remove data.unlabeled.")
    settings = {}
    for key, name in data.split_files.items():
        path = Path(name)
        if not path.exists():
            raise KdistillError(f"{path}: no such file (data.{key}); check the path (relative paths are relative "
                                "to the config file).")
        settings[key] = replace(data, path=str(path), source=file_format(key, path, data),
                                **dict.fromkeys(SPLIT_FILE_KEYS, ""))
    return settings


def read_split_files(data: DataConfig, task: TaskConfig) -> dict[str, LoadedExamples]:
    """Every split file given, read: data.train / validation / test as labelled examples, data.unlabeled as
    texts with no label. A file with no examples left is an error naming it."""
    loaded = {}
    for key, settings in checked_split_files(data, task).items():
        loaded[key] = read_texts(settings) if key == "unlabeled" else read_examples(settings, task)
        if not loaded[key].examples:
            ignored = sum(loaded[key].ignored_by_label.values())
            raise KdistillError(f"{settings.path} (data.{key}): no examples ({loaded[key].rows_read} rows read, "
                                f"{ignored} skipped by data.ignore_labels); give a file with one row per example.")
    return loaded


def drop_shared_texts(splits: dict[str, list[Example]]) -> dict[str, int]:
    """Keep each text (by id) only in the first split of PRECEDENCE that has it; ``splits`` is changed in place.
    Returns how many texts each split lost (only splits that lost any), and logs a warning for each."""
    seen: set[str] = set()
    dropped = {}
    for key in (key for key in PRECEDENCE if key in splits):
        kept = [example for example in splits[key] if example.id not in seen]
        if len(kept) < len(splits[key]):
            dropped[key] = len(splits[key]) - len(kept)
            earlier = "/".join(k for k in PRECEDENCE[:PRECEDENCE.index(key)] if k in splits)
            log.warning("%d %s text(s) are also in the %s split: dropped from %s, so that no text is in two splits",
                        dropped[key], key, earlier, key)
        seen |= {example.id for example in kept}
        splits[key] = kept
    return dropped


def unique_texts(examples: list[Example]) -> list[Example]:
    """The first of each text (by id), in order: the pool's duplicates carry no labels that could conflict."""
    first = {}
    for example in examples:
        first.setdefault(example.id, example)
    return list(first.values())


def combined(loaded: list[LoadedExamples]) -> LoadedExamples:
    """Several files' LoadedExamples as one, for the data report's counts."""
    total = LoadedExamples()
    for one in loaded:
        total.examples += one.examples
        total.rows_read += one.rows_read
        total.ignored_by_label.update(one.ignored_by_label)
        total.truncated += one.truncated
    return total
