"""An exported student run by onnxruntime, behind the same contracts as the PyTorch one, so that evaluation,
the one cost harness (`eval.labels.measure_cost`, `models.generate.generation_cost`) and `kdistill predict`
take either.

    OnnxLabelModel   texts -> (B, L) label logits           (a LabelModel: encode + label_logits)
    OnnxCausalLM     .generate(input_ids, attention_mask, ...) greedy, with the graph's KV cache
    session(path)    an InferenceSession on this machine's cores
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.models.base import LabelModel


def session(path: Path, *, threads: int | None = None):
    """An onnxruntime session with every graph optimisation, as many intra-op threads as torch uses (the two
    runtimes then get the same cores), and no spinning: by default onnxruntime's threads busy-wait after each
    run, which on 2 shared cores made the next PyTorch call in the same process 20-30x slower (measured while
    timing the forms in turn) and takes cores from whatever else runs on the machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads() or os.cpu_count() or 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_parameters(path: Path) -> int:
    """Elements of the graph's weights (int8 weights count once, as in the model they came from)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               and len(t.dims) > 1)


class _Cpu:
    """What the harness reads of a torch module: its device and parameters (the runtime owns the weights)."""

    _anchor = torch.zeros(0)

    def parameters(self):
        yield self._anchor

    def eval(self):
        return self


class OnnxLabelModel(LabelModel):
    """A label student's graph: the student's tokenizer and input template, onnxruntime's logits."""

    def __init__(self, path: Path, tokenizer: Any, *, labels: list[str], input_template: str = "{text}",
                 max_length: int = 256, kind: str = "encoder") -> None:
        self.path, self.session = path, session(path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer, self.labels, self.kind = tokenizer, labels, kind
        self.input_template, self.max_length = input_template, max_length
        self.module = _Cpu()  # type: ignore[assignment]
        self._parameters: int | None = None

    def encode(self, texts: list[str]) -> dict[str, Any]:
        inputs = [self.input_template.replace("{text}", t) for t in texts]
        return dict(self.tokenizer(inputs, return_tensors="np", padding=True, truncation=True,
                                   max_length=self.max_length))

    def label_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])  # (B, L)

    def predict_logits(self, texts: list[str]) -> torch.Tensor:
        return self.label_logits(self.encode(texts)).float()

    def num_parameters(self) -> int:
        if self._parameters is None:
            self._parameters = graph_parameters(self.path)
        return self._parameters


class OnnxCausalLM:
    """A causal LM's graph with its cache, shaped like the 🤗 model `models.generate` drives: greedy only."""

    def __init__(self, path: Path, config: Any, generation_config: Any = None) -> None:
        self.path, self.session, self.config = path, session(path), config
        self.generation_config = generation_config
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._module = _Cpu()

    def parameters(self):
        return self._module.parameters()

    def eval(self) -> "OnnxCausalLM":
        return self

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]) -> tuple:
        """(B, S, V) logits of the new tokens and the cache after them."""
        position_ids = (np.cumsum(attention_mask, -1) - 1).clip(min=0)[:, -input_ids.shape[1]:]
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                **dict(zip(self.past_names, past))}
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        heads = getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads
        head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        return [np.zeros((batch, heads, 0, head_dim), dtype=np.float32) for _ in self.past_names]

    def generate(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 eos_token_id: list[int] | int, pad_token_id: int, min_new_tokens: int | None = None,
                 do_sample: bool = False, stopping_criteria=None, **_unused: Any) -> torch.Tensor:
        """Greedy continuations: (B, prompt + new) token ids, rows that ended padded with ``pad_token_id``,
        as `transformers` returns them (end tokens held back until ``min_new_tokens``)."""
        if do_sample:
            raise NotImplementedError("an exported student generates greedily")
        ends = np.asarray(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
        ids, mask = input_ids.numpy().astype(np.int64), attention_mask.numpy().astype(np.int64)
        past, step_ids = self.empty_cache(ids.shape[0]), ids
        done = np.zeros(ids.shape[0], dtype=bool)
        for step in range(max_new_tokens):
            logits, past = self.forward(step_ids, mask, past)
            scores = logits[:, -1, :]  # (B, V)
            if min_new_tokens and step < min_new_tokens:
                scores[:, ends] = -np.inf
            token = np.where(done, pad_token_id, scores.argmax(-1))
            ids = np.concatenate([ids, token[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones((ids.shape[0], 1), dtype=np.int64)], axis=1)
            done |= np.isin(token, ends)
            if stopping_criteria:
                done |= np.asarray(stopping_criteria(torch.from_numpy(ids), None)).astype(bool)
            if done.all():
                break
            step_ids = token[:, None]
        return torch.from_numpy(ids)
