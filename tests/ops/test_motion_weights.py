"""grace_fast.ops.motion_weights: the reference against a loop-by-loop reading of docs/method.md section 1, and every
backend this machine has against the reference."""

import functools
import itertools

import pytest
import torch

import grace_fast
from benchmarks.utils import peak_memory_mb
from grace_fast.ops import motion_weights
from grace_fast.ops._backends import kernels
from grace_fast.ops.motion_weights import MODES
from grace_fast.ops.reference import motion_weights_reference
from grace_fast.ops.reference.motion_weights import NORM_EPS
from tests.conftest import INTERPRETED, available, device_of
from tests.utils import assert_error_bounded

FAST = available(kernels("motion_weights"))
ALL = [pytest.param("torch"), *FAST]
CPU = available(("cpu",))

SHAPES = {  # (B, T, H, W, D)
    "T1": (2, 1, 3, 4, 8),
    "T2": (2, 2, 3, 3, 8),
    "H1W1": (2, 4, 1, 1, 8),
    "odd-3x5x7-D37": (2, 3, 5, 7, 37),
    "D1": (1, 3, 4, 4, 1),
    "D77-block-edge": (2, 4, 4, 3, 77),
    "D1000": (1, 2, 2, 3, 1000),
    "B3-of-groups-of-2": (3, 8, 14, 14, 40),  # the cpu backend's groups of clips, on all threads
}
MIXES = {
    "both": ("both", None),
    "temporal": ("temporal", None),
    "spatial": ("spatial", None),
    "alpha0.3": ("both", 0.3),
}
WINDOWS = [1, 3, 5]
# the interpreter takes seconds per call: Triton gets every shape once and each mix and window at least once
TRITON_CASES = [
    ("T1", "both", 3),
    ("T2", "spatial", 3),
    ("H1W1", "both", 3),
    ("odd-3x5x7-D37", "alpha0.3", 5),
    ("odd-3x5x7-D37", "spatial", 3),
    ("D1", "temporal", 1),
    ("D77-block-edge", "both", 3),
    ("D1000", "spatial", 3),
]


def _matrix_cases() -> list:
    """(backend, shape, mix, window) params: every combination for the cpu backend, TRITON_CASES for triton."""
    cases = []
    for backend in FAST:
        name = backend.values[0]
        combos = TRITON_CASES if name == "triton" else itertools.product(SHAPES, MIXES, WINDOWS)
        for shape, mix, window in combos:
            case_id = f"{name}-{shape}-{mix}-window{window}"
            cases.append(pytest.param(name, SHAPES[shape], MIXES[mix], window, marks=backend.marks, id=case_id))
    return cases


def _naive(X, alpha, window, temperature, beta):
    """docs/method.md section 1 token by token in float64: explicit differences and clipped windows."""
    X = X.double()
    B, T, H, W, D = X.shape
    if T == 1:
        w = torch.ones(B, T, H, W, dtype=torch.float64)
    else:
        delta = torch.zeros_like(X)
        for t in range(1, T):
            delta[:, t] = X[:, t] - X[:, t - 1]
        delta[:, 0] = delta[:, 1]
        local = torch.zeros_like(X)
        r = window // 2
        for h in range(H):
            for v in range(W):
                box = delta[:, :, max(0, h - r) : h + r + 1, max(0, v - r) : v + r + 1]
                local[:, :, h, v] = delta[:, :, h, v] - box.mean(dim=(2, 3))
        tau, sigma = delta.norm(dim=-1), local.norm(dim=-1)
        tau = tau / (tau.mean(dim=(1, 2, 3), keepdim=True) + NORM_EPS)
        sigma = sigma / (sigma.mean(dim=(1, 2, 3), keepdim=True) + NORM_EPS)
        score = (alpha * tau + (1 - alpha) * sigma).reshape(B, -1) / temperature
        w = (T * H * W * score.softmax(dim=1)).view(B, T, H, W)
    return X * (1 + beta * (w - 1))[..., None], w


