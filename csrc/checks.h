// Argument checks shared by the CPU and CUDA kernels (the Python layer gives friendlier errors first).
#pragma once
#include <ATen/ATen.h>

namespace grace_fast {

inline void check_cost_inputs(const at::Tensor& U, const at::Tensor& V, const c10::optional<at::Tensor>& mask_u,
                              const c10::optional<at::Tensor>& mask_v) {
  TORCH_CHECK(U.dim() == 3 && V.dim() == 3, "cost_matrix: U and V must be [B, N, D] and [B, M, D], got ",
              U.sizes(), " and ", V.sizes());
  TORCH_CHECK(U.size(0) == V.size(0) && U.size(2) == V.size(2), "cost_matrix: U ", U.sizes(), " and V ", V.sizes(),
              " disagree in B or D");
  TORCH_CHECK(U.size(2) > 0, "cost_matrix: D must be at least 1, got U ", U.sizes());
  TORCH_CHECK(U.is_floating_point() && U.scalar_type() == V.scalar_type(),
              "cost_matrix: U and V must share a floating dtype, got ", U.scalar_type(), " and ", V.scalar_type());
  TORCH_CHECK(U.device() == V.device(), "cost_matrix: U and V must be on one device");
  if (mask_u) {
    TORCH_CHECK(mask_u->scalar_type() == at::kBool && mask_u->sizes() == U.sizes().slice(0, 2),
                "cost_matrix: mask_u must be bool [B, N]");
  }
  if (mask_v) {
    TORCH_CHECK(mask_v->scalar_type() == at::kBool && mask_v->sizes() == V.sizes().slice(0, 2),
                "cost_matrix: mask_v must be bool [B, M]");
  }
}

}  // namespace grace_fast
