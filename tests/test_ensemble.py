"""Several teachers: the mixture's identities, learned weights, per-example weights that never peek at
test labels, and a run whose report card shows every teacher, the ensemble and the student."""

import json

import torch

from kdistill import api
from kdistill.data import prepare_data
from kdistill.teachers.ensemble import confidence_weights, fit_weights, gold_agreement_weights, mixture
from kdistill.teachers.signal import teacher_signal


def _members(n=50, k=2, labels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, labels, generator=gen, dtype=torch.float64).log_softmax(-1)


def test_mixture_identities():
    logprobs_knl = _members()
    one_hot = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(50, -1)
    torch.testing.assert_close(mixture(logprobs_knl, one_hot), logprobs_knl[0])
    same = torch.stack([logprobs_knl[0], logprobs_knl[0]])
    torch.testing.assert_close(mixture(same, torch.rand(50, 2, dtype=torch.float64)), logprobs_knl[0])
    mixed = mixture(logprobs_knl, torch.ones(50, 2, dtype=torch.float64))
    torch.testing.assert_close(mixed.exp(), logprobs_knl.exp().mean(0))
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(50, dtype=torch.float64))


def test_mixture_of_zero_probability_labels_stays_finite():
    a = torch.tensor([[[0.0, float("-inf")]], [[float("-inf"), 0.0]]])  # two sure teachers that disagree
    mixed = mixture(a, torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(mixed.exp(), torch.tensor([[0.5, 0.5]]))
    assert torch.isfinite(mixture(a, torch.tensor([[1.0, 0.0]]))[:, 0]).all()


def test_learned_weights_prefer_the_teacher_that_is_right():
    gen = torch.Generator().manual_seed(1)
    gold = torch.randint(0, 3, (200,), generator=gen)
    good = torch.nn.functional.one_hot(gold, 3).double() * 3.0
    noise = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    weights = fit_weights(torch.stack([noise.log_softmax(-1), (good + 0.3 * noise).log_softmax(-1)]), gold)
    assert abs(weights.sum().item() - 1) < 1e-6
    assert weights[1] > 0.8


def test_per_example_weights():
    logprobs_knl = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.6, 0.4], [0.2, 0.8]]]).log()  # (K=2, N=2, L=2)
    torch.testing.assert_close(confidence_weights(logprobs_knl), torch.tensor([[0.9, 0.6], [0.5, 0.8]]))
    gold, has_gold = torch.tensor([1, 0]), torch.tensor([True, False])
    weights = gold_agreement_weights(logprobs_knl, gold, has_gold)
    torch.testing.assert_close(weights[0], torch.tensor([0.1, 0.4]))  # p(gold) where the label may be used
    torch.testing.assert_close(weights[1], torch.tensor([0.5, 0.8]))  # confidence where it may not


def _two_teachers(tiny_config, tiny_models, combine="learned"):
    return tiny_config(teachers=[{"model": str(tiny_models["encoder"]), "name": "encoder-ft", "finetune": True,
                                  "finetune_epochs": 2, "finetune_learning_rate": 1e-3, "batch_size": 8}],
                       ensemble={"combine": combine}, evaluation={"seeds": [0], "baselines": False})


def test_gold_agreement_never_looks_at_test_labels(tiny_config, tiny_models):
    cfg = _two_teachers(tiny_config, tiny_models, combine="gold_agreement")
    data = prepare_data(cfg.data, cfg.task)
    signal = teacher_signal(cfg, data, progress=False)
    test_ids = [e.id for e in data.test]
    members_knl = torch.stack([t.rows(test_ids) for t in signal.members.values()])
    torch.testing.assert_close(signal.targets.rows(test_ids), mixture(members_knl, confidence_weights(members_knl)))


def test_two_teachers_run_end_to_end(tiny_config, tiny_models):
    cfg = _two_teachers(tiny_config, tiny_models)
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"teacher", "teacher:lm", "teacher:encoder-ft", "student_distilled"}
    weights = models["teacher"]["ensemble"]["weights"]
    assert set(weights) == {"lm", "encoder-ft"} and abs(sum(weights.values()) - 1) < 1e-6
    assert models["teacher"]["cost"]["parameters"] == (models["teacher:lm"]["cost"]["parameters"]
                                                       + models["teacher:encoder-ft"]["cost"]["parameters"])
    assert models["teacher:encoder-ft"]["prompt"]["finetuned"] is True
    report = (run_dir / "report.md").read_text()
    for row in ("teachers' ensemble (learned)", "teacher lm", "teacher encoder-ft", "student, distilled"):
        assert row in report
    # each member has its own store entry: dropping a teacher asks nobody again
    entries = set((run_dir / "teacher_cache").glob("*/manifest.json"))
    single = api._config(cfg)
    from dataclasses import replace

    api.elicit(replace(single, teachers=[]), progress=False)
    assert set((run_dir / "teacher_cache").glob("*/manifest.json")) == entries
