"""Generation for teachers and students: batching does not change greedy outputs, a seed reproduces a
sample, and the cost harness counts what was generated."""

from __future__ import annotations

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.models.generate import generate, generation_cost, paired_fixed_length_cost

PROMPTS = ["the film was", "a story about the plot and the acting", "really", "the movie is quite"]


@pytest.fixture(scope="module")
def tiny_lm(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_models["lm"]), AutoTokenizer.from_pretrained(tiny_models["lm"])


def test_batched_greedy_equals_one_prompt_at_a_time_in_input_order(tiny_lm):
    model, tokenizer = tiny_lm
    side = tokenizer.padding_side
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    alone = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == alone
    assert all(1 <= g.num_tokens <= 6 for g in batched)
    assert tokenizer.padding_side == side  # the caller's tokenizer is left as it was


def test_a_sample_is_reproduced_by_its_seed_and_changed_by_another(tiny_lm):
    model, tokenizer = tiny_lm
    sample = lambda seed: generate(model, tokenizer, PROMPTS, max_new_tokens=8, do_sample=True, temperature=1.5,
                                   seed=seed)
    first = sample(3)
    torch.manual_seed(123)  # whatever ran before does not matter
    assert sample(3) == first
    assert sample(4) != first


def test_cost_harness_times_each_output_and_counts_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    cost = generation_cost(model, tokenizer, PROMPTS, max_new_tokens=5)
    expected_tokens = sum(g.num_tokens for g in generate(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=1))
    assert cost["outputs"] == 4 and cost["generated_tokens"] == expected_tokens
    assert 0 < cost["seconds_p50"] <= cost["seconds_p95"] and cost["tokens_per_s"] > 0
    with pytest.raises(KdistillError, match="max_new_tokens"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=0)


def test_stop_strings_end_an_output_and_are_cut_off(tiny_lm):
    from kdistill.models.generate import cut_at_stop

    assert cut_at_stop("A sentence.Human: more", ["\n", "Human:"]) == "A sentence."
    assert cut_at_stop("one\ntwo Human: x", ["Human:", "\n"]) == "one"  # the earliest stop, whichever it is
    assert cut_at_stop("nothing to cut", ["Human:"]) == "nothing to cut"
    model, tokenizer = tiny_lm
    free = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=8, batch_size=1)[0]
    words = free.text.split()
    assert len(words) >= 3, free  # the tiny model writes on; stop at its second word
    stopped = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=8, batch_size=1, stop=[words[1]])[0]
    assert stopped.text == free.text[:free.text.find(words[1])] and stopped.num_tokens < free.num_tokens


def test_fixed_length_timing_writes_exactly_the_asked_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    cost = generation_cost(model, tokenizer, PROMPTS[:2], max_new_tokens=5, fixed_length=True)
    assert cost["generated_tokens"] == 2 * 5 and cost["outputs"] == 2


def test_paired_timing_takes_each_prompt_on_both_models_and_gives_the_median_ratio(tiny_lm, monkeypatch):
    import kdistill.models.generate as gen

    model, tokenizer = tiny_lm
    slow = torch.nn.Linear(1, 1)  # the reference: the same model behind a clock that runs 3x as long for it
    clock = {"now": 0.0}
    monkeypatch.setattr(gen.time, "perf_counter", lambda: clock["now"])
    real_generate = gen.generate

    def ticking(m, *args, **kwargs):
        clock["now"] += 3.0 if m is slow else 1.0
        return real_generate(model, *args, **kwargs)

    monkeypatch.setattr(gen, "generate", ticking)
    cost = paired_fixed_length_cost(model, tokenizer, (slow, tokenizer), PROMPTS[:3], max_new_tokens=4)
    assert cost["outputs"] == 3 and cost["generated_tokens"] == 3 * 4, "every output exactly max_new_tokens long"
    assert cost["speedups"] == [3.0, 3.0, 3.0] and cost["speedup_median"] == 3.0
    assert cost["tokens_per_s"] == pytest.approx(4.0) and cost["reference_tokens_per_s"] == pytest.approx(4.0 / 3)


def test_generation_ends_at_any_end_token_the_pad_and_each_configured_eos(tiny_lm):
    """A Qwen2.5 instruct model converted from GGUF knows only <|im_end|> as EOS; students that wrote its
    <|endoftext|> (the pad token) went on past the summary, the boundary invisible in the decoded text."""
    import copy

    from kdistill.models.generate import end_token_ids

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    film = tokenizer.convert_tokens_to_ids("film")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, film]
    assert end_token_ids(model, tokenizer) == sorted({tokenizer.eos_token_id, tokenizer.pad_token_id, film})
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    model.lm_head = head
    for always in (tokenizer.pad_token_id, film):  # the model writes this token whatever it reads
        with torch.no_grad():
            head.bias.zero_()
            head.bias[always] = 10.0
        [g] = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6)
        assert g.num_tokens == 1 and g.text == ("" if always == tokenizer.pad_token_id else "film")
        [timed] = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, min_new_tokens=6)
        assert timed.num_tokens == 6  # fixed-length timing holds every end token back
