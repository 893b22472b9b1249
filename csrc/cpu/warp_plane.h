// The bilinear affine warp of one plane (zero padding) and its adjoint, on the CPU.
//
// Two implementations behind one entry point each:
//   * separable maps (the matrix has no rotation/shear part, or is a pure axis swap as in a 90-degree
//     rotation): the taps of each destination column and row are computed once per plane, and the
//     interpolation runs as a vertical blend of two source rows (vectorisable) followed by a horizontal
//     gather. Flips, 90-degree rotations, translations and resizes -- the paper's transform families --
//     all take this path. Where the taps are integer (flips, 90-degree rotations, integer shifts) and the
//     rows finite, a row is a plain gather (forward) or scatter (adjoint): no blend through a row buffer;
//     where they also form a unit-stride run (flips, integer shifts), a copy forwards or backwards. Unit-
//     stride runs of two-tap outputs (translations) skip the per-output index loads.
//   * any other affine map: per-pixel coordinates, branch-free inside the span of fully interior pixels, where
//     the coordinates, the blend (forward) and the tap products (adjoint) are formed a chunk of pixels at a time
//     in vectorised loops around a scalar gather or scatter.
// Both are deterministic; the adjoints scatter into a plane private to the calling thread.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mmcam_math.h"

namespace mmcam::cpu {

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

inline InteriorSpan interior_span(const InverseAffine& inv, double bx, double by, int64_t src_rows, int64_t src_cols,
                                  int64_t dst_cols) {
  auto interior = [&](int64_t x) {
    const double sx = inv.src_x(bx, x), sy = inv.src_y(by, x);
    return sx >= 0.0 && sx < static_cast<double>(src_cols - 1) && sy >= 0.0 && sy < static_cast<double>(src_rows - 1);
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

/// The bilinear coordinates of a run of at most kSize consecutive pixels of one destination row, all inside
/// the interior span, formed in a loop the compiler vectorises: pixel x = begin + k samples the source at
/// (x0[k] + wx[k], y0[k] + wy[k]), with the double arithmetic of InverseAffine::src_x / src_y and
/// math::bilinear_tap (truncation is floor there: sx, sy >= 0). Indices are int32 (AVX2 converts doubles to
/// int32 lanes only), so the source axes must fit it: fits_int32_taps.
struct InteriorTaps {
  static constexpr int kSize = 64;
  int32_t x0[kSize], y0[kSize];
  double wx[kSize], wy[kSize];

  void compute(const InverseAffine& inv, double bx, double by, int64_t begin, int len) {
    const double m0 = inv.m[0], m3 = inv.m[3], first = static_cast<double>(begin);
    for (int k = 0; k < len; ++k) {
      const double x = first + static_cast<double>(k);  // exact: the same double as static_cast<double>(begin + k)
      const double sx = bx + m0 * x, sy = by + m3 * x;
      const auto ix = static_cast<int32_t>(sx), iy = static_cast<int32_t>(sy);
      x0[k] = ix;
      y0[k] = iy;
      wx[k] = sx - static_cast<double>(ix);
      wy[k] = sy - static_cast<double>(iy);
    }
  }
};

/// Whether every interior tap index of a src_rows x src_cols source fits InteriorTaps' int32 lanes.
inline bool fits_int32_taps(int64_t src_rows, int64_t src_cols) {
  return src_rows <= INT32_MAX && src_cols <= INT32_MAX;
}

/// warp_plane for any affine map: per-pixel coordinates. Inside the interior span (all four neighbours in
/// the source) a chunk of pixels goes through three loops: coordinates (vectorised), the four neighbours'
/// loads (scalar), the blend (vectorised); the pixels outside it take the checked path.
template <class T>
void warp_plane_general(const T* src, int64_t src_rows, int64_t src_cols, const InverseAffine& inv, int64_t dst_rows,
                        int64_t dst_cols, T* out, int64_t out_row_stride) {
  InteriorTaps taps;
  T v00[InteriorTaps::kSize], v01[InteriorTaps::kSize], v10[InteriorTaps::kSize], v11[InteriorTaps::kSize];
  const bool chunked = fits_int32_taps(src_rows, src_cols);
  for (int64_t y = 0; y < dst_rows; ++y) {
    const double bx = inv.row_x(y), by = inv.row_y(y);
    T* o = out + y * out_row_stride;
    auto checked = [&](int64_t x) {
      const auto tap = math::bilinear_tap(inv.src_x(bx, x), inv.src_y(by, x), src_cols, src_rows);
      o[x] = static_cast<T>(math::bilinear_sample(src, src_cols, src_cols, src_rows, tap));
    };
    const InteriorSpan span = chunked ? interior_span(inv, bx, by, src_rows, src_cols, dst_cols) : InteriorSpan{0, 0};
    for (int64_t x = 0; x < span.begin; ++x) checked(x);
    for (int64_t begin = span.begin; begin < span.end; begin += InteriorTaps::kSize) {
      const int len = static_cast<int>(std::min<int64_t>(InteriorTaps::kSize, span.end - begin));
      taps.compute(inv, bx, by, begin, len);
      for (int k = 0; k < len; ++k) {
        const T* r0 = src + static_cast<int64_t>(taps.y0[k]) * src_cols + taps.x0[k];
        v00[k] = r0[0];
        v01[k] = r0[1];
        v10[k] = r0[src_cols];
        v11[k] = r0[src_cols + 1];
      }
      T* ob = o + begin;
      for (int k = 0; k < len; ++k) {
        ob[k] = static_cast<T>(math::bilinear_blend(v00[k], v01[k], v10[k], v11[k], taps.wx[k], taps.wy[k]));
      }
    }
    for (int64_t x = span.end; x < dst_cols; ++x) checked(x);
  }
}

/// One destination row of the adjoint of warp_plane_general: acc (src_rows x src_cols, contiguous) +=
/// (row y of W)^T g, a sequential scatter of four taps per destination pixel (g: dst_cols values).
template <class G>
void general_adjoint_row(const G* gr, int64_t y, int64_t dst_cols, const InverseAffine& inv, int64_t src_rows,
                         int64_t src_cols, double* acc) {
  int64_t index[4];
  double weight[4];
  const double bx = inv.row_x(y), by = inv.row_y(y);
  auto checked = [&](int64_t x) {
    const double gv = static_cast<double>(gr[x]);
    const auto tap = math::bilinear_tap(inv.src_x(bx, x), inv.src_y(by, x), src_cols, src_rows);
    const int k = math::bilinear_taps_inside(tap, src_cols, src_rows, index, weight);
    for (int j = 0; j < k; ++j) acc[index[j]] += gv * weight[j];
  };
  const bool chunked = fits_int32_taps(src_rows, src_cols);
  const InteriorSpan span = chunked ? interior_span(inv, bx, by, src_rows, src_cols, dst_cols) : InteriorSpan{0, 0};
  for (int64_t x = 0; x < span.begin; ++x) checked(x);
  // Inside the span, a chunk at a time: the coordinates and the four products g (1 - wy) (1 - wx),
  // g wy (1 - wx) (left column of the 2x2 footprint), g (1 - wy) wx, g wy wx (right column) in vectorised
  // loops, then the scatter. There, the right column of a pixel's footprint is held back in registers
  // (pending): when the next pixel's footprint starts one column further in the same rows (the common case),
  // the held values join its left column in one addition; otherwise they are added on their own. Each
  // product is added once either way, and consecutive pixels no longer read back the element just written
  // (a store-to-load chain that bounded this loop).
  InteriorTaps taps;
  double left0[InteriorTaps::kSize], left1[InteriorTaps::kSize], right0[InteriorTaps::kSize],
      right1[InteriorTaps::kSize];
  double* pending = nullptr;  // acc element of the held top-right product; the bottom one is a row below
  double held0 = 0.0, held1 = 0.0;
  for (int64_t begin = span.begin; begin < span.end; begin += InteriorTaps::kSize) {
    const int len = static_cast<int>(std::min<int64_t>(InteriorTaps::kSize, span.end - begin));
    taps.compute(inv, bx, by, begin, len);
    const G* g = gr + begin;
    for (int k = 0; k < len; ++k) {
      const double gv = static_cast<double>(g[k]), wx = taps.wx[k], wy = taps.wy[k];
      const double g0 = gv * (1.0 - wy), g1 = gv * wy;
      left0[k] = g0 * (1.0 - wx);
      left1[k] = g1 * (1.0 - wx);
      right0[k] = g0 * wx;
      right1[k] = g1 * wx;
    }
    for (int k = 0; k < len; ++k) {
      double* a0 = acc + static_cast<int64_t>(taps.y0[k]) * src_cols + taps.x0[k];
      double l0 = left0[k], l1 = left1[k];
      if (pending == a0) {
        l0 = held0 + l0;
        l1 = held1 + l1;
      } else if (pending != nullptr) {
        pending[0] += held0;
        pending[src_cols] += held1;
      }
      a0[0] += l0;
      a0[src_cols] += l1;
      pending = a0 + 1;
      held0 = right0[k];
      held1 = right1[k];
    }
  }
  if (pending != nullptr) {
    pending[0] += held0;
    pending[src_cols] += held1;
  }
  for (int64_t x = span.end; x < dst_cols; ++x) checked(x);
}

/// Bilinear taps along one axis of a separable map: output index o samples source coordinate
/// s = offset + scale * o, i.e. index0[o] with weight0[o] and index0[o] + 1 with weight1[o]; a neighbour
/// outside the source gets weight 0 (zero padding) and a clamped index, so loops need no branches.
struct AxisTaps {
  std::vector<int64_t> index0, index1;
  std::vector<double> weight0, weight1;
  bool second_unused = false;  // every weight1 is 0: each output reads one source pixel (integer taps)
  bool distinct = false;       // no two outputs share a first tap with a nonzero weight (|scale| >= 1)

  void compute(double offset, double scale, int64_t src_size, int64_t out_size) {
    index0.resize(out_size);
    index1.resize(out_size);
    weight0.resize(out_size);
    weight1.resize(out_size);
    second_unused = true;
    distinct = std::abs(scale) >= 1.0;
    for (int64_t o = 0; o < out_size; ++o) {
      const double s = offset + scale * static_cast<double>(o);
      const bool inside = s > -1.0 && s < static_cast<double>(src_size);
      const int64_t i0 = inside ? math::floor_above_minus_one(s) : 0;
      const double w = inside ? s - static_cast<double>(i0) : 0.0;
      const bool in0 = inside && i0 >= 0, in1 = inside && i0 + 1 < src_size;
      index0[o] = in0 ? i0 : 0;
      index1[o] = in1 ? i0 + 1 : 0;
      weight0[o] = in0 ? 1.0 - w : 0.0;
      weight1[o] = in1 ? w : 0.0;
      second_unused = second_unused && weight1[o] == 0.0;
    }
    find_run();
    find_blend();
    live_begin = 0;
    while (live_begin < out_size && weight0[live_begin] == 0.0 && weight1[live_begin] == 0.0) ++live_begin;
    live_end = out_size;
    while (live_end > live_begin && weight0[live_end - 1] == 0.0 && weight1[live_end - 1] == 0.0) --live_end;
    find_sources(src_size);
  }

  /// With distinct taps, the adjoint as a gather: source pixel i is the first tap of output
  /// first_of[i] with weight first_weight[i] and the second tap of output second_of[i] with weight
  /// second_weight[i] (output 0 with weight 0 where no output reads it). Empty without distinct taps.
  std::vector<int64_t> first_of, second_of;
  std::vector<double> first_weight, second_weight;

  /// Outputs outside [live_begin, live_end) have both weights 0 (they sample outside the source).
  int64_t live_begin = 0, live_end = 0;

  /// A unit-stride run of two-tap outputs (translations): outputs [blend_begin, blend_end) read source
  /// pixels blend_first + (o - blend_begin) and the next one (with their own weights); the outputs outside
  /// it (the edges) take the general per-output taps. An empty run when there is none.
  int64_t blend_begin = 0, blend_end = 0, blend_first = 0;

  /// A unit-stride run (flips, integer shifts): outputs [run_begin, run_end) read source pixel
  /// run_first + run_step (o - run_begin) with weight 1 (run_step = +-1), every other output has weight 0
  /// (outside the source) and reads pixel 0. is_run says whether the taps have this form.
  bool is_run = false;
  int64_t run_begin = 0, run_end = 0, run_first = 0, run_step = 1;

 private:
  void find_sources(int64_t src_size) {
    const auto n = static_cast<int64_t>(weight0.size());
    const int64_t size = distinct ? src_size : 0;
    first_of.assign(static_cast<size_t>(size), 0);
    second_of.assign(static_cast<size_t>(size), 0);
    first_weight.assign(static_cast<size_t>(size), 0.0);
    second_weight.assign(static_cast<size_t>(size), 0.0);
    for (int64_t o = 0; size > 0 && o < n; ++o) {
      if (weight0[o] != 0.0) {
        first_of[index0[o]] = o;
        first_weight[index0[o]] = weight0[o];
      }
      if (weight1[o] != 0.0) {
        second_of[index1[o]] = o;
        second_weight[index1[o]] = weight1[o];
      }
    }
  }

  void find_blend() {
    const auto n = static_cast<int64_t>(weight0.size());
    auto pair_inside = [&](int64_t o) { return index1[o] == index0[o] + 1 && weight0[o] != 0.0; };
    blend_begin = 0;
    while (blend_begin < n && !pair_inside(blend_begin)) ++blend_begin;
    blend_end = blend_begin;
    if (blend_begin == n) return;
    blend_first = index0[blend_begin];
    while (blend_end < n && pair_inside(blend_end) && index0[blend_end] == blend_first + (blend_end - blend_begin)) {
      ++blend_end;
    }
  }

  void find_run() {
    const auto n = static_cast<int64_t>(weight0.size());
    is_run = second_unused;
    if (!is_run) return;
    run_begin = 0;
    while (run_begin < n && weight0[run_begin] == 0.0) ++run_begin;
    run_end = run_begin;
    while (run_end < n && weight0[run_end] == 1.0) ++run_end;
    run_first = run_begin < n ? index0[run_begin] : 0;
    run_step = run_end - run_begin > 1 ? index0[run_begin + 1] - index0[run_begin] : 1;
    is_run = run_step == 1 || run_step == -1;
    for (int64_t o = 0; is_run && o < n; ++o) {
      const bool in_run = o >= run_begin && o < run_end;
      is_run = in_run ? index0[o] == run_first + run_step * (o - run_begin) : weight0[o] == 0.0 && index0[o] == 0;
    }
  }
};

/// out[k] += g[k] * w[k] for k < n, out not overlapping g or w (restrict: lets the compiler vectorise
/// it without run-time overlap checks).
template <class G>
inline void add_products(double* __restrict out, const G* __restrict g, const double* __restrict w, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] += static_cast<double>(g[k]) * w[k];
}

/// out[k] += v * t[k] for k < n, out not overlapping t.
inline void add_scaled(double* __restrict out, double v, const double* __restrict t, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] += v * t[k];
}

/// Whether all n values are finite (no inf, no NaN). A zero-weight tap of a finite value adds +-0 to an
/// accumulator that starts at +0, which changes no sum (bitwise), so the adjoint skips such taps only in
/// rows where this holds: a non-finite value still spreads NaN through 0 * value exactly as the full tap
/// computation does (flips, 90-degree rotations and integer translations have only zero-weight second taps).
template <class T>
bool all_finite(const T* v, int64_t n) {
  int finite = 1;
  for (int64_t i = 0; i < n; ++i) finite &= static_cast<int>(v[i] - v[i] == T(0));  // inf - inf, NaN: NaN
  return finite != 0;
}

/// out = warp of the contiguous plane src (rows x cols) where destination column x samples source
/// column coordinate cols_taps[x] and destination row y source row coordinate row_taps[y].
/// Per destination row: blend the two source rows (tmp, vectorised), then gather along the row.
/// src is rows x cols.
template <class T>
void warp_plane_separable(const T* src, int64_t rows, int64_t cols, const AxisTaps& col_taps, const AxisTaps& row_taps,
                          int64_t dst_rows, int64_t dst_cols, T* out, int64_t out_row_stride,
                          std::vector<double>& tmp) {
  tmp.resize(static_cast<size_t>(cols));
  // Integer column taps read one source pixel per output; when the whole source is finite, rows with an
  // integer row tap skip the blend (checked once per plane, not per row).
  const bool gather_rows = col_taps.second_unused && all_finite(src, rows * cols);
  for (int64_t y = 0; y < dst_rows; ++y) {
    T* o = out + y * out_row_stride;
    const double v0 = row_taps.weight0[y], v1 = row_taps.weight1[y];
    if (v0 == 0.0 && v1 == 0.0) {
      std::fill_n(o, dst_cols, T(0));
      continue;
    }
    const T* r0 = src + row_taps.index0[y] * cols;
    const T* r1 = src + row_taps.index1[y] * cols;
    const int64_t* i0 = col_taps.index0.data();
    const int64_t* i1 = col_taps.index1.data();
    const double* w0 = col_taps.weight0.data();
    const double* w1 = col_taps.weight1.data();
    if (gather_rows && v0 == 1.0 && v1 == 0.0) {
      // Integer taps (a flip, a 90-degree rotation, an integer shift): each output is one source pixel
      // times its weight (1, or 0 outside the source); the blend below would add only exact zeros to it.
      if (col_taps.is_run) {  // a copy, forwards or backwards, between the products with weight 0
        const auto outside = static_cast<T>(static_cast<double>(r0[0]) * 0.0);
        std::fill(o, o + col_taps.run_begin, outside);
        const T* from = r0 + col_taps.run_first;
        const int64_t count = col_taps.run_end - col_taps.run_begin;
        T* to = o + col_taps.run_begin;
        if (col_taps.run_step == 1) {
          std::copy_n(from, count, to);
        } else {
          for (int64_t x = 0; x < count; ++x) to[x] = from[-x];
        }
        std::fill(o + col_taps.run_end, o + dst_cols, outside);
        continue;
      }
      for (int64_t x = 0; x < dst_cols; ++x) o[x] = static_cast<T>(static_cast<double>(r0[i0[x]]) * w0[x]);
      continue;
    }
    for (int64_t c = 0; c < cols; ++c) tmp[c] = static_cast<double>(r0[c]) * v0 + static_cast<double>(r1[c]) * v1;
    auto gather = [&](int64_t x) { o[x] = static_cast<T>(tmp[i0[x]] * w0[x] + tmp[i1[x]] * w1[x]); };
    for (int64_t x = 0; x < col_taps.blend_begin; ++x) gather(x);
    {  // the unit-stride run: the same products, without the index loads
      const double* t = tmp.data() + col_taps.blend_first - col_taps.blend_begin;
      for (int64_t x = col_taps.blend_begin; x < col_taps.blend_end; ++x) {
        o[x] = static_cast<T>(t[x] * w0[x] + t[x + 1] * w1[x]);
      }
    }
    for (int64_t x = col_taps.blend_end; x < dst_cols; ++x) gather(x);
  }
}

/// tmp (zeroed here) = the row g scattered along the column taps: the first taps' products, then the
/// second taps' (skipped when no second tap has a weight and g is finite).
template <class G>
void scatter_row(const G* gr, const AxisTaps& col_taps, int64_t dst_cols, bool finite, std::vector<double>& tmp) {
  const int64_t* i0 = col_taps.index0.data();
  const int64_t* i1 = col_taps.index1.data();
  const double* w0 = col_taps.weight0.data();
  const double* w1 = col_taps.weight1.data();
  std::fill(tmp.begin(), tmp.end(), 0.0);
  // Each pass scatters g times one tap's weights, in increasing x; in the unit-stride run the targets
  // are consecutive, so it goes as a plain shifted loop (the same sums, in the same order). Outputs
  // outside the live range add g * 0 = +-0 to tmp[0], which changes nothing when g is finite (tmp never
  // holds -0): they are skipped then, and with them a chain of dependent additions to one element.
  const int64_t rb = col_taps.blend_begin, re = col_taps.blend_end;
  const int64_t lb = finite ? std::min(col_taps.live_begin, rb) : 0;
  const int64_t le = finite ? std::max(col_taps.live_end, re) : dst_cols;
  auto scatter = [&](const int64_t* index, const double* weight, int64_t shift) {
    for (int64_t x = lb; x < rb; ++x) tmp[index[x]] += static_cast<double>(gr[x]) * weight[x];
    add_products(tmp.data() + col_taps.blend_first + shift, gr + rb, weight + rb, re - rb);
    for (int64_t x = re; x < le; ++x) tmp[index[x]] += static_cast<double>(gr[x]) * weight[x];
  };
  scatter(i0, w0, 0);
  if (!(col_taps.second_unused && finite)) scatter(i1, w1, 1);
}

/// One destination row of the adjoint of warp_plane_separable: acc (rows x cols, contiguous) +=
/// (row y of W)^T g (g: dst_cols values). Spread the row along the column taps into tmp, then add tmp to
/// the two source rows (vectorised).
template <class G>
void separable_adjoint_row(const G* gr, int64_t y, int64_t cols, const AxisTaps& col_taps, const AxisTaps& row_taps,
                           int64_t dst_cols, double* acc, std::vector<double>& tmp) {
  const double v0 = row_taps.weight0[y], v1 = row_taps.weight1[y];
  if (v0 == 0.0 && v1 == 0.0) return;
  const int64_t* i0 = col_taps.index0.data();
  const double* w0 = col_taps.weight0.data();
  const bool finite = all_finite(gr, dst_cols);
  if (col_taps.second_unused && col_taps.distinct && finite && v0 == 1.0 && v1 == 0.0) {
    // Integer taps, each source column read at most once, one source row: tmp would hold each
    // contribution once and be added with weight 1 (1 * t = t exactly), so the row goes straight in.
    double* a0 = acc + row_taps.index0[y] * cols;
    if (col_taps.is_run) {
      // The weight-0 products (+-0) would change no sum: an accumulator that starts at +0 never holds -0.
      double* to = a0 + col_taps.run_first;
      const G* from = gr + col_taps.run_begin;
      const int64_t count = col_taps.run_end - col_taps.run_begin, step = col_taps.run_step;
      for (int64_t x = 0; x < count; ++x) to[step * x] += static_cast<double>(from[x]);
      return;
    }
    for (int64_t x = 0; x < dst_cols; ++x) a0[i0[x]] += static_cast<double>(gr[x]) * w0[x];
    return;
  }
  tmp.resize(static_cast<size_t>(cols));
  if (finite && col_taps.distinct && col_taps.blend_end - col_taps.blend_begin < dst_cols / 2) {
    // Distinct taps (|scale| >= 1) without a long unit-stride run (resizes): each source pixel takes at
    // most one product from each pass below, so tmp is formed as a gather, (0 + first) + second, the
    // scatter's sums; the weight-0 products it adds instead of skipping are +-0 and change nothing.
    const int64_t *f = col_taps.first_of.data(), *sc = col_taps.second_of.data();
    const double *fw = col_taps.first_weight.data(), *sw = col_taps.second_weight.data();
    for (int64_t c = 0; c < cols; ++c) {
      tmp[c] = (0.0 + static_cast<double>(gr[f[c]]) * fw[c]) + static_cast<double>(gr[sc[c]]) * sw[c];
    }
  } else {
    scatter_row(gr, col_taps, dst_cols, finite, tmp);
  }
  double* a0 = acc + row_taps.index0[y] * cols;
  if (!(v0 == 0.0 && finite)) add_scaled(a0, v0, tmp.data(), cols);
  double* a1 = acc + row_taps.index1[y] * cols;
  if (!(v1 == 0.0 && finite)) add_scaled(a1, v1, tmp.data(), cols);
}

/// How a destination->source map can be evaluated.
enum class MapKind { General, AxisAligned, AxisSwapped };

inline MapKind classify(const InverseAffine& inv) {
  if (inv.m[1] == 0.0 && inv.m[3] == 0.0) return MapKind::AxisAligned;  // sx(x), sy(y)
  if (inv.m[0] == 0.0 && inv.m[4] == 0.0) return MapKind::AxisSwapped;  // sx(y), sy(x)
  return MapKind::General;
}

/// Column and row taps of a separable map.
struct SeparableTaps {
  AxisTaps col, row;

