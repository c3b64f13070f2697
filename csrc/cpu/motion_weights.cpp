// Motion-difference weighting on the CPU (docs/method.md section 1), the semantics of motion_weights_reference.
// Clips go to the threads whole (at least as many clips as threads) or else in groups of about GROUP tokens, and no
// per-token buffer besides w outlives a clip or group: the backward saves only X and w and recomputes the scores.
// Scores: per frame (the work item) and tile of DT features, the difference Delta and its clipped window mean live in
// thread scratch and leave squared norms in one vector of partial sums per token; per clip these give the normalisation
// and the softmax. Forward: then X_out = X * (1 + beta (w - 1)). Backward: the scores again, with <grad_out, X>; per
// clip the softmax and normalisation adjoints, which reduce the gradient of each frame's Delta to G = a Delta + c E -
// A^T(c E) (E = Delta - A Delta, A the window mean, a and c per token); per feature tile, each clip walked backwards in
// time, dX_t = grad_out_t m_t + G_t - G_{t+1}, so every dX element is written once. Peak memory of forward plus
// backward: X_out, dX, w and O(threads (H W DT + T H W) + GROUP). fp16/bf16 read directly, fp32 math (fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/clones.h"
#include "cpu/work_queue.h"

#define ALWAYS_INLINE __attribute__((always_inline)) inline

