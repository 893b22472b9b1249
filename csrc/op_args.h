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

// Device-independent argument checks of the ops, shared by the CPU and CUDA back ends (each adds its own
// device and dtype checks).

/// equivariance_loss: src and dst CAM tensors of one dtype that agree in N and C; matrix (N, 2, 3).
void check_pair_args(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& matrix);

/// The upstream gradient of equivariance_loss: N values for reduction "none", else 1.
void check_loss_grad(const at::Tensor& grad, Reduction reduction, int64_t n);

/// Divisor of the summed weighted distances: N*C*Hd*Wd (mean), 1 (sum), C*Hd*Wd per sample (none).
double loss_denominator(Reduction reduction, int64_t n, int64_t c, int64_t hd, int64_t wd);

/// equivariance_terms: cams (N, M, Hs, Ws) and cams_t (N, M, Hd, Wd) of one dtype, M >= 2, matrix
/// (N, 2, 3), labels (N,), pred and pred_t (N, M).
void check_terms_args(const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
                      const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask);

/// equivariance_terms_backward: grad (2, M) and what the forward kept: warped maps (N, M, Hd, Wd) in
/// cams' dtype and per-plane statistics (N, M, kKeptStatsPerPlane) in float64 (kept_stats.h).
void check_terms_backward_args(const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t,
                               const at::Tensor& kept_warped, const at::Tensor& kept_stats);

}  // namespace mmcam
