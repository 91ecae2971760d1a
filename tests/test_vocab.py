"""Vocabulary alignment: padded logit widths are aligned, real differences of vocabulary are refused."""

from __future__ import annotations

import pytest
import torch

from conftest import _tokenizer
from kdistill.errors import KdistillError
from kdistill.vocab import align_vocab


def _with_extra_tokens(tokens: list[str]):
    """The test tokenizer with added tokens at the end, like a model that grew its vocabulary."""
    tokenizer = _tokenizer("lm")
    tokenizer.add_tokens(tokens)
    return tokenizer


def _renumbered():
    """Same words, different ids: the first two ordinary tokens swap places."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(_tokenizer("lm").get_vocab())
    first, second = sorted(vocab, key=vocab.get)[6:8]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def test_same_tokenizer_with_padded_widths_aligns_to_the_narrower_width():
    teacher, student = _tokenizer("lm"), _tokenizer("lm")
    num_tokens = len(teacher)
    alignment = align_vocab(teacher, student, num_tokens + 24, num_tokens + 8, teacher_name="big", student_name="small")
    assert alignment.shared_size == num_tokens + 8
    assert alignment.num_tokens == num_tokens
    teacher_logits_nv, student_logits_nv = torch.randn(3, num_tokens + 24), torch.randn(3, num_tokens + 8)
    assert alignment.slice_teacher(teacher_logits_nv).shape == alignment.slice_student(student_logits_nv).shape


def test_slicing_keeps_exactly_the_shared_ids_in_order():
    tokenizer = _tokenizer("lm")
    alignment = align_vocab(tokenizer, tokenizer, 64, 48, teacher_name="t", student_name="s")
    ids_v = torch.arange(64.0)  # each logit holds its own token id
    assert alignment.slice_teacher(ids_v).tolist() == list(range(48))
    assert alignment.slice(ids_v[:48]).tolist() == list(range(48))
    assert torch.equal(alignment.slice(torch.arange(64.0).expand(2, 5, 64)), torch.arange(48.0).expand(2, 5, 48))


def test_slicing_refuses_logits_of_another_width():
    tokenizer = _tokenizer("lm")
    alignment = align_vocab(tokenizer, tokenizer, 64, 48, teacher_name="t", student_name="s")
    with pytest.raises(KdistillError, match="teacher t has 64 logits"):
        alignment.slice_teacher(torch.zeros(2, 48))
    with pytest.raises(KdistillError, match="neither the teacher's"):
        alignment.slice(torch.zeros(2, 2))  # e.g. label-space logits


def test_different_tokenizers_raise_naming_both_models_and_the_routes_that_work():
    teacher, student = _tokenizer("lm"), _renumbered()
    size = len(teacher)
    with pytest.raises(KdistillError) as caught:
        align_vocab(teacher, student, size, size, teacher_name="org/teacher-7b", student_name="org/student-1b")
    message = str(caught.value)
    assert "'org/teacher-7b'" in message and "'org/student-1b'" in message
    assert "2 token ids differ" in message and "id 6:" in message
    assert "label space" in message and "sequence level" in message


def test_a_token_on_one_side_only_is_a_difference_even_inside_both_widths():
    teacher = _with_extra_tokens(["<tool_call>"])
    student = _tokenizer("lm")
    width = len(teacher) + 7  # both padded past the teacher's extra token
    with pytest.raises(KdistillError, match=r"1 token ids differ \(id \d+: '<tool_call>' vs \(none\)\)"):
        align_vocab(teacher, student, width, width, teacher_name="t", student_name="s")


def test_teacher_tokens_beyond_the_student_width_raise():
    teacher = _with_extra_tokens(["<a>", "<b>"])
    student = _tokenizer("lm")
    expected = r"2 real tokens at ids beyond the \d+ logits of student 's'.*'<a>'.*would cut off"
    with pytest.raises(KdistillError, match=expected):
        align_vocab(teacher, student, len(teacher), len(student), teacher_name="t", student_name="s")


def test_student_tokens_beyond_the_teacher_width_raise():
    """The teacher could neither read such a token in the student's input nor score it."""
    teacher, student = _tokenizer("lm"), _with_extra_tokens(["<new>"])
    with pytest.raises(KdistillError, match=r"1 token ids differ \(id \d+: \(none\) vs '<new>'\)"):
        align_vocab(teacher, student, len(teacher), len(student), teacher_name="t", student_name="s")


def test_unrelated_tokenizers_are_reported_as_different_not_as_cut_off():
    teacher = _with_extra_tokens(["<a>", "<b>"])  # also wider than the student
    with pytest.raises(KdistillError, match="have different tokenizers"):
        align_vocab(teacher, _renumbered(), len(teacher), len(teacher) - 2, teacher_name="t", student_name="s")


def test_tokenizer_ids_beyond_the_logits_are_ignored():
    """Gemma-3 style: a tokenizer entry the model has no logit for can never be predicted by either model."""
    teacher = _with_extra_tokens(["<image_soft_token>"])
    student = _tokenizer("lm")
    alignment = align_vocab(teacher, student, len(student), len(student), teacher_name="t", student_name="s")
    assert alignment.shared_size == alignment.num_tokens == len(student)
