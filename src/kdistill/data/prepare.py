"""Turn loaded examples into deterministic, leak-free train / validation / test splits and a data report.

The order matters: deduplicate on the casefolded text first, so one text (in any casing or spacing)
can land in one split only; then sample; then split, stratified by label. The same config gives the
same splits, bit for bit. With the user's own split files (data.train ...), the splits they give are kept
and only the missing ones are carved from the training file; the unlabelled pool (data.unlabeled) joins
the training split as texts without gold labels, like the rest of a data.num_labelled split.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from kdistill.config import DataConfig, TaskConfig
from kdistill.data.loaders import read_examples
from kdistill.data.records import Example, LoadedExamples, deduplicate
from kdistill.data.split_files import combined, drop_shared_texts, read_split_files, unique_texts
from kdistill.errors import KdistillError

SPLITS = ("train", "validation", "test")
NUM_CONFLICT_EXAMPLES = 5


@dataclass
class PreparedData:
    """The three splits and the data report (JSON-serialisable) that describes them."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    report: dict[str, Any]
    labelled_train: list[Example] | None = None
    """The training examples whose gold label training may use (data.num_labelled); None = all."""
    selection_rounds: list[list[str]] | None = None
    """With teacher.budget: the ids of the pool texts chosen in each selection round (all in `train`); the
    teacher is asked about each round's texts together (one cache entry each). None: no selection."""
    unbudgeted_train: int | None = None
    """With teacher.budget: how many training texts there were before the pool was cut to the chosen ones
    (the students' step count follows it; see recipes.label). None: no selection."""

    @property
    def labelled(self) -> list[Example]:
        """The training examples whose gold labels may be used (all of them without data.num_labelled)."""
        return self.labelled_train if self.labelled_train is not None else self.train

    @property
    def pool(self) -> list[Example]:
        """The training texts without gold labels (the transfer set, the unlabelled pool), in training order."""
        labelled = {e.id for e in self.labelled}
        return [e for e in self.train if e.id not in labelled]

    def with_selection(self, rounds: list[list[str]]) -> "PreparedData":
        """These splits with the pool cut to the texts ``rounds`` chose: what training sees under a teacher budget.
        The data report's training counts follow, so the card's setting line counts the texts trained on."""
        chosen = {i for ids in rounds for i in ids}
        labelled = {e.id for e in self.labelled}
        train = [e for e in self.train if e.id in labelled or e.id in chosen]
        assert len(train) == len(labelled) + len(chosen) and not chosen & labelled, "a chosen id is not in the pool"
        report = {**self.report, "totals": {**self.report["totals"], "train": len(train)},
                  "teacher_budget": {"pool": len(self.pool), "selected": len(chosen)}}
        if "counts" in report:
            labels = list(report["counts"]["train"])
            report["counts"] = {**report["counts"], "train": _label_counts(train, labels)}
        return PreparedData(train=train, validation=self.validation, test=self.test, report=report,
                            labelled_train=list(self.labelled), selection_rounds=[list(ids) for ids in rounds],
                            unbudgeted_train=self.unbudgeted_train or len(self.train))

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass
class _Cleaning:
    """What reading and deduplication found, for the data report."""

    loaded: LoadedExamples
    duplicates_removed: int
    conflicts: list[list[Example]]
    num_unique: int
    shared_dropped: dict[str, int] = field(default_factory=dict)
    """Texts dropped from a split because another split (the test file first) has them: split -> count."""


