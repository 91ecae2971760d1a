"""Generative metrics: identities, hand-computed values, and that copying the source cannot win."""

from __future__ import annotations

import pytest

from kdistill.errors import KdistillError
from kdistill.eval.text_metrics import (
    COPY_NGRAM_SIZES,
    ROUGE_TYPES,
    compression_ratio,
    copy_rate,
    copying,
    exact_match,
    multiple_choice_accuracy,
    novel_ngram_share,
    rouge,
    token_f1,
    words,
)

SOURCE = ("The city council voted on Tuesday to close the old harbour bridge to cars after engineers found deep "
          "cracks in its steel supports. Repairs are expected to take two years.")
REFERENCE = "Cracked harbour bridge shut to cars for two years of repairs."
LEAD_COPY = SOURCE.split(". ")[0] + "."  # the source's first sentence, verbatim
ABSTRACTIVE = "Harbour bridge closed to cars for two years after cracks were found."


def _means(scores: dict) -> dict:
    return {name: score.mean for name, score in scores.items()}


# ---------------------------------------------------------------- ROUGE


def test_rouge_of_identical_texts_is_one_and_of_disjoint_texts_is_zero():
    texts = ["the bridge is closed", "Repairs take two years!"]
    assert _means(rouge(texts, texts)) == {kind: 1.0 for kind in ROUGE_TYPES}
    assert _means(rouge(["apples and pears"], ["bridge closed today"])) == {kind: 0.0 for kind in ROUGE_TYPES}


def test_rouge_matches_hand_computed_values():
    # unigrams: the×2, cat, on, mat shared → 5/6 both ways; bigrams: the-cat, on-the, the-mat → 3/5;
    # LCS: "the cat on the mat" → 5/6. Every word is ≤ 3 characters, so the stemmer changes nothing.
    scores = _means(rouge(["the cat sat on the mat"], ["the cat is on the mat"]))
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})


def test_rouge_stems_and_ignores_case_and_punctuation():
    assert rouge(["Running DOGS!"], ["run dog"])["rouge1"].mean == 1.0


def test_rouge_takes_the_best_of_several_references_and_keeps_per_example_order():
    scores = rouge(["bridge closed", "two years"], [["storm damage", "bridge closed"], "bridge closed"])
    assert scores["rouge1"].per_example == [1.0, 0.0]
    assert scores["rouge1"].mean == 0.5


def test_rouge_of_an_empty_prediction_is_zero():
    assert _means(rouge(["", "  ...  "], [REFERENCE, REFERENCE])) == {kind: 0.0 for kind in ROUGE_TYPES}


def test_a_copied_summary_wins_against_the_source_but_loses_against_the_reference():
    """The seeds scored summaries against the source; here the reference decides."""
    against_source = {name: rouge([s], [SOURCE])["rouge1"].mean for name, s in [("copy", LEAD_COPY),
                                                                                 ("abstractive", ABSTRACTIVE)]}
    against_reference = {name: rouge([s], [REFERENCE])["rouge1"].mean for name, s in [("copy", LEAD_COPY),
                                                                                      ("abstractive", ABSTRACTIVE)]}
    assert against_source["copy"] > 0.85 > against_source["abstractive"]
    assert against_reference["abstractive"] > 2 * against_reference["copy"]
    copied = _means(copying([LEAD_COPY], [SOURCE]))
    assert [copied[f"copy_rate_{n}"] for n in COPY_NGRAM_SIZES] == [1.0, 1.0, 1.0]
    assert [copied[f"novel_ngram_share_{n}"] for n in COPY_NGRAM_SIZES] == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- QA


def test_exact_match_normalizes_case_punctuation_articles_and_whitespace():
    assert exact_match(["The  Eiffel Tower!"], ["eiffel tower"]).mean == 1.0
    assert exact_match(["Eiffel Towers"], ["eiffel tower"]).mean == 0.0


