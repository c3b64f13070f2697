// Row primitives for the CPU kernels. The float versions are vectorised (own exp polynomial) and compiled for
// AVX2+FMA and for the baseline ISA; the double versions are plain loops (float64 is the gradcheck path).
#pragma once

#include <cstdint>

namespace grace_fast::cpu {

// sum_j x_j y_j
float dot(const float* x, const float* y, int64_t n);
// y_j += alpha x_j
void axpy(float alpha, const float* x, float* y, int64_t n);
// out_j = exp((g_j - c_j) * inv_eps - shift), returns sum_j out_j; entries with g_j = -inf give 0.
float exp_affine(const float* c, const float* g, float inv_eps, float shift, float* out, int64_t n);
// max_j (g_j - c_j)
float max_diff(const float* g, const float* c, int64_t n);
// colmax_j = max(colmax_j, f - c_j)
void max_update(float f, const float* c, float* colmax, int64_t n);
// colsum_j += exp((f - c_j - colmax_j) * inv_eps)
void exp_accumulate(float f, const float* c, const float* colmax, float inv_eps, float* colsum, int64_t n);
// out_j = exp(offset_j - rho log s_j) (0 where offset_j = -inf; s_j = 0 allowed there), returns
// sum_j |out_j s_j - v_j s_j|
float relaxed_scaling(const float* offset, const float* s, const float* v, float rho, float* out, int64_t n);

double dot(const double* x, const double* y, int64_t n);
void axpy(double alpha, const double* x, double* y, int64_t n);
double exp_affine(const double* c, const double* g, double inv_eps, double shift, double* out, int64_t n);
double max_diff(const double* g, const double* c, int64_t n);
void max_update(double f, const double* c, double* colmax, int64_t n);
void exp_accumulate(double f, const double* c, const double* colmax, double inv_eps, double* colsum, int64_t n);
double relaxed_scaling(const double* offset, const double* s, const double* v, double rho, double* out, int64_t n);

}  // namespace grace_fast::cpu
