// Plane-level building blocks of the CPU kernels: min-max statistics, normalisation, affine warp
// and its adjoint, L2 plane normalisation, and their backward passes.
//
// Each function works on one (H, W) plane, so a kernel parallel over planes (or samples) gives every
// thread private buffers: no atomics, and results that do not depend on the thread count.
// Reductions accumulate in double; element values keep the input precision and torch's operation order
// (mmcam_math.h), which keeps the fused op within rounding of the eager references.
#pragma once

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

/// Min / max of relu(plane) and den = (hi - lo) + eps; NaN anywhere makes lo, hi NaN (as amin/amax).
template <class T>
struct MinMaxStats {
  T lo, hi, den;
};

template <class T>
MinMaxStats<T> relu_minmax(const PlaneView<T>& p, T eps) {
  T lo = std::numeric_limits<T>::infinity();
  T hi = T(0);
  bool nan = false;
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    for (int64_t x = 0; x < p.cols; ++x) {
      const T r = math::relu(row[x]);
      nan |= (r != r);
      lo = r < lo ? r : lo;
      hi = r > hi ? r : hi;
    }
  }
  if (nan) lo = hi = std::numeric_limits<T>::quiet_NaN();
  return {lo, hi, static_cast<T>((hi - lo) + eps)};
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

/// Backward of mn for one plane. g (contiguous, rows*cols) is dL/dmn(plane); writes dL/dplane into
/// grad (row stride grad_row_stride). Ties at lo / hi share dL/dlo and dL/dhi equally.
template <class T, class A>
void minmax_normalize_backward(const PlaneView<T>& p, const MinMaxStats<T>& s, T eps, const A* g,
                               T* grad, int64_t grad_row_stride) {
  // dL/dhi = -sum g * mn / den ; dL/dlo = sum_{active} g * (mn - 1) / den.
  double g_hi = 0.0, g_lo = 0.0;
  int64_t n_hi = 0, n_lo = 0;
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    const A* gr = g + y * p.cols;
    for (int64_t x = 0; x < p.cols; ++x) {
      const T v = row[x];
      const T r = math::relu(v);
      const T u = (r - s.lo) - eps;
      if (u > T(0)) {
        const double m = static_cast<double>(u / s.den);
        g_hi -= static_cast<double>(gr[x]) * m;
        g_lo += static_cast<double>(gr[x]) * (m - 1.0);
      }
      n_hi += (r == s.hi);
      n_lo += (r == s.lo);
    }
  }
  const double den = static_cast<double>(s.den);
  const A hi_tie = n_hi ? static_cast<A>(g_hi / den / static_cast<double>(n_hi)) : A(0);
  const A lo_tie = n_lo ? static_cast<A>(g_lo / den / static_cast<double>(n_lo)) : A(0);
  for (int64_t y = 0; y < p.rows; ++y) {
    const T* row = p.row(y);
    const A* gr = g + y * p.cols;
    T* o = grad + y * grad_row_stride;
    for (int64_t x = 0; x < p.cols; ++x) {
      o[x] = static_cast<T>(math::minmax_input_grad(row[x], s.lo, s.hi, s.den, eps, gr[x], lo_tie, hi_tie));
    }
  }
}

/// Destination->source pixel map: the inverse of the source->destination matrix of one sample.
struct InverseAffine {
  double m[6];
  double src_x(int64_t x, int64_t y) const { return m[0] * x + m[1] * y + m[2]; }
  double src_y(int64_t x, int64_t y) const { return m[3] * x + m[4] * y + m[5]; }
};

/// out (dst_rows x dst_cols, row stride out_row_stride) = bilinear warp with zero padding of the
/// contiguous plane src (src_rows x src_cols) by inv (destination pixel -> source pixel).
template <class T>
void warp_plane(const T* src, int64_t src_rows, int64_t src_cols, const InverseAffine& inv,
                int64_t dst_rows, int64_t dst_cols, T* out, int64_t out_row_stride) {
  for (int64_t y = 0; y < dst_rows; ++y) {
    // Row start, then one multiply-add per pixel along the row (no accumulated drift).
    const double bx = inv.src_x(0, y), by = inv.src_y(0, y);
    T* o = out + y * out_row_stride;
    for (int64_t x = 0; x < dst_cols; ++x) {
      const double sx = bx + inv.m[0] * static_cast<double>(x);
      const double sy = by + inv.m[3] * static_cast<double>(x);
      const auto tap = math::bilinear_tap(sx, sy, src_cols, src_rows);
      o[x] = static_cast<T>(math::bilinear_sample(src, src_cols, src_cols, src_rows, tap));
    }
  }
}

/// Adjoint of warp_plane: acc (src_rows x src_cols, contiguous, zeroed by the caller) += W^T g, where g
/// is contiguous (dst_rows x dst_cols). Sequential scatter into a private plane: deterministic.
template <class A>
void warp_plane_adjoint(const A* g, int64_t dst_rows, int64_t dst_cols, const InverseAffine& inv,
                        int64_t src_rows, int64_t src_cols, double* acc) {
  int64_t index[4];
  double weight[4];
  for (int64_t y = 0; y < dst_rows; ++y) {
    const double bx = inv.src_x(0, y), by = inv.src_y(0, y);
    const A* gr = g + y * dst_cols;
    for (int64_t x = 0; x < dst_cols; ++x) {
      const double gv = static_cast<double>(gr[x]);
      if (gv == 0.0) continue;
      const double sx = bx + inv.m[0] * static_cast<double>(x);
      const double sy = by + inv.m[3] * static_cast<double>(x);
      const auto tap = math::bilinear_tap(sx, sy, src_cols, src_rows);
      const int k = math::bilinear_taps_inside(tap, src_cols, src_rows, index, weight);
      for (int j = 0; j < k; ++j) acc[index[j]] += gv * weight[j];
    }
  }
}

/// ||plane + l2_eps||_F of a contiguous plane of n elements, accumulated in double.
template <class T>
double l2_norm_shifted(const T* p, int64_t n, T l2_eps) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(static_cast<T>(p[i] + l2_eps));
    s += v * v;
  }
  return std::sqrt(s);
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
  double dot = 0.0;
  for (int64_t i = 0; i < n; ++i) dot += g[i] * static_cast<double>(p[i]);
  const double inv = 1.0 / norm;
  const double c = dot * inv * inv * inv;
  for (int64_t i = 0; i < n; ++i) {
    g[i] = g[i] * inv - c * static_cast<double>(static_cast<T>(p[i] + l2_eps));
  }
}

}  // namespace mmcam::cpu
