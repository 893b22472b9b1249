// The choice of the CPU kernels' instruction-set variant (isa.h).
#include <atomic>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

#include "cpu/isa.h"

namespace mmcam::cpu {
namespace {

bool cpu_has(CpuIsa isa) {
  if (isa == CpuIsa::Baseline) return true;
#if defined(MMCAM_AVX2_VARIANT)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

CpuIsa parse(const std::string& name) {
  if (name == "baseline") return CpuIsa::Baseline;
  if (name == "avx2") return CpuIsa::Avx2;
  TORCH_CHECK_VALUE(false, "mmcam: unknown CPU instruction-set variant '", name, "' (expected baseline or avx2)");
}

CpuIsa checked(const std::string& name) {
  const CpuIsa isa = parse(name);
  TORCH_CHECK_VALUE(cpu_has(isa), "mmcam: this CPU or build has no '", name, "' variant of the CPU kernels");
  return isa;
}

CpuIsa initial() {
  if (const char* env = std::getenv("MMCAM_CPU_ISA"); env != nullptr && *env != '\0') return checked(env);
  return cpu_has(CpuIsa::Avx2) ? CpuIsa::Avx2 : CpuIsa::Baseline;
}

std::atomic<int>& active() {
  static std::atomic<int> isa{static_cast<int>(initial())};
  return isa;
}

}  // namespace

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active().load(std::memory_order_relaxed)); }

std::string cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::Avx2 ? "avx2" : "baseline"; }

void set_cpu_isa(const std::string& name) { active().store(static_cast<int>(checked(name))); }

}  // namespace mmcam::cpu