namespace grace_fast::cpu {
namespace {

// A thread's scratch is TILES tiles of [H W, DT] (50 KB in float32 for 14 x 14 tokens), the backward's work buffer 3
// floats per token of a group (48 KB, or one clip's); a group of two 16-frame VideoMAE clips splits evenly over two
// threads. The last tile of a frame is padded with zeros.
constexpr int64_t DT = 16;       // features per tile
constexpr int64_t TILES = 4;     // scratch tiles per thread
constexpr int64_t GROUP = 4096;  // tokens per group of clips (at least one clip)
constexpr int64_t SCALE_ROWS = 64;  // tokens per work item of X_out = X m

// Vec: one AVX2 register of A, a GCC vector aligned like A (unaligned access)
template <typename A>
struct Native {
  typedef A Vec __attribute__((vector_size(32), aligned(sizeof(A))));
};
template <typename A>
using Vec = typename Native<A>::Vec;
typedef uint16_t Bits16 __attribute__((vector_size(16), aligned(2)));
typedef uint32_t Bits32 __attribute__((vector_size(32), aligned(4)));

// One token's DT features of a tile, in registers
template <typename A>
struct Row {
  static constexpr int64_t K = DT * sizeof(A) / sizeof(Vec<A>), L = sizeof(Vec<A>) / sizeof(A);
  Vec<A> v[K];
};
static_assert(3 * sizeof(Vec<float>) <= (TILES - 2) * sizeof(Row<float>), "the scores' partial sums fit in 2 tiles");

template <typename A>
ALWAYS_INLINE Row<A>& operator+=(Row<A>& x, const Row<A>& y) {
  for (int64_t k = 0; k < Row<A>::K; ++k) x.v[k] += y.v[k];
  return x;
}
template <typename A>
ALWAYS_INLINE Row<A>& operator-=(Row<A>& x, const Row<A>& y) {
  for (int64_t k = 0; k < Row<A>::K; ++k) x.v[k] -= y.v[k];
  return x;
}
template <typename A>
ALWAYS_INLINE Row<A> operator+(Row<A> x, const Row<A>& y) {
  return x += y;
}
template <typename A>
ALWAYS_INLINE Row<A> operator-(Row<A> x, const Row<A>& y) {
  return x -= y;
}
template <typename A>
ALWAYS_INLINE Row<A> operator*(Row<A> x, A m) {
  for (int64_t k = 0; k < Row<A>::K; ++k) x.v[k] *= m;
  return x;
}
template <typename A>
ALWAYS_INLINE Row<A> operator*(Row<A> x, const Row<A>& y) {
  for (int64_t k = 0; k < Row<A>::K; ++k) x.v[k] *= y.v[k];
  return x;
}

// A frame of H x W tokens of D features; the window mean is over the clipped (2 r + 1)^2 neighbourhood.
struct Frame {
  int64_t H, W, D, r;
  int64_t tokens() const { return H * W; }
};

// x [n] (n <= DT) as a Row, zero past n. Full rows take the path without a stack copy.
template <typename A>
ALWAYS_INLINE Row<A> load_row(const A* x, int64_t n) {
  if (n == DT) {
    Row<A> r;
    for (int64_t k = 0; k < Row<A>::K; ++k) r.v[k] = *reinterpret_cast<const Vec<A>*>(x + k * Row<A>::L);
    return r;
  }
  A padded[DT] = {};
  std::copy(x, x + n, padded);
  return load_row(padded, DT);
}

ALWAYS_INLINE Row<float> load_row(const c10::BFloat16* x, int64_t n) {  // bf16 is the top half of a float
  if (n == DT) {
    Row<float> r;
    for (int64_t k = 0; k < Row<float>::K; ++k) {
      const Bits16 half = *reinterpret_cast<const Bits16*>(x + k * Row<float>::L);
      const Bits32 wide = __builtin_convertvector(half, Bits32) << 16;
      std::memcpy(&r.v[k], &wide, sizeof(wide));
    }
    return r;
  }
  c10::BFloat16 padded[DT] = {};
  std::copy(x, x + n, padded);
  return load_row(padded, DT);
}

ALWAYS_INLINE Row<float> load_row(const c10::Half* x, int64_t n) {
  float padded[DT] = {};
  for (int64_t j = 0; j < n; ++j) padded[j] = static_cast<float>(x[j]);
  return load_row(padded, DT);
}

// out [n] = the first n values of r
template <typename A>
ALWAYS_INLINE void store_row(const Row<A>& r, int64_t n, A* out) {
  if (n == DT) {
    for (int64_t k = 0; k < Row<A>::K; ++k) *reinterpret_cast<Vec<A>*>(out + k * Row<A>::L) = r.v[k];
    return;
  }
  A padded[DT];
  store_row(r, DT, padded);
  std::copy(padded, padded + n, out);
}

ALWAYS_INLINE void store_row(const Row<float>& r, int64_t n, c10::BFloat16* out) {  // c10's rounding, NaN kept
  if (n == DT) {
    for (int64_t k = 0; k < Row<float>::K; ++k) {
      Bits32 u;
      std::memcpy(&u, &r.v[k], sizeof(u));
      u = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16;
      const Bits16 half = __builtin_convertvector(r.v[k] != r.v[k] ? Bits32{} + 0x7FC0 : u, Bits16);
      *reinterpret_cast<Bits16*>(out + k * Row<float>::L) = half;
    }
    return;
  }
  c10::BFloat16 padded[DT];
  store_row(r, DT, padded);
  std::copy(padded, padded + n, out);
}

ALWAYS_INLINE void store_row(const Row<float>& r, int64_t n, c10::Half* out) {
  float values[DT];
  store_row(r, DT, values);
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<c10::Half>(values[j]);
}

// Hint that the cache line at p is used soon: the strided rows of a tile defeat the hardware's prefetch
template <typename T>
ALWAYS_INLINE void prefetch(const T* p) {
  __builtin_prefetch(p);
}

// r's DT values folded to one vector of partial sums
template <typename A>
ALWAYS_INLINE Vec<A> fold(const Row<A>& r) {
  Vec<A> sum = r.v[0];
  for (int64_t k = 1; k < Row<A>::K; ++k) sum += r.v[k];
  return sum;
}

template <typename A>
ALWAYS_INLINE A lane_sum(Vec<A> lanes) {
  A s = 0;
  for (int64_t j = 0; j < Row<A>::L; ++j) s += lanes[j];
  return s;
}

// rows[h, w] = sum of x[h, w'] over the columns w' of the clipped window around w; x, rows: [H, W]
template <typename A>
ALWAYS_INLINE void row_sums(const Row<A>* x, Row<A>* rows, const Frame& f) {
  for (int64_t h = 0; h < f.H; ++h) {
    for (int64_t w = 0; w < f.W; ++w) {
      const int64_t w0 = std::max<int64_t>(0, w - f.r), w1 = std::min(f.W - 1, w + f.r);
      Row<A> sum = x[h * f.W + w0];
      for (int64_t v = w0 + 1; v <= w1; ++v) sum += x[h * f.W + v];
      rows[h * f.W + w] = sum;
    }
  }
}

// The window sum at (h, w): the sum of rows[h', w] over the rows h' of the clipped window around h
template <typename A>
ALWAYS_INLINE Row<A> window_sum(const Row<A>* rows, int64_t h, int64_t w, const Frame& f) {
  const int64_t h0 = std::max<int64_t>(0, h - f.r), h1 = std::min(f.H - 1, h + f.r);
  Row<A> sum = rows[h0 * f.W + w];
  for (int64_t u = h0 + 1; u <= h1; ++u) sum += rows[u * f.W + w];
  return sum;
}

// The scores of one frame, walked tile by tile: tau [H W] = ||Delta||, sigma [H W] = ||Delta - window mean|| (0
// unless spatial), if x_prev is given (frames t >= 1), squared as Delta scale (a power of two); dots [H W] =
// <grad_out, X_t> if grad_out is given. x_t, x_prev, grad_out: [H W, D]; delta, rows: [H W] Rows and lanes: [3, H W]
// Vecs of scratch; inv_count: [H W] 1 / window size.
template <typename T, typename A>
GRACE_FAST_CLONES void frame_scores(const T* x_t, const T* x_prev, const T* grad_out, const Frame& f, bool spatial,
                                    A scale, const A* inv_count, Row<A>* delta, Row<A>* rows, Vec<A>* lanes, A* tau,
                                    A* sigma, A* dots) {
  const int64_t S = f.tokens(), D = f.D;
  Vec<A> *tau_lanes = lanes, *sigma_lanes = lanes + S, *dot_lanes = lanes + 2 * S;
  std::fill(lanes, lanes + 3 * S, Vec<A>{});
  for (int64_t d0 = 0; d0 < D; d0 += DT) {
    const int64_t n = std::min(DT, D - d0);
    const bool more = d0 + DT < D;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t at = s * D + d0;
      if (more) prefetch(x_t + at + DT);  // the next tile's
      const Row<A> x = load_row(x_t + at, n);
      if (grad_out) {
        if (more) prefetch(grad_out + at + DT);
        dot_lanes[s] += fold<A>(load_row(grad_out + at, n) * x);
      }
      if (x_prev) {
        delta[s] = x - load_row(x_prev + at, n);
        if (scale != 1) delta[s] = delta[s] * scale;
        tau_lanes[s] += fold<A>(delta[s] * delta[s]);
      }
    }
    if (!x_prev || !spatial) continue;
    row_sums<A>(delta, rows, f);
    for (int64_t h = 0, s = 0; h < f.H; ++h) {
      for (int64_t w = 0; w < f.W; ++w, ++s) {
        const Row<A> e = delta[s] - window_sum<A>(rows, h, w, f) * inv_count[s];
        sigma_lanes[s] += fold<A>(e * e);
      }
    }
  }
  const A unscale = 1 / scale;
  for (int64_t s = 0; s < S; ++s) {
    if (x_prev) {
      tau[s] = std::sqrt(lane_sum<A>(tau_lanes[s])) * unscale;
      sigma[s] = std::sqrt(lane_sum<A>(sigma_lanes[s])) * unscale;
    }
    if (grad_out) dots[s] = lane_sum<A>(dot_lanes[s]);
  }
}

// One tile of G = a Delta + c E - A^T(c E), the gradient reaching Delta of a frame from tau and sigma, where
// E = Delta - A Delta, A^T(Y)_s = sum over s' in window(s) of Y_s' / count(s'), a = dL/dtau / tau, c = dL/dsigma /
// sigma. delta: [H W], overwritten; G: [H W]; rows: [H W] scratch.
template <typename A>
ALWAYS_INLINE void tile_grad(Row<A>* delta, Row<A>* rows, const A* inv_count, const Frame& f, bool spatial,
                             const A* a, const A* c, Row<A>* G) {
  const int64_t S = f.tokens();
  if (!spatial) {
    for (int64_t s = 0; s < S; ++s) G[s] = delta[s] * a[s];
    return;
  }
  row_sums<A>(delta, rows, f);
  for (int64_t h = 0, s = 0; h < f.H; ++h) {  // Delta_s is read for the last time here: c E / count replaces it
    for (int64_t w = 0; w < f.W; ++w, ++s) {
      const Row<A> e = delta[s] - window_sum<A>(rows, h, w, f) * inv_count[s];
      G[s] = delta[s] * a[s] + e * c[s];
      delta[s] = e * (c[s] * inv_count[s]);
    }
  }
  row_sums<A>(delta, rows, f);
  for (int64_t h = 0, s = 0; h < f.H; ++h) {
    for (int64_t w = 0; w < f.W; ++w, ++s) G[s] -= window_sum<A>(rows, h, w, f);
  }
}

// The tile of G_t of a clip (frame 0's share folded into frame 1) in buffer, from Delta scale and the factors a, c
// of clip_factors; null for t = 0 and t = F.
template <typename T, typename A>
ALWAYS_INLINE Row<A>* frame_gradient(const T* X, const A* a, const A* c, A scale, int64_t F, int64_t t, int64_t d0,
                                     int64_t n, const Frame& f, bool spatial, const A* inv_count, Row<A>* delta,
                                     Row<A>* rows, Row<A>* buffer) {
  if (t == 0 || t == F) return nullptr;
  const int64_t S = f.tokens(), D = f.D;
  const T* x_t = X + t * S * D + d0;
  for (int64_t s = 0; s < S; ++s) {
    if (t > 1) prefetch(x_t + (s - 2 * S) * D);  // X_{t-2}: the next step's
    delta[s] = (load_row(x_t + s * D, n) - load_row(x_t + (s - S) * D, n)) * scale;
  }
  tile_grad(delta, rows, inv_count, f, spatial, a + t * S, c + t * S, buffer);
  return buffer;
}

// dX of the features [d0, d0 + DT) of frames [t0, t1) of one clip (X, grad_out, dX: [F, H W, D]; w, a, c: [F H W];
// scale: the clip's, of clip_factors), walked backwards in time: dX_t = grad_out_t m_t + G_t - G_{t+1},
// m = 1 + beta (w - 1). a, c null: no motion (F = 1). delta, rows, G_cur, G_next: [H W] Rows of scratch.
template <typename T, typename A>
GRACE_FAST_CLONES void chunk_gradient(const T* X, const T* grad_out, const A* w, const A* a, const A* c, A scale,
                                      T* dX, int64_t F, int64_t t0, int64_t t1, int64_t d0, const Frame& f,
                                      bool spatial, A beta, const A* inv_count, Row<A>* delta, Row<A>* rows,
                                      Row<A>* G_cur, Row<A>* G_next) {
  const int64_t S = f.tokens(), D = f.D, n = std::min(DT, D - d0);
  // always_inline: a lambda does not inherit its function's target, and without it this hot loop ran as SSE2
  const auto gradient = [&](int64_t t, Row<A>* buffer) __attribute__((always_inline)) {
    return frame_gradient(X, a, c, scale, F, t, d0, n, f, spatial, inv_count, delta, rows, buffer);
  };
  const Row<A>* next = a ? gradient(t1, G_next) : nullptr;
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const Row<A>* cur = a ? gradient(t, G_cur) : nullptr;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t row = t * S + s, at = row * D + d0;
      Row<A> v{};
      if (t > t0) prefetch(dX + at - S * D);  // the next step's
      if (grad_out) {
        if (t > t0) prefetch(grad_out + at - S * D);
        v = load_row(grad_out + at, n) * (1 + beta * (w[row] - 1));
      }
      if (cur) v += cur[s];
      if (next) v -= next[s];
      store_row(v, n, dX + at);
    }
    std::swap(G_cur, G_next);  // G_t is the G_next of frame t - 1
    next = cur;
  }
}

