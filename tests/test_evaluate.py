"""Evaluation: the collapse monitor (the seeds' "shortcutting" symptom)."""


def test_collapse_is_flagged_and_a_healthy_model_is_not():
    from kdistill.evaluate import label_metrics

    labels = ["negative", "neutral", "positive"]
    gold = [0] * 40 + [1] * 40 + [2] * 20
    collapsed = label_metrics(gold, [0] * 90 + [2] * 10, labels)
    assert "90 % of predictions are 'negative'" in collapsed["collapse_warning"]
    never = label_metrics(gold, [0] * 45 + [1] * 45 + [0] * 10, labels)
    assert "['positive']" in never["collapse_warning"]
    assert label_metrics(gold, gold, labels)["collapse_warning"] is None
