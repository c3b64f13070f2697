"""The learning-rate schedule: linear warm-up then cosine decay, as a multiplier of the base rate per step.

>>> [round(warmup_cosine(s, warmup=2, total=6, floor=0.0), 3) for s in range(7)]
[0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
"""

import math

import torch


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """The multiplier of optimiser step `step` (0-based): (step + 1) / warmup during the warm-up, then
    floor + (1 - floor) * (1 + cos(pi * progress)) / 2, progress going from 0 to 1 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping warmup_cosine once per optimiser step; its state_dict holds only the step count."""
    if warmup < 0 or total < 1:
        raise ValueError(f"need warmup >= 0 and total >= 1 steps, got warmup={warmup}, total={total}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, floor))
