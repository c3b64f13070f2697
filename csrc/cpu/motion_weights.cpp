// Motion-difference weighting on the CPU (GRACE.md section 1), the semantics of motion_weights_reference.
// Forward: per frame, the difference Delta and its clipped window mean live in thread scratch ([H W, D] each) and
// leave only the scores tau, sigma; per clip the normalisation and softmax; then X_out = X * (1 + beta (w - 1)).
// Backward: per token <grad_out, X>; per clip the softmax and normalisation adjoints, which reduce the gradient of
// each frame's Delta to G = a Delta + c E - A^T(c E) (E = Delta - A Delta, A the window mean, a and c per token);
// per frame dX_t = grad_out_t m_t + G_t - G_{t+1}, each clip walked backwards in time chunks so that every dX
// frame is written once. No [B, T, H W, D] buffer besides the outputs; fp16/bf16 read directly, fp32 math.
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

// A frame of H x W tokens with D features, window mean over the clipped (2 r + 1)^2 neighbourhood.
struct Frame {
  int64_t H, W, D, r;
  int64_t size() const { return H * W * D; }
};

// rows[h, w] = sum of x[h, w'] over the columns w' of the clipped window around w; x, rows: [H, W, D]
template <typename A>
ALWAYS_INLINE void row_sums(const A* x, A* rows, const Frame& f) {
  const int64_t D = f.D;
  for (int64_t h = 0; h < f.H; ++h) {
    for (int64_t w = 0; w < f.W; ++w) {
      const int64_t w0 = std::max<int64_t>(0, w - f.r), w1 = std::min(f.W - 1, w + f.r);
      A* out = rows + (h * f.W + w) * D;
      const A* in = x + (h * f.W + w0) * D;
      for (int64_t d = 0; d < D; ++d) out[d] = in[d];
      for (int64_t v = w0 + 1; v <= w1; ++v) {
        in = x + (h * f.W + v) * D;
        for (int64_t d = 0; d < D; ++d) out[d] += in[d];
      }
    }
  }
}

// out = sum of rows[h', w] over the rows h' of the clipped window around h: the window sum at (h, w); out: [D]
template <typename A>
ALWAYS_INLINE void column_sum(const A* rows, int64_t h, int64_t w, const Frame& f, A* out) {
  const int64_t D = f.D, h0 = std::max<int64_t>(0, h - f.r), h1 = std::min(f.H - 1, h + f.r);
  const A* in = rows + (h0 * f.W + w) * D;
  for (int64_t d = 0; d < D; ++d) out[d] = in[d];
  for (int64_t u = h0 + 1; u <= h1; ++u) {
    in = rows + (u * f.W + w) * D;
    for (int64_t d = 0; d < D; ++d) out[d] += in[d];
  }
}

// out = x - y over n
template <typename A>
ALWAYS_INLINE void sub_impl(const A* x, const A* y, A* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] - y[j];
}

// tau[s] = ||Delta_s||, sigma[s] = ||Delta_s - window mean of Delta at s|| (0 unless spatial) for one frame.
// delta: [H W, D]; rows: [H W, D] and box: [D] scratch; inv_count: [H W] 1 / window size.
template <typename A>
ALWAYS_INLINE void frame_scores_impl(const A* delta, A* rows, A* box, const A* inv_count, const Frame& f, bool spatial,
                                     A* tau, A* sigma) {
  const int64_t D = f.D, S = f.H * f.W;
  for (int64_t s = 0; s < S; ++s) tau[s] = std::sqrt(dot(delta + s * D, delta + s * D, D));
  if (!spatial) {
    std::fill(sigma, sigma + S, A(0));
    return;
  }
  row_sums(delta, rows, f);
  for (int64_t s = 0; s < S; ++s) {
    column_sum(rows, s / f.W, s % f.W, f, box);
    const A* x = delta + s * D;
    const A inv = inv_count[s];
    for (int64_t d = 0; d < D; ++d) box[d] = x[d] - box[d] * inv;
    sigma[s] = std::sqrt(dot(box, box, D));
  }
}

