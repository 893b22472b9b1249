// The two sides of an equivariance comparison, per plane, with their forward values kept for the
// backward pass:
//   WarpedSource    P  = warp(mn(src plane)), optionally P' = P / ||P + l2_eps||
//   NormalizedTarget Q = mn(dst plane),       optionally Q' = Q / ||Q + l2_eps||
// and the functions that push dL/dP' (resp. dL/dQ') back to the raw CAM plane. Both the pairwise
// operator (equivariance_loss) and the all-modality terms (equivariance_terms) are built from these.
#pragma once

#include <vector>

#include "cpu/plane_ops.h"
#include "cpu/warp_plane.h"

namespace mmcam::cpu {

template <class T>
struct WarpedSource {
  MinMaxStats<T> stats{};
  std::vector<T> normalized;  // mn(src), src_rows x src_cols
  std::vector<T> warped;      // P, dst_rows x dst_cols (unless computed into a caller's buffer)
  std::vector<T> unit;        // P' = P / ||P + l2_eps|| (only when computed with l2)
  double norm = 1.0;          // ||P + l2_eps|| (only when computed with l2)

  /// P is written to out (contiguous, dst_rows x dst_cols) when given, else to warped.
  void compute(const PlaneView<T>& src, const InverseAffine& inv, int64_t dst_rows, int64_t dst_cols, T eps, bool l2,
               T l2_eps, T* out = nullptr) {
    stats = relu_minmax(src, eps);
    normalized.resize(static_cast<size_t>(src.rows * src.cols));
    minmax_normalize_plane(src, stats, eps, normalized.data());
    if (out == nullptr) {
      warped.resize(static_cast<size_t>(dst_rows * dst_cols));
      out = warped.data();
    }
    warp_plane(normalized.data(), src.rows, src.cols, inv, dst_rows, dst_cols, out, dst_cols);
    map_ = out;
    if (l2) norm = l2_normalize_plane(out, dst_rows * dst_cols, l2_eps, unit);
  }

  /// P, wherever compute wrote it.
  const T* map() const { return map_; }

  /// The compared map: P' when computed with l2, else P.
  const T* compared(bool l2) const { return l2 ? unit.data() : map_; }

 private:
  const T* map_ = nullptr;
};

template <class T>
struct NormalizedTarget {
  MinMaxStats<T> stats{};
  std::vector<T> normalized;  // Q = mn(dst)
  std::vector<T> unit;        // Q' = Q / ||Q + l2_eps|| (only when computed with l2)
  double norm = 1.0;

  void compute(const PlaneView<T>& dst, T eps, bool l2, T l2_eps) {
    stats = relu_minmax(dst, eps);
    normalized.resize(static_cast<size_t>(dst.rows * dst.cols));
    minmax_normalize_plane(dst, stats, eps, normalized.data());
    if (l2) norm = l2_normalize_plane(normalized, l2_eps, unit);
  }

  /// The compared map: Q' when computed with l2, else Q.
  const T* compared(bool l2) const { return l2 ? unit.data() : normalized.data(); }
};

/// Scratch memory of one thread, reused across the planes it processes.
struct BackwardScratch {
  std::vector<double> grad_dst_side;  // dst_rows x dst_cols
  std::vector<double> grad_src_side;  // src_rows x src_cols (warp adjoint accumulator)
};

/// dL/dsrc plane from g = dL/d(compared map) (destination-sized, overwritten).
template <class T>
void backprop_to_source(const WarpedSource<T>& side, double* g, bool l2, T l2_eps, const PlaneView<T>& src,
                        const InverseAffine& inv, int64_t dst_rows, int64_t dst_cols, T eps, BackwardScratch& scratch,
                        T* grad, int64_t grad_row_stride) {
  if (l2) l2_normalize_backward(g, side.map(), dst_rows * dst_cols, side.norm, l2_eps);
  scratch.grad_src_side.assign(static_cast<size_t>(src.rows * src.cols), 0.0);
  warp_plane_adjoint(rows_of(g, dst_cols), dst_rows, dst_cols, inv, src.rows, src.cols, scratch.grad_src_side.data());
  minmax_normalize_backward(src, side.stats, eps, rows_of(scratch.grad_src_side.data(), src.cols), grad,
                            grad_row_stride);
}

/// dL/ddst plane from g = dL/d(compared map) (overwritten).
template <class T>
void backprop_to_target(const NormalizedTarget<T>& side, double* g, bool l2, T l2_eps, const PlaneView<T>& dst, T eps,
                        T* grad, int64_t grad_row_stride) {
  if (l2) l2_normalize_backward(g, side.normalized.data(), dst.rows * dst.cols, side.norm, l2_eps);
  minmax_normalize_backward(dst, side.stats, eps, rows_of(static_cast<const double*>(g), dst.cols), grad,
                            grad_row_stride);
}

}  // namespace mmcam::cpu
