# CUDA / NCCL detection.
#
# CUDA architectures follow the toolkit: CUDA 13 dropped sm70 (V100), so a CUDA 13 build
# targets sm75+ and a V100 pool needs a CUDA 12 build (docs/PRECISION.md: "Building for V100").
set(GLM_HAVE_CUDA OFF)
set(GLM_HAVE_NCCL OFF)
if(NOT GLM_WITH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT GLM_CUDA_ARCHS STREQUAL "")
      set(CMAKE_CUDA_ARCHITECTURES ${GLM_CUDA_ARCHS})
    endif()
    # Decide the architecture list before enable_language so CMake does not probe a default.
    execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --version OUTPUT_VARIABLE _nvcc_version)
    string(REGEX MATCH "release ([0-9]+)\\.([0-9]+)" _m "${_nvcc_version}")
    set(GLM_CUDA_VERSION_MAJOR ${CMAKE_MATCH_1})
    if(NOT CMAKE_CUDA_ARCHITECTURES)
      if(GLM_CUDA_VERSION_MAJOR GREATER_EQUAL 13)
        set(CMAKE_CUDA_ARCHITECTURES "80;90")
      else()
        set(CMAKE_CUDA_ARCHITECTURES "70;80;90")
      endif()
    endif()
    # sm90 means sm90a: the decode GEMM (worker/backend/cuda/gemm_wgmma.cu) needs wgmma and TMA,
    # which only the arch-specific ISA has; 90a code runs on sm90 GPUs (H100, H200), which is
    # all an sm90 build is for. (A list with "90-real" / "90-virtual" is left as it is.)
    list(TRANSFORM CMAKE_CUDA_ARCHITECTURES REPLACE "^90$" "90a")
    # One CUDA runtime per process: the libraries link CUDA::cudart (shared), so targets with .cu
    # sources must not add cudart_static on top (two runtimes in one process broke civetweb's
    # thread start in glm-worker: "Cannot create threads").
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(GLM_HAVE_CUDA ON)
  elseif(GLM_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "GLM_WITH_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  endif()
endif()

if(GLM_HAVE_CUDA AND NOT GLM_WITH_NCCL STREQUAL "OFF")
  find_path(GLM_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include)
  find_library(GLM_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
  if(GLM_NCCL_INCLUDE AND GLM_NCCL_LIBRARY)
    set(GLM_HAVE_NCCL ON)
    add_library(glm_nccl_dep INTERFACE)
    target_include_directories(glm_nccl_dep INTERFACE ${GLM_NCCL_INCLUDE})
    target_link_libraries(glm_nccl_dep INTERFACE ${GLM_NCCL_LIBRARY})
  elseif(GLM_WITH_NCCL STREQUAL "ON")
    message(FATAL_ERROR "GLM_WITH_NCCL=ON but nccl.h / libnccl were not found")
  endif()
endif()