// G = a Delta + c E - A^T(c E) for one frame: the gradient reaching Delta from tau and sigma, where
// E = Delta - A Delta, A^T(Y)_s = sum over s' in window(s) of Y_s' / count(s'), a = dL/dtau / tau, c = dL/dsigma / sigma.
// delta, G: [H W, D]; rows, scaled: [H W, D] and box: [D] scratch.
template <typename A>
ALWAYS_INLINE void frame_grad_impl(const A* delta, A* rows, A* scaled, A* box, const A* inv_count, const Frame& f,
                                   bool spatial, const A* a, const A* c, A* G) {
  const int64_t D = f.D, S = f.H * f.W;
  for (int64_t s = 0; s < S; ++s) {
    const A* x = delta + s * D;
    A* g = G + s * D;
    const A as = a[s];
    for (int64_t d = 0; d < D; ++d) g[d] = as * x[d];
  }
  if (!spatial) return;
  row_sums(delta, rows, f);
  for (int64_t s = 0; s < S; ++s) {
    column_sum(rows, s / f.W, s % f.W, f, box);
    const A* x = delta + s * D;
    A* g = G + s * D;
    A* y = scaled + s * D;
    const A inv = inv_count[s], cs = c[s], cs_inv = c[s] * inv_count[s];
    for (int64_t d = 0; d < D; ++d) {
      const A e = x[d] - box[d] * inv;
      g[d] += cs * e;
      y[d] = cs_inv * e;
    }
  }
  row_sums(scaled, rows, f);
  for (int64_t s = 0; s < S; ++s) {
    column_sum(rows, s / f.W, s % f.W, f, box);
    A* g = G + s * D;
    for (int64_t d = 0; d < D; ++d) g[d] -= box[d];
  }
}

// out = x m + g - g_next (g, g_next may be null: zero); x may be null (no upstream gradient): zero
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

GRACE_FAST_CLONES void frame_scores(const float* delta, float* rows, float* box, const float* inv_count,
                                    const Frame& f, bool spatial, float* tau, float* sigma) {
  frame_scores_impl(delta, rows, box, inv_count, f, spatial, tau, sigma);
}
void frame_scores(const double* delta, double* rows, double* box, const double* inv_count, const Frame& f,
                  bool spatial, double* tau, double* sigma) {
  frame_scores_impl(delta, rows, box, inv_count, f, spatial, tau, sigma);
}

GRACE_FAST_CLONES void frame_grad(const float* delta, float* rows, float* scaled, float* box, const float* inv_count,
                                  const Frame& f, bool spatial, const float* a, const float* c, float* G) {
  frame_grad_impl(delta, rows, scaled, box, inv_count, f, spatial, a, c, G);
}
void frame_grad(const double* delta, double* rows, double* scaled, double* box, const double* inv_count,
                const Frame& f, bool spatial, const double* a, const double* c, double* G) {
  frame_grad_impl(delta, rows, scaled, box, inv_count, f, spatial, a, c, G);
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

// Writes src [n] (A) to dst (T); with T = A the caller writes into dst directly and this is a no-op.
template <typename T, typename A>
void store(const A* src, T* dst, int64_t n) {
  if constexpr (!std::is_same_v<T, A>) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
  }
}

// Delta = X_t - X_{t-1} of one frame into delta, as A (tmp: scratch of the frame's size for fp16/bf16)
template <typename T, typename A>
void frame_delta(const T* x_t, const T* x_prev, A* delta, A* tmp, int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    sub(x_t, x_prev, delta, n);
  } else {
    to_float(x_t, delta, n);
    to_float(x_prev, tmp, n);
    sub(delta, tmp, delta, n);
  }
}

struct Params {
  double alpha, temperature, beta, eps;
  bool spatial() const { return alpha != 1.0; }
};

