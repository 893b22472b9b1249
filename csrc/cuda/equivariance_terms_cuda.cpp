// CUDA implementation of mmcam::equivariance_terms and its backward: argument checks, device views of the
// inputs, workspaces, and the launches of csrc/cuda/equivariance_terms.cu.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_glue.h"
#include "op_args.h"

namespace mmcam::cuda {
namespace {

/// Checked inputs of both passes, with device floats for the per-sample 0/1 values.
struct TermsInputs {
  at::Tensor cams, cams_t, labels, pred, pred_t;
  DeviceMaps maps;
  int64_t N, M, Hs, Ws, Hd, Wd;

  TermsProblem problem(const std::string& er_distance, double eps, double l2_eps) const {
    return {planes_of(cams),
            planes_of(cams_t),
            maps.inv.const_data_ptr<double>(),
            maps.matrix.const_data_ptr<double>(),
            labels.const_data_ptr<float>(),
            pred.const_data_ptr<float>(),
            pred_t.const_data_ptr<float>(),
            static_cast<int>(parse_distance(er_distance)),
            eps,
            l2_eps};
  }
};

TermsInputs prepare_inputs(const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
                           const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask) {
  check_terms_args(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  const at::Device device = cams.device();
  check_on(cams_t, "cams_t", device);
  check_on(matrix, "matrix", device);
  const int64_t N = cams.size(0), M = cams.size(1);
  TORCH_CHECK_VALUE(M <= kMaxModalities, "mmcam: equivariance_terms on CUDA handles at most ", kMaxModalities,
                    " modalities, got ", M);
  check_plane_count(N * M, "cams");
  TermsInputs in;
  in.cams = with_unit_col_stride(cams);
  in.cams_t = with_unit_col_stride(cams_t);
  in.labels = device_floats(labels, device);
  in.pred = device_floats(pred_mask, device);
  in.pred_t = device_floats(pred_t_mask, device);
  in.N = N;
  in.M = M;
  in.Hs = cams.size(2);
  in.Ws = cams.size(3);
  in.Hd = cams_t.size(2);
  in.Wd = cams_t.size(3);
  in.maps = device_maps(matrix, N, in.Hs, in.Ws);
  return in;
}

at::Tensor grad_map_workspace(const TermsInputs& in, int64_t rows, int64_t cols) {
  return at::empty({in.N, in.M, rows, cols}, in.cams.options().dtype(grad_map_dtype(in.cams)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_terms_cuda(
    const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix, const at::Tensor& labels,
    const at::Tensor& pred_mask, const at::Tensor& pred_t_mask, const std::string& er_distance, double eps,
    double l2_eps, bool keep_for_backward) {
  check_is_cuda(cams, "cams");
  const c10::cuda::CUDAGuard guard(cams.device());
  const TermsInputs in = prepare_inputs(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  const int64_t planes = in.N * in.M, dst_tiles = tiles_of(in.Hd * in.Wd);
  const at::Device device = in.cams.device();
  const at::Tensor src_partials = double_workspace(planes * tiles_of(in.Hs * in.Ws) * kMinMaxSlots, device);
  const at::Tensor dst_partials = double_workspace(planes * dst_tiles * kMinMaxSlots, device);
  const at::Tensor src_stats = double_workspace(planes * kPlaneStatSlots, device);
  const at::Tensor dst_stats = double_workspace(planes * kPlaneStatSlots, device);
  const at::Tensor side_sums = double_workspace(planes * dst_tiles * kTermsSideSlots, device);
  const at::Tensor side_totals = double_workspace(planes * kTermsSideSlots, device);
  const at::Tensor pair_sums = double_workspace(in.N * dst_tiles * in.M, device);
  const auto contiguous = in.cams.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor terms = at::empty({2, in.M}, contiguous);
  // The forward pass always writes P (the CMER pass reads it back); it is returned only when kept.
  at::Tensor warped = at::empty({in.N, in.M, in.Hd, in.Wd}, contiguous);
  at::Tensor stats = at::empty({in.N, in.M, kKeptStatsPerPlane}, contiguous.dtype(at::kDouble));
  const TermsForwardWorkspace ws{src_partials.mutable_data_ptr<double>(), dst_partials.mutable_data_ptr<double>(),
                                 src_stats.mutable_data_ptr<double>(),    dst_stats.mutable_data_ptr<double>(),
                                 side_sums.mutable_data_ptr<double>(),    side_totals.mutable_data_ptr<double>(),
                                 pair_sums.mutable_data_ptr<double>()};
  C10_CUDA_CHECK(equivariance_terms_forward(in.problem(er_distance, eps, l2_eps), ws, terms.mutable_data_ptr(),
                                            warped.mutable_data_ptr(), stats.mutable_data_ptr<double>(),
                                            current_stream()));
  if (!keep_for_backward) return {terms, at::empty({0}, contiguous), at::empty({0}, contiguous.dtype(at::kDouble))};
  return {terms, warped, stats};
}

std::tuple<at::Tensor, at::Tensor> equivariance_terms_backward_cuda(
    const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
    const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask,
    const at::Tensor& kept_warped_in, const at::Tensor& kept_stats_in, const std::string& er_distance, double eps,
    double l2_eps, bool need_cams, bool need_cams_t) {
  check_is_cuda(cams, "cams");
  const c10::cuda::CUDAGuard guard(cams.device());
  const TermsInputs in = prepare_inputs(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  const int64_t N = in.N, M = in.M;
  check_terms_backward_args(grad, cams, cams_t, kept_warped_in, kept_stats_in);
  const at::Device device = in.cams.device();
  const at::Tensor kept_warped = kept_warped_in.contiguous(), kept_stats = kept_stats_in.contiguous();
  const at::Tensor g = device_doubles(grad, device);
  const auto contiguous = in.cams.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_cams = need_cams ? at::empty({N, M, in.Hs, in.Ws}, contiguous) : at::empty({0}, contiguous);
  at::Tensor grad_cams_t = need_cams_t ? at::empty({N, M, in.Hd, in.Wd}, contiguous) : at::empty({0}, contiguous);
  if (!need_cams && !need_cams_t) return {grad_cams, grad_cams_t};

  const bool deterministic = deterministic_mode();
  const int64_t planes = N * M, dst_tiles = tiles_of(in.Hd * in.Wd);
  const at::Tensor dot_sums = double_workspace(N * dst_tiles * 2 * M, device);
  const at::Tensor dot_totals = double_workspace(N * 2 * M, device);
  const at::Tensor grad_warped = need_cams && deterministic ? grad_map_workspace(in, in.Hd, in.Wd) : at::Tensor();
  const at::Tensor grad_target = need_cams_t ? grad_map_workspace(in, in.Hd, in.Wd) : at::Tensor();
  const at::Tensor acc = need_cams ? grad_map_workspace(in, in.Hs, in.Ws) : at::Tensor();
  const at::Tensor src_sums = double_workspace(planes * tiles_of(in.Hs * in.Ws) * kBackwardSumSlots, device);
  const at::Tensor src_totals = double_workspace(planes * kBackwardSumSlots, device);
  const at::Tensor dst_sums = double_workspace(planes * dst_tiles * kBackwardSumSlots, device);
  const at::Tensor dst_totals = double_workspace(planes * kBackwardSumSlots, device);
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; };
  const TermsBackwardWorkspace ws{dot_sums.mutable_data_ptr<double>(),
                                  dot_totals.mutable_data_ptr<double>(),
                                  ptr(grad_warped),
                                  ptr(grad_target),
                                  ptr(acc),
                                  src_sums.mutable_data_ptr<double>(),
                                  src_totals.mutable_data_ptr<double>(),
                                  dst_sums.mutable_data_ptr<double>(),
                                  dst_totals.mutable_data_ptr<double>()};
  C10_CUDA_CHECK(equivariance_terms_backward(in.problem(er_distance, eps, l2_eps), g.const_data_ptr<double>(),
                                             kept_warped.const_data_ptr(), kept_stats.const_data_ptr<double>(),
                                             deterministic, ws, need_cams ? grad_cams.mutable_data_ptr() : nullptr,
                                             need_cams_t ? grad_cams_t.mutable_data_ptr() : nullptr, current_stream()));
  return {grad_cams, grad_cams_t};
}

}  // namespace
}  // namespace mmcam::cuda

TORCH_LIBRARY_IMPL(mmcam, CUDA, m) {
  m.impl("equivariance_terms", &mmcam::cuda::equivariance_terms_cuda);
  m.impl("equivariance_terms_backward", &mmcam::cuda::equivariance_terms_backward_cuda);
}
