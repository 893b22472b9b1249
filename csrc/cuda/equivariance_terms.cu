// CUDA kernels of the fused equivariance terms (docs/method.md, docs/operator.md; the CPU version and the
// formulas are in csrc/cpu/equivariance_terms_cpu.cpp):
//
//   ER_i   = sum_n y_n sum_hw d(P_i - Q_i)                                   / (N Hd Wd)
//   CMER_i = sum_n sum_{j != i} [ y_n pt_j,n ||A_i - B_j||^2 + y_n p_j,n ||B_i - A_j||^2 ] / (2 (M-1) N Hd Wd)
//
// with P_i = warp(mn(cams[:, i])), Q_i = mn(cams_t[:, i]) and A_i, B_i their per-plane L2-normalised
// versions. A CMER pair whose weight (y pt_j or y p_j) is 0 is skipped, not added as 0 times its distance:
// a non-finite map of network j (a NaN in its CAM, or l2_eps = 0 with an all-zero map) then stays out of
// the terms of the networks that do not weigh it, as in the CPU op and in the backward pass.
// Forward: min/max statistics of both views, one pass per (plane, tile) that warps P, normalises Q
// and sums the norms and the ER distance, one pass per (sample, tile) over all modalities for the CMER
// pairs, and a final reduction with one block per term. Backward: one pass for the L2-normalisation dot
// products, one that forms dL/dP (scattered to the source grid, or stored for the deterministic gather) and dL/dQ with
// the sums of the min-max backward, then the adjoint warp and the element-wise min-max gradients.
// Every reduction is per tile, then reduced once per plane or sample in a fixed order (sum_tiles) before
// the next pass reads it: bitwise reproducible, linear in the tile count.
#include <cmath>

#include "cuda/device_common.cuh"

namespace mmcam::cuda {
namespace {

// Slots of the per-tile side sums.
enum : int { kSumSqP = 0, kSumSqQ = 1, kSumEr = 2, kSideSlots = kTermsSideSlots };

struct Scales {
  double er, cmer;
};

__host__ __device__ inline Scales scales_of(int64_t n, int64_t m, int64_t dst_rows, int64_t dst_cols) {
  const double er = 1.0 / (static_cast<double>(n) * static_cast<double>(dst_rows) * static_cast<double>(dst_cols));
  return {er, er / (2.0 * static_cast<double>(m - 1))};
}

/// F2, grid (destination tiles, N*M): P = warp(mn(cams)) into warped, Q = mn(cams_t), and per-tile sums of
/// (P + l2_eps)^2, (Q + l2_eps)^2 and d(P - Q). Samples with y = 0 get P = 0 and zero sums.
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    sides_kernel(PlaneSet<T, I> cams, PlaneSet<T, I> cams_t, StatsSource src_stats, StatsSource dst_stats,
                 const double* inv, const float* labels, int distance, double eps, double l2_eps, int64_t tiles,
                 T* warped, double* side_sums) {
  using V = typename Types<T>::V;
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const int64_t n = p / cams.c;
  const I hw = cams_t.size();
  T* out = warped + static_cast<int64_t>(p) * hw;
  double sums[kSideSlots] = {};
  const V e = static_cast<V>(eps), le = static_cast<V>(l2_eps);
  const Stats<V> s_src = load_stats<V>(src_stats, p), s_dst = load_stats<V>(dst_stats, p);
  const bool active = labels[n] != 0.0;
  const SampleMap map(inv + 6 * n);
  const T* src = cams.plane(p);
  const T* dst = cams_t.plane(p);
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= hw) break;
    if (!active) {
      out[k] = from_double<T>(0.0);
      continue;
    }
    const double sampled =
        map.valid()
            ? sample_normalized(cams, src, map.tap(k % cams_t.cols, k / cams_t.cols, cams.cols, cams.rows), s_src, e)
            : NAN;
    const T stored = from_double<T>(static_cast<double>(static_cast<V>(sampled)));
    out[k] = stored;
    const V P = to_value(stored), Q = math::minmax_value<V>(cams_t.at(dst, k), s_dst.lo, s_dst.den, e);
    const double p_shift = static_cast<double>(static_cast<V>(P + le)),
                 q_shift = static_cast<double>(static_cast<V>(Q + le));
    sums[kSumSqP] += p_shift * p_shift;
    sums[kSumSqQ] += q_shift * q_shift;
    sums[kSumEr] += static_cast<double>(math::distance_value<V>(P - Q, static_cast<math::Distance>(distance)));
  }
  block_sum(sums);
  if (threadIdx.x == 0) {
    double* o = side_sums + (static_cast<int64_t>(p) * tiles + tile) * kSideSlots;
    for (int k = 0; k < kSideSlots; ++k) o[k] = sums[k];
  }
}

