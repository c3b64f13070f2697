// Batched entropic OT on the CPU: Sinkhorn in the scaling domain, stabilised by absorbing the scalings into the
// log-domain potentials (Schmitzer 2016) and falling back to exact log-domain steps where a scaling would
// underflow. One fused pass over the kernel matrix per iteration (row dot, scaling, column accumulation), the
// column error for the stopping test comes free from it. Parallel over the batch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/vec.h"

namespace grace_fast::cpu {
namespace {

template <typename Acc>
struct Problem {
  const Acc *C, *a, *b;
  int64_t N, M;
  Acc eps;
};

// One batch element. K [N, M] holds exp((f_i + g_j - C_ij) / eps) for the absorbed potentials f, g; the plan is
// diag(u) K diag(v) and s = K^T u, so that v_j s_j are its column sums. Padded columns keep g_j = -inf (K = 0).
template <typename Acc>
class Solver {
 public:
  explicit Solver(int64_t N, int64_t M) : K_(N * M, Acc(0)), u_(N), v_(M), s_(M), colmax_(M), colsum_(M) {}

  void solve(const Problem<Acc>& p, int64_t max_iter, Acc tol, Acc* plan, Acc* f, Acc* g, int64_t* n_iter,
             Acc* err) {
    p_ = p;
    f_ = f;
    g_ = g;
    std::fill(K_.begin(), K_.begin() + p.N * p.M, Acc(0));
    for (int64_t i = 0; i < p.N; ++i) f_[i] = 0;
    for (int64_t j = 0; j < p.M; ++j) g_[j] = p.b[j] > 0 ? Acc(0) : -kInf;
    log_update_g();
    log_update_f();
    int64_t it = 1;
    Acc e = column_error();
    while (it < max_iter && !(e < tol)) {
      if (!update_v()) {
        absorb();
        log_update_g();
        log_update_f();
      } else if (!update_u()) {
        absorb();
        log_update_f();
      } else if (out_of_range()) {
        absorb();
        rebuild_kernel();
      }
      ++it;
      e = column_error();
    }
    for (int64_t i = 0; i < p.N; ++i) {
      Acc* out = plan + i * p.M;
      const Acc* k = K_.data() + i * p.M;
      for (int64_t j = 0; j < p.M; ++j) out[j] = u_[i] * k[j] * v_[j];
    }
    absorb();
    Acc af = 0, bg = 0;
    for (int64_t i = 0; i < p.N; ++i) af += p.a[i] > 0 ? p.a[i] * f_[i] : Acc(0);
    for (int64_t j = 0; j < p.M; ++j) bg += p.b[j] > 0 ? p.b[j] * g_[j] : Acc(0);
    const Acc shift = (af - bg) / 2;
    for (int64_t i = 0; i < p.N; ++i) f_[i] = p.a[i] > 0 ? f_[i] - shift : Acc(0);
    for (int64_t j = 0; j < p.M; ++j) g_[j] = p.b[j] > 0 ? g_[j] + shift : Acc(0);
    *n_iter = it;
    *err = e;
  }

 private:
  static constexpr Acc kInf = std::numeric_limits<Acc>::infinity();
  // scalings beyond these are absorbed into the potentials; column/row sums below kTiny need a log step
  static constexpr Acc kTiny = sizeof(Acc) == 4 ? Acc(1e-30) : Acc(1e-280);
  static constexpr Acc kRange = Acc(1e10);

  const Acc* row(int64_t i) const { return p_.C + i * p_.M; }

