"""bench_sinkhorn's flash-sinkhorn rows, run on the CPU against a stand-in that follows flash-sinkhorn's conventions
(the package itself refuses CPU tensors)."""

import math
import sys
import types

import pytest
import torch

from benchmarks import bench_sinkhorn
from grace_fast.ops import sinkhorn


class GeomLossConventionSolver:
    """Potentials (F, G) of the half squared Euclidean cost with plan = a_i b_j exp((F_i + G_j - C_ij) / eps), as
    flash_sinkhorn.SamplesLoss(potentials=True, half_cost=True) returns them."""

    def __init__(self, loss, *, eps, n_iters, half_cost, potentials, **options):
        assert (loss, half_cost, potentials) == ("sinkhorn", True, True)
        self.eps, self.n_iters = eps, n_iters

    def __call__(self, x, y):
        C = 0.5 * torch.cdist(x, y) ** 2
        out = sinkhorn(C, eps=self.eps, max_iter=self.n_iters, tol=0.0, backend="torch")
        return out.f + self.eps * math.log(x.shape[1]), out.g + self.eps * math.log(y.shape[1])


@pytest.fixture
def flash_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_sinkhorn", types.SimpleNamespace(SamplesLoss=GeomLossConventionSolver))


def test_the_same_problem_gives_the_same_plan(flash_stand_in):
    rows = bench_sinkhorn.flash_rows({"small": (2, 7, 33)}, "cpu")
    assert [r["provider"] for r in rows] == ["grace_fast", "flash-sinkhorn"]
    assert rows[1]["plan_err"] < 1e-4 and all(r["median_ms"] > 0 for r in rows)


def test_unit_features_make_half_the_squared_distance_the_cosine_cost():
    U, V = bench_sinkhorn.unit_features(2, 7, "cpu"), bench_sinkhorn.unit_features(2, 33, "cpu")
    C = bench_sinkhorn.cost_matrix(U, V, backend="torch")
    torch.testing.assert_close(0.5 * torch.cdist(U, V) ** 2, C, atol=1e-5, rtol=0)
    assert C.min() < 0.5 and C.max() > 1.5  # spread, so that the plan is far from uniform


def test_without_flash_sinkhorn_there_are_no_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_sinkhorn", None)  # import fails
    assert bench_sinkhorn.flash_rows({"small": (2, 7, 33)}, "cpu") == []
