// CPU kernels of mmcam::equivariance_terms: the ER and CMER losses of every modality's network in one
// pass (docs/method.md, docs/operator.md). For each sample, every modality's plane is normalised, warped
// and L2-normalised ONCE; all M ER terms and all M(M-1) ordered CMER pairs then read those buffers.
//
//   ER_i   = sum_n y_n sum_hw d(P_i - Q_i)                                   / (N Hd Wd)
//   CMER_i = sum_n sum_{j != i} [ y_n pt_j,n ||A_i - B_j||^2 + y_n p_j,n ||B_i - A_j||^2 ] / (2 (M-1) N Hd Wd)
// with P_i = warp(mn(cams[:, i])), Q_i = mn(cams_t[:, i]), A_i / B_i their per-plane L2-normalised
// versions, p / pt the masks "network j predicts class 1" on the original / transformed view. In CMER_i the
// other modality's map (B_j, A_j) is a fixed target: no gradient flows into network j through it.
#include <cmath>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cam_planes.h"
#include "cpu/isa.h"
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

/// Per-thread working set of the forward pass: every modality's two sides for the current sample, with
/// their norms but not their unit maps (SampleSums forms those chunk by chunk).
template <class T>
struct SampleSides {
  std::vector<WarpedSource<T>> source;      // P_m (warped), norm ||P_m + l2_eps||
  std::vector<NormalizedTarget<T>> target;  // Q_m, norm ||Q_m + l2_eps||

  /// P_m is written to warped_out + m Hd Wd when given (the kept_warped output), else to scratch.
  void compute(const TermsInputs& in, int64_t n, T eps, T l2_eps, T* warped_out) {
    source.resize(static_cast<size_t>(in.M));
    target.resize(static_cast<size_t>(in.M));
    const InverseAffine inv = inverse_of_sample(in.inverses, n);
    const int64_t HW = in.Hd * in.Wd;
    for (int64_t m = 0; m < in.M; ++m) {
      T* out = warped_out == nullptr ? nullptr : warped_out + m * HW;
      source[m].compute(plane_of<T>(in.cams, n, m), inv, in.Hd, in.Wd, eps, false, l2_eps, out);
      source[m].norm = l2_norm_shifted(source[m].map(), HW, l2_eps);
      target[m].compute(plane_of<T>(in.cams_t, n, m), eps, false, l2_eps);
      target[m].norm = l2_norm_shifted(target[m].normalized.data(), HW, l2_eps);
    }
  }
};

