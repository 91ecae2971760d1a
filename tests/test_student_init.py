"""Student initialization from a subset of the teacher's layers, on tiny random models of real families."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import make_texts, word_tokenizer
from kdistill.errors import KdistillError
from kdistill.losses.divergences import divergence
from kdistill.train import student_init
from kdistill.train.student_init import find_layer_list, layer_map, shrink_model

NUM_LAYERS = 6
GEMMA_LAYER_TYPES = ["sliding_attention", "full_attention", "full_attention",
                     "sliding_attention", "sliding_attention", "full_attention"]


def _causal_config(family: str, tokenizer):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=NUM_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "qwen2":  # layers 3.. use a 4-token sliding window
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    return Gemma3TextConfig(**common, head_dim=8, sliding_window=4, layer_types=GEMMA_LAYER_TYPES)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models: three causal-LM families, a base BERT encoder and a BERT classifier."""
    from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("sources")
    lm_tokenizer, encoder_tokenizer = word_tokenizer("lm"), word_tokenizer("encoder")
    paths = {}
    for seed, family in enumerate(["llama", "qwen2", "gemma3"]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_causal_config(family, lm_tokenizer))
        paths[family] = _save(model, lm_tokenizer, root / family)
    bert = BertConfig(vocab_size=len(encoder_tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=NUM_LAYERS, num_attention_heads=4, max_position_embeddings=64,
                      pad_token_id=encoder_tokenizer.pad_token_id, num_labels=3)
    torch.manual_seed(3)
    paths["bert"] = _save(BertModel(bert), encoder_tokenizer, root / "bert")
    paths["bert_classifier"] = _save(BertForSequenceClassification(bert), encoder_tokenizer, root / "bert_cls")
    return paths


def _load(path: Path, family: str):
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = {"bert": AutoModel, "bert_classifier": AutoModelForSequenceClassification}.get(family, AutoModelForCausalLM)
    return auto.from_pretrained(path).eval()


def _inputs(family: str, texts: list[str] | None = None) -> dict[str, torch.Tensor]:
    tokenizer = word_tokenizer("encoder" if family.startswith("bert") else "lm")
    texts = texts or ["the film was really great and the plot was fun", "a dull story"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


# --- layer_map ------------------------------------------------------------------------------------------

def test_every_k_takes_one_layer_out_of_k_from_the_first():
    assert layer_map(18, "every-2") == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert layer_map(12, "every-3") == [0, 3, 6, 9]
    assert layer_map(5, "every-1") == [0, 1, 2, 3, 4]


def test_uniform_spreads_from_first_to_last():
    assert layer_map(12, "uniform-6") == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice from BERT-base
    assert layer_map(18, "uniform-9") == [0, 2, 4, 6, 9, 11, 13, 15, 17]  # 8.5 rounds up
    assert layer_map(7, "uniform-1") == [6]
    assert layer_map(7, "uniform-7") == list(range(7))
    for num_layers in range(1, 30):
        for num_kept in range(1, num_layers + 1):
            kept = layer_map(num_layers, f"uniform-{num_kept}")
            assert len(set(kept)) == num_kept and kept == sorted(kept) and kept[-1] == num_layers - 1


def test_explicit_indices_are_sorted():
    assert layer_map(6, [5, 0, 2]) == [0, 2, 5]
    assert layer_map(6, "4, 1") == [1, 4]


@pytest.mark.parametrize("spec, message", [
    ([0, 6], r"\[6\] are out of range: the teacher has 6 layers, numbered 0 to 5"),
    ([1, 1, 2], r"\[1\] appear more than once"),
    ([], "the layer list is empty"),
    ([0.5], "whole numbers"),
    ("every-0", "at least 1"),
    ("uniform-7", "more layers than the teacher's 6"),
    ("first-3", "not understood; use 'every-K'"),
])
def test_bad_layer_specs_are_user_errors(spec, message):
    with pytest.raises(KdistillError, match=message):
        layer_map(6, spec)


# --- shrink_model: causal LMs ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_shrunk_causal_lm_loads_with_the_chosen_layers_weights(sources, tmp_path, family):
    out = shrink_model(sources[family], "every-2", tmp_path / "student")
    source, student = _load(sources[family], family), _load(out, family)
    kept = [0, 2, 4]
    assert student.config.num_hidden_layers == len(student.model.layers) == len(kept)
    _assert_weights_copied(source, student, "model.layers", kept)
    record = json.loads((out / "kdistill_init.json").read_text())
    assert record["source_layers_kept"] == kept and record["source_num_layers"] == NUM_LAYERS
    assert record["num_parameters"] == sum(p.numel() for p in student.parameters())
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_per_layer_config_lists_are_sliced_consistently(sources, tmp_path):
    gemma = _load(shrink_model(sources["gemma3"], [1, 3, 5], tmp_path / "gemma"), "gemma3")
    assert gemma.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert [layer.self_attn.sliding_window for layer in gemma.model.layers] == [None, 4, None]
    qwen = _load(shrink_model(sources["qwen2"], "every-2", tmp_path / "qwen"), "qwen2")
    assert qwen.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    assert qwen.config.max_window_layers == 2  # kept layers 0 and 2 lay below the source's 3


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_shrunk_model_computes_the_teacher_with_the_other_layers_skipped(sources, tmp_path, family):
    """The reference skips layers inside the teacher itself: forward() reads each layer's mask and rotary
    embedding from config.layer_types[i], so the layers and that list are subset together."""
    source, kept = _load(sources[family], family), [0, 3, 5]
    reference = copy.deepcopy(source)
    reference.model.layers = torch.nn.ModuleList(reference.model.layers[i] for i in kept)
    reference.config.num_hidden_layers = len(kept)
    if family != "llama":
        reference.config.layer_types = [source.config.layer_types[i] for i in kept]
    student = _load(shrink_model(sources[family], kept, tmp_path / "student"), family)
    batch = _inputs(family, ["the film was really great and the plot was fun and the acting was superb"])
    with torch.no_grad():
        torch.testing.assert_close(student(**batch, use_cache=False).logits,
                                   reference(**batch, use_cache=False).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_generation_with_kv_cache_matches_generation_without(sources, tmp_path, family):
    """Each layer must write its own cache slot (layer_idx), also past the 4-token sliding window."""
    student = _load(shrink_model(sources[family], "every-2", tmp_path / "student"), family)
    batch = _inputs(family, ["the film was great"])
    greedy = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=student.config.pad_token_id)
    with torch.no_grad():
        cached = student.generate(**batch, use_cache=True, **greedy)
        uncached = student.generate(**batch, use_cache=False, **greedy)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 8
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "bert", "bert_classifier"])
def test_keeping_every_layer_reproduces_the_source_exactly(sources, tmp_path, family):
    source = _load(sources[family], family)
    copied = _load(shrink_model(sources[family], f"uniform-{NUM_LAYERS}", tmp_path / "copy"), family)
    batch = _inputs(family)
    with torch.no_grad():
        expected, found = source(**batch), copied(**batch)
    key = "last_hidden_state" if family == "bert" else "logits"
    assert torch.equal(found[key], expected[key])