/// Per-modality constants of one sample, in shared memory: 1 / ||P_m + l2_eps||, 1 / ||Q_m + l2_eps|| and
/// the min-max statistics of cams_t[n, m].
template <class V>
struct SampleConstants {
  double inv_norm_p[kMaxModalities], inv_norm_q[kMaxModalities];
  V dst_lo[kMaxModalities], dst_hi[kMaxModalities], dst_den[kMaxModalities];
};

/// One pixel k of every modality of a sample: P_m, Q_m and the L2-normalised A_m, B_m.
template <class V>
struct PixelMaps {
  V P[kMaxModalities], Q[kMaxModalities], A[kMaxModalities], B[kMaxModalities];

  template <class T, class I>
  __device__ void load(const T* warped_n, const PlaneSet<T, I>& cams_t, int64_t n, I k, int m_count,
                       const SampleConstants<V>& c, V eps) {
    const I hw = cams_t.size();
    for (int m = 0; m < kMaxModalities && m < m_count; ++m) {
      P[m] = to_value(warped_n[static_cast<int64_t>(m) * hw + k]);
      Q[m] = math::minmax_value<V>(cams_t.at(cams_t.plane(static_cast<I>(n * m_count + m)), k), c.dst_lo[m],
                                   c.dst_den[m], eps);
      A[m] = static_cast<V>(static_cast<double>(P[m]) * c.inv_norm_p[m]);
      B[m] = static_cast<V>(static_cast<double>(Q[m]) * c.inv_norm_q[m]);
    }
  }
};

/// F3, grid (destination tiles, N): per-tile CMER sums of every network (pair_sums[(n * tiles + tile) * M
/// + i]), pairs of weight 0 skipped; the first tile of each sample also writes the kept statistics of its
/// planes. side_totals: the per-plane sums of F2 (N*M x kSideSlots).
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    pairs_kernel(PlaneSet<T, I> cams_t, StatsSource src_stats, StatsSource dst_stats, const float* labels,
                 const float* pred, const float* pred_t, double eps, int64_t tiles, const T* warped,
                 const double* side_totals, double* pair_sums, double* kept_stats) {
  using V = typename Types<T>::V;
  const int M = static_cast<int>(cams_t.c);
  const int64_t n = blockIdx.y;
  const I tile = static_cast<I>(blockIdx.x);
  const V e = static_cast<V>(eps);
  const double y = labels[n];
  __shared__ SampleConstants<V> c;
  if (threadIdx.x == 0) {
    for (int m = 0; m < M; ++m) {
      const int64_t p = n * M + m;
      const double* sums = side_totals + p * kSideSlots;
      const Stats<V> s_dst = load_stats<V>(dst_stats, p);
      const Stats<V> s_src = load_stats<V>(src_stats, p);
      const double norm_p = sqrt(sums[kSumSqP]), norm_q = sqrt(sums[kSumSqQ]);
      c.inv_norm_p[m] = 1.0 / norm_p;
      c.inv_norm_q[m] = 1.0 / norm_q;
      c.dst_lo[m] = s_dst.lo;
      c.dst_hi[m] = s_dst.hi;
      c.dst_den[m] = s_dst.den;
      if (tile == 0) {
        double values[kKeptStatsPerPlane];
        values[kSrcLo] = s_src.lo;
        values[kSrcHi] = s_src.hi;
        values[kSrcDen] = s_src.den;
        values[kDstLo] = s_dst.lo;
        values[kDstHi] = s_dst.hi;
        values[kDstDen] = s_dst.den;
        values[kNormP] = norm_p;
        values[kNormQ] = norm_q;
        double* slot = kept_stats + p * kKeptStatsPerPlane;
        for (int k = 0; k < kKeptStatsPerPlane; ++k) slot[k] = y != 0.0 ? values[k] : 0.0;
      }
    }
  }
  __syncthreads();
  double cm[kMaxModalities] = {};
  const I hw = cams_t.size();
  if (y != 0.0) {
    const T* warped_n = warped + n * M * static_cast<int64_t>(hw);
    PixelMaps<V> px;
    for (int it = 0; it < kItemsPerThread; ++it) {
      const I k = tile * static_cast<I>(kTile) + it * kThreads + threadIdx.x;
      if (k >= hw) break;
      px.load(warped_n, cams_t, n, k, M, c, e);
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < M; ++j) {
          if (j == i) continue;
          const double w_a = y * pred_t[n * M + j], w_b = y * pred[n * M + j];
          const V da = px.A[i] - px.B[j], db = px.B[i] - px.A[j];
          if (w_a != 0.0) cm[i] += w_a * static_cast<double>(da * da);  // skipped, not 0 * NaN
          if (w_b != 0.0) cm[i] += w_b * static_cast<double>(db * db);
        }
      }
    }
  }
  block_sum(cm);
  if (threadIdx.x == 0) {
    for (int i = 0; i < M; ++i) pair_sums[(n * tiles + tile) * M + i] = cm[i];
  }
}

