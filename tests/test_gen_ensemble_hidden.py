"""Generation tasks with several teachers: the per-token mixture's identities and its agreement with the dense
mixture."""

from __future__ import annotations

import pytest
import torch

from kdistill.losses.divergences import SparseTargets
from kdistill.teachers.ensemble import token_confidence_weights, token_mixture


# ------------------------------------------------------------------ the mixture as a tensor function
def _rows(num_tokens: int, vocab_size: int, k: int, seed: int) -> SparseTargets:
    gen = torch.Generator().manual_seed(seed)
    return SparseTargets.from_logits(3 * torch.randn(num_tokens, vocab_size, generator=gen, dtype=torch.float64), k)


def _dense(rows: SparseTargets, vocab_size: int) -> torch.Tensor:
    """(N, V) probabilities with the tail spread evenly over the unseen ids: the completion the mixture assumes."""
    k = rows.token_ids.shape[1]
    spread_n = rows.tail_logmass.exp() / (vocab_size - k) if vocab_size > k else torch.zeros(len(rows.tail_logmass))
    dense_nv = spread_n.to(torch.float64)[:, None].expand(-1, vocab_size).clone()
    return dense_nv.scatter(-1, rows.token_ids, rows.logprobs.to(torch.float64).exp())


def _total_logmass(rows: SparseTargets) -> torch.Tensor:
    return torch.cat([rows.logprobs, rows.tail_logmass[:, None]], -1).logsumexp(-1)


def test_the_mixture_of_two_identical_members_is_the_member():
    member = _rows(20, 30, 6, seed=0)
    mixed = token_mixture([member, member], torch.tensor([0.3, 0.7], dtype=torch.float64), k=6, vocab_size=30)
    assert torch.equal(mixed.token_ids, member.token_ids)
    torch.testing.assert_close(mixed.logprobs, member.logprobs)
    torch.testing.assert_close(mixed.tail_logmass, member.tail_logmass)


def test_weights_one_and_zero_give_the_first_member():
    first, second = _rows(20, 30, 6, seed=0), _rows(20, 30, 6, seed=1)
    mixed = token_mixture([first, second], torch.tensor([1.0, 0.0]), k=6, vocab_size=30)
    assert torch.equal(mixed.token_ids.sort(-1).values, first.token_ids.sort(-1).values)
    torch.testing.assert_close(_dense(mixed, 30), _dense(first, 30))


@pytest.mark.parametrize("seed", range(4))
def test_with_k_equal_to_the_vocabulary_the_mixture_is_the_dense_mixture_of_the_softmaxes(seed):
    vocab_size = 11
    gen = torch.Generator().manual_seed(100 + seed)
    logits = [3 * torch.randn(7, vocab_size, generator=gen, dtype=torch.float64) for _ in range(3)]
    weights_nk = torch.rand(7, 3, generator=gen, dtype=torch.float64)  # per-token weights, not normalized
    mixed = token_mixture([SparseTargets.from_logits(z, vocab_size) for z in logits], weights_nk, k=vocab_size,
                          vocab_size=vocab_size)
    weights_nk = weights_nk / weights_nk.sum(-1, keepdim=True)
    expected_nv = sum(w_n[:, None] * z.softmax(-1) for w_n, z in zip(weights_nk.T, logits))
    torch.testing.assert_close(_dense(mixed, vocab_size), expected_nv)
    assert torch.isneginf(mixed.tail_logmass).all()


@pytest.mark.parametrize("seed", range(4))
def test_with_k_below_the_vocabulary_the_mixture_keeps_the_top_k_of_the_completed_members(seed):
    """Members of different k: the kept ids are the k most probable of sum_i w_i (completed p_i), their values
    are that mixture's, and the tail is the rest, so the rows stay a distribution."""
    vocab_size, k = 25, 5
    members = [_rows(9, vocab_size, 4, seed=seed), _rows(9, vocab_size, 7, seed=50 + seed)]
    weights_k = torch.tensor([0.6, 0.4], dtype=torch.float64)
    mixed = token_mixture(members, weights_k, k=k, vocab_size=vocab_size)
    dense_nv = sum(w * _dense(m, vocab_size) for w, m in zip(weights_k, members))
    torch.testing.assert_close(mixed.logprobs.exp(), dense_nv.gather(-1, mixed.token_ids))
    torch.testing.assert_close(mixed.logprobs.exp().sum(-1), dense_nv.topk(k, -1).values.sum(-1))  # ties aside
    torch.testing.assert_close(_total_logmass(mixed), torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    assert all(len(set(row.tolist())) == k for row in mixed.token_ids)


def test_confidence_weights_are_each_teachers_top_probability_at_each_token():
    members = [_rows(5, 12, 3, seed=0), _rows(5, 12, 4, seed=1)]
    expected = torch.stack([m.logprobs.exp().amax(-1) for m in members], -1)
    torch.testing.assert_close(token_confidence_weights(members), expected)
