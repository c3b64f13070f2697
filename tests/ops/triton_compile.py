"""Compiles the Triton kernels for a real GPU, without one: `python -m tests.ops.triton_compile --arch 90`.

The launchers run on CPU tensors of the canonical shapes with every kernel replaced by a recorder of its launches
(arguments, constexprs, num_warps), so the block sizes and specialisations are the GPU's; each distinct launch is
then compiled by triton.compile down to a cubin (ptxas included) for sm_<arch>. The interpreter never compiles
anything, so this is what shows that the kernels are valid Triton for the hardware. Run without TRITON_INTERPRET.
"""

import argparse
import os
import time
from collections.abc import Callable
from types import ModuleType

import torch

TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
}
OPTIONS = ("num_warps", "num_stages")


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` appends (kernel, args, kwargs) to launches."""

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def record(module: ModuleType, calls: Callable[[], None]) -> list[tuple]:
    """The launches that calls() makes of module's kernels (the kernels are restored afterwards)."""
    import triton

    kernels = {name: k for name, k in vars(module).items() if isinstance(k, triton.runtime.JITFunction)}
    launches: list[tuple] = []
    for name, kernel in kernels.items():
        setattr(module, name, _Recorder(kernel, launches))
    try:
        calls()
    finally:
        for name, kernel in kernels.items():
            setattr(module, name, kernel)
    return launches


def specialise(kernel, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attributes, options) of a launch, as the runtime would specialise it: tensors are
    pointers aligned to 16 bytes, Python ints i32 (divisible by 16 when they are), floats fp32."""
    values = dict(zip(kernel.arg_names, args, strict=False)) | {k: v for k, v in kwargs.items() if k not in OPTIONS}
    signature, constexprs, attributes = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params, strict=True)):
        value = values[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name], attributes[(i,)] = "*" + TYPES[value.dtype], [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attributes[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {name} of type {type(value).__name__}")
    options = {"num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
    return signature, constexprs, attributes, options


def sinkhorn_launches() -> list[tuple]:
    from grace_fast.kernels import sinkhorn as ks

    def calls():
        for dtype in (torch.float32, torch.float64):
            for N, M in ((77, 784), (77, 3136), (3, 77), (77, 3)):
                C = torch.rand(1, N, M, dtype=dtype)
                a, b = torch.full((1, N), 1 / N, dtype=dtype), torch.full((1, M), 1 / M, dtype=dtype)
                ks.sinkhorn_triton(C, a, b, 0.05, 50, 1e-4)

    return record(ks, calls)


def motion_weights_launches() -> list[tuple]:
    from grace_fast.kernels import motion_weights as km

    def calls():
        for dtype in (torch.float32, torch.bfloat16):
            X = torch.randn(1, 8, 14, 14, 768, dtype=dtype)
            for alpha, window in ((0.5, 3), (0.5, 5), (1.0, 3)):
                X_out, w, scores = km.motion_weights_triton(X, alpha, window, 1.0, 1.0, 1e-6)
                for grad_out, grad_w in ((X_out, w), (X_out, None), (None, w)):
                    km.motion_weights_triton_backward(grad_out, grad_w, X, w, scores, alpha, window, 1.0, 1.0, 1e-6)

    return record(km, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1: the interpreter compiles nothing")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    seen = set()
    for kernel, launch_args, kwargs in sinkhorn_launches() + motion_weights_launches():
        signature, constexprs, attributes, options = specialise(kernel, launch_args, kwargs)
        key = (kernel.__name__, *(tuple(sorted(map(str, d.items()))) for d in (signature, constexprs, options)))
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attributes), target=target, options=options)
        assert compiled.asm.get("cubin"), f"{kernel.__name__}: no cubin"
        described = ", ".join(f"{k}={v}" for k, v in constexprs.items() if k != "DTYPE")
        pointers = sorted({t for t in signature.values() if t.startswith("*")})
        print(
            f"sm_{args.arch} {kernel.__name__} {'/'.join(pointers)} {described} num_warps={options['num_warps']}: "
            f"{compiled.metadata.shared} B shared, {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    print(f"compiled {len(seen)} launches for sm_{args.arch}")


if __name__ == "__main__":
    main()