/// F4, grid (2M): block (row, m) writes terms[row, m], ER_m (row 0, from the per-plane side_totals; F2
/// writes zeros for the samples with y = 0) or CMER_m (row 1, from the per-(sample, tile) pair_sums), with
/// a fixed thread assignment and a fixed-order block sum.
template <class T>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(int64_t N, int M, int64_t tiles, Scales scale, const float* labels, const double* side_totals,
                    const double* pair_sums, T* terms) {
  const int row = blockIdx.x / M, m = blockIdx.x % M;
  double total[1] = {0.0};
  if (row == 0) {
    for (int64_t n = threadIdx.x; n < N; n += kThreads) {
      total[0] += labels[n] * side_totals[(n * M + m) * kSideSlots + kSumEr];
    }
  } else {
    for (int64_t j = threadIdx.x; j < N * tiles; j += kThreads) total[0] += pair_sums[j * M + m];
  }
  block_sum(total);
  if (threadIdx.x == 0) terms[row * M + m] = from_double<T>(total[0] * (row == 0 ? scale.er : scale.cmer));
}

// --- backward -----------------------------------------------------------------------------------------

/// The problem as the backward kernels read it: typed views of both CAM sets (built on the host) and the
/// per-sample inputs and options of TermsProblem.
template <class T, class I>
struct TermsViews {
  PlaneSet<T, I> cams, cams_t;
  const double* inv;
  const float *labels, *pred, *pred_t;
  int distance;
  double eps, l2_eps;
  explicit TermsViews(const TermsProblem& p)
      : cams(p.cams), cams_t(p.cams_t), inv(p.inv), labels(p.labels), pred(p.pred), pred_t(p.pred_t),
        distance(p.distance), eps(p.eps), l2_eps(p.l2_eps) {}
};

/// What the backward kernels read besides the problem: the upstream gradient, what the forward pass kept
/// and, in B2, B1's dot products.
template <class T>
struct BackwardInputs {
  const double* grad;        // (2, M): dL/dER_m, dL/dCMER_m
  Scales scale;              // of the terms (scales_of)
  int64_t tiles;             // destination tiles per plane
  const T* warped;           // the kept P (N, M, Hd, Wd)
  const double* kept_stats;  // (N, M, kKeptStatsPerPlane), kept_stats.h
  const double* dot_totals;  // B1's dot products summed over the tiles (N x 2M); read by B2 only
};

