// Batched entropic OT on the CPU, balanced or with KL-relaxed marginals: Sinkhorn in the scaling domain, stabilised
// by absorbing the scalings into the log-domain potentials (Schmitzer 2016) and falling back to exact log-domain
// steps where a scaling would underflow. One fused pass over the kernel matrix per iteration (row dot, scaling,
// column accumulation); the error for the stopping test comes free from it. Parallel over the batch.
//
// A marginal relaxed by tau KL(. || b) damps its log-domain update by rho = tau / (tau + eps) (Chizat et al. 2018):
// g_new = rho eps (log b - LSE_i((f_i - C_ij) / eps)). With g = g_abs + eps log v and s = K^T u, LSE_i = log s_j -
// g_abs_j / eps, so v_new = exp((g_new - g_abs) / eps) = exp(rho log b_j - (1 - rho) g_abs_j / eps - rho log s_j):
// a per-column offset fixed between absorptions, minus rho log s_j. The offset stays in the log domain, where the
// factors (b / s)^rho and exp(-(1 - rho) g_abs / eps) would overflow separately at small eps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/vec.h"

namespace grace_fast::cpu {
namespace {

// One marginal: exact (rho = 1, the balanced update) or relaxed, with rho = tau / (tau + eps) and
// kappa = (1 - rho) / eps = 1 / (tau + eps).
template <typename Acc>
struct Marginal {
  bool exact;
  Acc rho, kappa;
};

template <typename Acc>
struct Problem {
  const Acc *C, *a, *b;
  int64_t N, M;
  Acc eps;
  Marginal<Acc> ma, mb;
};

// One batch element. K [N, M] holds exp((f_i + g_j - C_ij) / eps) for the absorbed potentials f, g; the plan is
// diag(u) K diag(v) and s = K^T u, so that v_j s_j are its column sums. Padded columns keep g_j = -inf (K = 0).
// offset_f / offset_g hold rho log a_i - kappa f_i and rho log b_j - kappa g_j (-inf on padding) for the relaxed
// sides, refreshed whenever f or g is absorbed.
template <typename Acc>
class Solver {
 public:
  explicit Solver(int64_t N, int64_t M)
      : K_(N * M, Acc(0)),
        u_(N),
        v_(M),
        v_next_(M),
        s_(M),
        colmax_(M),
        colsum_(M),
        g_next_(M),
        f_true_(N),
        offset_f_(N),
        offset_g_(M) {}