/// One sample's sums in one pass over its maps: sum_k d(P_m - Q_m) (ER) for every m, and ||A_i - B_j||^2
/// for the ordered pairs asked for, with the unit maps A_m = P_m / ||P_m + l2_eps||, B_m = Q_m / ||Q_m +
/// l2_eps|| (scale_plane, as the backward forms them), formed a chunk at a time instead of stored as planes.
/// Element k goes to lane k % kLanes, as in lane_sum: the values of summing stored planes, bitwise.
template <class T>
class SampleSums {
 public:
  /// needed[i * M + j]: whether ||A_i - B_j||^2 is wanted.
  void compute(const SampleSides<T>& sides, int64_t count, const std::vector<char>& needed, math::Distance distance) {
    const auto M = static_cast<int64_t>(sides.source.size());
    er_lanes_.assign(static_cast<size_t>(M * kLanes), 0.0);
    pair_lanes_.assign(static_cast<size_t>(M * M * kLanes), 0.0);
    units_.resize(static_cast<size_t>(2 * M * kChunk));
    for (int64_t begin = 0; begin < count; begin += kChunk) {
      const int64_t len = std::min(kChunk, count - begin);  // begin is a multiple of kLanes
      for (int64_t m = 0; m < M; ++m) {
        scale_plane(sides.source[m].map() + begin, len, 1.0 / sides.source[m].norm, A(m));
        scale_plane(sides.target[m].normalized.data() + begin, len, 1.0 / sides.target[m].norm, B(m));
        const T* P = sides.source[m].map() + begin;
        const T* Q = sides.target[m].normalized.data() + begin;
        with_fixed_distance(distance, [&](auto fixed) {
          add_in_lanes(er_lanes_.data() + m * kLanes, len, [&](int64_t k) {
            return static_cast<double>(math::distance_value<T>(P[k] - Q[k], fixed.value));
          });
        });
      }
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < M; ++j) {
          if (!needed[i * M + j]) continue;
          const T* a = A(i);
          const T* b = B(j);
          add_in_lanes(pair_lanes_.data() + (i * M + j) * kLanes, len, [&](int64_t k) {
            const T d = a[k] - b[k];
            return static_cast<double>(d * d);
          });
        }
      }
    }
    M_ = M;
  }

  /// sum_k d(P_m - Q_m).
  double er(int64_t m) const { return combine(er_lanes_.data() + m * kLanes); }
  /// ||A_i - B_j||^2 (asked for in compute). Network i's CMER term reads it as (A_i, B_j), network j's as
  /// (B_j, A_i): the same value, bitwise ((a - b)^2 = (b - a)^2).
  double pair(int64_t i, int64_t j) const { return combine(pair_lanes_.data() + (i * M_ + j) * kLanes); }

 private:
  static constexpr int64_t kChunk = 32 * kLanes;

  template <class F>
  static void add_in_lanes(double* lanes_out, int64_t len, F&& f) {
    double lanes[kLanes];  // a local copy: no aliasing with the maps (when T = double)
    std::copy_n(lanes_out, kLanes, lanes);
    visit_in_lanes(1, len, [&](int k, int64_t, int64_t x) { lanes[k] += f(x); });
    std::copy_n(lanes, kLanes, lanes_out);
  }

  static double combine(const double* lanes) {
    double total = 0.0;
    for (int k = 0; k < kLanes; ++k) total += lanes[k];
    return total;
  }

  T* A(int64_t m) { return units_.data() + (2 * m) * kChunk; }
  T* B(int64_t m) { return units_.data() + (2 * m + 1) * kChunk; }

  int64_t M_ = 0;
  std::vector<double> er_lanes_, pair_lanes_;
  std::vector<T> units_;  // the current chunk of A_m and B_m of every m
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

/// One sample's maps for the backward pass, one destination row at a time, for every modality m: P_m
/// (the kept warped map), Q_m = mn(cams_t[n, m]) recomputed from the kept statistics, and the unit maps
/// A_m = P_m / ||P_m + l2_eps||, B_m = Q_m / ||Q_m + l2_eps|| from the kept norms. Recomputing a row is
/// cheaper than writing and re-reading whole planes of Q, A and B.
template <class T>
class SampleRows {
 public:
  void reset(const TermsInputs& in, int64_t n, const T* kept_warped, const double* kept_stats, T eps) {
    M_ = in.M;
    cols_ = in.Wd;
    eps_ = eps;
    planes_.resize(static_cast<size_t>(M_));
    for (int64_t m = 0; m < M_; ++m) {
      const double* slot = kept_stats + (n * M_ + m) * kKeptStatsPerPlane;
      planes_[m] = {kept_warped + (n * M_ + m) * in.Hd * in.Wd, plane_of<T>(in.cams_t, n, m),
                    stats_from<T>(slot, kDstLo), 1.0 / slot[kNormP], 1.0 / slot[kNormQ]};
    }
    rows_.resize(static_cast<size_t>(3 * M_ * cols_));
  }

  /// Makes row y current: computes its Q_m, A_m, B_m for every m.
  void load(int64_t y) {
    y_ = y;
    for (int64_t m = 0; m < M_; ++m) {
      const Plane& plane = planes_[m];
      const T* target = plane.target.row(y);
      T* q = Q(m);
      for (int64_t x = 0; x < cols_; ++x) q[x] = math::minmax_value(target[x], plane.stats.lo, plane.stats.den, eps_);
      scale_plane(P(m), cols_, plane.inv_norm_p, A(m));
      scale_plane(static_cast<const T*>(q), cols_, plane.inv_norm_q, B(m));
    }
  }