/// What B2 writes: dL/dP (stored in grad_warped on the deterministic path, else scattered into acc), dL/dQ
/// (grad_target) and the per-tile sums of the min-max backward of cams_t (dst_sums).
template <class G>
struct GradOutputs {
  bool need_cams, need_cams_t, deterministic;
  G* grad_warped;    // N*M x Hd*Wd (deterministic path only)
  G* acc;            // N*M x Hs*Ws
  G* grad_target;    // N*M x Hd*Wd
  double* dst_sums;  // N*M x tiles x kBackwardSumSlots
};

/// Loads the kept per-modality constants of sample n into shared memory (every thread must call it).
template <class V>
__device__ void load_kept_constants(const double* kept_stats, int64_t n, int M, SampleConstants<V>& c) {
  if (threadIdx.x < M) {
    const double* slot = kept_stats + (n * M + threadIdx.x) * kKeptStatsPerPlane;
    c.inv_norm_p[threadIdx.x] = 1.0 / slot[kNormP];
    c.inv_norm_q[threadIdx.x] = 1.0 / slot[kNormQ];
    c.dst_lo[threadIdx.x] = static_cast<V>(slot[kDstLo]);
    c.dst_hi[threadIdx.x] = static_cast<V>(slot[kDstHi]);
    c.dst_den[threadIdx.x] = static_cast<V>(slot[kDstDen]);
  }
  __syncthreads();
}

/// dL/dA_i and dL/dB_i of the CMER pairs at one pixel (the other network's map is a fixed target):
///   gA_i = sum_{j != i} 2 c_i pt_j (A_i - B_j),   gB_i = sum_{j != i} 2 c_i p_j (B_i - A_j),
/// c_i = dL/dCMER_i * cmer scale * y.
template <class V>
__device__ void pair_gradients(const PixelMaps<V>& px, int M, const double* c_cm, const float* pred_n,
                               const float* pred_t_n, double* g_a, double* g_b) {
  for (int i = 0; i < M; ++i) {
    double a = 0.0, b = 0.0;
    for (int j = 0; j < M; ++j) {
      if (j == i) continue;
      const double w_a = c_cm[i] * pred_t_n[j], w_b = c_cm[i] * pred_n[j];
      if (w_a != 0.0) a += 2.0 * w_a * static_cast<double>(px.A[i] - px.B[j]);
      if (w_b != 0.0) b += 2.0 * w_b * static_cast<double>(px.B[i] - px.A[j]);
    }
    g_a[i] = a;
    g_b[i] = b;
  }
}

/// Per-sample coefficients of the backward pass: c_er[i] = dL/dER_i * er scale * y, c_cm[i] likewise.
struct Coefficients {
  double c_er[kMaxModalities], c_cm[kMaxModalities];
  __device__ Coefficients(const double* grad, int M, Scales scale, double y) {
    for (int i = 0; i < M; ++i) {
      c_er[i] = grad[i] * scale.er * y;
      c_cm[i] = grad[M + i] * scale.cmer * y;
    }
  }
};

/// B1, grid (destination tiles, N): per-tile dot products sum_k gA_i P_i and sum_k gB_i Q_i
/// (dot_sums[(n * tiles + tile) * 2M + {i, M + i}]), the L2-normalisation backward needs them.
template <class T, class I>
__global__ void __launch_bounds__(kThreads) dots_kernel(TermsViews<T, I> p, BackwardInputs<T> in, double* dot_sums) {
  using V = typename Types<T>::V;
  const PlaneSet<T, I>& cams_t = p.cams_t;
  const int M = static_cast<int>(cams_t.c);
  const int64_t n = blockIdx.y;
  const I tile = static_cast<I>(blockIdx.x);
  const double y = p.labels[n];
  __shared__ SampleConstants<V> c;
  load_kept_constants(in.kept_stats, n, M, c);
  double dots[2 * kMaxModalities] = {};
  const I hw = cams_t.size();
  if (y != 0.0) {
    const Coefficients coef(in.grad, M, in.scale, y);
    const T* warped_n = in.warped + n * M * static_cast<int64_t>(hw);
    PixelMaps<V> px;
    double g_a[kMaxModalities], g_b[kMaxModalities];
    for (int it = 0; it < kItemsPerThread; ++it) {
      const I k = tile * static_cast<I>(kTile) + it * kThreads + threadIdx.x;
      if (k >= hw) break;
      px.load(warped_n, cams_t, n, k, M, c, static_cast<V>(p.eps));
      pair_gradients(px, M, coef.c_cm, p.pred + n * M, p.pred_t + n * M, g_a, g_b);
      for (int i = 0; i < M; ++i) {
        dots[i] += g_a[i] * static_cast<double>(px.P[i]);
        dots[M + i] += g_b[i] * static_cast<double>(px.Q[i]);
      }
    }
  }
  block_sum(dots);
  if (threadIdx.x == 0) {
    for (int k = 0; k < 2 * M; ++k) dot_sums[(n * in.tiles + tile) * 2 * M + k] = dots[k];
  }
}

