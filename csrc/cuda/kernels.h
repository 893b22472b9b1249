// Launchers of the CUDA kernels of the fused operators. Torch-free: this header is included by the
// kernels (.cu, compiled by nvcc alone) and by the torch glue (the *_cuda.cpp files), so it speaks in raw
// pointers, sizes and a cudaStream_t. Every launcher enqueues work on `stream` and returns the launch
// status (cudaGetLastError); none synchronises with the host.
//
// Conventions (docs/operator.md, csrc/mmcam_math.h):
//   * A plane set is a 4-D (N, C, H, W) tensor whose last dimension has unit stride; plane p = n * C + c.
//   * inv is an (N, 6) row-major array of destination->source pixel maps in double, computed on the
//     device by invert_affines(); a sample whose matrix is non-finite or singular gets NaN entries (the
//     check needs no host synchronisation, so nothing is raised; the CPU op raises ValueError instead).
//     Such a sample reads as NaN everywhere it is not skipped: its warped maps are NaN (so are the loss
//     values it enters) and minmax_backward_apply, given inv, writes NaN over its whole gradient (of the
//     warped side and of the target side), which neither the gather nor the scatter adjoint, whose NaN
//     taps sample nothing, would do. A skipped sample (weight 0, label 0: sample_mask 0) still gets
//     exact zeros.
//   * Per-plane reductions are written as per-tile partial results, then reduced once per plane (or per
//     sample) in a fixed order by a small kernel (plane_minmax, sum_tiles) before the kernels that read
//     them: no atomics in any reduction, and no block re-reads the partials of the other tiles of its
//     plane (the work stays linear in the tile count). The forward pass is bitwise reproducible, and the
//     backward pass too when its warp adjoint gathers (deterministic mode) instead of scattering.
//   * Gradient maps ("G" below) are float for float32/float16/bfloat16 inputs and double for float64.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kept_stats.h"