def _with_grads(fn, X, grad_out, grad_w):
    """(X_out, w, dX) of fn(X) under the upstream gradients of both outputs (w may be a constant: T = 1)."""
    X = X.detach().requires_grad_()
    X_out, w = fn(X)
    pairs = [(o, g.to(o.dtype)) for o, g in ((X_out, grad_out), (w, grad_w)) if o.requires_grad]
    outputs, grads = zip(*pairs, strict=True)
    (dX,) = torch.autograd.grad(outputs, X, grads)
    return X_out, w, dX


def _check_against_reference(backend, X, **kwargs):
    """X_out, w and dX are as close to the float64 reference as the reference run in X's dtype is."""
    grad_out, grad_w = torch.randn(X.shape, dtype=torch.float64), torch.randn(X.shape[:-1], dtype=torch.float64)
    grad_out, grad_w = grad_out.to(X.device), grad_w.to(X.device)
    out = _with_grads(lambda x: motion_weights(x, backend=backend, **kwargs), X, grad_out, grad_w)
    ref = _with_grads(lambda x: motion_weights(x, backend="torch", **kwargs), X, grad_out, grad_w)
    ref64 = _with_grads(lambda x: motion_weights(x, backend="torch", **kwargs), X.double(), grad_out, grad_w)
    for name, o, r, r64 in zip(("X_out", "w", "dX"), out, ref, ref64, strict=True):
        assert o.dtype == r.dtype and o.shape == r.shape, name
        assert_error_bounded(o, r, r64, factor=4.0, floor=1e-5 * max(1.0, r64.abs().max().item()))


@pytest.mark.parametrize("window", WINDOWS, ids=lambda k: f"window{k}")
@pytest.mark.parametrize("mix", MIXES.values(), ids=MIXES.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_reference_follows_the_definition(shape, mix, window):
    X = torch.randn(shape, dtype=torch.float64)
    mode, alpha = mix
    alpha = {"both": 0.5, "temporal": 1.0, "spatial": 0.0}[mode] if alpha is None else alpha
    X_out, w = motion_weights_reference(X, alpha=alpha, window=window, temperature=0.7, beta=0.8)
    expected_out, expected_w = _naive(X, alpha, window, temperature=0.7, beta=0.8)
    torch.testing.assert_close(w, expected_w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(X_out, expected_out, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend, shape, mix, window", _matrix_cases())
def test_backend_matches_reference(backend, shape, mix, window):
    mode, alpha = mix
    X = torch.randn(shape, device=device_of(backend))
    _check_against_reference(backend, X, mode=mode, alpha=alpha, window=window, temperature=0.7)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0], ids=lambda b: f"beta{b}")
def test_backend_matches_reference_for_beta(backend, beta):
    _check_against_reference(backend, torch.randn(2, 3, 4, 5, 24, device=device_of(backend)), beta=beta)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_matches_reference(backend, dtype):
    _check_against_reference(backend, torch.randn(2, 3, 5, 4, 40).to(dtype))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bf16_autocast_changes_nothing(backend, dtype):
    """Training and inference run under bf16 autocast (on a GPU, and on a CPU with bf16 hardware): X_out and w keep
    their dtypes, values and gradients, for the fp32 and bf16 tokens the backbone hands over."""
    device = device_of(backend)
    X = torch.randn(2, 4, 5, 5, 40, device=device).to(dtype)
    grads = torch.randn(X.shape, device=device), torch.randn(X.shape[:-1], device=device)
    fn = functools.partial(motion_weights, backend=backend)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = _with_grads(fn, X, *grads)
    for g, e in zip(got, _with_grads(fn, X, *grads), strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ALL)
def test_non_contiguous_input(backend):
    X = torch.randn(2, 5, 4, 6, 6, device=device_of(backend)).transpose(1, 3)[..., ::2]
    assert X.shape == (2, 6, 4, 5, 3) and not X.is_contiguous()
    grads = torch.randn(X.shape, device=X.device), torch.randn(X.shape[:-1], device=X.device)
    out = _with_grads(lambda x: motion_weights(x, backend=backend), X, *grads)
    ref = _with_grads(motion_weights_reference, X.contiguous(), *grads)
    for o, r in zip(out, ref, strict=True):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ALL)