# --- shrink_model: encoders -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "bert_classifier"])
def test_shrunk_encoder_keeps_embeddings_pooler_and_head(sources, tmp_path, family):
    student = _load(shrink_model(sources[family], "uniform-2", tmp_path / "student"), family)
    source = _load(sources[family], family)
    prefix, layers = find_layer_list(student)
    assert prefix.endswith("encoder.layer") and len(layers) == student.config.num_hidden_layers == 2
    _assert_weights_copied(source, student, prefix, [0, NUM_LAYERS - 1])
    if family == "bert_classifier":
        assert student.config.num_labels == 3
    with torch.no_grad():
        assert torch.isfinite(student(**_inputs(family))[0]).all()


# --- the consistency guard ------------------------------------------------------------------------------

def test_an_unsliced_per_layer_setting_is_caught(sources, tmp_path, monkeypatch):
    """Had layer_types been cut instead of sliced, shrunk layer 1 would attend fully where teacher layer 3
    slides; the comparison of layer attributes refuses to save such a model."""
    real = student_init.shrunk_config

    def truncating(config, kept):
        shrunk = real(config, kept)
        shrunk.layer_types = config.layer_types[: len(kept)]
        return shrunk

    monkeypatch.setattr(student_init, "shrunk_config", truncating)
    with pytest.raises(KdistillError, match="shrunk layer 1 differs from teacher layer 3"):
        shrink_model(sources["gemma3"], [0, 3, 5], tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_refuses_to_overwrite_its_source_and_models_with_two_stacks(sources, tmp_path):
    with pytest.raises(KdistillError, match="is the source model's folder"):
        shrink_model(sources["llama"], "every-2", sources["llama"])
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5Config(vocab_size=41, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2)
    t5_path = _save(T5ForConditionalGeneration(t5), word_tokenizer("lm"), tmp_path / "t5")
    with pytest.raises(KdistillError, match="encoder-decoder and multimodal models are not supported"):
        shrink_model(t5_path, "every-2", tmp_path / "student")


def test_numpy_integers_are_layer_indices():
    import numpy as np

    assert layer_map(6, np.array([4, 0])) == [0, 4]
    with pytest.raises(KdistillError, match="whole numbers"):
        layer_map(6, [True, 2])


# --- config fields that name layers by index ------------------------------------------------------------

def _save_tiny_moe(path: Path, **overrides) -> Path:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    tokenizer = word_tokenizer("lm")
    config = Qwen2MoeConfig(**{**dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_experts=2, num_experts_per_tok=1, num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id), **overrides})
    torch.manual_seed(4)
    return _save(Qwen2MoeForCausalLM(config), tokenizer, path)