// out [D] = x m
template <typename T, typename A>
GRACE_FAST_CLONES void scale_row(const T* x, A m, T* out, int64_t D) {
  for (int64_t d0 = 0; d0 < D; d0 += DT) {
    const int64_t n = std::min(DT, D - d0);
    store_row(load_row(x + d0, n) * m, n, out + d0);
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

// Per-thread scratch of TILES tiles of [H W] Rows, through the torch allocator.
template <typename A>
class Scratch {
 public:
  Scratch(const Frame& f, const at::TensorOptions& options)
      : tile_(f.tokens()), buffer_(at::empty({at::get_num_threads(), TILES * tile_ * DT}, options)) {}
  Row<A>* tile(int64_t i) const {
    return reinterpret_cast<Row<A>*>(buffer_.data_ptr<A>() + at::get_thread_num() * buffer_.size(1)) + i * tile_;
  }

 private:
  int64_t tile_;
  at::Tensor buffer_;
};

// The largest value of |x [n]| (NaN if x has one).
template <typename T>
auto max_abs(const T* x, int64_t n) {
  using A = at::opmath_type<T>;
  A top = 0;
  for (int64_t i = 0; i < n; ++i) top = std::isnan(top) ? top : std::max(top, std::abs(static_cast<A>(x[i])));
  return top;
}

// The largest power of two at most x > 0 (2^e for x in [2^e, 2^(e+1)), within the normal range).
template <typename A>
A power_of_two_below(A x) {
  return std::ldexp(A(1), std::clamp(std::ilogb(x), std::numeric_limits<A>::min_exponent - 1,
                                     std::numeric_limits<A>::max_exponent - 1));
}

// Whether the squares behind the scores tau, sigma [S] of a frame may have overflowed, or lost their digits to
// underflow: a largest score that is not finite or that is below 2^-40. Then the scores are taken again of Delta
// scaled by a power of two near 1 / max |X|, which at normal magnitudes never happens.
template <typename A>
bool lost_range(const A* tau, const A* sigma, int64_t S) {
  A top = 0;
  for (int64_t s = 0; s < S; ++s) top = std::max({top, tau[s], sigma[s]});
  const bool finite = std::isfinite(top) && std::all_of(tau, tau + S, [](A v) { return !std::isnan(v); }) &&
                      std::all_of(sigma, sigma + S, [](A v) { return !std::isnan(v); });
  return !finite || top < std::ldexp(A(1), -40);
}

// Clips per group: as many as fit in GROUP tokens, at least one.
int64_t group_size(int64_t B, int64_t N) { return std::clamp<int64_t>(GROUP / N, 1, B); }

// The scores tau, sigma [G F S] of G clips X [G, F, H W, D] on frames t >= 1 (frame 0's are left to the caller), and
// if gw is given, gw [G F S] = grad_w + beta <grad_out, X> on every frame (grad_out, grad_w null: zero). Work items
// are frames.
template <typename T, typename A>
void group_scores(const T* X, const T* grad_out, const A* grad_w, A beta, int64_t G, int64_t F, const Frame& f,
                  bool spatial, const A* inv_count, const Scratch<A>& scratch, A* tau, A* sigma, A* gw) {
  const int64_t S = f.tokens(), D = f.D;
  const bool dots = gw && grad_out && beta != 0;
  for_each_item(G * F, S * D, [&](int64_t frame) {
    const int64_t first = frame * S;
    const T* x_t = X + first * D;
    const T* x_prev = frame % F > 0 ? x_t - S * D : nullptr;
    const auto scores = [&](const T* grad_out_t, A scale) {
      frame_scores(x_t, x_prev, grad_out_t, f, spatial, scale, inv_count, scratch.tile(0), scratch.tile(1),
                   reinterpret_cast<Vec<A>*>(scratch.tile(2)), tau + first, sigma + first,
                   grad_out_t ? gw + first : nullptr);
    };
    if (x_prev || dots) scores(dots ? grad_out + first * D : nullptr, A(1));
    if (x_prev && lost_range(tau + first, sigma + first, S)) {
      const A top = std::max(max_abs(x_t, S * D), max_abs(x_prev, S * D));
      if (top > 0) scores(nullptr, power_of_two_below(1 / top));
    }
    for (int64_t i = first; gw && i < first + S; ++i) {
      gw[i] = (grad_w ? grad_w[i] : A(0)) + (dots ? beta * gw[i] : A(0));
    }
  });
}

// w [N] = N softmax(r / temperature) of one clip from its scores tau, sigma [N] (frame 0's are set here: Delta_0 =
// Delta_1), r = alpha tau / (mean tau + eps) + (1 - alpha) sigma / (mean sigma + eps).
template <typename A>
void clip_weights(A* tau, A* sigma, A* w, int64_t N, int64_t S, const Params& p) {
  std::copy(tau + S, tau + 2 * S, tau);
  std::copy(sigma + S, sigma + 2 * S, sigma);
  double sum_tau = 0, sum_sigma = 0;
  for (int64_t i = 0; i < N; ++i) {
    sum_tau += tau[i];
    sum_sigma += sigma[i];
  }
  const A k_tau = static_cast<A>(p.alpha / (sum_tau / N + p.eps) / p.temperature);
  const A k_sigma = static_cast<A>((1 - p.alpha) / (sum_sigma / N + p.eps) / p.temperature);
  A top = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < N; ++i) {
    w[i] = k_tau * tau[i] + k_sigma * sigma[i];
    top = std::max(top, w[i]);
  }
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    w[i] = std::exp(w[i] - top);
    total += w[i];
  }
  const A scale = static_cast<A>(N / total);
  for (int64_t i = 0; i < N; ++i) w[i] *= scale;
}

