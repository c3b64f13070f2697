// Motion-difference weighting on the CPU (GRACE.md section 1), the semantics of motion_weights_reference.
// Forward: per clip and tile of DT features, frame after frame, the difference Delta and its clipped window mean live
// in thread scratch and leave only squared partial scores; per clip their sums give tau and sigma, then the
// normalisation and softmax; then X_out = X * (1 + beta (w - 1)). Backward: per token <grad_out, X>; per clip the softmax and
// normalisation adjoints, which reduce the gradient of each frame's Delta to G = a Delta + c E - A^T(c E)
// (E = Delta - A Delta, A the window mean, a and c per token); per feature tile, each clip walked backwards in time,
// dX_t = grad_out_t m_t + G_t - G_{t+1}, so every dX element is written once. No [B, T, H W, D] buffer besides the
// outputs; fp16/bf16 read directly, fp32 math (fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "cpu/clones.h"
#include "cpu/vec.h"

#define ALWAYS_INLINE __attribute__((always_inline)) inline

namespace grace_fast::cpu {
namespace {

constexpr int64_t DT = 128;  // features per tile: the four [H W, DT] scratch tiles of a thread stay in L2

// A frame of H x W tokens of D features; the window mean is over the clipped (2 r + 1)^2 neighbourhood.
struct Frame {
  int64_t H, W, D, r;
  int64_t tokens() const { return H * W; }
};

// rows[h, w] = sum of x[h, w'] over the columns w' of the clipped window around w; x, rows: [H, W, n]
template <typename A>
ALWAYS_INLINE void row_sums(const A* x, A* rows, const Frame& f, int64_t n) {
  for (int64_t h = 0; h < f.H; ++h) {
    for (int64_t w = 0; w < f.W; ++w) {
      const int64_t w0 = std::max<int64_t>(0, w - f.r), w1 = std::min(f.W - 1, w + f.r);
      A* out = rows + (h * f.W + w) * n;
      const A* in = x + (h * f.W + w0) * n;
      for (int64_t d = 0; d < n; ++d) out[d] = in[d];
      for (int64_t v = w0 + 1; v <= w1; ++v) {
        in = x + (h * f.W + v) * n;
        for (int64_t d = 0; d < n; ++d) out[d] += in[d];
      }
    }
  }
}

// out = sum of rows[h', w] over the rows h' of the clipped window around h, i.e. the window sum at (h, w); out: [n]
template <typename A>
ALWAYS_INLINE void column_sum(const A* rows, int64_t h, int64_t w, const Frame& f, int64_t n, A* out) {
  const int64_t h0 = std::max<int64_t>(0, h - f.r), h1 = std::min(f.H - 1, h + f.r);
  const A* in = rows + (h0 * f.W + w) * n;
  for (int64_t d = 0; d < n; ++d) out[d] = in[d];
  for (int64_t u = h0 + 1; u <= h1; ++u) {
    in = rows + (u * f.W + w) * n;
    for (int64_t d = 0; d < n; ++d) out[d] += in[d];
  }
}

template <typename A>
ALWAYS_INLINE void sub_impl(const A* x, const A* y, A* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] - y[j];
}

// One tile of n features of a frame: tau2[s] = ||Delta_s||^2, sigma2[s] = ||Delta_s - window mean at s||^2 (0 unless
// spatial). delta, rows: [H W, n]; box: [n] scratch; inv_count: [H W] 1 / window size.
template <typename A>
ALWAYS_INLINE void tile_scores_impl(const A* delta, A* rows, A* box, const A* inv_count, const Frame& f, int64_t n,
                                    bool spatial, A* tau2, A* sigma2) {
  const int64_t S = f.tokens();
  for (int64_t s = 0; s < S; ++s) tau2[s] = dot(delta + s * n, delta + s * n, n);
  if (!spatial) {
    std::fill(sigma2, sigma2 + S, A(0));
    return;
  }
  row_sums(delta, rows, f, n);
  for (int64_t s = 0; s < S; ++s) {
    column_sum(rows, s / f.W, s % f.W, f, n, box);
    const A* x = delta + s * n;
    const A inv = inv_count[s];
    for (int64_t d = 0; d < n; ++d) box[d] = x[d] - box[d] * inv;
    sigma2[s] = dot(box, box, n);
  }
}

// One tile of G = a Delta + c E - A^T(c E), the gradient reaching Delta of a frame from tau and sigma, where
// E = Delta - A Delta, A^T(Y)_s = sum over s' in window(s) of Y_s' / count(s'), a = dL/dtau / tau, c = dL/dsigma /
// sigma. delta: [H W, n], overwritten; G: [H W, n]; rows: [H W, n] and box: [n] scratch.
template <typename A>
ALWAYS_INLINE void tile_grad_impl(A* delta, A* rows, A* box, const A* inv_count, const Frame& f, int64_t n,
                                  bool spatial, const A* a, const A* c, A* G) {
  const int64_t S = f.tokens();
  for (int64_t s = 0; s < S; ++s) {
    const A* x = delta + s * n;
    A* g = G + s * n;
    const A as = a[s];
    for (int64_t d = 0; d < n; ++d) g[d] = as * x[d];
  }
  if (!spatial) return;
  row_sums(delta, rows, f, n);
  for (int64_t s = 0; s < S; ++s) {  // Delta_s is read for the last time here: c E / count replaces it
    column_sum(rows, s / f.W, s % f.W, f, n, box);
    A* x = delta + s * n;
    A* g = G + s * n;
    const A inv = inv_count[s], cs = c[s], cs_inv = c[s] * inv_count[s];
    for (int64_t d = 0; d < n; ++d) {
      const A e = x[d] - box[d] * inv;
      g[d] += cs * e;
      x[d] = cs_inv * e;
    }
  }
  row_sums(delta, rows, f, n);
  for (int64_t s = 0; s < S; ++s) {
    column_sum(rows, s / f.W, s % f.W, f, n, box);
    A* g = G + s * n;
    for (int64_t d = 0; d < n; ++d) g[d] -= box[d];
  }
}

// out = x m + g - g_next, each of x, g, g_next may be null (zero)
template <typename A>
ALWAYS_INLINE void combine_impl(const A* x, A m, const A* g, const A* g_next, A* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x ? x[j] * m : A(0);
  if (g) {
    for (int64_t j = 0; j < n; ++j) out[j] += g[j];
  }
  if (g_next) {
    for (int64_t j = 0; j < n; ++j) out[j] -= g_next[j];
  }
}

// The float versions are compiled for AVX2+FMA and the baseline ISA; the double ones are the gradcheck path.
GRACE_FAST_CLONES void sub(const float* x, const float* y, float* out, int64_t n) { sub_impl(x, y, out, n); }
void sub(const double* x, const double* y, double* out, int64_t n) { sub_impl(x, y, out, n); }

GRACE_FAST_CLONES void tile_scores(const float* delta, float* rows, float* box, const float* inv_count,
                                   const Frame& f, int64_t n, bool spatial, float* tau2, float* sigma2) {
  tile_scores_impl(delta, rows, box, inv_count, f, n, spatial, tau2, sigma2);
}
void tile_scores(const double* delta, double* rows, double* box, const double* inv_count, const Frame& f, int64_t n,
                 bool spatial, double* tau2, double* sigma2) {
  tile_scores_impl(delta, rows, box, inv_count, f, n, spatial, tau2, sigma2);
}

GRACE_FAST_CLONES void tile_grad(float* delta, float* rows, float* box, const float* inv_count, const Frame& f,
                                 int64_t n, bool spatial, const float* a, const float* c, float* G) {
  tile_grad_impl(delta, rows, box, inv_count, f, n, spatial, a, c, G);
}
void tile_grad(double* delta, double* rows, double* box, const double* inv_count, const Frame& f, int64_t n,
               bool spatial, const double* a, const double* c, double* G) {
  tile_grad_impl(delta, rows, box, inv_count, f, n, spatial, a, c, G);
}

GRACE_FAST_CLONES void combine(const float* x, float m, const float* g, const float* g_next, float* out, int64_t n) {
  combine_impl(x, m, g, g_next, out, n);
}
void combine(const double* x, double m, const double* g, const double* g_next, double* out, int64_t n) {
  combine_impl(x, m, g, g_next, out, n);
}

// x [n] as A: x itself, or converted into buf (fp16/bf16)
template <typename T, typename A>
const A* as_acc(const T* x, A* buf, int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    return x;
  } else {
    to_float(x, buf, n);
    return buf;
  }
}