  /// AxisAligned: destination column x samples source column m2 + m0 x, row y samples source row m5 + m4 y.
  /// AxisSwapped: the taps address the TRANSPOSED source (rows = source columns): column x samples source
  /// row m5 + m3 x, row y samples source column m2 + m1 y.
  void compute(const InverseAffine& inv, MapKind kind, int64_t src_rows, int64_t src_cols, int64_t dst_rows,
               int64_t dst_cols) {
    if (kind == MapKind::AxisAligned) {
      col.compute(inv.m[2], inv.m[0], src_cols, dst_cols);
      row.compute(inv.m[5], inv.m[4], src_rows, dst_rows);
    } else {
      col.compute(inv.m[5], inv.m[3], src_rows, dst_cols);
      row.compute(inv.m[2], inv.m[1], src_cols, dst_rows);
    }
  }
};

/// Transpose of a contiguous rows x cols plane into out (cols x rows): out = in^T, or out += in^T with
/// Accumulate.
template <bool Accumulate = false, class S, class D>
void transpose_plane(const S* in, int64_t rows, int64_t cols, D* out) {
  constexpr int64_t kBlock = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      for (int64_t r = r0; r < std::min(rows, r0 + kBlock); ++r) {
        for (int64_t c = c0; c < std::min(cols, c0 + kBlock); ++c) {
          if constexpr (Accumulate) {
            out[c * rows + r] += static_cast<D>(in[r * cols + c]);
          } else {
            out[c * rows + r] = static_cast<D>(in[r * cols + c]);
          }
        }
      }
    }
  }
}

