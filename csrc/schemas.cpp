// Schemas of the `mmcam` operator namespace, all in one place. Each back end registers its kernels at
// the end of its own file, one file per op (forward and backward) and device: csrc/cpu/<op>_cpu.cpp
// (functions <op>_cpu, <op>_backward_cpu) and csrc/cuda/<op>_cuda.cpp (<op>_cuda, <op>_backward_cuda).
// Autograd formulas (register_autograd) and shape functions (register_fake) live in mmcam/ops.py.
// Semantics: docs/operator.md and the docstrings of mmcam/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(mmcam, m) {
  m.def("warp_normalized(Tensor src, Tensor matrix, int[2] dsize, float eps) -> Tensor");
  m.def("warp_normalized_backward(Tensor grad, Tensor src, Tensor matrix, float eps) -> Tensor");
  m.def(
      "equivariance_loss(Tensor src, Tensor matrix, Tensor dst, Tensor? weight, str distance, "
      "bool l2_normalize, float eps, float l2_eps, str reduction) -> Tensor");
  m.def(
      "equivariance_loss_backward(Tensor grad, Tensor src, Tensor matrix, Tensor dst, Tensor? weight, "
      "str distance, bool l2_normalize, float eps, float l2_eps, str reduction, bool need_src, "
      "bool need_dst) -> (Tensor, Tensor)");
  m.def(
      "equivariance_terms(Tensor cams, Tensor cams_t, Tensor matrix, Tensor labels, Tensor pred_mask, "
      "Tensor pred_t_mask, str er_distance, float eps, float l2_eps, bool keep_for_backward) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "equivariance_terms_backward(Tensor grad, Tensor cams, Tensor cams_t, Tensor matrix, Tensor labels, "
      "Tensor pred_mask, Tensor pred_t_mask, Tensor kept_warped, Tensor kept_stats, str er_distance, float eps, "
      "float l2_eps, bool need_cams, bool need_cams_t) -> (Tensor, Tensor)");
}