  /// Row y of the maps of modality m (valid until the next load).
  const T* P(int64_t m) const { return planes_[m].P + y_ * cols_; }
  T* Q(int64_t m) { return rows_.data() + (3 * m) * cols_; }
  T* A(int64_t m) { return rows_.data() + (3 * m + 1) * cols_; }
  T* B(int64_t m) { return rows_.data() + (3 * m + 2) * cols_; }
  double inv_norm_p(int64_t m) const { return planes_[m].inv_norm_p; }
  double inv_norm_q(int64_t m) const { return planes_[m].inv_norm_q; }
  int64_t cols() const { return cols_; }

 private:
  struct Plane {
    const T* P;  // the kept warped map, contiguous
    PlaneView<T> target;
    MinMaxStats<T> stats;
    double inv_norm_p, inv_norm_q;
  };
  int64_t M_ = 0, cols_ = 0, y_ = 0;
  T eps_ = 0;
  std::vector<Plane> planes_;
  std::vector<T> rows_;  // Q, A, B of each m, cols values each
};

/// dL/d(one side's map x before L2 normalisation) of network i, one destination row at a time:
///   g_k = (sum_j c_j (u_k - o_j,k)) / n - dot (x_k + l2_eps) / n^3 + er_coef d'(P_k - Q_k)
/// with x = P_i, u = A_i, o_j = B_j on the source side and x = Q_i, u = B_i, o_j = A_j on the target side
/// (the other network's map is a fixed target), n = ||x + l2_eps||, c_j = 2 w_j the CMER pair weights,
/// er_coef = +-c_er the ER term's, and dot = sum_j c_j sum_l (u_l - o_j,l) x_l (the L2 backward): pass 1
/// accumulates dot over all rows (add_row_to_dot), pass 2 computes g row by row (row).
template <class T>
class SideGradient {
 public:
  void reset(bool source, int64_t i, double inv_norm, double er_coef, T l2_eps, math::Distance distance) {
    source_ = source;
    i_ = i;
    inv_norm_ = inv_norm;
    er_coef_ = er_coef;
    l2_eps_ = l2_eps;
    distance_ = distance;
    pairs_.clear();
  }

  /// Adds the CMER pair (this side, other side of network j) with weight w (skipped when w = 0).
  void add_pair(int64_t j, double w) {
    if (w != 0.0) pairs_.push_back({j, 2.0 * w, {}});
  }

  bool has_pairs() const { return !pairs_.empty(); }

  /// Pass 1: adds the current row of rows to each pair's sum of (u - o_j) x (lane k: element x % kLanes).
  void add_row_to_dot(SampleRows<T>& rows) {
    const T* u = unit(rows, i_);
    const T* xm = map(rows, i_);
    for (Pair& pair : pairs_) {
      const T* o = other_unit(rows, pair.j);
      double lanes[kLanes];  // a local copy: no aliasing with the rows (when T = double)
      std::copy_n(pair.lanes, kLanes, lanes);
      const int64_t cols = rows.cols();
      int64_t x = 0;
      for (; x + kLanes <= cols; x += kLanes) {
        for (int k = 0; k < kLanes; ++k) {
          lanes[k] += static_cast<double>(u[x + k] - o[x + k]) * static_cast<double>(xm[x + k]);
        }
      }
      for (int k = 0; x < cols; ++k, ++x) lanes[k] += static_cast<double>(u[x] - o[x]) * static_cast<double>(xm[x]);
      std::copy_n(lanes, kLanes, pair.lanes);
    }
  }

  /// The L2-backward coefficient dot / n^3; call after pass 1.
  void finish_dot() {
    double dot = 0.0;
    for (const Pair& pair : pairs_) dot += pair.coef * combine_lanes(pair.lanes);
    c_ = dot * inv_norm_ * inv_norm_ * inv_norm_;
  }

