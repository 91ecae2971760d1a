"""Initialize a student from a subset of the teacher's layers (DistilBERT: "one layer out of two").

    layer_map(18, "every-2")                           -> [0, 2, 4, ..., 16]
    shrink_model("gemma-3-270m", "every-2", "student/") -> a from_pretrained folder with those 9 layers

A student that starts as a copy of the teacher's embeddings, head and some of its layers begins far closer
to the teacher than a random one, so distillation has less to teach. The shrunk model is built fresh from
a config with fewer layers and the chosen layers' weights are copied in, rather than cut out of the loaded
teacher: construction then sets every per-layer attribute (``layer_idx`` for the KV cache, sliding or full
attention) from the new config, and comparing those attributes with the teacher's layers proves the config
was sliced consistently.
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from kdistill.errors import KdistillError
from kdistill.io import atomic_dir

LAYER_SPEC_HELP = ("'every-K' (layers 0, K, 2K, ...), 'uniform-N' (N layers evenly spread from the first to the "
                   "last) or explicit layer indices such as [0, 5, 11] or '0,5,11'")

# config fields that hold indices of layers rather than one entry per layer; remapped, not sliced
_LAYER_INDEX_FIELDS = ("mlp_only_layers", "moe_layers", "cross_attention_layers", "attn_layer_indices")
# attributes that differ between a teacher layer and its copy by design: the layer's position
_POSITION_ATTRS = frozenset({"layer_idx", "layer_id", "layer_index", "layer_number"})


def layer_map(num_teacher_layers: int, spec: str | Sequence[int]) -> list[int]:
    """The sorted teacher layer indices that ``spec`` keeps; see ``LAYER_SPEC_HELP``."""
    if num_teacher_layers < 1:
        raise KdistillError(f"the teacher has {num_teacher_layers} layers; there is nothing to keep.")
    if isinstance(spec, str):
        spec = spec.strip()
        if match := re.fullmatch(r"every-(\d+)", spec):
            return list(range(0, num_teacher_layers, _positive(int(match[1]), spec)))
        if match := re.fullmatch(r"uniform-(\d+)", spec):
            return _uniform(num_teacher_layers, _positive(int(match[1]), spec))
        if re.fullmatch(r"\d+(\s*,\s*\d+)*", spec):
            return _explicit(num_teacher_layers, [int(part) for part in spec.split(",")])
        raise KdistillError(f"layer spec {spec!r} is not understood; use {LAYER_SPEC_HELP}.")
    return _explicit(num_teacher_layers, list(spec))


def _positive(value: int, spec: str) -> int:
    if value < 1:
        raise KdistillError(f"layer spec {spec!r}: the number must be at least 1.")
    return value


def _uniform(num_teacher_layers: int, num_kept: int) -> list[int]:
    """Evenly spread, first and last included: the last layer feeds the head, the first the embeddings."""
    if num_kept > num_teacher_layers:
        raise KdistillError(f"layer spec 'uniform-{num_kept}' asks for more layers than the teacher's "
                            f"{num_teacher_layers}; use at most uniform-{num_teacher_layers}.")
    if num_kept == 1:
        return [num_teacher_layers - 1]
    span, steps = num_teacher_layers - 1, num_kept - 1
    # rounded i * span / steps in integers; the step is >= 1, so the indices are distinct
    return [(2 * i * span + steps) // (2 * steps) for i in range(num_kept)]


def _explicit(num_teacher_layers: int, indices: list[Any]) -> list[int]:
    if not indices:
        raise KdistillError(f"the layer list is empty; keep at least one layer, e.g. [{num_teacher_layers - 1}].")
    try:
        indices = [_whole_number(i) for i in indices]
    except TypeError:
        raise KdistillError(f"layer indices must be whole numbers; found {indices}.") from None
    outside = [i for i in indices if not 0 <= i < num_teacher_layers]
    if outside:
        raise KdistillError(f"layer indices {outside} are out of range: the teacher has {num_teacher_layers} "
                            f"layers, numbered 0 to {num_teacher_layers - 1}.")
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise KdistillError(f"layer indices {repeated} appear more than once; list each teacher layer once.")
    return sorted(indices)


def _whole_number(value: Any) -> int:
    """An int, or anything usable as one (numpy integers); not a bool, which would mean layer 0 or 1."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a layer index")
    return operator.index(value)


