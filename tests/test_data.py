"""Data loading, validation, dedupe and splitting: every source, every bad-input message, no leaks."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdistill.config import DataConfig, TaskConfig
from kdistill.data import Example, PreparedData, format_report, load_examples, prepare_data
from kdistill.errors import KdistillError

TASK = TaskConfig(labels=["negative", "positive"])


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def balanced_rows(num_positive: int, num_negative: int) -> list[dict]:
    rows = [{"text": f"a fine review number {i}", "label": "positive"} for i in range(num_positive)]
    return rows + [{"text": f"a poor review number {i}", "label": "negative"} for i in range(num_negative)]


def load_error(data: DataConfig, task: TaskConfig = TASK) -> str:
    with pytest.raises(KdistillError) as info:
        load_examples(data, task)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Sources


def test_csv_with_header_normalizes_and_reports_start_line_of_multiline_records(tmp_path):
    path = write(tmp_path / "reviews.csv", 'text,label\n"  Great\n\tfilm ",positive\n"ﬁne  plot",negative\n')
    examples = load_examples(DataConfig(source="csv", path=str(path)), TASK)
    assert [(e.text, e.label, e.origin) for e in examples] == [
        ("Great film", "positive", f"{path}:2"),
        ("fine plot", "negative", f"{path}:4"),  # NFKC turned the ligature into 'fi'
    ]
    assert examples[0].id == hashlib.sha1(b"great film").hexdigest()[:16]


def test_csv_without_header_uses_columns(tmp_path):
    path = write(tmp_path / "plain.csv", "7,good movie,positive\n\n8,bad movie,negative\n")
    data = DataConfig(source="csv", path=str(path), columns=["id", "text", "label"])
    examples = load_examples(data, TASK)
    assert [(e.text, e.label, e.origin) for e in examples] == [
        ("good movie", "positive", f"{path}:1"),
        ("bad movie", "negative", f"{path}:3"),
    ]


def test_jsonl_skips_blank_lines(tmp_path):
    path = write(tmp_path / "data.jsonl", '{"review": "nice", "y": "positive"}\n\n{"review": "awful", "y": "negative"}')
    examples = load_examples(DataConfig(source="jsonl", path=str(path), text_field="review", label_field="y"), TASK)
    assert [(e.text, e.label, e.origin) for e in examples] == [
        ("nice", "positive", f"{path}:1"),
        ("awful", "negative", f"{path}:3"),
    ]


def test_parquet_int_labels_match_label_map_keys(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "meh"], "label": [1, 0, 1]}), path)
    data = DataConfig(source="parquet", path=str(path), label_map={"0": "negative", "1": "positive"})
    examples = load_examples(data, TASK)
    assert [(e.text, e.label, e.origin) for e in examples] == [
        ("good", "positive", f"{path}:row 0"),
        ("bad", "negative", f"{path}:row 1"),
        ("meh", "positive", f"{path}:row 2"),
    ]


def test_folder_uses_subfolder_names_as_labels(tmp_path):
    for label, name, text in [("positive", "a.txt", "loved it"), ("negative", "b.txt", "hated it")]:
        (tmp_path / "docs" / label).mkdir(parents=True)
        write(tmp_path / "docs" / label / name, text)
    examples = load_examples(DataConfig(source="folder", path=str(tmp_path / "docs")), TASK)
    assert {(e.text, e.label, e.origin) for e in examples} == {
        ("loved it", "positive", str(tmp_path / "docs" / "positive" / "a.txt")),
        ("hated it", "negative", str(tmp_path / "docs" / "negative" / "b.txt")),
    }


def test_hf_source_reads_the_requested_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = DataConfig(source="hf", path="org/reviews", hf_config="plain", hf_split="train",
                      text_field="sentence", label_map={"0": "negative", "1": "positive"})
    examples = load_examples(data, TASK)
    assert calls == [("org/reviews", "plain", "train")]
    assert [(e.text, e.label, e.origin) for e in examples] == [
        ("good", "positive", "org/reviews:row 0"),
        ("bad", "negative", "org/reviews:row 1"),
    ]


def test_asset_path_is_resolved_through_fetch_data_asset(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "asset.jsonl", [{"text": "ok", "label": "positive"}])
    fake = types.ModuleType("kdistill.assets")
    fake.fetch_data_asset = lambda name: path if name == "tiny" else None
    monkeypatch.setitem(sys.modules, "kdistill.assets", fake)
    examples = load_examples(DataConfig(source="jsonl", path="asset:tiny"), TASK)
    assert [(e.text, e.origin) for e in examples] == [("ok", f"{path}:1")]


# --------------------------------------------------------------------------------------------
# Bad input: one sentence naming file, line and field


def test_unknown_label_message(tmp_path):
    rows = "text,label\n" + "".join(f"text {i},positive\n" for i in range(12)) + "oops,postive\n"
    path = write(tmp_path / "reviews.csv", rows)
    assert load_error(DataConfig(source="csv", path=str(path))) == (
        f"{path}:14: field 'label': unknown label 'postive' (expected one of: negative, positive); "
        "fix the row, or map it with data.label_map / skip it with data.ignore_labels."
    )


def test_csv_missing_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,sentiment\nnice,positive\n")
    message = load_error(DataConfig(source="csv", path=str(path)))
    assert f"{path}:1" in message and "'label'" in message and "text, sentiment" in message


def test_csv_row_with_too_few_fields(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,label\nnice,positive\njust text\n")
    message = load_error(DataConfig(source="csv", path=str(path)))
    assert message.startswith(f"{path}:3: field 'label' is missing")


def test_csv_row_with_too_many_fields(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,label\nnice,positive\nnice, really,positive\n")
    assert load_error(DataConfig(source="csv", path=str(path))).startswith(f"{path}:3: the row has 3 fields")


def test_parquet_missing_column_lists_the_columns_found(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"sentence": ["good"], "label": [1]}), path)
    message = load_error(DataConfig(source="parquet", path=str(path)))
    assert message.startswith(f"{path}: column 'text' (data.text_field) not found") and "sentence, label" in message


def test_jsonl_missing_key(tmp_path):
    path = write(tmp_path / "data.jsonl", '{"text": "a", "label": "positive"}\n{"text": "b", "lbl": "negative"}\n')
    message = load_error(DataConfig(source="jsonl", path=str(path)))
    assert message.startswith(f"{path}:2: field 'label' is missing") and "text, lbl" in message


@pytest.mark.parametrize("text, min_chars, found", [("   ", 1, "is empty"), ("abc", 5, "has 3 characters")])
def test_empty_or_short_text(tmp_path, text, min_chars, found):
    rows = [{"text": "fine text", "label": "positive"}, {"text": text, "label": "negative"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    message = load_error(DataConfig(source="jsonl", path=str(path), min_chars=min_chars))
    assert message.startswith(f"{path}:2: field 'text': the text {found}")


def test_undecodable_bytes_name_the_line_and_suggest_encoding(tmp_path):
    path = write(tmp_path / "latin.csv", "text,label\nok,positive\ncaf\u00e9 cr\u00e8me,negative\n", encoding="latin-1")
    message = load_error(DataConfig(source="csv", path=str(path)))
    assert message.startswith(f"{path}:3:") and "data.encoding" in message
    examples = load_examples(DataConfig(source="csv", path=str(path), encoding="latin-1"), TASK)
    assert examples[1].text == "caf\u00e9 cr\u00e8me"


def test_invalid_json_line(tmp_path):
    path = write(tmp_path / "data.jsonl", '{"text": "a", "label": "positive"}\n{"text": "b", "label": }\n')
    assert load_error(DataConfig(source="jsonl", path=str(path))).startswith(f"{path}:2: invalid JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "data.jsonl", '["a", "positive"]\n')
    assert load_error(DataConfig(source="jsonl", path=str(path))).startswith(f"{path}:1: expected a JSON object")


@pytest.mark.parametrize("source", ["csv", "jsonl", "parquet", "folder"])
def test_missing_path_is_named(tmp_path, source):
    missing = tmp_path / "nowhere"
    assert load_error(DataConfig(source=source, path=str(missing))).startswith(f"{missing}: no such")


def test_folder_label_must_be_a_task_label(tmp_path):
    (tmp_path / "docs" / "postive").mkdir(parents=True)
    file = write(tmp_path / "docs" / "postive" / "a.txt", "nice")
    message = load_error(DataConfig(source="folder", path=str(tmp_path / "docs")))
    assert message.startswith(f"{file}: folder name: unknown label 'postive'")


def test_label_map_to_a_non_task_label_is_a_config_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "a", "label": "1"}])
    assert "data.label_map" in load_error(DataConfig(source="jsonl", path=str(path), label_map={"1": "pos"}))


# --------------------------------------------------------------------------------------------
# Labels, duplicates, conflicts


def test_label_map_and_ignore_labels(tmp_path):
    path = write(tmp_path / "reviews.csv", "text,label\ngood, 1\nbad,-1\nso so,neutral\nmeh,neutral\n")
    label_map = {"1": "positive", "-1": "negative"}
    data = DataConfig(source="csv", path=str(path), label_map=label_map, ignore_labels=["neutral"])
    assert [(e.text, e.label) for e in load_examples(data, TASK)] == [("good", "positive"), ("bad", "negative")]


def test_duplicates_and_label_conflicts_are_removed_and_counted(tmp_path):
    rows = balanced_rows(10, 10) + [
        {"text": "A FINE review   number 0", "label": "positive"},  # same text as row 0, same label
        {"text": "a fine review number 1", "label": "negative"},  # same text as row 1, other label
        {"text": "skip me", "label": "neutral"},
    ]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    prepared = prepare_data(DataConfig(source="jsonl", path=str(path), ignore_labels=["neutral"]), TASK)
    report = prepared.report
    assert (report["rows_read"], report["ignored_rows"], report["duplicates_removed"]) == (23, 1, 1)
    assert report["label_conflicts"]["count"] == 1 and report["label_conflicts"]["rows_dropped"] == 2
    assert [row["origin"] for row in report["label_conflicts"]["examples"][0]["rows"]] == [f"{path}:2", f"{path}:22"]
    texts = [e.text for split in prepared.splits().values() for e in split]
    assert len(texts) == 19 and "a fine review number 1" not in texts
    assert "a fine review number 0" in texts  # the first copy is the one kept
    assert report["totals"]["all"] == 19
    json.dumps(report)  # the report is written as JSON by the CLI


def test_no_test_text_in_training_even_when_copies_differ_in_case_and_space(tmp_path):
    rows = balanced_rows(40, 40)
    rows += [{"text": r["text"].upper().replace(" ", "  "), "label": r["label"]} for r in rows]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    prepared = prepare_data(DataConfig(source="jsonl", path=str(path)), TASK)
    seen = {name: {e.text.casefold() for e in split} for name, split in prepared.splits().items()}
    assert not seen["test"] & seen["train"] and not seen["validation"] & seen["train"]
    assert sum(len(texts) for texts in seen.values()) == 80
    assert prepared.report["duplicates_removed"] == 80


# --------------------------------------------------------------------------------------------
# Splitting and sampling


def test_split_is_stratified_and_deterministic(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", balanced_rows(103, 47))
    data = DataConfig(source="jsonl", path=str(path), test_fraction=0.2, validation_fraction=0.1)
    prepared = prepare_data(data, TASK)
    for name, fraction in [("train", 0.7), ("validation", 0.1), ("test", 0.2)]:
        counts = Counter(e.label for e in getattr(prepared, name))
        assert abs(counts["positive"] - 103 * fraction) <= 1, (name, counts)
        assert abs(counts["negative"] - 47 * fraction) <= 1, (name, counts)
    again = prepare_data(data, TASK)
    assert (again.train, again.validation, again.test) == (prepared.train, prepared.validation, prepared.test)
    other_seed = prepare_data(DataConfig(source="jsonl", path=str(path), split_seed=1), TASK)
    assert {e.id for e in other_seed.test} != {e.id for e in prepared.test}


def test_without_validation_fraction_the_validation_split_is_empty(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", balanced_rows(20, 20))
    prepared = prepare_data(DataConfig(source="jsonl", path=str(path), validation_fraction=0.0), TASK)
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (32, 0, 8)


def test_max_examples_sample_is_stratified_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", balanced_rows(90, 30))
    data = DataConfig(source="jsonl", path=str(path), max_examples=40)
    prepared = prepare_data(data, TASK)
    assert prepared.report["counts"] == {
        "train": {"negative": 7, "positive": 21},
        "validation": {"negative": 1, "positive": 3},
        "test": {"negative": 2, "positive": 6},
    }
    assert prepared.report["examples_before_sampling"] == 120
    assert prepare_data(data, TASK).train == prepared.train


def test_a_class_too_small_to_stratify_is_named(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", balanced_rows(30, 2))
    with pytest.raises(KdistillError, match="label 'negative' has only 2 example"):
        prepare_data(DataConfig(source="jsonl", path=str(path)), TASK)


# --------------------------------------------------------------------------------------------
# Report


def test_report_stats_truncation_and_imbalance(tmp_path):
    rows = balanced_rows(30, 10) + [{"text": "word " * 30, "label": "positive"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    prepared = prepare_data(DataConfig(source="jsonl", path=str(path), max_chars=23), TASK)
    report = prepared.report
    assert report["truncated"] == 1
    assert max(report["text_chars"][name]["max"] for name in ("train", "validation", "test")) <= 23
    assert all(not e.text.endswith(" ") and len(e.text) <= 23 for split in prepared.splits().values() for e in split)
    largest_test_share = max(report["counts"]["test"].values()) / report["totals"]["test"]
    assert report["class_balance"]["test"] == pytest.approx(largest_test_share, abs=1e-4)
    assert "'positive' has 3.1x as many examples as 'negative'" in report["imbalance_warning"]


def test_cut_at_max_chars_keeps_whole_words(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "hello wonderful world", "label": "positive"}])
    assert load_examples(DataConfig(source="jsonl", path=str(path), max_chars=12), TASK)[0].text == "hello"


def test_format_report_shows_counts_conflicts_and_samples(tmp_path):
    rows = balanced_rows(20, 20) + [{"text": "a fine review number 3", "label": "negative"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    prepared = prepare_data(DataConfig(source="jsonl", path=str(path)), TASK)
    text = format_report(prepared, num_samples=2)
    counts = prepared.report["counts"]
    assert f"negative  {counts['train']['negative']:>7}  {counts['validation']['negative']:>10}" in text
    assert "label conflicts 1 texts (2 rows dropped)" in text
    assert f"positive at {path}:4" in text
    first = prepared.test[0]
    assert f"  [{first.label}] {first.origin}  {first.text}" in text
    assert text.count("\n  [") == 6  # 2 samples for each of the 3 splits
    assert isinstance(prepared, PreparedData) and isinstance(first, Example)


def test_several_encodings_are_tried_in_order_per_file(tmp_path):
    """A folder that mixes UTF-8 and Latin-1 files (the BBC corpus does) reads right with utf-8,latin-1."""
    from kdistill.config import DataConfig, TaskConfig
    from kdistill.data import load_examples

    for label, (name, data) in {"a": ("1.txt", "£6m in UTF-8".encode()), "b": ("2.txt", "£7m in Latin-1".encode("latin-1"))}.items():
        (tmp_path / label).mkdir()
        (tmp_path / label / name).write_bytes(data)
    task = TaskConfig(labels=["a", "b"])
    texts = sorted(e.text for e in load_examples(DataConfig(source="folder", path=str(tmp_path), encoding="utf-8,latin-1"), task))
    assert texts == ["£6m in UTF-8", "£7m in Latin-1"]
    latin_only = {e.text for e in load_examples(DataConfig(source="folder", path=str(tmp_path), encoding="latin-1"), task)}
    assert "Â£6m in UTF-8" in latin_only  # what a single latin-1 did to the UTF-8 files