  /// Pass 2: the current row of g (cols values in T, valid until the next call).
  const T* row(SampleRows<T>& rows) {
    const int64_t cols = rows.cols();
    row_.assign(static_cast<size_t>(cols), T(0));
    T* g = row_.data();
    const T* u = unit(rows, i_);
    for (const Pair& pair : pairs_) {
      const T* o = other_unit(rows, pair.j);
      const auto coef = static_cast<T>(pair.coef);
      for (int64_t x = 0; x < cols; ++x) g[x] += coef * (u[x] - o[x]);
    }
    const T* xm = map(rows, i_);
    const T* P = rows.P(i_);
    const T* Q = rows.Q(i_);
    const auto inv_norm = static_cast<T>(inv_norm_), c = static_cast<T>(c_), er = static_cast<T>(er_coef_);
    const T l2_eps = l2_eps_;
    with_fixed_distance(distance_, [&](auto distance) {
      for (int64_t x = 0; x < cols; ++x)
        g[x] = g[x] * inv_norm - c * (xm[x] + l2_eps) + er * math::distance_grad(P[x] - Q[x], distance.value);
    });
    return g;
  }

 private:
  struct Pair {
    int64_t j;
    double coef;  // 2 w_j
    double lanes[kLanes];
  };
  const T* map(SampleRows<T>& rows, int64_t m) const { return source_ ? rows.P(m) : rows.Q(m); }
  const T* unit(SampleRows<T>& rows, int64_t m) const { return source_ ? rows.A(m) : rows.B(m); }
  const T* other_unit(SampleRows<T>& rows, int64_t m) const { return source_ ? rows.B(m) : rows.A(m); }

  bool source_ = true;
  int64_t i_ = 0;
  double inv_norm_ = 0.0, er_coef_ = 0.0, c_ = 0.0;
  T l2_eps_ = 0;
  math::Distance distance_ = math::Distance::SqL2;
  std::vector<Pair> pairs_;
  std::vector<T> row_;
};

