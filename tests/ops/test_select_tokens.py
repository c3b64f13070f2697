"""grace_fast.ops.select_tokens against a clip-by-clip reading of docs/method.md section 2."""

import math
from fractions import Fraction

import pytest
import torch

from grace_fast.ops import TokenSelection, select_tokens

SHAPES = {"5d-8x14x14": (3, 8, 14, 14, 16), "5d-odd": (2, 3, 5, 7, 5), "3d-L1": (2, 1, 4), "3d-L77": (4, 77, 3)}


def _inputs(shape, dtype=torch.float32):
    X = torch.randn(shape, dtype=dtype)
    w = torch.rand(shape[:-1]) * 3
    return X, w


def _naive(X, w, count, K):
    """Clip by clip: the first `count[b]` tokens by descending w (earlier first on ties), in their original order."""
    B, D = X.shape[0], X.shape[-1]
    x, weight = X.reshape(B, -1, D), w.reshape(B, -1)
    tokens, weights = torch.zeros(B, K, D, dtype=X.dtype), torch.zeros(B, K, dtype=w.dtype)
    index, mask = torch.full((B, K), -1), torch.zeros(B, K, dtype=torch.bool)
    for b in range(B):
        ranked = sorted(range(weight.shape[1]), key=lambda i: (-weight[b, i].item(), i))
        kept = sorted(ranked[: count[b]])
        n = len(kept)
        tokens[b, :n], weights[b, :n] = x[b, kept], weight[b, kept]
        index[b, :n], mask[b, :n] = torch.tensor(kept, dtype=torch.long), True
    return TokenSelection(tokens, weights, index, mask)


def _mass_count(w, q):
    """The fewest tokens, heaviest first, whose weight share reaches q (exact rational sums, clip by clip)."""
    counts = []
    for row in w.reshape(w.shape[0], -1).tolist():
        values = sorted((Fraction(v) for v in row), reverse=True)
        goal, acc, n = Fraction(q) * sum(values), Fraction(0), 0
        while acc < goal:
            acc, n = acc + values[n], n + 1
        counts.append(n)
    return counts


def _assert_equal(got, expected):
    for name, g, e in zip(TokenSelection._fields, got, expected, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        torch.testing.assert_close(g, e, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 1.0, 1e-3])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_fixed_ratio_keeps_the_top_tokens_in_order(shape, ratio):
    X, w = _inputs(shape)
    L = math.prod(shape[1:-1])
    K = max(1, math.ceil(round(ratio * L, 6)))
    _assert_equal(select_tokens(X, w, ratio=ratio), _naive(X, w, [K] * shape[0], K))


def test_fixed_ratio_count_is_not_fooled_by_rounding():
    X, w = _inputs((1, 10, 2))
    assert select_tokens(X, w, ratio=0.3).tokens.shape == (1, 3, 2)  # 0.3 * 10 = 3.0000000000000004
    assert select_tokens(X, w, ratio=0.31).tokens.shape == (1, 4, 2)
    assert select_tokens(X[:, :1], w[:, :1], ratio=0.5).tokens.shape == (1, 1, 2)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_mass_keeps_the_fewest_tokens_reaching_the_mass(shape, q):
    X, w = _inputs(shape)
    w.view(shape[0], -1)[0] = torch.linspace(1, 0, w[0].numel()) ** 4  # skewed, ends at 0: few tokens carry q
    L = math.prod(shape[1:-1])
    _assert_equal(select_tokens(X, w, mass=q), _naive(X, w, _mass_count(w, q), L))


def test_mass_is_capped_and_padded_to_max_tokens():
    X, w = _inputs((3, 2, 2, 5, 6))
    w[1] = 0
    w[1, 0, 0, 0] = 1  # one token carries all the weight
    counts = _mass_count(w, 0.8)
    got = select_tokens(X, w, mass=0.8, max_tokens=7)
    _assert_equal(got, _naive(X, w, [min(c, 7) for c in counts], 7))
    assert counts[1] == 1 and got.mask[1].sum() == 1 and got.index[1, 0] == 0
    assert (got.index[~got.mask] == -1).all() and (got.tokens[~got.mask] == 0).all()