// run(b0, clips, work, stride) over groups of the B clips of N tokens, each with `rows` rows of `stride` >= clips N
// accumulator values of work: whole clips as work items in one parallel region when the clips are at least the
// threads (on a shared machine every join waits for a thread that may have lost its core, and this has one, where
// groups of clips spread over the threads have several per group), else group by group. The work is per thread, or
// per group: never sized by the batch.
template <typename A, typename Fn>
void for_each_group(int64_t B, int64_t N, int64_t rows, int64_t elements, const at::TensorOptions& acc, const Fn& run) {
  const int64_t threads = at::get_num_threads();
  if (B >= threads) {
    const at::Tensor work = at::empty({std::min(B, threads), rows * N}, acc);
    for_each_item(B, elements, [&](int64_t b) { run(b, 1, work.data_ptr<A>() + at::get_thread_num() * rows * N, N); });
    return;
  }
  const int64_t G = group_size(B, N);
  const at::Tensor work = at::empty({rows * G * N}, acc);
  for (int64_t b0 = 0; b0 < B; b0 += G) run(b0, std::min(G, B - b0), work.data_ptr<A>(), G * N);
}

// Clips in groups, so that X_out is written while the group's X is still in cache.
template <typename T, typename A>
void forward_kernel(const T* X, T* X_out, A* w, int64_t B, int64_t F, const Frame& f, const Params& p,
                    const at::TensorOptions& acc) {
  const int64_t S = f.tokens(), D = f.D, N = F * S;
  const at::Tensor inv_count = inverse_counts<A>(f, acc);
  const Scratch<A> scratch(f, acc);
  const A beta = static_cast<A>(p.beta);
  for_each_group<A>(B, N, 2, 2 * N * D, acc, [&](int64_t b0, int64_t clips, A* tau, int64_t stride) {
    A* sigma = tau + stride;
    const int64_t first = b0 * N;
    if (F == 1) {
      std::fill(w + first, w + first + clips * N, A(1));
    } else {
      group_scores<T, A>(X + first * D, nullptr, nullptr, A(0), clips, F, f, p.spatial(), inv_count.data_ptr<A>(),
                         scratch, tau, sigma, nullptr);
      at::parallel_for(0, clips, grain(N), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) clip_weights(tau + b * N, sigma + b * N, w + first + b * N, N, S, p);
      });
    }
    const int64_t rows = clips * N, block = std::min<int64_t>(rows, SCALE_ROWS);
    for_each_item((rows + block - 1) / block, block * D, [&](int64_t item) {
      for (int64_t row = first + item * block; row < first + std::min(rows, (item + 1) * block); ++row) {
        scale_row(X + row * D, 1 + beta * (w[row] - 1), X_out + row * D, D);
      }
    });
  });
}

