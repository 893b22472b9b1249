// CUDA kernels of the warp of min-max normalised planes and its adjoint (docs/operator.md):
//   warp_normalized  P = bilinear warp (zero padding) of mn(src), one thread per destination pixel;
//   warp_adjoint     acc += W^T g, either scattered with atomics (fast) or gathered per source pixel
//                    (deterministic: the map is affine, so the destination pixels whose bilinear taps
//                    touch a source pixel lie in the image of a 2x2-pixel square, scanned in a fixed order,
//                    row by row over the columns where both source coordinates are within a pixel of it).
#include <cmath>

#include "cuda/device_common.cuh"

namespace mmcam::cuda {
namespace {

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    warp_normalized_kernel(PlaneSet<T, I> src, StatsSource stats, const double* inv, I dst_rows, I dst_cols, double eps,
                           T* out) {
  using V = typename Types<T>::V;
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const Stats<V> s = load_stats<V>(stats, p);
  const SampleMap map(inv + 6 * static_cast<int64_t>(p / src.c));
  const T* plane = src.plane(p);
  T* o = out + static_cast<int64_t>(p) * dst_rows * dst_cols;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= dst_rows * dst_cols) break;
    const I x = k % dst_cols, y = k / dst_cols;
    const double v =
        map.valid() ? sample_normalized(src, plane, map.tap(x, y, src.cols, src.rows), s, static_cast<V>(eps)) : NAN;
    o[k] = from_double<T>(static_cast<double>(static_cast<V>(v)));
  }
}

/// grid (destination tiles, planes): acc[p][taps of pixel k] += g[p][k] * tap weight.
template <class G, class I>
__global__ void __launch_bounds__(kThreads) adjoint_scatter_kernel(const G* g, I channels, I dst_rows, I dst_cols,
                                                                   const double* inv, I src_rows, I src_cols, G* acc) {
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const SampleMap map(inv + 6 * static_cast<int64_t>(p / channels));
  const G* gp = g + static_cast<int64_t>(p) * dst_rows * dst_cols;
  G* ap = acc + static_cast<int64_t>(p) * src_rows * src_cols;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= dst_rows * dst_cols) break;
    const G gv = gp[k];
    if (gv == G(0)) continue;
    int64_t index[4];
    double weight[4];
    const int taps = math::bilinear_taps_inside(map.tap(k % dst_cols, k / dst_cols, src_cols, src_rows), src_cols,
                                                src_rows, index, weight);
    for (int j = 0; j < taps; ++j) atomicAdd(ap + index[j], static_cast<G>(static_cast<double>(gv) * weight[j]));
  }
}

/// Inclusive range [lo, hi] of destination indices along one axis to scan for a source pixel.
struct ScanRange {
  int64_t lo, hi;
};

/// Clamps the real interval [lo, hi] of destination positions, widened by a pixel against rounding, to the
/// indices [0, size - 1] (empty when it misses them; infinite ends are fine).
__device__ ScanRange clamp_range(double lo, double hi, int64_t size) {
  const double l = fmax(floor(lo) - 1.0, 0.0), h = fmin(ceil(hi) + 1.0, static_cast<double>(size - 1));
  return l > h ? ScanRange{1, 0} : ScanRange{static_cast<int64_t>(l), static_cast<int64_t>(h)};
}

__device__ ScanRange intersect(ScanRange a, ScanRange b) {
  return {a.lo > b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi};
}

/// Destination rows (ys) and columns (xs) whose source position can lie within one pixel of source pixel
/// (u, v): the bounding box of the forward image of the square (u +- 1, v +- 1), widened by a pixel against
/// rounding (each candidate is then tested with the exact tap of the forward pass). With a collapsed
/// (size-1) source axis the forward matrix does not describe the sampling: the whole destination, which
/// the per-row bound of row_columns then narrows.
__device__ void scan_box(const double* fwd, int64_t u, int64_t v, int64_t dst_rows, int64_t dst_cols, bool collapsed,
                         ScanRange& xs, ScanRange& ys) {
  xs = {0, dst_cols - 1};
  ys = {0, dst_rows - 1};
  if (collapsed) return;
  double x_min = INFINITY, x_max = -INFINITY, y_min = INFINITY, y_max = -INFINITY;
  for (int corner = 0; corner < 4; ++corner) {
    const double sx = static_cast<double>(u) + ((corner & 1) ? 1.0 : -1.0);
    const double sy = static_cast<double>(v) + ((corner & 2) ? 1.0 : -1.0);
    const double dx = fwd[0] * sx + fwd[1] * sy + fwd[2], dy = fwd[3] * sx + fwd[4] * sy + fwd[5];
    x_min = fmin(x_min, dx);
    x_max = fmax(x_max, dx);
    y_min = fmin(y_min, dy);
    y_max = fmax(y_max, dy);
  }
  xs = clamp_range(x_min, x_max, dst_cols);
  ys = clamp_range(y_min, y_max, dst_rows);
}

/// Columns x of destination row y at which the source coordinate s = c[0] x + c[1] y + c[2] (one row of the
/// destination->source map) can lie in [target - 1, target + 1), i.e. at which a bilinear tap can include
/// source index target on that axis; widened by a pixel against rounding. When s does not depend on x
/// (c[0] = 0, e.g. a collapsed axis, whose row is 0) the row is kept whole or dropped.
__device__ ScanRange row_columns(const double* c, int64_t target, int64_t y, int64_t dst_cols) {
  const double rest = c[1] * static_cast<double>(y) + c[2];
  const double lo = static_cast<double>(target) - 1.0 - rest, hi = static_cast<double>(target) + 1.0 - rest;
  if (c[0] == 0.0) return (lo <= 1.0 && hi >= -1.0) ? ScanRange{0, dst_cols - 1} : ScanRange{1, 0};
  const double a = lo / c[0], b = hi / c[0];
  return a < b ? clamp_range(a, b, dst_cols) : clamp_range(b, a, dst_cols);
}

