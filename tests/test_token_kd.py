"""Token-level KD on target tokens only: the prompt is never a target, whatever the teacher says there."""

from __future__ import annotations

import pytest
import torch

from kdistill.config import CETerm, KDTerm, ObjectiveConfig
from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets
from kdistill.losses.objective import Objective
from kdistill.losses.token_kd import encode_targets, target_token_terms

PROMPTS = ["Article: the film was great and the plot moved.\nSummary:", "Question: was the movie good?\nAnswer:"]
TARGETS = [" great film", " yes it was"]


def target_token_loss(hidden_bth, lm_head_vh, batch, teacher=None, *, ce_weight: float, kd_weight: float,
                      temperature: float = 1.0, divergence_kind: str = "forward_kl", **kwargs):
    """A token step's (total_b, terms) as the one Objective weighs them: ce.weight * CE + kd.weight * T^2 * D."""
    objective = Objective(ObjectiveConfig(ce=CETerm(weight=ce_weight),
                                          kd=KDTerm(weight=kd_weight, temperature=temperature, divergence=divergence_kind)))
    raw = target_token_terms(hidden_bth, lm_head_vh, batch, teacher, ce=ce_weight > 0, kd=kd_weight > 0,
                             divergence_kind=divergence_kind, temperature=temperature, **kwargs)
    return objective.token_total(raw, kd_weight=kd_weight)


@pytest.fixture(scope="module")
def tiny_lm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_models["lm"]), AutoTokenizer.from_pretrained(tiny_models["lm"])


def _forward(model, batch):
    out = model.model(input_ids=batch.input_ids_bt, attention_mask=batch.attention_mask_bt)
    return out.last_hidden_state  # (B, T, H)


def test_the_loss_mask_covers_exactly_the_target_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    batch = encode_targets(tokenizer, PROMPTS, TARGETS, max_length=64)
    for b, target in enumerate(TARGETS):
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert batch.next_ids_bt[b][batch.loss_mask_bt[b]].tolist() == target_ids
    # too long: the prompt is cut from the left, the target stays whole
    short = encode_targets(tokenizer, PROMPTS[:1], TARGETS[:1], max_length=8)
    assert short.input_ids_bt.shape[1] == 8 and int(short.loss_mask_bt.sum()) == int(batch.loss_mask_bt[0].sum())
    with pytest.raises(KdistillError, match="does not fit"):
        encode_targets(tokenizer, PROMPTS[:1], [" a much longer target than fits here"], max_length=4)


def test_prompt_positions_carry_no_kd_and_their_teacher_logits_change_nothing(tiny_lm):
    model, tokenizer = tiny_lm
    batch = encode_targets(tokenizer, PROMPTS, TARGETS, max_length=64)
    vocab = model.config.vocab_size
    teacher = torch.randn(*batch.input_ids_bt.shape, vocab)  # (B, T, V) a live teacher
    scrambled = teacher.clone()
    outside = ~batch.loss_mask_bt
    scrambled[outside] = torch.randn(int(outside.sum()), vocab) * 50  # prompt and padding: anything at all
    scrambled[outside & (torch.rand(outside.shape) < 0.3)] = float("nan")

    def loss_and_grads(teacher_bt):
        model.zero_grad()
        total_b, terms = target_token_loss(_forward(model, batch), model.lm_head.weight, batch, teacher_bt,
                                           ce_weight=0.0, kd_weight=1.0, temperature=2.0, chunk_tokens=3)
        total_b.sum().backward()
        return total_b.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = loss_and_grads(teacher)
    loss_b, grads_b = loss_and_grads(scrambled)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    # the test is not vacuous: a target position's teacher logits do change the loss
    moved = teacher.clone()
    first_target = batch.loss_mask_bt[0].nonzero()[0, 0]
    moved[0, first_target] = torch.randn(vocab) * 5
    assert not torch.equal(loss_and_grads(moved)[0][0], loss_a[0])


def test_ce_on_targets_equals_transformers_loss_with_the_prompt_masked(tiny_lm):
    model, tokenizer = tiny_lm
    batch = encode_targets(tokenizer, PROMPTS[:1], TARGETS[:1], max_length=64)
    total_b, terms = target_token_loss(_forward(model, batch), model.lm_head.weight, batch,
                                       ce_weight=1.0, kd_weight=0.0)
    labels = torch.where(torch.roll(batch.loss_mask_bt, 1, dims=1), batch.input_ids_bt, -100)
    expected = model(input_ids=batch.input_ids_bt, attention_mask=batch.attention_mask_bt, labels=labels).loss
    torch.testing.assert_close(total_b[0], expected, rtol=1e-5, atol=1e-6)


