#include "op_args.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

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
  TORCH_CHECK_TYPE(matrix.is_floating_point(), "mmcam: matrix must be floating point, got ",
                   matrix.scalar_type());
  const at::Tensor m = matrix.to(at::kCPU, at::kDouble).contiguous();
  const int64_t n = m.size(0);
  const double* p = m.const_data_ptr<double>();
  std::vector<double> inv(static_cast<size_t>(n) * 6);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(math::invert_affine(p + 6 * i, inv.data() + 6 * i), "mmcam: matrix[", i,
                      "] = [[", p[6 * i], ", ", p[6 * i + 1], ", ", p[6 * i + 2], "], [", p[6 * i + 3],
                      ", ", p[6 * i + 4], ", ", p[6 * i + 5],
                      "]] is not an invertible finite affine map (NaN/inf entry or zero determinant)");
  }
  return inv;
}

std::vector<double> sample_weights(const c10::optional<at::Tensor>& weight, int64_t n) {
  if (!weight.has_value()) return std::vector<double>(static_cast<size_t>(n), 1.0);
  const at::Tensor& w = *weight;
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n, "mmcam: weight must have shape (", n, ",), got ",
                    w.sizes());
  const at::Tensor wd = w.to(at::kCPU, at::kDouble).contiguous();
  const double* p = wd.const_data_ptr<double>();
  return std::vector<double>(p, p + n);
}

at::Tensor with_unit_col_stride(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

void check_cam_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, "mmcam: ", name, " must have shape (N, C, H, W), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                       t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
                   "mmcam: ", name, " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(2) > 0 && t.size(3) > 0, "mmcam: ", name, " has an empty spatial size ",
                    t.sizes());
}

}  // namespace mmcam
