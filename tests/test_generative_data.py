"""Generation and multiple-choice data: each public format, every bad-input message, leak-free splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdistill.data.choice import load_aqua_rat, load_social_iqa, load_winogrande
from kdistill.data.generative import load_bbc_articles, load_trivia_pairs, load_triviaqa, split_generative
from kdistill.data.records import ChoiceExample, GenExample, text_id
from kdistill.errors import KdistillError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """One line per row; a str row is written as is (to plant a malformed line)."""
    return write(path, "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def error_of(load, *args) -> str:
    with pytest.raises(KdistillError) as info:
        load(*args)
    return str(info.value)


WINO = {"qID": "q1", "sentence": "Ian ate Dennis's  menudo because _ liked it.", "option1": "Ian", "option2": "Dennis"}


# --------------------------------------------------------------------------------------------
# Winogrande


def test_winogrande_keeps_the_blank_and_maps_answers(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [
        {**WINO, "answer": "1"},
        {**WINO, "sentence": "The cup fell off the table because the _ was slippery.", "option1": "cup",
         "option2": "table", "answer": "2"},
        {**WINO, "sentence": "Sam lent Ann money since _ was broke.", "answer": ""},  # the test file's form
    ])
    examples = load_winogrande(path)
    assert [e.answer for e in examples] == [0, 1, None]
    assert examples[0] == ChoiceExample(
        id=text_id("ian ate dennis's menudo because _ liked it."), question="Ian ate Dennis's menudo because _ liked it.",
        options=("Ian", "Dennis"), answer=0, origin=f"{path}:1",
    )
    assert examples[1].options == ("cup", "table") and examples[2].origin == f"{path}:3"


@pytest.mark.parametrize("row, expected", [
    ({**WINO, "sentence": "Ian ate it because he liked it.", "answer": "1"}, "field 'sentence' has no '_' blank"),
    ({**WINO, "answer": "3"}, "field 'answer': expected one of 1, 2 or \"\" (unlabelled), found '3'"),
    ({**WINO, "option2": "  ", "answer": "1"}, "field 'option2' is empty"),
    ({"sentence": WINO["sentence"], "option1": "Ian", "answer": "1"}, "field 'option2' is missing"),
    ('{"sentence": "broken', "invalid JSON"),
])
def test_winogrande_bad_line_names_file_line_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "train.jsonl", [{**WINO, "answer": "1"}, row])
    message = error_of(load_winogrande, path)
    assert message.startswith(f"{path}:2: ") and expected in message


# --------------------------------------------------------------------------------------------
# Social IQA

SIQA = {"context": "Tracy  didn't go home that evening.", "question": "What does Tracy need to do?",
        "answerA": "make a new plan", "answerB": "go home", "answerC": "find somewhere to go"}


def test_social_iqa_joins_context_and_question_and_reads_labels(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [SIQA, {**SIQA, "question": "How would Tracy feel?"}, SIQA])
    labels = write(tmp_path / "dev-labels.lst", "3\n1\r\n2\n")
    examples = load_social_iqa(path, labels)
    assert examples[0].question == "Tracy didn't go home that evening. What does Tracy need to do?"
    assert examples[0].options == ("make a new plan", "go home", "find somewhere to go")
    assert [e.answer for e in examples] == [2, 0, 1]
    assert examples[0].id == examples[2].id != examples[1].id
    assert [e.answer for e in load_social_iqa(path)] == [None, None, None]  # no labels file: unlabelled


def test_social_iqa_labels_file_of_another_length_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [SIQA, SIQA])
    labels = write(tmp_path / "train-labels.lst", "1\n2\n3\n")
    message = error_of(load_social_iqa, path, labels)
    assert f"{labels}: 3 labels for the 2 questions of {path}" in message


def test_social_iqa_bad_label_and_missing_answer_name_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", [SIQA, SIQA])
    labels = write(tmp_path / "dev-labels.lst", "1\nB\n")
    assert error_of(load_social_iqa, path, labels).startswith(f"{labels}:2: field 'label': expected one of 1, 2, 3")
    broken = write_jsonl(tmp_path / "broken.jsonl", [SIQA, {k: v for k, v in SIQA.items() if k != "answerC"}])
    assert error_of(load_social_iqa, broken).startswith(f"{broken}:2: field 'answerC' is missing")


# --------------------------------------------------------------------------------------------
# AQuA-RAT

AQUA = {"question": "Two trains … how long?", "options": ["A)21", "B) 21.5", "C )22", "D)22.5", "E)None of these"],
        "rationale": "Speed = 36 km/h.\nTime = 22 s.\nAnswer: C", "correct": "C"}


def test_aqua_rat_strips_option_labels_and_keeps_the_rationale(tmp_path):
    path = write_jsonl(tmp_path / "test.json", [AQUA, {**AQUA, "correct": "E"}])
    first, second = load_aqua_rat(path)
    assert first.options == ("21", "21.5", "22", "22.5", "None of these")
    assert (first.answer, second.answer) == (2, 4)
    assert first.rationale == "Speed = 36 km/h. Time = 22 s. Answer: C"
    assert first.question == "Two trains ... how long?"  # NFKC


@pytest.mark.parametrize("row, expected", [
    ({**AQUA, "options": ["A)21", "C)22"]}, "field 'options': option 2 is 'C)22', expected \"B)\""),
    ({**AQUA, "options": ["A)21", "21.5"]}, "field 'options': option 2 is '21.5'"),
    ({**AQUA, "options": "A)21 B)22"}, "field 'options': expected a list"),
    ({**AQUA, "correct": "F"}, "field 'correct': expected one of A, B, C, D, E"),
    ({**AQUA, "question": 7}, "field 'question': expected a string, found int 7"),
])
def test_aqua_rat_bad_line_names_file_line_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "dev.json", [AQUA, row])
    message = error_of(load_aqua_rat, path)
    assert message.startswith(f"{path}:2: ") and expected in message


# --------------------------------------------------------------------------------------------
# TriviaQA

def triviaqa_file(path: Path, items: list) -> Path:
    return write(path, json.dumps({"Data": items, "Domain": "Wikipedia", "Split": "dev", "Version": 1.0}, indent=2))


def test_triviaqa_targets_the_value_and_deduplicates_aliases(tmp_path):
    path = triviaqa_file(tmp_path / "wikipedia-dev.json", [
        {"Question": "Which  Lloyd Webber musical premiered in 1993?", "QuestionId": "tc_33",
         "Answer": {"Value": "Sunset Boulevard", "NormalizedValue": "sunset boulevard",
                    "Aliases": ["Sunset Blvd", "Sunset Boulevard", "sunset boulevard", "West Sunset Boulevard"],
                    "NormalizedAliases": ["sunset blvd", "sunset boulevard", "west sunset boulevard"]}},
        {"Question": "Who wrote Dracula?", "QuestionId": "tc_40"},  # a test-file item: no Answer
    ])
    first, second = load_triviaqa(path)
    assert first == GenExample(
        id=text_id("which lloyd webber musical premiered in 1993?"), prompt="Which Lloyd Webber musical premiered in 1993?",
        target="Sunset Boulevard", answers=("Sunset Boulevard", "Sunset Blvd", "West Sunset Boulevard"),
        origin=f"{path}:Data[0] (QuestionId tc_33)",
    )
    assert (second.target, second.answers) == (None, ())


def test_triviaqa_bad_item_names_file_item_and_field(tmp_path):
    good = {"Question": "Who wrote Dracula?", "QuestionId": "tc_40", "Answer": {"Value": "Bram Stoker", "Aliases": []}}
    path = triviaqa_file(tmp_path / "web-dev.json", [good, {"QuestionId": "tc_41", "Answer": good["Answer"]}])
    assert error_of(load_triviaqa, path).startswith(f"{path}:Data[1] (QuestionId tc_41): field 'Question' is missing")
    triviaqa_file(path, [good, good, {"Question": "Capital of Peru?", "QuestionId": "tc_42", "Answer": {"Aliases": []}}])
    assert error_of(load_triviaqa, path).startswith(f"{path}:Data[2] (QuestionId tc_42): Answer: field 'Value' is missing")
    write(path, '{"Data": [\n  {"Question": oops}\n]}')
    assert error_of(load_triviaqa, path).startswith(f"{path}:2: invalid JSON")
    write(path, '[{"Question": "a list, not the official object"}]')
    assert "'Data' is a list of questions" in error_of(load_triviaqa, path)


# --------------------------------------------------------------------------------------------
# Built-in formats: chatterbot trivia YAML, BBC article folders

TRIVIA_YAML = """categories:
- trivia
conversations:
- - Who was the 37th President of the United States?
  - Richard Nixon