def test_single_frame_has_unit_weights(backend):
    X = torch.randn(2, 1, 3, 3, 16, device=device_of(backend))
    grad_out = torch.randn(X.shape, device=X.device)
    X_out, w, dX = _with_grads(
        lambda x: motion_weights(x, backend=backend), X, grad_out, torch.randn(X.shape[:-1], device=X.device)
    )
    assert (w == 1).all() and torch.equal(X_out, X)
    assert torch.equal(dX, grad_out)


@pytest.mark.parametrize("backend", ALL)
def test_weights_have_mean_one_and_beta_scales_them(backend):
    X = torch.randn(3, 4, 5, 5, 16, device=device_of(backend))
    X_out, w = motion_weights(X, beta=1.0, backend=backend)
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(3, device=X.device), atol=1e-5, rtol=0)
    assert (w > 0).all() and w.std() > 0.1
    torch.testing.assert_close(X_out, X * w[..., None], atol=1e-5, rtol=1e-5)
    X_off, w_off = motion_weights(X, beta=0.0, backend=backend)
    torch.testing.assert_close(w_off, w)
    assert torch.equal(X_off, X)


@pytest.mark.parametrize("backend", ALL)
def test_explicit_alpha_overrides_mode(backend):
    X = torch.randn(2, 3, 4, 4, 8, device=device_of(backend))
    for mode, alpha in (("temporal", 0.0), ("spatial", 1.0), ("both", 1.0)):
        expected = {0.0: "spatial", 1.0: "temporal"}[alpha]
        torch.testing.assert_close(
            motion_weights(X, mode=mode, alpha=alpha, backend=backend)[1], motion_weights(X, mode=expected)[1]
        )
    assert not torch.allclose(motion_weights(X, mode="temporal")[1], motion_weights(X, mode="spatial")[1])


@pytest.mark.parametrize("backend", ALL)
def test_shared_motion_cancels_in_the_spatial_score_and_local_motion_stands_out(backend):
    """A change shared by every token of a frame (camera shake, head turn) leaves the spatial score at zero: all
    weights stay 1. A local change of the same size raises the weight where it happens, above its neighbours.
    float64: the per-clip normalisation would scale float32 rounding of a zero score up to order 1."""
    device = device_of(backend)
    X = torch.randn(1, 3, 7, 7, 32, device=device, dtype=torch.float64)
    X[:, 2] = X[:, 1]  # no motion from frame 1 to frame 2
    step = torch.randn(32, device=device, dtype=torch.float64)
    shared = X.clone()
    shared[:, 1:] = X[:, :1] + step  # frame 0 -> 1: the same difference at every token
    _, w_shared = motion_weights(shared, mode="spatial", backend=backend)
    torch.testing.assert_close(w_shared, torch.ones_like(w_shared), atol=1e-8, rtol=0)
    local = X.clone()
    local[:, 1:] = X[:, :1]
    local[:, 1:, 3, 4] += step  # the same difference at one token only
    _, w_local = motion_weights(local, mode="spatial", backend=backend)
    for t in (0, 1):  # Delta_0 = Delta_1
        frame = w_local[0, t]
        assert frame.argmax() == 3 * 7 + 4 and frame[3, 4] > 1
        assert (frame[3, 4] > frame.flatten().topk(2).values[1] + 1e-3).all()
    torch.testing.assert_close(w_local[0, 2], torch.full_like(w_local[0, 2], w_local[0, 2].min().item()))


