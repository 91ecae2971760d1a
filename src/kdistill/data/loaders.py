"""Read a data source (csv, jsonl, parquet, a folder of .txt files, 🤗 datasets, a saved 🤗 dataset) into
validated Examples, or, for the unlabelled pool (data.unlabeled), into texts without labels.

A bad row stops loading with a KdistillError naming the file, the line and the field, what was
expected and how to fix it, so nothing downstream ever sees a half-valid dataset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.config import DataConfig, TaskConfig
from kdistill.data.choice import read_choice_examples
from kdistill.data.records import (
    CHOICE_SOURCES,
    NO_LABEL,
    Example,
    LoadedExamples,
    cut_at_word,
    jsonl_objects,
    normalize_text,
    source_path,
    text_id,
)
from kdistill.errors import KdistillError


@dataclass(frozen=True)
class _Record:
    """A row as read from the source, before normalization and label checks."""

    text: Any
    label: Any
    origin: str


def load_examples(data: DataConfig, task: TaskConfig) -> list[Example]:
    """Read, normalize and validate every row of ``data`` (not yet deduplicated)."""
    return read_examples(data, task).examples


def read_examples(data: DataConfig, task: TaskConfig) -> LoadedExamples:
    """Like `load_examples`, also counting rows read, rows ignored and texts truncated."""
    _check_labels_config(data, task)
    if data.source in CHOICE_SOURCES or task.kind == "multiple_choice":
        return read_choice_examples(data, task)
    if task.kind == "generation":
        raise KdistillError("a generation task's data is read by kdistill.data.gen_data, not as labelled texts.")
    text_name, label_name = _field_names(data)
    loaded = LoadedExamples()
    for record in _read_records(data):
        loaded.rows_read += 1
        # None (a null cell) is an empty label, not the label 'None'.
        raw_label = "" if record.label is None else str(record.label).strip()
        if raw_label in data.ignore_labels:
            loaded.ignored_by_label[raw_label] += 1
            continue
        label = _task_label(raw_label, record.origin, label_name, data, task)
        text = _normalized_text(record, text_name, data)
        cut = cut_at_word(text, data.max_chars)
        loaded.truncated += cut != text
        loaded.examples.append(Example(id=text_id(cut), text=cut, label=label, origin=record.origin))
    return loaded


def read_texts(data: DataConfig) -> LoadedExamples:
    """The texts of ``data.path`` as Examples with NO_LABEL: a pool the teacher labels. A label column, if the
    file has one, is not read: the pool is text only, whatever else the file holds."""
    text_name, _ = _field_names(data)
    loaded = LoadedExamples()
    for record in _read_records(data, labelled=False):
        loaded.rows_read += 1
        text = _normalized_text(record, text_name, data)
        cut = cut_at_word(text, data.max_chars)
        loaded.truncated += cut != text
        loaded.examples.append(Example(id=text_id(cut), text=cut, label=NO_LABEL, origin=record.origin))
    return loaded


def _check_labels_config(data: DataConfig, task: TaskConfig) -> None:
    if not task.labels:
        raise KdistillError("task.labels is empty: name the labels before loading data.")
    wrong = {raw: label for raw, label in data.label_map.items() if label not in task.labels}
    if wrong:
        raise KdistillError(
            f"data.label_map maps to values that are not task labels: {wrong}; "
            f"map each raw value to one of: {', '.join(task.labels)}."
        )


def _field_names(data: DataConfig) -> tuple[str, str]:
    """How error messages name the text and the label of a row."""
    if data.source == "folder":
        return "file text", "folder name"
    return f"field '{data.text_field}'", f"field '{data.label_field}'"


def _task_label(raw: str, origin: str, label_name: str, data: DataConfig, task: TaskConfig) -> str:
    label = data.label_map.get(raw, raw)
    if label not in task.labels:
        raise KdistillError(
            f"{origin}: {label_name}: unknown label {raw!r} (expected one of: {', '.join(task.labels)}); "
            "fix the row, or map it with data.label_map / skip it with data.ignore_labels."
        )
    return label


def _normalized_text(record: _Record, text_name: str, data: DataConfig) -> str:
    if record.text is not None and not isinstance(record.text, str):
        raise KdistillError(
            f"{record.origin}: {text_name}: expected a string, found {type(record.text).__name__} "
            f"{record.text!r}; check that data.text_field names the column that holds the text."
        )
    text = normalize_text(record.text or "")
    if len(text) < data.min_chars:
        found = "is empty" if not text else f"has {len(text)} characters, fewer than data.min_chars = {data.min_chars}"
        raise KdistillError(
            f"{record.origin}: {text_name}: the text {found} after normalization; "
            "fix or remove the row, or lower data.min_chars."
        )
    return text


# --------------------------------------------------------------------------------------------
# Readers: each yields _Records in file order and names the file and line of every problem


def _read_records(data: DataConfig, *, labelled: bool = True) -> Iterator[_Record]:
    """Every row of ``data.path``; without ``labelled``, the label column is neither required nor read."""
    if not data.path:
        raise KdistillError(
            "data.path is empty: give a file, a folder, asset:NAME, or a 🤗 datasets name (source: hf)."
        )
    if data.source == "hf":
        return _read_hf(data, labelled)
    path = source_path(data)
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "folder": _read_folder,
               "hf_disk": _read_hf_disk}
    return readers[data.source](path, data, labelled)


def _decode(path: Path, encoding: str) -> str:
    """The file's text in the first of the comma-separated ``encoding``s that decodes it whole
    (e.g. "utf-8,latin-1" for a folder whose files mix the two)."""
    raw = path.read_bytes()
    names = [name.strip() for name in encoding.split(",") if name.strip()]
    for name in names:
        try:
            text = raw.decode(name)
        except LookupError:
            raise KdistillError(
                f"data.encoding {name!r} is not a known text encoding; use e.g. utf-8, utf-8-sig or latin-1 "
                "(or several, comma-separated, tried in order)."
            ) from None
        except UnicodeDecodeError as err:
            if name != names[-1]:
                continue
            line = raw[: err.start].decode(name, errors="replace").count("\n") + 1
            raise KdistillError(
                f"{path}:{line}: bytes {raw[err.start:err.end]!r} cannot be decoded as {encoding}; "
                "set data.encoding to the file's encoding (e.g. latin-1 or cp1252)."
            ) from None
        return text.removeprefix("\ufeff")  # a BOM would otherwise glue itself to the first column name
    raise KdistillError("data.encoding is empty; name the files' encoding, e.g. utf-8.")


def _wanted_columns(data: DataConfig, labelled: bool) -> list[str]:
    return [data.text_field, data.label_field] if labelled else [data.text_field]


def _require_columns(found: list[str], data: DataConfig, where: str, labelled: bool = True) -> None:
    keys = ("text_field", "label_field") if labelled else ("text_field",)
    for key, name in ((key, getattr(data, key)) for key in keys):
        if name not in found:
            raise KdistillError(
                f"{where}: column '{name}' (data.{key}) not found; columns found: {', '.join(found)}. "
                f"Set data.{key} to the column that holds it."
            )


def _read_csv(path: Path, data: DataConfig, labelled: bool) -> Iterator[_Record]:
    rows = _csv_rows(path, _decode(path, data.encoding))
    if data.columns:
        columns = data.columns
        _require_columns(columns, data, f"{path}: data.columns", labelled)
    else:
        line, header = next(rows, (1, None))
        if header is None:
            raise KdistillError(f"{path}: the file is empty; expected a header row and one row per example.")
        columns = [name.strip() for name in header]
        _require_columns(columns, data, f"{path}:{line}: header", labelled)
    text_at = columns.index(data.text_field)
    label_at = columns.index(data.label_field) if labelled else None
    for line, row in rows:
        origin = f"{path}:{line}"
        _check_row_width(row, columns, origin)
        yield _Record(row[text_at], None if label_at is None else row[label_at], origin)


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) for every non-blank record; quoted fields may span lines. No field
    is longer than the file, so Python's field-size limit (128 KiB, whose error reads like bad quoting) is
    raised to the file's length: a long text is then cut to data.max_chars like any other."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise KdistillError(f"{path}:{start}: not valid CSV ({err}); fix the quoting of this row.") from None
        if row:
            yield start, row


def _check_row_width(row: list[str], columns: list[str], origin: str) -> None:
    if len(row) < len(columns):
        raise KdistillError(
            f"{origin}: field '{columns[len(row)]}' is missing: the row has {len(row)} field(s) but there are "
            f"{len(columns)} columns ({', '.join(columns)}); fix the row (a missing delimiter or an unclosed quote?)."
        )
    if len(row) > len(columns):
        raise KdistillError(
            f"{origin}: the row has {len(row)} fields but there are {len(columns)} columns "
            f"({', '.join(columns)}); quote fields that contain the delimiter."
        )


def _read_jsonl(path: Path, data: DataConfig, labelled: bool) -> Iterator[_Record]:
    for origin, obj in jsonl_objects(path, _decode(path, data.encoding)):
        text = _json_field(obj, "text_field", origin, data)
        yield _Record(text, _json_field(obj, "label_field", origin, data) if labelled else None, origin)


def _json_field(obj: dict[str, Any], key: str, origin: str, data: DataConfig) -> Any:
    name = getattr(data, key)
    if name not in obj:
        raise KdistillError(
            f"{origin}: field '{name}' is missing; keys found: {', '.join(obj)}. "
            f"Fix the row, or set data.{key} to the key that holds it."
        )
    return obj[name]


def _read_parquet(path: Path, data: DataConfig, labelled: bool) -> Iterator[_Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        _require_columns(pq.read_schema(path).names, data, str(path), labelled)
        table = pq.read_table(path, columns=_wanted_columns(data, labelled))
    except (pa.ArrowInvalid, OSError) as err:
        raise KdistillError(f"{path}: not a readable parquet file ({err}); check data.source and data.path.") from None
    yield from _table_records({name: table.column(name).to_pylist() for name in table.column_names}, data, str(path))


def _table_records(columns: dict[str, list[Any]], data: DataConfig, where: str) -> Iterator[_Record]:
    """The rows of column-wise data (parquet, 🤗 datasets), named 'where:row N' (N from 0, as in ``ds[N]``)."""
    texts = columns[data.text_field]
    labels = columns.get(data.label_field, [None] * len(texts))  # absent: a pool read without labels
    for row, (text, label) in enumerate(zip(texts, labels)):
        yield _Record(text, label, f"{where}:row {row}")


def _read_folder(path: Path, data: DataConfig, labelled: bool) -> Iterator[_Record]:
    files = sorted(file for file in path.glob("*/*.txt") if file.is_file())
    if not files:
        raise KdistillError(
            f"{path}: no <label>/*.txt files found; put one subfolder per label, one .txt file per example."
        )
    for file in files:
        yield _Record(_decode(file, data.encoding), file.parent.name, str(file))


def _read_hf(data: DataConfig, labelled: bool) -> Iterator[_Record]:
    import datasets  # heavy import; only this source needs it

    where = f"🤗 dataset '{data.path}' (config {data.hf_config!r}, split {data.hf_split!r})"
    try:
        dataset = datasets.load_dataset(data.path, data.hf_config, split=data.hf_split)
    except Exception as err:  # the hub raises many types; every one means "cannot load this name"
        raise KdistillError(
            f"{where} could not be loaded ({err}); check data.path, data.hf_config and data.hf_split."
        ) from None
    _require_columns(dataset.column_names, data, where, labelled)
    yield from _table_records({name: dataset[name] for name in _wanted_columns(data, labelled)}, data, data.path)


def _read_hf_disk(path: Path, data: DataConfig, labelled: bool) -> Iterator[_Record]:
    """A folder written by 🤗 ``Dataset.save_to_disk``: one split (a DatasetDict's folder holds several)."""
    import datasets  # heavy import; only this source needs it

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged or foreign folder raises many types; each means "not a saved dataset"
        raise KdistillError(f"{path}: not a readable saved 🤗 dataset ({type(err).__name__}: {err}); give a folder "
                            "written by Dataset.save_to_disk.") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise KdistillError(f"{path}: a saved 🤗 DatasetDict with splits {', '.join(dataset)}; give the folder of one "
                            f"split, e.g. {path / next(iter(dataset))}.")
    _require_columns(dataset.column_names, data, str(path), labelled)
    yield from _table_records({name: dataset[name] for name in _wanted_columns(data, labelled)}, data, str(path))
