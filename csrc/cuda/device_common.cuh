// Device-side building blocks shared by the CUDA kernels: element types, plane addressing with 32- or
// 64-bit offsets, deterministic block reductions, and the min-max statistics of a plane.
// Torch-free (nvcc compiles the .cu files alone); element math comes from mmcam_math.h, shared with the
// CPU kernels.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/kernels.h"
#include "mmcam_math.h"

namespace mmcam::cuda {

// --- element types -------------------------------------------------------------------------------------

/// Value type V in which an element of storage type T is computed (float for the 16-bit types, which
/// are computed in float32 and rounded once when stored) and type G of the gradient maps.
// clang-format off
template <class T> struct Types { using V = T; using G = float; };
template <> struct Types<double> { using V = double; using G = double; };
template <> struct Types<__half> { using V = float; using G = float; };
template <> struct Types<__nv_bfloat16> { using V = float; using G = float; };
// clang-format on

__device__ __forceinline__ float to_value(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_value(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_value(float x) { return x; }
__device__ __forceinline__ double to_value(double x) { return x; }

template <class T> __device__ __forceinline__ T from_double(double x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __half from_double<__half>(double x) { return __double2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double x) {
  return __double2bfloat16(x);
}

/// Calls f(T{}, I{}) with T the storage type of dtype and I the offset type (int32_t when every offset
/// of the call fits, else int64_t).
template <class F>
cudaError_t dispatch(DType dtype, bool fits_int32, F&& f) {
  auto with_index = [&](auto t) { return fits_int32 ? f(t, int32_t{}) : f(t, int64_t{}); };
  switch (dtype) {
    case DType::Float32: return with_index(float{});
    case DType::Float64: return with_index(double{});
    case DType::Float16: return with_index(__half{});
    case DType::BFloat16: return with_index(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

constexpr int64_t kInt32Limit = int64_t{1} << 31;
constexpr int64_t kMaxGridPlanes = 65535;

/// Largest element offset + 1 of a plane set (how far its pointer arithmetic reaches).
inline int64_t extent(const Planes& p) {
  return 1 + (p.n - 1) * p.stride_n + (p.c - 1) * p.stride_c + (p.rows - 1) * p.stride_row + (p.cols - 1);
}

inline bool fits_int32(int64_t a, int64_t b = 0, int64_t c = 0) {
  return a < kInt32Limit && b < kInt32Limit && c < kInt32Limit;
}

/// Grid of (tiles, planes) blocks (the glue keeps planes <= kMaxGridPlanes, CUDA's limit on grid y).
struct TileGrid {
  int64_t tiles, planes;
  dim3 grid() const { return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(planes)); }
};

// --- plane addressing ---------------------------------------------------------------------------------

/// Typed device view of a Planes set with offset type I.
template <class T, class I>
struct PlaneSet {
  const T* data;
  I c, rows, cols, stride_n, stride_c, stride_row;

  explicit PlaneSet(const Planes& p)
      : data(static_cast<const T*>(p.data)), c(static_cast<I>(p.c)), rows(static_cast<I>(p.rows)),
        cols(static_cast<I>(p.cols)), stride_n(static_cast<I>(p.stride_n)), stride_c(static_cast<I>(p.stride_c)),
        stride_row(static_cast<I>(p.stride_row)) {}

  __device__ const T* plane(I p) const { return data + (p / c) * stride_n + (p % c) * stride_c; }
  __device__ I size() const { return rows * cols; }
  /// Element k (row-major index in the plane) of a plane.
  __device__ typename Types<T>::V at(const T* plane, I k) const {
    return to_value(plane[(k / cols) * stride_row + k % cols]);
  }
};

// --- deterministic block reductions -------------------------------------------------------------------

/// Sum over the block of K values per thread, in a fixed order (warp shuffles, then warp 0); the
/// result is valid in thread 0. Requires blockDim.x == kThreads.
template <int K>
__device__ void block_sum(double (&v)[K]) {
  __shared__ double warp_sums[kThreads / 32][K];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k) {
    for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
  }
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) {
    for (int k = 0; k < K; ++k) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < K; ++k) {
      v[k] = lane < kThreads / 32 ? warp_sums[lane][k] : 0.0;
      for (int offset = 16; offset > 0; offset /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
    }
  }
}

// --- min-max statistics -------------------------------------------------------------------------------

template <class V>
struct Stats {
  V lo, hi, den;
};

/// relu min / max of a partial range, with torch's NaN semantics kept in a flag.
template <class V>
struct MinMax {
  V lo = V(INFINITY), hi = V(0);
  bool nan = false;
  __device__ void add(V v) {
    const V r = math::relu(v);
    lo = r < lo ? r : lo;
    hi = r > hi ? r : hi;
    nan |= r != r;
  }
  __device__ void merge(V other_lo, V other_hi, bool other_nan) {
    lo = other_lo < lo ? other_lo : lo;
    hi = other_hi > hi ? other_hi : hi;
    nan |= other_nan;
  }
  __device__ Stats<V> stats(V eps) const {
    const V l = nan ? V(NAN) : lo, h = nan ? V(NAN) : hi;
    return {l, h, static_cast<V>((h - l) + eps)};
  }
};

/// Reduces each thread's MinMax over the block (min / max are exact, so any order is deterministic);
/// the result is valid in every thread.
template <class V>
__device__ MinMax<V> block_minmax(MinMax<V> m) {
  __shared__ double lo_s[kThreads / 32], hi_s[kThreads / 32];
  __shared__ int nan_s[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    const V lo = __shfl_down_sync(0xffffffffu, m.lo, offset), hi = __shfl_down_sync(0xffffffffu, m.hi, offset);
    const bool nan = __shfl_down_sync(0xffffffffu, static_cast<int>(m.nan), offset) != 0;
    m.merge(lo, hi, nan);
  }
  __syncthreads();
  if (lane == 0) {
    lo_s[warp] = m.lo;
    hi_s[warp] = m.hi;
    nan_s[warp] = m.nan;
  }
  __syncthreads();
  MinMax<V> out;
  for (int w = 0; w < kThreads / 32; ++w) out.merge(static_cast<V>(lo_s[w]), static_cast<V>(hi_s[w]), nan_s[w] != 0);
  return out;
}

/// The statistics of plane p (see StatsSource); the values are V values stored exactly as doubles.
template <class V>
__device__ Stats<V> load_stats(const StatsSource& s, int64_t p) {
  const double* d = s.data + p * s.stride;
  return {static_cast<V>(d[0]), static_cast<V>(d[1]), static_cast<V>(d[2])};
}

// --- sampling -----------------------------------------------------------------------------------------

/// The 6 entries of sample n's destination->source map.
struct SampleMap {
  double m[6];
  __device__ explicit SampleMap(const double* inv) {
    for (int k = 0; k < 6; ++k) m[k] = inv[k];
  }
  __device__ bool valid() const { return math::is_finite(m[0]); }  // invert_affines writes NaN otherwise
  __device__ math::BilinearTap<double> tap(int64_t x, int64_t y, int64_t src_cols, int64_t src_rows) const {
    const double sx = m[0] * static_cast<double>(x) + (m[1] * static_cast<double>(y) + m[2]);
    const double sy = m[3] * static_cast<double>(x) + (m[4] * static_cast<double>(y) + m[5]);
    return math::bilinear_tap(sx, sy, src_cols, src_rows);
  }
};

/// Bilinear sample (zero padding) of mn(plane) at a tap, as the CPU kernels compute it: each neighbour is
/// normalised in V, the blend runs in double.
template <class T, class I>
__device__ double sample_normalized(const PlaneSet<T, I>& set, const T* plane, const math::BilinearTap<double>& t,
                                    const Stats<typename Types<T>::V>& s, typename Types<T>::V eps) {
  using V = typename Types<T>::V;
  if (!t.inside) return 0.0;
  auto mn = [&](I y, I x) {
    return static_cast<double>(math::minmax_value<V>(to_value(plane[y * set.stride_row + x]), s.lo, s.den, eps));
  };
  const I x0 = static_cast<I>(t.x0), y0 = static_cast<I>(t.y0), x1 = x0 + 1, y1 = y0 + 1;
  if (x0 >= 0 && x1 < set.cols && y0 >= 0 && y1 < set.rows) {
    const double r0[2] = {mn(y0, x0), mn(y0, x1)}, r1[2] = {mn(y1, x0), mn(y1, x1)};
    return math::bilinear_interior(r0, r1, t.wx, t.wy);
  }
  double v = 0.0;
  const bool x0_in = x0 >= 0, x1_in = x1 < set.cols, y0_in = y0 >= 0, y1_in = y1 < set.rows;
  if (y0_in && x0_in) v += mn(y0, x0) * ((1.0 - t.wx) * (1.0 - t.wy));
  if (y0_in && x1_in) v += mn(y0, x1) * (t.wx * (1.0 - t.wy));
  if (y1_in && x0_in) v += mn(y1, x0) * ((1.0 - t.wx) * t.wy);
  if (y1_in && x1_in) v += mn(y1, x1) * (t.wx * t.wy);
  return v;
}

/// Launch status of the last kernel.
inline cudaError_t launched() { return cudaGetLastError(); }

}  // namespace mmcam::cuda