@pytest.mark.parametrize("backend", ALL)
def test_still_clip_has_unit_weights_and_finite_gradients(backend):
    X = torch.randn(1, 1, 4, 4, 8, device=device_of(backend)).expand(2, 3, 4, 4, 8).contiguous()
    grads = torch.randn(X.shape, device=X.device), torch.randn(X.shape[:-1], device=X.device)
    _, w, dX = _with_grads(lambda x: motion_weights(x, backend=backend), X, *grads)
    torch.testing.assert_close(w, torch.ones_like(w))
    assert torch.isfinite(dX).all()


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("magnitude", [2.0**63, 2.0**-73], ids=["huge", "tiny"])
def test_extreme_magnitudes_match_the_float64_reference(backend, magnitude):
    """At entries around 1e19 or 1e-22 (powers of two: exact scaling), whose squared norms overflow or underflow in
    float32, X_out, w and dX in float32 are as close to the float64 reference as at unit scale."""
    X = torch.randn(2, 3, 4, 5, 64, device=device_of(backend)) * magnitude
    grads = torch.randn(X.shape, device=X.device), torch.randn(X.shape[:-1], device=X.device)
    out = _with_grads(lambda x: motion_weights(x, backend=backend, temperature=0.7), X, *grads)
    ref64 = _with_grads(lambda x: motion_weights(x, backend="torch", temperature=0.7), X.double(), *grads)
    for name, o, r64 in zip(("X_out", "w", "dX"), out, ref64, strict=True):
        scale = r64.abs().max().item()
        torch.testing.assert_close(o.double(), r64, atol=1e-5 * scale, rtol=1e-4, msg=name)


def _full_peak_mb(X, backend):
    """MiB that motion_weights allocates at most in forward plus the backward of random upstream gradients of X_out and
    w, outputs and dX included (bench_motion's full mode)."""
    X = X.detach().requires_grad_()
    upstream = torch.randn_like(X), torch.randn(X.shape[:-1])

    def full():
        X_out, w = motion_weights(X, backend=backend)
        torch.autograd.grad((X_out, w), X, upstream)

    return peak_memory_mb(full)


@pytest.mark.parametrize("backend", CPU)
def test_backward_keeps_no_per_token_buffer_besides_the_weights(backend):
    """Twice the clips add exactly their X_out, dX and w to the peak: the backward recomputes the scores instead of
    saving them, and its other buffers are sized by threads and groups of clips, not by the batch."""
    shape = (4, 23, 23, 8)  # 2116 tokens per clip: one clip per group
    small, large = (_full_peak_mb(torch.randn(B, *shape), backend) * 2**20 for B in (2, 4))
    tokens = 2 * shape[0] * shape[1] * shape[2]
    assert large - small == tokens * (2 * shape[3] + 1) * 4


