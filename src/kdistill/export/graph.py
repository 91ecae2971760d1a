"""PyTorch student -> ONNX graph, and the graph -> its int8 form.

    encoder_graph(module, tokenizer, path)     model.onnx: (input_ids, attention_mask[, token_type_ids]) -> logits
    causal_lm_graph(module, tokenizer, path)   model.onnx with a KV cache: the inputs and outputs 🤗 Optimum's
                                               ORTModelForCausalLM reads (past_key_values.<i>.key ... present.<i>.key)
    quantize_int8(src, dst)                    int8 weights: dynamic (encoders), weight-only in blocks (causal LMs)

The graphs are traced with torch.onnx's TorchScript exporter (`dynamo=False`): on transformers 5.23 it traces
MiniLM in ~2 s and a Qwen2 block with its cache as plain tensors, where the dynamo exporter took 17 s for a
2-layer toy encoder. Attention is traced in its eager form, whose pattern onnxruntime's transformer optimizer
fuses into one Attention op; the SDPA form it does not recognise.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the graphs (LayerNormalization is one op from 17; onnxruntime >= 1.14 runs it)."""


def _export(module: torch.nn.Module, args: tuple, path: Path, *, input_names: list[str], output_names: list[str],
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    traced = path.parent / "traced" / path.name
    traced.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's TracerWarnings about Python branches, checked by parity
        torch.onnx.export(module, args, str(traced), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    _one_weights_file(traced, path)
    shutil.rmtree(traced.parent)


def _one_weights_file(traced: Path, path: Path) -> None:
    """The traced graph as ``path``. A protobuf holds at most 2 GB, and past that the tracer writes every
    tensor to a file of its own beside the graph: they are gathered into one `model.onnx_data`."""
    if len(list(traced.parent.iterdir())) == 1:
        shutil.move(traced, path)
        return
    import onnx

    model = onnx.load(str(traced))  # with its external tensors
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + "_data", size_threshold=1024)


def _eager(module: torch.nn.Module) -> torch.nn.Module:
    """Trace attention in its eager form (see the module's docstring); the weights are the same."""
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation("eager")
    return module.eval()


def encoder_graph(module: torch.nn.Module, tokenizer, path: Path) -> list[str]:
    """A sequence classifier as model.onnx; returns its input names (what the tokenizer gives, in order)."""
    sample = dict(tokenizer(["a short text", "a slightly longer text than that"], return_tensors="pt", padding=True))
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names} | {"logits": {0: "batch_size"}}
    _export(_ClassifierInputs(_eager(module), names), tuple(sample[n] for n in names), path, input_names=names,
            output_names=["logits"], dynamic_axes=axes)
    return names


class _ClassifierInputs(torch.nn.Module):
    """Positional inputs in a fixed order, logits out: what the tracer wants, what Optimum reads back."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).logits  # (B, L)


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    """The graph's past and present cache names, key then value per layer (Optimum's names)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def causal_lm_graph(module: torch.nn.Module, path: Path) -> None:
    """A causal LM as model.onnx with its KV cache as inputs and outputs: one graph for the prompt (past of
    length 0) and for each new token. Traced with a past of 4 positions and a left-padded batch; parity then
    checks it at the lengths generation uses."""
    from transformers import DynamicCache

    module = _eager(module)
    config = module.config
    num_layers, shape = config.num_hidden_layers, _cache_shape(config)
    batch, new, past_len = 2, 3, 4
    input_ids = torch.randint(0, config.vocab_size, (batch, new))
    attention_mask = torch.ones(batch, past_len + new, dtype=torch.long)
    attention_mask[0, :2] = 0  # a left-padded row, as batched generation has
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
    past = [torch.zeros(batch, shape[0], past_len, shape[1]) for _ in range(2 * num_layers)]
    past_names, present_names = cache_names(num_layers)
    names = ["input_ids", "attention_mask", "position_ids", *past_names]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"},
            **{n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names},
            **{n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names}}
    _export(_CacheAsTensors(module, DynamicCache), (input_ids, attention_mask, position_ids, *past), path,
            input_names=names, output_names=["logits", *present_names], dynamic_axes=axes)


def _cache_shape(config) -> tuple[int, int]:
    """(key-value heads, head dim) of one layer's cache."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return heads, head_dim


class _CacheAsTensors(torch.nn.Module):
    """The model with its cache as flat tensors: past (B, heads, P, D) per layer in, present (B, heads, P+S, D) out."""

    def __init__(self, model: torch.nn.Module, cache_type: type) -> None:
        super().__init__()
        self.model, self.cache_type = model, cache_type

    def forward(self, input_ids, attention_mask, position_ids, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.cache_type(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)  # (B, S, V), then 2 per layer


@contextlib.contextmanager
def _quiet_onnxruntime_tools() -> Iterator[None]:
    """The optimizer and the quantizer log each step at INFO (to the root logger, which the CLI shows)."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def optimize_encoder(path: Path, config) -> None:
    """onnxruntime's transformer optimizer, in place: attention, embedding + layer norm and GELU fused into
    single ops (BERT-family encoders). A model type it does not know keeps the plain graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert",
                  "mpnet": "bert"}.get(config.model_type)
    if model_type is None:
        return
    with _quiet_onnxruntime_tools():
        optimized = optimize_model(str(path), model_type=model_type, num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size)
    log.debug("fused operators: %s", optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(path))


def quantize_int8(src: Path, dst: Path, *, weight_only: bool = False) -> None:
    """int8 weights. Encoders: dynamic quantisation, MatMul (and fused Attention) weights to int8 per output
    channel and activations quantized at run time, so no calibration data is needed. ``weight_only`` (causal
    LMs): every MatMul weight to int8 in blocks of 32 with a scale each (MatMulNBits), activations kept fp32.
    Dynamic quantisation of Qwen2.5-0.5B's activations changed its next-token logits by up to 15.7 and its
    summaries beyond recognition (mean ROUGE-L 0.13 against its own fp32 outputs on 4 validation articles):
    a causal LM's activations have outlier channels that one scale per tensor cannot hold."""
    big = (src.parent / (src.name + "_data")).exists()  # then int8 may pass 2 GB too: its weights beside it
    with _quiet_onnxruntime_tools():
        if weight_only:
            _weight_only_int8(src, dst, big)
            return
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=big,
                         # the fused contrib ops (BiasGelu, SkipLayerNormalization) have no shape inference:
                         # their outputs are float, which is what quantisation needs to know
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})


def _weight_only_int8(src: Path, dst: Path, big: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    settings = dict(block_size=32, is_symmetric=True, bits=8)
    quantizer = MatMulNBitsQuantizer(str(src), **settings, algo_config=DefaultWeightOnlyQuantConfig(**settings))
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=big)
