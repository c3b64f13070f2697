// Cosine cost matrix C = 1 - cos(U_i, V_j) on the GPU: a warp-per-row inverse-norm kernel (scaled before squaring),
// then one tiled shared-memory GEMM kernel that serves the forward (rows normalised as they are staged, masks in its
// epilogue) and both backward products. fp16/bf16 are converted while staging tiles; accumulation is fp32 (fp64 for
// fp64).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "checks.h"

namespace grace_fast::gpu {
namespace {

constexpr int kTile = 64;                 // rows and columns of the output tile of one block
constexpr int kBK = 32;                   // reduction slice staged in shared memory per step
constexpr int kSub = 4;                   // each thread owns kSub x kSub outputs, strided by kTile / kSub
constexpr int kThreads = (kTile / kSub) * (kTile / kSub);
constexpr int kRowThreads = 256;          // row kernels: one warp per row
constexpr int kRowsPerBlock = kRowThreads / 32;
constexpr int64_t kMaxGridZ = 65535;

template <typename Acc>
__device__ Acc warp_sum(Acc x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename Acc>
__device__ Acc warp_max(Acc x) {
  for (int offset = 16; offset > 0; offset /= 2) x = max(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// r[row] = 1 / ||x[row]|| over the rows of x [rows, D]; 0 for a zero or padded row. The squares are of x 2^-e, with
// 2^e near max |x[row]|, so that they neither overflow nor underflow (exact for normal magnitudes: a power of two).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kRowThreads)
    inverse_norm_kernel(const T* __restrict__ x, const bool* __restrict__ mask, Acc* __restrict__ r, int64_t rows,
                        int64_t D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together, so the shuffles below stay full
  const int lane = threadIdx.x % 32;
  const T* xr = x + row * D;
  Acc top = 0;
  for (int64_t d = lane; d < D; d += 32) top = max(top, abs(static_cast<Acc>(xr[d])));
  top = warp_max(top);
  const Acc scale = top > 0 ? scalbn(Acc(1), -max(ilogb(top), std::numeric_limits<Acc>::min_exponent - 1)) : Acc(1);
  Acc s = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const Acc v = static_cast<Acc>(xr[d]) * scale;
    s += v * v;
  }
  s = warp_sum(s);
  if (lane == 0) r[row] = (mask && !mask[row]) || s == 0 ? Acc(0) : scale / sqrt(s);
}

// Element (r, k) of batch b lives at p[b * batch + r * s_r + k * s_k].
template <typename T>
struct Operand {
  const T* p;
  int64_t batch, s_r, s_k;
};

// Stages rows [r0, r0 + kTile) x k in [k0, k0 + kBK) of an operand as tile[k][r], zero outside [rows) x [K),
// times scale[b * K + k] and row_scale[b * rows + r] when given. KContig says which axis has unit stride:
// consecutive threads walk it, so the global reads coalesce (and the +1 padding keeps both walk orders free of bank
// conflicts).
template <bool KContig, typename T, typename Acc>
__device__ void load_tile(Acc (&tile)[kBK][kTile + 1], Operand<T> op, const Acc* scale, const Acc* row_scale,
                          int64_t b, int64_t r0, int64_t rows, int64_t k0, int64_t K) {
  for (int idx = threadIdx.x; idx < kTile * kBK; idx += kThreads) {
    const int k = KContig ? idx % kBK : idx / kTile;
    const int r = KContig ? idx / kBK : idx % kTile;
    const int64_t gr = r0 + r, gk = k0 + k;
    Acc v = 0;
    if (gr < rows && gk < K) {
      v = static_cast<Acc>(op.p[b * op.batch + gr * op.s_r + gk * op.s_k]);
      if (scale) v *= scale[b * K + gk];
      if (row_scale) v *= row_scale[b * rows + gr];
    }
    tile[k][r] = v;
  }
}

// For each batch b: out(b, i, j) = epilogue(sum_k A(b, i, k) sa[b, i] * scale[b, k] * Bt(b, j, k) sb[b, j]) over
// i < rows, j < cols (a null scale is 1). blockIdx.x numbers the output tiles, blockIdx.z strides over the batches.
template <bool AKContig, bool BKContig, typename TA, typename TB, typename Acc, typename Epilogue>
__global__ void __launch_bounds__(kThreads)
    tiled_gemm_kernel(Operand<TA> a, const Acc* __restrict__ sa, Operand<TB> bt, const Acc* __restrict__ sb,
                      const Acc* __restrict__ scale, int64_t batches, int64_t rows, int64_t cols, int64_t K,
                      Epilogue epilogue) {
  constexpr int kStride = kTile / kSub;
  __shared__ Acc As[kBK][kTile + 1];  // [BK, BM]
  __shared__ Acc Bs[kBK][kTile + 1];  // [BK, BN]
  const int tx = threadIdx.x % kStride, ty = threadIdx.x / kStride;
  const int64_t col_tiles = (cols + kTile - 1) / kTile;
  const int64_t r0 = blockIdx.x / col_tiles * kTile, c0 = blockIdx.x % col_tiles * kTile;

  for (int64_t b = blockIdx.z; b < batches; b += gridDim.z) {
    Acc acc[kSub][kSub] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kBK) {
      load_tile<AKContig>(As, a, static_cast<const Acc*>(nullptr), sa, b, r0, rows, k0, K);
      load_tile<BKContig>(Bs, bt, scale, sb, b, c0, cols, k0, K);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kBK; ++k) {
        Acc x[kSub], y[kSub];
#pragma unroll
        for (int s = 0; s < kSub; ++s) {
          x[s] = As[k][ty + s * kStride];
          y[s] = Bs[k][tx + s * kStride];
        }
#pragma unroll
        for (int m = 0; m < kSub; ++m) {
#pragma unroll
          for (int n = 0; n < kSub; ++n) acc[m][n] += x[m] * y[n];
        }
      }
      __syncthreads();  // the next step overwrites the tiles
    }
#pragma unroll
    for (int m = 0; m < kSub; ++m) {
      const int64_t i = r0 + ty + m * kStride;
#pragma unroll
      for (int n = 0; n < kSub; ++n) {
        const int64_t j = c0 + tx + n * kStride;
        if (i < rows && j < cols) epilogue(b, i, j, acc[m][n]);
      }
    }
  }
}

// C[b, i, j] = 1 - cos on valid pairs, exactly 0 on padded ones (the GEMM's operands are unit rows: cos = dot).
template <typename Acc>
struct CosineEpilogue {
  Acc* C;
  const bool *mask_u, *mask_v;  // null: all valid
  int64_t N, M;

