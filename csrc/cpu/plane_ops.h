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
#include <type_traits>
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

/// The row accessor of a contiguous (rows x cols) plane g: the row function (g_row(y) -> pointer to row
/// y) that the row-wise backward functions (minmax_normalize_backward, warp_plane_adjoint) read.
template <class A>
auto rows_of(const A* g, int64_t cols) {
  return [g, cols](int64_t y) { return g + y * cols; };
}

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

/// Calls f with the distance as a compile-time constant (a std::integral_constant, read as .value), so that a
/// per-element loop inside f does not branch on it per element (such loops then vectorise).
template <class F>
void with_fixed_distance(math::Distance distance, F&& f) {
  if (distance == math::Distance::SqL2) {
    f(std::integral_constant<math::Distance, math::Distance::SqL2>{});
  } else {
    f(std::integral_constant<math::Distance, math::Distance::L1>{});
  }
}

/// Min / max of relu(plane) and den = (hi - lo) + eps; NaN anywhere makes lo, hi NaN (as amin/amax).
template <class T>
struct MinMaxStats {
  T lo, hi, den;
};

/// A SIMD vector of kLanes values of T (GCC/Clang vector extension; the compiler splits it into the
/// target's registers: two SSE2 or one AVX2 register of float) and loads from unaligned memory.
template <class T>
struct LaneVec {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
  static constexpr int kWidth = kLanes;
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
  using V = LaneVec<T>;
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

/// The T-precision part of the min-max backward of one element (V = T; V = double holds it widened): the
/// element v, u = relu(v) - lo - eps (u > 0: the active set) and a = relu(u) = den mn(v), in torch's
/// arithmetic. The backward needs mn(v) only inside the sum of g mn(v), which it forms as (sum g a) / den:
/// no division per element.
template <class V>
struct MinMaxParts {
  V v, u, a;
};

template <class T>
MinMaxParts<T> minmax_parts(T v, const MinMaxStats<T>& s, T eps) {
  const T u = (math::relu(v) - s.lo) - eps;  // relu keeps NaN
  return {v, u, u <= T(0) ? T(0) : u};
}

/// The double part, for one element given its parts widened to double (exact): g a (the contribution to sum g relu(u)),
/// g on the active set (to sum_active g) and the direct term relu'(v) 1[active] g / den. Every select is a compare of
/// doubles.
struct MinMaxBackwardTerms {
  double g_a, g_active, direct;
};

inline MinMaxBackwardTerms minmax_backward_terms(const MinMaxParts<double>& e, double g, double inv_den) {
  const double active_g = e.u > 0.0 ? g : 0.0;
  return {g * e.a, active_g, e.v > 0.0 ? active_g * inv_den : 0.0};
}

/// Whether element v gets a tie share: v > 0 and v equals s.lo or s.hi (V = T or a vector of T).
template <class T, class V>
auto is_tied(V v, const MinMaxStats<T>& s) {
  return (v > T(0)) & ((v == s.hi) | (v == s.lo));
}

/// Whether some element of the row (cols elements) is tied.
template <class T>
bool any_tied(const T* row, int64_t cols, const MinMaxStats<T>& s) {
  using V = LaneVec<T>;
  decltype(typename V::type{} > T(0)) hits = {};  // the integer mask vector of comparisons
  int64_t x = 0;
  for (; x + V::kWidth <= cols; x += V::kWidth) {
    hits |= is_tied(V::load(row + x), s);
  }
  bool any = false;
  for (int k = 0; k < V::kWidth; ++k) any |= hits[k] != 0;
  for (; x < cols; ++x) any |= is_tied(row[x], s);
  return any;
}

/// Backward of mn for one plane, fed one row of the upstream gradient at a time: writes dL/dplane into
/// grad (row stride grad_row_stride). Call add_row once for every row y (any order) with g = dL/dmn(plane)
/// of that row (cols values of type G: T or double), then finish, which gives the elements tied at lo / hi
/// their equal shares of dL/dlo and dL/dhi (amin / amax semantics).
///
/// With m = mn = u / den on the active set (u = relu(v) - lo - eps > 0), m = 0 elsewhere:
///   dL/dhi = -sum g m / den,   dL/dlo = sum_active g (m - 1) / den = (sum g m - sum_active g) / den,
/// and sum g m = (sum g relu(u)) / den, accumulated in double. add_row writes every element's direct term
/// relu'(v) 1[active] g / den (g times 1 / den: within an ulp of the division) and accumulates these sums;
/// finish then finds the few tied elements and adds their shares. A share reaches an element only through
/// relu'(v) = 1, i.e. v > 0: so lo shares exist only when lo > 0 (most planes have lo = 0, and the sum over
/// the active set is then not accumulated), and hi shares only when hi > 0.
template <class T>
class MinMaxBackward {
 public:
  MinMaxBackward(const PlaneView<T>& p, const MinMaxStats<T>& s, T eps, T* grad, int64_t grad_row_stride)
      : p_(p), s_(s), eps_(eps), grad_(grad), grad_row_stride_(grad_row_stride),
        inv_den_(1.0 / static_cast<double>(s.den)) {}

