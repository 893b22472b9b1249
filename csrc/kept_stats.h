// Layout of the statistics the equivariance_terms forward keeps for its backward pass: kept_stats
// (N, M, kKeptStatsPerPlane) float64, one row of slots per (n, m) plane, written and read by the CPU op
// (cpu/equivariance_terms_cpu.cpp) and the CUDA kernels (cuda/equivariance_terms.cu). Python reads the
// count as mmcam._C.KEPT_STATS_PER_PLANE (module.cpp). Torch-free: nvcc compiles the kernels alone.
// The min / max values are elements of the input, so they are exact in double.
#pragma once

namespace mmcam {

enum KeptStat : int {
  kSrcLo,  // min-max statistics of relu(cams[n, m]): lo, hi, den = (hi - lo) + eps
  kSrcHi,
  kSrcDen,
  kDstLo,  // the same of relu(cams_t[n, m])
  kDstHi,
  kDstDen,
  kNormP,             // ||P + l2_eps||, P = warp(mn(cams[n, m]))
  kNormQ,             // ||Q + l2_eps||, Q = mn(cams_t[n, m])
  kKeptStatsPerPlane  // the number of slots
};

// Each side's lo, hi, den are consecutive: the kernels read them as a (lo, hi, den) triple from its first slot.
static_assert(kSrcHi == kSrcLo + 1 && kSrcDen == kSrcLo + 2, "lo, hi, den of the source side are consecutive");
static_assert(kDstHi == kDstLo + 1 && kDstDen == kDstLo + 2, "lo, hi, den of the target side are consecutive");

}  // namespace mmcam
