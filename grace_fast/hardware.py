"""What this CPU does natively, read once at run time: the features that decide whether bf16 autocast pays on a CPU.

bf16 matmuls are fast on a CPU with AMX (`amx_bf16`, Intel Sapphire Rapids and later) or AVX512-BF16 (`avx512_bf16`,
Intel Cooper Lake, AMD Zen 4 and later); elsewhere torch emulates them, slower than fp32.

>>> from grace_fast.hardware import cpu_flags, native_bf16
>>> isinstance(native_bf16(), bool) and isinstance(cpu_flags(), frozenset)
True
"""

import functools

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names, either suffices
REPORTED_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", *BF16_FLAGS, "amx_tile")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls in hardware (AMX or AVX512-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def auto_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype "auto" means on device: bf16 on a GPU that supports it and on a CPU with native bf16,
    None (full precision) elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if native_bf16() else None
    return None


def describe() -> dict:
    """The CPU's torch capability and the flags among REPORTED_FLAGS it has, for benchmark reports."""
    flags = cpu_flags()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": [flag for flag in REPORTED_FLAGS if flag in flags],
        "native_bf16": native_bf16(),
    }