// Gradient of the loss with respect to r = alpha tau_hat + (1 - alpha) sigma_hat of one clip, reduced to the per-token
// factors a = dL/dtau / tau and c = dL/dsigma / sigma, which overwrite tau and sigma [N] (frame 0's scores are set
// here first: Delta_0 = Delta_1); gw [N] holds dL/dw on entry and dL/dr on return. The factors are returned over the
// clip's scale k, a power of two near 1 / max score, which is returned: G = (a / k) (k Delta) + ... keeps every
// factor in range (a itself is about 1 / |X|^2, below float32's range for entries around 1e19).
template <typename A>
A clip_factors(const A* w, A* tau, A* sigma, A* gw, int64_t N, int64_t S, const Params& p) {
  std::copy(tau + S, tau + 2 * S, tau);
  std::copy(sigma + S, sigma + 2 * S, sigma);
  const A top = std::max(*std::max_element(tau, tau + N), *std::max_element(sigma, sigma + N));
  const A k = top > 0 && std::isfinite(top) ? power_of_two_below(1 / top) : A(1);
  double weighted = 0;
  for (int64_t i = 0; i < N; ++i) weighted += static_cast<double>(w[i]) * gw[i];
  const A mean_g = static_cast<A>(weighted / N), inv_temperature = static_cast<A>(1 / p.temperature);
  for (int64_t i = 0; i < N; ++i) gw[i] = w[i] * (gw[i] - mean_g) * inv_temperature;  // dL/dr
  // score / (mean score + eps): the gradient of the normalised score is (g_i - <g, score_hat> / N) / (mean + eps)
  const auto factors = [&](A* score, double mix) {
    double sum = 0, dot_g = 0;
    for (int64_t i = 0; i < N; ++i) sum += score[i];
    const double denom = sum / N + p.eps;
    for (int64_t i = 0; i < N; ++i) dot_g += mix * gw[i] * score[i];
    const A shift = static_cast<A>(dot_g / denom / N), inv_denom = static_cast<A>(1 / (denom * k));
    const A m = static_cast<A>(mix);
    for (int64_t i = 0; i < N; ++i) {
      score[i] = score[i] > 0 ? (m * gw[i] - shift) * inv_denom / (score[i] * k) * k : A(0);
    }
    for (int64_t s = 0; s < S; ++s) score[S + s] += score[s];  // Delta_0 = Delta_1: frame 0's share goes to frame 1
  };
  factors(tau, p.alpha);
  factors(sigma, 1 - p.alpha);
  return k;
}