/// B2, grid (destination tiles, N): dL/dP_i and dL/dQ_i at every pixel,
///   dL/dP_i = gA_i / |P| - dotA_i (P_i + l2_eps) / |P|^3 + c_er_i d'(P_i - Q_i)
///   dL/dQ_i = gB_i / |Q| - dotB_i (Q_i + l2_eps) / |Q|^3 - c_er_i d'(P_i - Q_i);
/// dL/dP goes to the source grid (atomic scatter into acc) or to grad_warped (deterministic path);
/// dL/dQ to grad_target, with the per-tile sums of the min-max backward of cams_t (dst_sums). dot_totals:
/// B1's dot products summed over the tiles (N x 2M).
template <class T, class G, class I>
__global__ void __launch_bounds__(kThreads) grads_kernel(TermsViews<T, I> p, BackwardInputs<T> in, GradOutputs<G> out) {
  using V = typename Types<T>::V;
  const PlaneSet<T, I>& cams = p.cams;
  const PlaneSet<T, I>& cams_t = p.cams_t;
  const int M = static_cast<int>(cams_t.c);
  const int64_t n = blockIdx.y;
  const I tile = static_cast<I>(blockIdx.x);
  const double y = p.labels[n];
  const V e = static_cast<V>(p.eps), le = static_cast<V>(p.l2_eps);
  __shared__ SampleConstants<V> c;
  load_kept_constants(in.kept_stats, n, M, c);
  const double* dot_a = in.dot_totals + n * 2 * M;
  const double* dot_b = dot_a + M;
  const I hw = cams_t.size();
  double sums[kMaxModalities * kBackwardSumSlots] = {};
  const SampleMap map(p.inv + 6 * n);
  const T* warped_n = in.warped + n * M * static_cast<int64_t>(hw);
  const Coefficients coef(in.grad, M, in.scale, y);
  PixelMaps<V> px;
  double g_a[kMaxModalities], g_b[kMaxModalities];
  for (int it = 0; it < kItemsPerThread; ++it) {
    const I k = tile * static_cast<I>(kTile) + it * kThreads + threadIdx.x;
    if (k >= hw) break;
    if (y == 0.0) {
      for (int i = 0; i < M; ++i) {
        if (out.need_cams && out.deterministic) out.grad_warped[(n * M + i) * hw + k] = G(0);
        if (out.need_cams_t) out.grad_target[(n * M + i) * hw + k] = G(0);
      }
      continue;
    }
    px.load(warped_n, cams_t, n, k, M, c, e);
    pair_gradients(px, M, coef.c_cm, p.pred + n * M, p.pred_t + n * M, g_a, g_b);
    for (int i = 0; i < M; ++i) {
      const int64_t plane = n * M + i;
      const double er =
          math::distance_grad<double>(static_cast<double>(px.P[i] - px.Q[i]), static_cast<math::Distance>(p.distance));
      if (out.need_cams) {
        const double inv_p = c.inv_norm_p[i];
        const double g_p = g_a[i] * inv_p -
                           dot_a[i] * inv_p * inv_p * inv_p * static_cast<double>(static_cast<V>(px.P[i] + le)) +
                           coef.c_er[i] * er;
        if (out.deterministic) {
          out.grad_warped[plane * hw + k] = static_cast<G>(g_p);
        } else if (g_p != 0.0) {
          int64_t index[4];
          double weight[4];
          const int taps = math::bilinear_taps_inside(map.tap(k % cams_t.cols, k / cams_t.cols, cams.cols, cams.rows),
                                                      cams.cols, cams.rows, index, weight);
          G* a = out.acc + plane * cams.size();
          for (int j = 0; j < taps; ++j) atomicAdd(a + index[j], static_cast<G>(g_p * weight[j]));
        }
      }
      if (out.need_cams_t) {
        const double inv_q = c.inv_norm_q[i];
        const G g_q = static_cast<G>(
            g_b[i] * inv_q - dot_b[i] * inv_q * inv_q * inv_q * static_cast<double>(static_cast<V>(px.Q[i] + le)) -
            coef.c_er[i] * er);
        out.grad_target[plane * hw + k] = g_q;
        const V r = math::relu(cams_t.at(cams_t.plane(static_cast<I>(plane)), k));
        double* s = sums + i * kBackwardSumSlots;
        s[0] += static_cast<double>(g_q) * static_cast<double>(px.Q[i]);
        s[1] += ((r - c.dst_lo[i]) - e > V(0)) ? static_cast<double>(g_q) : 0.0;
        s[2] += r == c.dst_hi[i] ? 1.0 : 0.0;
        s[3] += r == c.dst_lo[i] ? 1.0 : 0.0;
      }
    }
  }
  if (!out.need_cams_t) return;  // uniform across the block
  block_sum(sums);
  if (threadIdx.x == 0) {
    for (int i = 0; i < M; ++i) {
      double* o = out.dst_sums + ((n * M + i) * in.tiles + tile) * kBackwardSumSlots;
      for (int k = 0; k < kBackwardSumSlots; ++k) o[k] = sums[i * kBackwardSumSlots + k];
    }
  }
}

