"""Argument types the commands share, so that a bad value is refused, naming its flag, before any work starts.

>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--frames", type=integer(1))
>>> parser.parse_args(["--frames", "8"]).frames
8
"""

import argparse
import math
import re

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # auto: the GPU when there is one
DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda or cuda:N"


def integer(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def device(text: str) -> str:
    """An argparse type: a device of DEVICE that this machine has; auto becomes cuda when there is a GPU, else cpu."""
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_HELP}, got {text!r}")
    if text.startswith("cuda") and int(text.partition(":")[2] or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but this machine has {count} CUDA devices")
    return text


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
