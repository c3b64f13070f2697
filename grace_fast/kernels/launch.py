"""The device Triton kernels launch on: Triton launches on the current CUDA device and its stream, not on the
device of the tensors it is given, so a launcher makes that device current."""

import contextlib
import functools
import inspect
from collections.abc import Callable

import torch


def on_device_of(name: str) -> Callable:
    """Decorates a launcher so that it runs with its tensor argument `name`'s CUDA device current (tensors on
    cuda:1 while cuda:0 is current would otherwise be read by kernels running on cuda:0). CPU tensors, as under
    TRITON_INTERPRET=1, change nothing."""

    def decorate(launcher: Callable) -> Callable:
        position = list(inspect.signature(launcher).parameters).index(name)

        @functools.wraps(launcher)
        def launch(*args, **kwargs):
            x = args[position] if position < len(args) else kwargs[name]
            with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
                return launcher(*args, **kwargs)

        return launch

    return decorate
