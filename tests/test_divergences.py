"""Divergence identities, sparse = dense at k = V, chunked = unchunked, masking, and no NaN at the extremes."""

import functools

import pytest
import torch
import torch.nn.functional as F

from kdistill.errors import KdistillError
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.divergences import _KINDS, DIVERGENCES, SparseTargets, divergence, token_mean
from kdistill.losses.terms import cross_entropy

KINDS = list(DIVERGENCES)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def _logits_pair(n=12, v=50, seed=0, dtype=torch.float64):
    return _randn(n, v, seed=seed, scale=2.0, dtype=dtype), _randn(n, v, seed=seed + 1, scale=2.0, dtype=dtype)


def _value_and_grad(fn, *leaves):
    """fn's per-token values, and the gradients of a random weighting of them (so per-token grads count)."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    values = fn(*leaves)
    (values * _randn(values.shape[0], seed=99, dtype=values.dtype)).sum().backward()
    return values.detach(), [x.grad for x in leaves]


def test_registry_lists_every_kind_and_misspellings_get_a_suggestion():
    assert set(DIVERGENCES) == set(_KINDS)
    student, teacher = _logits_pair()
    with pytest.raises(KdistillError, match="Did you mean 'reverse_kl'"):
        divergence(student, teacher, kind="reverse_kld")
    with pytest.raises(KdistillError, match="beta"):
        divergence(student, teacher, kind="jsd", beta=1.5)


@pytest.mark.parametrize("kind", KINDS)
def test_nonnegative_and_zero_at_identical_inputs(kind):
    student, teacher = _logits_pair()
    for temperature in (1.0, 2.0):
        assert (divergence(student, teacher, kind=kind, temperature=temperature) >= 0).all()
        same = divergence(student, student.clone(), kind=kind, temperature=temperature)
        assert same.abs().max() < 1e-12
        own_top_k = SparseTargets.from_logits(student, 7, temperature=temperature)
        assert divergence(student, own_top_k, kind=kind, temperature=temperature).abs().max() < 1e-12


def test_forward_and_reverse_kl_equal_torch_kl_div_without_t_squared():
    student, teacher = _logits_pair()
    for temperature in (1.0, 2.0, 4.5):
        logq = F.log_softmax(student / temperature, -1)
        logp = F.log_softmax(teacher / temperature, -1)
        forward = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
        reverse = F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(divergence(student, teacher, kind="forward_kl", temperature=temperature),
                                   forward, rtol=1e-6, atol=0)
        torch.testing.assert_close(divergence(student, teacher, kind="reverse_kl", temperature=temperature),
                                   reverse, rtol=1e-6, atol=0)


def test_jsd_beta_is_the_teacher_weight_with_the_two_kls_as_end_points():
    student, teacher = _logits_pair()
    jsd = functools.partial(divergence, student, teacher, kind="jsd", temperature=2.0)
    forward = divergence(student, teacher, kind="forward_kl", temperature=2.0)
    reverse = divergence(student, teacher, kind="reverse_kl", temperature=2.0)
    torch.testing.assert_close(jsd(beta=0.0), forward, rtol=0, atol=0)
    torch.testing.assert_close(jsd(beta=1.0), reverse, rtol=0, atol=0)
    # continuous: the end points are the limits, not special values
    torch.testing.assert_close(jsd(beta=1e-6), forward, rtol=1e-4, atol=0)
    torch.testing.assert_close(jsd(beta=1 - 1e-6), reverse, rtol=1e-4, atol=0)
    # symmetric at beta = 0.5
    torch.testing.assert_close(jsd(beta=0.5), divergence(teacher, student, kind="jsd", beta=0.5, temperature=2.0))


def test_jsd_is_the_gkd_formula_divided_by_beta_one_minus_beta():
    student, teacher = _logits_pair()
    beta = 0.3
    logq, logp = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    mixture = (beta * logp.exp() + (1 - beta) * logq.exp()).log()
    gkd = (beta * F.kl_div(mixture, logp, log_target=True, reduction="none").sum(-1)
           + (1 - beta) * F.kl_div(mixture, logq, log_target=True, reduction="none").sum(-1))
    torch.testing.assert_close(divergence(student, teacher, kind="jsd", beta=beta) * beta * (1 - beta), gkd)


def test_skew_zero_is_the_plain_kl_and_skew_one_is_zero():
    student, teacher = _logits_pair()
    for skewed, plain in (("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")):
        torch.testing.assert_close(divergence(student, teacher, kind=skewed, skew=0.0),
                                   divergence(student, teacher, kind=plain))
        assert divergence(student, teacher, kind=skewed, skew=1.0).abs().max() < 1e-12
    # DistiLLM's definition, written out in probability space
    p, q = F.softmax(teacher, -1), F.softmax(student, -1)
    torch.testing.assert_close(divergence(student, teacher, kind="skew_reverse_kl", skew=0.1),
                               (q * (q / (0.1 * q + 0.9 * p)).log()).sum(-1))


def test_tvd_is_half_the_l1_distance():
    student, teacher = _logits_pair()
    expected = 0.5 * (F.softmax(teacher / 3, -1) - F.softmax(student / 3, -1)).abs().sum(-1)
    torch.testing.assert_close(divergence(student, teacher, kind="tvd", temperature=3.0), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_with_k_equal_v_equals_dense_in_value_and_gradient(kind):
    student, teacher = _logits_pair(v=40)
    for stored_temperature, temperature in ((1.0, 1.0), (1.0, 2.0), (2.0, 0.5)):
        sparse = SparseTargets.from_logits(teacher, 40, temperature=stored_temperature)
        assert torch.isneginf(sparse.tail_logmass).all()
        call = functools.partial(divergence, kind=kind, temperature=temperature, beta=0.3, skew=0.2)
        dense_value, (dense_grad,) = _value_and_grad(lambda s: call(s, teacher), student)
        sparse_value, (sparse_grad,) = _value_and_grad(lambda s: call(s, sparse), student)
        torch.testing.assert_close(sparse_value, dense_value, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_compares_the_tempered_distributions_aggregated_to_top_k_plus_tail(kind):
    """Exact for k < V when the teacher's tail is uniform, the case the re-tempering assumes."""
    student, teacher = _logits_pair(v=60)
    teacher[:, :8] = teacher[:, :8].abs()  # tokens 0..7 are the top-k, the other 52 share the tail evenly
    teacher[:, 8:] = -1.0
    sparse = SparseTargets.from_logits(teacher, 8, temperature=1.0)

    def aggregated(logits, temperature):  # (N, 9) log-probs: the 8 ids, then everything else
        logp = F.log_softmax(logits / temperature, -1)
        return torch.cat([logp.gather(-1, sparse.token_ids), logp[:, 8:].logsumexp(-1, keepdim=True)], -1)

    for temperature in (1.0, 2.5, 0.7):
        expected = divergence(aggregated(student, temperature), aggregated(teacher, temperature), kind=kind)
        torch.testing.assert_close(divergence(student, sparse, kind=kind, temperature=temperature), expected)


