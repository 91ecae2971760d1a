"""Multiple-choice data in the public formats of Winogrande, Social IQA and AQuA-RAT, as ChoiceExamples.

None of these sets is reachable offline here; the loaders are tested on small files written like the
official releases and are ready for users who have the data. Each stops at the first bad record
with a KdistillError naming the file, the line and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kdistill.config import DataConfig, TaskConfig
from kdistill.data.records import (
    CHOICE_SOURCES,
    ChoiceExample,
    Example,
    LoadedExamples,
    normalize_text,
    read_jsonl,
    read_text,
    source_path,
    text_field,
    text_id,
)
from kdistill.errors import KdistillError

_AQUA_OPTION = re.compile(r"\s*([A-Z])\s*\)(.*)", re.DOTALL)


def load_winogrande(path: str | Path) -> list[ChoiceExample]:
    """Winogrande jsonl (``train_xl.jsonl``, ``dev.jsonl``, ``test.jsonl`` …).

    Format, one object per line: ``{"qID": str, "sentence": "… because _ despised …", "option1":
    str, "option2": str, "answer": "1" | "2"}``; the test file has no answer (or ""), which gives
    answer None. The question is the sentence with its '_' blank, the options fill the blank.
    """
    fmt = "Winogrande jsonl"
    examples = []
    for origin, obj in read_jsonl(path, fmt):
        sentence = text_field(obj, "sentence", origin, fmt)
        if "_" not in sentence:
            raise KdistillError(f"{origin}: field 'sentence' has no '_' blank for the options to fill; fix the line.")
        options = (text_field(obj, "option1", origin, fmt), text_field(obj, "option2", origin, fmt))
        answer = _answer_index(obj.get("answer", ""), ("1", "2"), origin, "answer")
        examples.append(_choice(sentence, options, answer, origin))
    return examples


def load_social_iqa(path: str | Path, labels_path: str | Path | None = None) -> list[ChoiceExample]:
    """Social IQA jsonl plus its labels file (the official ``train.jsonl`` + ``train-labels.lst`` …).

    Format, one object per line: ``{"context": str, "question": str, "answerA": str, "answerB": str,
    "answerC": str}``; the labels file has one line per question, "1", "2" or "3" (answerA..C).
    Without ``labels_path`` the answers are None (the test split has no labels file). The
    question is context + " " + question.
    """
    fmt = "Social IQA jsonl"
    records = list(read_jsonl(path, fmt))
    labels = _read_labels(labels_path, len(records), path) if labels_path is not None else [None] * len(records)
    examples = []
    for (origin, obj), answer in zip(records, labels):
        question = f"{text_field(obj, 'context', origin, fmt)} {text_field(obj, 'question', origin, fmt)}"
        options = tuple(text_field(obj, f"answer{letter}", origin, fmt) for letter in "ABC")
        examples.append(_choice(question, options, answer, origin))
    return examples


def _read_labels(labels_path: str | Path, num_questions: int, questions_path: str | Path) -> list[int | None]:
    lines = read_text(labels_path, "Social IQA labels").rstrip("\n").split("\n")
    labels = [_answer_index(line.strip(), ("1", "2", "3"), f"{labels_path}:{i}", "label", required=True)
              for i, line in enumerate(lines, start=1)]
    if len(labels) != num_questions:
        raise KdistillError(
            f"{labels_path}: {len(labels)} labels for the {num_questions} questions of {questions_path}; the labels "
            "file needs one line (1, 2 or 3) per question line: are the two files of the same split?"
        )
    return labels


def load_aqua_rat(path: str | Path) -> list[ChoiceExample]:
    """AQuA-RAT json lines (the official ``train.json``, ``dev.json``, ``test.json``: one object per line).

    Format: ``{"question": str, "options": ["A)21", "B)21.5", …], "rationale": str, "correct": "A"}``.
    The options lose their "A)" labels (each must carry its own letter, in order); the answer is the
    index of ``correct``; the rationale is kept in ``ChoiceExample.rationale``.
    """
    fmt = "AQuA-RAT json lines"
    examples = []
    for origin, obj in read_jsonl(path, fmt):
        question = text_field(obj, "question", origin, fmt)
        options = _aqua_options(obj.get("options"), origin)
        letters = tuple(chr(ord("A") + i) for i in range(len(options)))
        answer = _answer_index(obj.get("correct", ""), letters, origin, "correct")
        rationale = normalize_text(obj["rationale"]) if isinstance(obj.get("rationale"), str) else None
        examples.append(_choice(question, options, answer, origin, rationale=rationale or None))
    return examples


def _aqua_options(raw: Any, origin: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise KdistillError(
            f"{origin}: field 'options': expected a list of labelled options like [\"A)21\", \"B)22\"], found {raw!r}."
        )
    options = []
    for i, option in enumerate(raw):
        letter = chr(ord("A") + i)
        match = _AQUA_OPTION.fullmatch(option) if isinstance(option, str) else None
        text = normalize_text(match.group(2)) if match else ""
        if not match or match.group(1) != letter or not text:
            raise KdistillError(
                f"{origin}: field 'options': option {i + 1} is {option!r}, expected \"{letter})\" and its text; "
                "fix the line."
            )
        options.append(text)
    return tuple(options)


def _choice(question: str, options: tuple[str, ...], answer: int | None, origin: str,
            rationale: str | None = None) -> ChoiceExample:
    return ChoiceExample(id=text_id(question), question=question, options=options, answer=answer, origin=origin,
                         rationale=rationale)


def _answer_index(raw: Any, names: tuple[str, ...], origin: str, field: str, *, required: bool = False) -> int | None:
    """The index of ``raw`` in ``names`` ("2" of ("1", "2") is 1); "" means unlabelled unless ``required``."""
    value = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
    if value == "" and not required:
        return None
    if value not in names:
        unlabelled = ' or "" (unlabelled)' if not required else ""
        raise KdistillError(
            f"{origin}: field '{field}': expected one of {', '.join(names)}{unlabelled}, found {raw!r}; fix the line."
        )
    return names.index(value)


# --------------------------------------------------------------------------------------------
# Multiple choice as label-space examples (the option number is the label)


def render_choice(example: ChoiceExample) -> str:
    """The question and its numbered options, one per line: what the prompt's `{text}` becomes."""
    lines = [example.question] + [f"{i}. {option}" for i, option in enumerate(example.options, 1)]
    return "\n".join(lines)


