"""Scoring a model's generated outputs, and the rows of a generative run's report card.

    score_generations(outputs, sources=..., references=..., evaluate_as="summary") -> {metric: float}
    summarize_seeds({seed: {metric: float}})                 -> {metric: {"mean", "std"}}
    copy_gap(teacher_outputs, [seed outputs], sources)       -> points above the teacher's copy rate, 95% CI
    comparison_rows(results["models"], evaluate_as="summary") -> [row]   one per model, teacher first

Every metric name and its meaning is in :data:`METRICS`; the report prints them from there. Quality is
scored against the references, never the source (see :mod:`kdistill.eval.text_metrics`); copying is scored
against the source, beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdistill.errors import KdistillError
from kdistill.eval import text_metrics as gen_metrics

EVALUATE_AS = ("summary", "qa")
HEADLINE = {"summary": "rougeL", "qa": "token_f1"}
"""The one metric the card ranks models by, per kind of task."""

METRICS = {
    "rouge1": "ROUGE-1 F-measure against the reference (unigram overlap, stemmed)",
    "rouge2": "ROUGE-2 F-measure against the reference (bigram overlap, stemmed)",
    "rougeL": "ROUGE-L F-measure against the reference (longest common subsequence, stemmed)",
    "exact_match": "share of answers equal to a gold answer after SQuAD normalization",
    "token_f1": "SQuAD token F1 against the best-matching gold answer",
    "similarity": "mean cosine of output and (first) reference embeddings under the similarity scorer",
    "faithfulness": "mean probability, by the faithfulness judge, that the article supports the summary",
    "compression_ratio": "source words per summary word",
    "copy_rate_1": "share of summary words found in the source",
    "copy_rate_2": "share of summary word bigrams found in the source",
    "copy_rate_3": "share of summary word trigrams found in the source",
    "novel_ngram_share_1": "share of summary words not in the source",
    "novel_ngram_share_2": "share of summary word bigrams not in the source",
    "novel_ngram_share_3": "share of summary word trigrams not in the source",
    "output_words": "mean words per output",
}
"""Every metric `score_generations` can return, in the order the report shows them."""

MODEL_ORDER = ("teacher", "student_untrained", "student_sequence_kd", "student_distilled")


def _check_evaluate_as(evaluate_as: str) -> None:
    if evaluate_as not in EVALUATE_AS:
        raise KdistillError(f"evaluate_as must be one of {list(EVALUATE_AS)}; found {evaluate_as!r}.")


def _first_references(references: Sequence[str | Sequence[str]]) -> list[str]:
    return [r if isinstance(r, str) else r[0] for r in references]


def score_generations(outputs: Sequence[str], *, sources: Sequence[str], references: Sequence[str | Sequence[str]],
                      evaluate_as: str, similarity=None, judge=None) -> dict[str, float]:
    """The mean of every metric of :data:`METRICS` that applies, over the examples.

    ``sources`` are the articles (``summary``) or the questions (``qa``); ``references`` one text or a
    list of acceptable texts per example. ``similarity`` (a :class:`~kdistill.eval.similarity.SimilarityScorer`)
    adds ``similarity``; ``judge`` (a :class:`~kdistill.eval.judge.FaithfulnessJudge`) adds ``faithfulness``,
    for summaries only. Copying metrics are for summaries only: an answer is meant to be short and new.
    """
    _check_evaluate_as(evaluate_as)
    if not outputs:
        raise KdistillError("score_generations was given no outputs; there is nothing to score.")
    if not len(outputs) == len(sources) == len(references):
        raise KdistillError(f"outputs, sources and references must be parallel; found {len(outputs)}, "
                            f"{len(sources)} and {len(references)}.")
    if judge is not None and evaluate_as != "summary":
        raise KdistillError("a faithfulness judge scores a summary against its article, and evaluate_as='qa' has "
                            "no article; pass judge=None.")
    scores = {kind: s.mean for kind, s in gen_metrics.rouge(outputs, references).items()}
    if evaluate_as == "qa":
        scores["exact_match"] = gen_metrics.exact_match(outputs, references).mean
        scores["token_f1"] = gen_metrics.token_f1(outputs, references).mean
    if similarity is not None:
        scores["similarity"] = statistics.fmean(similarity.similarity(list(outputs), _first_references(references)))
    if judge is not None:
        scores["faithfulness"] = statistics.fmean(judge.scores(list(sources), list(outputs)))
    if evaluate_as == "summary":
        scores |= {name: s.mean for name, s in gen_metrics.copying(outputs, sources).items()}
    scores["output_words"] = statistics.fmean(len(gen_metrics.words(o)) for o in outputs)
    return {name: scores[name] for name in METRICS if name in scores}


def summarize_seeds(per_seed: dict[int | str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (0 for one seed) of each metric every seed has."""
    if not per_seed:
        raise KdistillError("summarize_seeds was given no seeds; train at least one.")
    runs = list(per_seed.values())
    names = [name for name in runs[0] if all(name in run for run in runs)]
    return {name: {"mean": statistics.fmean(run[name] for run in runs),
                   "std": statistics.stdev(run[name] for run in runs) if len(runs) > 1 else 0.0} for name in names}


