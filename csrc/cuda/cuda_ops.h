// CUDA implementations of the mmcam:: operators (schemas in csrc/register.cpp, registered for the CUDA
// dispatch key in register_cuda.cpp). Same signatures and semantics as the CPU ones in csrc/ops.h, plus
// float16 / bfloat16 inputs (computed in float32) and a deterministic backward under
// torch.use_deterministic_algorithms(True). A non-finite or singular matrix is not raised as an error
// on CUDA (that would need a host synchronisation): the affected sample's outputs are NaN.
#pragma once

#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace mmcam::cuda {

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_terms(
    const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix, const at::Tensor& labels,
    const at::Tensor& pred_mask, const at::Tensor& pred_t_mask, const std::string& er_distance, double eps,
    double l2_eps, bool keep_for_backward);

std::tuple<at::Tensor, at::Tensor> equivariance_terms_backward(
    const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
    const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask,
    const at::Tensor& kept_warped, const at::Tensor& kept_stats, const std::string& er_distance, double eps,
    double l2_eps, bool need_cams, bool need_cams_t);

}  // namespace mmcam::cuda
