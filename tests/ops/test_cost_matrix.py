"""grace_fast.ops.cost_matrix against its torch reference, on every backend this machine has."""

import functools
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grace_fast
from grace_fast.hardware import cpu_flags
from grace_fast.ops import cost_matrix
from grace_fast.ops._backends import fast_backends, kernels
from grace_fast.ops.reference import cost_matrix_reference
from grace_fast.shapes import OT_PROBLEMS
from tests.conftest import available, device_of
from tests.utils import assert_error_bounded, max_error, random_mask

FAST = available(kernels("cost_matrix"))
ALL = [pytest.param("torch"), *FAST]

CANONICAL = OT_PROBLEMS  # (B, N, M, D)
ODD = [1, 3, 77, 1000]


def _tokens(B, L, D, device):
    """Random directions with norms in [0.5, 2]: real embeddings; tiny norms would only amplify rounding."""
    x = torch.nn.functional.normalize(torch.randn(B, L, D, device=device), dim=-1)
    return x * torch.empty(B, L, 1, device=device).uniform_(0.5, 2.0)


def _inputs(B, N, M, D, dtype, device, masked):
    U = _tokens(B, N, D, device).to(dtype)
    V = _tokens(B, M, D, device).to(dtype)
    mask_u = random_mask(B, N).to(device) if masked else None
    mask_v = random_mask(B, M).to(device) if masked else None
    return U, V, mask_u, mask_v


def _forward_backward(fn, U, V, mask_u, mask_v, grad):
    U, V = U.detach().requires_grad_(), V.detach().requires_grad_()
    C = fn(U, V, mask_u, mask_v)
    return (C, *torch.autograd.grad(C, (U, V), grad.to(C.dtype)))


def _check_forward_backward(backend, U, V, mask_u, mask_v):
    """C, dU and dV (random upstream gradient) are as close to the fp64 reference as torch's own result is.

    The reference in the same dtype sets the bar; float64 inputs are held to the reference itself.
    """
    grad = torch.randn(U.shape[0], U.shape[1], V.shape[1], device=U.device, dtype=torch.float64)
    out = _forward_backward(lambda *a: cost_matrix(*a, backend=backend), U, V, mask_u, mask_v, grad)
    ref = _forward_backward(cost_matrix_reference, U, V, mask_u, mask_v, grad)
    ref64 = _forward_backward(cost_matrix_reference, U.double(), V.double(), mask_u, mask_v, grad)
    for name, o, r, r64 in zip(("C", "dU", "dV"), out, ref, ref64, strict=True):
        assert o.dtype == r.dtype and o.shape == r.shape, name
        if U.dtype == torch.float64:
            torch.testing.assert_close(o, r, atol=1e-12, rtol=1e-10, msg=name)
        else:
            assert_error_bounded(o, r, r64, factor=4.0, floor=1e-5 * max(1.0, r64.abs().max().item()))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", CANONICAL.values(), ids=CANONICAL.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_canonical_shapes_match_reference(backend, shape, dtype):
    _check_forward_backward(backend, *_inputs(*shape, dtype, device_of(backend), masked=True))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("D", ODD, ids=lambda d: f"D{d}")
