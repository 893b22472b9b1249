// CPU kernels of mmcam::equivariance_loss and its backward: the distance between warp(mn(src)) and
// mn(dst), optionally L2-normalised per plane, weighted per sample and reduced.
// Parallel over the N*C planes; each plane's gradient is computed privately (no atomics), and the loss
// is reduced over planes in a fixed order, so results are bitwise independent of the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cam_planes.h"
#include "cpu/isa.h"
#include "cpu/tensor_planes.h"
#include "op_args.h"

namespace mmcam::cpu {
namespace {

void check_pair(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& matrix) {
  check_pair_args(src, dst, matrix);
  check_cpu(src, "src");
  check_cpu(dst, "dst");
}

/// dL/d(per-plane sum of distances) for sample n, given the upstream gradient of the reduced loss.
struct PlaneGradScale {
  Reduction reduction;
  const double* grad;  // 1 value (mean, sum) or N values (none)
  double denominator;  // N*C*Hd*Wd (mean), 1 (sum), C*Hd*Wd (none)
  double operator()(int64_t n, double weight) const {
    return weight * (reduction == Reduction::None ? grad[n] : grad[0]) / denominator;
  }
};

at::Tensor equivariance_loss_cpu(const at::Tensor& src_in, const at::Tensor& matrix, const at::Tensor& dst_in,
                                 const c10::optional<at::Tensor>& weight, const std::string& distance_name,
                                 bool l2_normalize, double eps, double l2_eps, const std::string& reduction_name) {
  check_pair(src_in, dst_in, matrix);
  const math::Distance distance = parse_distance(distance_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor src = with_unit_col_stride(src_in), dst = with_unit_col_stride(dst_in);
  const std::vector<double> inverses = inverse_affines(matrix);
  const std::vector<double> weights = sample_weights(weight, src.size(0));
  const int64_t N = src.size(0), C = src.size(1), Hd = dst.size(2), Wd = dst.size(3);
  std::vector<double> plane_sums(static_cast<size_t>(N * C), 0.0);

  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mmcam_equivariance_loss_cpu", [&] {
    const auto e = static_cast<scalar_t>(eps), le = static_cast<scalar_t>(l2_eps);
    parallel_over(N * C, [&](int64_t begin, int64_t end) {
      WarpedSource<scalar_t> source;
      NormalizedTarget<scalar_t> target;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        if (weights[n] == 0.0) continue;  // contributes exactly 0
        source.compute(plane_of<scalar_t>(src, n, c), inverse_of_sample(inverses, n), Hd, Wd, e, l2_normalize, le);
        target.compute(plane_of<scalar_t>(dst, n, c), e, l2_normalize, le);
        const scalar_t* P = source.compared(l2_normalize);
        const scalar_t* Q = target.compared(l2_normalize);
        plane_sums[p] = lane_sum(Hd * Wd, [&](int64_t i) {
          return static_cast<double>(math::distance_value<scalar_t>(P[i] - Q[i], distance));
        });
      }
    });
  });

