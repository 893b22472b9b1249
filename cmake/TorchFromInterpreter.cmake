# Torch, taken from the Python interpreter that runs the build (pip --no-build-isolation), never guessed.
#
# Why not find_package(Torch): torch's CMake config (Caffe2Config.cmake) runs the legacy FindCUDA
# detection whenever torch is a CUDA build. That detection fails configure on most machines that have
# the CUDA torch pip gives on Linux: with no toolkit ("Your installed Caffe2 version uses CUDA but I
# cannot find the CUDA libraries"), and with a minimal toolkit (nvcc + cudart, no nvrtc/cublas:
# "CUDA_nvrtc_LIBRARY NOTFOUND"), although mmcam needs none of those libraries. The extension needs
# only torch's headers, its C++ ABI flag and a few of its shared libraries, which the interpreter can
# tell directly; the CUDA toolkit is found separately (cmake/CudaBackend.cmake) and only when wanted.
#
# Defines:
#   MMCAM_TORCH_VERSION       torch.__version__ (recorded; the package refuses to load against another)
#   MMCAM_TORCH_CUDA_VERSION  torch.version.cuda, empty for a CPU build of torch
#   MMCAM_TORCH_LIB_DIR       the folder of torch's shared libraries
#   mmcam::torch              interface target: include folders, ABI definition, c10 + torch_cpu

set(_mmcam_torch_query [=[
import os, sys, torch
root = os.path.dirname(torch.__file__)
fields = [
    torch.__version__,
    torch.version.cuda or "",
    "1" if torch._C._GLIBCXX_USE_CXX11_ABI else "0",
    os.path.join(root, "include"),
    os.path.join(root, "include", "torch", "csrc", "api", "include"),
    os.path.join(root, "lib"),
]
sys.stdout.write(";".join(f.replace("\\", "/") for f in fields))
]=])

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "${_mmcam_torch_query}"
  OUTPUT_VARIABLE _mmcam_torch_info
  ERROR_VARIABLE _mmcam_torch_error
  RESULT_VARIABLE _mmcam_torch_rc)
if(NOT _mmcam_torch_rc EQUAL 0)
  message(FATAL_ERROR
    "mmcam: cannot import torch with ${Python_EXECUTABLE}:\n${_mmcam_torch_error}\n"
    "Install torch first (e.g. pip install torch), then build mmcam with "
    "pip install --no-build-isolation .")
endif()

list(GET _mmcam_torch_info 0 MMCAM_TORCH_VERSION)
list(GET _mmcam_torch_info 1 MMCAM_TORCH_CUDA_VERSION)
list(GET _mmcam_torch_info 2 _mmcam_torch_cxx11_abi)
list(GET _mmcam_torch_info 3 _mmcam_torch_include)
list(GET _mmcam_torch_info 4 _mmcam_torch_api_include)
list(GET _mmcam_torch_info 5 MMCAM_TORCH_LIB_DIR)

# find_library in torch's own folder only (a libtorch elsewhere must never be picked up), uncached (the
# build folder is reused, and torch may have moved or changed since the last configure).
function(mmcam_torch_library out name)
  find_library(_mmcam_lib_${name} NAMES ${name} PATHS "${MMCAM_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE)
  if(NOT _mmcam_lib_${name})
    message(FATAL_ERROR "mmcam: lib${name} not found in torch's library folder ${MMCAM_TORCH_LIB_DIR}")
  endif()
  set(${out} "${_mmcam_lib_${name}}" PARENT_SCOPE)
endfunction()

mmcam_torch_library(_mmcam_c10 c10)
mmcam_torch_library(_mmcam_torch_cpu torch_cpu)

add_library(mmcam_torch INTERFACE)
add_library(mmcam::torch ALIAS mmcam_torch)
target_include_directories(mmcam_torch SYSTEM INTERFACE "${_mmcam_torch_include}" "${_mmcam_torch_api_include}")
target_compile_definitions(mmcam_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${_mmcam_torch_cxx11_abi})
target_link_libraries(mmcam_torch INTERFACE "${_mmcam_torch_cpu}" "${_mmcam_c10}")

if(MMCAM_TORCH_CUDA_VERSION)
  message(STATUS "mmcam: torch ${MMCAM_TORCH_VERSION} (CUDA ${MMCAM_TORCH_CUDA_VERSION} build) from ${Python_EXECUTABLE}")
else()
  message(STATUS "mmcam: torch ${MMCAM_TORCH_VERSION} (CPU build) from ${Python_EXECUTABLE}")
endif()