/// out (dst_rows x dst_cols, row stride out_row_stride) = bilinear warp with zero padding of the
/// contiguous plane src (src_rows x src_cols) by inv_in (destination pixel -> source pixel).
template <class T>
void warp_plane(const T* src, int64_t src_rows, int64_t src_cols, const InverseAffine& inv_in, int64_t dst_rows,
                int64_t dst_cols, T* out, int64_t out_row_stride) {
  struct Scratch {  // per thread, reused across planes and calls
    SeparableTaps taps;
    std::vector<double> row;
    std::vector<T> transposed;
  };
  thread_local Scratch s;
  const InverseAffine inv = sampling_map(inv_in, src_rows, src_cols);
  const MapKind kind = classify(inv);
  switch (kind) {
    case MapKind::AxisAligned:
      s.taps.compute(inv, kind, src_rows, src_cols, dst_rows, dst_cols);
      warp_plane_separable(src, src_rows, src_cols, s.taps.col, s.taps.row, dst_rows, dst_cols, out, out_row_stride,
                           s.row);
      return;
    case MapKind::AxisSwapped:
      // Sampling src at (column sx(y), row sy(x)) is sampling its transpose at (column sy(x), row sx(y)).
      s.transposed.resize(static_cast<size_t>(src_rows * src_cols));
      transpose_plane(src, src_rows, src_cols, s.transposed.data());
      s.taps.compute(inv, kind, src_rows, src_cols, dst_rows, dst_cols);
      warp_plane_separable(s.transposed.data(), src_cols, src_rows, s.taps.col, s.taps.row, dst_rows, dst_cols, out,
                           out_row_stride, s.row);
      return;
    case MapKind::General:
      warp_plane_general(src, src_rows, src_cols, inv, dst_rows, dst_cols, out, out_row_stride);
      return;
  }
}

