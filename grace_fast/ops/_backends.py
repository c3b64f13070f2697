"""The backend registry: which backends each op has, which this machine can run (the guarded import of the
extension), and backend choice per call.

Everything is decided once at import, so that `torch.compile` sees constants and never breaks the graph.
"""

import importlib.util
import os

import torch

BUILD_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[test]" --no-build-isolation'

try:
    from grace_fast import _C  # noqa: F401  (registers torch.ops.grace_fast.* kernels)

    _EXTENSION_ERROR = None
except ImportError as error:  # the references still work without the extension
    _EXTENSION_ERROR = error


def _has_kernel(op: str, key: str) -> bool:
    return _EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"grace_fast::{op}", key)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels run on CPU tensors, in numpy
_AVAILABLE = {
    "torch": True,
    "cpu": _has_kernel("cost_matrix_forward", "CPU"),
    "cuda": _has_kernel("cost_matrix_forward", "CUDA") and torch.cuda.is_available(),
    "triton": importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or _INTERPRET),
}


# each op's backends per device type of its tensors, fastest first; "auto" picks the first available one before
# "torch" (the reference, always there); a backend after "torch" runs only when asked for (interpreted Triton on CPU)
SUPPORTED = {
    "cost_matrix": {"cpu": ("cpu", "torch"), "cuda": ("cuda", "torch")},
    "sinkhorn": {"cpu": ("cpu", "torch", "triton"), "cuda": ("triton", "torch")},
    "motion_weights": {"cpu": ("cpu", "torch", "triton"), "cuda": ("triton", "torch")},
}


def backends() -> dict[str, bool]:
    """The backends usable on this machine now, e.g. {"torch": True, "cpu": True, "cuda": False, "triton": False}.

    "cpu" and "cuda" are the kernels of the grace_fast._C extension; "triton" needs a GPU or TRITON_INTERPRET=1.
    """
    return dict(_AVAILABLE)


def kernels(op: str) -> list[str]:
    """Every backend of op but the torch reference, e.g. ["cpu", "triton"]: what the op tests run against it."""
    return list(dict.fromkeys(name for names in SUPPORTED[op].values() for name in names if name != "torch"))


def fast_backends(op: str, device_type: str) -> list[str]:
    """op's backends that "auto" may pick for device_type tensors and this machine has, fastest first, without
    "torch", e.g. fast_backends("sinkhorn", "cpu") == ["cpu"]: what the benchmarks time against the reference."""
    choices = SUPPORTED[op].get(device_type, ("torch",))
    return [name for name in choices[: choices.index("torch")] if _AVAILABLE[name]]


def resolve(op: str, backend: str, device: torch.device) -> str:
    """Check `backend` for `op` (a key of SUPPORTED) on tensors on `device`, or pick the fastest available one for
    "auto"."""
    supported = SUPPORTED[op]
    choices = supported.get(device.type, ("torch",))
    if backend == "auto":
        return next(name for name in choices if _AVAILABLE[name])
    known = sorted({name for names in supported.values() for name in names} | {"auto"})
    if backend not in known:
        raise ValueError(f"{op}: backend must be one of {known}, got {backend!r}")
    if backend not in choices:
        raise ValueError(f"{op}: backend={backend!r} does not run on {device.type} tensors; use one of {choices}")
    if not _AVAILABLE[backend]:
        if backend in ("cpu", "cuda") and _EXTENSION_ERROR is not None:
            raise RuntimeError(
                f"{op}: backend={backend!r} needs the grace_fast._C extension, which did not import "
                f"({_EXTENSION_ERROR}). Build it with: {BUILD_COMMAND}"
            )
        raise RuntimeError(f"{op}: backend={backend!r} is not available here; available: {backends()}")
    if backend == "triton" and device.type == "cpu" and not _INTERPRET:
        raise ValueError(f"{op}: backend='triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)")
    return backend