def shrink_model(model_dir_or_hub_id: str | Path, layers: str | Sequence[int], out_dir: str | Path, *,
                 trust_remote_code: bool = False, revision: str | None = None) -> Path:
    """Save a copy of the model keeping only ``layers`` (a spec for `layer_map`), loadable with transformers.

    Embeddings, final norm and head are kept as they are. ``out_dir`` gets the model (safetensors), the
    tokenizer and ``kdistill_init.json`` (source, layers kept, parameter counts); it is replaced atomically.
    """
    from kdistill.models import resolve_model_path

    path = resolve_model_path(str(model_dir_or_hub_id))
    if Path(out_dir).expanduser().resolve() == Path(path).expanduser().resolve():
        raise KdistillError(f"out_dir {str(out_dir)!r} is the source model's folder; write the shrunk model "
                            "to another folder, so the source stays intact.")
    common = dict(trust_remote_code=trust_remote_code, revision=revision)
    config, tokenizer = _load_config_and_tokenizer(path, common)
    kept = layer_map(_num_layers(config, path), layers)  # a bad spec fails before the weights load
    source = _auto_class(config).from_pretrained(path, config=config, dtype="auto", **common).eval()
    prefix, teacher_layers = find_layer_list(source)
    student = _build_student(source, prefix, kept)
    _check_layers_match(teacher_layers, find_layer_list(student)[1], kept)
    record = {"source": str(model_dir_or_hub_id), "source_path": path, "source_revision": revision,
              "layer_spec": layers if isinstance(layers, str) else list(layers),
              "source_num_layers": len(teacher_layers), "source_layers_kept": kept,
              "source_num_parameters": _num_parameters(source), "num_parameters": _num_parameters(student)}
    with atomic_dir(out_dir) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "kdistill_init.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _load_config_and_tokenizer(path: str, common: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        return AutoConfig.from_pretrained(path, **common), AutoTokenizer.from_pretrained(path, **common)
    except OSError as err:
        raise KdistillError(f"model {path!r}: could not load its config and tokenizer "
                            f"({str(err).splitlines()[0]}). Name a built-in model, a local folder with "
                            "config.json and tokenizer files, or a hub id while online.") from None


def _num_layers(config, path: str) -> int:
    """Only one stack of layers, counted by config.num_hidden_layers, can be shrunk."""
    num_layers = getattr(config, "num_hidden_layers", None)
    if getattr(config, "is_encoder_decoder", False) or not isinstance(num_layers, int):
        raise KdistillError(f"model {path!r} ({config.model_type}): only a single stack of layers (a causal LM or "
                            "an encoder, with config.num_hidden_layers) can be shrunk; encoder-decoder and "
                            "multimodal models are not supported.")
    return num_layers


def _auto_class(config):
    """The Auto class matching the saved architecture, so a causal LM keeps its head and a classifier its own."""
    import transformers

    architectures = " ".join(config.architectures or [])
    for marker, name in (("ForCausalLM", "AutoModelForCausalLM"), ("LMHeadModel", "AutoModelForCausalLM"),
                         ("ForSequenceClassification", "AutoModelForSequenceClassification"),
                         ("ForMaskedLM", "AutoModelForMaskedLM")):
        if marker in architectures:
            return getattr(transformers, name)
    return transformers.AutoModel