def read_choice_examples(data: DataConfig, task: TaskConfig) -> LoadedExamples:
    """A multiple-choice file as Examples whose text is `render_choice` and whose label is the right
    option's number ('1'..'N'); unanswered questions (a test split) and a wrong option count are errors."""
    if data.source not in CHOICE_SOURCES or task.kind != "multiple_choice":
        raise KdistillError(f"data.source {data.source!r} with task.kind {task.kind!r}: multiple-choice files "
                            f"({', '.join(CHOICE_SOURCES)}) go with task.kind multiple_choice, and back.")
    path = source_path(data)
    if data.source == "social_iqa":
        choices = load_social_iqa(path, data.labels_path or None)
    else:
        choices = {"winogrande": load_winogrande, "aqua_rat": load_aqua_rat}[data.source](path)
    loaded = LoadedExamples(rows_read=len(choices))
    for example in choices:
        if len(example.options) != task.num_options:
            raise KdistillError(f"{example.origin}: {len(example.options)} options, but task.num_options is "
                                f"{task.num_options}; set task.num_options to the file's option count.")
        if example.answer is None:
            raise KdistillError(f"{example.origin}: no answer; training and evaluation need answered questions "
                                "(a test split without answers cannot be scored; give data.labels_path for Social IQA).")
        text = render_choice(example)
        loaded.examples.append(Example(id=text_id(text), text=text, label=str(example.answer + 1), origin=example.origin))
    return loaded
