// Views of (n, c) planes of 4-D CPU tensors whose last dimension has unit stride, and the device and
// dtype check of the CPU kernels.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "cpu/plane_ops.h"
#include "cpu/warp_plane.h"

namespace mmcam::cpu {

/// t must be a float32 or float64 CPU tensor.
inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "mmcam: ", name, " must be a CPU tensor here, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "mmcam: ", name,
                   " must be float32 or float64 on the CPU, got ", t.scalar_type());
}

template <class T>
PlaneView<T> plane_of(const at::Tensor& t, int64_t n, int64_t c) {
  return {t.const_data_ptr<T>() + n * t.stride(0) + c * t.stride(1), t.size(2), t.size(3), t.stride(2)};
}

/// Start of the (n, c) plane of a contiguous 4-D output tensor.
template <class T>
T* output_plane(at::Tensor& t, int64_t n, int64_t c) {
  return t.mutable_data_ptr<T>() + (n * t.size(1) + c) * t.size(2) * t.size(3);
}

inline InverseAffine inverse_of_sample(const std::vector<double>& inverses, int64_t n) {
  InverseAffine inv;
  for (int k = 0; k < 6; ++k) inv.m[k] = inverses[static_cast<size_t>(6 * n + k)];
  return inv;
}

}  // namespace mmcam::cpu