// dX [G, F, H W, D] of G clips from the factors a, c [G F S] and scales k [G] of clip_factors (null when F = 1).
// Work items: (clip, feature tile, time chunk). A chunk [t0, t1) of a clip needs G_t0 .. G_t1 and recomputes the G_t1
// of the next chunk, so clips are split in time only when clips and tiles are too few to occupy the threads.
template <typename T, typename A>
void group_gradient(const T* grad_out, const T* X, const A* w, const A* a, const A* c, const A* k, T* dX, int64_t G,
                    int64_t F, const Frame& f, const Params& p, const A* inv_count, const Scratch<A>& scratch) {
  const int64_t S = f.tokens(), D = f.D, N = F * S, tiles = (D + DT - 1) / DT;
  const int64_t chunks = std::clamp<int64_t>((4 * at::get_num_threads() + G * tiles - 1) / (G * tiles), 1, F);
  const int64_t len = (F + chunks - 1) / chunks, count = (F + len - 1) / len;
  for_each_item(G * tiles * count, len * S * DT, [&](int64_t item) {
    const int64_t b = item / (tiles * count), d0 = (item / count) % tiles * DT;
    const int64_t t0 = item % count * len, t1 = std::min(F, t0 + len);
    chunk_gradient(X + b * N * D, grad_out ? grad_out + b * N * D : nullptr, w + b * N, a ? a + b * N : nullptr,
                   c ? c + b * N : nullptr, k ? k[b] : A(1), dX + b * N * D, F, t0, t1, d0, f, p.spatial(),
                   static_cast<A>(p.beta), inv_count, scratch.tile(0), scratch.tile(1), scratch.tile(2), scratch.tile(3));
  });
}

