"""A generation task's data: read the configured source into GenExamples, then split it without leaks.

    prepare_generation(data_cfg, task_cfg) -> GenData   train / validation / test + a data report

Sources: jsonl (`text_field` is the prompt, `target_field` the target when present), triviaqa (its
json), chatterbot (question / answer pairs in chatterbot-corpus YAML) and bbc_articles (a folder of
<topic>/*.txt; no targets: the teacher writes them). `asset:NAME` names a built-in data asset.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdistill.config import DataConfig, TaskConfig
from kdistill.data.generative import load_bbc_articles, load_trivia_pairs, load_triviaqa, split_generative
from kdistill.data.records import GenExample, cut_at_word, read_jsonl, source_path, text_field, text_id
from kdistill.errors import KdistillError

GENERATION_SOURCES = ("jsonl", "triviaqa", "chatterbot", "bbc_articles")


@dataclass
class GenData:
    """The three splits of a generation task and the report that describes them."""

    train: list[GenExample]
    validation: list[GenExample]
    test: list[GenExample]
    report: dict[str, Any]

    def splits(self) -> dict[str, list[GenExample]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def load_generation(data: DataConfig) -> list[GenExample]:
    """Every example of the source, prompts cut to data.max_chars (at a word boundary)."""
    if data.source not in GENERATION_SOURCES:
        raise KdistillError(f"data.source {data.source!r} is not a generation source; a generation task reads "
                            f"one of: {', '.join(GENERATION_SOURCES)}.")
    if not data.path:
        raise KdistillError("data.path is empty: give a file, a folder or asset:NAME.")
    path = source_path(data)
    if data.source == "jsonl":
        examples = _load_jsonl(path, data)
    elif data.path == "asset:trivia-pairs":  # the pinned file's one broken entry is skipped, not an error
        examples = load_trivia_pairs()
    else:
        examples = {"triviaqa": load_triviaqa, "chatterbot": load_trivia_pairs,
                    "bbc_articles": load_bbc_articles}[data.source](path)
    return [_cut(e, data.max_chars) for e in examples]


def _load_jsonl(path: Path, data: DataConfig) -> list[GenExample]:
    fmt = "generation jsonl"
    out = []
    for origin, obj in read_jsonl(path, fmt):
        prompt = text_field(obj, data.text_field, origin, fmt)
        target = text_field(obj, data.target_field, origin, fmt) if data.target_field in obj else None
        out.append(GenExample(id=text_id(prompt), prompt=prompt, target=target,
                              answers=(target,) if target else (), origin=origin))
    return out


def _cut(example: GenExample, max_chars: int) -> GenExample:
    prompt = cut_at_word(example.prompt, max_chars)
    if prompt == example.prompt:
        return example
    return GenExample(id=text_id(prompt), prompt=prompt, target=example.target, answers=example.answers,
                      origin=example.origin)


def prepare_generation(data: DataConfig, task: TaskConfig) -> GenData:
    """Load, deduplicate, sample (data.max_examples) and split; targets are checked against task.targets."""
    examples = load_generation(data)
    if task.targets == "data":
        missing = next((e for e in examples if not e.target), None)
        if missing is not None:
            raise KdistillError(f"{missing.origin}: no target text, and task.targets is 'data'; add the target "
                                "(data.target_field), or set task.targets: teacher to have the teacher write them.")
    splits = split_generative(examples, validation_fraction=data.validation_fraction,
                              test_fraction=data.test_fraction, seed=data.split_seed, max_examples=data.max_examples)
    ids = [{e.id for e in split} for split in (splits.train, splits.validation, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), "a prompt is in two splits"
    report = {"source": data.source, "path": data.path, "rows_read": len(examples),
              "duplicates_removed": splits.duplicates_removed, "conflicting_prompts": len(splits.conflicts),
              "targets": task.targets,
              "totals": {name: len(split) for name, split in splits.splits().items()},
              "prompt_chars": {name: _median_chars([e.prompt for e in split]) for name, split in splits.splits().items()}}
    return GenData(splits.train, splits.validation, splits.test, report)


def _median_chars(texts: list[str]) -> float | None:
    return statistics.median(len(t) for t in texts) if texts else None


def format_generation_report(data: GenData) -> str:
    """What `kdistill validate` prints for a generation task."""
    r = data.report
    lines = [f"data: {r['source']} {r['path']}", f"  examples read: {r['rows_read']}, duplicates removed: "
             f"{r['duplicates_removed']}, prompts with conflicting targets dropped: {r['conflicting_prompts']}",
             "  splits: " + ", ".join(f"{k} {v}" for k, v in r["totals"].items()),
             f"  targets: {'from the data' if r['targets'] == 'data' else 'written by the teacher'}",
             "  median prompt characters: " + ", ".join(f"{k} {v}" for k, v in r["prompt_chars"].items())]
    sample = data.train[:2]
    for e in sample:
        lines.append(f"  e.g. {e.prompt[:100]!r} -> {(e.target or '(teacher writes it)')[:60]!r}")
    return "\n".join(lines)
