"""Label-space terms and the objective that weighs them: identities, masking, the balance surrogate."""

import pytest
import torch
import torch.nn.functional as F

from kdistill.config import BalanceTerm, CETerm, HiddenTerm, KDTerm, ObjectiveConfig
from kdistill.config.convert import from_dict
from kdistill.errors import KdistillError
from kdistill.losses.objective import HiddenTarget, Objective, StepTargets, layer_pairs, schedule_factor
from kdistill.losses.terms import (
    balance_surrogate,
    balance_value,
    cross_entropy,
    hidden_alignment,
    soft_label_loss,
    supervised_contrastive,
)
from kdistill.models.base import pool_states


def _batch(n=10, labels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(n, labels, generator=gen, dtype=torch.float64)
    teacher = torch.randn(n, labels, generator=gen, dtype=torch.float64).log_softmax(-1)
    return student, torch.randint(0, labels, (n,), generator=gen), teacher


def test_soft_label_loss_is_torch_kl_and_the_objective_alone_scales_it_by_t_squared():
    student, _, teacher = _batch()
    for temperature in (1.0, 2.0, 4.5):
        ours = soft_label_loss(student, teacher, temperature=temperature)
        ref = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                       log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
        objective = Objective(ObjectiveConfig(kd=KDTerm(weight=1.0, temperature=temperature)))
        torch.testing.assert_close(objective.scaled_kd(ours), temperature**2 * ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"])
def test_every_divergence_is_a_soft_label_loss(kind):
    student, _, teacher = _batch()
    values = soft_label_loss(student, teacher, kind=kind, temperature=2.0)
    assert values.shape == (10,) and (values >= 0).all()
    assert soft_label_loss(teacher, teacher, kind=kind, temperature=2.0).abs().max() < 1e-6


def test_ce_only_objective_is_plain_cross_entropy():
    student, labels, teacher = _batch()
    objective = Objective(ObjectiveConfig(ce=CETerm(weight=1.0), kd=KDTerm(weight=0.0)))
    total, terms = objective(student, StepTargets(labels_b=labels))
    torch.testing.assert_close(total, F.cross_entropy(student, labels, reduction="none"))
    assert set(terms) == {"ce"}


def test_weighted_sum_of_ce_and_kd():
    student, labels, teacher = _batch()
    objective = Objective(ObjectiveConfig(ce=CETerm(weight=0.75), kd=KDTerm(weight=0.25, temperature=2.0)))
    total, _ = objective(student, StepTargets(labels_b=labels, teacher_logprobs_bl=teacher))
    expected = 0.75 * cross_entropy(student, labels) + 0.25 * 2.0**2 * soft_label_loss(student, teacher, temperature=2.0)
    torch.testing.assert_close(total, expected)


def test_unlabelled_examples_are_taught_by_the_teacher_alone():
    student, labels, teacher = _batch(4, 3)
    objective = Objective(ObjectiveConfig(ce=CETerm(weight=0.7), kd=KDTerm(weight=0.3)))
    labelled = torch.tensor([True, False, True, False])
    total, terms = objective(student, StepTargets(labels_b=labels, teacher_logprobs_bl=teacher, labelled_b=labelled))
    full, _ = objective(student, StepTargets(labels_b=labels, teacher_logprobs_bl=teacher))
    torch.testing.assert_close(total[labelled], full[labelled])
    torch.testing.assert_close(total[~labelled], terms["kd"][~labelled])  # CE's weight moved to KD: 0.7 + 0.3


def test_ce_averaged_over_labelled_examples_gives_the_labels_only_gold_signal():
    # a step of 4 with 1 gold label: averaged over the batch its CE counts 1/4; over the labelled, in full
    student, labels, teacher = _batch(4, 3)
    labelled = torch.tensor([True, False, False, False])
    objective = Objective(ObjectiveConfig(ce=CETerm(weight=0.5, average="labelled"), kd=KDTerm(weight=0.5)))
    plain, terms = objective(student, StepTargets(labels_b=labels, teacher_logprobs_bl=teacher, labelled_b=labelled))
    scaled, _ = objective(student, StepTargets(labels_b=labels, teacher_logprobs_bl=teacher, labelled_b=labelled,
                                               ce_scale=4.0))
    torch.testing.assert_close(scaled.sum() / 4, (0.5 * terms["ce"][0] + 0.5 * terms["kd"][0]) / 4
                               + 0.5 * 0.75 * terms["ce"][0] + plain[1:].sum() / 4)
    torch.testing.assert_close(scaled[1:], plain[1:])  # the teacher's share is unchanged
    with pytest.raises(KdistillError, match="ce.average"):
        from_dict(ObjectiveConfig, {"ce": {"average": "examples"}}, "objective")


@pytest.mark.parametrize("schedule,expected", [("constant", [1, 1, 1]), ("linear_warmup", [0, 0.5, 1]),
                                               ("linear_decay", [1, 0.5, 0]), ("cosine_decay", [1, 0.5, 0])])
def test_kd_schedules(schedule, expected):
    assert [schedule_factor(schedule, p) for p in (0.0, 0.5, 1.0)] == pytest.approx(expected, abs=1e-12)


def test_no_nan_for_extreme_logits_and_zero_probability_targets():
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, float("-inf"), float("-inf")]])  # all mass on label 0
    objective = Objective(ObjectiveConfig(balance=BalanceTerm(weight=1.0)))
    targets = StepTargets(labels_b=torch.tensor([0]), teacher_logprobs_bl=teacher,
                          balance_mean_probs_l=torch.softmax(student.detach(), -1).mean(0),
                          balance_target_l=torch.tensor([0.5, 0.3, 0.2]))
    total, terms = objective(student, targets)
    total.sum().backward()
    assert all(torch.isfinite(v).all() for v in terms.values())
    assert torch.isfinite(student.grad).all()