/// Calls f(T{}, I{}) for the problem's dtype and an offset type covering both views and the workspaces.
template <class F>
cudaError_t dispatch_terms(const TermsProblem& p, F&& f) {
  const int64_t planes = p.cams.n * p.cams.c;
  const int64_t reach = planes * (p.cams.rows * p.cams.cols + p.cams_t.rows * p.cams_t.cols);
  return dispatch(p.cams.dtype, fits_int32(extent(p.cams), extent(p.cams_t), reach + 2 * planes * kTile), f);
}

}  // namespace

cudaError_t equivariance_terms_forward(const TermsProblem& p, const TermsForwardWorkspace& ws, void* terms,
                                       void* warped, double* stats, cudaStream_t stream) {
  const int64_t N = p.cams.n, M = p.cams.c, Hd = p.cams_t.rows, Wd = p.cams_t.cols;
  if (M < 2 || M > kMaxModalities) return cudaErrorInvalidValue;
  if (cudaError_t err = plane_minmax(p.cams, p.eps, ws.src_partials, ws.src_stats, stream); err != cudaSuccess) {
    return err;
  }
  if (cudaError_t err = plane_minmax(p.cams_t, p.eps, ws.dst_partials, ws.dst_stats, stream); err != cudaSuccess) {
    return err;
  }
  const int64_t tiles = tiles_of(Hd * Wd);
  const StatsSource src_stats{ws.src_stats, kPlaneStatSlots};
  const StatsSource dst_stats{ws.dst_stats, kPlaneStatSlots};
  return dispatch_terms(p, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const PlaneSet<T, I> cams(p.cams), cams_t(p.cams_t);
    if (N > 0) {
      sides_kernel<T, I><<<TileGrid{tiles, N * M}.grid(), kThreads, 0, stream>>>(
          cams, cams_t, src_stats, dst_stats, p.inv, p.labels, p.distance, p.eps, p.l2_eps, tiles,
          static_cast<T*>(warped), ws.side_sums);
      if (cudaError_t err = launched(); err != cudaSuccess) return err;
      if (cudaError_t err = sum_tiles(ws.side_sums, N * M, tiles, kSideSlots, ws.side_totals, stream);
          err != cudaSuccess) {
        return err;
      }
      pairs_kernel<T, I><<<TileGrid{tiles, N}.grid(), kThreads, 0, stream>>>(
          cams_t, src_stats, dst_stats, p.labels, p.pred, p.pred_t, p.eps, tiles, static_cast<const T*>(warped),
          ws.side_totals, ws.pair_sums, stats);
    }
    finalize_kernel<T><<<static_cast<unsigned>(2 * M), kThreads, 0, stream>>>(
        N, static_cast<int>(M), tiles, scales_of(N, M, Hd, Wd), p.labels, ws.side_totals, ws.pair_sums,
        static_cast<T*>(terms));
    return launched();
  });
}

