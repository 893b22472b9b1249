// Torch-side argument handling shared by every back end: option strings, affine inversion with value
// checks, per-sample weights and tensor layout. Metadata errors are also caught in Python
// (mmcam/_checks.py) with friendlier messages; these checks keep direct torch.ops.mmcam calls safe.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "mmcam_math.h"

namespace mmcam {

enum class Reduction : int { Mean = 0, Sum = 1, None = 2 };

math::Distance parse_distance(const std::string& distance);
Reduction parse_reduction(const std::string& reduction);

/// Destination->source pixel maps (row-major 2x3, double) of an (N, 2, 3) source->destination matrix.
/// Raises ValueError naming the sample when a matrix is non-finite or singular.
std::vector<double> inverse_affines(const at::Tensor& matrix);

/// Per-sample weights as doubles (all ones when absent).
std::vector<double> sample_weights(const c10::optional<at::Tensor>& weight, int64_t n);

/// t itself when its last dimension has unit stride, else a contiguous copy (the kernels walk rows).
at::Tensor with_unit_col_stride(const at::Tensor& t);

/// Checks shared by all mmcam ops on CAM tensors: rank 4, floating dtype, non-empty planes.
void check_cam_tensor(const at::Tensor& t, const char* name);

}  // namespace mmcam