def test_sparse_targets_reject_inconsistent_shapes():
    with pytest.raises(KdistillError, match="tail_logmass"):
        SparseTargets(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), torch.zeros(5))


def _loss_fns():
    """Every divergence with a dense and a sparse teacher, and plain CE, as (name, loss_fn, targets)."""
    n, v = 10, 30
    teacher = _randn(n, v, seed=5, scale=2.0)
    cases = [("ce", cross_entropy, torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(3)))]
    for kind in KINDS:
        loss_fn = functools.partial(divergence, kind=kind, temperature=2.0, beta=0.3, skew=0.2)
        cases += [(f"{kind}-dense", loss_fn, teacher),
                  (f"{kind}-sparse", loss_fn, SparseTargets.from_logits(teacher, 6, temperature=1.0))]
    return cases


@pytest.mark.parametrize("name,loss_fn,targets", _loss_fns(), ids=[c[0] for c in _loss_fns()])
def test_chunked_equals_unchunked_in_value_and_gradient(name, loss_fn, targets):
    hidden, lm_head = _randn(10, 8, seed=1), _randn(30, 8, seed=2)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    for mask_n in (None, mask):
        def unchunked(h, w):
            values = loss_fn(h @ w.T, targets)
            return values if mask_n is None else torch.where(mask_n, values, 0.0)

        expected, expected_grads = _value_and_grad(unchunked, hidden, lm_head)
        for chunk_tokens in (1, 3, 64):
            chunked = functools.partial(chunked_token_loss, targets=targets, loss_fn=loss_fn,
                                        chunk_tokens=chunk_tokens, mask_n=mask_n)
            value, grads = _value_and_grad(lambda h, w: chunked(h, w), hidden, lm_head)
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
            for grad, expected_grad in zip(grads, expected_grads):
                torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_rows_change_neither_value_nor_gradient_of_the_others(kind):
    student, teacher = _logits_pair(n=6, v=20)
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    garbage_student, garbage_teacher = student.clone(), teacher.clone()
    garbage_student[~mask] = float("nan")
    garbage_teacher[~mask] = float("-inf")  # an all -inf padding row: log_softmax of it is nan
    call = functools.partial(divergence, kind=kind, mask_n=mask, temperature=2.0)
    value, (grad,) = _value_and_grad(lambda s: call(s, teacher), student)
    garbage_value, (garbage_grad,) = _value_and_grad(lambda s: call(s, garbage_teacher), garbage_student)
    torch.testing.assert_close(garbage_value, value, rtol=0, atol=0)
    torch.testing.assert_close(garbage_grad, grad, rtol=0, atol=0)
    assert (value[~mask] == 0).all() and (grad[~mask] == 0).all()
    # and through the chunked head: a masked row's hidden state gets no gradient, lm_head none from it
    hidden, lm_head = _randn(6, 4, seed=7), _randn(20, 4, seed=8)
    chunked = functools.partial(chunked_token_loss, targets=teacher, chunk_tokens=4, mask_n=mask,
                                loss_fn=functools.partial(divergence, kind=kind))
    _, (grad_hidden, grad_head) = _value_and_grad(chunked, hidden, lm_head)
    _, (_, kept_only_head) = _value_and_grad(lambda h, w: chunked(h, w) * mask, hidden, lm_head)
    assert (grad_hidden[~mask] == 0).all()
    torch.testing.assert_close(grad_head, kept_only_head)


