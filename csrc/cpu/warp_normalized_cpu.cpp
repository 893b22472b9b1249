// CPU kernels of mmcam::warp_normalized and its backward: P = warp(mn(src)) of every plane, and dL/dsrc.
// Parallel over the N*C planes; each plane's gradient is computed privately (no atomics), so results are
// bitwise independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cam_planes.h"
#include "cpu/isa.h"
#include "cpu/tensor_planes.h"
#include "op_args.h"

namespace mmcam::cpu {
namespace {

at::Tensor warp_normalized_cpu(const at::Tensor& src_in, const at::Tensor& matrix, at::IntArrayRef dsize, double eps) {
  check_cam_tensor(src_in, "src");
  check_cpu(src_in, "src");
  TORCH_CHECK_VALUE(dsize.size() == 2 && dsize[0] > 0 && dsize[1] > 0,
                    "mmcam: dsize must be two positive ints (H_out, W_out), got ", dsize);
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(0) == src_in.size(0),
                    "mmcam: matrix must have shape (N, 2, 3) with N = ", src_in.size(0), ", got ", matrix.sizes());
  const at::Tensor src = with_unit_col_stride(src_in);
  const std::vector<double> inverses = inverse_affines(matrix);
  const int64_t N = src.size(0), C = src.size(1), Hd = dsize[0], Wd = dsize[1];
  at::Tensor out = at::empty({N, C, Hd, Wd}, src.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mmcam_warp_normalized_cpu", [&] {
    const auto e = static_cast<scalar_t>(eps);
    parallel_over(N * C, [&](int64_t begin, int64_t end) {
      WarpedSource<scalar_t> side;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        side.compute(plane_of<scalar_t>(src, n, c), inverse_of_sample(inverses, n), Hd, Wd, e, false, scalar_t(0),
                     output_plane<scalar_t>(out, n, c));
      }
    });
  });
  return out;
}

at::Tensor warp_normalized_backward_cpu(const at::Tensor& grad_in, const at::Tensor& src_in, const at::Tensor& matrix,
                                        double eps) {
  check_cam_tensor(src_in, "src");
  check_cpu(src_in, "src");
  TORCH_CHECK_VALUE(grad_in.dim() == 4 && grad_in.size(0) == src_in.size(0) && grad_in.size(1) == src_in.size(1),
                    "mmcam: grad must have shape (N, C, H_out, W_out) matching src, got ", grad_in.sizes());
  const at::Tensor src = with_unit_col_stride(src_in);
  const at::Tensor grad = grad_in.to(src.scalar_type()).contiguous();
  const std::vector<double> inverses = inverse_affines(matrix);
  const int64_t N = src.size(0), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
  const int64_t Hd = grad.size(2), Wd = grad.size(3);
  at::Tensor grad_src = at::empty({N, C, Hs, Ws}, src.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mmcam_warp_normalized_backward_cpu", [&] {
    const auto e = static_cast<scalar_t>(eps);
    parallel_over(N * C, [&](int64_t begin, int64_t end) {
      std::vector<double> acc;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const PlaneView<scalar_t> view = plane_of<scalar_t>(src, n, c);
        const MinMaxStats<scalar_t> stats = relu_minmax(view, e);
        acc.assign(static_cast<size_t>(Hs * Ws), 0.0);
        warp_plane_adjoint(rows_of(grad.const_data_ptr<scalar_t>() + p * Hd * Wd, Wd), Hd, Wd,
                           inverse_of_sample(inverses, n), Hs, Ws, acc.data());
        minmax_normalize_backward(view, stats, e, rows_of(static_cast<const double*>(acc.data()), Ws),
                                  output_plane<scalar_t>(grad_src, n, c), Ws);
      }
    });
  });
  return grad_src;
}

}  // namespace
}  // namespace mmcam::cpu

TORCH_LIBRARY_IMPL(mmcam, CPU, m) {
  m.impl("warp_normalized", &mmcam::cpu::warp_normalized_cpu);
  m.impl("warp_normalized_backward", &mmcam::cpu::warp_normalized_backward_cpu);
}
