"""Model loading: a built-in name, a local folder, a .gguf file or a hub id -> a LabelModel."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from kdistill.checksums import verify_student
from kdistill.config import ModelConfig, TaskConfig
from kdistill.errors import KdistillError
from kdistill.models.base import LabelModel
from kdistill.models.causal_lm import CausalLMLabelModel
from kdistill.models.encoder import EncoderLabelModel

log = logging.getLogger(__name__)

__all__ = ["LabelModel", "CausalLMLabelModel", "EncoderLabelModel", "load_label_model", "load_saved",
           "resolve_model_path", "pick_device"]


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_model_path(name: str) -> str:
    """A folder transformers can load, or a hub id left as it is for users who are online."""
    from kdistill import assets

    if name in assets.ASSETS:
        return str(assets.model_dir(name))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(assets.convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise KdistillError(f"{path}: a model folder needs config.json (a transformers save_pretrained folder).")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise KdistillError(f"{name}: not a model folder or .gguf file.")
    return name  # a hub id


def _detect_kind(config) -> str:
    archs = " ".join(config.architectures or [])
    if "CausalLM" in archs or "LMHead" in archs:
        return "causal_lm"
    if getattr(config, "is_encoder_decoder", False):
        raise KdistillError(f"{config.model_type}: encoder-decoder models are not supported for label-space tasks yet.")
    return "encoder"


def _check_head_labels(hf_config, labels: list[str], name: str) -> None:
    """A fine-tuned head must already speak the task's labels in the task's order, or be replaced."""
    trained = [str(v) for _, v in sorted((getattr(hf_config, "id2label", None) or {}).items())]
    generic = all(v.startswith("LABEL_") for v in trained)
    has_head = any("SequenceClassification" in a for a in (hf_config.architectures or []))
    if has_head and not generic and [v.lower() for v in trained] != [v.lower() for v in labels]:
        raise KdistillError(
            f"model {name!r} has a classification head for labels {trained}, but the task's labels are {labels}; "
            "rename or reorder task.labels to match the head (or start from a model without a head).")


def load_label_model(cfg: ModelConfig, task: TaskConfig, *, prefix: str = "",
                     device: torch.device | None = None) -> LabelModel:
    """Load ``cfg.model`` as a teacher or student for ``task``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(cfg.model)
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    try:
        hf_config = AutoConfig.from_pretrained(path, **common)
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
    except OSError as err:
        raise KdistillError(f"model {cfg.model!r}: could not load it ({str(err).splitlines()[0]}). "
                            "Name a built-in model (kdistill ls models), a local folder, or a hub id while online.") from None
    kind = _detect_kind(hf_config) if cfg.kind == "auto" else cfg.kind
    if kind == "causal_lm" and task.kind == "multiple_choice" and task.choice_scoring == "likelihood":
        from kdistill.models.choice_lm import ChoiceLikelihoodModel

        module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **common)
        model: LabelModel = ChoiceLikelihoodModel(module, tokenizer, labels=task.labels,
                                                  prompt_template=task.prompt_template, prefix=prefix,
                                                  max_length=cfg.max_length, name=cfg.model)
    elif kind == "causal_lm":
        module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **common)
        model = CausalLMLabelModel(
            module, tokenizer, labels=task.labels, verbalizers=[task.verbalizers[label] for label in task.labels],
            prompt_template=task.prompt_template, prefix=prefix, max_length=cfg.max_length, name=cfg.model)
    else:
        _check_head_labels(hf_config, task.labels, cfg.model)
        with _quiet_load_report():
            module, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, num_labels=len(task.labels),
                id2label=dict(enumerate(task.labels)), label2id={label: i for i, label in enumerate(task.labels)},
                ignore_mismatched_sizes=True, output_loading_info=True, **common)
        _report_new_head(cfg.model, task.labels, info)
        model = EncoderLabelModel(module, tokenizer, labels=task.labels, input_template=cfg.input_template,
                                  max_length=cfg.max_length)
    model.module.to(device or torch.device("cpu"))
    return model


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """transformers logs a multi-line LOAD REPORT (in red) for every weight it did not find; a classifier's new
    head is missing on purpose, so kdistill reads the loading info itself (`_report_new_head`). A filter, not a
    level: transformers runs other checks when its logger's level is raised."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop_report = _DropLoadReport()
    report_logger.addFilter(drop_report)
    try:
        yield
    finally:
        report_logger.removeFilter(drop_report)


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def _report_new_head(name: str, labels: list[str], info: dict[str, list]) -> None:
    """One plain line for the classification head made new on purpose; a warning only for other missing weights."""
    new = sorted(info.get("missing_keys", [])) + sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                                                        for k in info.get("mismatched_keys", []))
    head = [k for k in new if k.split(".")[0] in _HEAD_PREFIXES]
    others = [k for k in new if k not in head]
    if head and (name, tuple(labels)) not in _HEADS_TOLD:  # once per run, not once per seed and variant
        _HEADS_TOLD.add((name, tuple(labels)))
        log.info("%s: a new classification head for %d labels (%s), trained from scratch as intended",
                 name, len(labels), ", ".join(head))
    if others:
        log.warning("%s: %d weights were not in the checkpoint and start random: %s", name, len(others),
                    ", ".join(others[:8]) + (" ..." if len(others) > 8 else ""))


# the modules a sequence-classification model adds on top of its encoder (BERT/MiniLM, RoBERTa, DistilBERT, MPNet ...)
_HEAD_PREFIXES = {"classifier", "pre_classifier", "score", "pooler"}
_HEADS_TOLD: set[tuple[str, tuple[str, ...]]] = set()


def load_saved(path: str | Path, device: torch.device | None = None) -> LabelModel:
    """A student saved by kdistill (save_pretrained + kdistill.json)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    meta_path = path / "kdistill.json"
    if not meta_path.exists():
        raise KdistillError(f"{path}: no kdistill.json here; point to a student folder saved by kdistill "
                            "(runs/<name>/student).")
    verify_student(path)  # every file, before any is loaded
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if meta.get("choice_scoring") == "likelihood":
        from kdistill.models.choice_lm import ChoiceLikelihoodModel

        module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model: LabelModel = ChoiceLikelihoodModel(module, tokenizer, labels=meta["labels"],
                                                  prompt_template=meta["prompt_template"], prefix=meta["prefix"],
                                                  max_length=meta["max_length"], name=str(path))
    elif meta["kind"] == "causal_lm":
        module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = CausalLMLabelModel(module, tokenizer, labels=meta["labels"], verbalizers=meta["verbalizers"],
                                               prompt_template=meta["prompt_template"], prefix=meta["prefix"],
                                               max_length=meta["max_length"], name=str(path))
    else:
        module = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        model = EncoderLabelModel(module, tokenizer, labels=meta["labels"], input_template=meta["input_template"],
                                  max_length=meta["max_length"])
    model.module.to(device or torch.device("cpu"))
    return model
