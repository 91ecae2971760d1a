"""What a command checks before it does any work or writes anything: that the user's own split files are there,
that the run directory can be made and written, that each model a run loads is there (its config and tokenizer
load), and the device.

A wrong student path used to be found after the teacher had been asked about every example; here it costs
the seconds a tokenizer takes to load. An endpoint teacher is contacted when it is first asked (with retries),
not here. The label and generation recipes' `validate` report what these checks found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kdistill.config import ModelConfig, RunConfig
from kdistill.data.split_files import checked_split_files
from kdistill.errors import KdistillError
from kdistill.models import resolve_model_path


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model of the run whose config and tokenizer loaded: its role, config key, folder and tokenizer."""

    role: str
    key: str
    model: ModelConfig
    path: str
    tokenizer: Any


def check_output(cfg: RunConfig) -> str:
    """The run directory can be made (no part of its path is a file) and written; one line saying so."""
    run_dir = Path(cfg.run_dir).absolute()
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"output_dir {cfg.output_dir!r} (the run goes to {cfg.run_dir})"
    if not existing.is_dir():
        raise KdistillError(f"{where}: {existing} is a file, not a folder; move the file away or choose another "
                            "output_dir (or name).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KdistillError(f"{where}: {existing} is not writable by this user; make it writable or choose another "
                            "output_dir.")
    return f"output: {cfg.run_dir} ({'exists' if existing == run_dir else 'will be created'}, writable)"


def check_device(cfg: RunConfig) -> None:
    """A device named in training.device that this machine has."""
    device = cfg.training.device
    if device.startswith("cuda") or device == "mps":
        import torch

        found = (torch.cuda.is_available() and int(device.partition(":")[2] or 0) < torch.cuda.device_count()
                 if device.startswith("cuda") else torch.backends.mps.is_available())
        if not found:
            raise KdistillError(f"training.device {device!r}: this machine has no such device; set training.device "
                                "to auto (the best there is) or cpu.")


def model_roles(cfg: RunConfig, *, student: bool = True) -> list[tuple[str, str, ModelConfig]]:
    """(role, config key, model) of each model a run loads here: each teacher that is not behind an endpoint,
    a generation task's faithfulness judge, and the student."""
    roles: list[tuple[str, str, ModelConfig]] = []
    for i, member in enumerate(cfg.members):
        if not member.is_endpoint:
            key = "teacher" if i == 0 else f"teachers[{i - 1}]"
            roles.append((f"teacher {member.display_name}", key, member))
    if cfg.task.kind == "generation" and cfg.evaluation.judge:  # loaded after training: checked before it
        roles.append(("judge", "evaluation.judge", replace(cfg.teacher, model=cfg.evaluation.judge)))
    return roles + ([("student", "student", cfg.student)] if student else [])


def load_tokenizers(cfg: RunConfig, *, student: bool = True) -> list[LoadedTokenizer]:
    """Each model's config and tokenizer, loaded: a missing folder, a folder without a model, or a name that
    cannot be fetched is one line naming the config key."""
    from transformers import AutoConfig, AutoTokenizer

    loaded = []
    for role, key, model in model_roles(cfg, student=student):
        try:
            path = resolve_model_path(model.model)
        except KdistillError as err:
            raise KdistillError(f"{key}.model: {err}") from None
        options = dict(revision=model.revision, trust_remote_code=model.trust_remote_code)
        try:
            AutoConfig.from_pretrained(path, **options)
            tokenizer = AutoTokenizer.from_pretrained(path, **options)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise KdistillError(f"{key}.model {model.model!r}: its config or tokenizer does not load ({first}); name "
                                "a built-in model (`kdistill ls models`), a local save_pretrained folder, or a hub id "
                                "while online.") from None
        _check_weights(key, model, Path(path))
        loaded.append(LoadedTokenizer(role, key, model, path, tokenizer))
    return loaded


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _check_weights(key: str, model: ModelConfig, path: Path) -> None:
    """A local model folder holds its weights (a hub id's are fetched when it loads)."""
    if path.is_dir() and not any((path / name).exists() for name in WEIGHT_FILES):
        raise KdistillError(f"{key}.model {model.model!r}: the folder holds no weights (none of {', '.join(WEIGHT_FILES)}"
                            "); point it at a complete save_pretrained folder.")


def preflight(cfg: RunConfig, *, models: bool = True, student: bool = True) -> None:
    """Every check above, for a command about to work on ``cfg`` (one run; a config with stages checks each)."""
    # the user's own split files exist and have a known format: a typo costs no tokenizer loads
    checked_split_files(cfg.data, cfg.task)
    check_output(cfg)
    check_device(cfg)
    if models:
        load_tokenizers(cfg, student=student)
