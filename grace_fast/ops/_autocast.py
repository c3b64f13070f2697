"""Autocast off inside the ops: each op states its output dtype (float32 for half inputs), and autocast would run
their matmuls in bf16/fp16 instead."""

import contextlib

import torch


def no_autocast(device: torch.device):
    """A context with autocast off for device's type (nothing to turn off where autocast does not exist: meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