template <typename T, typename A>
void backward_kernel(const T* grad_out, const A* grad_w, const T* X, const A* w, T* dX, int64_t B, int64_t F,
                     const Frame& f, const Params& p, const at::TensorOptions& acc) {
  const int64_t S = f.tokens(), D = f.D, N = F * S;
  const at::Tensor inv_count = inverse_counts<A>(f, acc);
  const Scratch<A> scratch(f, acc);
  for_each_group<A>(B, N, 3, 4 * N * D, acc, [&](int64_t b0, int64_t clips, A* a, int64_t stride) {
    A *c = a + stride, *gw = c + stride;
    std::vector<A> k(clips, A(1));
    const int64_t first = b0 * N;
    const T* grad_out_b = grad_out ? grad_out + first * D : nullptr;
    if (F > 1) {
      group_scores<T, A>(X + first * D, grad_out_b, grad_w ? grad_w + first : nullptr, static_cast<A>(p.beta), clips,
                         F, f, p.spatial(), inv_count.data_ptr<A>(), scratch, a, c, gw);
      at::parallel_for(0, clips, grain(N), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          k[b] = clip_factors(w + first + b * N, a + b * N, c + b * N, gw + b * N, N, S, p);
        }
      });
    }
    group_gradient<T, A>(grad_out_b, X + first * D, w + first, F > 1 ? a : nullptr, F > 1 ? c : nullptr,
                         F > 1 ? k.data() : nullptr, dX + first * D, clips, F, f, p, inv_count.data_ptr<A>(), scratch);
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

std::tuple<at::Tensor, at::Tensor> motion_weights_forward(const at::Tensor& X_, double alpha, int64_t window,
                                                          double temperature, double beta, double eps) {
  const Frame f = check_frame(X_, window);
  const at::Tensor X = X_.contiguous();
  const int64_t B = X.size(0), F = X.size(1);
  const auto acc = acc_options(X);
  at::Tensor X_out = at::empty_like(X), w = at::empty({B, F, f.H, f.W}, acc);
  const Params p{alpha, temperature, beta, eps};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "motion_weights_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t>(X.data_ptr<scalar_t>(), X_out.data_ptr<scalar_t>(), w.data_ptr<acc_t>(), B, F, f,
                                    p, acc);
  });
  return {X_out, w};
}