/// The adjoint of warp_plane, fed one destination row at a time: acc (src_rows x src_cols, contiguous,
/// zeroed by the caller) += W^T g. Call begin once per map, add_row for the rows of g in increasing order
/// (a row not given counts as zero; rows_read tells which rows matter), then finish. Sequential scatter
/// into a plane private to the caller: deterministic. Holds its own scratch, so that several adjoints
/// (one per modality of a sample) can be fed side by side.
class WarpAdjoint {
 public:
  void begin(const InverseAffine& inv_in, int64_t dst_rows, int64_t dst_cols, int64_t src_rows, int64_t src_cols,
             double* acc) {
    inv_ = sampling_map(inv_in, src_rows, src_cols);
    kind_ = classify(inv_);
    dst_cols_ = dst_cols;
    src_rows_ = src_rows;
    src_cols_ = src_cols;
    acc_ = acc;
    target_ = acc;
    if (kind_ == MapKind::General) return;
    taps_.compute(inv_, kind_, src_rows, src_cols, dst_rows, dst_cols);
    if (kind_ == MapKind::AxisSwapped) {  // scatter into the transposed source, transposed back by finish
      transposed_.assign(static_cast<size_t>(src_rows * src_cols), 0.0);
      target_ = transposed_.data();
    }
  }

