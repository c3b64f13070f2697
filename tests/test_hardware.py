"""grace_fast.hardware and amp "auto": bf16 autocast on a CPU with native bf16, full precision elsewhere."""

import pytest
import torch

from grace_fast import hardware
from grace_fast.train.loop import amp_dtype

CPU = torch.device("cpu")


@pytest.fixture
def flags(monkeypatch):
    """flags(*names): this CPU pretends to have exactly those /proc/cpuinfo flags."""

    def pretend(*names):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(names))

    return pretend


@pytest.mark.parametrize(
    "names, native",
    [
        (("avx2", "fma"), False),
        (("avx512f", "avx512bw", "avx512vl", "avx512_vnni"), False),
        (("avx512f", "avx512_bf16"), True),
        (("amx_tile", "amx_bf16"), True),
    ],
    ids=["avx2", "avx512-without-bf16", "avx512-bf16", "amx"],
)
def test_amp_auto_is_bf16_exactly_on_a_cpu_with_native_bf16(flags, names, native):
    flags(*names)
    assert hardware.native_bf16() is native
    assert amp_dtype("auto", CPU) is (torch.bfloat16 if native else None)
    assert hardware.auto_dtype(CPU) is (torch.bfloat16 if native else None)


def test_amp_bf16_runs_on_any_cpu_and_fp16_still_needs_a_gpu(flags):
    flags("avx2")
    assert amp_dtype("bf16", CPU) is torch.bfloat16
    assert amp_dtype("off", CPU) is None
    with pytest.raises(ValueError, match="amp='fp16' needs a GPU"):
        amp_dtype("fp16", CPU)


def test_cpu_flags_are_this_machines():
    with open("/proc/cpuinfo") as f:
        line = next(line for line in f if line.startswith("flags"))
    assert hardware.cpu_flags() == frozenset(line.split(":", 1)[1].split())
    assert set(hardware.describe()["cpu_flags"]) <= hardware.cpu_flags()