def test_exact_match_and_token_f1_take_the_best_gold_answer():
    assert exact_match(["paris"], [["City of Paris", "Paris"]]).mean == 1.0
    # "city of paris": P = 1, R = 1/3 → F1 = 1/2; "france" shares nothing
    assert token_f1(["paris"], [["City of Paris", "France"]]).mean == pytest.approx(1 / 2)


def test_token_f1_hand_cases():
    # 4 predicted tokens, 2 gold ("the" dropped), 2 shared: P = 1/2, R = 1 → F1 = 2/3
    assert token_f1(["eiffel tower in paris"], ["the Eiffel Tower"]).mean == pytest.approx(2 / 3)
    # repeats are clipped: "paris" is shared once, so P = 1/2, R = 1
    assert token_f1(["paris paris"], ["paris"]).mean == pytest.approx(2 / 3)
    assert token_f1(["london"], ["paris"]).mean == 0.0


def test_empty_qa_predictions_score_zero_against_a_real_answer():
    assert exact_match(["", "!!"], ["paris", "paris"]).per_example == [0.0, 0.0]
    assert token_f1(["", "the"], ["paris", "paris"]).per_example == [0.0, 0.0]


def test_multiple_choice_accuracy_counts_matching_indices():
    score = multiple_choice_accuracy([0, 2, 1, -1], [0, 1, 1, 3])
    assert score.per_example == [1.0, 0.0, 1.0, 0.0]
    assert score.mean == 0.5


# ---------------------------------------------------------------- copying and compression


def test_words_are_lowercased_runs_of_letters_and_digits():
    expected = ["the", "u", "s", "based", "firm", "s", "5bn", "café", "bar"]
    assert words("The U.S.-based firm's $5bn, café_bar") == expected


def test_compression_ratio_hand_case_and_empty_summary():
    source = "one two three four five six seven eight nine ten eleven twelve"
    assert compression_ratio(["one two three"], [source]).mean == 4.0
    assert compression_ratio([""], [source]).mean == 0.0


def test_copy_rate_hand_case_for_each_n():
    summary, source = "The bridge was closed", "the bridge is open"
    # unigrams the, bridge of 4; bigrams the-bridge of 3; trigrams none of 2
    assert [copy_rate([summary], [source], n).mean for n in (1, 2, 3)] == pytest.approx([1 / 2, 1 / 3, 0.0])
    assert [novel_ngram_share([summary], [source], n).mean for n in (1, 2, 3)] == pytest.approx([1 / 2, 2 / 3, 1.0])


def test_copy_rate_counts_repeated_ngrams_and_checks_each_summary_against_its_own_source():
    assert copy_rate(["bridge bridge"], ["bridge"], 1).mean == 1.0
    scores = copy_rate(["bridge closed", "bridge closed"], ["bridge closed", "weather report"], 2)
    assert scores.per_example == [1.0, 0.0]


def test_summaries_without_ngrams_score_zero_without_crashing():
    assert copy_rate(["", "bridge"], [SOURCE, SOURCE], 3).per_example == [0.0, 0.0]
    assert novel_ngram_share(["", "bridge"], [SOURCE, SOURCE], 3).per_example == [0.0, 0.0]


def test_mean_is_the_mean_of_the_per_example_values():
    score = token_f1(["paris", "london", "eiffel tower in paris"], ["paris", "paris", "eiffel tower"])
    assert score.mean == pytest.approx(sum(score.per_example) / 3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("metric", [rouge, exact_match, token_f1, multiple_choice_accuracy, compression_ratio,
                                    lambda a, b: copy_rate(a, b, 2), lambda a, b: novel_ngram_share(a, b, 2), copying])
def test_lists_of_different_lengths_are_a_user_error(metric):
    with pytest.raises(KdistillError, match="parallel"):
        metric(["a", "b"], ["a"])


def test_an_example_with_no_reference_is_a_user_error():
    with pytest.raises(KdistillError, match=r"references\[1\]"):
        token_f1(["a", "b"], [["a"], []])


def test_copy_rate_needs_a_positive_n():
    with pytest.raises(KdistillError, match="at least 1"):
        copy_rate(["a"], ["a"], 0)