  template <class G>
  void add_row(int64_t y, const G* g) {
    if (s_.lo > T(0)) {
      add_row_sums<true>(y, g);
    } else {
      add_row_sums<false>(y, g);
    }
  }

  /// The tie shares; g_row(y) returns row y of the upstream gradient again (only rows holding a tied
  /// element are asked for).
  template <class RowFn>
  void finish(RowFn&& g_row) {
    if (!(s_.hi > T(0))) return;  // no element with v > 0 can be tied (or lo, hi are NaN)
    double count_hi = 0.0, count_lo = 0.0;
    tied_rows_.clear();
    for (int64_t y = 0; y < p_.rows; ++y) {
      const T* row = p_.row(y);
      if (!any_tied(row, p_.cols, s_)) continue;
      tied_rows_.push_back(y);
      for (int64_t x = 0; x < p_.cols; ++x) {
        count_hi += row[x] > T(0) && row[x] == s_.hi ? 1.0 : 0.0;
        count_lo += row[x] > T(0) && row[x] == s_.lo ? 1.0 : 0.0;
      }
    }
    const double sum_g_m = combine_lanes(g_a_) * inv_den_;
    const double hi_tie = count_hi > 0.0 ? -sum_g_m * inv_den_ / count_hi : 0.0;
    const double lo_tie = count_lo > 0.0 ? (sum_g_m - combine_lanes(g_active_)) * inv_den_ / count_lo : 0.0;
    for (const int64_t y : tied_rows_) {
      const T* row = p_.row(y);
      const auto* g = g_row(y);
      T* o = grad_ + y * grad_row_stride_;
      for (int64_t x = 0; x < p_.cols; ++x) {
        if (!is_tied(row[x], s_)) continue;
        const double direct = (row[x] - s_.lo) - eps_ > T(0) ? static_cast<double>(g[x]) * inv_den_ : 0.0;
        o[x] = static_cast<T>(direct + (row[x] == s_.hi ? hi_tie : 0.0) + (row[x] == s_.lo ? lo_tie : 0.0));
      }
    }
  }

