// Plane-level building blocks of the CPU kernels: min-max statistics, normalisation, affine warp
// and its adjoint, L2 plane normalisation, and their backward passes.
//
// Each function works on one (H, W) plane, so a kernel parallel over planes (or samples) gives every
// thread private buffers: no atomics, and results that do not depend on the thread count.
// Reductions accumulate in double; element values keep the input precision and torch's operation order
// (mmcam_math.h), which keeps the fused op within rounding of the eager references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "mmcam_math.h"

namespace mmcam::cpu {

/// A read-only (rows, cols) plane with unit column stride: element (y, x) is data[y * row_stride + x].
template <class T>
struct PlaneView {
  const T* data;
  int64_t rows, cols, row_stride;
  const T* row(int64_t y) const { return data + y * row_stride; }
};

/// Number of interleaved partial results in the reductions below. The lanes are combined in a fixed
/// order, so a reduction is bitwise reproducible, and the unrolled lanes let the compiler vectorise it
/// (an in-order floating-point reduction would not be).
constexpr int kLanes = 8;

/// Calls visit(lane, y, x) for every element of a rows x cols plane, element x of a row going to lane
/// x % kLanes.
template <class F>
void visit_in_lanes(int64_t rows, int64_t cols, F&& visit) {
  for (int64_t y = 0; y < rows; ++y) {
    int64_t x = 0;
    for (; x + kLanes <= cols; x += kLanes) {
      for (int k = 0; k < kLanes; ++k) visit(k, y, x + k);
    }
    for (int k = 0; k < cols - x; ++k) visit(k, y, x + k);
  }
}

/// The lanes' sum, combined in a fixed order.
inline double combine_lanes(const double (&acc)[kLanes]) {
  double total = 0.0;
  for (int k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

/// sum_{i < n} f(i) in double over kLanes interleaved partial sums.
template <class F>
double lane_sum(int64_t n, F&& f) {
  double acc[kLanes] = {};
  visit_in_lanes(1, n, [&](int k, int64_t, int64_t i) { acc[k] += f(i); });
  return combine_lanes(acc);
}

/// Min / max of relu(plane) and den = (hi - lo) + eps; NaN anywhere makes lo, hi NaN (as amin/amax).
template <class T>
struct MinMaxStats {
  T lo, hi, den;
};

template <class T>
MinMaxStats<T> relu_minmax(const PlaneView<T>& p, T eps) {
  T lo[kLanes], hi[kLanes], nan[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    lo[k] = std::numeric_limits<T>::infinity();
    hi[k] = T(0);
    nan[k] = T(0);
  }
  visit_in_lanes(p.rows, p.cols, [&](int k, int64_t y, int64_t x) {
    const T r = math::relu(p.row(y)[x]);
    lo[k] = r < lo[k] ? r : lo[k];
    hi[k] = r > hi[k] ? r : hi[k];
    nan[k] = r != r ? T(1) : nan[k];
  });
  for (int k = 1; k < kLanes; ++k) {
    lo[0] = lo[k] < lo[0] ? lo[k] : lo[0];
    hi[0] = hi[k] > hi[0] ? hi[k] : hi[0];
    nan[0] += nan[k];
  }
  if (nan[0] != T(0)) lo[0] = hi[0] = std::numeric_limits<T>::quiet_NaN();
  return {lo[0], hi[0], static_cast<T>((hi[0] - lo[0]) + eps)};
}

/// out[y * cols + x] = mn(plane)(y, x), out contiguous.
template <class T>
void minmax_normalize_plane(const PlaneView<T>& p, const MinMaxStats<T>& s, T eps, T* out) {
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    T* o = out + y * p.cols;
    for (int64_t x = 0; x < p.cols; ++x) o[x] = math::minmax_value(row[x], s.lo, s.den, eps);
  }
}

/// Backward of mn for one plane. normalized (contiguous) is mn(plane) from the forward pass; g
/// (contiguous) is dL/dmn(plane). Writes dL/dplane into grad (row stride grad_row_stride). Ties at lo /
/// hi share dL/dlo and dL/dhi equally (amin / amax semantics).
template <class T>
void minmax_normalize_backward(const PlaneView<T>& p, const MinMaxStats<T>& s, T eps, const T* normalized,
                               const double* g, T* grad, int64_t grad_row_stride) {
  // With m = mn = u / den on the active set (u = relu(v) - lo - eps > 0), m = 0 elsewhere:
  //   dL/dhi = -sum g m / den,   dL/dlo = sum_active g (m - 1) / den = (sum g m - sum_active g) / den.
  double g_m[kLanes] = {}, g_active[kLanes] = {}, n_hi[kLanes] = {}, n_lo[kLanes] = {};
  visit_in_lanes(p.rows, p.cols, [&](int k, int64_t y, int64_t x) {
    const T r = math::relu(p.row(y)[x]);
    const double gv = g[y * p.cols + x];
    g_m[k] += gv * static_cast<double>(normalized[y * p.cols + x]);
    g_active[k] += ((r - s.lo) - eps > T(0)) ? gv : 0.0;
    n_hi[k] += r == s.hi ? 1.0 : 0.0;
    n_lo[k] += r == s.lo ? 1.0 : 0.0;
  });
  const double sum_g_m = combine_lanes(g_m), sum_active = combine_lanes(g_active);
  const double count_hi = combine_lanes(n_hi), count_lo = combine_lanes(n_lo);
  const double den = static_cast<double>(s.den);
  const double hi_tie = count_hi > 0.0 ? -sum_g_m / den / count_hi : 0.0;
  const double lo_tie = count_lo > 0.0 ? (sum_g_m - sum_active) / den / count_lo : 0.0;
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    const double* gr = g + y * p.cols;
    T* o = grad + y * grad_row_stride;
    for (int64_t x = 0; x < p.cols; ++x) {
      o[x] = static_cast<T>(math::minmax_input_grad(row[x], s.lo, s.hi, s.den, eps, gr[x], lo_tie, hi_tie));
    }
  }
}

/// Destination->source pixel map: the inverse of the source->destination matrix of one sample.
/// Along destination row y the source position is (src_x(x, y), src_y(x, y)): a row start plus one
/// multiply-add per pixel, computed by the same expression everywhere (no accumulated drift).
struct InverseAffine {
  double m[6];
  double row_x(int64_t y) const { return m[1] * static_cast<double>(y) + m[2]; }
  double row_y(int64_t y) const { return m[4] * static_cast<double>(y) + m[5]; }
  double src_x(double row_start, int64_t x) const { return row_start + m[0] * static_cast<double>(x); }
  double src_y(double row_start, int64_t x) const { return row_start + m[3] * static_cast<double>(x); }
};

/// inv as the kernels sample with it: a singleton source axis always reads its one pixel.
inline InverseAffine sampling_map(const InverseAffine& inv, int64_t src_rows, int64_t src_cols) {
  InverseAffine out = inv;
  math::collapse_singleton_axes(out.m, src_rows, src_cols);
  return out;
}

/// The destination columns [begin, end) of one row whose source position has all four bilinear
/// neighbours inside the source plane (0 <= sx < cols - 1, 0 <= sy < rows - 1): there, the kernels run a
/// branch-free loop; the few columns outside the span take the checked path.
struct InteriorSpan {
  int64_t begin, end;
};

inline InteriorSpan interior_span(const InverseAffine& inv, double bx, double by, int64_t src_rows,
                                  int64_t src_cols, int64_t dst_cols) {
  auto interior = [&](int64_t x) {
    const double sx = inv.src_x(bx, x), sy = inv.src_y(by, x);
    return sx >= 0.0 && sx < static_cast<double>(src_cols - 1) && sy >= 0.0 &&
           sy < static_cast<double>(src_rows - 1);
  };
  // Real-valued solution of lo <= start + slope * x < hi for both coordinates, widened by a pixel;
  // the exact integer span is then found by testing its ends (the set is an interval: sx, sy are
  // monotone in x).
  double xmin = 0.0, xmax = static_cast<double>(dst_cols - 1);
  auto clip = [&](double start, double slope, double hi) {
    if (slope > 0.0) {
      xmin = std::max(xmin, (0.0 - start) / slope);
      xmax = std::min(xmax, (hi - start) / slope);
    } else if (slope < 0.0) {
      xmin = std::max(xmin, (hi - start) / slope);
      xmax = std::min(xmax, (0.0 - start) / slope);
    } else if (!(start >= 0.0 && start < hi)) {
      xmax = -1.0;
    }
  };
  clip(bx, inv.m[0], static_cast<double>(src_cols - 1));
  clip(by, inv.m[3], static_cast<double>(src_rows - 1));
  if (!(xmin <= xmax)) return {0, 0};
  InteriorSpan span{std::max<int64_t>(0, static_cast<int64_t>(std::ceil(xmin)) - 1),
                    std::min<int64_t>(dst_cols, static_cast<int64_t>(std::floor(xmax)) + 2)};
  while (span.begin < span.end && !interior(span.begin)) ++span.begin;
  while (span.end > span.begin && !interior(span.end - 1)) --span.end;
  return span;
}

/// out (dst_rows x dst_cols, row stride out_row_stride) = bilinear warp with zero padding of the
/// contiguous plane src (src_rows x src_cols) by inv (destination pixel -> source pixel).
template <class T>
void warp_plane(const T* src, int64_t src_rows, int64_t src_cols, const InverseAffine& inv_in,
                int64_t dst_rows, int64_t dst_cols, T* out, int64_t out_row_stride) {
  const InverseAffine inv = sampling_map(inv_in, src_rows, src_cols);
  for (int64_t y = 0; y < dst_rows; ++y) {
    const double bx = inv.row_x(y), by = inv.row_y(y);
    T* o = out + y * out_row_stride;
    auto checked = [&](int64_t x) {
      const auto tap = math::bilinear_tap(inv.src_x(bx, x), inv.src_y(by, x), src_cols, src_rows);
      o[x] = static_cast<T>(math::bilinear_sample(src, src_cols, src_cols, src_rows, tap));
    };
    const InteriorSpan span = interior_span(inv, bx, by, src_rows, src_cols, dst_cols);
    for (int64_t x = 0; x < span.begin; ++x) checked(x);
    for (int64_t x = span.begin; x < span.end; ++x) {
      const double sx = inv.src_x(bx, x), sy = inv.src_y(by, x);
      const int64_t x0 = static_cast<int64_t>(sx), y0 = static_cast<int64_t>(sy);  // sx, sy >= 0
      const T* r0 = src + y0 * src_cols + x0;
      o[x] = static_cast<T>(math::bilinear_interior(r0, r0 + src_cols, sx - static_cast<double>(x0),
                                                    sy - static_cast<double>(y0)));
    }
    for (int64_t x = span.end; x < dst_cols; ++x) checked(x);
  }
}

/// Adjoint of warp_plane: acc (src_rows x src_cols, contiguous, zeroed by the caller) += W^T g, where g
/// is contiguous (dst_rows x dst_cols). Sequential scatter into a private plane: deterministic.
template <class A>
void warp_plane_adjoint(const A* g, int64_t dst_rows, int64_t dst_cols, const InverseAffine& inv_in,
                        int64_t src_rows, int64_t src_cols, double* acc) {
  const InverseAffine inv = sampling_map(inv_in, src_rows, src_cols);
  int64_t index[4];
  double weight[4];
  for (int64_t y = 0; y < dst_rows; ++y) {
    const double bx = inv.row_x(y), by = inv.row_y(y);
    const A* gr = g + y * dst_cols;
    auto checked = [&](int64_t x) {
      const double gv = static_cast<double>(gr[x]);
      const auto tap = math::bilinear_tap(inv.src_x(bx, x), inv.src_y(by, x), src_cols, src_rows);
      const int k = math::bilinear_taps_inside(tap, src_cols, src_rows, index, weight);
      for (int j = 0; j < k; ++j) acc[index[j]] += gv * weight[j];
    };
    const InteriorSpan span = interior_span(inv, bx, by, src_rows, src_cols, dst_cols);
    for (int64_t x = 0; x < span.begin; ++x) checked(x);
    for (int64_t x = span.begin; x < span.end; ++x) {
      const double sx = inv.src_x(bx, x), sy = inv.src_y(by, x);
      const int64_t x0 = static_cast<int64_t>(sx), y0 = static_cast<int64_t>(sy);  // sx, sy >= 0
      const double wx = sx - static_cast<double>(x0), wy = sy - static_cast<double>(y0);
      const double gv = static_cast<double>(gr[x]);
      double* a0 = acc + y0 * src_cols + x0;
      double* a1 = a0 + src_cols;
      const double g0 = gv * (1.0 - wy), g1 = gv * wy;
      a0[0] += g0 * (1.0 - wx);
      a0[1] += g0 * wx;
      a1[0] += g1 * (1.0 - wx);
      a1[1] += g1 * wx;
    }
    for (int64_t x = span.end; x < dst_cols; ++x) checked(x);
  }
}

/// ||plane + l2_eps||_F of a contiguous plane of n elements, accumulated in double.
template <class T>
double l2_norm_shifted(const T* p, int64_t n, T l2_eps) {
  return std::sqrt(lane_sum(n, [&](int64_t i) {
    const double v = static_cast<double>(static_cast<T>(p[i] + l2_eps));
    return v * v;
  }));
}

/// unit = p / ||p + l2_eps|| (resized to p); returns the norm.
template <class T>
double l2_normalize_plane(const std::vector<T>& p, T l2_eps, std::vector<T>& unit) {
  const int64_t n = static_cast<int64_t>(p.size());
  const double norm = l2_norm_shifted(p.data(), n, l2_eps);
  unit.resize(p.size());
  for (int64_t i = 0; i < n; ++i) unit[i] = static_cast<T>(static_cast<double>(p[i]) / norm);
  return norm;
}

/// Backward of p' = p / ||p + l2_eps||: g holds dL/dp' on entry and dL/dp on exit.
///   dL/dp_k = g_k / n - (sum_j g_j p_j) (p_k + l2_eps) / n^3
template <class T>
void l2_normalize_backward(double* g, const T* p, int64_t n, double norm, T l2_eps) {
  const double dot = lane_sum(n, [&](int64_t i) { return g[i] * static_cast<double>(p[i]); });
  const double inv = 1.0 / norm;
  const double c = dot * inv * inv * inv;
  for (int64_t i = 0; i < n; ++i) {
    g[i] = g[i] * inv - c * static_cast<double>(static_cast<T>(p[i] + l2_eps));
  }
}

}  // namespace mmcam::cpu
