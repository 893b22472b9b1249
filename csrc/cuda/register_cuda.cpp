// CUDA implementations of the `mmcam` operators (schemas in csrc/register.cpp).
#include <torch/library.h>

#include "cuda/cuda_ops.h"

TORCH_LIBRARY_IMPL(mmcam, CUDA, m) {
  m.impl("warp_normalized", &mmcam::cuda::warp_normalized);
  m.impl("warp_normalized_backward", &mmcam::cuda::warp_normalized_backward);
  m.impl("equivariance_loss", &mmcam::cuda::equivariance_loss);
  m.impl("equivariance_loss_backward", &mmcam::cuda::equivariance_loss_backward);
  m.impl("equivariance_terms", &mmcam::cuda::equivariance_terms);
  m.impl("equivariance_terms_backward", &mmcam::cuda::equivariance_terms_backward);
}
