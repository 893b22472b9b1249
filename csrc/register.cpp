// Schemas of the `mmcam` operator namespace and their CPU implementations. Autograd formulas
// (register_autograd) and shape functions (register_fake) live in mmcam/ops.py.
#include <torch/library.h>

#include "ops.h"

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

TORCH_LIBRARY_IMPL(mmcam, CPU, m) {
  m.impl("warp_normalized", &mmcam::cpu::warp_normalized);
  m.impl("warp_normalized_backward", &mmcam::cpu::warp_normalized_backward);
  m.impl("equivariance_loss", &mmcam::cpu::equivariance_loss);
  m.impl("equivariance_loss_backward", &mmcam::cpu::equivariance_loss_backward);
  m.impl("equivariance_terms", &mmcam::cpu::equivariance_terms);
  m.impl("equivariance_terms_backward", &mmcam::cpu::equivariance_terms_backward);
}