// 1 / the number of tokens in the clipped window around each (h, w): [H W]
template <typename A>
at::Tensor inverse_counts(const Frame& f, const at::TensorOptions& options) {
  at::Tensor out = at::empty({f.H * f.W}, options);
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

// Per-thread scratch of `frames` [H W, D] frames and `rows` [D] rows, through the torch allocator.
template <typename A>
class Scratch {
 public:
  Scratch(int64_t frames, int64_t rows, const Frame& f, const at::TensorOptions& options)
      : frames_(frames), size_(f.size()), D_(f.D),
        buffer_(at::empty({at::get_num_threads(), frames * f.size() + rows * f.D}, options)) {}
  A* frame(int64_t i) const { return mine() + i * size_; }
  A* row(int64_t i) const { return mine() + frames_ * size_ + i * D_; }

 private:
  A* mine() const { return buffer_.data_ptr<A>() + at::get_thread_num() * buffer_.size(1); }
  int64_t frames_, size_, D_;
  at::Tensor buffer_;
};

// out_row = x_row m with m = 1 + beta (w - 1), or (gx != null) out_row = gx_row m + g_row - g_next_row: one token
template <typename T, typename A>
void write_row(const T* x, A m, const A* g, const A* g_next, T* out, A* buf_in, A* buf_out, int64_t D) {
  const A* xa = x ? as_acc(x, buf_in, D) : nullptr;
  if constexpr (std::is_same_v<T, A>) {
    combine(xa, m, g, g_next, out, D);
  } else {
    combine(xa, m, g, g_next, buf_out, D);
    store(buf_out, out, D);
  }
}

template <typename T, typename A>
void forward_kernel(const T* X, T* X_out, A* w, A* tau, A* sigma, int64_t B, int64_t F, const Frame& f,
                    const Params& p, const at::TensorOptions& acc) {
  const int64_t S = f.H * f.W, D = f.D, N = F * S;
  if (F > 1) {
    const at::Tensor inv_count = inverse_counts<A>(f, acc);
    const Scratch<A> scratch(2, 1, f, acc);
    at::parallel_for(0, B * (F - 1), 1, [&](int64_t begin, int64_t end) {
      A *delta = scratch.frame(0), *rows = scratch.frame(1), *box = scratch.row(0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / (F - 1), t = 1 + item % (F - 1), frame = b * F + t;
        frame_delta(X + frame * f.size(), X + (frame - 1) * f.size(), delta, rows, f.size());
        frame_scores(delta, rows, box, inv_count.data_ptr<A>(), f, p.spatial(), tau + frame * S, sigma + frame * S);
      }
    });
  }
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      A *tb = tau + b * N, *sb = sigma + b * N, *wb = w + b * N;
      if (F == 1) {
        std::fill(tb, tb + N, A(0));
        std::fill(sb, sb + N, A(0));
        std::fill(wb, wb + N, A(1));
        continue;
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
  at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const A m = 1 + beta * (w[row] - 1);
      write_row<T, A>(X + row * D, m, nullptr, nullptr, X_out + row * D, scratch.row(0), scratch.row(1), D);
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
  const int64_t S = f.H * f.W, D = f.D, N = F * S;
  const A beta = static_cast<A>(p.beta);
  at::Tensor factors = at::empty({3, B * N}, acc);
  A *gw = factors.data_ptr<A>(), *a = gw + B * N, *c = a + B * N;
  if (F > 1) {
    const Scratch<A> scratch(0, 2, f, acc);
    at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        A g = grad_w ? grad_w[row] : A(0);
        if (grad_out && p.beta != 0) {
          g += beta * dot(as_acc(grad_out + row * D, scratch.row(0), D), as_acc(X + row * D, scratch.row(1), D), D);
        }
        gw[row] = g;
      }
    });
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        clip_factors(w + b * N, tau + b * N, sigma + b * N, gw + b * N, a + b * N, c + b * N, N, S, p);
      }
    });
  }
  // each clip backwards in time chunks: chunk [t0, t1) needs G_t0 .. G_t1, recomputing G_t1 of the next chunk
  const int64_t chunks = std::clamp<int64_t>((4 * at::get_num_threads() + B - 1) / B, 1, F);
  const int64_t len = (F + chunks - 1) / chunks, count = (F + len - 1) / len;
  const at::Tensor inv_count = inverse_counts<A>(f, acc);
  const Scratch<A> scratch(5, 2, f, acc);
  at::parallel_for(0, B * count, 1, [&](int64_t begin, int64_t end) {
    A *delta = scratch.frame(0), *rows = scratch.frame(1), *scaled = scratch.frame(2);
    A *G = scratch.frame(3), *G_next = scratch.frame(4), *box = scratch.row(0), *out = scratch.row(1);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / count, t0 = (item % count) * len, t1 = std::min(F, t0 + len);
      // G_t, the gradient reaching Delta_t (frame 0's folded into frame 1), into buffer; null for t = 0 and t = F
      const auto frame_gradient = [&](int64_t t, A* buffer) -> A* {
        if (t == 0 || t == F) return nullptr;
        const int64_t frame = b * F + t;
        frame_delta(X + frame * f.size(), X + (frame - 1) * f.size(), delta, rows, f.size());
        frame_grad(delta, rows, scaled, box, inv_count.data_ptr<A>(), f, p.spatial(), a + frame * S, c + frame * S,
                   buffer);
        return buffer;
      };
      const A* next = frame_gradient(t1, G_next);
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const A* cur = frame_gradient(t, G);
        for (int64_t s = 0; s < S; ++s) {
          const int64_t row = (b * F + t) * S + s;
          const A m = 1 + beta * (w[row] - 1);
          write_row<T, A>(grad_out ? grad_out + row * D : nullptr, m, cur ? cur + s * D : nullptr,
                          next ? next + s * D : nullptr, dX + row * D, box, out, D);
        }
        std::swap(G, G_next);  // G_t is G_next of frame t - 1
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
