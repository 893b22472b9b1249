// The pybind11 module mmcam._C. Loading it registers the `mmcam::` operators with the PyTorch
// dispatcher (schemas.cpp, and each op's file under cpu/ and cuda/); the module itself reports how it was
// built, which instruction-set variant the CPU kernels run (cpu/isa.h), and exports KEPT_STATS_PER_PLANE, the length of
// the last axis of equivariance_terms' kept statistics (kept_stats.h).
#include <pybind11/pybind11.h>

#include <ATen/Parallel.h>

#include "cpu/isa.h"
#include "kept_stats.h"

namespace py = pybind11;

namespace {

bool built_with_openmp() {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

bool built_with_cuda() {
#if defined(MMCAM_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mmcam compiled core: registers the mmcam:: operators and reports build information.";
  m.def("build_info",
        []() {
    py::dict info;
    info["mmcam_version"] = MMCAM_VERSION;
    info["torch_version"] = MMCAM_TORCH_VERSION;
    info["cuda"] = built_with_cuda();
    info["cuda_status"] = MMCAM_CUDA_STATUS;
    info["cuda_version"] = MMCAM_CUDA_VERSION;
    info["cuda_architectures"] = MMCAM_CUDA_ARCHITECTURES;
    info["openmp"] = built_with_openmp();
    info["parallel_backend"] = at::get_parallel_info();
    info["cxx_standard"] = static_cast<long>(__cplusplus);
    return info;
  },
        "Build information: mmcam and torch versions the extension was compiled for; whether the CUDA "
        "kernels were built, and the one-line reason when they were not (cuda_status), the CUDA compiler "
        "version and GPU architectures; OpenMP support, and ATen's parallel settings at call time.");
  m.def("cpu_isa", []() { return mmcam::cpu::cpu_isa_name(mmcam::cpu::active_cpu_isa()); },
        "The instruction-set variant the CPU kernels run: 'avx2' where the CPU has AVX2 and FMA, else "
        "'baseline'; MMCAM_CPU_ISA=baseline|avx2 in the environment chooses it at import. Results are bitwise "
        "identical either way.");
  m.def("_set_cpu_isa", &mmcam::cpu::set_cpu_isa,
        "Selects the CPU kernels' variant by name (for tests that compare the variants).");
  mmcam::cpu::active_cpu_isa();  // a bad MMCAM_CPU_ISA fails the import, with its message
  // equivariance_terms(..., keep_for_backward=True) returns kept statistics of shape (N, M, this).
  m.attr("KEPT_STATS_PER_PLANE") = py::int_(static_cast<int>(mmcam::kKeptStatsPerPlane));
}
