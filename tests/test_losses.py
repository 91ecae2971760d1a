"""Loss identities: our KL is torch's KL, alpha = 0 is plain CE, no NaN at the extremes."""

import torch
import torch.nn.functional as F

from kdistill.losses import cross_entropy, distillation_loss, kl_divergence


def test_kl_equals_torch_kl_div():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    teacher = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    for temperature in (1.0, 2.0, 4.5):
        ours = kl_divergence(student, F.log_softmax(teacher, -1), temperature=temperature)
        ref = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                       log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
        fp32 = kl_divergence(student.float(), F.log_softmax(teacher, -1).float(), temperature=temperature)
        torch.testing.assert_close(fp32, ref.float(), rtol=1e-5, atol=1e-6)


def test_kl_is_zero_for_identical_and_positive_otherwise():
    logits = torch.randn(8, 3)
    assert kl_divergence(logits, F.log_softmax(logits, -1)).abs().max() < 1e-6
    assert (kl_divergence(logits, F.log_softmax(torch.randn(8, 3), -1)) >= 0).all()


def test_alpha_zero_is_plain_cross_entropy():
    student, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    total, terms = distillation_loss(student, labels, torch.randn(10, 4).log_softmax(-1), alpha=0.0, temperature=3.0)
    torch.testing.assert_close(total, F.cross_entropy(student, labels, reduction="none"))
    assert set(terms) == {"ce"}


def test_mixture_weights_and_temperature_squared():
    student, labels = torch.randn(6, 3), torch.randint(0, 3, (6,))
    teacher = torch.randn(6, 3).log_softmax(-1)
    total, _ = distillation_loss(student, labels, teacher, alpha=0.25, temperature=2.0)
    expected = 0.75 * cross_entropy(student, labels) + 0.25 * 4.0 * kl_divergence(student, teacher, temperature=2.0)
    torch.testing.assert_close(total, expected)


def test_no_nan_for_extreme_logits_and_zero_probability_targets():
    student = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, float("-inf"), float("-inf")]])  # all mass on label 0
    loss = kl_divergence(student, teacher, temperature=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(student.grad).all()


def test_unlabelled_examples_are_taught_by_the_teacher_alone():
    student, labels = torch.randn(4, 3), torch.randint(0, 3, (4,))
    teacher = torch.randn(4, 3).log_softmax(-1)
    labelled = torch.tensor([True, False, True, False])
    total, terms = distillation_loss(student, labels, teacher, alpha=0.3, temperature=2.0, labelled_b=labelled)
    full, _ = distillation_loss(student, labels, teacher, alpha=0.3, temperature=2.0)
    torch.testing.assert_close(total[labelled], full[labelled])
    torch.testing.assert_close(total[~labelled], terms["kd"][~labelled])

