// CPU kernels of mmcam::equivariance_terms: the ER and CMER losses of every modality's network in one
// pass (docs/method.md, docs/operator.md). For each sample, every modality's plane is normalised, warped
// and L2-normalised ONCE; all M ER terms and all M(M-1) ordered CMER pairs then read those buffers.
//
//   ER_i   = sum_n y_n sum_hw d(P_i - Q_i)                                   / (N Hd Wd)
//   CMER_i = sum_n sum_{j != i} [ y_n pt_j,n ||A_i - B_j||^2 + y_n p_j,n ||B_i - A_j||^2 ] / (2 (M-1) N Hd Wd)
// with P_i = warp(mn(cams[:, i])), Q_i = mn(cams_t[:, i]), A_i / B_i their per-plane L2-normalised
// versions, p / pt the masks "network j predicts class 1" on the original / transformed view. In CMER_i the
// other modality's map (B_j, A_j) is a fixed target: no gradient flows into network j through it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cam_planes.h"
#include "cpu/tensor_planes.h"
#include "kept_stats.h"
#include "op_args.h"

namespace mmcam::cpu {
namespace {

struct TermsInputs {
  at::Tensor cams, cams_t;
  std::vector<double> inverses, labels, pred, pred_t;  // pred, pred_t: (N, M) row-major
  int64_t N, M, Hs, Ws, Hd, Wd;
};

std::vector<double> as_doubles(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(d.const_data_ptr<double>(), d.const_data_ptr<double>() + d.numel());
}

TermsInputs prepare_inputs(const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
                           const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask) {
  check_cam_tensor(cams, "cams");
  check_terms_args(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  TORCH_CHECK_VALUE(cams.device().is_cpu() && cams_t.device().is_cpu(),
                    "mmcam: cams and cams_t must be CPU tensors here");
  TORCH_CHECK_TYPE(cams.scalar_type() == at::kFloat || cams.scalar_type() == at::kDouble,
                   "mmcam: cams and cams_t must be float32 or float64 on the CPU, got ", cams.scalar_type());
  const int64_t N = cams.size(0), M = cams.size(1);
  TermsInputs in;
  in.cams = with_unit_col_stride(cams);
  in.cams_t = with_unit_col_stride(cams_t);
  in.inverses = inverse_affines(matrix);
  in.labels = as_doubles(labels);
  in.pred = as_doubles(pred_mask);
  in.pred_t = as_doubles(pred_t_mask);
  in.N = N;
  in.M = M;
  in.Hs = cams.size(2);
  in.Ws = cams.size(3);
  in.Hd = cams_t.size(2);
  in.Wd = cams_t.size(3);
  return in;
}

/// Per-thread working set: every modality's two sides for the current sample.
template <class T>
struct SampleSides {
  std::vector<WarpedSource<T>> source;      // P_m (warped) and A_m (unit)
  std::vector<NormalizedTarget<T>> target;  // Q_m and B_m (unit)

  /// P_m is written to warped_out + m Hd Wd when given (the kept_warped output), else to scratch.
  void compute(const TermsInputs& in, int64_t n, T eps, T l2_eps, T* warped_out) {
    source.resize(static_cast<size_t>(in.M));
    target.resize(static_cast<size_t>(in.M));
    const InverseAffine inv = inverse_of_sample(in.inverses, n);
    for (int64_t m = 0; m < in.M; ++m) {
      T* out = warped_out == nullptr ? nullptr : warped_out + m * in.Hd * in.Wd;
      source[m].compute(plane_of<T>(in.cams, n, m), inv, in.Hd, in.Wd, eps, true, l2_eps, out);
      target[m].compute(plane_of<T>(in.cams_t, n, m), eps, true, l2_eps);
    }
  }
};

template <class T>
double squared_distance(const T* a, const T* b, int64_t count) {
  return lane_sum(count, [&](int64_t i) {
    const T d = a[i] - b[i];
    return static_cast<double>(d * d);
  });
}

/// ||A_i - B_j||^2 of one sample's unit maps, each computed once: network i's CMER term reads it as
/// (A_i, B_j) and network j's as (B_j, A_i) (the same value, bitwise: (a - b)^2 = (b - a)^2).
class PairDistances {
 public:
  void reset(int64_t M) {
    M_ = M;
    value_.assign(static_cast<size_t>(M * M), 0.0);
    known_.assign(static_cast<size_t>(M * M), false);
  }

  template <class T>
  double get(const SampleSides<T>& sides, int64_t i, int64_t j) {
    const size_t k = static_cast<size_t>(i * M_ + j);
    if (!known_[k]) {
      value_[k] = squared_distance(sides.source[i].unit.data(), sides.target[j].unit.data(),
                                   static_cast<int64_t>(sides.source[i].unit.size()));
      known_[k] = true;
    }
    return value_[k];
  }

 private:
  int64_t M_ = 0;
  std::vector<double> value_;
  std::vector<bool> known_;
};

double er_scale(const TermsInputs& in) {
  return 1.0 / (static_cast<double>(in.N) * static_cast<double>(in.Hd) * static_cast<double>(in.Wd));
}

double cmer_scale(const TermsInputs& in) { return er_scale(in) / (2.0 * static_cast<double>(in.M - 1)); }

/// Writes the per-plane values the forward pass keeps for the backward pass: kept_stats[n, m, :], laid out
/// as kept_stats.h says.
template <class T>
void store_stats(double* slot, const WarpedSource<T>& source, const NormalizedTarget<T>& target) {
  slot[kSrcLo] = source.stats.lo;
  slot[kSrcHi] = source.stats.hi;
  slot[kSrcDen] = source.stats.den;
  slot[kDstLo] = target.stats.lo;
  slot[kDstHi] = target.stats.hi;
  slot[kDstDen] = target.stats.den;
  slot[kNormP] = source.norm;
  slot[kNormQ] = target.norm;
}

template <class T>
MinMaxStats<T> stats_from(const double* slot, int first) {
  return {static_cast<T>(slot[first]), static_cast<T>(slot[first + 1]), static_cast<T>(slot[first + 2])};
}

/// A map x before L2 normalisation and its L2-normalised version unit = x / ||x + l2_eps|| (T values, as
/// the forward pass computed them: l2_normalize_plane), both Hd x Wd.
template <class T>
struct UnitMap {
  const T* map;
  const T* unit;
  double inv_norm;  // 1 / ||x + l2_eps||
};

/// What the backward pass of one sample reads for modality m: the kept warped map P_m, Q_m = mn(cams_t)
/// recomputed from the kept statistics, and their unit maps recomputed from the kept norms.
template <class T>
struct KeptSides {
  std::vector<UnitMap<T>> source, target;  // (P_m, A_m), (Q_m, B_m)
  std::vector<std::vector<T>> buffers;     // Q_m, A_m, B_m of every m

  void load(const TermsInputs& in, int64_t n, const T* kept_warped, const double* kept_stats, T eps) {
    const int64_t M = in.M, HW = in.Hd * in.Wd;
    source.resize(M);
    target.resize(M);
    buffers.resize(3 * M);
    for (int64_t m = 0; m < M; ++m) {
      const double* slot = kept_stats + (n * M + m) * kKeptStatsPerPlane;
      std::vector<T>& Q = buffers[3 * m];
      std::vector<T>& A = buffers[3 * m + 1];
      std::vector<T>& B = buffers[3 * m + 2];
      Q.resize(HW);
      A.resize(HW);
      B.resize(HW);
      minmax_normalize_plane(plane_of<T>(in.cams_t, n, m), stats_from<T>(slot, kDstLo), eps, Q.data());
      const T* P = kept_warped + (n * M + m) * HW;
      scale_plane(P, HW, 1.0 / slot[kNormP], A.data());
      scale_plane(Q.data(), HW, 1.0 / slot[kNormQ], B.data());
      source[m] = {P, A.data(), 1.0 / slot[kNormP]};
      target[m] = {Q.data(), B.data(), 1.0 / slot[kNormQ]};
    }
  }
};

/// dL/d(one side's map x before L2 normalisation) of network i, produced row by row (the row function
/// of warp_plane_adjoint and minmax_normalize_backward):
///   g1_k = sum_j 2 w_j (unit_k - other_j,k)        the CMER pairs of this side, other maps fixed
///   g_k  = g1_k / n - (sum_l g1_l x_l) (x_k + l2_eps) / n^3 + er_coef d'(P_k - Q_k)
/// with n = ||x + l2_eps|| (the L2 backward) and the ER term of network i (er_coef = +-c_er). The dot
/// product is one reduction pass at construction; each row is then computed on demand.
template <class T>
class SideGradient {
 public:
  SideGradient(const UnitMap<T>& self, int64_t rows, int64_t cols, T l2_eps, double er_coef, const T* P, const T* Q,
               math::Distance distance)
      : self_(self), cols_(cols), l2_eps_(l2_eps), er_coef_(er_coef), P_(P), Q_(Q), distance_(distance), rows_(rows),
        row_(static_cast<size_t>(cols)) {}

  /// Adds the CMER pair (this side, other) with weight w (skipped when w = 0).
  void add_pair(double w, const UnitMap<T>& other) {
    if (w != 0.0) pairs_.push_back({2.0 * w, other});
  }

  /// Computes the L2-backward coefficient; call after the last add_pair.
  void finish_pairs() {
    double dot = 0.0;
    for (const Pair& pair : pairs_) {
      dot += pair.coef * lane_sum(rows_ * cols_, [&](int64_t k) {
        return static_cast<double>(self_.unit[k] - pair.other.unit[k]) * static_cast<double>(self_.map[k]);
      });
    }
    c_ = dot * self_.inv_norm * self_.inv_norm * self_.inv_norm;
  }

  /// Row y of g (cols values, valid until the next call).
  const double* operator()(int64_t y) {
    const int64_t begin = y * cols_;
    double* g = row_.data();
    std::fill(row_.begin(), row_.end(), 0.0);
    for (const Pair& pair : pairs_) {
      const T* u = self_.unit + begin;
      const T* o = pair.other.unit + begin;
      for (int64_t x = 0; x < cols_; ++x) g[x] += pair.coef * static_cast<double>(u[x] - o[x]);
    }
    const T* xm = self_.map + begin;
    const T* P = P_ + begin;
    const T* Q = Q_ + begin;
    for (int64_t x = 0; x < cols_; ++x) {
      g[x] = g[x] * self_.inv_norm - c_ * static_cast<double>(static_cast<T>(xm[x] + l2_eps_)) +
             er_coef_ * math::distance_grad<double>(static_cast<double>(P[x] - Q[x]), distance_);
    }
    return g;
  }

 private:
  struct Pair {
    double coef;  // 2 w_j
    UnitMap<T> other;
  };
  UnitMap<T> self_;
  int64_t cols_;
  T l2_eps_;
  double er_coef_;
  const T *P_, *Q_;
  math::Distance distance_;
  int64_t rows_;
  double c_ = 0.0;
  std::vector<Pair> pairs_;
  std::vector<double> row_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_terms_cpu(
    const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix, const at::Tensor& labels,
    const at::Tensor& pred_mask, const at::Tensor& pred_t_mask, const std::string& er_distance, double eps,
    double l2_eps, bool keep_for_backward) {
  const math::Distance distance = parse_distance(er_distance);
  const TermsInputs in = prepare_inputs(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  const int64_t N = in.N, M = in.M, HW = in.Hd * in.Wd;
  // partial[(n * 2 + row) * M + m]: sample n's unscaled contribution to row (0 = ER, 1 = CMER), network m.
  std::vector<double> partial(static_cast<size_t>(N * 2 * M), 0.0);
  const auto contiguous = in.cams.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor kept_warped = keep_for_backward ? at::empty({N, M, in.Hd, in.Wd}, contiguous) : at::empty({0}, contiguous);
  at::Tensor kept_stats = keep_for_backward ? at::zeros({N, M, kKeptStatsPerPlane}, contiguous.dtype(at::kDouble))
                                            : at::empty({0}, contiguous.dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES(in.cams.scalar_type(), "mmcam_equivariance_terms_cpu", [&] {
    const auto e = static_cast<scalar_t>(eps), le = static_cast<scalar_t>(l2_eps);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      // Scratch reused across samples and calls (thread_local: no fresh pages to fault in per call).
      thread_local SampleSides<scalar_t> sides;
      thread_local PairDistances pairs;
      for (int64_t n = begin; n < end; ++n) {
        const double y = in.labels[n];
        if (y == 0.0) {  // every term of a negative slice is weighted by y = 0; the backward skips it too
          if (keep_for_backward) std::fill_n(output_plane<scalar_t>(kept_warped, n, 0), M * HW, scalar_t(0));
          continue;
        }
        sides.compute(in, n, e, le, keep_for_backward ? output_plane<scalar_t>(kept_warped, n, 0) : nullptr);
        pairs.reset(M);
        double* er = partial.data() + (n * 2 + 0) * M;
        double* cm = partial.data() + (n * 2 + 1) * M;
        for (int64_t i = 0; i < M; ++i) {
          const scalar_t* P = sides.source[i].map();
          const scalar_t* Q = sides.target[i].normalized.data();
          er[i] = y * lane_sum(HW, [&](int64_t k) {
            return static_cast<double>(math::distance_value<scalar_t>(P[k] - Q[k], distance));
          });
          for (int64_t j = 0; j < M; ++j) {
            if (j == i) continue;
            const double w_a = y * in.pred_t[n * M + j], w_b = y * in.pred[n * M + j];
            if (w_a != 0.0) cm[i] += w_a * pairs.get(sides, i, j);  // ||A_i - B_j||^2
            if (w_b != 0.0) cm[i] += w_b * pairs.get(sides, j, i);  // ||B_i - A_j||^2 = ||A_j - B_i||^2
          }
          if (keep_for_backward) {
            store_stats(kept_stats.mutable_data_ptr<double>() + (n * M + i) * kKeptStatsPerPlane, sides.source[i],
                        sides.target[i]);
          }
        }
      }
    });
  });

  std::vector<double> terms(static_cast<size_t>(2 * M), 0.0);
  for (int64_t n = 0; n < N; ++n) {  // fixed order: bitwise independent of the thread count
    for (int64_t k = 0; k < 2 * M; ++k) terms[k] += partial[n * 2 * M + k];
  }
  for (int64_t m = 0; m < M; ++m) {
    terms[m] *= er_scale(in);
    terms[M + m] *= cmer_scale(in);
  }
  at::Tensor out = at::tensor(terms, at::TensorOptions().dtype(at::kDouble)).view({2, M}).to(in.cams.scalar_type());
  return {out, kept_warped, kept_stats};
}

std::tuple<at::Tensor, at::Tensor> equivariance_terms_backward_cpu(
    const at::Tensor& grad, const at::Tensor& cams, const at::Tensor& cams_t, const at::Tensor& matrix,
    const at::Tensor& labels, const at::Tensor& pred_mask, const at::Tensor& pred_t_mask,
    const at::Tensor& kept_warped_in, const at::Tensor& kept_stats_in, const std::string& er_distance, double eps,
    double l2_eps, bool need_cams, bool need_cams_t) {
  const math::Distance distance = parse_distance(er_distance);
  const TermsInputs in = prepare_inputs(cams, cams_t, matrix, labels, pred_mask, pred_t_mask);
  const int64_t N = in.N, M = in.M, HW = in.Hd * in.Wd;
  check_terms_backward_args(grad, cams, cams_t, kept_warped_in, kept_stats_in);
  const at::Tensor kept_warped = kept_warped_in.contiguous(), kept_stats = kept_stats_in.contiguous();
  const std::vector<double> g = as_doubles(grad);  // g[m]: dL/dER_m, g[M + m]: dL/dCMER_m
  const auto contiguous = in.cams.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_cams = need_cams ? at::empty({N, M, in.Hs, in.Ws}, contiguous) : at::empty({0}, contiguous);
  at::Tensor grad_cams_t = need_cams_t ? at::empty({N, M, in.Hd, in.Wd}, contiguous) : at::empty({0}, contiguous);
  if (!need_cams && !need_cams_t) return {grad_cams, grad_cams_t};

  AT_DISPATCH_FLOATING_TYPES(in.cams.scalar_type(), "mmcam_equivariance_terms_backward_cpu", [&] {
    using T = scalar_t;
    const auto e = static_cast<T>(eps), le = static_cast<T>(l2_eps);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      thread_local KeptSides<T> kept;  // scratch reused across samples and calls
      thread_local std::vector<double> acc;
      for (int64_t n = begin; n < end; ++n) {
        const double y = in.labels[n];
        if (y == 0.0) {
          if (need_cams) std::fill_n(output_plane<T>(grad_cams, n, 0), M * in.Hs * in.Ws, T(0));
          if (need_cams_t) std::fill_n(output_plane<T>(grad_cams_t, n, 0), M * HW, T(0));
          continue;
        }
        kept.load(in, n, kept_warped.const_data_ptr<T>(), kept_stats.const_data_ptr<double>(), e);
        const InverseAffine inv = inverse_of_sample(in.inverses, n);
        for (int64_t i = 0; i < M; ++i) {
          const double* slot = kept_stats.const_data_ptr<double>() + (n * M + i) * kKeptStatsPerPlane;
          const double c_er = g[i] * er_scale(in) * y;
          const double c_cm = g[M + i] * cmer_scale(in) * y;
          const T* P = kept.source[i].map;
          const T* Q = kept.target[i].map;
          if (need_cams) {  // pairs (A_i, B_j), weighted by pred_t_j
            SideGradient<T> side(kept.source[i], in.Hd, in.Wd, le, c_er, P, Q, distance);
            for (int64_t j = 0; j < M; ++j) {
              if (j != i) side.add_pair(c_cm * in.pred_t[n * M + j], kept.target[j]);
            }
            side.finish_pairs();
            acc.assign(static_cast<size_t>(in.Hs * in.Ws), 0.0);
            warp_plane_adjoint(side, in.Hd, in.Wd, inv, in.Hs, in.Ws, acc.data());
            minmax_normalize_backward(plane_of<T>(in.cams, n, i), stats_from<T>(slot, kSrcLo), e,
                                      rows_of(static_cast<const double*>(acc.data()), in.Ws),
                                      output_plane<T>(grad_cams, n, i), in.Ws);
          }
          if (need_cams_t) {  // pairs (B_i, A_j), weighted by pred_j
            SideGradient<T> side(kept.target[i], in.Hd, in.Wd, le, -c_er, P, Q, distance);
            for (int64_t j = 0; j < M; ++j) {
              if (j != i) side.add_pair(c_cm * in.pred[n * M + j], kept.source[j]);
            }
            side.finish_pairs();
            minmax_normalize_backward(plane_of<T>(in.cams_t, n, i), stats_from<T>(slot, kDstLo), e, side,
                                      output_plane<T>(grad_cams_t, n, i), in.Wd);
          }
        }
      }
    });
  });
  return {grad_cams, grad_cams_t};
}

}  // namespace
}  // namespace mmcam::cpu

TORCH_LIBRARY_IMPL(mmcam, CPU, m) {
  m.impl("equivariance_terms", &mmcam::cpu::equivariance_terms_cpu);
  m.impl("equivariance_terms_backward", &mmcam::cpu::equivariance_terms_backward_cpu);
}
