"""score_generations, summarize_seeds, comparison_rows: properties of the scores and of the card's rows."""

import statistics

import pytest

from kdistill.errors import KdistillError
from kdistill.eval.generation import METRICS, MODEL_ORDER, comparison_rows, copy_gap, score_generations, summarize_seeds

SOURCES = ["The council approved a new park on Monday after a long debate. Building starts in May.",
           "Shares in the carmaker fell sharply after it warned that profits would halve this year."]
REFERENCES = ["Council approves new park, building from May.", "Carmaker shares fall on profit warning."]


class FakeScorer:
    def __init__(self):
        self.calls = []

    def similarity(self, a, b):
        self.calls.append((a, b))
        return [0.5 if x == y else 0.25 for x, y in zip(a, b)]


class FakeJudge:
    def __init__(self):
        self.calls = []

    def scores(self, sources, summaries):
        self.calls.append((sources, summaries))
        return [0.9, 0.3]


def test_copying_the_source_is_all_copy_and_no_compression():
    scores = score_generations(SOURCES, sources=SOURCES, references=REFERENCES, evaluate_as="summary")
    for n in (1, 2, 3):
        assert scores[f"copy_rate_{n}"] == 1.0 and scores[f"novel_ngram_share_{n}"] == 0.0
    assert scores["compression_ratio"] == 1.0
    # quality is against the references, so the copied source does not score as a perfect summary
    assert scores["rougeL"] < 0.6


def test_a_perfect_prediction_gets_rouge_1():
    scores = score_generations(REFERENCES, sources=SOURCES, references=REFERENCES, evaluate_as="summary")
    assert scores["rouge1"] == scores["rouge2"] == scores["rougeL"] == 1.0
    assert scores["output_words"] == statistics.fmean([7, 6])
    assert "exact_match" not in scores and "faithfulness" not in scores and "similarity" not in scores


def test_qa_scores_answers_against_any_gold_and_skips_copying():
    questions = ["Which city hosts the Louvre?", "Who wrote Hamlet?"]
    scores = score_generations(["paris", "The Bard"], sources=questions,
                               references=[["Paris", "Paris, France"], ["Shakespeare", "William Shakespeare"]],
                               evaluate_as="qa")
    assert scores["exact_match"] == 0.5 and scores["token_f1"] == 0.5 and scores["rouge1"] == 0.5
    assert not any(name.startswith(("copy_rate", "novel", "compression")) for name in scores)


def test_every_returned_metric_is_documented_and_in_the_documented_order():
    scores = score_generations(REFERENCES, sources=SOURCES, references=REFERENCES, evaluate_as="summary",
                               similarity=FakeScorer(), judge=FakeJudge())
    assert list(scores) == [name for name in METRICS if name in scores]
    assert set(METRICS) - set(scores) == {"exact_match", "token_f1"}


def test_similarity_compares_to_the_first_reference_and_the_judge_reads_source_then_summary():
    scorer, judge = FakeScorer(), FakeJudge()
    outputs = ["Council approves new park, building from May.", "something else"]
    scores = score_generations(outputs, sources=SOURCES, references=[[REFERENCES[0], "x"], REFERENCES[1]],
                               evaluate_as="summary", similarity=scorer, judge=judge)
    assert scorer.calls == [(outputs, REFERENCES)] and scores["similarity"] == pytest.approx(0.375)
    assert judge.calls == [(SOURCES, outputs)] and scores["faithfulness"] == pytest.approx(0.6)


def test_mistakes_are_sentences():
    with pytest.raises(KdistillError, match="evaluate_as must be one of"):
        score_generations(REFERENCES, sources=SOURCES, references=REFERENCES, evaluate_as="summarise")
    with pytest.raises(KdistillError, match="parallel; found 2, 1 and 2"):
        score_generations(REFERENCES, sources=SOURCES[:1], references=REFERENCES, evaluate_as="summary")
    with pytest.raises(KdistillError, match="no article; pass judge=None"):
        score_generations(["a", "b"], sources=["q1", "q2"], references=["a", "b"], evaluate_as="qa", judge=FakeJudge())
    with pytest.raises(KdistillError, match="no outputs"):
        score_generations([], sources=[], references=[], evaluate_as="qa")


def test_summarize_seeds_gives_mean_and_sample_std_of_shared_metrics():
    summary = summarize_seeds({0: {"rougeL": 0.2, "faithfulness": 0.5}, 1: {"rougeL": 0.4}, 2: {"rougeL": 0.3}})
    assert list(summary) == ["rougeL"]
    assert summary["rougeL"]["mean"] == pytest.approx(0.3) and summary["rougeL"]["std"] == pytest.approx(0.1)
    assert summarize_seeds({"0": {"rougeL": 0.2}}) == {"rougeL": {"mean": 0.2, "std": 0.0}}


def _cost(tokens_per_s: float, seconds_p50: float, parameters: int) -> dict:
    return {"tokens_per_s": tokens_per_s, "seconds_p50": seconds_p50, "seconds_p95": 1.5 * seconds_p50,
            "parameters": parameters, "size_on_disk_bytes": None}


def _models() -> dict:
    return {
        "student_distilled": {"name": "small", "seeds": {"0": {}, "1": {}},
                              "summary": {"rougeL": {"mean": 0.3, "std": 0.02},
                                          "faithfulness": {"mean": 0.45, "std": 0.05}},
                              "cost": _cost(200.0, 0.5, 100)},
        "teacher": {"name": "big", "metrics": {"rougeL": 0.4, "faithfulness": 0.9}, "cost": _cost(50.0, 2.0, 1000)},
        "student_untrained": {"name": "small", "metrics": {"rougeL": 0.1}, "cost": _cost(180.0, 0.4, 100)},
    }


