"""Generation and multiple-choice data: the example types, the generation loaders, and leak-free splits.

Generation data is a prompt plus, when the data has one, a reference target; the built-in sets are the
trivia pairs of chatterbot-corpus and the BBC News articles (summaries to be written by the teacher:
no human-written summaries are reachable offline). TriviaQA's public json loads here too; the
multiple-choice formats (Winogrande, Social IQA, AQuA-RAT) load in `kdistill.data.choice`.
Every loader normalizes text like `kdistill.data.loaders` and stops at the first bad record with a
KdistillError naming the file, the line (or item) and the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import yaml
from sklearn.model_selection import train_test_split

from kdistill.data.records import ChoiceExample, GenExample, deduplicate, normalize_text, read_text, text_field, text_id
from kdistill.errors import KdistillError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Reading helpers, shared with kdistill.data.choice


# --------------------------------------------------------------------------------------------
# Generation loaders


def _gen(prompt: str, origin: str, *, target: str | None = None, answers: tuple[str, ...] = ()) -> GenExample:
    return GenExample(id=text_id(prompt), prompt=prompt, target=target, answers=answers, origin=origin)


def load_triviaqa(path: str | Path) -> list[GenExample]:
    """TriviaQA's official json (``qa/wikipedia-*.json``, ``qa/web-*.json``, ``unfiltered-web-*.json``).

    Format: ``{"Data": [{"Question": str, "QuestionId": str, "Answer": {"Value": str, "Aliases":
    [str], "NormalizedAliases": [str], ...}, ...}], "Version": ..., ...}``; the test files have no
    "Answer". Target = Answer.Value; answers = Value then Aliases, without repeats (compared
    casefolded: every QA scorer lowercases). The whole file is read into memory: the unfiltered
    training file with its search results is gigabytes, the ``qa/`` files are far smaller.
    """
    text = read_text(path, "TriviaQA json")
    try:
        top = json.loads(text)
    except json.JSONDecodeError as err:
        raise KdistillError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno}).") from None
    if not isinstance(top, dict) or not isinstance(top.get("Data"), list):
        raise KdistillError(f"{path}: expected TriviaQA's json, an object whose 'Data' is a list of questions.")
    return [_trivia_example(item, f"{path}:Data[{index}]") for index, item in enumerate(top["Data"])]


def _trivia_example(item: Any, origin: str) -> GenExample:
    if not isinstance(item, dict):
        raise KdistillError(f"{origin}: expected a question object, found {type(item).__name__}.")
    if "QuestionId" in item:
        origin = f"{origin} (QuestionId {item['QuestionId']})"
    prompt = text_field(item, "Question", origin, "TriviaQA")
    if "Answer" not in item:
        return _gen(prompt, origin)
    answer = item["Answer"]
    if not isinstance(answer, dict):
        raise KdistillError(f"{origin}: field 'Answer': expected an object with Value and Aliases.")
    value = text_field(answer, "Value", f"{origin}: Answer", "TriviaQA")
    aliases = answer.get("Aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise KdistillError(f"{origin}: field 'Answer.Aliases': expected a list of strings, found {aliases!r}.")
    answers = _unique([value, *(normalize_text(alias) for alias in aliases)])
    return _gen(prompt, origin, target=value, answers=answers)


def _unique(texts: Iterable[str]) -> tuple[str, ...]:
    """Non-empty texts in first-seen order, dropping any that equals an earlier one but for case."""
    seen: dict[str, str] = {}
    for text in texts:
        if text:
            seen.setdefault(text.casefold(), text)
    return tuple(seen.values())


def load_trivia_pairs(path: str | Path | None = None) -> list[GenExample]:
    """Question/answer pairs in chatterbot-corpus's YAML (default: the built-in ``trivia-pairs``).

    Format: ``conversations:`` a list of ``[question, answer]`` pairs. Read through YAML's node
    tree, so every value stays a string (an unquoted 1963 is "1963") and knows its line. An entry
    that is not a pair is an error in a file of yours, but is skipped with a warning in the
    built-in file, which you cannot fix: its 261 entries hold 260 pairs and one question fused
    with its answer into a single string by an indentation slip (line 35).
    """
    builtin = path is None
    if path is None:
        from kdistill.assets import fetch_data_asset  # may download

        path = fetch_data_asset("trivia-pairs")
    examples = []
    for origin, texts in _yaml_conversations(path):
        if len(texts) == 2 and all(texts):
            examples.append(_gen(texts[0], origin, target=texts[1], answers=(texts[1],)))
            continue
        problem = f"{origin}: field 'conversations': expected a [question, answer] pair of two non-empty texts"
        if not builtin:
            raise KdistillError(f"{problem}; fix the entry.")
        log.warning("%s; skipped (a flaw of the pinned package's file).", problem)
    return examples


def _yaml_conversations(path: str | Path) -> Iterator[tuple[str, list[str]]]:
    """(origin 'path:line', its normalized texts) per entry of 'conversations'; [] for an entry that is no list."""
    try:
        root = yaml.compose(read_text(path, "chatterbot-corpus YAML"))
    except yaml.YAMLError as err:
        raise KdistillError(f"{path}: not valid YAML ({err}).") from None
    entries = None
    if isinstance(root, yaml.MappingNode):
        entries = next((value for key, value in root.value if key.value == "conversations"), None)
    if not isinstance(entries, yaml.SequenceNode):
        raise KdistillError(f"{path}: expected a mapping whose 'conversations' is a list of [question, answer] pairs.")
    for node in entries.value:
        items = node.value if isinstance(node, yaml.SequenceNode) else []
        texts = [normalize_text(item.value) if isinstance(item, yaml.ScalarNode) else "" for item in items]
        yield f"{path}:{node.start_mark.line + 1}", texts


def load_bbc_articles(path: str | Path | None = None, *, topics: Iterable[str] | None = None) -> list[GenExample]:
    """BBC News articles to summarize (default: the built-in ``bbc-news``, 2,225 articles), targets None.

    Format: a folder of ``<topic>/*.txt`` (business, entertainment, politics, sports, tech), each
    file a title line, a blank line and the body. The prompt is the body alone: the title is a
    headline, a summary the article would otherwise carry with it. No reference summaries exist
    here, so the teacher writes them. The files are UTF-8 but one (sports/199.txt, a '£' in
    Latin-1), so a file that is not UTF-8 is read as Latin-1. ``topics`` keeps only those folders.
    """
    if path is None:
        from kdistill.assets import fetch_data_asset  # may download

        path = fetch_data_asset("bbc-news")
    folder = Path(path)
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not found:
        raise KdistillError(f"{folder}: expected a folder of <topic>/*.txt articles; check the path.")
    wanted = found if topics is None else list(topics)
    unknown = [topic for topic in wanted if topic not in found]
    if unknown:
        raise KdistillError(f"{folder}: no topic folder {', '.join(unknown)}; the topics here are: {', '.join(found)}.")
    return [_bbc_article(file) for topic in wanted for file in sorted((folder / topic).glob("*.txt"))]


def _bbc_article(file: Path) -> GenExample:
    _title, _, body = read_text(file, "BBC article", fallback="latin-1").strip().partition("\n")
    prompt = normalize_text(body)
    if not prompt:
        raise KdistillError(f"{file}: no article text after the title line; remove the file or add its text.")
    return _gen(prompt, str(file))


# --------------------------------------------------------------------------------------------
# Splits

Item = TypeVar("Item", GenExample, ChoiceExample)


@dataclass
class GenerativeSplits(Generic[Item]):
    """Deterministic train / validation / test splits, no prompt in two of them, and what dedupe dropped."""

    train: list[Item]
    validation: list[Item]
    test: list[Item]
    duplicates_removed: int = 0
    """Copies of a prompt dropped because an earlier copy with the same reference was kept."""
    conflicts: list[list[Item]] = field(default_factory=list)
    """Groups of copies of one prompt whose references differ: every copy is dropped."""

    def splits(self) -> dict[str, list[Item]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass(frozen=True)
class _Keyed:
    """An example as prepare.deduplicate sees it: its id, and as 'label' what its copies must agree on."""

    id: str
    label: tuple[Any, ...]
    example: Any


def split_generative(
    examples: list[Item], *, validation_fraction: float, test_fraction: float, seed: int, max_examples: int | None
) -> GenerativeSplits[Item]:
    """Deduplicate by id (keep the first copy; drop prompts whose copies disagree), sample, and split.

    The policy is `prepare.deduplicate`'s, with the reference (target and answers, or options and
    answer) in the role of the label. Sampling and splitting are seeded and unstratified; a larger
    ``max_examples`` samples a superset of a smaller one.
    """
    keyed = [_Keyed(example.id, _reference(example), example) for example in examples]
    kept, duplicates_removed, conflicts = deduplicate(keyed)
    unique = [item.example for item in kept]
    if max_examples is not None and len(unique) > max_examples:
        # a prefix of one seeded permutation: raising max_examples keeps every example already chosen (and
        # the teacher cache reuses what it wrote for them)
        chosen = np.random.default_rng(seed).permutation(len(unique))[:max_examples]
        unique = [unique[i] for i in sorted(chosen)]
    try:
        rest, test = train_test_split(unique, test_size=test_fraction, random_state=seed)
        train, validation = rest, []
        if validation_fraction > 0:
            share_of_rest = validation_fraction / (1 - test_fraction)
            train, validation = train_test_split(rest, test_size=share_of_rest, random_state=seed)
    except ValueError as err:  # sklearn's word for "too few examples" or a fraction out of range
        raise KdistillError(
            f"cannot split {len(unique)} unique examples into train / validation / test "
            f"(validation_fraction {validation_fraction}, test_fraction {test_fraction}): {err}; "
            "add examples, or give a test_fraction above 0 and fractions that sum to less than 1."
        ) from None
    groups = [[item.example for item in group] for group in conflicts]
    return GenerativeSplits(train, validation, test, duplicates_removed, groups)


def _reference(example: GenExample | ChoiceExample) -> tuple[Any, ...]:
    if isinstance(example, GenExample):
        return (example.target, example.answers)
    return (example.options, example.answer)


def prompt_text(template: str, example: GenExample) -> str:
    """The prompt the models see: the task's template with the example's source text in it."""
    return template.replace("{text}", example.prompt)
