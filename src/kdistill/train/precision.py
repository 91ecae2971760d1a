"""Mixed precision, one rule for every kind of training step: bf16 on a CUDA device that has it ("auto")."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
