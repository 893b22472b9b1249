// Element-level math of the fused equivariance operator, shared by the CPU and CUDA back ends.
//
// Everything here is header-only, free of torch headers and marked host+device, so that the CPU
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda, compiled by nvcc alone) compute the same
// values with the same operation order.
//
// Conventions (docs/operator.md):
//   * A plane is an (H, W) image; pixel (x, y) is column x, row y, integer coordinates are pixel
//     centres (kornia 0.9 / grid_sample align_corners=True).
//   * matrix is the 2x3 source->destination PIXEL affine [a b c; d e f] (row-major), so that
//     dst(x, y) = src(M^-1 (x, y, 1)).
//   * mn(a) = relu(relu(a) - lo - eps) / ((hi - lo) + eps), lo / hi = min / max of relu(a) over the
//     plane; ties at lo / hi share the gradient equally (amin / amax semantics).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MMCAM_HD __host__ __device__ __forceinline__
#else
#define MMCAM_HD inline
#endif

namespace mmcam::math {

enum class Distance : int { SqL2 = 0, L1 = 1 };

/// True when x is neither infinite nor NaN (valid without fast-math, on host and device).
MMCAM_HD bool is_finite(double x) { return x - x == 0.0; }

/// Inverts the 2x3 affine m (row-major [a b c; d e f], implicit last row 0 0 1) into inv.
/// Returns false when m has a non-finite entry or is singular (inv is then left unspecified).
MMCAM_HD bool invert_affine(const double m[6], double inv[6]) {
  for (int k = 0; k < 6; ++k) {
    if (!is_finite(m[k])) return false;
  }
  const double det = m[0] * m[4] - m[1] * m[3];
  if (det == 0.0 || !is_finite(det)) return false;
  const double r = 1.0 / det;
  inv[0] = m[4] * r;
  inv[1] = -m[1] * r;
  inv[3] = -m[3] * r;
  inv[4] = m[0] * r;
  inv[2] = -(inv[0] * m[2] + inv[1] * m[5]);
  inv[5] = -(inv[3] * m[2] + inv[4] * m[5]);
  for (int k = 0; k < 6; ++k) {
    if (!is_finite(inv[k])) return false;
  }
  return true;
}

/// Makes a destination->source map read a source axis of size 1 at its single pixel for every
/// destination position, as grid_sample / kornia do with align_corners=True (the reference semantics);
/// other axes are left alone.
MMCAM_HD void collapse_singleton_axes(double inv[6], int64_t src_rows, int64_t src_cols) {
  if (src_cols == 1) inv[0] = inv[1] = inv[2] = 0.0;
  if (src_rows == 1) inv[3] = inv[4] = inv[5] = 0.0;
}

/// relu with torch's NaN semantics (relu(NaN) = NaN).
template <class T>
MMCAM_HD T relu(T x) {
  return (x <= T(0)) ? T(0) : x;
}

/// mn of one element given the plane's lo and den = (hi - lo) + eps, in torch's operation order.
template <class T>
MMCAM_HD T minmax_value(T v, T lo, T den, T eps) {
  const T u = (relu(v) - lo) - eps;
  return relu(u) / den;
}

/// Gradient of mn with respect to one input element v.
///   g        upstream gradient dL/dmn(v) of this element
///   g_lo_tie dL/dlo divided by the number of elements tied at lo
///   g_hi_tie dL/dhi divided by the number of elements tied at hi
template <class T, class A>
MMCAM_HD A minmax_input_grad(T v, T lo, T hi, T den, T eps, A g, A g_lo_tie, A g_hi_tie) {
  // Written with selects rather than branches so that CPU loops over a plane vectorise.
  const A direct = ((v - lo) - eps > T(0)) ? g / static_cast<A>(den) : A(0);
  const A out = direct + (v == hi ? g_hi_tie : A(0)) + (v == lo ? g_lo_tie : A(0));
  return v > T(0) ? out : A(0);  // relu'(v) = 0 for v <= 0
}

/// One bilinear tap: the top-left neighbour (x0, y0) and the fractional weights (wx, wy).
/// inside is false when no neighbour of (sx, sy) lies in the plane (or sx / sy is NaN).
template <class C>
struct BilinearTap {
  int64_t x0, y0;
  C wx, wy;
  bool inside;
};

/// floor(v) for v > -1, as an integer. On the host, truncation of v + 1 (> 0) avoids a libm call per
/// pixel (x86-64 has no floor instruction before SSE4.1); the rounding of v + 1 can only move v by one ulp
/// onto the next integer, which changes the interpolated value by O(ulp).
template <class C>
MMCAM_HD int64_t floor_above_minus_one(C v) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(floor(v));
#else
  return static_cast<int64_t>(v + C(1)) - 1;
#endif
}