  __device__ void operator()(int64_t b, int64_t i, int64_t j, Acc cos) const {
    const int64_t iu = b * N + i, jv = b * M + j;
    const bool valid = (!mask_u || mask_u[iu]) && (!mask_v || mask_v[jv]);
    C[iu * M + j] = valid ? Acc(1) - cos : Acc(0);
  }
};

// out[b, i, j] = dot, out [batches, rows, cols].
template <typename Acc>
struct StoreEpilogue {
  Acc* out;
  int64_t rows, cols;

  __device__ void operator()(int64_t b, int64_t i, int64_t j, Acc dot) const { out[(b * rows + i) * cols + j] = dot; }
};

// dx[row] = r (<acc[row], u> u - acc[row]) with the unit vector u = r x[row]: the gradient through x -> x / ||x||
// given acc = -dL/d(x / ||x||) and r = 1 / ||x|| (r = 0 gives a zero gradient), written with u so that no power of r
// (around 1e22 for entries around 1e-22) overflows.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kRowThreads)
    normalize_backward_kernel(const Acc* __restrict__ acc, const T* __restrict__ x, const Acc* __restrict__ r,
                              T* __restrict__ dx, int64_t rows, int64_t D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const Acc* ar = acc + row * D;
  const T* xr = x + row * D;
  const Acc ri = r[row];
  Acc dot = 0, sq = 0;  // <acc, u> and ||u||^2, which divides out the rounding of r from the projection
  for (int64_t d = lane; d < D; d += 32) {
    const Acc u = static_cast<Acc>(xr[d]) * ri;
    dot += ar[d] * u;
    sq += u * u;
  }
  dot = warp_sum(dot);
  sq = warp_sum(sq);
  const Acc along = sq > 0 ? dot / sq : Acc(0);
  for (int64_t d = lane; d < D; d += 32) {
    dx[row * D + d] = static_cast<T>(ri * (along * (static_cast<Acc>(xr[d]) * ri) - ar[d]));
  }
}

unsigned grid_size(int64_t blocks) {
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "cost_matrix: input too large (", blocks, " blocks)");
  return static_cast<unsigned>(blocks);
}

template <typename T, typename Acc>
void launch_inverse_norms(const T* x, const bool* mask, Acc* r, int64_t rows, int64_t D, cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned blocks = grid_size((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  inverse_norm_kernel<<<blocks, kRowThreads, 0, stream>>>(x, mask, r, rows, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool AKContig, bool BKContig, typename TA, typename TB, typename Acc, typename Epilogue>
void launch_gemm(const Operand<TA>& a, const Acc* sa, const Operand<TB>& bt, const Acc* sb, const Acc* scale,
                 int64_t batches, int64_t rows, int64_t cols, int64_t K, const Epilogue& epilogue,
                 cudaStream_t stream) {
  if (batches == 0 || rows == 0 || cols == 0) return;
  const int64_t tiles = ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
  const dim3 grid(grid_size(tiles), 1, static_cast<unsigned>(std::min(batches, kMaxGridZ)));
  tiled_gemm_kernel<AKContig, BKContig>
      <<<grid, kThreads, 0, stream>>>(a, sa, bt, sb, scale, batches, rows, cols, K, epilogue);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename Acc>
void launch_normalize_backward(const Acc* acc, const T* x, const Acc* r, T* dx, int64_t rows, int64_t D,
                               cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned blocks = grid_size((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  normalize_backward_kernel<<<blocks, kRowThreads, 0, stream>>>(acc, x, r, dx, rows, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_on_device(const at::Tensor& t, const at::Tensor& U, const char* name) {
  TORCH_CHECK(t.device() == U.device(), "cost_matrix: ", name, " is on ", t.device(), " but U is on ", U.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cost_matrix_forward(const at::Tensor& U_, const at::Tensor& V_,
                                                                   const c10::optional<at::Tensor>& mask_u_,
                                                                   const c10::optional<at::Tensor>& mask_v_) {
  check_cost_inputs(U_, V_, mask_u_, mask_v_);
  if (mask_u_) check_on_device(*mask_u_, U_, "mask_u");
  if (mask_v_) check_on_device(*mask_v_, U_, "mask_v");
  const c10::cuda::CUDAGuard guard(U_.device());
  const at::Tensor U = U_.contiguous(), V = V_.contiguous();
  const at::Tensor mask_u = mask_u_ ? mask_u_->contiguous() : at::Tensor();
  const at::Tensor mask_v = mask_v_ ? mask_v_->contiguous() : at::Tensor();
  const int64_t B = U.size(0), N = U.size(1), M = V.size(1), D = U.size(2);
  const auto acc = U.options().dtype(U.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor C = at::empty({B, N, M}, acc), ru = at::empty({B, N}, acc), rv = at::empty({B, M}, acc);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "cost_matrix_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool* mu = mask_u.defined() ? mask_u.data_ptr<bool>() : nullptr;
    const bool* mv = mask_v.defined() ? mask_v.data_ptr<bool>() : nullptr;
    launch_inverse_norms(U.data_ptr<scalar_t>(), mu, ru.data_ptr<acc_t>(), B * N, D, stream);
    launch_inverse_norms(V.data_ptr<scalar_t>(), mv, rv.data_ptr<acc_t>(), B * M, D, stream);
    // cos = diag(ru) U V^T diag(rv), the rows scaled as they are staged (no product of raw entries can overflow):
    // both operands have the reduction axis D contiguous.
    const Operand<scalar_t> a{U.data_ptr<scalar_t>(), N * D, D, 1}, bt{V.data_ptr<scalar_t>(), M * D, D, 1};
    const CosineEpilogue<acc_t> epilogue{C.data_ptr<acc_t>(), mu, mv, N, M};
    launch_gemm<true, true>(a, ru.data_ptr<acc_t>(), bt, rv.data_ptr<acc_t>(), static_cast<const acc_t*>(nullptr), B,
                            N, M, D, epilogue, stream);
  });
  return {C, ru, rv};
}

std::tuple<at::Tensor, at::Tensor> cost_matrix_backward(const at::Tensor& grad_C, const at::Tensor& U_,
                                                        const at::Tensor& V_, const at::Tensor& ru_,
                                                        const at::Tensor& rv_) {
  check_cost_inputs(U_, V_, c10::nullopt, c10::nullopt);
  const int64_t B = U_.size(0), N = U_.size(1), M = V_.size(1), D = U_.size(2);
  TORCH_CHECK(grad_C.sizes() == at::IntArrayRef({B, N, M}), "cost_matrix_backward: grad_C must be [B, N, M] = [",
              B, ", ", N, ", ", M, "], got ", grad_C.sizes());
  TORCH_CHECK(ru_.sizes() == at::IntArrayRef({B, N}) && rv_.sizes() == at::IntArrayRef({B, M}),
              "cost_matrix_backward: ru and rv must be [B, N] and [B, M], got ", ru_.sizes(), " and ", rv_.sizes());
  check_on_device(grad_C, U_, "grad_C");
  check_on_device(ru_, U_, "ru");
  check_on_device(rv_, U_, "rv");
  const c10::cuda::CUDAGuard guard(U_.device());
  const at::Tensor U = U_.contiguous(), V = V_.contiguous();
  at::Tensor dU = at::empty_like(U), dV = at::empty_like(V);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, U.scalar_type(), "cost_matrix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor G = grad_C.to(acc).contiguous();
    const at::Tensor ru = ru_.to(acc).contiguous(), rv = rv_.to(acc).contiguous();
    at::Tensor gu = at::empty({B, N, D}, U.options().dtype(acc)), gv = at::empty({B, M, D}, U.options().dtype(acc));
    const acc_t* g = G.data_ptr<acc_t>();
    const scalar_t *u = U.data_ptr<scalar_t>(), *v = V.data_ptr<scalar_t>();
    // gu = G diag(rv) V: G [N, M] has M contiguous, V^T [D, M] does not.
    const acc_t* none = nullptr;
    launch_gemm<true, false>(Operand<acc_t>{g, N * M, M, 1}, none, Operand<scalar_t>{v, M * D, 1, D}, none,
                             rv.data_ptr<acc_t>(), B, N, D, M, StoreEpilogue<acc_t>{gu.data_ptr<acc_t>(), N, D},
                             stream);
    // gv = G^T diag(ru) U: neither G^T [M, N] nor U^T [D, N] has N contiguous.
    launch_gemm<false, false>(Operand<acc_t>{g, N * M, 1, M}, none, Operand<scalar_t>{u, N * D, 1, D}, none,
                              ru.data_ptr<acc_t>(), B, M, D, N, StoreEpilogue<acc_t>{gv.data_ptr<acc_t>(), M, D},
                              stream);
    launch_normalize_backward(gu.data_ptr<acc_t>(), u, ru.data_ptr<acc_t>(), dU.data_ptr<scalar_t>(), B * N, D,
                              stream);
    launch_normalize_backward(gv.data_ptr<acc_t>(), v, rv.data_ptr<acc_t>(), dV.data_ptr<scalar_t>(), B * M, D,
                              stream);
  });
  return {dU, dV};
}

}  // namespace

TORCH_LIBRARY_IMPL(grace_fast, CUDA, m) {
  m.impl("cost_matrix_forward", &cost_matrix_forward);
  m.impl("cost_matrix_backward", &cost_matrix_backward);
}

}  // namespace grace_fast::gpu
