"""Your own split files (data.train / validation / test) and an unlabelled pool (data.unlabeled): used as given,
missing splits carved, no text in two splits, every bad file one line, and the pool taught by the teacher alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import make_texts, tiny_config_dict, write_csv
from kdistill import api
from kdistill.config import DataConfig, TaskConfig, load_config
from kdistill.data import format_report, prepare_data
from kdistill.data.records import NO_LABEL
from kdistill.errors import KdistillError

TASK = TaskConfig(labels=["negative", "positive"])


def write_jsonl(path: Path, rows: list[tuple[str, str]] | list[dict]) -> Path:
    records = [row if isinstance(row, dict) else {"text": row[0], "label": row[1]} for row in rows]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def texts_of(split) -> list[str]:
    return [example.text for example in split]


@pytest.fixture
def rows():
    """(train rows, test rows, validation rows) of distinct texts, both labels in each."""
    texts = make_texts(100)
    return texts[:60], texts[60:80], texts[80:]


# --------------------------------------------------------------------------------------------
# Splits as given, and the ones carved


def test_given_splits_are_used_as_they_are_in_their_order(tmp_path, rows):
    train, test, validation = rows
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", train)),
                      validation=str(write_jsonl(tmp_path / "val.jsonl", validation)),
                      test=str(write_parquet(tmp_path / "test.parquet", {"text": [t for t, _ in test],
                                                                          "label": [lab for _, lab in test]})))
    prepared = prepare_data(data, TASK)
    assert texts_of(prepared.train) == [t for t, _ in train]
    assert texts_of(prepared.validation) == [t for t, _ in validation]
    assert texts_of(prepared.test) == [t for t, _ in test]  # all of it, in file order: never sampled from
    assert prepared.labelled_train is None and prepared.report["source"] == "files"
    assert prepared.report["files"] == data.split_files and "data.test: " in format_report(prepared)


def test_a_training_file_alone_is_split_exactly_like_the_same_file_as_data_path(tmp_path, rows):
    path = str(write_csv(tmp_path / "train.csv", rows[0] + rows[1]))
    own, single = prepare_data(DataConfig(train=path), TASK), prepare_data(DataConfig(path=path), TASK)
    for name in ("train", "validation", "test"):
        assert [e.id for e in getattr(own, name)] == [e.id for e in getattr(single, name)], name


@pytest.mark.parametrize("given, carved, fraction", [("test", "validation", 0.25), ("validation", "test", 0.25)])
def test_a_missing_split_is_carved_from_train_stratified(tmp_path, rows, given, carved, fraction):
    train, test, _ = rows
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", train)), **{f"{carved}_fraction": fraction},
                      **{given: str(write_csv(tmp_path / "given.csv", test))})
    prepared = prepare_data(data, TASK)
    assert texts_of(getattr(prepared, given)) == [t for t, _ in test]
    part = getattr(prepared, carved)
    assert len(part) == round(fraction * len(train)) and {e.label for e in part} == {"negative", "positive"}
    assert len(prepared.train) + len(part) == len(train)
    assert not {e.id for e in part} & {e.id for e in prepared.train}


def test_no_validation_split_when_the_fraction_is_zero(tmp_path, rows):
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", rows[0])), validation_fraction=0,
                      test=str(write_csv(tmp_path / "test.csv", rows[1])))
    prepared = prepare_data(data, TASK)
    assert prepared.validation == [] and len(prepared.train) == len(rows[0])


def test_max_examples_samples_the_training_file_and_never_the_test_file(tmp_path, rows):
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", rows[0])), max_examples=20,
                      test=str(write_csv(tmp_path / "test.csv", rows[1])))
    prepared = prepare_data(data, TASK)
    assert len(prepared.train) + len(prepared.validation) == 20 and len(prepared.test) == len(rows[1])


def test_a_saved_hf_dataset_folder_is_read(tmp_path, rows):
    import datasets

    folder = tmp_path / "train-ds"
    datasets.Dataset.from_dict({"text": [t for t, _ in rows[0]], "label": [lab for _, lab in rows[0]]}).save_to_disk(folder)
    prepared = prepare_data(DataConfig(train=str(folder), test=str(write_csv(tmp_path / "test.csv", rows[1]))), TASK)
    assert sorted(texts_of(prepared.train + prepared.validation)) == sorted(t for t, _ in rows[0])
    assert prepared.train[0].origin.startswith(f"{folder}:row ")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "label": ["positive"]})}).save_to_disk(
        tmp_path / "dict-ds")
    with pytest.raises(KdistillError, match=r"dict-ds: a saved 🤗 DatasetDict with splits train; give the folder of one"):
        prepare_data(DataConfig(train=str(tmp_path / "dict-ds")), TASK)


# --------------------------------------------------------------------------------------------
# No text in two splits


def test_a_test_text_also_in_train_is_dropped_from_train_with_a_warning(tmp_path, rows, caplog):
    train, test, _ = rows
    leaked = [(test[0][0].upper(), test[0][1]), test[1]]  # any casing is the same text
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", train + leaked)),
                      test=str(write_csv(tmp_path / "test.csv", test)))
    with caplog.at_level(logging.WARNING, logger="kdistill.data.split_files"):
        prepared = prepare_data(data, TASK)
    assert texts_of(prepared.test) == [t for t, _ in test]
    assert not {e.id for e in prepared.train + prepared.validation} & {e.id for e in prepared.test}
    assert len(prepared.train) + len(prepared.validation) == len(train)
    assert prepared.report["shared_texts_dropped"] == {"train": 2}
    assert "2 train text(s) are also in the test split" in caplog.text
    assert "warning: 2 train text(s) are also in another split: dropped from train" in format_report(prepared)


# --------------------------------------------------------------------------------------------
# The unlabelled pool


def test_the_pool_joins_the_training_split_without_labels(tmp_path, rows):
    train, test, _ = rows
    pool = [f"an unlabelled review number {i}" for i in range(7)] + [test[0][0], train[0][0]]  # two known texts
    pool_file = write_parquet(tmp_path / "pool.parquet", {"text": pool, "label": ["not a task label"] * len(pool)})
    data = DataConfig(train=str(write_csv(tmp_path / "train.csv", train)),
                      test=str(write_csv(tmp_path / "test.csv", test)), unlabeled=str(pool_file))
    prepared = prepare_data(data, TASK)
    pool_examples = [e for e in prepared.train if e.label == NO_LABEL]
    assert texts_of(pool_examples) == pool[:7]  # the label column is not read; texts of other splits dropped
    assert {e.id for e in prepared.labelled} == {e.id for e in prepared.train} - {e.id for e in pool_examples}
    assert prepared.report["unlabeled_pool"] == 7 and prepared.report["labelled_train"] == len(prepared.labelled)
    assert prepared.report["shared_texts_dropped"] == {"unlabeled": 2}


def test_the_pool_works_with_a_single_source_and_num_labelled(tmp_path, rows):
    pool_file = write_jsonl(tmp_path / "pool.jsonl", [{"text": f"unlabelled text {i}"} for i in range(5)])
    source = write_csv(tmp_path / "all.csv", rows[0] + rows[1])
    plain = prepare_data(DataConfig(path=str(source), num_labelled=10), TASK)
    prepared = prepare_data(DataConfig(path=str(source), num_labelled=10, unlabeled=str(pool_file)), TASK)
    assert [e.id for e in prepared.labelled] == [e.id for e in plain.labelled]  # the same 10 gold labels
    assert prepared.train == plain.train + [e for e in prepared.train if e.label == NO_LABEL]
    assert len(prepared.train) == len(plain.train) + 5 and prepared.test == plain.test


# --------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file, the line or key, and the fix


def make_error(tmp_path: Path, rows, **keys: str) -> str:
    keys = {key: value.format(tmp=tmp_path) for key, value in keys.items()}
    write_csv(tmp_path / "train.csv", rows[0])
    with pytest.raises(KdistillError) as info:
        prepare_data(DataConfig(**keys), TASK)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_split_files_are_one_line_each(tmp_path, rows):
    (tmp_path / "train.tsv").write_text("text\tlabel\n", encoding="utf-8")
    (tmp_path / "pool.csv").write_text("review,label\nsome text,positive\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    write_csv(tmp_path / "header-only.csv", [])
    write_jsonl(tmp_path / "bad-test.jsonl", [("a fine plot", "positive"), ("a dull plot", "meh")])
    cases = {
        "missing.csv: no such file (data.train)": {"train": "{tmp}/missing.csv"},
        "train.tsv (data.train): unknown file extension '.tsv'; name the file .csv": {"train": "{tmp}/train.tsv"},
        "pool.csv:1: header: column 'text' (data.text_field) not found": {"train": "{tmp}/train.csv",
                                                                          "unlabeled": "{tmp}/pool.csv"},
        "bad-test.jsonl:2: field 'label': unknown label 'meh'": {"train": "{tmp}/train.csv", "test": "{tmp}/bad-test.jsonl"},
        "empty.jsonl (data.test): no examples (0 rows read": {"train": "{tmp}/train.csv", "test": "{tmp}/empty.jsonl"},
        "header-only.csv (data.validation): no examples": {"train": "{tmp}/train.csv",
                                                           "validation": "{tmp}/header-only.csv"},
        "data.path and data.train are both given": {"path": "{tmp}/train.csv", "train": "{tmp}/train.csv"},
        "data.test needs data.train": {"path": "{tmp}/train.csv", "test": "{tmp}/train.csv"},
    }
    for expected, keys in cases.items():
        assert expected in make_error(tmp_path, rows, **keys)


def test_a_file_with_another_extension_is_read_as_the_source_named(tmp_path, rows):
    path = write_jsonl(tmp_path / "train.txt", rows[0])
    assert len(prepare_data(DataConfig(train=str(path), source="jsonl"), TASK).train) > 0


def test_a_test_file_that_is_all_training_texts_leaves_no_training_examples(tmp_path, rows):
    path = str(write_csv(tmp_path / "train.csv", rows[0]))
    assert "(data.train): no examples left once the texts also in" in make_error(tmp_path, rows, train=path, test=path)


# --------------------------------------------------------------------------------------------
# Configs: paths, built-in tasks, generation, the pre-flight, `kdistill validate`


def test_split_files_are_relative_to_the_config_file_and_a_builtin_tasks_data_is_not_merged(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "my.yaml").write_text(yaml.safe_dump(
        {"task": "sentiment", "data": {"train": "data/train.csv", "unlabeled": "pool.jsonl"},
         "teacher": {"model": "some-teacher"}, "student": {"model": "some-student"}}), encoding="utf-8")
    cfg = load_config(tmp_path / "cfg" / "my.yaml")
    assert cfg.data.train == str(tmp_path / "cfg" / "data" / "train.csv") and cfg.data.path == ""
    assert cfg.data.unlabeled == str(tmp_path / "cfg" / "pool.jsonl")


def test_a_generation_config_with_split_files_is_one_line():
    with pytest.raises(KdistillError, match=r"data.unlabeled: your own split files are for label tasks"):
        load_config("trivia-qa", {"data.unlabeled": "pool.jsonl"})


def test_a_pool_for_a_multiple_choice_task_is_refused(tmp_path):
    task = TaskConfig(kind="multiple_choice", num_options=2)
    data = DataConfig(source="winogrande", path="x.jsonl", unlabeled=str(write_jsonl(tmp_path / "pool.jsonl", [])))
    with pytest.raises(KdistillError, match="data.unlabeled is for classification tasks for now"):
        prepare_data(data, task)


def own_files_config(tmp_path: Path, tiny_models, **data) -> Path:
    """The tiny job of conftest with its data as train / test / unlabeled files, relative to the config."""
    texts = make_texts(140, seed=3)
    write_csv(tmp_path / "train.csv", texts[:100])
    write_jsonl(tmp_path / "test.jsonl", texts[100:130])
    write_jsonl(tmp_path / "pool.jsonl", [{"text": text} for text, _ in texts[130:]])
    config = tiny_config_dict(tmp_path, tiny_models, evaluation={"seeds": [0]},
                              training={"epochs": 1, "early_stopping_patience": 0})
    config["data"] = {"train": "train.csv", "test": "test.jsonl", "unlabeled": "pool.jsonl", **data}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_validate_reports_the_files_and_the_pool(tmp_path, tiny_models):
    text = api.validate(own_files_config(tmp_path, tiny_models))
    assert f"data.train: {tmp_path / 'train.csv'}" in text and "unlabeled pool: 10 texts" in text
    assert text.endswith("config ok")


def test_a_missing_split_file_stops_before_any_model_loads(tmp_path, tiny_models, monkeypatch):
    from kdistill.recipes import preflight

    monkeypatch.setattr(preflight, "load_tokenizers", lambda *a, **k: pytest.fail("a tokenizer was loaded"))
    cfg = load_config(own_files_config(tmp_path, tiny_models, test="gone.jsonl"))
    with pytest.raises(KdistillError, match=r"gone.jsonl: no such file \(data.test\)"):
        api.elicit(cfg)


def test_the_teacher_labels_the_pool_and_only_the_distilled_student_learns_from_it(tmp_path, tiny_models, monkeypatch):
    from kdistill.recipes import label as recipe

    cfg = load_config(own_files_config(tmp_path, tiny_models))
    data = prepare_data(cfg.data, cfg.task)
    pool_ids = {e.id for e in data.train if e.label == NO_LABEL}
    assert len(pool_ids) == 10
    assert pool_ids <= set(api.elicit(cfg, progress=False).targets.ids)  # the teacher is asked about the pool
    seen = {}

    class RecordingTrainer(recipe.Trainer):
        def __init__(self, *args, train_examples, labelled_ids=None, desc="", **kwargs):
            seen[desc.split()[1]] = ({e.id for e in train_examples}, labelled_ids)
            super().__init__(*args, train_examples=train_examples, labelled_ids=labelled_ids, desc=desc, **kwargs)

    monkeypatch.setattr(recipe, "Trainer", RecordingTrainer)
    for variant in ("labels_only", "distilled"):
        api.train(cfg, variant=variant, seed=0, progress=False)
    distilled_ids, distilled_labelled = seen["distilled"]
    assert pool_ids <= distilled_ids and not pool_ids & distilled_labelled  # taught by the teacher alone
    assert not pool_ids & seen["labels_only"][0] and seen["labels_only"][1] is None