def test_layer_index_lists_are_renumbered(tmp_path):
    """Qwen2-MoE's mlp_only_layers names dense layers by index: kept ones get their new index."""
    source_path = _save_tiny_moe(tmp_path / "moe", mlp_only_layers=[1, 4])
    student = _load(shrink_model(source_path, [0, 1, 2, 4], tmp_path / "student"), "moe")
    assert student.config.mlp_only_layers == [1, 3]
    _assert_weights_copied(_load(source_path, "moe"), student, "model.layers", [0, 1, 2, 4])


def test_a_layer_pattern_that_cannot_be_sliced_is_refused(tmp_path):
    """decoder_sparse_step=2 makes every second layer sparse by position; kept layers 0, 1, 2, 4 would put a
    dense teacher layer where the pattern wants a sparse one, so the weights do not fit and nothing is saved."""
    source_path = _save_tiny_moe(tmp_path / "moe", decoder_sparse_step=2)
    with pytest.raises(KdistillError, match="weights do not fit the source's"):
        shrink_model(source_path, [0, 1, 2, 4], tmp_path / "student")
    assert not (tmp_path / "student").exists()


# --- distillation from the teacher ----------------------------------------------------------------------

def test_forward_kl_distillation_of_the_shrunk_student_lowers_the_loss(sources, tmp_path):
    teacher = _load(sources["gemma3"], "gemma3")
    student = _load(shrink_model(sources["gemma3"], "every-2", tmp_path / "student"), "gemma3")
    batch = _inputs("gemma3", [text for text, _ in make_texts(8, seed=2)])
    with torch.no_grad():
        teacher_logits_btv = teacher(**batch).logits
    mask_n = batch["attention_mask"].reshape(-1).bool()
    teacher_logits_nv = teacher_logits_btv.flatten(0, 1)[mask_n]  # (N, V) real tokens only

    def kd_loss() -> torch.Tensor:
        student_logits_nv = student(**batch).logits.flatten(0, 1)[mask_n]  # (N, V)
        return divergence(student_logits_nv, teacher_logits_nv, kind="forward_kl").mean()

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    student.train()
    losses = []
    for _ in range(20):
        loss = kd_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], losses


def _assert_weights_copied(source, student, prefix: str, kept: list[int]) -> None:
    """Student layer j holds source layer kept[j]; every weight outside the layers is the source's."""
    source_state, student_state = source.state_dict(), student.state_dict()
    num_outside = sum(not key.startswith(f"{prefix}.") for key in source_state)
    num_kept = sum(key.startswith(tuple(f"{prefix}.{i}." for i in kept)) for key in source_state)
    assert len(student_state) == num_outside + num_kept
    for key, value in student_state.items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            assert torch.equal(value, source_state[f"{prefix}.{kept[int(index)]}.{rest}"]), key
        else:
            assert torch.equal(value, source_state[key]), key
