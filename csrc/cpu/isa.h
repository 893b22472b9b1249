// Instruction-set variants of the CPU kernels. Every kernel runs its work through parallel_over, which
// calls the kernel's per-range body either as compiled for the baseline target (x86-64: SSE2) or inlined
// whole (GCC/Clang `flatten`) into a copy compiled for AVX2: the same source, twice the vector width in
// its auto-vectorised loops. The variant is chosen once per process (cpu_isa.cpp): the widest the CPU
// supports, or the one MMCAM_CPU_ISA=baseline|avx2 names.
//
// Both variants give bitwise identical results: the build never contracts a * b + c into a fused
// multiply-add (-ffp-contract=off, CMakeLists.txt), reductions accumulate in a fixed lane order written
// in the source (plane_ops.h), and each element operation is the same IEEE operation at any width.
// Code compiled for AVX2 exists only inlined into the variant's entry point, so no shared (inline or
// template) function is ever compiled for AVX2: a CPU without it never runs an AVX2 instruction.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/Parallel.h>

namespace mmcam::cpu {

enum class CpuIsa : int { Baseline = 0, Avx2 = 1 };

/// The variant the kernels run now.
CpuIsa active_cpu_isa();

/// Its name: "baseline" or "avx2".
std::string cpu_isa_name(CpuIsa isa);

/// Selects the variant by name (tests compare the variants); refuses one the CPU or build lacks.
void set_cpu_isa(const std::string& name);

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define MMCAM_AVX2_VARIANT 1

template <class F>
__attribute__((target("avx2,fma"), flatten)) void run_avx2(const F& body, int64_t begin, int64_t end) {
  body(begin, end);
}
#endif

/// at::parallel_for(0, count, 1, body), each range run by the active variant of body.
template <class F>
void parallel_over(int64_t count, const F& body) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
#if defined(MMCAM_AVX2_VARIANT)
    if (active_cpu_isa() == CpuIsa::Avx2) {
      run_avx2(body, begin, end);
      return;
    }
#endif
    body(begin, end);
  });
}

}  // namespace mmcam::cpu