  // g_j = eps log b_j - eps LSE_i((f_i - C_ij) / eps) over valid rows, by a max pass and a sum pass.
  void log_update_g() {
    std::fill(colmax_.begin(), colmax_.begin() + p_.M, -kInf);
    std::fill(colsum_.begin(), colsum_.begin() + p_.M, Acc(0));
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) max_update(f_[i], row(i), colmax_.data(), p_.M);
    }
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) exp_accumulate(f_[i], row(i), colmax_.data(), 1 / p_.eps, colsum_.data(), p_.M);
    }
    for (int64_t j = 0; j < p_.M; ++j) {
      if (p_.b[j] > 0) g_[j] = p_.eps * (std::log(p_.b[j]) - std::log(colsum_[j])) - colmax_[j];
    }
  }

  // Exact row update in the log domain, which also rebuilds K: K_i = exp((g - C_i - m_i) / eps), f_i = -m_i,
  // u_i = a_i / sum_j K_ij; then s = K^T u and v = 1.
  void log_update_f() {
    std::fill(s_.begin(), s_.begin() + p_.M, Acc(0));
    for (int64_t i = 0; i < p_.N; ++i) {
      u_[i] = 0;
      if (!(p_.a[i] > 0)) continue;
      Acc* k = K_.data() + i * p_.M;
      const Acc m = max_diff(g_, row(i), p_.M);
      const Acc sum = exp_affine(row(i), g_, 1 / p_.eps, m / p_.eps, k, p_.M);
      f_[i] = -m;
      u_[i] = p_.a[i] / sum;
      axpy(u_[i], k, s_.data(), p_.M);
    }
    for (int64_t j = 0; j < p_.M; ++j) v_[j] = p_.b[j] > 0 ? Acc(1) : Acc(0);
  }

  // K from the current potentials (after an absorption); u = v = 1 on the support keeps the plan.
  void rebuild_kernel() {
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) exp_affine(row(i), g_, 1 / p_.eps, -f_[i] / p_.eps, K_.data() + i * p_.M, p_.M);
    }
  }

  // v = b / s; false (nothing changed) if a valid column sum is too small for the scaling domain.
  bool update_v() {
    for (int64_t j = 0; j < p_.M; ++j) {
      if (p_.b[j] > 0 && !(s_[j] > kTiny)) return false;
    }
    for (int64_t j = 0; j < p_.M; ++j) v_[j] = p_.b[j] > 0 ? p_.b[j] / s_[j] : Acc(0);
    return true;
  }

  // u_i = a_i / (K v)_i and s = K^T u in one pass; false (u, s left stale) if a row sum is too small.
  bool update_u() {
    std::fill(s_.begin(), s_.begin() + p_.M, Acc(0));
    for (int64_t i = 0; i < p_.N; ++i) {
      if (!(p_.a[i] > 0)) continue;
      const Acc* k = K_.data() + i * p_.M;
      const Acc t = dot(k, v_.data(), p_.M);
      if (!(t > kTiny)) return false;
      u_[i] = p_.a[i] / t;
      axpy(u_[i], k, s_.data(), p_.M);
    }
    return true;
  }

  bool out_of_range() const {
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0 && (u_[i] > kRange || u_[i] < 1 / kRange)) return true;
    }
    for (int64_t j = 0; j < p_.M; ++j) {
      if (p_.b[j] > 0 && (v_[j] > kRange || v_[j] < 1 / kRange)) return true;
    }
    return false;
  }

  // f += eps log u, g += eps log v, s = column sums of the plan, u = v = 1: the plan is unchanged.
  void absorb() {
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) f_[i] += p_.eps * std::log(u_[i]);
      u_[i] = p_.a[i] > 0 ? Acc(1) : Acc(0);
    }
    for (int64_t j = 0; j < p_.M; ++j) {
      if (p_.b[j] > 0) g_[j] += p_.eps * std::log(v_[j]);
      s_[j] *= v_[j];
      v_[j] = p_.b[j] > 0 ? Acc(1) : Acc(0);
    }
  }

  // L1 error of the plan's column sums v_j s_j against b.
  Acc column_error() const {
    Acc e = 0;
    for (int64_t j = 0; j < p_.M; ++j) e += std::abs(v_[j] * s_[j] - p_.b[j]);
    return e;
  }

  std::vector<Acc> K_, u_, v_, s_, colmax_, colsum_;
  Problem<Acc> p_{};
  Acc *f_ = nullptr, *g_ = nullptr;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_forward(
    const at::Tensor& C_, const at::Tensor& a_, const at::Tensor& b_, double eps, int64_t max_iter, double tol) {
  TORCH_CHECK(C_.dim() == 3, "sinkhorn_forward: C must be [B, N, M], got ", C_.sizes());
  TORCH_CHECK(C_.scalar_type() == at::kFloat || C_.scalar_type() == at::kDouble,
              "sinkhorn_forward: C must be float32 or float64, got ", C_.scalar_type());
  const int64_t B = C_.size(0), N = C_.size(1), M = C_.size(2);
  TORCH_CHECK(a_.sizes() == at::IntArrayRef({B, N}) && b_.sizes() == at::IntArrayRef({B, M}),
              "sinkhorn_forward: a, b must be [B, N], [B, M], got ", a_.sizes(), ", ", b_.sizes());
  TORCH_CHECK(eps > 0 && max_iter >= 1 && tol >= 0, "sinkhorn_forward: needs eps > 0, max_iter >= 1, tol >= 0");
  const at::Tensor C = C_.contiguous(), a = a_.to(C.scalar_type()).contiguous(), b = b_.to(C.scalar_type()).contiguous();
  at::Tensor plan = at::empty_like(C), f = at::empty_like(a), g = at::empty_like(b);
  at::Tensor n_iter = at::empty({B}, C.options().dtype(at::kLong)), err = at::empty({B}, C.options());
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "sinkhorn_forward", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Solver<scalar_t> solver(N, M);
      for (int64_t e = begin; e < end; ++e) {
        const Problem<scalar_t> p{C.data_ptr<scalar_t>() + e * N * M, a.data_ptr<scalar_t>() + e * N,
                                  b.data_ptr<scalar_t>() + e * M, N, M, static_cast<scalar_t>(eps)};
        solver.solve(p, max_iter, static_cast<scalar_t>(tol), plan.data_ptr<scalar_t>() + e * N * M,
                     f.data_ptr<scalar_t>() + e * N, g.data_ptr<scalar_t>() + e * M,
                     n_iter.data_ptr<int64_t>() + e, err.data_ptr<scalar_t>() + e);
      }
    });
  });
  return {plan, f, g, n_iter, err};
}

}  // namespace

TORCH_LIBRARY_IMPL(grace_fast, CPU, m) { m.impl("sinkhorn_forward", &sinkhorn_forward); }

}  // namespace grace_fast::cpu
