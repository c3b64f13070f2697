"""bench_sinkhorn's flash-sinkhorn rows, run on the CPU against a stand-in that follows flash-sinkhorn's conventions
(the package itself refuses CPU tensors)."""

import math
import sys
import types

import pytest
import torch

from benchmarks import bench_sinkhorn


class GeomLossConventionSolver:
    """Like flash_sinkhorn.SamplesLoss(backend="alternating", potentials=True, half_cost=True) on batched points:
    n_iters alternating log-domain updates (f, then g) in float64 on C = |x - y|^2 / 2, returning potentials in
    GeomLoss's convention, plan = a_i b_j exp((f_i + g_j - C_ij) / eps)."""

    def __init__(self, loss, *, eps, n_iters, half_cost, potentials, **options):
        assert (loss, half_cost, potentials) == ("sinkhorn", True, True)
        assert options["backend"] == "alternating" and options["use_epsilon_scaling"] is False
        self.eps, self.n_iters = eps, n_iters

    def __call__(self, x, y):
        C = 0.5 * torch.cdist(x.double(), y.double()) ** 2
        log_a, log_b = -math.log(x.shape[1]), -math.log(y.shape[1])
        f, g = C.new_zeros(C.shape[:2]), C.new_zeros(C.shape[0], C.shape[2])
        for _ in range(self.n_iters):
            f = -self.eps * torch.logsumexp(log_b + (g[:, None, :] - C) / self.eps, dim=2)
            g = -self.eps * torch.logsumexp(log_a + (f[:, :, None] - C) / self.eps, dim=1)
        return f.float(), g.float()


@pytest.fixture
def flash_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_sinkhorn", types.SimpleNamespace(SamplesLoss=GeomLossConventionSolver))


def test_the_same_problem_gives_the_same_plan(flash_stand_in):
    rows = bench_sinkhorn.flash_rows({"low-latency": (1, 77, 784)}, "cpu")
    ours = "cost_matrix cpu + sinkhorn cpu"
    assert [r["provider"] for r in rows] == [ours, "flash-sinkhorn", "flash-sinkhorn + plan"]
    assert rows[0]["plan_err"] is None and rows[1]["plan_err"] == rows[2]["plan_err"] < 1e-4
    assert all(r["median_ms"] > 0 for r in rows)


def test_unit_features_make_half_the_squared_distance_the_cosine_cost():
    U, V = bench_sinkhorn.unit_features(2, 7, "cpu", seed=1), bench_sinkhorn.unit_features(2, 33, "cpu", seed=2)
    C = bench_sinkhorn.cost_matrix(U, V, backend="torch")
    torch.testing.assert_close(0.5 * torch.cdist(U, V) ** 2, C, atol=1e-5, rtol=0)
    assert C.min() < 0.5 and C.max() > 1.5  # spread, so that the plan is far from uniform


def test_without_flash_sinkhorn_there_are_no_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_sinkhorn", None)  # import fails
    assert bench_sinkhorn.flash_rows({"small": (2, 7, 33)}, "cpu") == []