@pytest.mark.parametrize("backend", CPU)
def test_forward_backward_peak_memory_is_two_inputs_at_the_benchmark_shape(backend):
    """X [8, 32, 14, 14, 768] bfloat16 (bench_motion's 64 frames, where w and the scratch weigh most) on 2 threads: the
    peak is X_out and dX plus less than 0.6 % of X (peak_over_X 2.01): w, and per thread a tile scratch and the
    backward's 3 values per token of one clip."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X = torch.randn(8, 32, 14, 14, 768, dtype=torch.bfloat16)
        peak = _full_peak_mb(X, backend) * 2**20 / (X.numel() * X.element_size())
    finally:
        torch.set_num_threads(threads)
    assert peak < 2.006, peak


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_results_do_not_depend_on_the_number_of_threads(backend, dtype):
    """X_out, w and dX are bitwise the same on 1 and 2 threads: the threads take work items as they come free, so
    which thread computes an item changes from run to run, and nothing of that may reach the results."""
    X = torch.randn(SHAPES["B3-of-groups-of-2"], dtype=dtype)
    grad_out, grad_w = torch.randn(X.shape, dtype=torch.float64), torch.randn(X.shape[:-1], dtype=torch.float64)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(_with_grads(lambda x: motion_weights(x, backend=backend), X, grad_out, grad_w))
    finally:
        torch.set_num_threads(threads)
    for name, one, two in zip(("X_out", "w", "dX"), *runs, strict=True):
        assert torch.equal(one, two), name


def _slow_under_interpreter(backend: str) -> bool:
    return backend == "triton" and INTERPRETED


@pytest.mark.parametrize(
    "backend, mode",
    [pytest.param("torch", "both", id="torch-both")]
    + [pytest.param(*c.values, mode, marks=c.marks, id=f"cpu-{mode}") for c in CPU for mode in MODES]
    + [pytest.param("triton", "both", marks=b.marks, id="triton-both") for b in FAST if b.values[0] == "triton"],
)
def test_gradcheck_float64(backend, mode):
    """Both outputs; every mode on the cpu backend, mode "both" (it runs both stencils) on the reference and on the
    interpreted Triton kernels, which check random projections of the Jacobians (fast_mode): they are slow."""
    X = torch.randn(1, 3, 3, 4, 2, dtype=torch.float64, device=device_of(backend), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: motion_weights(x, mode=mode, temperature=0.5, beta=0.7, backend=backend),
        (X,),
        fast_mode=_slow_under_interpreter(backend),
    )


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_opcheck(backend, dtype):
    if _slow_under_interpreter(backend) and dtype != torch.float32:
        pytest.skip("the interpreter is slow: the registrations do not depend on the dtype")
    X = torch.randn(2, 3, 3, 4, 5, dtype=dtype, device=device_of(backend), requires_grad=True)
    for args in ((0.5, 3, 0.7, 1.0, NORM_EPS), (1.0, 1, 1.0, 0.0, NORM_EPS)):
        torch.library.opcheck(torch.ops.grace_fast.motion_weights.default, (X, *args, backend))


@pytest.mark.parametrize("backend", ALL)
def test_double_backward_is_exact_or_refused(backend):
    """The reference is differentiable twice; the kernels' backward is not, and says so instead of being wrong."""
    X = torch.randn(1, 3, 2, 2, 3, dtype=torch.float64, device=device_of(backend), requires_grad=True)

    def fn(x):
        return motion_weights(x, temperature=0.5, beta=0.7, backend=backend)

    if backend == "torch":
        assert torch.autograd.gradgradcheck(fn, (X,))
    else:
        with pytest.raises(RuntimeError, match="no double backward"):
            torch.autograd.gradgradcheck(fn, (X,))


@pytest.mark.parametrize("backend", ALL)
def test_torch_compile_fullgraph(backend):
    X = torch.randn(2, 3, 4, 4, 8, device=device_of(backend), requires_grad=True)

    def loss(x):
        X_out, w = motion_weights(x, window=3, backend=backend)
        return (X_out**2).sum() + (w**3).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected, got = loss(X), compiled(X)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, X)[0], torch.autograd.grad(expected, X)[0])


def test_auto_picks_the_fastest_backend():
    X = torch.randn(1, 3, 4, 4, 8)
    have = grace_fast.backends()
    expected = "cpu" if have["cpu"] else "torch"
    torch.testing.assert_close(motion_weights(X)[1], motion_weights(X, backend=expected)[1], atol=0, rtol=0)


X5 = torch.randn(1, 2, 3, 3, 4)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.randn(2, 3, 4, 8),), {}, ValueError, r"X must be \[B, T, H, W, D\]"),
        ((X5.long(),), {}, TypeError, "X must be floating point"),
        ((torch.randn(1, 0, 3, 3, 4),), {}, ValueError, "no empty dimension"),
        ((X5,), {"mode": "local"}, ValueError, "mode must be one of"),
        ((X5,), {"alpha": 1.5}, ValueError, "alpha must be None or a number in"),
        ((X5,), {"window": 2}, ValueError, "window must be an odd integer"),
        ((X5,), {"window": 0}, ValueError, "window must be an odd integer"),
        ((X5,), {"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ((X5,), {"beta": float("nan")}, ValueError, "beta must be a finite number"),
        ((X5,), {"backend": "numpy"}, ValueError, "backend must be one of"),
    ],
    ids=["rank", "dtype", "empty", "mode", "alpha", "window-even", "window-0", "temperature", "beta", "backend"],
)
def test_invalid_arguments_are_named(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        motion_weights(*args, **kwargs)
