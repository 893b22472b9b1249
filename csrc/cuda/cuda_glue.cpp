// Torch-side steps shared by the CUDA warp_normalized and equivariance_loss ops (declared in
// cuda_glue.h): min-max statistics, the fused normalise-and-warp, and the min-max / warp-adjoint backward.
#include "cuda/cuda_glue.h"

#include "op_args.h"

namespace mmcam::cuda {

void check_cam(const at::Tensor& t, const char* name) {
  check_cam_tensor(t, name);
  check_is_cuda(t, name);
  check_plane_count(t.size(0) * t.size(1), name);
}

/// Min-max statistics (lo, hi, den) of every plane of x, (planes x kPlaneStatSlots) doubles on the device.
at::Tensor minmax_of(const at::Tensor& x, double eps) {
  const int64_t planes = x.size(0) * x.size(1);
  const at::Tensor partials = double_workspace(planes * tiles_of(x.size(2) * x.size(3)) * kMinMaxSlots, x.device());
  at::Tensor stats = double_workspace(planes * kPlaneStatSlots, x.device());
  C10_CUDA_CHECK(plane_minmax(planes_of(x), eps, partials.mutable_data_ptr<double>(), stats.mutable_data_ptr<double>(),
                              current_stream()));
  return stats;
}

StatsSource stats_of(const at::Tensor& stats) { return {stats.const_data_ptr<double>(), kPlaneStatSlots}; }

at::Tensor warp_with(const at::Tensor& src, const at::Tensor& stats, const DeviceMaps& maps, int64_t rows, int64_t cols,
                     double eps) {
  at::Tensor out =
      at::empty({src.size(0), src.size(1), rows, cols}, src.options().memory_format(at::MemoryFormat::Contiguous));
  C10_CUDA_CHECK(warp_normalized(planes_of(src), stats_of(stats), maps.inv.const_data_ptr<double>(), rows, cols, eps,
                                 out.mutable_data_ptr(), current_stream()));
  return out;
}

/// dL/dx of mn(x) from g = dL/dmn(x) (same shape as x) and x's statistics (minmax_of); samples whose
/// sample_mask entry is 0 get exact zeros, any other sample with a non-invertible matrix NaN (maps.inv).
at::Tensor minmax_backward(const at::Tensor& x, const at::Tensor& stats, const at::Tensor& g,
                           const c10::optional<at::Tensor>& sample_mask, const DeviceMaps& maps, double eps) {
  const at::Tensor gm = g.to(grad_map_dtype(x)).contiguous();
  const int64_t planes = x.size(0) * x.size(1);
  const at::Tensor sums = double_workspace(planes * tiles_of(x.size(2) * x.size(3)) * kBackwardSumSlots, x.device());
  const at::Tensor totals = double_workspace(planes * kBackwardSumSlots, x.device());
  at::Tensor grad = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const Planes view = planes_of(x);
  C10_CUDA_CHECK(minmax_backward_sums(view, stats_of(stats), gm.const_data_ptr(), eps, sums.mutable_data_ptr<double>(),
                                      totals.mutable_data_ptr<double>(), current_stream()));
  C10_CUDA_CHECK(minmax_backward_apply(view, stats_of(stats), gm.const_data_ptr(), totals.const_data_ptr<double>(),
                                       sample_mask ? sample_mask->const_data_ptr<float>() : nullptr,
                                       maps.inv.const_data_ptr<double>(), eps, grad.mutable_data_ptr(),
                                       current_stream()));
  return grad;
}

/// dL/dsrc of warp(mn(src)) from g = dL/dP (N, C, Hd, Wd) and src's statistics (minmax_of).
at::Tensor warp_backward_with(const at::Tensor& src, const at::Tensor& stats, const DeviceMaps& maps,
                              const at::Tensor& g, const c10::optional<at::Tensor>& sample_mask, double eps) {
  const at::Tensor gm = g.to(grad_map_dtype(src)).contiguous();
  at::Tensor acc =
      at::zeros(src.sizes(), src.options().dtype(gm.scalar_type()).memory_format(at::MemoryFormat::Contiguous));
  C10_CUDA_CHECK(warp_adjoint(gm.const_data_ptr(), dtype_of(gm), src.size(0) * src.size(1), src.size(1), g.size(2),
                              g.size(3), maps.inv.const_data_ptr<double>(), maps.matrix.const_data_ptr<double>(),
                              src.size(2), src.size(3), deterministic_mode(), acc.mutable_data_ptr(),
                              current_stream()));
  return minmax_backward(src, stats, acc, sample_mask, maps, eps);
}

}  // namespace mmcam::cuda
