# Whether the CUDA back end (csrc/cuda) is built, and for which GPU architectures.
#
# Input: MMCAM_CUDA = auto (default) | on | off, from -DMMCAM_CUDA=... (pip: -Ccmake.define.MMCAM_CUDA=off)
# or else the environment variable MMCAM_CUDA. TORCH_CUDA_ARCH_LIST (environment) chooses the
# architectures, default "8.0;9.0"; a GPU is never auto-detected.
#   auto: CUDA kernels when torch is a CUDA build AND a working CUDA compiler of the same major version
#         is found (nvcc on PATH, also a wrapper script outside the toolkit's folder; or CUDACXX /
#         CMAKE_CUDA_COMPILER); otherwise a CPU-only build, with the reason in MMCAM_CUDA_STATUS.
#   on:   the same, but configure stops with that reason instead of building CPU-only.
#   off:  CPU-only, whatever is installed.
# Only the libraries the kernels and their glue use are linked: cudart (shared, the copy torch loads),
# c10_cuda and torch_cuda; never nvrtc, cublas or cudnn.
#
# Defines:
#   MMCAM_WITH_CUDA         ON / OFF
#   MMCAM_CUDA_STATUS       one line: what was built, or why CUDA was left out (reported by build_info())
#   MMCAM_CUDA_VERSION      the CUDA compiler's version (empty without CUDA)
#   MMCAM_CUDA_ARCHITECTURES CMake CUDA_ARCHITECTURES list, e.g. 80-real;90-real (empty without CUDA)

if(DEFINED MMCAM_CUDA)
  set(_mmcam_cuda_mode "${MMCAM_CUDA}")
elseif(DEFINED ENV{MMCAM_CUDA} AND NOT "$ENV{MMCAM_CUDA}" STREQUAL "")
  set(_mmcam_cuda_mode "$ENV{MMCAM_CUDA}")
else()
  set(_mmcam_cuda_mode auto)
endif()
string(TOLOWER "${_mmcam_cuda_mode}" _mmcam_cuda_mode)
if(NOT _mmcam_cuda_mode MATCHES "^(auto|on|off)$")
  message(FATAL_ERROR "mmcam: MMCAM_CUDA must be auto, on or off (got '${_mmcam_cuda_mode}')")
endif()

set(MMCAM_WITH_CUDA OFF)
set(MMCAM_CUDA_VERSION "")
set(MMCAM_CUDA_ARCHITECTURES "")
set(_mmcam_cuda_why "")

# TORCH_CUDA_ARCH_LIST entries -> CMake architectures: "8.0;9.0" -> 80-real;90-real, "9.0+PTX" adds
# 90-virtual (PTX for later GPUs), "9.0a" -> 90a-real. Spaces separate entries too, as in torch.
function(mmcam_cuda_architectures out arch_list)
  set(_archs "")
  string(REPLACE " " ";" _entries "${arch_list}")
  foreach(_entry IN LISTS _entries)
    if(_entry STREQUAL "")
      continue()
    endif()
    string(FIND "${_entry}" "+PTX" _ptx)
    string(REPLACE "+PTX" "" _arch "${_entry}")
    string(REPLACE "." "" _arch "${_arch}")
    if(NOT _arch MATCHES "^[0-9]+[a-z]?$")
      message(FATAL_ERROR "mmcam: cannot read TORCH_CUDA_ARCH_LIST entry '${_entry}' (expected e.g. 8.0, 9.0+PTX, 9.0a)")
    endif()
    list(APPEND _archs "${_arch}-real")
    if(NOT _ptx EQUAL -1)
      list(APPEND _archs "${_arch}-virtual")
    endif()
  endforeach()
  set(${out} "${_archs}" PARENT_SCOPE)
endfunction()

if(_mmcam_cuda_mode STREQUAL "off")
  set(_mmcam_cuda_why "MMCAM_CUDA=off")
elseif(NOT MMCAM_TORCH_CUDA_VERSION)
  set(_mmcam_cuda_why "torch ${MMCAM_TORCH_VERSION} is a CPU build")
elseif(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/CMakeLists.txt")
  set(_mmcam_cuda_why "the CUDA sources (csrc/cuda) are not in this source tree")
else()
  # The build folder is reused between installs: forget a cached "no compiler" or a compiler that has
  # since gone, so that installing or removing a toolkit is seen by the next build.
  if(DEFINED CACHE{CMAKE_CUDA_COMPILER} AND (NOT CMAKE_CUDA_COMPILER OR NOT EXISTS "${CMAKE_CUDA_COMPILER}"))
    unset(CMAKE_CUDA_COMPILER CACHE)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(_mmcam_cuda_why
        "no working CUDA compiler found (put the toolkit's nvcc on PATH, or set CUDACXX to it)")
  else()
    set(_mmcam_arch_list "$ENV{TORCH_CUDA_ARCH_LIST}")
    if(_mmcam_arch_list STREQUAL "")
      set(_mmcam_arch_list "8.0;9.0")
    endif()
    mmcam_cuda_architectures(MMCAM_CUDA_ARCHITECTURES "${_mmcam_arch_list}")
    if(NOT MMCAM_CUDA_ARCHITECTURES)
      message(FATAL_ERROR "mmcam: TORCH_CUDA_ARCH_LIST='${_mmcam_arch_list}' names no architecture")
    endif()
    # enable_language needs an architecture list before it compiles its own test program.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES ${MMCAM_CUDA_ARCHITECTURES})
    endif()
    enable_language(CUDA)
    string(REGEX MATCH "^[0-9]+" _mmcam_nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
    string(REGEX MATCH "^[0-9]+" _mmcam_torch_cuda_major "${MMCAM_TORCH_CUDA_VERSION}")
    if(NOT _mmcam_nvcc_major STREQUAL _mmcam_torch_cuda_major)
      set(_mmcam_cuda_why
          "${CMAKE_CUDA_COMPILER} is CUDA ${CMAKE_CUDA_COMPILER_VERSION} but torch was built with CUDA "
          "${MMCAM_TORCH_CUDA_VERSION} (the major versions must agree; put a matching nvcc on PATH)")
    else()
      find_package(CUDAToolkit)
      if(NOT TARGET CUDA::cudart)
        set(_mmcam_cuda_why "the CUDA toolkit of ${CMAKE_CUDA_COMPILER} has no cudart library")
      else()
        set(MMCAM_WITH_CUDA ON)
        set(MMCAM_CUDA_VERSION "${CMAKE_CUDA_COMPILER_VERSION}")
      endif()
    endif()
  endif()
endif()

if(MMCAM_WITH_CUDA)
  set(MMCAM_CUDA_STATUS "CUDA kernels built with CUDA ${MMCAM_CUDA_VERSION} for ${MMCAM_CUDA_ARCHITECTURES}")
  message(STATUS "mmcam: ${MMCAM_CUDA_STATUS}")
else()
  set(MMCAM_CUDA_ARCHITECTURES "")
  set(MMCAM_CUDA_STATUS "CPU only: ${_mmcam_cuda_why}")
  if(_mmcam_cuda_mode STREQUAL "on")
    message(FATAL_ERROR "mmcam: MMCAM_CUDA=on but the CUDA back end cannot be built: ${_mmcam_cuda_why}")
  endif()
  message(STATUS "mmcam: CUDA kernels left out, building ${MMCAM_CUDA_STATUS}")
endif()