at::Tensor motion_weights_backward(const c10::optional<at::Tensor>& grad_out_, const c10::optional<at::Tensor>& grad_w_,
                                   const at::Tensor& X_, const at::Tensor& w_, double alpha, int64_t window,
                                   double temperature, double beta, double eps) {
  const Frame f = check_frame(X_, window);
  const at::Tensor X = X_.contiguous();
  const int64_t B = X.size(0), F = X.size(1);
  const auto acc = acc_options(X);
  TORCH_CHECK(w_.sizes() == X.sizes().slice(0, 4), "motion_weights_backward: w must be [B, T, H, W], got ",
              w_.sizes());
  const at::Tensor w = w_.to(acc).contiguous();
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
    backward_kernel<scalar_t, acc_t>(grad_out.defined() ? grad_out.data_ptr<scalar_t>() : nullptr,
                                     grad_w.defined() ? grad_w.data_ptr<acc_t>() : nullptr, X.data_ptr<scalar_t>(),
                                     w.data_ptr<acc_t>(), dX.data_ptr<scalar_t>(), B, F, f, p, acc);
  });
  return dX;
}

}  // namespace

TORCH_LIBRARY_IMPL(grace_fast, CPU, m) {
  m.impl("motion_weights_forward", &motion_weights_forward);
  m.impl("motion_weights_backward", &motion_weights_backward);
}

}  // namespace grace_fast::cpu