def test_comparison_rows_retention_and_speed_ups_relative_to_the_teacher():
    rows = {row["model"]: row for row in comparison_rows(_models(), evaluate_as="summary")}
    assert list(rows) == [k for k in MODEL_ORDER if k in rows], "teacher first, then the card's order"
    teacher, distilled, untrained = rows["teacher"], rows["student_distilled"], rows["student_untrained"]
    assert teacher["headline_retained_pct"] == 100.0 and teacher["faithfulness_retained_pct"] == 100.0
    assert teacher["speedup_tokens_per_s"] == 1.0 and teacher["speedup_seconds_p50"] == 1.0
    assert distilled["speedup_tokens_per_s"] == 4.0, "student tokens/s over the teacher's, not the inverse"
    assert distilled["speedup_seconds_p50"] == 4.0, "teacher seconds over the student's"
    assert distilled["headline_metric"] == "rougeL" and distilled["headline_retained_pct"] == pytest.approx(75.0)
    assert (distilled["headline"], distilled["headline_std"], distilled["seeds"]) == (0.3, 0.02, 2)
    assert distilled["faithfulness_retained_pct"] == pytest.approx(50.0) and distilled["parameters"] == 100
    assert untrained["faithfulness"] is None and untrained["faithfulness_retained_pct"] is None
    assert untrained["seeds"] is None and untrained["headline_std"] == 0.0


def test_a_paired_timing_gives_the_median_of_its_per_prompt_ratios_as_the_speed_up():
    models = _models()
    for key, fixed in (("teacher", 40.0), ("student_distilled", 160.0), ("student_untrained", 150.0)):
        models[key]["cost"]["fixed_length_tokens_per_s"] = fixed
    # one prompt was timed while the machine was busy: the ratio over the totals (160 / 32 = 5) would follow it
    models["student_distilled"]["cost"] |= {"teacher_fixed_length_tokens_per_s": 32.0,
                                            "fixed_length_speedups": [2.5, 2.7, 9.0],
                                            "fixed_length_speedup_median": 2.7}
    rows = {row["model"]: row for row in comparison_rows(models, evaluate_as="summary")}
    distilled, untrained = rows["student_distilled"], rows["student_untrained"]
    assert distilled["speedup_tokens_per_s"] == 2.7 and distilled["speedup_paired_median"]
    assert untrained["speedup_tokens_per_s"] == 150.0 / 40.0 and not untrained["speedup_paired_median"]


def test_comparison_rows_cope_without_a_teacher_and_use_token_f1_for_qa():
    models = _models()
    del models["teacher"]
    models["student_untrained"]["metrics"] = {"token_f1": 0.2}
    rows = comparison_rows(models, evaluate_as="qa")
    assert [r["model"] for r in rows] == ["student_untrained", "student_distilled"]
    assert rows[0]["headline_metric"] == "token_f1" and rows[0]["headline"] == 0.2
    assert rows[1]["headline"] is None, "a model without the headline metric shows none, not a crash"
    assert all(r["headline_retained_pct"] is None and r["speedup_tokens_per_s"] is None for r in rows)


def test_copy_gap_is_the_paired_mean_over_seeds_with_a_reproducible_interval_around_it():
    from kdistill.eval.text_metrics import copy_rate

    sources = [f"the {w} council approved a new park on monday after a debate" for w in ("city", "town", "village",
                                                                                      "county", "borough", "shire")]
    teacher = ["council approves park", "a park is planned", "new park after long talks", "the council agreed",
               "park approved", "debate ends in a yes"]
    seed_a = ["the town council approved a new park", "council approved a new park on monday", teacher[2],
              "approved a new park", "a park", "monday after a debate"]
    seed_b = ["council approves park", "approved a new park", "the council approved a new park on monday",
              "the council agreed", "park approved on monday after a debate", "a yes"]
    gap = copy_gap(teacher, [seed_a, seed_b], sources)
    expected = 100 * (statistics.fmean([copy_rate(seed_a, sources, 2).mean, copy_rate(seed_b, sources, 2).mean])
                      - copy_rate(teacher, sources, 2).mean)
    assert gap["points"] == pytest.approx(expected) and gap["points"] > 0
    assert gap["sources"] == 6 and gap["seeds"] == 2 and gap["ngram"] == 2
    low, high = gap["ci95"]
    assert low < gap["points"] < high, "the interval brackets the paired mean"
    assert copy_gap(teacher, [seed_a, seed_b], sources)["ci95"] == [low, high], "seeded: the same outputs, the same interval"
    # a student that writes the teacher's summaries copies exactly as much: 0 points, an interval of one value
    assert copy_gap(teacher, [teacher], sources) | {"ci95": None} == {"ngram": 2, "points": 0.0, "ci95": None,
                                                                      "sources": 6, "seeds": 1}
    assert copy_gap(teacher, [teacher], sources)["ci95"] == [0.0, 0.0]
    assert copy_gap(teacher[:1], [seed_a[:1]], sources[:1])["ci95"] is None, "one article has no interval"
    with pytest.raises(KdistillError, match="one list of outputs per seed"):
        copy_gap(teacher, [], sources)