def find_layer_list(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(state-dict prefix, module list) of the transformer blocks: the first ModuleList with one entry per
    layer. Found rather than named per family (``model.layers``, ``bert.encoder.layer``, ``transformer.h``)."""
    num_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return name, module
    raise KdistillError(f"{type(model).__name__}: found no list of {num_layers} layers "
                        "(config.num_hidden_layers) to take a subset of; this architecture is not supported.")


def _build_student(source: torch.nn.Module, prefix: str, kept: list[int]) -> torch.nn.Module:
    """A fresh model of the source's class with ``len(kept)`` layers, holding the source's weights."""
    config = shrunk_config(source.config, kept)
    student = type(source)._from_config(config, dtype=source.dtype)
    try:
        student.load_state_dict(_shrunk_state_dict(source.state_dict(), prefix, kept), strict=True)
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        raise KdistillError(f"{type(source).__name__}: the shrunk model's weights do not fit the source's "
                            f"({str(err).splitlines()[-1].strip()[:300]}): a per-layer setting in its config, "
                            "such as a layer pattern by position (decoder_sparse_step), does not carry over to "
                            "the layers kept. Choose layers that keep the pattern, or report it with the model's "
                            "config.json.") from None
    if getattr(source, "generation_config", None) is not None:  # only generative models have one
        student.generation_config = source.generation_config
    return student.eval()


def shrunk_config(config, kept: list[int]):
    """A copy of ``config`` with ``len(kept)`` layers and every per-layer field reduced to the kept layers."""
    num_layers = config.num_hidden_layers
    fields = config.to_dict()
    for key, value in fields.items():
        if key in _LAYER_INDEX_FIELDS and isinstance(value, (list, tuple)):
            fields[key] = [kept.index(i) for i in value if i in kept]
        elif "layer" in key and isinstance(value, (list, tuple)) and len(value) == num_layers:
            # one entry per layer: layer_types, mlp_layer_types, no_rope_layers, ...; a list that escapes this
            # test shows up as a mismatch in _check_layers_match or in the weights' shapes
            fields[key] = [value[i] for i in kept]
    if isinstance(fields.get("max_window_layers"), int):  # Qwen2: layers from this index on slide
        fields["max_window_layers"] = sum(i < fields["max_window_layers"] for i in kept)
    fields["num_hidden_layers"] = len(kept)
    fields.pop("transformers_version", None)
    return type(config).from_dict(fields)


def _shrunk_state_dict(state: dict[str, torch.Tensor], prefix: str, kept: list[int]) -> dict[str, torch.Tensor]:
    """Source weights with layer ``kept[j]`` renamed to layer ``j`` and the other layers dropped."""
    new_index = {str(old): str(new) for new, old in enumerate(kept)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    out = {}
    for key, tensor in state.items():
        match = pattern.match(key)
        if match is None:
            out[key] = tensor
        elif match[1] in new_index:
            out[f"{prefix}.{new_index[match[1]]}.{match[2]}"] = tensor
    return out


def _check_layers_match(teacher_layers: torch.nn.ModuleList, student_layers: torch.nn.ModuleList,
                        kept: list[int]) -> None:
    """Each student layer must be configured like the teacher layer it copies (sliding or full attention,
    window, scaling, ...), and know its new position, which the KV cache is indexed by."""
    for new, old in enumerate(kept):
        teacher_attrs, student_attrs = _layer_settings(teacher_layers[old]), _layer_settings(student_layers[new])
        differing = sorted(k for k in teacher_attrs.keys() | student_attrs.keys()
                           if k[1] not in _POSITION_ATTRS and teacher_attrs.get(k) != student_attrs.get(k))
        if differing:
            where, attr = differing[0]
            raise KdistillError(
                f"shrunk layer {new} differs from teacher layer {old} in {where or 'the layer'}.{attr} "
                f"({student_attrs.get(differing[0])!r} vs {teacher_attrs.get(differing[0])!r}): a per-layer "
                "config setting kdistill does not slice yet. Please report it with the model's config.json.")
        positions = {v for k, v in student_attrs.items() if k[1] == "layer_idx"}
        assert positions <= {new}, f"layer {new} has layer_idx {positions}"


def _layer_settings(layer: torch.nn.Module) -> dict[tuple[str, str], Any]:
    """Plain (str, int, float, bool, None) attributes of a layer and its submodules, keyed (submodule, name)."""
    settings = {}
    for name, module in layer.named_modules():
        for attr, value in vars(module).items():
            if not attr.startswith("_") and attr != "training" and (value is None or
                                                                      isinstance(value, (str, int, float, bool))):
                settings[(name, attr)] = value
    return settings


def _num_parameters(model: torch.nn.Module) -> int:
    """parameters() yields a tied head once, so it counts once."""
    return sum(p.numel() for p in model.parameters())
