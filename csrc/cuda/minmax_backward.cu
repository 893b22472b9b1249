// CUDA kernels of the backward pass of the min-max normalisation mn (docs/method.md), in two passes over a
// plane set: per-tile sums (sum g*mn, sum over the active set of g, number of elements tied at hi / lo),
// reduced once per plane (sum_tiles), then the element-wise gradient, in which the ties share dL/dhi and
// dL/dlo equally (amax / amin).
#include "cuda/device_common.cuh"

namespace mmcam::cuda {
namespace {

template <class T, class G, class I>
__global__ void __launch_bounds__(kThreads)
    backward_sums_kernel(PlaneSet<T, I> x, StatsSource stats, const G* g, double eps, int64_t tiles, double* sums) {
  using V = typename Types<T>::V;
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const V e = static_cast<V>(eps);
  const Stats<V> s = load_stats<V>(stats, p);
  const T* plane = x.plane(p);
  const G* gp = g + static_cast<int64_t>(p) * x.size();
  double acc[kBackwardSumSlots] = {};
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= x.size()) break;
    const V v = x.at(plane, k), r = math::relu(v);
    const double gv = static_cast<double>(gp[k]);
    acc[0] += gv * static_cast<double>(math::minmax_value<V>(v, s.lo, s.den, e));
    acc[1] += ((r - s.lo) - e > V(0)) ? gv : 0.0;
    acc[2] += r == s.hi ? 1.0 : 0.0;
    acc[3] += r == s.lo ? 1.0 : 0.0;
  }
  block_sum(acc);
  if (threadIdx.x == 0) {
    double* out = sums + (static_cast<int64_t>(p) * tiles + tile) * kBackwardSumSlots;
    for (int k = 0; k < kBackwardSumSlots; ++k) out[k] = acc[k];
  }
}

/// grid (tiles, planes): the element-wise gradient from the plane's totals; a masked sample gets exact
/// zeros, any other sample with a NaN map (inv) NaN everywhere (kernels.h).
template <class T, class G, class I>
__global__ void __launch_bounds__(kThreads)
    backward_apply_kernel(PlaneSet<T, I> x, StatsSource stats, const G* g, const double* totals,
                          const float* sample_mask, const double* inv, double eps, T* grad) {
  using V = typename Types<T>::V;
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  T* out = grad + static_cast<int64_t>(p) * x.size();
  const int64_t n = p / x.c;
  const bool skipped = sample_mask != nullptr && sample_mask[n] == 0.0f;
  const bool invalid = inv != nullptr && !math::is_finite(inv[6 * n]);  // invert_affines wrote NaN
  const V e = static_cast<V>(eps);
  const Stats<V> s = load_stats<V>(stats, p);
  const double* total = totals + static_cast<int64_t>(p) * kBackwardSumSlots;
  const double den = static_cast<double>(s.den);
  const double hi_tie = total[2] > 0.0 ? -total[0] / den / total[2] : 0.0;
  const double lo_tie = total[3] > 0.0 ? (total[0] - total[1]) / den / total[3] : 0.0;
  const T* plane = x.plane(p);
  const G* gp = g + static_cast<int64_t>(p) * x.size();
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= x.size()) break;
    const double d = skipped   ? 0.0
                     : invalid ? NAN
                               : math::minmax_input_grad<V, double>(x.at(plane, k), s.lo, s.hi, s.den, e,
                                                                    static_cast<double>(gp[k]), lo_tie, hi_tie);
    out[k] = from_double<T>(d);
  }
}

/// Calls f(T{}, G{}, I{}) for x's dtype (G: its gradient map type) and offset type.
template <class F>
cudaError_t dispatch_with_grad(const Planes& x, F&& f) {
  const int64_t planes = x.n * x.c;
  return dispatch(x.dtype, fits_int32(extent(x), planes * x.rows * x.cols, tiles_of(x.rows * x.cols) * kTile),
                  [&](auto t, auto i) { return f(t, typename Types<decltype(t)>::G{}, i); });
}

}  // namespace

cudaError_t minmax_backward_sums(const Planes& x, StatsSource x_stats, const void* g, double eps, double* partials,
                                 double* totals, cudaStream_t stream) {
  const TileGrid grid{tiles_of(x.rows * x.cols), x.n * x.c};
  if (grid.planes == 0) return cudaSuccess;
  const cudaError_t err = dispatch_with_grad(x, [&](auto t, auto gt, auto i) {
    using T = decltype(t);
    using G = decltype(gt);
    using I = decltype(i);
    backward_sums_kernel<T, G, I><<<grid.grid(), kThreads, 0, stream>>>(
        PlaneSet<T, I>(x), x_stats, static_cast<const G*>(g), eps, grid.tiles, partials);
    return launched();
  });
  if (err != cudaSuccess) return err;
  return sum_tiles(partials, grid.planes, grid.tiles, kBackwardSumSlots, totals, stream);
}

cudaError_t minmax_backward_apply(const Planes& x, StatsSource x_stats, const void* g, const double* totals,
                                  const float* sample_mask, const double* inv, double eps, void* grad,
                                  cudaStream_t stream) {
  const TileGrid grid{tiles_of(x.rows * x.cols), x.n * x.c};
  if (grid.planes == 0) return cudaSuccess;
  return dispatch_with_grad(x, [&](auto t, auto gt, auto i) {
    using T = decltype(t);
    using G = decltype(gt);
    using I = decltype(i);
    backward_apply_kernel<T, G, I><<<grid.grid(), kThreads, 0, stream>>>(
        PlaneSet<T, I>(x), x_stats, static_cast<const G*>(g), totals, sample_mask, inv, eps, static_cast<T*>(grad));
    return launched();
  });
}

}  // namespace mmcam::cuda