@pytest.mark.parametrize("kind", KINDS)
def test_finite_for_extreme_logits_and_zero_probability_targets(kind):
    student = torch.tensor([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 1e4, -1e4], [0.0, 0.0, 0.0, 0.0]])
    teachers = {
        "extreme": torch.tensor([[-1e4, 1e4, 0.0, 0.0], [1e4, -1e4, -1e4, 1e4], [1e4, 0.0, -1e4, 0.0]]),
        "zero-probability": torch.tensor([[0.0, float("-inf"), float("-inf"), 1.0],
                                          [float("-inf"), 0.0, 2.0, float("-inf")],
                                          [0.0, float("-inf"), float("-inf"), float("-inf")]]),
    }
    for name, teacher in teachers.items():
        for target in (teacher, SparseTargets.from_logits(teacher, 2), SparseTargets.from_logits(teacher, 4)):
            for temperature in (1.0, 2.0):
                value, (grad,) = _value_and_grad(
                    lambda s: divergence(s, target, kind=kind, temperature=temperature, beta=0.3), student)
                assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (name, temperature)
                assert (value >= 0).all()


def test_low_precision_logits_are_upcast():
    student, teacher = _logits_pair(dtype=torch.float32)
    for kind in KINDS:
        value = divergence(student.bfloat16(), teacher.bfloat16(), kind=kind)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, divergence(student.bfloat16().float(), teacher.bfloat16().float(), kind=kind))


def test_token_mean_divides_by_kept_tokens_or_the_steps_count():
    values = torch.tensor([1.0, 2.0, float("inf"), 3.0])
    mask = torch.tensor([True, True, False, True])
    assert token_mean(values, mask) == 2.0
    assert token_mean(values, mask, num_tokens=6) == 1.0
    assert token_mean(torch.tensor([1.0, 3.0])) == 2.0
    assert token_mean(values, torch.zeros(4, dtype=torch.bool)) == 0.0


