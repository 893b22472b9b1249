// CUDA kernels: destination->source maps of the samples, the min-max statistics of planes (per-tile
// partials, then one reduction per plane) and the fixed-order reduction of per-tile partial sums.
#include "cuda/device_common.cuh"

namespace mmcam::cuda {
namespace {

template <class M>
__global__ void invert_affines_kernel(const M* matrix, int64_t n, int64_t src_rows, int64_t src_cols,
                                      double* matrix_out, double* inv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double m[6], out[6];
  for (int k = 0; k < 6; ++k) m[k] = matrix_out[6 * i + k] = static_cast<double>(matrix[6 * i + k]);
  if (math::invert_affine(m, out)) {
    math::collapse_singleton_axes(out, src_rows, src_cols);
  } else {
    for (int k = 0; k < 6; ++k) out[k] = NAN;
  }
  for (int k = 0; k < 6; ++k) inv[6 * i + k] = out[k];
}

/// grid (tiles, planes): partials[(plane * tiles + tile) * kMinMaxSlots + {lo, hi, has_nan}].
template <class T, class I>
__global__ void __launch_bounds__(kThreads) minmax_partials_kernel(PlaneSet<T, I> x, int64_t tiles, double* partials) {
  using V = typename Types<T>::V;
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const T* plane = x.plane(p);
  MinMax<V> m;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k < x.size()) m.add(x.at(plane, k));
  }
  m = block_minmax(m);
  if (threadIdx.x == 0) {
    double* out = partials + (static_cast<int64_t>(p) * tiles + tile) * kMinMaxSlots;
    out[0] = m.lo;
    out[1] = m.hi;
    out[2] = m.nan ? 1.0 : 0.0;
  }
}

/// grid (planes): stats[plane * kPlaneStatSlots + {lo, hi, den}] from the plane's per-tile partials, den
/// computed in the value type V (as the CPU op). Min and max are exact: any order gives the same bits.
template <class T>
__global__ void __launch_bounds__(kThreads)
    minmax_stats_kernel(const double* partials, int64_t tiles, double eps, double* stats) {
  using V = typename Types<T>::V;
  const int64_t p = blockIdx.x;
  const double* part = partials + p * tiles * kMinMaxSlots;
  MinMax<V> m;
  for (int64_t t = threadIdx.x; t < tiles; t += kThreads) {
    m.merge(static_cast<V>(part[t * kMinMaxSlots]), static_cast<V>(part[t * kMinMaxSlots + 1]),
            part[t * kMinMaxSlots + 2] != 0.0);
  }
  m = block_minmax(m);
  if (threadIdx.x == 0) {
    const Stats<V> s = m.stats(static_cast<V>(eps));
    double* out = stats + p * kPlaneStatSlots;
    out[0] = static_cast<double>(s.lo);
    out[1] = static_cast<double>(s.hi);
    out[2] = static_cast<double>(s.den);
  }
}

/// grid (width, groups): totals[group * width + k], the sum of the group's per-tile partials of slot k with a
/// fixed assignment of tiles to threads and a fixed-order block sum.
__global__ void __launch_bounds__(kThreads)
    sum_tiles_kernel(const double* partials, int64_t tiles, int64_t width, double* totals) {
  const int64_t k = blockIdx.x, group = blockIdx.y;
  const double* part = partials + group * tiles * width + k;
  double total[1] = {0.0};
  for (int64_t t = threadIdx.x; t < tiles; t += kThreads) total[0] += part[t * width];
  block_sum(total);
  if (threadIdx.x == 0) totals[group * width + k] = total[0];
}

}  // namespace

cudaError_t invert_affines(const void* matrix, DType matrix_dtype, int64_t n, int64_t src_rows, int64_t src_cols,
                           double* matrix_out, double* inv, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  if (matrix_dtype == DType::Float64) {
    invert_affines_kernel<<<blocks, threads, 0, stream>>>(static_cast<const double*>(matrix), n, src_rows, src_cols,
                                                          matrix_out, inv);
  } else if (matrix_dtype == DType::Float32) {
    invert_affines_kernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(matrix), n, src_rows, src_cols,
                                                          matrix_out, inv);
  } else {
    return cudaErrorInvalidValue;
  }
  return launched();
}

cudaError_t plane_minmax(const Planes& x, double eps, double* partials, double* stats, cudaStream_t stream) {
  const TileGrid g{tiles_of(x.rows * x.cols), x.n * x.c};
  if (g.planes == 0) return cudaSuccess;
  return dispatch(x.dtype, fits_int32(extent(x), g.planes * g.tiles * kTile), [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    minmax_partials_kernel<T, I><<<g.grid(), kThreads, 0, stream>>>(PlaneSet<T, I>(x), g.tiles, partials);
    minmax_stats_kernel<T><<<static_cast<unsigned>(g.planes), kThreads, 0, stream>>>(partials, g.tiles, eps, stats);
    return launched();
  });
}

cudaError_t sum_tiles(const double* partials, int64_t groups, int64_t tiles, int64_t width, double* totals,
                      cudaStream_t stream) {
  if (groups == 0 || width == 0) return cudaSuccess;
  sum_tiles_kernel<<<dim3(static_cast<unsigned>(width), static_cast<unsigned>(groups)), kThreads, 0, stream>>>(
      partials, tiles, width, totals);
  return launched();
}

}  // namespace mmcam::cuda