def test_sparse_targets_per_target_token_equal_the_dense_teacher_at_k_equal_v(tiny_lm):
    model, tokenizer = tiny_lm
    batch = encode_targets(tokenizer, PROMPTS, TARGETS, max_length=64)
    teacher = torch.randn(*batch.input_ids_bt.shape, model.config.vocab_size)
    rows = teacher[batch.loss_mask_bt]  # (N, V) the cache keeps only target tokens' rows
    sparse = SparseTargets.from_logits(rows, k=model.config.vocab_size)
    hidden = _forward(model, batch).detach()
    dense_b, _ = target_token_loss(hidden, model.lm_head.weight, batch, teacher, ce_weight=0.5, kd_weight=0.5,
                                   divergence_kind="jsd")
    sparse_b, _ = target_token_loss(hidden, model.lm_head.weight, batch, sparse, ce_weight=0.5, kd_weight=0.5,
                                    divergence_kind="jsd")
    torch.testing.assert_close(sparse_b, dense_b, rtol=1e-5, atol=1e-6)
    with pytest.raises(KdistillError, match="same tokenizer"):
        target_token_loss(hidden, model.lm_head.weight, batch, sparse.rows(slice(0, 2)), ce_weight=0.0,
                          kd_weight=1.0)


def test_cached_token_targets_equal_the_live_teacher_one_example_at_a_time(tiny_lm):
    """Batched, left-aligned elicitation with logits_to_keep gives each example's target rows exactly as
    an unpadded forward of that example alone; at k = V the rows train the student like the live teacher."""
    from kdistill.models.token_rows import token_targets

    model, tokenizer = tiny_lm
    vocab = model.config.vocab_size
    rows = token_targets(model, tokenizer, PROMPTS, TARGETS, k=vocab, temperature=1.0, max_length=64, batch_size=2)
    for prompt, target, row in zip(PROMPTS, TARGETS, rows):
        alone = encode_targets(tokenizer, [prompt], [target], max_length=64)
        logits = model(input_ids=alone.input_ids_bt).logits[0][alone.loss_mask_bt[0]]  # (T_i, V)
        expected = SparseTargets.from_logits(logits, k=vocab)
        assert row.token_ids.shape == (int(alone.loss_mask_bt.sum()), vocab)
        torch.testing.assert_close(torch.from_numpy(row.logprobs), expected.logprobs.detach(), rtol=1e-4, atol=1e-5)
        assert torch.equal(torch.from_numpy(row.token_ids[:, 0]), expected.token_ids[:, 0])
    small = token_targets(model, tokenizer, PROMPTS, TARGETS, k=4, max_length=64)
    mass = torch.from_numpy(small[0].logprobs).exp().sum(-1) + torch.from_numpy(small[0].tail_logmass).exp()
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=1e-4, atol=1e-5)  # top-4 + tail = everything


