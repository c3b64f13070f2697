// A blocked GEMM for the CPU kernels: C[mc, nc] (+)= A[mc, k] B[k, nc] over packed panels in the
// accumulation type Acc (float, or double for float64 inputs). Operands of any dtype and any strides are
// converted while they are packed, so callers read fp16/bf16 tensors directly and transposes cost nothing.
// The inner kernel is compiled for AVX2+FMA and for the baseline ISA (GCC target_clones), for float also for AVX-512,
// and picked at load time. bf16 operands can instead be packed as bf16 pairs for an AVX512-BF16 kernel (the bf16 dot
// path below), where the CPU has it.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>

namespace grace_fast::cpu {

constexpr int MR = 6;    // rows of the register tile
constexpr int NR = 16;   // columns of the register tile (two 8-float vectors)
constexpr int KC = 256;  // depth of one packed block (A panel 6 KiB, B panel 16 KiB: L1)

// Element (r, c) of a strided matrix at data[r * rs + c * cs].
template <typename T>
struct Mat {
  const T* data;
  int64_t rs, cs;
};

// Writes out[k][r] = X(r, k) rscale[r] (rscale may be null) for the 16 rows r of X (row r at x + r * rs, unit stride
// along k) and the first 16 floor(kc / 16) depths k by 16 x 16 transposes in AVX-512 registers, and returns how many
// depths it wrote: 0 where ATen does not run at AVX-512.
int transpose_rows16(const float* x, int64_t rs, int kc, const float* rscale, float* out);

// Packs a [rows, kc] slice of X (element (r, k) at x[r * rs + k * ks]) into one panel of width W:
// out[k][r] = X(r, k) * rscale[r] * kscale[k] (either scale may be null), zero for r >= rows. Reads along the unit
// stride.
template <int W, typename T, typename Acc>
inline void pack_panel(const T* x, int64_t rs, int64_t ks, int rows, int kc, const Acc* rscale, const Acc* kscale,
                       Acc* out) {
  if (ks == 1) {
    int done = 0;  // depths already packed
    if constexpr (W == 16 && std::is_same_v<T, float> && std::is_same_v<Acc, float>) {
      if (rows == W && !kscale) done = transpose_rows16(x, rs, kc, rscale, out);
    }
    std::fill(out + static_cast<int64_t>(done) * W, out + static_cast<int64_t>(kc) * W, Acc(0));
    for (int r = 0; r < rows; ++r) {
      const T* row = x + r * rs;
      const Acc s = rscale ? rscale[r] : Acc(1);
      for (int k = done; k < kc; ++k) out[k * W + r] = static_cast<Acc>(row[k]) * s * (kscale ? kscale[k] : Acc(1));
    }
    return;
  }
  for (int k = 0; k < kc; ++k, out += W) {
    const T* col = x + k * ks;
    const Acc s = kscale ? kscale[k] : Acc(1);
    int r = 0;
    for (; r < rows; ++r) out[r] = static_cast<Acc>(col[r * rs]) * s * (rscale ? rscale[r] : Acc(1));
    for (; r < W; ++r) out[r] = Acc(0);
  }
}

// Packs rows [i0, i0 + mc) x depth [k0, k0 + kc) of A into MR-row panels: out[p][k][r], each row scaled by
// rscale[i0 + r] when rscale is given.
template <typename T, typename Acc>
void pack_a(Mat<T> A, int64_t i0, int mc, int64_t k0, int kc, const Acc* rscale, Acc* out) {
  for (int p = 0; p < mc; p += MR, out += static_cast<int64_t>(kc) * MR) {
    pack_panel<MR>(A.data + (i0 + p) * A.rs + k0 * A.cs, A.rs, A.cs, std::min(MR, mc - p), kc,
                   rscale ? rscale + i0 + p : nullptr, static_cast<const Acc*>(nullptr), out);
  }
}

// Packs depth [k0, k0 + kc) x columns [j0, j0 + nc) of B into NR-column panels: out[p][k][c], each depth
// row scaled by kscale[k0 + k] and each column by cscale[j0 + c] when they are given. A B with unit column stride (a
// row-major matrix, as in the cost backward) is read row by row, each row once; else panel by panel down the depth.
template <typename T, typename Acc>
void pack_b(Mat<T> B, int64_t k0, int kc, int64_t j0, int nc, const Acc* kscale, const Acc* cscale, Acc* out) {
  if (B.cs == 1) {
    for (int k = 0; k < kc; ++k) {
      const T* row = B.data + (k0 + k) * B.rs + j0;
      const Acc s = kscale ? kscale[k0 + k] : Acc(1);
      for (int p = 0; p < nc; p += NR) {
        Acc* o = out + static_cast<int64_t>(p) * kc + static_cast<int64_t>(k) * NR;
        const int n = std::min(NR, nc - p);
        for (int c = 0; c < n; ++c) o[c] = static_cast<Acc>(row[p + c]) * s;
        std::fill(o + n, o + NR, Acc(0));
        if (cscale) {
          for (int c = 0; c < n; ++c) o[c] *= cscale[j0 + p + c];
        }
      }
    }
    return;
  }
  for (int p = 0; p < nc; p += NR, out += static_cast<int64_t>(kc) * NR) {
    pack_panel<NR>(B.data + k0 * B.rs + (j0 + p) * B.cs, B.cs, B.rs, std::min(NR, nc - p), kc,
                   cscale ? cscale + j0 + p : nullptr, kscale ? kscale + k0 : nullptr, out);
  }
}

// C[mc, nc] (row stride ldc) = (accumulate ? C : 0) + packed A [mc, kc] x packed B [kc, nc].
void gemm_packed(int mc, int nc, int kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate);
void gemm_packed(int mc, int nc, int kc, const double* a, const double* b, double* c, int64_t ldc, bool accumulate);

// The bf16 dot path: operands packed as bf16 pairs, one 32-bit word per (row, two consecutive depths), summed in fp32
// by AVX512-BF16 (products of bf16 values are exact in fp32). KC_BF16 keeps the panels' bytes those of fp32 at KC.
constexpr int KC_BF16 = 2 * KC;

// True where the bf16 dot kernel runs: the CPU has AVX512-BF16 and ATen runs its AVX-512 kernels
// (ATEN_CPU_CAPABILITY=avx2 turns it off, and the callers take the fp32 path).
bool bf16_dot_available();

// Packs rows [0, rows) x depth [0, kc) of X (row r at x + r * rs, unit stride along the depth) into one panel of
// width W of bf16 pairs: out[k / 2][r] holds X(r, k) rscale[r] in its low half and X(r, k + 1) rscale[r] in its high
// half, zero past rows and past kc. The rscale are powers of two, so the products are bf16 values and the bits are
// taken, not rounded (rscale 1, the common case, copies the pairs).
template <int W>
inline void pack_pairs(const at::BFloat16* x, int64_t rs, int rows, int kc, const float* rscale, uint32_t* out) {
  const int kp = (kc + 1) / 2;
  std::fill(out, out + static_cast<int64_t>(kp) * W, 0u);
  const auto bits = [](float v) { return std::bit_cast<uint32_t>(v) >> 16; };
  for (int r = 0; r < rows; ++r) {
    const at::BFloat16* row = x + r * rs;
    const float s = rscale[r];
    int k = 0;
    if (s == 1) {  // the pairs as they lie in memory
      for (; k + 1 < kc; k += 2) out[(k / 2) * W + r] = row[k].x | static_cast<uint32_t>(row[k + 1].x) << 16;
      if (k < kc) out[(k / 2) * W + r] = row[k].x;
      continue;
    }
    for (; k + 1 < kc; k += 2) {
      out[(k / 2) * W + r] = bits(static_cast<float>(row[k]) * s) | bits(static_cast<float>(row[k + 1]) * s) << 16;
    }
    if (k < kc) out[(k / 2) * W + r] = bits(static_cast<float>(row[k]) * s);
  }
}

// Packs rows [r0, r0 + count) of X [*, ld] (bf16), depth [k0, k0 + kc), into panels of width W (MR for A, NR for B),
// each row scaled by rscale[r0 + r]: out[p][k / 2][r], (kc + 1) / 2 * W words per panel.
template <int W>
void pack_bf16(const at::BFloat16* x, int64_t ld, int64_t r0, int count, int64_t k0, int kc, const float* rscale,
               uint32_t* out) {
  const int64_t panel = static_cast<int64_t>((kc + 1) / 2) * W;
  for (int p = 0; p < count; p += W, out += panel) {
    pack_pairs<W>(x + (r0 + p) * ld + k0, ld, std::min(W, count - p), kc, rscale + r0 + p, out);
  }
}

// C[mc, nc] (row stride ldc) = (accumulate ? C : 0) + packed A [mc, kc] x packed B [kc, nc], both packed by
// pack_bf16 (kp = (kc + 1) / 2 words deep). Only where bf16_dot_available().
void gemm_packed_bf16(int mc, int nc, int kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                      bool accumulate);

}  // namespace grace_fast::cpu