  // Fixed-order reduction over planes: bitwise independent of the thread count.
  const double denominator = loss_denominator(reduction, N, C, Hd, Wd);
  if (reduction == Reduction::None) {
    std::vector<double> per_sample(static_cast<size_t>(N), 0.0);
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += plane_sums[n * C + c];
      per_sample[n] = weights[n] * s / denominator;
    }
    return at::tensor(per_sample, at::TensorOptions().dtype(at::kDouble)).to(src.scalar_type());
  }
  double total = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    double s = 0.0;
    for (int64_t c = 0; c < C; ++c) s += plane_sums[n * C + c];
    total += weights[n] * s;
  }
  return at::scalar_tensor(total / denominator, src.options().dtype(at::kDouble)).to(src.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> equivariance_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& src_in, const at::Tensor& matrix, const at::Tensor& dst_in,
    const c10::optional<at::Tensor>& weight, const std::string& distance_name, bool l2_normalize, double eps,
    double l2_eps, const std::string& reduction_name, bool need_src, bool need_dst) {
  check_pair(src_in, dst_in, matrix);
  const math::Distance distance = parse_distance(distance_name);
  const Reduction reduction = parse_reduction(reduction_name);
  const at::Tensor src = with_unit_col_stride(src_in), dst = with_unit_col_stride(dst_in);
  const int64_t N = src.size(0), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
  const int64_t Hd = dst.size(2), Wd = dst.size(3);
  check_loss_grad(grad, reduction, N);
  const at::Tensor grad_d = grad.to(at::kCPU, at::kDouble).contiguous();
  const std::vector<double> inverses = inverse_affines(matrix);
  const std::vector<double> weights = sample_weights(weight, N);
  const PlaneGradScale scale{reduction, grad_d.const_data_ptr<double>(), loss_denominator(reduction, N, C, Hd, Wd)};
  const auto contiguous = src.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_src = need_src ? at::empty({N, C, Hs, Ws}, contiguous) : at::empty({0}, contiguous);
  at::Tensor grad_dst = need_dst ? at::empty({N, C, Hd, Wd}, contiguous) : at::empty({0}, contiguous);
  if (!need_src && !need_dst) return {grad_src, grad_dst};

  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mmcam_equivariance_loss_backward_cpu", [&] {
    const auto e = static_cast<scalar_t>(eps), le = static_cast<scalar_t>(l2_eps);
    parallel_over(N * C, [&](int64_t begin, int64_t end) {
      WarpedSource<scalar_t> source;
      NormalizedTarget<scalar_t> target;
      BackwardScratch scratch;
      std::vector<double> g_target;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const double coef = scale(n, weights[n]);
        if (coef == 0.0) {
          if (need_src) std::fill_n(output_plane<scalar_t>(grad_src, n, c), Hs * Ws, scalar_t(0));
          if (need_dst) std::fill_n(output_plane<scalar_t>(grad_dst, n, c), Hd * Wd, scalar_t(0));
          continue;
        }
        const PlaneView<scalar_t> src_plane = plane_of<scalar_t>(src, n, c);
        const PlaneView<scalar_t> dst_plane = plane_of<scalar_t>(dst, n, c);
        const InverseAffine inv = inverse_of_sample(inverses, n);
        source.compute(src_plane, inv, Hd, Wd, e, l2_normalize, le);
        target.compute(dst_plane, e, l2_normalize, le);
        const scalar_t* P = source.compared(l2_normalize);
        const scalar_t* Q = target.compared(l2_normalize);
        std::vector<double>& g_source = scratch.grad_dst_side;
        g_source.resize(static_cast<size_t>(Hd * Wd));
        for (int64_t i = 0; i < Hd * Wd; ++i) {
          g_source[i] = coef * math::distance_grad<double>(static_cast<double>(P[i] - Q[i]), distance);
        }
        if (need_dst) {
          g_target.resize(g_source.size());
          for (size_t i = 0; i < g_source.size(); ++i) g_target[i] = -g_source[i];
          backprop_to_target(target, g_target.data(), l2_normalize, le, dst_plane, e,
                             output_plane<scalar_t>(grad_dst, n, c), Wd);
        }
        if (need_src) {
          backprop_to_source(source, g_source.data(), l2_normalize, le, src_plane, inv, Hd, Wd, e, scratch,
                             output_plane<scalar_t>(grad_src, n, c), Ws);
        }
      }
    });
  });
  return {grad_src, grad_dst};
}

}  // namespace
}  // namespace mmcam::cpu

TORCH_LIBRARY_IMPL(mmcam, CPU, m) {
  m.impl("equivariance_loss", &mmcam::cpu::equivariance_loss_cpu);
  m.impl("equivariance_loss_backward", &mmcam::cpu::equivariance_loss_backward_cpu);
}