def test_novel_token_weight_presses_on_the_tokens_the_target_does_not_copy(tiny_lm):
    from kdistill.losses.token_kd import novel_token_weights

    # by hand: prompt bigrams (1,2), (2,3), (3,4); target 3 4 9 2 3 EOS after the prompt's last token 4
    assert novel_token_weights([1, 2, 3, 4], [3, 4, 9, 2, 3, 0], 3.0, ends_with_eos=True).tolist() == \
        [3.0, 1.0, 3.0, 3.0, 1.0, 1.0]  # (4,3) new, (3,4) copied, (4,9) new, (9,2) new, (2,3) copied, EOS kept 1
    model, tokenizer = tiny_lm
    prompts, targets = PROMPTS, [" the film was great and new", " yes it was"]
    plain = encode_targets(tokenizer, prompts, targets, max_length=64)
    weighted = encode_targets(tokenizer, prompts, targets, max_length=64, novel_weight=4.0)
    assert plain.weight_bt is None and torch.equal(weighted.input_ids_bt, plain.input_ids_bt)
    assert bool((weighted.weight_bt[~weighted.loss_mask_bt] == 0).all())
    first = weighted.weight_bt[0][weighted.loss_mask_bt[0]]
    assert 1.0 in first.tolist() and 4.0 in first.tolist()  # the copied run weighs 1, " and new" more
    hidden = _forward(model, plain).detach()
    kwargs = dict(ce_weight=1.0, kd_weight=0.0)
    plain_b, _ = target_token_loss(hidden, model.lm_head.weight, plain, **kwargs)
    weighted_b, _ = target_token_loss(hidden, model.lm_head.weight, weighted, **kwargs)
    # each example's loss is its tokens' CE averaged with these weights
    logits = hidden[0][plain.loss_mask_bt[0]] @ model.lm_head.weight.T
    ce_n = torch.nn.functional.cross_entropy(logits, plain.next_ids_bt[0][plain.loss_mask_bt[0]], reduction="none")
    torch.testing.assert_close(weighted_b[0], (first * ce_n).sum() / first.sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain_b[0], ce_n.mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(weighted_b[0], plain_b[0])
    ones = encode_targets(tokenizer, prompts, targets, max_length=64)
    ones.weight_bt = ones.loss_mask_bt.float()  # all weights 1: exactly the unweighted loss
    assert torch.equal(target_token_loss(hidden, model.lm_head.weight, ones, **kwargs)[0], plain_b)


def _bpe_tokenizer(*, dummy_prefix: bool):
    """A small trained BPE, byte-level (Qwen, GPT-2: " Plans" and "Plans" are different tokens) or
    SentencePiece-like with a dummy prefix (Llama 2: every text starts as a new word by itself)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    if dummy_prefix:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
        tok.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    corpus = ["Summary: Plans to allow house arrest. Labour MPs vote.", "Plans to allow it.", "Answer: Paris"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[EOS]"],
                                                        initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")


def test_a_stripped_target_is_trained_as_the_prompts_continuation_with_its_space():
    """A teacher writes " Plans …" after "Summary:", the cache keeps "Plans …": the student must train on
    " Plans" (what it writes at generation), not on the word-start-less "Plans" (which taught run-together
    text), and a tokenizer that adds the space itself must not get two."""
    from kdistill.losses.token_kd import continuation, writes_its_own_space

    assert continuation("Summary:", "Plans to allow") == " Plans to allow"
    assert continuation("Summary: ", "Plans") == "Plans" and continuation("Summary:\n", "Plans") == "Plans"
    assert continuation("Summary:", " Plans") == " Plans" and continuation("Summary:", "\nPlans") == "\nPlans"
    assert continuation("", "Plans") == "Plans" and continuation("Summary:", "") == ""
    assert continuation("Summary:", "Plans", "") == "Plans"
    prompt, target = "Summary:", "Plans to allow house arrest. Labour MPs vote."
    for dummy_prefix in (False, True):
        tokenizer = _bpe_tokenizer(dummy_prefix=dummy_prefix)
        assert writes_its_own_space(tokenizer) is dummy_prefix
        batch = encode_targets(tokenizer, [prompt], [target], max_length=64)
        trained = batch.next_ids_bt[0][batch.loss_mask_bt[0]].tolist()
        assert trained[-1] == tokenizer.eos_token_id
        # the target tokens are those of the whole text "Summary: Plans …" after the prompt's
        whole = tokenizer(prompt + " " + target, add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert whole[:len(prompt_ids)] == prompt_ids and trained[:-1] == whole[len(prompt_ids):]
        first = tokenizer.convert_ids_to_tokens(trained[:1])[0]
        assert first in ("ĠPlans", "▁Plans"), first  # one word-start token, never a bare space token before it
        if not dummy_prefix:  # the bug this guards: the bare "Plans" is another token
            bare = tokenizer(target, add_special_tokens=False)["input_ids"]
            assert bare[0] != trained[0] and tokenizer.convert_ids_to_tokens(bare[:1])[0] == "Plans"


def test_a_token_step_backward_recomputes_no_chunk_and_equals_the_unchunked_loss(tiny_lm, monkeypatch):
    """Examples of different lengths (so per-token weights differ), CE + KD summed as the training loop sums
    them: each chunk's loss runs once (the forward forms its gradients) and the gradients equal the plain
    computation's on full logits."""
    import kdistill.losses.chunked as chunked
    from kdistill.losses.divergences import divergence
    from kdistill.losses.terms import cross_entropy

    model, tokenizer = tiny_lm
    batch = encode_targets(tokenizer, PROMPTS, [" great film with a plot that moved", " yes"], max_length=64)
    hidden = _forward(model, batch).detach()
    teacher = torch.randn(*batch.input_ids_bt.shape, model.config.vocab_size)
    calls = []
    value_and_grad = chunked._value_and_grad
    monkeypatch.setattr(chunked, "_value_and_grad", lambda *a, **k: calls.append(1) or value_and_grad(*a, **k))
    head = model.lm_head.weight.detach().clone().requires_grad_()
    leaf = hidden.clone().requires_grad_()
    total_b, _ = target_token_loss(leaf, head, batch, teacher, ce_weight=0.5, kd_weight=0.5, temperature=2.0,
                                   chunk_tokens=3)
    total_b.sum().backward()
    num_chunks = -(-int(batch.loss_mask_bt.sum()) // 3)
    assert len(calls) == 2 * num_chunks  # CE and KD, forward only

    ref_head, ref_leaf = head.detach().clone().requires_grad_(), hidden.clone().requires_grad_()
    mask = batch.loss_mask_bt
    logits_nv = ref_leaf[mask] @ ref_head.T
    ce_n = cross_entropy(logits_nv, batch.next_ids_bt[mask])
    kd_n = divergence(logits_nv, teacher[mask], kind="forward_kl", temperature=2.0)
    example_n = mask.nonzero()[:, 0]
    per_example = lambda values_n: torch.stack([values_n[example_n == b].mean() for b in range(2)])  # noqa: E731
    expected_b = 0.5 * per_example(ce_n) + 0.5 * 4.0 * per_example(kd_n)
    expected_b.sum().backward()
    torch.testing.assert_close(total_b.detach(), expected_b.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.grad, ref_head.grad, rtol=1e-5, atol=1e-7)