def _counting(loss_fn, calls):
    def counted(logits, targets):
        calls.append(logits.shape[0])
        return loss_fn(logits, targets)
    return counted


@pytest.mark.parametrize("teacher_kind", ["dense", "sparse"])
def test_chunked_forward_kl_equals_f_kl_div_in_fp32_within_1e_6(teacher_kind):
    """The closed form the chunked loss uses for forward KL against F.kl_div on full logits, in float32, at a
    realistic vocabulary: value and both gradients within 1e-6 relative (norm of the difference / norm). Chunks of
    a few rows only: one-row chunks go through BLAS's matrix-vector kernel, whose float32 sums over V round
    differently (1.1e-6 here; F.kl_div itself is 3.5e-7 from the float64 result)."""
    n, v, h = 48, 5000, 32
    hidden, lm_head = _randn(n, h, seed=1, dtype=torch.float32), _randn(v, h, seed=2, scale=0.3, dtype=torch.float32)
    teacher_logits = _randn(n, v, seed=3, scale=2.0, dtype=torch.float32)
    teacher = teacher_logits if teacher_kind == "dense" else SparseTargets.from_logits(teacher_logits, v)  # k = V

    def reference(hd, w):
        return F.kl_div((hd @ w.T).log_softmax(-1), teacher_logits.log_softmax(-1), log_target=True,
                        reduction="none").sum(-1).mean()

    leaves = [x.clone().requires_grad_() for x in (hidden, lm_head)]
    expected = reference(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves)
    for chunk_tokens in (16, 32, 64):
        value = token_mean(chunked_token_loss(*leaves, teacher, functools.partial(divergence, kind="forward_kl"),
                                              chunk_tokens=chunk_tokens))
        grads = torch.autograd.grad(value, leaves)
        assert abs(value.item() - expected.item()) <= 1e-6 * abs(expected.item())
        for grad, expected_grad in zip(grads, expected_grads):
            assert ((grad - expected_grad).norm() / expected_grad.norm()).item() <= 1e-6


def test_the_backward_recomputes_nothing_when_the_values_are_weighted_as_declared():
    """A mean (or the declared grad_weight_n times any one factor) is the fast path: the loss runs once per chunk.
    Any other weighting is still exact: the backward recomputes the lm_head gradient (a second run per chunk)."""
    n, v = 10, 30
    hidden, lm_head, teacher = _randn(n, 8, seed=1), _randn(v, 8, seed=2), _randn(n, v, seed=5)
    weight = _randn(n, seed=6).abs() + 0.1
    kd = functools.partial(divergence, kind="jsd", beta=0.3)
    full = kd(hidden @ lm_head.T, teacher)
    cases = [(None, lambda values: 3.0 * values.mean(), 4),
             (weight, lambda values: -2.0 * (weight * values).sum(), 4),
             (None, lambda values: (weight * values).sum(), 8)]
    for grad_weight, reduce, expected_calls in cases:
        calls = []
        leaves = [x.clone().requires_grad_() for x in (hidden, lm_head)]
        values = chunked_token_loss(*leaves, teacher, _counting(kd, calls), chunk_tokens=3, grad_weight_n=grad_weight)
        reduce(values).backward()
        assert len(calls) == expected_calls
        ref_leaves = [x.clone().requires_grad_() for x in (hidden, lm_head)]
        reduce(kd(ref_leaves[0] @ ref_leaves[1].T, teacher)).backward()
        torch.testing.assert_close(values.detach(), full, rtol=1e-10, atol=1e-12)
        for leaf, ref in zip(leaves, ref_leaves):
            torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_chunked_loss_without_grad_gives_the_values_and_keeps_no_buffers():
    hidden, lm_head, teacher = _randn(10, 8, seed=1), _randn(30, 8, seed=2), _randn(10, 30, seed=5)
    kd = functools.partial(divergence, kind="forward_kl", temperature=2.0)
    with torch.no_grad():
        values = chunked_token_loss(hidden.requires_grad_(), lm_head, teacher, kd, chunk_tokens=4)
    assert values.grad_fn is None
    torch.testing.assert_close(values, kd(hidden.detach() @ lm_head.T, teacher), rtol=1e-10, atol=1e-12)
