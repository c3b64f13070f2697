#include "cpu/vec.h"

#include "cpu/clones.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace grace_fast::cpu {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4)));

__attribute__((always_inline)) inline v8f load(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
__attribute__((always_inline)) inline void store(float* p, v8f x) { *reinterpret_cast<v8f_u*>(p) = x; }
__attribute__((always_inline)) inline v8f splat(float x) { return v8f{} + x; }

// exp(x) to ~2 ulp (Cephes expf polynomial, round-to-nearest range reduction); 0 below -87.3, -inf included.
__attribute__((always_inline)) inline v8f vexp(v8f x) {
  const v8f lo = splat(-87.3f);
  const v8f xc = x < lo ? lo : (x > splat(88.3f) ? splat(88.3f) : x);
  const v8f magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const v8f t = xc * splat(1.44269504088896341f) + magic;
  const v8f n = t - magic;
  const v8f r = xc - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.f);
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const v8f y = p * scale;
  return x < lo ? v8f{} : y;
}

// log(x) to ~2 ulp for normal x > 0 (Cephes logf polynomial on the mantissa in [sqrt(1/2), sqrt(2))).
__attribute__((always_inline)) inline v8f vlog(v8f x) {
  v8i bits;
  std::memcpy(&bits, &x, sizeof(bits));
  v8i e = (bits >> 23) - 127;
  bits = (bits & 0x007fffff) | 0x3f800000;
  v8f m;
  std::memcpy(&m, &bits, sizeof(m));
  const v8i high = m > splat(1.41421356237f);  // -1 where the mantissa halves and the exponent grows
  m = high ? m * splat(0.5f) : m;
  e -= high;
  const v8f ef = __builtin_convertvector(e, v8f);
  const v8f r = m - splat(1.f), z = r * r;
  v8f p = splat(7.0376836292e-2f);
  p = p * r + splat(-1.1514610310e-1f);
  p = p * r + splat(1.1676998740e-1f);
  p = p * r + splat(-1.2420140846e-1f);
  p = p * r + splat(1.4249322787e-1f);
  p = p * r + splat(-1.6668057665e-1f);
  p = p * r + splat(2.0000714765e-1f);
  p = p * r + splat(-2.4999993993e-1f);
  p = p * r + splat(3.3333331174e-1f);
  const v8f y = p * r * z + ef * splat(-2.12194440e-4f) - splat(0.5f) * z;
  return r + y + ef * splat(0.693359375f);
}

float scalar_exp(float x) { return x < -87.3f ? 0.f : std::exp(x); }

}  // namespace

GRACE_FAST_CLONES float dot(const float* x, const float* y, int64_t n) {
  v8f acc0{}, acc1{};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    acc0 += load(x + j) * load(y + j);
    acc1 += load(x + j + 8) * load(y + j + 8);
  }
  for (; j + 8 <= n; j += 8) acc0 += load(x + j) * load(y + j);
  acc0 += acc1;
  float s = 0.f;
  for (int q = 0; q < 8; ++q) s += acc0[q];
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

GRACE_FAST_CLONES void axpy(float alpha, const float* x, float* y, int64_t n) {
  const v8f a = splat(alpha);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store(y + j, load(y + j) + a * load(x + j));
  for (; j < n; ++j) y[j] += alpha * x[j];
}

GRACE_FAST_CLONES float exp_affine(const float* c, const float* g, float inv_eps, float shift, float* out,
                                   int64_t n) {
  const v8f ie = splat(inv_eps), sh = splat(shift);
  v8f acc{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const v8f e = vexp((load(g + j) - load(c + j)) * ie - sh);
    store(out + j, e);
    acc += e;
  }
  float s = 0.f;
  for (int q = 0; q < 8; ++q) s += acc[q];
  for (; j < n; ++j) s += (out[j] = scalar_exp((g[j] - c[j]) * inv_eps - shift));
  return s;
}

GRACE_FAST_CLONES float max_diff(const float* g, const float* c, int64_t n) {
  v8f m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const v8f x = load(g + j) - load(c + j);
    m = x > m ? x : m;
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int q = 0; q < 8; ++q) r = std::max(r, m[q]);
  for (; j < n; ++j) r = std::max(r, g[j] - c[j]);
  return r;
}

GRACE_FAST_CLONES void max_update(float f, const float* c, float* colmax, int64_t n) {
  const v8f fv = splat(f);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const v8f x = fv - load(c + j), m = load(colmax + j);
    store(colmax + j, x > m ? x : m);
  }
  for (; j < n; ++j) colmax[j] = std::max(colmax[j], f - c[j]);
}

GRACE_FAST_CLONES void exp_accumulate(float f, const float* c, const float* colmax, float inv_eps, float* colsum,
                                      int64_t n) {
  const v8f fv = splat(f), ie = splat(inv_eps);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store(colsum + j, load(colsum + j) + vexp((fv - load(c + j) - load(colmax + j)) * ie));
  for (; j < n; ++j) colsum[j] += scalar_exp((f - c[j] - colmax[j]) * inv_eps);
}

GRACE_FAST_CLONES float relaxed_scaling(const float* offset, const float* s, const float* v, float rho, float* out,
                                        int64_t n) {
  const float tiny = std::numeric_limits<float>::min();  // padded columns have s_j = 0 and offset_j = -inf
  const v8f r = splat(rho);
  v8f acc{};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const v8f sj = load(s + j);
    const v8f o = vexp(load(offset + j) - r * vlog(sj > splat(tiny) ? sj : splat(tiny)));
    store(out + j, o);
    const v8f d = o * sj - load(v + j) * sj;
    acc += d < 0 ? -d : d;
  }
  float e = 0.f;
  for (int q = 0; q < 8; ++q) e += acc[q];
  for (; j < n; ++j) {
    out[j] = scalar_exp(offset[j] - rho * std::log(std::max(s[j], tiny)));
    e += std::abs(out[j] * s[j] - v[j] * s[j]);
  }
  return e;
}

double dot(const double* x, const double* y, int64_t n) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += x[j] * y[j];
  return s;
}

void axpy(double alpha, const double* x, double* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] += alpha * x[j];
}

double exp_affine(const double* c, const double* g, double inv_eps, double shift, double* out, int64_t n) {
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += (out[j] = std::exp((g[j] - c[j]) * inv_eps - shift));
  return s;
}

double max_diff(const double* g, const double* c, int64_t n) {
  double r = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) r = std::max(r, g[j] - c[j]);
  return r;
}

void max_update(double f, const double* c, double* colmax, int64_t n) {
  for (int64_t j = 0; j < n; ++j) colmax[j] = std::max(colmax[j], f - c[j]);
}

void exp_accumulate(double f, const double* c, const double* colmax, double inv_eps, double* colsum, int64_t n) {
  for (int64_t j = 0; j < n; ++j) colsum[j] += std::exp((f - c[j] - colmax[j]) * inv_eps);
}

double relaxed_scaling(const double* offset, const double* s, const double* v, double rho, double* out, int64_t n) {
  const double tiny = std::numeric_limits<double>::min();
  double e = 0;
  for (int64_t j = 0; j < n; ++j) {
    out[j] = std::exp(offset[j] - rho * std::log(std::max(s[j], tiny)));
    e += std::abs(out[j] * s[j] - v[j] * s[j]);
  }
  return e;
}

}  // namespace grace_fast::cpu