// One row of n outputs: out = x m + g - g_next (see combine), written as T through buf_out for fp16/bf16.
template <typename T, typename A>
void write_row(const T* x, A m, const A* g, const A* g_next, T* out, A* buf_in, A* buf_out, int64_t n) {
  const A* xa = x ? as_acc(x, buf_in, n) : nullptr;
  if constexpr (std::is_same_v<T, A>) {
    combine(xa, m, g, g_next, out, n);
  } else {
    combine(xa, m, g, g_next, buf_out, n);
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(buf_out[j]);
  }
}

// delta [H W, n] = X_t - X_{t-1} on features [d0, d0 + n) of one frame (x_t, x_prev: [H W, D]); buf: [n] scratch
template <typename T, typename A>
void tile_delta(const T* x_t, const T* x_prev, const Frame& f, int64_t d0, int64_t n, A* delta, A* buf) {
  for (int64_t s = 0; s < f.tokens(); ++s) {
    const int64_t at = s * f.D + d0;
    sub(as_acc(x_t + at, delta + s * n, n), as_acc(x_prev + at, buf, n), delta + s * n, n);
  }
}

// Items per thread for at::parallel_for when one item touches `elements` values: tiny problems run inline.
int64_t grain(int64_t elements) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, elements));
}

struct Params {
  double alpha, temperature, beta, eps;
  bool spatial() const { return alpha != 1.0; }
};