 private:
  template <bool kActiveSum, class G>
  void add_row_sums(int64_t y, const G* g) {
    // Members copied to locals: the stores into grad could alias them, which would make the compiler
    // reload every constant and spill every accumulator per element.
    const T* row = p_.row(y);
    T* o = grad_ + y * grad_row_stride_;
    const MinMaxStats<T> s = s_;
    const T eps = eps_;
    const double inv_den = inv_den_;
    const int64_t cols = p_.cols;
    double g_a[kLanes], g_active[kLanes];
    std::copy_n(g_a_, kLanes, g_a);
    std::copy_n(g_active_, kLanes, g_active);
    int64_t x = 0;
    for (; x + kLanes <= cols; x += kLanes) {  // element x + k in lane k: written for the vectoriser
      double v[kLanes], u[kLanes], a[kLanes], gd[kLanes], direct[kLanes];
      for (int k = 0; k < kLanes; ++k) {
        const MinMaxParts<T> e = minmax_parts(row[x + k], s, eps);
        v[k] = e.v;  // widened to double: exact, and every select below compares doubles
        u[k] = e.u;
        a[k] = e.a;
        gd[k] = static_cast<double>(g[x + k]);
      }
      for (int k = 0; k < kLanes; ++k) {
        const MinMaxBackwardTerms terms = minmax_backward_terms(MinMaxParts<double>{v[k], u[k], a[k]}, gd[k], inv_den);
        g_a[k] += terms.g_a;
        if constexpr (kActiveSum) g_active[k] += terms.g_active;
        direct[k] = terms.direct;
      }
      for (int k = 0; k < kLanes; ++k) o[x + k] = static_cast<T>(direct[k]);
    }
    for (int k = 0; x < cols; ++k, ++x) {  // the tail, element k in lane k
      const MinMaxParts<T> e = minmax_parts(row[x], s, eps);
      const MinMaxParts<double> w{e.v, e.u, e.a};
      const auto terms = minmax_backward_terms(w, static_cast<double>(g[x]), inv_den);
      g_a[k] += terms.g_a;
      if constexpr (kActiveSum) g_active[k] += terms.g_active;
      o[x] = static_cast<T>(terms.direct);
    }
    std::copy_n(g_a, kLanes, g_a_);
    std::copy_n(g_active, kLanes, g_active_);
  }

  PlaneView<T> p_;
  MinMaxStats<T> s_;
  T eps_;
  T* grad_;
  int64_t grad_row_stride_;
  double inv_den_;
  double g_a_[kLanes] = {}, g_active_[kLanes] = {};
  std::vector<int64_t> tied_rows_;
};

/// Backward of mn for one plane (MinMaxBackward), given the upstream gradient row by row: g_row(y)
/// returns a pointer to the cols values of row y (valid until the next call).
template <class T, class RowFn>
void minmax_normalize_backward(const PlaneView<T>& p, const MinMaxStats<T>& s, T eps, RowFn&& g_row, T* grad,
                               int64_t grad_row_stride) {
  MinMaxBackward<T> backward(p, s, eps, grad, grad_row_stride);
  for (int64_t y = 0; y < p.rows; ++y) backward.add_row(y, g_row(y));
  backward.finish(g_row);
}

/// ||plane + l2_eps||_F of a contiguous plane of n elements, accumulated in double.
template <class T>
double l2_norm_shifted(const T* p, int64_t n, T l2_eps) {
  return std::sqrt(lane_sum(n, [&](int64_t i) {
    const double v = static_cast<double>(static_cast<T>(p[i] + l2_eps));
    return v * v;
  }));
}

/// out[i] = p[i] * scale (n elements), rounded to T: in T when scale is a normal T value (within an ulp
/// of the double product rounded to T; for float, twice the vector width and no conversions), else in
/// double.
template <class T>
void scale_plane(const T* p, int64_t n, double scale, T* out) {
  const auto t_scale = static_cast<T>(scale);
  if (std::is_same_v<T, double> || std::isnormal(t_scale)) {
    for (int64_t i = 0; i < n; ++i) out[i] = p[i] * t_scale;
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<double>(p[i]) * scale);
  }
}

/// unit = p / ||p + l2_eps|| (p: n elements; unit resized to n); returns the norm.
template <class T>
double l2_normalize_plane(const T* p, int64_t n, T l2_eps, std::vector<T>& unit) {
  const double norm = l2_norm_shifted(p, n, l2_eps);
  unit.resize(static_cast<size_t>(n));
  scale_plane(p, n, 1.0 / norm, unit.data());  // the product is within an ulp of p / norm
  return norm;
}

template <class T>
double l2_normalize_plane(const std::vector<T>& p, T l2_eps, std::vector<T>& unit) {
  return l2_normalize_plane(p.data(), static_cast<int64_t>(p.size()), l2_eps, unit);
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
