"""Evaluation: the collapse monitor (the seeds' "shortcutting" symptom)."""


def test_collapse_is_flagged_and_a_healthy_model_is_not():
    from kdistill.eval.labels import label_metrics

    labels = ["negative", "neutral", "positive"]
    gold = [0] * 40 + [1] * 40 + [2] * 20
    collapsed = label_metrics(gold, [0] * 90 + [2] * 10, labels)
    assert "90 % of predictions are 'negative'" in collapsed["collapse_warning"]
    never = label_metrics(gold, [0] * 45 + [1] * 45 + [0] * 10, labels)
    assert "['positive']" in never["collapse_warning"]
    assert label_metrics(gold, gold, labels)["collapse_warning"] is None


def test_a_skewed_set_flags_a_collapse_the_absolute_excess_would_miss():
    """Issue 23's user: 65/35 test labels, 85 % of answers to the majority: half the minority's answers taken."""
    from kdistill.eval.labels import label_metrics

    labels = ["negative", "positive"]
    gold = [1] * 65 + [0] * 35
    skewed = label_metrics(gold, [1] * 85 + [0] * 15, labels)
    assert "85 % of predictions are 'positive', which is 65 % of the test labels" in skewed["collapse_warning"]
    assert label_metrics(gold, [1] * 72 + [0] * 28, labels)["collapse_warning"] is None  # a mild lean is not
    assert label_metrics([0] * 50 + [1] * 50, [0] * 70 + [1] * 30, labels)["collapse_warning"] is None  # as before


def test_recalibration_recovers_a_timid_biased_teacher():
    """A teacher whose log-probs were squashed 5x and shifted towards label 1 is fitted back."""
    import torch
    import torch.nn.functional as F

    from kdistill.targets import TeacherTargets
    from kdistill.teachers.elicit import fit_recalibration

    gen = torch.Generator().manual_seed(0)
    gold = torch.randint(0, 2, (400,), generator=gen)
    sharp = torch.randn(400, 2, generator=gen) + 3.0 * F.one_hot(gold, 2)  # a confident, mostly right teacher
    timid = F.log_softmax(sharp / 5.0 + torch.tensor([0.0, 0.4]), dim=-1)
    temp_only = fit_recalibration(timid, gold, with_bias=False)
    assert temp_only.temperature < 0.5  # sharpened back
    assert temp_only.bias == [0.0, 0.0]
    fixed = temp_only.apply(TeacherTargets([str(i) for i in range(400)], timid)).values
    assert torch.equal(fixed.argmax(-1), timid.argmax(-1))  # a temperature never changes the answer
    assert F.nll_loss(fixed, gold) < F.nll_loss(timid, gold) - 0.1
    affine = fit_recalibration(timid, gold, with_bias=True)
    assert affine.bias[1] - affine.bias[0] < -0.5  # the lean towards label 1 is removed
    rebalanced = affine.apply(TeacherTargets([str(i) for i in range(400)], timid)).values.argmax(-1)
    assert (rebalanced == gold).float().mean() >= (timid.argmax(-1) == gold).float().mean()
