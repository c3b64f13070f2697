"""Argument types the commands share, so that a bad value is refused, naming its flag, before any work starts.

>>> parser = argparse.ArgumentParser()
>>> _ = parser.add_argument("--frames", type=integer(1))
>>> parser.parse_args(["--frames", "8"]).frames
8
"""

import argparse
import math


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


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
