// Per-device implementations of the mmcam:: operators (schemas in register.cpp). Semantics: DESIGN §2
// and the docstrings of mmcam/ops.py.
#pragma once

#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace mmcam::cpu {

at::Tensor warp_normalized(const at::Tensor& src, const at::Tensor& matrix, at::IntArrayRef dsize, double eps);

at::Tensor warp_normalized_backward(const at::Tensor& grad, const at::Tensor& src, const at::Tensor& matrix,
                                    double eps);

at::Tensor equivariance_loss(const at::Tensor& src, const at::Tensor& matrix, const at::Tensor& dst,
                             const c10::optional<at::Tensor>& weight, const std::string& distance,
                             bool l2_normalize, double eps, double l2_eps, const std::string& reduction);

std::tuple<at::Tensor, at::Tensor> equivariance_loss_backward(
    const at::Tensor& grad, const at::Tensor& src, const at::Tensor& matrix, const at::Tensor& dst,
    const c10::optional<at::Tensor>& weight, const std::string& distance, bool l2_normalize, double eps,
    double l2_eps, const std::string& reduction, bool need_src, bool need_dst);

/// Returns (terms (2, M), kept warped maps (N, M, Hd, Wd), kept plane statistics (N, M, 8) double); the
/// last two are empty unless keep_for_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_terms(
    const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix, const at::Tensor& labels,
    const at::Tensor& pred_mask, const at::Tensor& pred_t_mask, const std::string& er_distance, double eps,
    double l2_eps, bool keep_for_backward);

std::tuple<at::Tensor, at::Tensor> equivariance_terms_backward(
    const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
    const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask,
    const at::Tensor& kept_warped, const at::Tensor& kept_stats, const std::string& er_distance, double eps,
    double l2_eps, bool need_cams, bool need_cams_t);

}  // namespace mmcam::cpu