template <class C>
MMCAM_HD BilinearTap<C> bilinear_tap(C sx, C sy, int64_t width, int64_t height) {
  BilinearTap<C> t{0, 0, C(0), C(0), false};
  if (!(sx > C(-1) && sx < C(width) && sy > C(-1) && sy < C(height))) return t;
  t.x0 = floor_above_minus_one(sx);
  t.y0 = floor_above_minus_one(sy);
  t.wx = sx - static_cast<C>(t.x0);
  t.wy = sy - static_cast<C>(t.y0);
  t.inside = true;
  return t;
}

/// Bilinear blend of the 2x2 neighbourhood v00, v01 (row y0) and v10, v11 (row y0 + 1).
template <class T, class C>
MMCAM_HD C bilinear_blend(T v00, T v01, T v10, T v11, C wx, C wy) {
  return (static_cast<C>(v00) * (C(1) - wx) + static_cast<C>(v01) * wx) * (C(1) - wy) +
         (static_cast<C>(v10) * (C(1) - wx) + static_cast<C>(v11) * wx) * wy;
}

/// Bilinear blend of the 2x2 neighbourhood r0[0], r0[1] (row y0) and r1[0], r1[1] (row y0 + 1).
template <class T, class C>
MMCAM_HD C bilinear_interior(const T* r0, const T* r1, C wx, C wy) {
  return bilinear_blend(r0[0], r0[1], r1[0], r1[1], wx, wy);
}

/// Bilinear sample with zero padding of a plane whose element (x, y) is plane[y * row_stride + x].
template <class T, class C>
MMCAM_HD C bilinear_sample(const T* plane, int64_t row_stride, int64_t width, int64_t height, const BilinearTap<C>& t) {
  if (!t.inside) return C(0);
  const int64_t x1 = t.x0 + 1, y1 = t.y0 + 1;
  if (t.x0 >= 0 && x1 < width && t.y0 >= 0 && y1 < height) {  // interior: no per-neighbour checks
    const T* r0 = plane + t.y0 * row_stride + t.x0;
    return bilinear_interior(r0, r0 + row_stride, t.wx, t.wy);
  }
  const bool x0_in = t.x0 >= 0, x1_in = x1 < width, y0_in = t.y0 >= 0, y1_in = y1 < height;
  C v = C(0);
  if (y0_in) {
    const T* row = plane + t.y0 * row_stride;
    if (x0_in) v += static_cast<C>(row[t.x0]) * ((C(1) - t.wx) * (C(1) - t.wy));
    if (x1_in) v += static_cast<C>(row[x1]) * (t.wx * (C(1) - t.wy));
  }
  if (y1_in) {
    const T* row = plane + y1 * row_stride;
    if (x0_in) v += static_cast<C>(row[t.x0]) * ((C(1) - t.wx) * t.wy);
    if (x1_in) v += static_cast<C>(row[x1]) * (t.wx * t.wy);
  }
  return v;
}

/// The four (index, weight) pairs of a tap that fall inside the plane; used by the adjoint
/// (scatter on the CPU, atomics or gather on the GPU). Returns how many were written.
template <class C>
MMCAM_HD int bilinear_taps_inside(const BilinearTap<C>& t, int64_t width, int64_t height, int64_t index[4],
                                  C weight[4]) {
  if (!t.inside) return 0;
  int k = 0;
  const int64_t x1 = t.x0 + 1, y1 = t.y0 + 1;
  const bool x0_in = t.x0 >= 0, x1_in = x1 < width, y0_in = t.y0 >= 0, y1_in = y1 < height;
  if (y0_in && x0_in) {
    index[k] = t.y0 * width + t.x0;
    weight[k++] = (C(1) - t.wx) * (C(1) - t.wy);
  }
  if (y0_in && x1_in) {
    index[k] = t.y0 * width + x1;
    weight[k++] = t.wx * (C(1) - t.wy);
  }
  if (y1_in && x0_in) {
    index[k] = y1 * width + t.x0;
    weight[k++] = (C(1) - t.wx) * t.wy;
  }
  if (y1_in && x1_in) {
    index[k] = y1 * width + x1;
    weight[k++] = t.wx * t.wy;
  }
  return k;
}

/// Per-element distance d(diff) and its derivative dd/ddiff (abs' = sign, 0 at 0, as torch).
template <class A>
MMCAM_HD A distance_value(A diff, Distance distance) {
  return distance == Distance::SqL2 ? diff * diff : (diff < A(0) ? -diff : diff);
}

template <class A>
MMCAM_HD A distance_grad(A diff, Distance distance) {
  if (distance == Distance::SqL2) return A(2) * diff;
  return diff > A(0) ? A(1) : (diff < A(0) ? A(-1) : A(0));
}

}  // namespace mmcam::math
