// Schemas of the grace_fast ops implemented in C++/CUDA; kernels register per device in csrc/cpu, csrc/cuda.
#include <torch/extension.h>

TORCH_LIBRARY(grace_fast, m) {
  // U [B, N, D], V [B, M, D] (one dtype), masks bool [B, N] / [B, M] -> C [B, N, M], ru [B, N], rv [B, M]
  // in float32 (float64 for float64 inputs).
  // ru, rv are the inverse norms, 0 for padded and zero vectors; backward needs only them.
  m.def("cost_matrix_forward(Tensor U, Tensor V, Tensor? mask_u, Tensor? mask_v) -> (Tensor, Tensor, Tensor)");
  // grad_C [B, N, M] -> dU [B, N, D], dV [B, M, D] in the dtypes of U and V.
  m.def("cost_matrix_backward(Tensor grad_C, Tensor U, Tensor V, Tensor ru, Tensor rv) -> (Tensor, Tensor)");
  // C [B, N, M] float32/64, a [B, N], b [B, M] (zeros = padding) -> plan, f, g (shifted to <a, f> = <b, g>),
  // n_iter int64 [B], err [B]: the semantics of grace_fast.ops.reference.sinkhorn_reference.
  m.def("sinkhorn_forward(Tensor C, Tensor a, Tensor b, float eps, int max_iter, float tol, float tau_a, float tau_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // X [B, T, H, W, D] -> X_out (X's dtype), w [B, T, H, W] float32 (float64 for float64 X): the semantics of
  // grace_fast.ops.reference.motion_weights_reference.
  m.def("motion_weights_forward(Tensor X, float alpha, int window, float temperature, float beta, float eps) -> (Tensor, Tensor)");
  // grad_out [B, T, H, W, D], grad_w [B, T, H, W] (None = zero) -> dX in X's dtype; w from the forward.
  m.def("motion_weights_backward(Tensor? grad_out, Tensor? grad_w, Tensor X, Tensor w, float alpha, int window, float temperature, float beta, float eps) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "grace_fast C++/CUDA kernels, registered as torch.ops.grace_fast.*";
}
