"""FaithfulnessJudge: probabilities, batch parity, source truncation, and verbalizers that can't be told apart."""

import pytest
import torch

from conftest import FILLER, NEGATIVE, POSITIVE
from kdistill.errors import KdistillError
from kdistill.eval.judge import FaithfulnessJudge

# the judge's own prompt words, so the tiny model reads real tokens rather than [UNK]
JUDGE_WORDS = ["Article:", "Summary:", "Is", "every", "claim", "in", "summary", "supported", "by", "article?",
               "Answer", "Yes", "or", "No.", "Answer:", "No", "indeed"]
CHAT_TEMPLATE = ("{% for m in messages %}[BOS] {{ m['role'] }}: {{ m['content'] }} [EOS] {% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def _judge_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + JUDGE_WORDS + ["user:", "assistant:"]))
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", vocab["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]")


@pytest.fixture(scope="module")
def judge_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _judge_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config), tokenizer


SOURCES = ["the film was really great and the plot was quite moving",
           "a dull story",
           "the acting is awful and the movie is boring and tedious and the plot is clumsy and bland",
           "superb"]
SUMMARIES = ["a great film", "the story was dull and lifeless", "awful acting", "the movie was painful"]


def test_scores_are_probabilities_that_depend_on_the_pair(judge_lm):
    judge = FaithfulnessJudge(*judge_lm, name="tiny")
    scores = judge.scores(SOURCES, SUMMARIES)
    assert len(scores) == len(SOURCES) and all(0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) > 1


def test_score_is_the_renormalized_yes_no_probability_of_an_unpadded_forward(judge_lm):
    model, tokenizer = judge_lm
    judge = FaithfulnessJudge(model, tokenizer, name="tiny")
    ids = torch.tensor([judge.prompt_ids(SOURCES[0], SUMMARIES[0])])
    logits_v = model(input_ids=ids).logits[0, -1]  # (V,)
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "No"])
    expected = torch.softmax(logits_v[[yes, no]], -1)[0].item()
    assert judge.scores(SOURCES[:1], SUMMARIES[:1])[0] == pytest.approx(expected, abs=1e-5)


def test_batched_equals_one_at_a_time(judge_lm):
    batched = FaithfulnessJudge(*judge_lm, name="tiny", batch_size=3).scores(SOURCES, SUMMARIES)
    alone = FaithfulnessJudge(*judge_lm, name="tiny", batch_size=1).scores(SOURCES, SUMMARIES)
    assert batched == pytest.approx(alone, abs=1e-5)


def test_the_source_is_cut_from_the_right_to_max_source_tokens(judge_lm):
    judge = FaithfulnessJudge(*judge_lm, name="tiny", max_source_tokens=5)
    long_source = "the film was really great and the plot was quite moving"
    assert judge.truncate_source(long_source) == "the film was really great"
    assert judge.truncate_source("a dull story") == "a dull story"
    cut, first_five = judge.scores([long_source, long_source + " but boring"], ["great", "great"]), \
        judge.scores(["the film was really great"], ["great"])
    assert cut == pytest.approx(first_five * 2, abs=1e-5)
    uncut = FaithfulnessJudge(*judge_lm, name="tiny").scores([long_source], ["great"])
    assert uncut[0] != pytest.approx(cut[0], abs=1e-5)


def test_verbalizers_with_the_same_first_token_are_refused(judge_lm, tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.raises(KdistillError, match="start with the same token"):
        FaithfulnessJudge(*judge_lm, name="tiny", verbalizers=(" Yes", " Yes indeed"))
    # a tokenizer that knows neither word reads both as [UNK]
    model = AutoModelForCausalLM.from_pretrained(tiny_models["lm"])
    with pytest.raises(KdistillError, match=r"tiny-lm.*\[UNK\]"):
        FaithfulnessJudge(model, AutoTokenizer.from_pretrained(tiny_models["lm"]), name="tiny-lm")


def test_multi_token_verbalizers_score_their_first_token(judge_lm):
    plain = FaithfulnessJudge(*judge_lm, name="tiny").scores(SOURCES, SUMMARIES)
    long_words = FaithfulnessJudge(*judge_lm, name="tiny", verbalizers=(" Yes indeed", " No")).scores(SOURCES, SUMMARIES)
    assert long_words == pytest.approx(plain, abs=1e-6)


def test_chat_template_wraps_the_question_as_a_user_message(judge_lm):
    model, tokenizer = judge_lm
    with pytest.raises(KdistillError, match="no chat template"):
        FaithfulnessJudge(model, tokenizer, name="tiny", use_chat_template=True)
    chat_tokenizer = _judge_tokenizer()
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    judge = FaithfulnessJudge(model, chat_tokenizer, name="tiny", use_chat_template=True)
    ids = judge.prompt_ids("a dull story", "dull")
    tokens = chat_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:2] == ["[BOS]", "user:"] and tokens[-2:] == ["[EOS]", "assistant:"] and tokens.count("[BOS]") == 1
    assert all(0 <= s <= 1 for s in judge.scores(SOURCES, SUMMARIES))
    described = judge.describe()
    assert described["chat_template"] and described["verbalizers"] == ["Yes", "No"]
    assert "not an NLI model" in described["note"] and described["model"] == "tiny"


def test_describe_names_the_prompt_and_verbalizers(judge_lm):
    described = FaithfulnessJudge(*judge_lm, name="tiny").describe()
    assert described["prompt"].endswith("Answer Yes or No.\nAnswer:") and "{source}" in described["prompt"]
    assert described["verbalizers"] == [" Yes", " No"] and described["max_source_tokens"] == 768
