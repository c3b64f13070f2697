"""Compiles the Triton kernels for a real GPU, without one: `python -m tests.ops.triton_compile --arch 90`.

The launchers run on CPU tensors of the canonical shapes with every kernel replaced by a recorder of its launches,
so the block sizes are the GPU's. Each distinct launch is specialised by Triton's own runtime binder (argument
types, divisibility, constexprs: what a launch on the GPU would compile) and compiled down to a cubin for sm_<arch>,
in a fresh cache so that ptxas runs; its register count and spills are printed, and any spill fails the run. The
interpreter never compiles anything, so this is what shows that the kernels are valid Triton for the hardware.
Uses the runtime's internals of Triton 3.9 (setup.py pins it for the tests). Run without TRITON_INTERPRET.
"""

import argparse
import contextlib
import io
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from types import ModuleType

import torch

from grace_fast.shapes import OT_PROBLEMS


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


def sinkhorn_launches() -> list[tuple]:
    from grace_fast.kernels import sinkhorn as ks

    def calls():
        for dtype in (torch.float32, torch.float64):
            for N, M in [*sorted({(N, M) for _, N, M, _ in OT_PROBLEMS.values()}), (3, 77), (77, 3)]:
                C = torch.rand(1, N, M, dtype=dtype)
                a, b = torch.full((1, N), 1 / N, dtype=dtype), torch.full((1, M), 1 / M, dtype=dtype)
                for tau_a, tau_b in ((math.inf, math.inf), (math.inf, 0.1), (0.1, 0.1)):  # balanced and relaxed
                    ks.sinkhorn_triton(C, a, b, 0.05, 50, 1e-4, tau_a, tau_b)

    return record(ks, calls)


def motion_weights_launches() -> list[tuple]:
    from grace_fast.kernels import motion_weights as km

    def calls():
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            X = torch.randn(1, 8, 14, 14, 768, dtype=dtype)
            for alpha, window in ((0.5, 3), (0.5, 5), (1.0, 3)):
                X_out, w, scores = km.motion_weights_triton(X, alpha, window, 1.0, 1.0, 1e-6)
                for grad_out, grad_w in ((X_out, w), (X_out, None), (None, w)):
                    km.motion_weights_triton_backward(grad_out, grad_w, X, w, scores, alpha, window, 1.0, 1.0, 1e-6)

    return record(km, calls)


def compile_launch(kernel, args: tuple, kwargs: dict, backend, target) -> tuple[str, Callable[[], object]]:
    """(the launch's specialisation key, a function compiling it), specialised as JITFunction.run would do it."""
    import triton
    from triton.compiler.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    key = repr((kernel.__name__, specialization, sorted(options.__dict__.items())))
    return key, lambda: triton.compile(ASTSource(kernel, signature, constexprs, attrs), target, options.__dict__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1: the interpreter compiles nothing")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas's report goes to stdout, where it is read per launch
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-compile-")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", args.arch, 32)
    backend = make_backend(target)
    seen, spilling = set(), 0
    for kernel, launch_args, kwargs in sinkhorn_launches() + motion_weights_launches():
        key, compile_it = compile_launch(kernel, launch_args, kwargs, backend, target)
        if key in seen:
            continue
        seen.add(key)
        with contextlib.redirect_stdout(io.StringIO()) as log:
            compiled = compile_it()
        assert compiled.asm.get("cubin"), f"{kernel.__name__}: no cubin"
        registers = re.search(r"Used (\d+) registers", log.getvalue())
        spills = re.search(r"(\d+) bytes spill stores", log.getvalue())
        if registers is None or spills is None:
            raise SystemExit(f"{kernel.__name__}: no ptxas report in\n{log.getvalue()}")
        spilling += int(spills[1]) > 0
        constexprs = {k: v for k, v in kwargs.items() if k.isupper() and k != "DTYPE"}
        pointers = sorted({str(a.dtype).removeprefix("torch.") for a in launch_args if isinstance(a, torch.Tensor)})
        print(
            f"sm_{args.arch} {kernel.__name__} {'/'.join(pointers)} {constexprs} "
            f"num_warps={compiled.metadata.num_warps}: {registers[1]} registers, {spills[1]} B spilled, "
            f"{compiled.metadata.shared} B shared",
            flush=True,
        )
    print(f"compiled {len(seen)} launches for sm_{args.arch}, {spilling} with register spills")
    sys.exit(1 if spilling else 0)


if __name__ == "__main__":
    main()