def test_fixed_ratio_pads_to_max_tokens():
    X, w = _inputs((2, 20, 3))
    _assert_equal(select_tokens(X, w, ratio=0.25, max_tokens=8), _naive(X, w, [5, 5], 8))
    _assert_equal(select_tokens(X, w, ratio=0.5, max_tokens=4), _naive(X, w, [4, 4], 4))


def test_ties_go_to_the_earlier_token():
    X = torch.randn(2, 6, 3)
    got = select_tokens(X, torch.ones(2, 6), ratio=0.5)
    assert got.index.tolist() == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("mass", [None, 0.6], ids=["ratio", "mass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_reach_the_kept_tokens_and_their_weights(mass, dtype):
    X, w = _inputs((2, 3, 4, 5, 6), dtype)
    X.requires_grad_()
    w.requires_grad_()
    got = select_tokens(X, w, mass=mass)
    g_tokens, g_weights = torch.randn_like(got.tokens), torch.randn_like(got.weights)
    dX, dw = torch.autograd.grad((got.tokens, got.weights), (X, w), (g_tokens, g_weights))
    expected_dX, expected_dw = torch.zeros(2, 60, 6, dtype=dtype), torch.zeros(2, 60)
    for b in range(2):
        kept = got.index[b, got.mask[b]]
        expected_dX[b, kept] = g_tokens[b, got.mask[b]]
        expected_dw[b, kept] = g_weights[b, got.mask[b]]
    assert torch.equal(dX.reshape(2, 60, 6), expected_dX) and torch.equal(dw.reshape(2, 60), expected_dw)


def test_torch_compile_fullgraph():
    X, w = _inputs((2, 3, 4, 4, 8))
    X.requires_grad_()

    def loss(x, weights):
        kept = select_tokens(x, weights, mass=0.5, max_tokens=30)
        return (kept.tokens.sum(-1) * kept.weights).sum() + kept.mask.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected, got = loss(X, w), compiled(X, w)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, X)[0], torch.autograd.grad(expected, X)[0])


X3, W3 = torch.randn(2, 10, 4), torch.rand(2, 10)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.randn(2, 3, 3, 4), torch.rand(2, 3, 3)), {}, ValueError, r"X must be a tensor \[B, T, H, W, D\]"),
        ((X3, W3.long()), {}, TypeError, "w must be a floating point tensor"),
        ((X3, torch.rand(2, 9)), {}, ValueError, r"w must have X's shape without D, \(2, 10\)"),
        ((X3[:, :0], W3[:, :0]), {}, ValueError, "at least one clip and one token"),
        ((X3, W3), {"ratio": 0.0}, ValueError, r"ratio must be in \(0, 1\]"),
        ((X3, W3), {"ratio": 1.5}, ValueError, r"ratio must be in \(0, 1\]"),
        ((X3, W3), {"mass": 0.0}, ValueError, r"mass must be None or in \(0, 1\]"),
        ((X3, W3), {"mass": 1.1}, ValueError, r"mass must be None or in \(0, 1\]"),
        ((X3, W3), {"max_tokens": 11}, ValueError, r"max_tokens must be None or an integer in \[1, L = 10\]"),
        ((X3, W3), {"max_tokens": 0}, ValueError, "max_tokens must be None or an integer"),
        ((X3, -W3), {"mass": 0.5}, ValueError, "w must be finite and non-negative"),
        ((X3, W3 * 0), {"mass": 0.5}, ValueError, "w sums to 0"),
    ],
    ids=[
        "rank",
        "w-dtype",
        "w-shape",
        "empty",
        "ratio-0",
        "ratio-1.5",
        "mass-0",
        "mass-1.1",
        "max-big",
        "max-0",
        "negative-w",
        "zero-w",
    ],
)
def test_invalid_arguments_are_named(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_tokens(*args, **kwargs)
