// Plane-level building blocks of the CPU kernels: min-max statistics and normalisation, L2 plane
// normalisation, and their backward passes (the warp is in warp_plane.h).
//
// Each function works on one (H, W) plane, so a kernel parallel over planes (or samples) gives every
// thread private buffers: no atomics, and results that do not depend on the thread count.
// Reductions accumulate in double; element values keep the input precision and torch's operation order
// (mmcam_math.h), which keeps the fused op within rounding of the eager references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

/// A 16-byte SIMD vector of T (GCC/Clang vector extension: SSE2 on x86-64, NEON on ARM) and loads
/// from unaligned memory.
template <class T>
struct Vec16 {
  typedef T type __attribute__((vector_size(16)));
  static constexpr int kWidth = 16 / sizeof(T);
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(type));
    return v;
  }
  static type splat(T x) {
    type v;
    for (int k = 0; k < kWidth; ++k) v[k] = x;
    return v;
  }
};

template <class T>
MinMaxStats<T> relu_minmax(const PlaneView<T>& p, T eps) {
  using V = Vec16<T>;
  using vec = typename V::type;
  constexpr int W = V::kWidth;
  const vec zero = V::splat(T(0)), one = V::splat(T(1));
  vec lo = V::splat(std::numeric_limits<T>::infinity()), hi = zero, nan = zero;
  T lo_s = std::numeric_limits<T>::infinity(), hi_s = T(0);
  bool nan_s = false;
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    int64_t x = 0;
    for (; x + W <= p.cols; x += W) {
      const vec v = V::load(row + x);
      const vec r = (v <= zero) ? zero : v;  // relu, NaN kept
      lo = (r < lo) ? r : lo;
      hi = (r > hi) ? r : hi;
      nan = (r != r) ? one : nan;
    }
    for (; x < p.cols; ++x) {
      const T r = math::relu(row[x]);
      lo_s = r < lo_s ? r : lo_s;
      hi_s = r > hi_s ? r : hi_s;
      nan_s |= r != r;
    }
  }
  for (int k = 0; k < W; ++k) {
    lo_s = lo[k] < lo_s ? lo[k] : lo_s;
    hi_s = hi[k] > hi_s ? hi[k] : hi_s;
    nan_s |= nan[k] != T(0);
  }
  if (nan_s) lo_s = hi_s = std::numeric_limits<T>::quiet_NaN();
  return {lo_s, hi_s, static_cast<T>((hi_s - lo_s) + eps)};
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
  const double inv = 1.0 / norm;  // one division per plane; the product is within an ulp of p / norm
  for (int64_t i = 0; i < n; ++i) unit[i] = static_cast<T>(static_cast<double>(p[i]) * inv);
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