def prepare_data(data: DataConfig, task: TaskConfig) -> PreparedData:
    """Load, deduplicate, sample (if data.max_examples) and split, stratified by label: one source (data.path)
    or the user's own split files (data.train ...); then add the unlabelled pool (data.unlabeled), if any."""
    files = read_split_files(data, task)  # a missing or malformed file stops here, before any splitting
    train, validation, test, cleaning = _split_files(files, data) if data.train else _split_source(data, task)
    ids = [{example.id for example in split} for split in (train, validation, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), "a text is in two splits"
    prepared = PreparedData(train=train, validation=validation, test=test, report={})
    if data.num_labelled is not None and data.num_labelled < len(train):
        # the rest of the training split is a transfer set: text only the teacher labels
        prepared.labelled_train = stratified_sample(train, data.num_labelled, data.split_seed + 1)
    pool = _add_pool(prepared, files["unlabeled"], cleaning) if "unlabeled" in files else None
    prepared.report = _build_report(data, task, cleaning, prepared)
    prepared.report["labelled_train"] = len(prepared.labelled)
    if data.split_files:  # only then: an existing config's report stays as it was
        prepared.report.update(files=data.split_files, shared_texts_dropped=cleaning.shared_dropped,
                               unlabeled_pool=None if pool is None else len(pool))
    return prepared


def _split_source(data: DataConfig, task: TaskConfig) -> tuple[list[Example], list[Example], list[Example], _Cleaning]:
    """(train, validation, test) of the single source data.path, and what cleaning it found."""
    loaded = read_examples(data, task)
    unique, duplicates_removed, conflicts = deduplicate(loaded.examples)
    if not unique:
        raise KdistillError(
            f"{data.path}: no examples left ({loaded.rows_read} rows read, "
            f"{sum(loaded.ignored_by_label.values())} ignored, {len(conflicts)} texts with conflicting labels)."
        )
    sampled = stratified_sample(unique, data.max_examples, data.split_seed)
    return *stratified_split(sampled, data), _Cleaning(loaded, duplicates_removed, conflicts, len(unique))


def _split_files(files: dict[str, LoadedExamples],
                 data: DataConfig) -> tuple[list[Example], list[Example], list[Example], _Cleaning]:
    """(train, validation, test) from the user's files: the ones given as they are (less texts a split of higher
    PRECEDENCE has), the missing ones carved from the training file, stratified."""
    given = [key for key in SPLITS if key in files]
    deduplicated = {key: deduplicate(files[key].examples) for key in given}
    splits = {key: kept for key, (kept, _, _) in deduplicated.items()}
    shared_dropped = drop_shared_texts(splits)
    if not splits["train"]:
        raise KdistillError(f"{data.train} (data.train): no examples left once the texts also in data.validation / "
                            "data.test and those with conflicting labels are dropped; give more training examples.")
    cleaning = _Cleaning(combined([files[key] for key in given]), sum(d[1] for d in deduplicated.values()),
                         [group for d in deduplicated.values() for group in d[2]],
                         sum(len(kept) for kept in splits.values()), shared_dropped)
    train = stratified_sample(splits["train"], data.max_examples, data.split_seed)
    validation, test = splits.get("validation"), splits.get("test")
    if validation is None and test is None:
        return *stratified_split(train, data), cleaning  # as a single source would be split
    if test is None:
        train, test = carve(train, data.test_fraction, data, "test")
    elif validation is None:
        train, validation = carve(train, data.validation_fraction, data, "validation")
    return train, validation, test, cleaning


def carve(examples: list[Example], fraction: float, data: DataConfig, split: str) -> tuple[list[Example], list[Example]]:
    """(the rest, ``fraction`` of ``examples``), stratified by label: a split the user's files do not give."""
    if fraction == 0:
        return examples, []
    labels = [example.label for example in examples]
    try:
        rest, carved = train_test_split(list(range(len(examples))), test_size=fraction, stratify=labels,
                                        random_state=data.split_seed)
    except ValueError as err:  # sklearn's word for "too few examples to stratify"
        raise KdistillError(
            f"{data.train} (data.train): cannot carve a stratified {split} split ({fraction} of {len(examples)} "
            f"examples, {dict(Counter(labels))}): {err}; add examples, give data.{split} as a file, or change "
            f"data.{split}_fraction."
        ) from None
    return [examples[i] for i in rest], [examples[i] for i in carved]


def _add_pool(prepared: PreparedData, loaded: LoadedExamples, cleaning: _Cleaning) -> list[Example]:
    """Append the unlabelled pool to the training split as texts without gold labels (the labelled part stays
    prepared.labelled), less the texts another split has; returns the pool as added."""
    splits = {**prepared.splits(), "unlabeled": unique_texts(loaded.examples)}
    cleaning.shared_dropped.update(drop_shared_texts(splits))
    prepared.labelled_train = list(prepared.labelled)  # before the pool joins the training split
    prepared.train = prepared.train + splits["unlabeled"]
    cleaning.loaded.rows_read += loaded.rows_read
    cleaning.loaded.truncated += loaded.truncated
    return splits["unlabeled"]


def stratified_sample(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """At most ``max_examples`` examples with the label shares of ``examples``, in their original order."""
    if max_examples is None or len(examples) <= max_examples:
        return examples
    by_label: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_label.setdefault(example.label, []).append(index)
    quotas = _proportional_quotas({label: len(indices) for label, indices in by_label.items()}, max_examples)
    rng = np.random.default_rng(seed)
    chosen = []
    for label, indices in by_label.items():
        chosen += rng.choice(indices, size=quotas[label], replace=False).tolist()
    return [examples[i] for i in sorted(chosen)]


def _proportional_quotas(counts: dict[str, int], total: int) -> dict[str, int]:
    """Largest-remainder rounding: the quotas sum to ``total`` and each is within 1 of its exact share."""
    num_examples = sum(counts.values())
    quotas = {label: count * total // num_examples for label, count in counts.items()}
    # sorted() is stable, so ties go to the label seen first
    by_remainder = sorted(counts, key=lambda label: counts[label] * total % num_examples, reverse=True)
    for label in by_remainder[: total - sum(quotas.values())]:
        quotas[label] += 1
    return quotas


def stratified_split(examples: list[Example], data: DataConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test), each with the label shares of ``examples``."""
    labels = [example.label for example in examples]
    _check_class_sizes(labels, data)
    indices = list(range(len(examples)))
    try:
        rest, test = train_test_split(
            indices, test_size=data.test_fraction, stratify=labels, random_state=data.split_seed
        )
        train, validation = rest, []
        if data.validation_fraction > 0:
            share_of_rest = data.validation_fraction / (1 - data.test_fraction)
            train, validation = train_test_split(
                rest, test_size=share_of_rest, stratify=[labels[i] for i in rest], random_state=data.split_seed
            )
    except ValueError as err:  # sklearn's word for "too few examples to stratify"
        raise KdistillError(
            f"cannot split {len(examples)} examples ({dict(Counter(labels))}) into stratified train / validation / "
            f"test sets: {err}; add examples, or change data.test_fraction and data.validation_fraction."
        ) from None
    return [examples[i] for i in train], [examples[i] for i in validation], [examples[i] for i in test]


def _check_class_sizes(labels: list[str], data: DataConfig) -> None:
    # stratifying needs two members per class in every split step, and the validation step
    # draws from what the test step left, hence one more
    minimum = 3 if data.validation_fraction > 0 else 2
    for label, count in Counter(labels).items():
        if count < minimum:
            raise KdistillError(
                f"label {label!r} has only {count} example(s) after deduplication, too few to split stratified "
                f"(at least {minimum} needed); add examples of it, or skip it with data.ignore_labels."
            )


# --------------------------------------------------------------------------------------------
# The data report


def _build_report(data: DataConfig, task: TaskConfig, cleaning: _Cleaning, prepared: PreparedData) -> dict[str, Any]:
    loaded, conflicts = cleaning.loaded, cleaning.conflicts
    splits = prepared.splits()
    counts = {name: _label_counts(split, task.labels) for name, split in splits.items()}
    overall = {label: sum(counts[name][label] for name in SPLITS) for label in task.labels}
    return {
        "source": "files" if data.train else data.source,
        "path": data.path or data.train,
        "rows_read": loaded.rows_read,
        "ignored_rows": sum(loaded.ignored_by_label.values()),
        "ignored_by_label": dict(loaded.ignored_by_label),
        "truncated": loaded.truncated,
        "duplicates_removed": cleaning.duplicates_removed,
        "label_conflicts": _conflict_summary(conflicts),
        "examples_before_sampling": cleaning.num_unique,
        "counts": counts,
        "totals": {**{name: len(split) for name, split in splits.items()}, "all": sum(overall.values())},
        "text_chars": {name: _length_stats(split) for name, split in splits.items()},
        "class_balance": {name: _largest_share(counts[name]) for name in SPLITS},
        "imbalance_warning": _imbalance_warning(overall),
    }


def _label_counts(split: list[Example], labels: list[str]) -> dict[str, int]:
    counter = Counter(example.label for example in split)
    return {label: counter[label] for label in labels}


def _conflict_summary(conflicts: list[list[Example]]) -> dict[str, Any]:
    shown = [
        {"text": _shorten(group[0].text, 100), "rows": [{"label": e.label, "origin": e.origin} for e in group]}
        for group in conflicts[:NUM_CONFLICT_EXAMPLES]
    ]
    return {"count": len(conflicts), "rows_dropped": sum(len(group) for group in conflicts), "examples": shown}


def _length_stats(split: list[Example]) -> dict[str, float | None]:
    lengths = [len(example.text) for example in split]
    if not lengths:
        return {"min": None, "median": None, "max": None}
    return {"min": min(lengths), "median": float(statistics.median(lengths)), "max": max(lengths)}


def _largest_share(counts: dict[str, int]) -> float | None:
    total = sum(counts.values())
    return round(max(counts.values()) / total, 4) if total else None


def _imbalance_warning(counts: dict[str, int]) -> str | None:
    largest = max(counts, key=counts.__getitem__)
    smallest = min(counts, key=counts.__getitem__)
    if counts[smallest] == 0:
        return f"label {smallest!r} has no examples; the student cannot learn it."
    if counts[largest] <= 2 * counts[smallest]:
        return None
    return (
        f"label {largest!r} has {counts[largest] / counts[smallest]:.1f}x as many examples as {smallest!r} "
        f"({counts[largest]} vs {counts[smallest]}); accuracy will flatter the model, read macro-F1."
    )


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


# --------------------------------------------------------------------------------------------
# Human-readable form, for `kdistill validate`


def format_report(prepared: PreparedData, num_samples: int = 3) -> str:
    """The data report as text: counts per split and label, dropped rows, warnings, sample rows."""
    report = prepared.report
    conflicts = report["label_conflicts"]
    files = report.get("files") or {"path": report["path"]}
    lines = [
        *(f"data: {report['source']} {path}" if key == "path" else f"data.{key}: {path}" for key, path in files.items()),
        f"rows read {report['rows_read']}, ignored {report['ignored_rows']}, "
        f"truncated to data.max_chars {report['truncated']}",
        f"duplicates removed {report['duplicates_removed']}, label conflicts {conflicts['count']} "
        f"texts ({conflicts['rows_dropped']} rows dropped)",
        "",
        *_count_table(report["counts"]),
    ]
    for conflict in conflicts["examples"]:
        where = ", ".join(f"{row['label']} at {row['origin']}" for row in conflict["rows"])
        lines.append(f"conflict: {conflict['text']!r}: {where}")
    if report.get("unlabeled_pool") is not None:
        lines.append(f"unlabeled pool: {report['unlabeled_pool']} texts in the training split, labelled by the teacher "
                     "alone (the labels-only student does not see them)")
    for split, count in report.get("shared_texts_dropped", {}).items():
        lines.append(f"warning: {count} {split} text(s) are also in another split: dropped from {split} (a text stays "
                     "in the first of test, validation, train, unlabeled that has it)")
    if report["imbalance_warning"]:
        lines.append(f"warning: {report['imbalance_warning']}")
    for name, split in prepared.splits().items():
        if split and num_samples > 0:
            lines += ["", f"{name} samples:"]
            lines += [f"  [{e.label}] {e.origin}  {_shorten(e.text, 100)}" for e in split[:num_samples]]
    return "\n".join(lines)


def _count_table(counts: dict[str, dict[str, int]]) -> list[str]:
    labels = list(counts["train"])
    rows = [[label, *(counts[name][label] for name in SPLITS)] for label in labels]
    rows = [[*row, sum(row[1:])] for row in rows]
    rows.append(["total", *(sum(column) for column in zip(*(row[1:] for row in rows)))])
    width = max(len("label"), *(len(label) for label in labels))
    header = f"{'label':<{width}}  {'train':>7}  {'validation':>10}  {'test':>7}  {'total':>7}"
    body = [f"{row[0]:<{width}}  {row[1]:>7}  {row[2]:>10}  {row[3]:>7}  {row[4]:>7}" for row in rows]
    return [header, *body]