  /// Whether destination row y reaches the source at all (a row that does not can be skipped).
  bool reads_row(int64_t y) const {
    return kind_ == MapKind::General || taps_.row.weight0[y] != 0.0 || taps_.row.weight1[y] != 0.0;
  }

  /// Adds the contribution of destination row y, g (dst_cols values of type G).
  template <class G>
  void add_row(int64_t y, const G* g) {
    if (kind_ == MapKind::General) {
      general_adjoint_row(g, y, dst_cols_, inv_, src_rows_, src_cols_, acc_);
    } else {
      const int64_t cols = kind_ == MapKind::AxisAligned ? src_cols_ : src_rows_;
      separable_adjoint_row(g, y, cols, taps_.col, taps_.row, dst_cols_, target_, row_);
    }
  }

  void finish() {
    if (kind_ == MapKind::AxisSwapped) transpose_plane<true>(transposed_.data(), src_cols_, src_rows_, acc_);
  }

 private:
  InverseAffine inv_{};
  MapKind kind_ = MapKind::General;
  int64_t dst_cols_ = 0, src_rows_ = 0, src_cols_ = 0;
  double* acc_ = nullptr;
  double* target_ = nullptr;
  SeparableTaps taps_;
  std::vector<double> row_, transposed_;
};

/// Adjoint of warp_plane: acc (src_rows x src_cols, contiguous, zeroed by the caller) += W^T g, where
/// g_row(y) points to row y of g (dst_cols values, valid until the next call; rows are requested in
/// increasing order, each at most once).
template <class RowFn>
void warp_plane_adjoint(RowFn&& g_row, int64_t dst_rows, int64_t dst_cols, const InverseAffine& inv, int64_t src_rows,
                        int64_t src_cols, double* acc) {
  thread_local WarpAdjoint adjoint;
  adjoint.begin(inv, dst_rows, dst_cols, src_rows, src_cols, acc);
  for (int64_t y = 0; y < dst_rows; ++y) {
    if (adjoint.reads_row(y)) adjoint.add_row(y, g_row(y));
  }
  adjoint.finish();
}

}  // namespace mmcam::cpu
