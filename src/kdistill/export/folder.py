"""An export folder: what it holds, how it is written and read back.

    model.onnx (+ model.onnx_data past 2 GB)   the graph: the only .onnx file, so Optimum's from_pretrained finds it
    config.json, generation_config.json       the student's 🤗 config (id2label names the labels)
    tokenizer files                           the student's tokenizer, its model_max_length the training cut
    kdistill.json                             what `kdistill predict` needs, and "export": the format and source
    export.json                               the parity check it passed (and, measured, its cost)
    checksums.json                            size and sha256 of every other file, written last

`optimum.onnxruntime.ORTModelForSequenceClassification` / `ORTModelForCausalLM` and `transformers.pipeline`
(with such a model) load the folder as it is; kdistill reads it with `load_export`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdistill.checksums import verify_student
from kdistill.errors import KdistillError

GRAPH = "model.onnx"
FORMATS = ("onnx", "onnx-int8")
"""`kdistill export --format`: onnx keeps fp32 weights; onnx-int8 has int8 MatMul weights (dynamic quantisation)."""


def is_export(folder: str | Path) -> bool:
    """A folder `kdistill export` wrote (not a PyTorch student)."""
    return (Path(folder) / GRAPH).is_file() and (Path(folder) / "kdistill.json").is_file()


def metadata(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "kdistill.json").read_text(encoding="utf-8"))


def load_export(folder: str | Path, *, verify: bool = True):
    """The exported student as kdistill runs it: an OnnxLabelModel for a label task, an (OnnxCausalLM,
    tokenizer) pair for a generation task. Every file is checked against checksums.json first."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from kdistill.export.runtime import OnnxCausalLM, OnnxLabelModel

    folder = Path(folder)
    if verify:
        verify_student(folder)
    meta = metadata(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if meta["kind"] == "causal_lm_generator":
        generation = GenerationConfig.from_pretrained(folder) if (folder / "generation_config.json").exists() else None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return OnnxCausalLM(folder / GRAPH, AutoConfig.from_pretrained(folder), generation), tokenizer
    if meta["kind"] != "encoder":
        raise KdistillError(f"{folder}: an exported {meta['kind']} student cannot be run here; export supports "
                            "encoder classifiers and generation students.")
    return OnnxLabelModel(folder / GRAPH, tokenizer, labels=meta["labels"], input_template=meta["input_template"],
                          max_length=meta["max_length"])


def size_mb(folder: str | Path) -> float:
    """Megabytes of the graph and its weights (what a deployment ships besides the tokenizer)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.startswith(GRAPH)) / 1e6