  void solve(const Problem<Acc>& p, int64_t max_iter, Acc tol, Acc* plan, Acc* f, Acc* g, int64_t* n_iter,
             Acc* err) {
    p_ = p;
    f_ = f;
    g_ = g;
    std::fill(K_.begin(), K_.begin() + p.N * p.M, Acc(0));
    for (int64_t i = 0; i < p.N; ++i) f_[i] = 0;
    for (int64_t j = 0; j < p.M; ++j) g_[j] = p.b[j] > 0 ? Acc(0) : -kInf;
    log_column(f_);
    commit_log_column();
    log_update_f();
    int64_t it = 1;
    Acc e = candidate();
    while (it < max_iter && !(e < tol)) {
      step();
      ++it;
      e = candidate();
    }
    for (int64_t i = 0; i < p.N; ++i) {
      Acc* out = plan + i * p.M;
      const Acc* k = K_.data() + i * p.M;
      for (int64_t j = 0; j < p.M; ++j) out[j] = u_[i] * k[j] * v_[j];
    }
    absorb();
    // with a relaxed marginal the potentials are unique: only the balanced problem has a gauge to fix
    Acc shift = 0;
    if (p.ma.exact && p.mb.exact) {
      Acc af = 0, bg = 0;
      for (int64_t i = 0; i < p.N; ++i) af += p.a[i] > 0 ? p.a[i] * f_[i] : Acc(0);
      for (int64_t j = 0; j < p.M; ++j) bg += p.b[j] > 0 ? p.b[j] * g_[j] : Acc(0);
      shift = (af - bg) / 2;
    }
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
  static constexpr Acc kLogRange = Acc(23.0258509299);  // log(kRange)

  const Acc* row(int64_t i) const { return p_.C + i * p_.M; }

  // g_next = rho eps (log b_j - LSE_i((f_i - C_ij) / eps)) over valid rows, by a max pass and a sum pass; leaves
  // eps LSE_i = colmax_j + eps log colsum_j.
  void log_column(const Acc* f) {
    std::fill(colmax_.begin(), colmax_.begin() + p_.M, -kInf);
    std::fill(colsum_.begin(), colsum_.begin() + p_.M, Acc(0));
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) max_update(f[i], row(i), colmax_.data(), p_.M);
    }
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) exp_accumulate(f[i], row(i), colmax_.data(), 1 / p_.eps, colsum_.data(), p_.M);
    }
    for (int64_t j = 0; j < p_.M; ++j) {
      if (!(p_.b[j] > 0)) continue;
      const Acc balanced = p_.eps * (std::log(p_.b[j]) - std::log(colsum_[j])) - colmax_[j];
      g_next_[j] = p_.mb.exact ? balanced : p_.mb.rho * balanced;
    }
  }

  void commit_log_column() {
    for (int64_t j = 0; j < p_.M; ++j) {
      if (p_.b[j] > 0) g_[j] = g_next_[j];
    }
    refresh_offset_g();
  }

  // Exact row update in the log domain, which also rebuilds K: K_i = exp((g - C_i - m_i) / eps), f_i = -m_i and
  // u_i = a_i / sum_j K_ij (relaxed: exp(offset_f_i - rho log sum_j K_ij), or f_i takes the whole update and K_i
  // is rebuilt where that u_i would leave the range); then s = K^T u and v = 1.
  void log_update_f() {
    std::fill(s_.begin(), s_.begin() + p_.M, Acc(0));
    const Marginal<Acc>& ma = p_.ma;
    for (int64_t i = 0; i < p_.N; ++i) {
      u_[i] = 0;
      if (!(p_.a[i] > 0)) continue;
      Acc* k = K_.data() + i * p_.M;
      const Acc m = max_diff(g_, row(i), p_.M);
      const Acc sum = exp_affine(row(i), g_, 1 / p_.eps, m / p_.eps, k, p_.M);
      f_[i] = -m;
      if (ma.exact) {
        u_[i] = p_.a[i] / sum;
      } else {
        const Acc log_u = ma.rho * (std::log(p_.a[i]) - std::log(sum)) + ma.kappa * m;
        if (std::abs(log_u) <= kLogRange) {
          u_[i] = std::exp(log_u);
        } else {
          f_[i] = -m + p_.eps * log_u;
          exp_affine(row(i), g_, 1 / p_.eps, -f_[i] / p_.eps, k, p_.M);
          u_[i] = 1;
        }
      }
      axpy(u_[i], k, s_.data(), p_.M);
    }
    for (int64_t j = 0; j < p_.M; ++j) v_[j] = p_.b[j] > 0 ? Acc(1) : Acc(0);
    refresh_offset_f();
  }

  // K from the current potentials (after an absorption); u = v = 1 on the support keeps the plan.
  void rebuild_kernel() {
    for (int64_t i = 0; i < p_.N; ++i) {
      if (p_.a[i] > 0) exp_affine(row(i), g_, 1 / p_.eps, -f_[i] / p_.eps, K_.data() + i * p_.M, p_.M);
    }
  }

  // The error of the current plan for the stopping test, and the next column update: v_next in the scaling domain
  // (log_step_ = false), or g_next in the log domain where a valid column sum is too small for the scaling domain
  // or the relaxed scaling leaves it. The state is left as it is: the current plan can still be returned.
  Acc candidate() {
    bool small = false;
    for (int64_t j = 0; j < p_.M; ++j) small |= p_.b[j] > 0 && !(s_[j] > kTiny);
    if (p_.mb.exact) {  // v_next = b / s: the error is the L1 error of the column sums
      log_step_ = small;
      Acc e = 0;
      for (int64_t j = 0; j < p_.M; ++j) e += std::abs(v_[j] * s_[j] - p_.b[j]);
      return e;
    }
    if (!small) {
      const Acc e = relaxed_scaling(offset_g_.data(), s_.data(), v_.data(), p_.mb.rho, v_next_.data(), p_.M);
      bool in_range = true;
      for (int64_t j = 0; j < p_.M; ++j) {
        in_range &= !(p_.b[j] > 0) || (v_next_[j] > kTiny && v_next_[j] < 1 / kTiny);
      }
      if (in_range) {
        log_step_ = false;
        return e;
      }
    }
    log_step_ = true;
    for (int64_t i = 0; i < p_.N; ++i) f_true_[i] = p_.a[i] > 0 ? f_[i] + p_.eps * std::log(u_[i]) : Acc(0);
    log_column(f_true_.data());
    // column sums exp(g / eps + LSE_i) of the plan after and before the update
    Acc e = 0;
    for (int64_t j = 0; j < p_.M; ++j) {
      if (!(p_.b[j] > 0)) continue;
      const Acc log_colsum = std::log(colsum_[j]);
      const Acc g = g_[j] + p_.eps * std::log(v_[j]);
      e += std::abs(std::exp((g_next_[j] + colmax_[j]) / p_.eps + log_colsum) -
                    std::exp((g + colmax_[j]) / p_.eps + log_colsum));
    }
    return e;
  }

  // Commits the column update that candidate() prepared, then updates the rows.
  void step() {
    if (log_step_) {
      absorb();
      if (p_.mb.exact) log_column(f_);
      commit_log_column();
      log_update_f();
      return;
    }
    if (p_.mb.exact) {
      for (int64_t j = 0; j < p_.M; ++j) v_[j] = p_.b[j] > 0 ? p_.b[j] / s_[j] : Acc(0);
    } else {
      std::swap(v_, v_next_);
    }
    if (!update_u()) {
      absorb();
      log_update_f();
    } else if (out_of_range()) {
      absorb();
      rebuild_kernel();
    }
  }

  // u_i = a_i / (K v)_i (relaxed: exp(offset_f_i - rho log (K v)_i)) and s = K^T u in one pass; false (u, s left
  // stale) if a row sum is too small or a relaxed u_i leaves the scaling domain.
  bool update_u() {
    std::fill(s_.begin(), s_.begin() + p_.M, Acc(0));
    const Marginal<Acc>& ma = p_.ma;
    for (int64_t i = 0; i < p_.N; ++i) {
      if (!(p_.a[i] > 0)) continue;
      const Acc* k = K_.data() + i * p_.M;
      const Acc t = dot(k, v_.data(), p_.M);
      if (!(t > kTiny)) return false;
      if (ma.exact) {
        u_[i] = p_.a[i] / t;
      } else {
        u_[i] = std::exp(offset_f_[i] - ma.rho * std::log(t));
        if (!(u_[i] > kTiny && u_[i] < 1 / kTiny)) return false;
      }
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
    refresh_offset_f();
    refresh_offset_g();
  }

  void refresh_offset_f() {
    if (p_.ma.exact) return;
    for (int64_t i = 0; i < p_.N; ++i) {
      offset_f_[i] = p_.a[i] > 0 ? p_.ma.rho * std::log(p_.a[i]) - p_.ma.kappa * f_[i] : -kInf;
    }
  }

  void refresh_offset_g() {
    if (p_.mb.exact) return;
    for (int64_t j = 0; j < p_.M; ++j) {
      offset_g_[j] = p_.b[j] > 0 ? p_.mb.rho * std::log(p_.b[j]) - p_.mb.kappa * g_[j] : -kInf;
    }
  }

  std::vector<Acc> K_, u_, v_, v_next_, s_, colmax_, colsum_, g_next_, f_true_, offset_f_, offset_g_;
  Problem<Acc> p_{};
  Acc *f_ = nullptr, *g_ = nullptr;
  bool log_step_ = false;
};