cudaError_t equivariance_terms_backward(const TermsProblem& p, const double* grad, const void* warped,
                                        const double* stats, bool deterministic, const TermsBackwardWorkspace& ws,
                                        void* grad_cams, void* grad_cams_t, cudaStream_t stream) {
  const int64_t N = p.cams.n, M = p.cams.c, Hd = p.cams_t.rows, Wd = p.cams_t.cols;
  const int64_t Hs = p.cams.rows, Ws = p.cams.cols;
  if (M < 2 || M > kMaxModalities) return cudaErrorInvalidValue;
  if (N == 0 || (grad_cams == nullptr && grad_cams_t == nullptr)) return cudaSuccess;
  const bool need_cams = grad_cams != nullptr, need_cams_t = grad_cams_t != nullptr;
  const int64_t tiles = tiles_of(Hd * Wd);
  const Scales scale = scales_of(N, M, Hd, Wd);
  const int64_t g_size = grad_map_element_size(p.cams.dtype);
  if (need_cams) {
    if (cudaError_t err = cudaMemsetAsync(ws.acc, 0, N * M * Hs * Ws * g_size, stream); err != cudaSuccess) return err;
  }
  cudaError_t err = dispatch_terms(p, [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    using G = typename Types<T>::G;
    const BackwardInputs<T> in{grad, scale, tiles, static_cast<const T*>(warped), stats, ws.dot_totals};
    const TermsViews<T, I> views(p);
    dots_kernel<T, I><<<TileGrid{tiles, N}.grid(), kThreads, 0, stream>>>(views, in, ws.dot_sums);
    if (cudaError_t e = launched(); e != cudaSuccess) return e;
    if (cudaError_t e = sum_tiles(ws.dot_sums, N, tiles, 2 * M, ws.dot_totals, stream); e != cudaSuccess) return e;
    const GradOutputs<G> out{need_cams,
                             need_cams_t,
                             deterministic,
                             static_cast<G*>(ws.grad_warped),
                             static_cast<G*>(ws.acc),
                             static_cast<G*>(ws.grad_target),
                             ws.dst_sums};
    grads_kernel<T, G, I><<<TileGrid{tiles, N}.grid(), kThreads, 0, stream>>>(views, in, out);
    return launched();
  });
  if (err != cudaSuccess) return err;
  const DType g_dtype = g_size == 8 ? DType::Float64 : DType::Float32;
  if (need_cams) {
    if (deterministic) {
      err = warp_adjoint(ws.grad_warped, g_dtype, N * M, M, Hd, Wd, p.inv, p.matrix, Hs, Ws, true, ws.acc, stream);
      if (err != cudaSuccess) return err;
    }
    const StatsSource src_stats{stats + kSrcLo, kKeptStatsPerPlane};
    err = minmax_backward_sums(p.cams, src_stats, ws.acc, p.eps, ws.src_sums, ws.src_totals, stream);
    if (err != cudaSuccess) return err;
    err = minmax_backward_apply(p.cams, src_stats, ws.acc, ws.src_totals, p.labels, p.inv, p.eps, grad_cams, stream);
    if (err != cudaSuccess) return err;
  }
  if (need_cams_t) {
    err = sum_tiles(ws.dst_sums, N * M, tiles, kBackwardSumSlots, ws.dst_totals, stream);
    if (err != cudaSuccess) return err;
    const StatsSource dst_stats{stats + kDstLo, kKeptStatsPerPlane};
    err = minmax_backward_apply(p.cams_t, dst_stats, ws.grad_target, ws.dst_totals, p.labels, p.inv, p.eps, grad_cams_t,
                                stream);
  }
  return err;
}

}  // namespace mmcam::cuda
