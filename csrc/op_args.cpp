#include "op_args.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "kept_stats.h"

namespace mmcam {

math::Distance parse_distance(const std::string& distance) {
  if (distance == "sq_l2") return math::Distance::SqL2;
  if (distance == "l1") return math::Distance::L1;
  TORCH_CHECK_VALUE(false, "mmcam: distance must be 'sq_l2' or 'l1', got '", distance, "'");
}

Reduction parse_reduction(const std::string& reduction) {
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  if (reduction == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, "mmcam: reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
}

std::vector<double> inverse_affines(const at::Tensor& matrix) {
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(1) == 2 && matrix.size(2) == 3,
                    "mmcam: matrix must have shape (N, 2, 3), got ", matrix.sizes());
  TORCH_CHECK_TYPE(matrix.is_floating_point(), "mmcam: matrix must be floating point, got ", matrix.scalar_type());
  const at::Tensor m = matrix.to(at::kCPU, at::kDouble).contiguous();
  const int64_t n = m.size(0);
  const double* p = m.const_data_ptr<double>();
  std::vector<double> inv(static_cast<size_t>(n) * 6);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(math::invert_affine(p + 6 * i, inv.data() + 6 * i), "mmcam: matrix[", i, "] = [[", p[6 * i], ", ",
                      p[6 * i + 1], ", ", p[6 * i + 2], "], [", p[6 * i + 3], ", ", p[6 * i + 4], ", ", p[6 * i + 5],
                      "]] is not an invertible finite affine map (NaN/inf entry or zero determinant)");
  }
  return inv;
}

std::vector<double> sample_weights(const c10::optional<at::Tensor>& weight, int64_t n) {
  if (!weight.has_value()) return std::vector<double>(static_cast<size_t>(n), 1.0);
  const at::Tensor& w = *weight;
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n, "mmcam: weight must have shape (", n, ",), got ", w.sizes());
  const at::Tensor wd = w.to(at::kCPU, at::kDouble).contiguous();
  const double* p = wd.const_data_ptr<double>();
  return std::vector<double>(p, p + n);
}

at::Tensor with_unit_col_stride(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

void check_cam_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, "mmcam: ", name, " must have shape (N, C, H, W), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
                       t.scalar_type() == at::kBFloat16,
                   "mmcam: ", name, " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(2) > 0 && t.size(3) > 0, "mmcam: ", name, " has an empty spatial size ", t.sizes());
}

void check_pair_args(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& matrix) {
  check_cam_tensor(src, "src");
  check_cam_tensor(dst, "dst");
  TORCH_CHECK_TYPE(src.scalar_type() == dst.scalar_type(), "mmcam: src and dst dtypes differ: ", src.scalar_type(),
                   " vs ", dst.scalar_type());
  TORCH_CHECK_VALUE(src.size(0) == dst.size(0) && src.size(1) == dst.size(1),
                    "mmcam: src and dst must agree in N and C, got ", src.sizes(), " and ", dst.sizes());
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(0) == src.size(0),
                    "mmcam: matrix must have shape (N, 2, 3) with N = ", src.size(0), ", got ", matrix.sizes());
}

void check_loss_grad(const at::Tensor& grad, Reduction reduction, int64_t n) {
  const int64_t expected = reduction == Reduction::None ? n : 1;
  TORCH_CHECK_VALUE(grad.numel() == expected, "mmcam: grad has ", grad.numel(), " elements, expected ", expected);
}

double loss_denominator(Reduction reduction, int64_t n, int64_t c, int64_t hd, int64_t wd) {
  if (reduction == Reduction::Sum) return 1.0;
  const double plane = static_cast<double>(c) * static_cast<double>(hd) * static_cast<double>(wd);
  return reduction == Reduction::Mean ? static_cast<double>(n) * plane : plane;
}

void check_terms_args(const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
                      const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask) {
  check_cam_tensor(cams, "cams");
  check_cam_tensor(cams_t, "cams_t");
  TORCH_CHECK_TYPE(cams.scalar_type() == cams_t.scalar_type(),
                   "mmcam: cams and cams_t dtypes differ: ", cams.scalar_type(), " vs ", cams_t.scalar_type());
  const int64_t N = cams.size(0), M = cams.size(1);
  TORCH_CHECK_VALUE(cams_t.size(0) == N && cams_t.size(1) == M, "mmcam: cams ", cams.sizes(), " and cams_t ",
                    cams_t.sizes(), " must agree in N and M");
  TORCH_CHECK_VALUE(M >= 2, "mmcam: equivariance_terms needs M >= 2 modalities, got ", M);
  TORCH_CHECK_VALUE(matrix.dim() == 3 && matrix.size(0) == N, "mmcam: matrix must have shape (", N, ", 2, 3), got ",
                    matrix.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == N, "mmcam: labels must have shape (", N, ",)");
  TORCH_CHECK_VALUE(pred_mask.dim() == 2 && pred_mask.size(0) == N && pred_mask.size(1) == M &&
                        pred_t_mask.sizes() == pred_mask.sizes(),
                    "mmcam: pred and pred_t must have shape (", N, ", ", M, ")");
}

void check_terms_backward_args(const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t,
                               const at::Tensor& kept_warped, const at::Tensor& kept_stats) {
  const int64_t N = cams.size(0), M = cams.size(1);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == 2 && grad.size(1) == M, "mmcam: grad must have shape (2, ", M,
                    "), got ", grad.sizes());
  TORCH_CHECK_VALUE(kept_warped.sizes() == at::IntArrayRef({N, M, cams_t.size(2), cams_t.size(3)}) &&
                        kept_warped.scalar_type() == cams.scalar_type() &&
                        kept_stats.sizes() == at::IntArrayRef({N, M, kKeptStatsPerPlane}) &&
                        kept_stats.scalar_type() == at::kDouble && kept_warped.device() == cams.device() &&
                        kept_stats.device() == cams.device(),
                    "mmcam: equivariance_terms_backward needs the warped maps and plane statistics kept by the "
                    "forward pass (call the forward with keep_for_backward=True)");
}

}  // namespace mmcam
