// CUDA implementation of mmcam::equivariance_loss and its backward, the single-pair operator. It uses
// the fused warp and the fused min-max / warp-adjoint backward kernels (through cuda_glue.h); the
// element-wise parts in between (mn of dst, optional L2 normalisation, distance, weights, reduction) are
// ATen operations on the device, computed in float64 for float32/float64 inputs and float32 for
// float16/bfloat16. The training path uses equivariance_terms (equivariance_terms_cuda.cpp), which is
// fused end to end.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"
#include "op_args.h"

namespace mmcam::cuda {
namespace {

/// equivariance_loss arguments: shapes and dtypes (op_args) plus CUDA devices and plane count.
void check_pair(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& matrix) {
  check_pair_args(src, dst, matrix);
  check_cam(src, "src");
  check_cam(dst, "dst");
  check_on(dst, "dst", src.device());
  check_on(matrix, "matrix", src.device());
}

/// Value dtype V of a CAM dtype (float32 for the 16-bit types) and work dtype W of the pair loss's
/// element-wise math and sums (float64 for float32/float64, float32 for the 16-bit types).
at::ScalarType value_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ? at::kFloat : t.scalar_type();
}
at::ScalarType work_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16 ? at::kFloat : at::kDouble;
}

/// mn(x) in x's value dtype, with the operation order of mmcam_math.h.
at::Tensor minmax_normalize(const at::Tensor& x, double eps) {
  const at::Tensor r = at::relu(x.to(value_dtype(x)));
  const at::Tensor lo = at::amin(r, {-2, -1}, true), hi = at::amax(r, {-2, -1}, true);
  return at::relu((r - lo) - eps) / ((hi - lo) + eps);
}

/// One side of the pair loss: the map x in its value dtype V (P or Q), its norm ||x + l2_eps|| and the
/// compared map (x / norm rounded to V when L2-normalised, else x), the last two in the work dtype.
struct PairSide {
  at::Tensor value, norm, compared;

  PairSide(const at::Tensor& x_value, bool l2, double l2_eps, at::ScalarType w) : value(x_value) {
    const at::Tensor x = x_value.to(w);
    if (!l2) {
      compared = x;
      return;
    }
    norm = (x_value + l2_eps).to(w).pow(2).sum({-2, -1}, true).sqrt();
    compared = (x * (1.0 / norm)).to(x_value.scalar_type()).to(w);
  }

  /// dL/dx from g = dL/d(compared map): g / n - (sum g x) (x + l2_eps) / n^3 when L2-normalised.
  at::Tensor backward(const at::Tensor& g, bool l2, double l2_eps) const {
    if (!l2) return g;
    const at::Tensor inv = 1.0 / norm;
    const at::Tensor dot = (g * value.to(g.scalar_type())).sum({-2, -1}, true);
    return g * inv - dot * inv * inv * inv * (value + l2_eps).to(g.scalar_type());
  }
};

struct PairSides {
  at::Tensor src_stats;
  PairSide p, q;
};

PairSides pair_sides(const at::Tensor& src, const at::Tensor& dst, const DeviceMaps& maps, bool l2, double eps,
                     double l2_eps) {
  const at::ScalarType w = work_dtype(src);
  at::Tensor stats = minmax_of(src, eps);
  const at::Tensor p_value = warp_with(src, stats, maps, dst.size(2), dst.size(3), eps).to(value_dtype(src));
  return {stats, PairSide(p_value, l2, l2_eps, w), PairSide(minmax_normalize(dst, eps), l2, l2_eps, w)};
}

/// Per-sample weights (N,) in the work dtype on the device (ones when absent).
at::Tensor weights_of(const c10::optional<at::Tensor>& weight, const at::Tensor& src, at::ScalarType w) {
  if (!weight) return at::ones({src.size(0)}, src.options().dtype(w));
  TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == src.size(0), "mmcam: weight must have shape (",
                    src.size(0), ",), got ", weight->sizes());
  return weight->to(src.device(), w);
}