/// grid (source tiles, planes): acc[p][u, v] = sum over the destination pixels whose taps include (u, v)
/// of g * tap weight, in row-major destination order (bitwise reproducible). Each row of the scan box is
/// cut to the columns where both source coordinates can be within a pixel of (u, v): with a collapsed
/// source axis (size 1, read at its one pixel from everywhere) the scan is the strip of destination pixels
/// that sample near row v (or column u), not the whole destination.
template <class G, class I>
__global__ void __launch_bounds__(kThreads)
    adjoint_gather_kernel(const G* g, I channels, I dst_rows, I dst_cols, const double* inv, const double* matrix,
                          I src_rows, I src_cols, G* acc) {
  const I p = static_cast<I>(blockIdx.y), tile = static_cast<I>(blockIdx.x);
  const int64_t n = p / channels;
  const SampleMap map(inv + 6 * n);
  const bool collapsed = src_rows == 1 || src_cols == 1;
  const G* gp = g + static_cast<int64_t>(p) * dst_rows * dst_cols;
  G* ap = acc + static_cast<int64_t>(p) * src_rows * src_cols;
  for (int i = 0; i < kItemsPerThread; ++i) {
    const I k = tile * static_cast<I>(kTile) + i * kThreads + threadIdx.x;
    if (k >= src_rows * src_cols) break;
    if (!map.valid()) {  // a non-invertible matrix samples nothing (as the scatter path); kernels.h
      ap[k] = G(0);
      continue;
    }
    const I u = k % src_cols, v = k / src_cols;
    ScanRange box_xs, ys;
    scan_box(matrix + 6 * n, u, v, dst_rows, dst_cols, collapsed, box_xs, ys);
    double sum = 0.0;
    for (int64_t y = ys.lo; y <= ys.hi; ++y) {
      const ScanRange xs =
          intersect(box_xs, intersect(row_columns(map.m, u, y, dst_cols), row_columns(map.m + 3, v, y, dst_cols)));
      for (int64_t x = xs.lo; x <= xs.hi; ++x) {
        const math::BilinearTap<double> t = map.tap(x, y, src_cols, src_rows);
        if (!t.inside || (t.x0 != u && t.x0 + 1 != u) || (t.y0 != v && t.y0 + 1 != v)) continue;
        const double wx = t.x0 == u ? 1.0 - t.wx : t.wx, wy = t.y0 == v ? 1.0 - t.wy : t.wy;
        sum += static_cast<double>(gp[y * dst_cols + x]) * (wx * wy);
      }
    }
    ap[k] = static_cast<G>(sum);
  }
}

}  // namespace

cudaError_t warp_normalized(const Planes& src, StatsSource src_stats, const double* inv, int64_t dst_rows,
                            int64_t dst_cols, double eps, void* out, cudaStream_t stream) {
  const TileGrid g{tiles_of(dst_rows * dst_cols), src.n * src.c};
  if (g.planes == 0) return cudaSuccess;
  return dispatch(src.dtype, fits_int32(extent(src), g.planes * dst_rows * dst_cols, g.tiles * kTile),
                  [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    warp_normalized_kernel<T, I><<<g.grid(), kThreads, 0, stream>>>(PlaneSet<T, I>(src), src_stats, inv,
                                                                    static_cast<I>(dst_rows), static_cast<I>(dst_cols),
                                                                    eps, static_cast<T*>(out));
    return launched();
  });
}

cudaError_t warp_adjoint(const void* g, DType g_dtype, int64_t planes, int64_t channels, int64_t dst_rows,
                         int64_t dst_cols, const double* inv, const double* matrix, int64_t src_rows, int64_t src_cols,
                         bool deterministic, void* acc, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  const bool small = fits_int32(planes * dst_rows * dst_cols, planes * src_rows * src_cols,
                                (tiles_of(dst_rows * dst_cols) + tiles_of(src_rows * src_cols)) * kTile);
  auto launch = [&](auto gt, auto i) {
    using G = decltype(gt);
    using I = decltype(i);
    const G* gp = static_cast<const G*>(g);
    G* ap = static_cast<G*>(acc);
    if (deterministic) {
      const TileGrid grid{tiles_of(src_rows * src_cols), planes};
      adjoint_gather_kernel<G, I><<<grid.grid(), kThreads, 0, stream>>>(
          gp, static_cast<I>(channels), static_cast<I>(dst_rows), static_cast<I>(dst_cols), inv, matrix,
          static_cast<I>(src_rows), static_cast<I>(src_cols), ap);
    } else {
      const TileGrid grid{tiles_of(dst_rows * dst_cols), planes};
      adjoint_scatter_kernel<G, I><<<grid.grid(), kThreads, 0, stream>>>(
          gp, static_cast<I>(channels), static_cast<I>(dst_rows), static_cast<I>(dst_cols), inv,
          static_cast<I>(src_rows), static_cast<I>(src_cols), ap);
    }
    return launched();
  };
  if (g_dtype == DType::Float64) return small ? launch(double{}, int32_t{}) : launch(double{}, int64_t{});
  if (g_dtype == DType::Float32) return small ? launch(float{}, int32_t{}) : launch(float{}, int64_t{});
  return cudaErrorInvalidValue;
}

}  // namespace mmcam::cuda