// 1 / the number of tokens in the clipped window around each (h, w): [H W]
template <typename A>
at::Tensor inverse_counts(const Frame& f, const at::TensorOptions& options) {
  at::Tensor out = at::empty({f.tokens()}, options);
  A* p = out.data_ptr<A>();
  for (int64_t h = 0; h < f.H; ++h) {
    const int64_t rows = std::min(f.H - 1, h + f.r) - std::max<int64_t>(0, h - f.r) + 1;
    for (int64_t w = 0; w < f.W; ++w) {
      const int64_t cols = std::min(f.W - 1, w + f.r) - std::max<int64_t>(0, w - f.r) + 1;
      p[h * f.W + w] = A(1) / static_cast<A>(rows * cols);
    }
  }
  return out;
}

// Per-thread scratch of `tiles` [H W, DT] tiles and `rows` [DT] rows, through the torch allocator.
template <typename A>
class Scratch {
 public:
  Scratch(int64_t tiles, int64_t rows, const Frame& f, const at::TensorOptions& options)
      : tiles_(tiles), tile_(f.tokens() * DT),
        buffer_(at::empty({at::get_num_threads(), tiles * f.tokens() * DT + rows * DT}, options)) {}
  A* tile(int64_t i) const { return mine() + i * tile_; }
  A* row(int64_t i) const { return mine() + tiles_ * tile_ + i * DT; }

 private:
  A* mine() const { return buffer_.data_ptr<A>() + at::get_thread_num() * buffer_.size(1); }
  int64_t tiles_, tile_;
  at::Tensor buffer_;
};