def copy_gap(teacher_outputs: Sequence[str], seed_outputs: Sequence[Sequence[str]], sources: Sequence[str], *,
             n: int = 2, resamples: int = 10_000) -> dict[str, Any]:
    """How many points a student's n-gram copy rate is above the teacher's, paired by source.

    Per source, the student's copy rate (mean over its seeds' outputs) minus the teacher's; the figure is
    the mean of those differences, in points (100 × share), with a 95% percentile bootstrap interval over
    the sources (seeded, so the same outputs give the same interval; None for fewer than 2 sources).
    The mean equals the difference of the two models' mean copy rates; the interval says how much of it
    the choice of test articles could move.
    """
    from scipy.stats import bootstrap

    if not seed_outputs:
        raise KdistillError("copy_gap was given no student outputs; pass one list of outputs per seed.")
    teacher = gen_metrics.copy_rate(teacher_outputs, sources, n).per_example
    per_seed = [gen_metrics.copy_rate(outputs, sources, n).per_example for outputs in seed_outputs]
    differences = [100 * (statistics.fmean(seeds) - t) for t, seeds in zip(teacher, zip(*per_seed))]
    interval = None
    if len(differences) >= 2:
        found = bootstrap((np.asarray(differences),), np.mean, n_resamples=resamples, confidence_level=0.95,
                          method="percentile", random_state=0).confidence_interval
        interval = [float(found.low), float(found.high)]
    return {"ngram": n, "points": statistics.fmean(differences), "ci95": interval, "sources": len(differences),
            "seeds": len(per_seed)}


def _mean_std(entry: dict[str, Any], name: str) -> tuple[float | None, float]:
    """A model's metric: the mean and std over seeds, or its single value and 0; None when it has none."""
    if "summary" in entry:
        stats = entry["summary"].get(name)
        return (None, 0.0) if stats is None else (stats["mean"], stats["std"])
    return entry["metrics"].get(name), 0.0


def _ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is 0."""
    return None if value is None or not reference else value / reference


def _pct(value: float | None, reference: float | None) -> float | None:
    ratio = _ratio(value, reference)
    return None if ratio is None else 100 * ratio


def ordered_models(models: dict[str, Any]) -> list[str]:
    """The model keys in the card's order: :data:`MODEL_ORDER`, then any other in its own order."""
    return [k for k in MODEL_ORDER if k in models] + [k for k in models if k not in MODEL_ORDER]


def comparison_rows(models: dict[str, Any], *, evaluate_as: str) -> list[dict[str, Any]]:
    """One row per model (teacher, untrained, sequence-level KD, distilled, then any other): the headline
    metric (:data:`HEADLINE`) mean ± std and faithfulness, each as a % of the teacher's; speed-ups
    (the model's tokens/s over the teacher's, at a fixed output length when the cost has it, as the median
    over prompts of that ratio when each prompt was timed on the model and right after on the teacher; and
    the teacher's seconds per output p50 over the model's); parameters. Without a teacher, the relative figures are None."""
    _check_evaluate_as(evaluate_as)
    headline = HEADLINE[evaluate_as]
    teacher = models.get("teacher")
    teacher_headline = _mean_std(teacher, headline)[0] if teacher else None
    teacher_faithfulness = _mean_std(teacher, "faithfulness")[0] if teacher else None
    teacher_cost = teacher["cost"] if teacher else {"tokens_per_s": None, "seconds_p50": None}
    fair = "fixed_length_tokens_per_s" if all("fixed_length_tokens_per_s" in models[k]["cost"] for k in models) \
        else "tokens_per_s"  # a results.json written before fixed-length timing compares the outputs' own speeds
    rows = []
    for key in ordered_models(models):
        entry, cost = models[key], models[key]["cost"]
        paired = fair != "tokens_per_s" and "fixed_length_speedup_median" in cost
        value, std = _mean_std(entry, headline)
        faithfulness, faithfulness_std = _mean_std(entry, "faithfulness")
        rows.append({
            "model": key, "name": entry["name"], "seeds": len(entry.get("seeds", {})) or None,
            "headline_metric": headline, "headline": value, "headline_std": std,
            "headline_retained_pct": _pct(value, teacher_headline),
            "faithfulness": faithfulness, "faithfulness_std": faithfulness_std,
            "faithfulness_retained_pct": _pct(faithfulness, teacher_faithfulness),
            "parameters": cost["parameters"], "tokens_per_s": cost["tokens_per_s"], "seconds_p50": cost["seconds_p50"],
            "fixed_length_tokens_per_s": cost.get("fixed_length_tokens_per_s"),
            "speedup_tokens_per_s": (cost["fixed_length_speedup_median"] if paired
                                     else _ratio(cost[fair], teacher_cost.get(fair))),
            "speedup_at_fixed_length": fair != "tokens_per_s",
            "speedup_paired_median": paired,
            "speedup_seconds_p50": _ratio(teacher_cost["seconds_p50"], cost["seconds_p50"]),
        })
    return rows