def test_balance_surrogate_has_the_full_batch_gradient_however_split():
    """The step's balance is KL(target || mean_i softmax(z_i)); split into micro-batches, the surrogates'
    gradients, summed and divided by the step's size, must equal autograd on the whole batch."""
    student, _, _ = _batch(12, 3)
    target = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    z = student.clone().requires_grad_(True)
    balance_value(torch.softmax(z, -1).mean(0), target).backward()
    mean = torch.softmax(student, -1).mean(0)
    for split in (1, 3, 12):
        w = student.clone().requires_grad_(True)
        for part in w.split(12 // split):
            (balance_surrogate(part, mean, target).sum() / 12).backward()
        torch.testing.assert_close(w.grad, z.grad, rtol=1e-10, atol=1e-12)


def test_balance_pushes_a_collapsed_student_towards_the_minority_label():
    z = torch.tensor([[3.0, 1.0, -2.0]] * 8, requires_grad=True)  # everything on label 0
    target = torch.tensor([0.42, 0.39, 0.19])
    balance_surrogate(z, torch.softmax(z.detach(), -1).mean(0), target).mean().backward()
    assert (z.grad[:, 2] < 0).all() and (z.grad[:, 0] > 0).all()  # descent raises label 2, lowers label 0
    assert balance_value(torch.softmax(z.detach(), -1).mean(0), target) > balance_value(target, target) + 0.5


def test_hidden_alignment_identities():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 2, 16, generator=gen), torch.randn(5, 2, 16, generator=gen)
    for loss in ("mse", "cosine"):
        assert hidden_alignment(a, a, loss=loss).abs().max() < 1e-5
        assert (hidden_alignment(a, b, loss=loss) > 0).all()
    # normalized: the teacher's scale does not matter
    torch.testing.assert_close(hidden_alignment(a, 300 * b), hidden_alignment(a, b), rtol=1e-4, atol=1e-5)  # up to eps
    unnormalized = hidden_alignment(a, b, normalize=False)
    torch.testing.assert_close(unnormalized, (a - b).square().mean(-1).mean(-1))


def test_hidden_term_trains_its_projection():
    cfg = ObjectiveConfig(hidden=HiddenTerm(weight=1.0))
    objective = Objective(cfg, hidden_targets=[HiddenTarget("t", [(1, 2), (2, 4)], 12)], student_width=8)
    student_hidden = torch.randn(4, 2, 8, requires_grad=True)
    targets = StepTargets(labels_b=torch.tensor([0, 1, 0, 1]), teacher_logprobs_bl=torch.randn(4, 2).log_softmax(-1),
                          teacher_hidden=[torch.randn(4, 2, 12)])
    total, terms = objective(torch.randn(4, 2), targets, student_hidden_bnd=student_hidden)
    total.sum().backward()
    assert "hidden" in terms and all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    assert student_hidden.grad.abs().sum() > 0


def test_hidden_term_against_several_teachers_is_the_mean_of_each_alignment():
    """Teachers of different depth and width: each has its own pairs and projections; the student's
    layers are pooled once (their union) and each teacher reads its own."""
    cfg = ObjectiveConfig(hidden=HiddenTerm(weight=1.0, loss="cosine"))
    wide, narrow = HiddenTarget("wide", [(1, 3), (3, 9)], 12), HiddenTarget("narrow", [(2, 2), (3, 4)], 6)
    objective = Objective(cfg, hidden_targets=[wide, narrow], student_width=8)
    assert objective.student_layers == [1, 2, 3]
    student_hidden = torch.randn(4, 3, 8, requires_grad=True)  # layers 1, 2, 3
    teacher_hidden = [torch.randn(4, 2, 12), torch.randn(4, 2, 6)]
    targets = StepTargets(labels_b=torch.tensor([0, 1, 0, 1]), teacher_logprobs_bl=torch.randn(4, 2).log_softmax(-1),
                          teacher_hidden=teacher_hidden)
    total, terms = objective(torch.randn(4, 2), targets, student_hidden_bnd=student_hidden)
    by_hand = []
    for k, (slots, projections) in enumerate(zip([[0, 2], [1, 2]], objective.projections)):
        projected = torch.stack([p(student_hidden[:, i]) for i, p in zip(slots, projections)], 1)
        by_hand.append(hidden_alignment(projected, teacher_hidden[k], loss="cosine"))
    torch.testing.assert_close(terms["hidden:wide"], by_hand[0])
    torch.testing.assert_close(terms["hidden:narrow"], by_hand[1])
    torch.testing.assert_close(terms["hidden"], (by_hand[0] + by_hand[1]) / 2)
    total.sum().backward()
    assert [tuple(p.weight.shape) for ps in objective.projections for p in ps] == [(12, 8)] * 2 + [(6, 8)] * 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())


