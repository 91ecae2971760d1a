"""Tiny real-architecture models (random weights) and a small learnable dataset, built in-process."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from synthetic import FILLER, NEGATIVE, POSITIVE, PROMPT_WORDS, make_texts, word_tokenizer  # noqa: F401  (re-exported)

# the tests never reach a hub, however pytest is started (.ci/run exports this too): huggingface_hub reads it
# once, at import, so a test that sets it later (bad_inputs.yaml's "a hub id while offline") would be too late
os.environ.setdefault("HF_HUB_OFFLINE", "1")

def save_tiny_lm(path: Path, seed: int = 0, extra_words: tuple[str, ...] = ()) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer("lm", extra_words)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_encoder(path: Path, seed: int = 0, dropout: float = 0.1) -> Path:
    from transformers import BertConfig, BertModel

    tokenizer = word_tokenizer("encoder")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(path)  # a base encoder, like a sentence-transformers folder
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"lm": save_tiny_lm(root / "lm"), "lm2": save_tiny_lm(root / "lm2", seed=1),
            "encoder": save_tiny_encoder(root / "encoder"),
            "encoder_nodrop": save_tiny_encoder(root / "encoder_nodrop", dropout=0.0)}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def tiny_config_dict(tmp_path: Path, models: dict[str, Path], **sections) -> dict:
    data_path = write_csv(tmp_path / "reviews.csv", make_texts(160))
    config = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"),
        "task": {"name": "tiny-sentiment", "labels": ["negative", "positive"],
                 "prompt_template": "Review: {text} Sentiment? Answer:",
                 "verbalizers": {"negative": " negative", "positive": " positive"}},
        "data": {"source": "csv", "path": str(data_path), "test_fraction": 0.25, "validation_fraction": 0.125},
        "teacher": {"model": str(models["lm"]), "few_shot_per_label": 1, "calibrate": True, "batch_size": 8},
        "student": {"model": str(models["encoder"]), "max_length": 32},
        "objective": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 2.0}},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every_steps": 5},
        "evaluation": {"seeds": [0, 1], "latency_examples": 3, "throughput_batch_size": 4, "throughput_batches": 1,
                       "warmup_batches": 1},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


@pytest.fixture
def tiny_config(tmp_path, tiny_models):
    from kdistill.config import RunConfig, from_dict

    def build(**sections) -> RunConfig:
        return from_dict(RunConfig, tiny_config_dict(tmp_path, tiny_models, **sections))

    return build


def crash_then_resume(train, *, stop_at: int, checkpoints: Path, inspect=lambda checkpoint: None):
    """``train(resume=...)`` killed after ``stop_at`` optimizer steps, ``inspect`` shown the newest checkpoint in
    ``checkpoints``, then resumed: returns what the resumed ``train`` returns."""
    from kdistill.train.loop import StopTraining, Trainer

    original_run = Trainer.run

    def crash(self, *, resume=False, stop_after_steps=None):
        return original_run(self, resume=resume, stop_after_steps=None if resume else stop_at)

    Trainer.run = crash
    try:
        with pytest.raises(StopTraining):
            train(resume=False)
        checkpoint = sorted(checkpoints.glob("step-*"))[-1]  # the newest of the steps kept
        inspect(checkpoint)
        return train(resume=True)
    finally:
        Trainer.run = original_run