at::Tensor equivariance_loss_cuda(const at::Tensor& src_in, const at::Tensor& matrix, const at::Tensor& dst_in,
                                  const c10::optional<at::Tensor>& weight, const std::string& distance_name,
                                  bool l2_normalize, double eps, double l2_eps, const std::string& reduction_name) {
  check_pair(src_in, dst_in, matrix);
  const math::Distance distance = parse_distance(distance_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const at::Tensor src = with_unit_col_stride(src_in), dst = with_unit_col_stride(dst_in);
  const DeviceMaps maps = device_maps(matrix, src.size(0), src.size(2), src.size(3));
  const PairSides s = pair_sides(src, dst, maps, l2_normalize, eps, l2_eps);
  const at::Tensor diff = s.p.compared - s.q.compared;
  const at::Tensor d = distance == math::Distance::SqL2 ? diff * diff : diff.abs();
  const at::Tensor w = weights_of(weight, src, diff.scalar_type());
  // A sample with weight 0 contributes exactly 0, even when its maps are not finite.
  const double denominator = loss_denominator(reduction, dst.size(0), dst.size(1), dst.size(2), dst.size(3));
  const at::Tensor per_sample = at::where(w != 0, w * d.sum({1, 2, 3}), at::zeros_like(w)) / denominator;
  const at::Tensor out = reduction == Reduction::None ? per_sample : per_sample.sum();
  return out.to(src.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> equivariance_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& src_in, const at::Tensor& matrix, const at::Tensor& dst_in,
    const c10::optional<at::Tensor>& weight, const std::string& distance_name, bool l2_normalize, double eps,
    double l2_eps, const std::string& reduction_name, bool need_src, bool need_dst) {
  check_pair(src_in, dst_in, matrix);
  const math::Distance distance = parse_distance(distance_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const int64_t N = src_in.size(0);
  check_loss_grad(grad, reduction, N);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const auto contiguous = src_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_src = at::empty({0}, contiguous), grad_dst = at::empty({0}, contiguous);
  if (!need_src && !need_dst) return {grad_src, grad_dst};
  const at::Tensor src = with_unit_col_stride(src_in), dst = with_unit_col_stride(dst_in);
  const DeviceMaps maps = device_maps(matrix, src.size(0), src.size(2), src.size(3));
  const PairSides s = pair_sides(src, dst, maps, l2_normalize, eps, l2_eps);
  const at::ScalarType w_dtype = work_dtype(src);
  const at::Tensor w = weights_of(weight, src, w_dtype);
  const at::Tensor upstream = grad.to(src.device(), w_dtype).reshape({-1});
  // coef[n] = dL/d(sum of sample n's distances); 0 marks a skipped sample.
  const double denominator = loss_denominator(reduction, N, dst.size(1), dst.size(2), dst.size(3));
  const at::Tensor coef = (w * upstream / denominator).expand({N});
  const at::Tensor coef4 = coef.view({N, 1, 1, 1});
  const at::Tensor diff = s.p.compared - s.q.compared;
  const at::Tensor dd = distance == math::Distance::SqL2 ? 2.0 * diff : at::sign(diff);
  const at::Tensor g = at::where(coef4 != 0, coef4 * dd, at::zeros_like(dd));  // skipped samples: no NaN from dd
  const at::Tensor active = (coef != 0).to(at::kFloat).contiguous();           // 0: exact zero gradient
  if (need_src) {
    const at::Tensor g_p = s.p.backward(g, l2_normalize, l2_eps);
    grad_src = warp_backward_with(src, s.src_stats, maps, at::where(coef4 != 0, g_p, at::zeros_like(g_p)), active, eps);
  }
  if (need_dst) {
    const at::Tensor g_q = s.q.backward(-g, l2_normalize, l2_eps);
    grad_dst =
        minmax_backward(dst, minmax_of(dst, eps), at::where(coef4 != 0, g_q, at::zeros_like(g_q)), active, maps, eps);
  }
  return {grad_src, grad_dst};
}

}  // namespace
}  // namespace mmcam::cuda

TORCH_LIBRARY_IMPL(mmcam, CUDA, m) {
  m.impl("equivariance_loss", &mmcam::cuda::equivariance_loss_cuda);
  m.impl("equivariance_loss_backward", &mmcam::cuda::equivariance_loss_backward_cuda);
}