@pytest.mark.parametrize("M", ODD, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("N", ODD, ids=lambda n: f"N{n}")
def test_odd_sizes_match_reference(backend, N, M, D):
    _check_forward_backward(backend, *_inputs(2, N, M, D, torch.float32, device_of(backend), masked=N > 1))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_dtypes_and_masks_match_reference(backend, dtype, masked):
    _check_forward_backward(backend, *_inputs(3, 20, 45, 37, dtype, device_of(backend), masked))


BF16_SIZES = [(1, 1, 1), (3, 7, 3), (7, 77, 77), (77, 33, 1000), (5, 50, 1025)]  # (N, M, D): odd depths, D > 512


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("N, M, D", BF16_SIZES, ids=lambda n: str(n))
def test_bf16_odd_sizes_match_reference(backend, N, M, D):
    """bf16 packs pairs of depths (the bf16 dot path of the cpu backend): odd and multi-block depths included."""
    _check_forward_backward(backend, *_inputs(2, N, M, D, torch.bfloat16, device_of(backend), masked=N > 1))


def _cpu_forward_backward_with(capability):
    """C, dU, dV of the cpu backend on fixed bf16 inputs in a fresh process whose ATEN_CPU_CAPABILITY is capability."""
    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys, torch; from tests.ops.test_cost_matrix import _fixed_bf16_case; "
        "torch.save(_fixed_bf16_case('cpu'), sys.stdout.buffer)"
    )
    env = os.environ | {"ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr.decode()[-4000:]
    return torch.load(io.BytesIO(run.stdout))


def _fixed_bf16_case(backend):
    torch.manual_seed(0)
    case = _inputs(3, 40, 90, 300, torch.bfloat16, "cpu", masked=True)
    grad = torch.randn(3, 40, 90, dtype=torch.float64)
    return case, _forward_backward(functools.partial(cost_matrix, backend=backend), *case, grad), grad


@pytest.mark.skipif(not grace_fast.backends()["cpu"], reason="needs the cpu backend")
def test_bf16_dot_path_is_picked_where_the_cpu_has_it_and_the_fallback_agrees():
    """With AVX512-BF16 (and ATen at AVX-512) bf16 runs on the dot path; ATEN_CPU_CAPABILITY=avx2 gives the fp32 path.
    Both meet the tolerance; they round differently, so their results differ exactly when the dot path is taken."""
    dot = "avx512_bf16" in cpu_flags() and torch.backends.cpu.get_cpu_capability() == "AVX512"
    case, default, grad = _fixed_bf16_case("cpu")
    fallback_case, fallback, _ = _cpu_forward_backward_with("avx2")
    assert all(torch.equal(a, b) for a, b in zip(case[:2], fallback_case[:2], strict=True))
    ref = _forward_backward(cost_matrix_reference, *case, grad)
    ref64 = _forward_backward(cost_matrix_reference, case[0].double(), case[1].double(), *case[2:], grad)
    for out in (default, fallback):
        for o, r, r64 in zip(out, ref, ref64, strict=True):
            assert_error_bounded(o, r, r64, factor=4.0, floor=1e-5 * max(1.0, r64.abs().max().item()))
    assert torch.equal(default[0], fallback[0]) != dot


@pytest.mark.parametrize("backend", FAST)
def test_fp32_error_is_bounded_by_torch_error(backend):
    U, V, mask_u, mask_v = _inputs(4, 77, 784, 512, torch.float32, device_of(backend), masked=True)
    ref64 = cost_matrix_reference(U.double(), V.double(), mask_u, mask_v)
    ref = cost_matrix_reference(U, V, mask_u, mask_v)
    assert_error_bounded(cost_matrix(U, V, mask_u, mask_v, backend=backend), ref, ref64)


@pytest.mark.parametrize("backend", ALL)
def test_padded_entries_are_zero_and_get_no_gradient(backend):
    device = device_of(backend)
    U, V, mask_u, mask_v = _inputs(3, 9, 14, 16, torch.float32, device, masked=True)
    mask_u[1] = False  # a whole padded batch element
    mask_u[0, 4] = False
    mask_v[2, 5:] = False
    U.requires_grad_()
    V.requires_grad_()
    C = cost_matrix(U, V, mask_u, mask_v, backend=backend)
    invalid = ~(mask_u[:, :, None] & mask_v[:, None, :])
    assert (C[invalid] == 0).all()
    assert torch.isfinite(C).all()
    dU, dV = torch.autograd.grad(C, (U, V), torch.randn_like(C))
    assert (dU[~mask_u] == 0).all() and (dV[~mask_v] == 0).all()
    assert dU[mask_u].abs().sum() > 0 and dV[mask_v].abs().sum() > 0


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_vector_has_cost_one_and_zero_gradient(backend, dtype):
    device = device_of(backend)
    U, V, _, _ = _inputs(2, 5, 7, 8, dtype, device, masked=False)
    U[0, 2] = 0
    V[1, 3] = 0
    U.requires_grad_()
    V.requires_grad_()
    C = cost_matrix(U, V, backend=backend)
    assert torch.isfinite(C).all()
    assert (C[0, 2] == 1).all() and (C[1, :, 3] == 1).all()
    dU, dV = torch.autograd.grad(C, (U, V), torch.randn_like(C))
    assert torch.isfinite(dU).all() and torch.isfinite(dV).all()
    assert (dU[0, 2] == 0).all() and (dV[1, 3] == 0).all()


# powers of two near 1e19 and 1e-22: scaling by them is exact, and squaring them overflows / underflows float32
MAGNITUDES = {"huge": (2.0**63, 2.0**63), "tiny": (2.0**-73, 2.0**-73), "huge-and-tiny": (2.0**63, 2.0**-73)}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scales", MAGNITUDES.values(), ids=MAGNITUDES.keys())
def test_extreme_magnitudes_give_the_unit_scale_result(backend, dtype, scales):
    """Cosines ignore the scale of U and V: at entries around 1e19 or 1e-22, whose squared norms overflow or underflow
    in float32, C is that of the unscaled inputs and dU, dV are theirs divided by the scale."""
    a, b = scales
    U, V, mask_u, mask_v = _inputs(2, 9, 14, 512, dtype, device_of(backend), masked=True)
    grad = torch.randn(2, 9, 14, device=U.device, dtype=torch.float64)
    op = functools.partial(cost_matrix, backend=backend)
    C, dU, dV = _forward_backward(op, U, V, mask_u, mask_v, grad)
    C_s, dU_s, dV_s = _forward_backward(op, U * a, V * b, mask_u, mask_v, grad)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(C_s, C, **tol)
    torch.testing.assert_close(dU_s.float() * a, dU.float(), **tol)
    torch.testing.assert_close(dV_s.float() * b, dV.float(), **tol)


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_inputs(backend):
    device = device_of(backend)
    U = torch.randn(6, 32, 2, device=device).transpose(0, 2)[:, ::2]  # [2, 16, 6], strided
    V = torch.randn(2, 6, 40, device=device).transpose(1, 2)[:, 3:]  # [2, 37, 6]
    mask_u = torch.rand(16, 2, device=device).T > 0.3
    assert not U.is_contiguous() and not V.is_contiguous() and not mask_u.is_contiguous()
    expected = cost_matrix_reference(U.contiguous(), V.contiguous(), mask_u.contiguous())
    torch.testing.assert_close(cost_matrix(U, V, mask_u, backend=backend), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_mixed_input_dtypes_promote(backend):
    device = device_of(backend)
    U = torch.randn(2, 5, 8, device=device)
    V = torch.randn(2, 7, 8, device=device).bfloat16()
    expected = cost_matrix_reference(U, V.float())
    torch.testing.assert_close(cost_matrix(U, V, backend=backend), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_gradcheck_float64(backend):
    device = device_of(backend)
    U = torch.randn(2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    V = torch.randn(2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    mask_u = torch.tensor([[True, True, False, True], [True, False, True, True]], device=device)
    mask_v = torch.ones(2, 6, dtype=torch.bool, device=device)
    mask_v[1, 0] = False
    assert torch.autograd.gradcheck(lambda u, v: cost_matrix(u, v, mask_u, mask_v, backend=backend), (U, V))


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    device = device_of(backend)
    for dtype in (torch.float32, torch.bfloat16):
        U = torch.randn(2, 5, 8, device=device, dtype=dtype, requires_grad=True)
        V = torch.randn(2, 7, 8, device=device, dtype=dtype, requires_grad=True)
        for masks in ((None, None), (random_mask(2, 5).to(device), random_mask(2, 7).to(device))):
            torch.library.opcheck(torch.ops.grace_fast.cost_matrix.default, (U, V, *masks, backend))


@pytest.mark.parametrize("backend", FAST)
def test_opcheck_backward_on_strided_inputs(backend):
    """The kernels write contiguous gradients whatever U's strides; the fake tensors must say so (inductor checks
    the strides)."""
    device = device_of(backend)
    U = torch.randn(5, 2, 8, device=device).transpose(0, 1)
    V = torch.randn(2, 7, 8, device=device)
    C, ru, rv = torch.ops.grace_fast.cost_matrix(U, V, None, None, backend)
    torch.library.opcheck(torch.ops.grace_fast.cost_matrix_grad.default, (torch.randn_like(C), U, V, ru, rv, backend))


@pytest.mark.parametrize("backend", ALL)
def test_double_backward_is_exact_or_refused(backend):
    """The reference is differentiable twice; the kernels' backward is not, and says so instead of being wrong."""
    device = device_of(backend)
    U = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    V = torch.randn(2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)

    def fn(u, v):
        return cost_matrix(u, v, backend=backend)

    if backend == "torch":
        assert torch.autograd.gradgradcheck(fn, (U, V))
    else:
        with pytest.raises(RuntimeError, match="no double backward"):
            torch.autograd.gradgradcheck(fn, (U, V))


@pytest.mark.parametrize("backend", ALL)
def test_autocast_changes_nothing(backend):
    """Training runs under bf16 autocast: C stays float32, with the same values and gradients, on every backend."""
    U, V, mask_u, mask_v = _inputs(2, 5, 9, 16, torch.float32, device_of(backend), masked=True)
    grad = torch.randn(2, 5, 9, device=U.device)

    def forward_backward(autocast):
        u, v = U.detach().requires_grad_(), V.detach().requires_grad_()
        with torch.autocast(U.device.type, dtype=torch.bfloat16, enabled=autocast):
            C = cost_matrix(u, v, mask_u, mask_v, backend=backend)
        return (C, *torch.autograd.grad(C, (u, v), grad))  # backward outside autocast, as torch.amp advises

    for g, e in zip(forward_backward(True), forward_backward(False), strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ALL)
def test_torch_compile_fullgraph(backend):
    device = device_of(backend)
    U = torch.randn(2, 5, 8, device=device, requires_grad=True)
    V = torch.randn(2, 7, 8, device=device, requires_grad=True)
    mask_v = random_mask(2, 7).to(device)

    def loss(u, v):
        return (cost_matrix(u, v, None, mask_v, backend=backend) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected = loss(U, V)
    got = compiled(U, V)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, U)[0], torch.autograd.grad(expected, U)[0])


def test_auto_picks_the_extension_when_built():
    U, V = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    expected_backend = "cpu" if grace_fast.backends()["cpu"] else "torch"
    torch.testing.assert_close(cost_matrix(U, V), cost_matrix(U, V, backend=expected_backend), atol=0, rtol=0)


def test_backends_reports_each_backend():
    have = grace_fast.backends()
    assert set(have) == {"torch", "cpu", "cuda", "triton"} and have["torch"] is True
    assert all(isinstance(v, bool) for v in have.values())
    assert have["cuda"] <= torch.cuda.is_available()


U3, V3 = torch.randn(2, 3, 4), torch.randn(2, 5, 4)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((U3[0], V3), {}, ValueError, r"U must be \[B, N, D\], got shape \(3, 4\)"),
        ((U3, V3[:1]), {}, ValueError, r"batch size B must match \(U: 2, V: 1\)"),
        ((U3, V3[..., :3]), {}, ValueError, r"feature size D must match \(U: 4, V: 3\)"),
        ((U3.long(), V3), {}, TypeError, r"U must be floating point .* got torch.int64"),
        ((U3, V3.numpy()), {}, TypeError, r"V must be a torch.Tensor \[B, M, D\], got ndarray"),
        ((U3, V3, torch.ones(2, 4, dtype=torch.bool)), {}, ValueError, r"mask_u must be \[B, N\] = \(2, 3\)"),
        ((U3, V3, None, torch.ones(2, 5)), {}, TypeError, r"mask_v must be a bool tensor .* got torch.float32"),
        ((U3[..., :0], V3[..., :0]), {}, ValueError, r"D must be at least 1"),
        ((U3, V3), {"backend": "fast"}, ValueError, r"backend must be one of .* got 'fast'"),
        ((U3, V3), {"backend": "cuda"}, ValueError, r"backend='cuda' does not run on cpu tensors"),
    ],
    ids=["rank", "batch", "dim", "int-dtype", "numpy", "mask-shape", "mask-dtype", "empty-D", "backend", "device"],
)
def test_bad_input_is_named(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        cost_matrix(*args, **kwargs)


def test_error_of_each_backend_is_small_on_unit_vectors():
    """Cosines of identical unit vectors give C = 0 to fp32 precision in every available backend."""
    U = torch.nn.functional.normalize(torch.randn(2, 50, 64), dim=-1)
    for backend in ["torch", *fast_backends("cost_matrix", "cpu")]:
        C = cost_matrix(U, U, backend=backend)
        assert max_error(torch.diagonal(C, dim1=1, dim2=2), torch.zeros(2, 50)) < 1e-6