template <typename T, typename A>
void forward_kernel(const T* X, T* X_out, A* w, A* tau, A* sigma, int64_t B, int64_t F, const Frame& f,
                    const Params& p, const at::TensorOptions& acc) {
  const int64_t S = f.tokens(), D = f.D, N = F * S;
  // squared scores per feature tile, summed per clip below: work items (clip, tile) walk forwards in time, so
  // X_{t-1}'s tile is still in cache as X_t's
  const int64_t tiles = (D + DT - 1) / DT;
  at::Tensor partial = at::empty({2, tiles, B * N}, acc);
  A *tau2 = partial.data_ptr<A>(), *sigma2 = tau2 + tiles * B * N;
  if (F > 1) {
    const at::Tensor inv_count = inverse_counts<A>(f, acc);
    const Scratch<A> scratch(2, 1, f, acc);
    at::parallel_for(0, B * tiles, grain((F - 1) * S * DT), [&](int64_t begin, int64_t end) {
      A *delta = scratch.tile(0), *rows = scratch.tile(1), *box = scratch.row(0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiles, tile = item % tiles, d0 = tile * DT, n = std::min(DT, D - d0);
        for (int64_t t = 1; t < F; ++t) {
          const int64_t frame = b * F + t, at = tile * B * N + frame * S;
          tile_delta(X + frame * S * D, X + (frame - 1) * S * D, f, d0, n, delta, box);
          tile_scores(delta, rows, box, inv_count.data_ptr<A>(), f, n, p.spatial(), tau2 + at, sigma2 + at);
        }
      }
    });
  }
  at::parallel_for(0, B, grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      A *tb = tau + b * N, *sb = sigma + b * N, *wb = w + b * N;
      if (F == 1) {
        std::fill(tb, tb + N, A(0));
        std::fill(sb, sb + N, A(0));
        std::fill(wb, wb + N, A(1));
        continue;
      }
      for (int64_t i = S; i < N; ++i) {
        A t2 = 0, s2 = 0;
        for (int64_t tile = 0; tile < tiles; ++tile) {
          t2 += tau2[tile * B * N + b * N + i];
          s2 += sigma2[tile * B * N + b * N + i];
        }
        tb[i] = std::sqrt(t2);
        sb[i] = std::sqrt(s2);
      }
      std::copy(tb + S, tb + 2 * S, tb);  // Delta_0 = Delta_1
      std::copy(sb + S, sb + 2 * S, sb);
      double sum_tau = 0, sum_sigma = 0;
      for (int64_t i = 0; i < N; ++i) {
        sum_tau += tb[i];
        sum_sigma += sb[i];
      }
      const A k_tau = static_cast<A>(p.alpha / (sum_tau / N + p.eps) / p.temperature);
      const A k_sigma = static_cast<A>((1 - p.alpha) / (sum_sigma / N + p.eps) / p.temperature);
      A top = -std::numeric_limits<A>::infinity();
      for (int64_t i = 0; i < N; ++i) {
        wb[i] = k_tau * tb[i] + k_sigma * sb[i];
        top = std::max(top, wb[i]);
      }
      double total = 0;
      for (int64_t i = 0; i < N; ++i) {
        wb[i] = std::exp(wb[i] - top);
        total += wb[i];
      }
      const A scale = static_cast<A>(N / total);
      for (int64_t i = 0; i < N; ++i) wb[i] *= scale;
    }
  });
  const Scratch<A> scratch(0, 2, f, acc);
  const A beta = static_cast<A>(p.beta);
  at::parallel_for(0, B * N, grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const A m = 1 + beta * (w[row] - 1);
      for (int64_t d0 = 0; d0 < D; d0 += DT) {
        const int64_t at = row * D + d0;
        write_row<T, A>(X + at, m, nullptr, nullptr, X_out + at, scratch.row(0), scratch.row(1), std::min(DT, D - d0));
      }
    }
  });
}

// Gradient of the loss with respect to r = alpha tau_hat + (1 - alpha) sigma_hat, reduced to the per-token factors
// a = dL/dtau / tau and c = dL/dsigma / sigma of one clip; gw [N] holds dL/dw on entry and is overwritten.
template <typename A>
void clip_factors(const A* w, const A* tau, const A* sigma, A* gw, A* a, A* c, int64_t N, int64_t S, const Params& p) {
  double weighted = 0;
  for (int64_t i = 0; i < N; ++i) weighted += static_cast<double>(w[i]) * gw[i];
  const A mean_g = static_cast<A>(weighted / N), inv_temperature = static_cast<A>(1 / p.temperature);
  for (int64_t i = 0; i < N; ++i) gw[i] = w[i] * (gw[i] - mean_g) * inv_temperature;  // dL/dr
  // score / (mean score + eps): the gradient of the normalised score is (g_i - <g, score_hat> / N) / (mean + eps)
  const auto factors = [&](const A* score, double mix, A* out) {
    double sum = 0, dot_g = 0;
    for (int64_t i = 0; i < N; ++i) sum += score[i];
    const double denom = sum / N + p.eps;
    for (int64_t i = 0; i < N; ++i) dot_g += mix * gw[i] * score[i];
    const A shift = static_cast<A>(dot_g / denom / N), inv_denom = static_cast<A>(1 / denom), m = static_cast<A>(mix);
    for (int64_t i = 0; i < N; ++i) {
      out[i] = score[i] > 0 ? (m * gw[i] - shift) * inv_denom / score[i] : A(0);
    }
    for (int64_t s = 0; s < S; ++s) out[S + s] += out[s];  // Delta_0 = Delta_1: frame 0's share goes to frame 1
  };
  factors(tau, p.alpha, a);
  factors(sigma, 1 - p.alpha, c);
}

