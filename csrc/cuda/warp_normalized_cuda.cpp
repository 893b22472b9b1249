// CUDA implementation of mmcam::warp_normalized and its backward: fused kernels (min/max partials, then
// one pass that normalises and warps; the min-max / warp-adjoint backward), launched through the steps
// of cuda_glue.h.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"
#include "op_args.h"

namespace mmcam::cuda {
namespace {

at::Tensor warp_normalized_cuda(const at::Tensor& src_in, const at::Tensor& matrix, at::IntArrayRef dsize, double eps) {
  check_cam(src_in, "src");
  TORCH_CHECK_VALUE(dsize.size() == 2 && dsize[0] > 0 && dsize[1] > 0,
                    "mmcam: dsize must be two positive ints (H_out, W_out), got ", dsize);
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(0) == src_in.size(0),
                    "mmcam: matrix must have shape (N, 2, 3) with N = ", src_in.size(0), ", got ", matrix.sizes());
  check_on(matrix, "matrix", src_in.device());
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = with_unit_col_stride(src_in);
  const DeviceMaps maps = device_maps(matrix, src.size(0), src.size(2), src.size(3));
  return warp_with(src, minmax_of(src, eps), maps, dsize[0], dsize[1], eps);
}

at::Tensor warp_normalized_backward_cuda(const at::Tensor& grad, const at::Tensor& src_in, const at::Tensor& matrix,
                                         double eps) {
  check_cam(src_in, "src");
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == src_in.size(0) && grad.size(1) == src_in.size(1),
                    "mmcam: grad must have shape (N, C, H_out, W_out) matching src, got ", grad.sizes());
  check_on(grad, "grad", src_in.device());
  check_on(matrix, "matrix", src_in.device());
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = with_unit_col_stride(src_in);
  const DeviceMaps maps = device_maps(matrix, src.size(0), src.size(2), src.size(3));
  return warp_backward_with(src, minmax_of(src, eps), maps, grad, c10::nullopt, eps);
}

}  // namespace
}  // namespace mmcam::cuda

TORCH_LIBRARY_IMPL(mmcam, CUDA, m) {
  m.impl("warp_normalized", &mmcam::cuda::warp_normalized_cuda);
  m.impl("warp_normalized_backward", &mmcam::cuda::warp_normalized_backward_cuda);
}
