"""Metrics for generated text: ROUGE, QA exact match / token F1, multiple-choice accuracy, and copying.

Pure, deterministic functions over lists of strings. Quality is always scored against references,
never against the source: a summary copied from its source scores high against the source and
would win any such comparison. Copying is measured separately (compression ratio, copy rate,
novel n-grams) so that it is visible next to the quality figures.

Every function returns a :class:`Score` (the mean and the per-example values) or a dict of them.
Lists that must be parallel but differ in length raise :class:`KdistillError`. An empty prediction
never crashes; it scores 0 (see each function for the exact rule).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kdistill.errors import KdistillError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
COPY_NGRAM_SIZES = (1, 2, 3)
_WORD_RE = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class Score:
    """A metric's mean over examples and its value for each example, in input order."""

    mean: float
    per_example: list[float]


def _score(values: list[float]) -> Score:
    return Score(mean=sum(values) / len(values) if values else 0.0, per_example=values)


def _check_parallel(name_a: str, a: Sequence, name_b: str, b: Sequence) -> None:
    if len(a) != len(b):
        raise KdistillError(f"{name_a} and {name_b} must be parallel lists, but there are {len(a)} {name_a} "
                            f"and {len(b)} {name_b}; give one of each per example.")


def _answer_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Each example's gold answers as a list: a plain string is one answer."""
    lists = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, answers in enumerate(lists):
        if not answers:
            raise KdistillError(f"references[{i}] is an empty list of answers; give at least one reference text.")
    return lists


# ---------------------------------------------------------------- ROUGE


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, Score]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures of each prediction against its reference(s).

    Computed by Google's ``rouge-score`` package (a re-implementation of ROUGE-1.5.5) with the
    Porter stemmer on: texts are lower-cased, every character outside ``a-z0-9`` becomes a space
    (so non-Latin scripts get no tokens), and words longer than 3 characters are stemmed. ROUGE-L
    is the longest common subsequence over the whole text (not the sentence-split ``rougeLsum``,
    which needs NLTK's punkt download). With several references for an example, its score is the
    best one (``score_multi``: the reference with the highest F-measure, per ROUGE type). An empty
    prediction, or one with no tokens, scores 0.
    """
    from rouge_score import rouge_scorer

    _check_parallel("predictions", predictions, "references", references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_type: dict[str, list[float]] = {kind: [] for kind in ROUGE_TYPES}
    for prediction, answers in zip(predictions, _answer_lists(references)):
        scores = scorer.score_multi(answers, prediction)
        for kind in ROUGE_TYPES:
            per_type[kind].append(float(scores[kind].fmeasure))
    return {kind: _score(values) for kind, values in per_type.items()}


# ---------------------------------------------------------------- QA: exact match and token F1


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lower-case, drop ASCII punctuation, drop the articles a / an /
    the, and collapse whitespace to single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # SQuAD v2: 1 only when both are empty
        return float(pred_tokens == gold_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> Score:
    """1 when the normalized prediction equals a normalized gold answer (:func:`normalize_answer`),
    else 0; the best over an example's gold answers. An empty prediction matches only a gold answer
    that normalizes to the empty string."""
    _check_parallel("predictions", predictions, "references", references)
    return _score([max(float(normalize_answer(p) == normalize_answer(g)) for g in answers)
                   for p, answers in zip(predictions, _answer_lists(references))])


def token_f1(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> Score:
    """SQuAD token F1: the harmonic mean of precision and recall of the multiset of whitespace
    tokens shared by the normalized prediction and a normalized gold answer; the best over an
    example's gold answers. When either side has no tokens, 1 if both have none, else 0."""
    _check_parallel("predictions", predictions, "references", references)
    return _score([max(_token_f1(p, g) for g in answers)
                   for p, answers in zip(predictions, _answer_lists(references))])


# ---------------------------------------------------------------- multiple choice


def multiple_choice_accuracy(predicted_indices: Sequence[int], gold_indices: Sequence[int]) -> Score:
    """1 per example whose predicted option index equals the gold index, else 0 (an index that
    names no option, such as -1 for an unparsable answer, is simply wrong)."""
    _check_parallel("predicted_indices", predicted_indices, "gold_indices", gold_indices)
    return _score([float(int(p) == int(g)) for p, g in zip(predicted_indices, gold_indices)])


# ---------------------------------------------------------------- copying and compression


def words(text: str) -> list[str]:
    """The word tokens used by the copying metrics: the text lower-cased, split into maximal runs
    of Unicode letters and digits (punctuation, underscores and whitespace separate words, and are
    not words). ``"The U.S.-based firm's $5bn"`` gives ``the u s based firm s 5bn``. No stemming."""
    return _WORD_RE.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def compression_ratio(summaries: Sequence[str], sources: Sequence[str]) -> Score:
    """Per example, the number of source words divided by the number of summary words
    (:func:`words`); 4.0 means the summary is a quarter of the source's length. An empty summary
    has no ratio and scores 0."""
    _check_parallel("summaries", summaries, "sources", sources)
    values = []
    for summary, source in zip(summaries, sources):
        num_summary_words = len(words(summary))
        values.append(len(words(source)) / num_summary_words if num_summary_words else 0.0)
    return _score(values)


def _copied_share(summary: str, source: str, n: int) -> float | None:
    """The share of the summary's n-gram occurrences that occur anywhere in the source, or None
    when the summary has fewer than n words."""
    summary_ngrams = _ngrams(words(summary), n)
    if not summary_ngrams:
        return None
    source_ngrams = set(_ngrams(words(source), n))
    return sum(gram in source_ngrams for gram in summary_ngrams) / len(summary_ngrams)


def copy_rate(summaries: Sequence[str], sources: Sequence[str], n: int) -> Score:
    """Per example, the share of the summary's word n-grams (:func:`words`; every occurrence
    counts, repeats included) that occur anywhere in its own source. 1.0 for a summary copied
    verbatim from the source. A summary with fewer than n words has no n-grams and scores 0."""
    if n < 1:
        raise KdistillError(f"copy_rate: n must be at least 1, got {n}.")
    _check_parallel("summaries", summaries, "sources", sources)
    shares = [_copied_share(summary, source, n) for summary, source in zip(summaries, sources)]
    return _score([0.0 if share is None else share for share in shares])


def novel_ngram_share(summaries: Sequence[str], sources: Sequence[str], n: int) -> Score:
    """Per example, 1 − :func:`copy_rate`: the share of the summary's word n-grams that do not occur
    in its source. A summary with fewer than n words has no n-grams and scores 0 here as well
    (it neither copies nor invents anything)."""
    if n < 1:
        raise KdistillError(f"novel_ngram_share: n must be at least 1, got {n}.")
    _check_parallel("summaries", summaries, "sources", sources)
    shares = [_copied_share(summary, source, n) for summary, source in zip(summaries, sources)]
    return _score([0.0 if share is None else 1.0 - share for share in shares])


def copying(summaries: Sequence[str], sources: Sequence[str]) -> dict[str, Score]:
    """The compression ratio, and the copy rate and novel n-gram share for n = 1, 2, 3, keyed
    ``compression_ratio``, ``copy_rate_1`` … ``copy_rate_3``, ``novel_ngram_share_1`` … ``_3``."""
    scores = {"compression_ratio": compression_ratio(summaries, sources)}
    for n in COPY_NGRAM_SIZES:
        scores[f"copy_rate_{n}"] = copy_rate(summaries, sources, n)
        scores[f"novel_ngram_share_{n}"] = novel_ngram_share(summaries, sources, n)
    return scores