template <typename T, typename A>
void backward_kernel(const T* grad_out, const A* grad_w, const T* X, const A* w, const A* tau, const A* sigma, T* dX,
                     int64_t B, int64_t F, const Frame& f, const Params& p, const at::TensorOptions& acc) {
  const int64_t S = f.tokens(), D = f.D, N = F * S;
  const A beta = static_cast<A>(p.beta);
  at::Tensor factors = at::empty({3, B * N}, acc);
  A *gw = factors.data_ptr<A>(), *a = gw + B * N, *c = a + B * N;
  if (F > 1) {
    const Scratch<A> scratch(0, 2, f, acc);
    at::parallel_for(0, B * N, grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        A g = grad_w ? grad_w[row] : A(0);
        for (int64_t d0 = 0; grad_out && p.beta != 0 && d0 < D; d0 += DT) {
          const int64_t at = row * D + d0, n = std::min(DT, D - d0);
          g += beta * dot(as_acc(grad_out + at, scratch.row(0), n), as_acc(X + at, scratch.row(1), n), n);
        }
        gw[row] = g;
      }
    });
    at::parallel_for(0, B, grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        clip_factors(w + b * N, tau + b * N, sigma + b * N, gw + b * N, a + b * N, c + b * N, N, S, p);
      }
    });
  }
  // Work items: (clip, feature tile, time chunk). A chunk [t0, t1) of a clip needs G_t0 .. G_t1 and recomputes the
  // G_t1 of the next chunk, so clips are split in time only when clips and tiles are too few to occupy the threads.
  const int64_t tiles = (D + DT - 1) / DT;
  const int64_t chunks = std::clamp<int64_t>((4 * at::get_num_threads() + B * tiles - 1) / (B * tiles), 1, F);
  const int64_t len = (F + chunks - 1) / chunks, count = (F + len - 1) / len;
  const at::Tensor inv_count = inverse_counts<A>(f, acc);
  const Scratch<A> scratch(4, 2, f, acc);
  at::parallel_for(0, B * tiles * count, grain(len * S * DT), [&](int64_t begin, int64_t end) {
    A *delta = scratch.tile(0), *rows = scratch.tile(1), *G = scratch.tile(2), *G_next = scratch.tile(3);
    A *box = scratch.row(0), *out = scratch.row(1);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (tiles * count), d0 = (item / count) % tiles * DT, n = std::min(DT, D - d0);
      const int64_t t0 = item % count * len, t1 = std::min(F, t0 + len);
      // the tile of G_t (frame 0's share folded into frame 1) in buffer; null for t = 0 and t = F
      const auto tile_gradient = [&](int64_t t, A* buffer) -> A* {
        if (t == 0 || t == F) return nullptr;
        const int64_t frame = b * F + t;
        tile_delta(X + frame * S * D, X + (frame - 1) * S * D, f, d0, n, delta, box);
        tile_grad(delta, rows, box, inv_count.data_ptr<A>(), f, n, p.spatial(), a + frame * S, c + frame * S, buffer);
        return buffer;
      };
      const A* next = tile_gradient(t1, G_next);
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const A* cur = tile_gradient(t, G);
        for (int64_t s = 0; s < S; ++s) {
          const int64_t row = (b * F + t) * S + s, at = row * D + d0;
          write_row<T, A>(grad_out ? grad_out + at : nullptr, 1 + beta * (w[row] - 1), cur ? cur + s * n : nullptr,
                          next ? next + s * n : nullptr, dX + at, box, out, n);
        }
        std::swap(G, G_next);  // G_t is the G_next of frame t - 1
        next = cur;
      }
    }
  });
}