template <typename Acc>
Marginal<Acc> marginal(double tau, double eps) {
  const double rho = std::isinf(tau) ? 1.0 : tau / (tau + eps);
  return {rho == 1.0, static_cast<Acc>(rho), static_cast<Acc>(rho == 1.0 ? 0.0 : 1 / (tau + eps))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_forward(
    const at::Tensor& C_, const at::Tensor& a_, const at::Tensor& b_, double eps, int64_t max_iter, double tol,
    double tau_a, double tau_b) {
  TORCH_CHECK(C_.dim() == 3, "sinkhorn_forward: C must be [B, N, M], got ", C_.sizes());
  TORCH_CHECK(C_.scalar_type() == at::kFloat || C_.scalar_type() == at::kDouble,
              "sinkhorn_forward: C must be float32 or float64, got ", C_.scalar_type());
  const int64_t B = C_.size(0), N = C_.size(1), M = C_.size(2);
  TORCH_CHECK(a_.sizes() == at::IntArrayRef({B, N}) && b_.sizes() == at::IntArrayRef({B, M}),
              "sinkhorn_forward: a, b must be [B, N], [B, M], got ", a_.sizes(), ", ", b_.sizes());
  TORCH_CHECK(eps > 0 && std::isfinite(eps) && max_iter >= 1 && tol >= 0,
              "sinkhorn_forward: needs a finite eps > 0, max_iter >= 1, tol >= 0, got eps=", eps,
              ", max_iter=", max_iter, ", tol=", tol);
  TORCH_CHECK(tau_a > 0 && tau_b > 0, "sinkhorn_forward: needs tau_a, tau_b in (0, inf], got ", tau_a, ", ", tau_b);
  const at::Tensor C = C_.contiguous(), a = a_.to(C.scalar_type()).contiguous(), b = b_.to(C.scalar_type()).contiguous();
  at::Tensor plan = at::empty_like(C), f = at::empty_like(a), g = at::empty_like(b);
  at::Tensor n_iter = at::empty({B}, C.options().dtype(at::kLong)), err = at::empty({B}, C.options());
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "sinkhorn_forward", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Solver<scalar_t> solver(N, M);
      for (int64_t e = begin; e < end; ++e) {
        const Problem<scalar_t> p{C.data_ptr<scalar_t>() + e * N * M, a.data_ptr<scalar_t>() + e * N,
                                  b.data_ptr<scalar_t>() + e * M, N, M, static_cast<scalar_t>(eps),
                                  marginal<scalar_t>(tau_a, eps), marginal<scalar_t>(tau_b, eps)};
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