- - What year was President John F. Kennedy assassinated?
  - 1963
- - A spinning disk, in which the orientation of this axis is unaffected by tilting
    or rotation of the mounting, is called what?
  - A gyroscope.
"""


def test_trivia_pairs_keep_answers_as_text_and_know_their_lines(tmp_path):
    path = write(tmp_path / "trivia.yml", TRIVIA_YAML)
    examples = load_trivia_pairs(path)
    assert [(e.target, e.answers, e.origin) for e in examples] == [
        ("Richard Nixon", ("Richard Nixon",), f"{path}:4"),
        ("1963", ("1963",), f"{path}:6"),  # unquoted, still the text "1963"
        ("A gyroscope.", ("A gyroscope.",), f"{path}:8"),
    ]
    assert examples[2].prompt.startswith("A spinning disk, in which") and examples[2].prompt.endswith("is called what?")


def test_trivia_pairs_bad_entry_names_its_line(tmp_path):
    path = write(tmp_path / "trivia.yml", TRIVIA_YAML + "- - A question without its answer\n")
    assert error_of(load_trivia_pairs, path).startswith(f"{path}:11: field 'conversations': expected a [question, answer]")
    write(path, "categories: [trivia]\n")
    assert "'conversations' is a list" in error_of(load_trivia_pairs, path)


def test_bbc_articles_leave_the_title_out_and_read_latin1_files(tmp_path):
    write(tmp_path / "sports" / "001.txt", "Claxton hunting first major medal\n\nBritish hurdler Sarah Claxton\nis confident.\n")
    write(tmp_path / "sports" / "002.txt", "Mutu fee\n\nA £15.8m signing.\n", encoding="latin-1")
    write(tmp_path / "tech" / "001.txt", "Phones\n\nLosses of £6m in phones.\n")
    examples = load_bbc_articles(tmp_path)
    assert [e.prompt for e in examples] == [
        "British hurdler Sarah Claxton is confident.", "A £15.8m signing.", "Losses of £6m in phones."]
    assert all(e.target is None and e.answers == () for e in examples)
    assert examples[0].origin == str(tmp_path / "sports" / "001.txt")
    assert [e.prompt for e in load_bbc_articles(tmp_path, topics=["tech"])] == ["Losses of £6m in phones."]
    assert "no topic folder sport; the topics here are: sports, tech" in error_of(
        lambda: load_bbc_articles(tmp_path, topics=["sport"]))
    write(tmp_path / "tech" / "002.txt", "Only a title\n")
    assert error_of(load_bbc_articles, tmp_path).startswith(f"{tmp_path / 'tech' / '002.txt'}: no article text")


# --------------------------------------------------------------------------------------------
# Splits


def gen(prompt: str, target: str | None = None, origin: str = "f:1") -> GenExample:
    return GenExample(id=text_id(prompt), prompt=prompt, target=target, answers=(target,) if target else (), origin=origin)


def test_split_is_deterministic_leak_free_and_drops_conflicts():
    examples = [gen(f"Question number {i}?", f"answer {i}") for i in range(100)]
    examples += [gen(f"QUESTION NUMBER {i}?", f"answer {i}", origin="g:1") for i in range(0, 100, 10)]  # same, recased
    examples += [gen("Who wrote Dracula?", "Bram Stoker"), gen("who wrote dracula?", "Mary Shelley")]  # conflict
    split = split_generative(examples, validation_fraction=0.1, test_fraction=0.2, seed=3, max_examples=None)
    ids = [[e.id for e in part] for part in split.splits().values()]
    assert [len(part) for part in ids] == [70, 10, 20]
    assert len(set().union(*ids)) == 100  # every prompt once, in one split only
    assert all(e.origin == "f:1" for part in split.splits().values() for e in part)  # the first copy is kept
    assert split.duplicates_removed == 10
    assert [[e.target for e in group] for group in split.conflicts] == [["Bram Stoker", "Mary Shelley"]]
    again = split_generative(list(examples), validation_fraction=0.1, test_fraction=0.2, seed=3, max_examples=None)
    assert again.splits() == split.splits()
    other = split_generative(examples, validation_fraction=0.1, test_fraction=0.2, seed=4, max_examples=None)
    assert other.test != split.test


def test_split_samples_and_handles_choice_examples():
    examples = [ChoiceExample(id=text_id(f"q{i} _"), question=f"q{i} _", options=("a", "b"), answer=i % 2, origin="f")
                for i in range(50)]
    examples.append(ChoiceExample(id=text_id("Q0 _"), question="Q0 _", options=("a", "b"), answer=1, origin="g"))
    split = split_generative(examples, validation_fraction=0.0, test_fraction=0.25, seed=0, max_examples=20)
    assert (len(split.train), len(split.validation), len(split.test)) == (15, 0, 5)
    assert len(split.conflicts) == 1 and text_id("q0 _") not in {e.id for e in split.train + split.test}
    assert split_generative(examples, validation_fraction=0.0, test_fraction=0.25, seed=0, max_examples=20) == split
    grown = split_generative(examples, validation_fraction=0.0, test_fraction=0.25, seed=0, max_examples=32)
    ids = lambda s: {e.id for e in s.train + s.validation + s.test}
    assert ids(split) < ids(grown)  # more examples keep the ones already chosen


def test_split_of_too_few_examples_is_an_error():
    with pytest.raises(KdistillError, match="cannot split 1 unique examples"):
        split_generative([gen("Only one?", "yes")], validation_fraction=0.1, test_fraction=0.2, seed=0, max_examples=None)


# --------------------------------------------------------------------------------------------
# The real built-in data


@pytest.mark.slow
def test_real_trivia_pairs_and_bbc_articles_load(caplog):
    pairs = load_trivia_pairs()
    assert "trivia.yml:35: field 'conversations'" in caplog.text  # 261 entries, one of them broken, skipped
    assert len(pairs) == 260 and all(e.prompt and e.target and e.answers == (e.target,) for e in pairs)
    articles = load_bbc_articles()
    assert len(articles) == 2225 and all(e.target is None for e in articles)
    assert not any("Â£" in e.prompt for e in articles)  # UTF-8 read as UTF-8, the one Latin-1 file as Latin-1
    split = split_generative(articles, validation_fraction=0.1, test_fraction=0.2, seed=0, max_examples=None)
    assert sum(len(part) for part in split.splits().values()) + split.duplicates_removed == 2225