at::TensorOptions acc_options(const at::Tensor& X) {
  return X.options().dtype(X.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

Frame check_frame(const at::Tensor& X, int64_t window) {
  TORCH_CHECK(X.dim() == 5, "motion_weights: X must be [B, T, H, W, D], got ", X.sizes());
  TORCH_CHECK(X.numel() > 0, "motion_weights: X must have no empty dimension, got ", X.sizes());
  TORCH_CHECK(X.is_floating_point(), "motion_weights: X must be floating point, got ", X.scalar_type());
  TORCH_CHECK(window >= 1 && window % 2 == 1, "motion_weights: window must be odd and >= 1, got ", window);
  return Frame{X.size(2), X.size(3), X.size(4), window / 2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> motion_weights_forward(const at::Tensor& X_, double alpha,
                                                                      int64_t window, double temperature,
                                                                      double beta, double eps) {
  const Frame f = check_frame(X_, window);
  const at::Tensor X = X_.contiguous();
  const int64_t B = X.size(0), F = X.size(1);
  const auto acc = acc_options(X);
  at::Tensor X_out = at::empty_like(X), w = at::empty({B, F, f.H, f.W}, acc);
  at::Tensor scores = at::empty({2, B, F, f.H, f.W}, acc);
  const Params p{alpha, temperature, beta, eps};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "motion_weights_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* tau = scores.data_ptr<acc_t>();
    forward_kernel<scalar_t, acc_t>(X.data_ptr<scalar_t>(), X_out.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), tau,
                                    tau + B * F * f.H * f.W, B, F, f, p, acc);
  });
  return {X_out, w, scores};
}

at::Tensor motion_weights_backward(const c10::optional<at::Tensor>& grad_out_, const c10::optional<at::Tensor>& grad_w_,
                                   const at::Tensor& X_, const at::Tensor& w_, const at::Tensor& scores_, double alpha,
                                   int64_t window, double temperature, double beta, double eps) {
  const Frame f = check_frame(X_, window);
  const at::Tensor X = X_.contiguous();
  const int64_t B = X.size(0), F = X.size(1);
  const auto acc = acc_options(X);
  TORCH_CHECK(w_.sizes() == X.sizes().slice(0, 4), "motion_weights_backward: w must be [B, T, H, W], got ",
              w_.sizes());
  TORCH_CHECK(scores_.dim() == 5 && scores_.size(0) == 2 && scores_.sizes().slice(1) == w_.sizes(),
              "motion_weights_backward: scores must be [2, B, T, H, W], got ", scores_.sizes());
  const at::Tensor w = w_.to(acc).contiguous(), scores = scores_.to(acc).contiguous();
  const at::Tensor grad_out = grad_out_ ? grad_out_->to(X.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor grad_w = grad_w_ ? grad_w_->to(acc).contiguous() : at::Tensor();
  TORCH_CHECK(!grad_out.defined() || grad_out.sizes() == X.sizes(), "motion_weights_backward: grad_out must be ",
              X.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(!grad_w.defined() || grad_w.sizes() == w.sizes(), "motion_weights_backward: grad_w must be ",
              w.sizes(), ", got ", grad_w.sizes());
  at::Tensor dX = at::empty_like(X);
  const Params p{alpha, temperature, beta, eps};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "motion_weights_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* tau = scores.data_ptr<acc_t>();
    backward_kernel<scalar_t, acc_t>(grad_out.defined() ? grad_out.data_ptr<scalar_t>() : nullptr,
                                     grad_w.defined() ? grad_w.data_ptr<acc_t>() : nullptr, X.data_ptr<scalar_t>(),
                                     w.data_ptr<acc_t>(), tau, tau + B * F * f.H * f.W, dX.data_ptr<scalar_t>(), B, F,
                                     f, p, acc);
  });
  return dX;
}

}  // namespace

TORCH_LIBRARY_IMPL(grace_fast, CPU, m) {
  m.impl("motion_weights_forward", &motion_weights_forward);
  m.impl("motion_weights_backward", &motion_weights_backward);
}

}  // namespace grace_fast::cpu
