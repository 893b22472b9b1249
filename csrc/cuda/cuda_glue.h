// Torch-side helpers of the CUDA back end: argument checks, tensor -> kernel views, device workspaces,
// the current stream, and the steps shared by the warp_normalized and equivariance_loss ops. The kernels
// themselves (csrc/cuda/*.cu) see none of this.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"

namespace mmcam::cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "mmcam: unsupported dtype ", t.scalar_type(), " on CUDA");
  }
}

/// Kernel view of a 4-D tensor whose last dimension has unit stride.
inline Planes planes_of(const at::Tensor& t) {
  return {t.const_data_ptr(), dtype_of(t), t.size(0),   t.size(1),  t.size(2),
          t.size(3),          t.stride(0), t.stride(1), t.stride(2)};
}

/// t must be a CUDA tensor (checked before a device guard is set up from it).
inline void check_is_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "mmcam: ", name, " must be a CUDA tensor here, got ", t.device());
}

/// t must be a CUDA tensor on `device`.
inline void check_on(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, "mmcam: ", name, " is on ", t.device(), " but the CAMs are on ", device);
}

/// The kernels put planes on the grid's y axis (at most 65535) and handle up to kMaxModalities maps.
inline void check_plane_count(int64_t planes, const char* name) {
  TORCH_CHECK_VALUE(planes <= 65535, "mmcam: ", name, " has ", planes,
                    " planes (N*C); the CUDA kernels handle at most 65535 per call, split the batch");
}

/// Gradient maps are float for float32/float16/bfloat16 inputs and double for float64 (kernels.h).
inline at::ScalarType grad_map_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

/// A device tensor of doubles (contiguous) holding t's values.
inline at::Tensor device_doubles(const at::Tensor& t, const at::Device& device) {
  return t.to(device, at::kDouble).contiguous();
}

/// A device tensor of floats (contiguous) holding t's values (0/1 masks: exact; no copy for float32).
inline at::Tensor device_floats(const at::Tensor& t, const at::Device& device) {
  return t.to(device, at::kFloat).contiguous();
}

/// Device workspace of `count` doubles (uninitialised; the kernels write every entry they read).
inline at::Tensor double_workspace(int64_t count, const at::Device& device) {
  return at::empty({count}, at::TensorOptions().dtype(at::kDouble).device(device));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

/// The deterministic backward (gather instead of atomics) follows torch.use_deterministic_algorithms.
inline bool deterministic_mode() { return at::globalContext().deterministicAlgorithms(); }

/// Destination->source maps of matrix (N, 2, 3) on the device, (N, 6) double, NaN for a sample whose
/// matrix is non-finite or singular; also returns the matrix itself as (N, 6) double. One kernel, which
/// also does the conversion from float32 / float64.
struct DeviceMaps {
  at::Tensor matrix, inv;
};

inline DeviceMaps device_maps(const at::Tensor& matrix, int64_t n, int64_t src_rows, int64_t src_cols) {
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(0) == n && matrix.size(1) == 2 && matrix.size(2) == 3,
                    "mmcam: matrix must have shape (", n, ", 2, 3), got ", matrix.sizes());
  TORCH_CHECK_TYPE(matrix.is_floating_point(), "mmcam: matrix must be floating point, got ", matrix.scalar_type());
  const at::Tensor m = (matrix.scalar_type() == at::kFloat ? matrix : matrix.to(at::kDouble)).contiguous();
  DeviceMaps maps;
  maps.matrix = at::empty({matrix.size(0), 6}, matrix.options().dtype(at::kDouble));
  maps.inv = at::empty_like(maps.matrix);
  C10_CUDA_CHECK(invert_affines(m.const_data_ptr(), m.scalar_type() == at::kFloat ? DType::Float32 : DType::Float64,
                                matrix.size(0), src_rows, src_cols, maps.matrix.mutable_data_ptr<double>(),
                                maps.inv.mutable_data_ptr<double>(), current_stream()));
  return maps;
}

// --- steps shared by warp_normalized and equivariance_loss (cuda_glue.cpp) ---------------------------------

/// A CAM tensor (op_args' check_cam_tensor) on a CUDA device, with at most 65535 planes.
void check_cam(const at::Tensor& t, const char* name);

/// Min-max statistics (lo, hi, den) of every plane of x, (planes x kPlaneStatSlots) doubles on the device.
at::Tensor minmax_of(const at::Tensor& x, double eps);

/// Where the kernels find the statistics computed by minmax_of.
StatsSource stats_of(const at::Tensor& stats);

/// P = warp(mn(src)), (N, C, rows, cols) contiguous in src's dtype, from src's statistics (minmax_of).
at::Tensor warp_with(const at::Tensor& src, const at::Tensor& stats, const DeviceMaps& maps, int64_t rows, int64_t cols,
                     double eps);

/// dL/dx of mn(x) from g = dL/dmn(x) (same shape as x) and x's statistics (minmax_of); samples whose
/// sample_mask entry is 0 get exact zeros, any other sample with a non-invertible matrix NaN (maps.inv).
at::Tensor minmax_backward(const at::Tensor& x, const at::Tensor& stats, const at::Tensor& g,
                           const c10::optional<at::Tensor>& sample_mask, const DeviceMaps& maps, double eps);

/// dL/dsrc of warp(mn(src)) from g = dL/dP (N, C, Hd, Wd) and src's statistics (minmax_of).
at::Tensor warp_backward_with(const at::Tensor& src, const at::Tensor& stats, const DeviceMaps& maps,
                              const at::Tensor& g, const c10::optional<at::Tensor>& sample_mask, double eps);

}  // namespace mmcam::cuda