/// One thread's working set of the backward pass, reused across samples and calls.
template <class T>
struct BackwardWork {
  SampleRows<T> rows;
  std::vector<SideGradient<T>> source, target;  // network i's two sides
  std::vector<WarpAdjoint> adjoint;             // warp adjoint of each source side
  std::vector<std::vector<double>> acc;         // its accumulator, Hs x Ws
  std::vector<MinMaxBackward<T>> target_backward;
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
    parallel_over(N, [&](int64_t begin, int64_t end) {
      // Scratch reused across samples and calls (thread_local: no fresh pages to fault in per call).
      thread_local SampleSides<scalar_t> sides;
      thread_local SampleSums<scalar_t> sums;
      thread_local std::vector<char> needed;
      for (int64_t n = begin; n < end; ++n) {
        const double y = in.labels[n];
        if (y == 0.0) {  // every term of a negative slice is weighted by y = 0; the backward skips it too
          if (keep_for_backward) std::fill_n(output_plane<scalar_t>(kept_warped, n, 0), M * HW, scalar_t(0));
          continue;
        }
        sides.compute(in, n, e, le, keep_for_backward ? output_plane<scalar_t>(kept_warped, n, 0) : nullptr);
        needed.assign(static_cast<size_t>(M * M), 0);
        for (int64_t i = 0; i < M; ++i) {
          for (int64_t j = 0; j < M; ++j) {
            if (j == i) continue;
            if (y * in.pred_t[n * M + j] != 0.0) needed[i * M + j] = 1;  // ||A_i - B_j||^2
            if (y * in.pred[n * M + j] != 0.0) needed[j * M + i] = 1;    // ||B_i - A_j||^2 = ||A_j - B_i||^2
          }
        }
        sums.compute(sides, HW, needed, distance);
        double* er = partial.data() + (n * 2 + 0) * M;
        double* cm = partial.data() + (n * 2 + 1) * M;
        for (int64_t i = 0; i < M; ++i) {
          er[i] = y * sums.er(i);
          for (int64_t j = 0; j < M; ++j) {
            if (j == i) continue;
            const double w_a = y * in.pred_t[n * M + j], w_b = y * in.pred[n * M + j];
            if (w_a != 0.0) cm[i] += w_a * sums.pair(i, j);
            if (w_b != 0.0) cm[i] += w_b * sums.pair(j, i);
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
    parallel_over(N, [&](int64_t begin, int64_t end) {
      thread_local BackwardWork<T> w;
      w.source.resize(M);
      w.target.resize(M);
      w.adjoint.resize(M);
      w.acc.resize(M);
      for (int64_t n = begin; n < end; ++n) {
        const double y = in.labels[n];
        if (y == 0.0) {
          if (need_cams) std::fill_n(output_plane<T>(grad_cams, n, 0), M * in.Hs * in.Ws, T(0));
          if (need_cams_t) std::fill_n(output_plane<T>(grad_cams_t, n, 0), M * HW, T(0));
          continue;
        }
        const double* stats = kept_stats.const_data_ptr<double>();
        w.rows.reset(in, n, kept_warped.const_data_ptr<T>(), stats, e);
        const InverseAffine inv = inverse_of_sample(in.inverses, n);
        w.target_backward.clear();
        bool any_pairs = false;
        for (int64_t i = 0; i < M; ++i) {
          const double* slot = stats + (n * M + i) * kKeptStatsPerPlane;
          const double c_er = g[i] * er_scale(in) * y;
          const double c_cm = g[M + i] * cmer_scale(in) * y;
          w.source[i].reset(true, i, 1.0 / slot[kNormP], c_er, le, distance);
          w.target[i].reset(false, i, 1.0 / slot[kNormQ], -c_er, le, distance);
          for (int64_t j = 0; j < M; ++j) {
            if (j == i) continue;
            if (need_cams) w.source[i].add_pair(j, c_cm * in.pred_t[n * M + j]);  // pairs (A_i, B_j)
            if (need_cams_t) w.target[i].add_pair(j, c_cm * in.pred[n * M + j]);  // pairs (B_i, A_j)
          }
          any_pairs = any_pairs || w.source[i].has_pairs() || w.target[i].has_pairs();
          if (need_cams) {
            w.acc[i].assign(static_cast<size_t>(in.Hs * in.Ws), 0.0);
            w.adjoint[i].begin(inv, in.Hd, in.Wd, in.Hs, in.Ws, w.acc[i].data());
          }
          if (need_cams_t) {
            w.target_backward.emplace_back(plane_of<T>(in.cams_t, n, i), stats_from<T>(slot, kDstLo), e,
                                           output_plane<T>(grad_cams_t, n, i), in.Wd);
          }
        }
        if (any_pairs) {  // pass 1: the L2-backward dot products of every side
          for (int64_t r = 0; r < in.Hd; ++r) {
            w.rows.load(r);
            for (int64_t i = 0; i < M; ++i) {
              w.source[i].add_row_to_dot(w.rows);
              w.target[i].add_row_to_dot(w.rows);
            }
          }
        }
        for (int64_t i = 0; i < M; ++i) {
          w.source[i].finish_dot();
          w.target[i].finish_dot();
        }
        // Pass 2, row by row: each source side's gradient into its warp adjoint, each target side's into
        // the min-max backward of cams_t.
        for (int64_t r = 0; r < in.Hd; ++r) {
          bool source_rows = false;
          for (int64_t i = 0; need_cams && i < M; ++i) source_rows = source_rows || w.adjoint[i].reads_row(r);
          if (!source_rows && !need_cams_t) continue;
          w.rows.load(r);
          for (int64_t i = 0; i < M; ++i) {
            if (need_cams && w.adjoint[i].reads_row(r)) w.adjoint[i].add_row(r, w.source[i].row(w.rows));
            if (need_cams_t) w.target_backward[i].add_row(r, w.target[i].row(w.rows));
          }
        }
        for (int64_t i = 0; i < M; ++i) {
          const double* slot = stats + (n * M + i) * kKeptStatsPerPlane;
          if (need_cams) {
            w.adjoint[i].finish();
            minmax_normalize_backward(plane_of<T>(in.cams, n, i), stats_from<T>(slot, kSrcLo), e,
                                      rows_of(static_cast<const double*>(w.acc[i].data()), in.Ws),
                                      output_plane<T>(grad_cams, n, i), in.Ws);
          }
          if (need_cams_t) {
            w.target_backward[i].finish([&](int64_t r) {
              w.rows.load(r);
              return w.target[i].row(w.rows);
            });
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