namespace mmcam::cuda {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

/// A read-only set of (rows, cols) planes of an (n, c, rows, cols) tensor with unit column stride.
struct Planes {
  const void* data;
  DType dtype;
  int64_t n, c, rows, cols;
  int64_t stride_n, stride_c, stride_row;
};

/// Threads per block and elements per thread of every per-pixel kernel; a tile is what one block covers.
constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;
constexpr int64_t kTile = int64_t{kThreads} * kItemsPerThread;
constexpr int64_t tiles_of(int64_t elements) { return (elements + kTile - 1) / kTile; }

/// Doubles per (plane, tile) written by the min/max statistics pass: lo, hi, has_nan.
constexpr int kMinMaxSlots = 3;
/// Doubles per plane of its min-max statistics: lo, hi of relu(plane) and den = (hi - lo) + eps.
constexpr int kPlaneStatSlots = 3;
/// Doubles per (plane, tile) of the min-max backward sums: sum g*mn, sum_active g, count_hi, count_lo.
constexpr int kBackwardSumSlots = 4;
/// Largest M the fused equivariance_terms kernels handle (per-thread register arrays).
constexpr int kMaxModalities = 8;
/// Doubles per (plane, tile) of the equivariance_terms side sums: sum (P+l2_eps)^2, sum (Q+l2_eps)^2, sum d(P-Q).
constexpr int kTermsSideSlots = 3;

/// matrix_out[n] = matrix[n] in double and inv[n] = its inverse, with singleton source axes collapsed
/// (a source axis of size 1 is read at its one pixel, as grid_sample does); NaN when not invertible.
/// matrix: (N, 6) contiguous float32 or float64 (matrix_dtype); matrix_out, inv: (N, 6) double; device.
cudaError_t invert_affines(const void* matrix, DType matrix_dtype, int64_t n, int64_t src_rows, int64_t src_cols,
                           double* matrix_out, double* inv, cudaStream_t stream);

/// stats (planes x kPlaneStatSlots) = lo, hi, den of every plane of x, computed in x's value type (as the
/// CPU op and torch's amin / amax: a NaN in the plane makes lo, hi, den NaN); partials (planes x
/// tiles_of(rows*cols) x kMinMaxSlots) is the workspace of the per-tile pass.
cudaError_t plane_minmax(const Planes& x, double eps, double* partials, double* stats, cudaStream_t stream);

/// totals[g * width + k] = sum over t < tiles of partials[(g * tiles + t) * width + k], for g < groups and
/// k < width, in a fixed order (bitwise reproducible): one small pass that reduces per-tile partial sums
/// once per plane or sample.
cudaError_t sum_tiles(const double* partials, int64_t groups, int64_t tiles, int64_t width, double* totals,
                      cudaStream_t stream);

/// Where a kernel finds a plane's min-max statistics: lo, hi, den at data[plane * stride + 0, 1, 2]
/// (stride kPlaneStatSlots for plane_minmax's output, kKeptStatsPerPlane for the statistics that
/// equivariance_terms keeps, kept_stats.h).
struct StatsSource {
  const double* data;
  int64_t stride;
};

/// out (N, C, Hd, Wd) contiguous, x's dtype = bilinear warp (zero padding) of mn(x) by inv.
cudaError_t warp_normalized(const Planes& src, StatsSource src_stats, const double* inv, int64_t dst_rows,
                            int64_t dst_cols, double eps, void* out, cudaStream_t stream);

/// acc (planes x Hs*Ws, G, zeroed by the caller) += W^T g, g (planes x Hd*Wd, G): the adjoint of the warp.
/// deterministic: each source pixel gathers the destination pixels whose taps include it (fixed order;
/// each destination row is scanned only over the columns where both source coordinates can be within a
/// pixel of it, which also bounds the scan when a source axis of size 1 is collapsed); otherwise a
/// scatter with atomicAdd. A sample with a non-invertible matrix adds nothing (see inv above).
cudaError_t warp_adjoint(const void* g, DType g_dtype, int64_t planes, int64_t channels, int64_t dst_rows,
                         int64_t dst_cols, const double* inv, const double* matrix, int64_t src_rows, int64_t src_cols,
                         bool deterministic, void* acc, cudaStream_t stream);

/// Backward of mn, pass 1: totals (planes x kBackwardSumSlots) of g (planes x rows*cols, G); partials
/// (planes x tiles_of(rows*cols) x kBackwardSumSlots) is the workspace of the per-tile pass.
cudaError_t minmax_backward_sums(const Planes& x, StatsSource x_stats, const void* g, double eps, double* partials,
                                 double* totals, cudaStream_t stream);

/// Backward of mn, pass 2: grad (planes x rows*cols, x's dtype, contiguous) = dL/dx from g and the totals.
/// sample_mask (N, optional): a sample whose entry is 0 gets an exact zero gradient. inv (N x 6, optional):
/// any other sample whose map is NaN (a non-invertible matrix, see invert_affines) gets NaN everywhere.
cudaError_t minmax_backward_apply(const Planes& x, StatsSource x_stats, const void* g, const double* totals,
                                  const float* sample_mask, const double* inv, double eps, void* grad,
                                  cudaStream_t stream);

/// Inputs of the fused equivariance terms (docs/method.md, docs/operator.md): cams (N, M, Hs, Ws), cams_t
/// (N, M, Hd, Wd), per-sample labels (N) and predicted classes pred / pred_t (N, M) as device floats (0 or 1).
struct TermsProblem {
  Planes cams, cams_t;
  const double* inv;     // (N, 6)
  const double* matrix;  // (N, 6), for the deterministic adjoint
  const float* labels;
  const float* pred;
  const float* pred_t;
  int distance;  // mmcam::math::Distance
  double eps, l2_eps;
};

/// Workspace sizes (in doubles) of the forward pass.
struct TermsForwardWorkspace {
  double* src_partials;  // N*M x tiles_of(Hs*Ws) x kMinMaxSlots
  double* dst_partials;  // N*M x tiles_of(Hd*Wd) x kMinMaxSlots
  double* src_stats;     // N*M x kPlaneStatSlots
  double* dst_stats;     // N*M x kPlaneStatSlots
  double* side_sums;     // N*M x tiles_of(Hd*Wd) x kTermsSideSlots
  double* side_totals;   // N*M x kTermsSideSlots: the same summed over the tiles
  double* pair_sums;     // N x tiles_of(Hd*Wd) x M: CMER partial sums of each network
};

/// Forward: terms (2, M) in cams' dtype; warped (N, M, Hd, Wd, cams' dtype) = P; stats (N, M,
/// kKeptStatsPerPlane) double, the per-plane values the backward pass reads (kept_stats.h, as the CPU op).
cudaError_t equivariance_terms_forward(const TermsProblem& p, const TermsForwardWorkspace& ws, void* terms,
                                       void* warped, double* stats, cudaStream_t stream);

struct TermsBackwardWorkspace {
  double* dot_sums;    // N x tiles_of(Hd*Wd) x 2M
  double* dot_totals;  // N x 2M: the same summed over the tiles
  void* grad_warped;   // N*M x Hd*Wd (G), dL/dP (deterministic path only, else unused)
  void* grad_target;   // N*M x Hd*Wd (G), dL/dQ
  void* acc;           // N*M x Hs*Ws (G), zeroed here
  double* src_sums;    // N*M x tiles_of(Hs*Ws) x kBackwardSumSlots
  double* src_totals;  // N*M x kBackwardSumSlots
  double* dst_sums;    // N*M x tiles_of(Hd*Wd) x kBackwardSumSlots
  double* dst_totals;  // N*M x kBackwardSumSlots
};

/// Backward: grad (2, M) device doubles; warped and stats as kept by the forward pass. Writes
/// grad_cams / grad_cams_t (contiguous, cams' dtype) when non-null.
cudaError_t equivariance_terms_backward(const TermsProblem& p, const double* grad, const void* warped,
                                        const double* stats, bool deterministic, const TermsBackwardWorkspace& ws,
                                        void* grad_cams, void* grad_cams_t, cudaStream_t stream);

/// Size in bytes of one element of a gradient map for inputs of dtype t.
constexpr int64_t grad_map_element_size(DType t) { return t == DType::Float64 ? 8 : 4; }

}  // namespace mmcam::cuda