def test_layer_maps():
    assert layer_pairs("uniform", 6, 18) == [(1, 3), (2, 6), (3, 9), (4, 12), (5, 15), (6, 18)]
    assert layer_pairs("last-2", 6, 18) == [(5, 17), (6, 18)]
    assert layer_pairs("every-2", 6, 12) == [(s, 2 * s) for s in range(1, 7)]
    assert layer_pairs("every-4", 6, 18) == [(1, 4), (2, 8), (3, 12), (4, 16)]
    assert layer_pairs([[0, 0], [6, 18]], 6, 18) == [(0, 0), (6, 18)]
    with pytest.raises(KdistillError, match=r"out of range.*0\.\.6.*0\.\.18"):
        layer_pairs([[7, 1]], 6, 18)
    with pytest.raises(KdistillError, match="not a layer map"):
        HiddenTerm(layers="middle")


def test_pool_states_left_and_right_padding():
    states = tuple(torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3) + 100 * i for i in range(3))
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    last = pool_states(states, right, [0, 2], "last")  # (B, n, D)
    assert last.shape == (2, 2, 3)
    torch.testing.assert_close(last[0, 0], states[0][0, 2])
    torch.testing.assert_close(last[1, 1], states[2][1, 3])
    torch.testing.assert_close(pool_states(states, left, [1], "last")[0, 0], states[1][0, 3])
    torch.testing.assert_close(pool_states(states, left, [1], "cls")[0, 0], states[1][0, 1])
    torch.testing.assert_close(pool_states(states, right, [0], "mean")[0, 0], states[0][0, :3].mean(0))


def _supcon_reference(z_bd, labels_b, temperature):
    """SupCon written out with loops, over the examples that have a label."""
    z_bd = F.normalize(z_bd, dim=-1)
    out = []
    for a in range(len(labels_b)):
        others = [j for j in range(len(labels_b)) if j != a and labels_b[j] >= 0]
        positives = [p for p in others if labels_b[p] == labels_b[a]]
        if labels_b[a] < 0 or not positives:
            out.append(torch.tensor(0.0, dtype=z_bd.dtype))
            continue
        denominator = torch.logsumexp(torch.stack([z_bd[a] @ z_bd[j] / temperature for j in others]), 0)
        out.append(-torch.stack([z_bd[a] @ z_bd[p] / temperature - denominator for p in positives]).mean())
    return torch.stack(out)


def test_supervised_contrastive_matches_its_definition_and_ignores_the_unlabelled():
    gen = torch.Generator().manual_seed(0)
    z_bd = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, -100, 1, 2, 0])  # label 2 has no positive: 0; -100 takes no part
    ours = supervised_contrastive(z_bd, labels, temperature=0.1)
    torch.testing.assert_close(ours, _supcon_reference(z_bd, labels, 0.1))
    assert ours[3] == 0 and ours[5] == 0
    ours.sum().backward()
    assert torch.isfinite(z_bd.grad).all() and z_bd.grad[3].abs().max() == 0  # an unlabelled row gets no gradient
    # nobody else taking part (a lone labelled example): 0, and a finite gradient
    lone = torch.randn(3, 4, requires_grad=True)
    supervised_contrastive(lone, torch.tensor([1, -100, -100]), temperature=0.1).sum().backward()
    assert torch.isfinite(lone.grad).all()


def test_contrastive_term_is_weighted_into_the_objective_and_kept_by_labels_only():
    from kdistill.config import ContrastiveTerm

    student, labels, teacher = _batch(6, 2)
    vectors = torch.randn(6, 8, dtype=torch.float64)
    cfg = ObjectiveConfig(contrastive=ContrastiveTerm(weight=0.3, labels="gold_and_teacher"))
    objective = Objective(cfg)
    targets = StepTargets(labels_b=labels, teacher_logprobs_bl=teacher, contrastive_labels_b=labels)
    total, terms = objective(student, targets, student_vector_bd=vectors)
    plain, _ = Objective(ObjectiveConfig())(student, targets)
    torch.testing.assert_close(total, plain + 0.3 * supervised_contrastive(vectors, labels, temperature=0.1))
    assert cfg.needs_teacher and cfg.labels_only().contrastive.weight == 0.3
    assert cfg.labels_only().contrastive.labels == "gold" and not cfg.labels_only().needs_teacher
