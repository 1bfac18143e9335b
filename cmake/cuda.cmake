# CUDA. The StarPU found decides whether eellm runs codelets on GPUs (STARPU_USE_CUDA in its
# starpu_config.h): then the CUDA kernels (codelets/cuda/*.cu) go into libeellm, and whatever
# includes <starpu.h> gets the CUDA toolkit's headers and links cudart and cuBLAS. Whenever nvcc
# is found, the kernels are compiled anyway (target eellm_cuda, part of `all`), so a build
# against Debian's StarPU, which has no CUDA, still proves that they compile.
set(EELLM_CUDA OFF)
foreach(dir ${DEPS_INCLUDE_DIRS})
  if(EXISTS ${dir}/starpu_config.h)
    file(STRINGS ${dir}/starpu_config.h starpu_cuda_line REGEX "^#define STARPU_USE_CUDA 1")
    if(starpu_cuda_line)
      set(EELLM_CUDA ON)
    endif()
  endif()
endforeach()

include(CheckLanguage)
check_language(CUDA)
if(EELLM_CUDA AND NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "The StarPU found (${DEPS_starpu-1.3_PREFIX}) has CUDA but no CUDA compiler "
                      "was found: put nvcc on PATH or pass -DCMAKE_CUDA_COMPILER=")
endif()
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "CUDA: no nvcc found, the CUDA kernels (codelets/cuda/*.cu) are not compiled")
  return()
endif()

# Hopper (H100/H200) unless told otherwise, e.g. -DCMAKE_CUDA_ARCHITECTURES=80 for an A100.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
find_package(CUDAToolkit REQUIRED)
if(EELLM_CUDA)
  target_link_libraries(PkgConfig::DEPS INTERFACE CUDA::cudart CUDA::cublas)
  list(APPEND CMAKE_INSTALL_RPATH "${CUDAToolkit_LIBRARY_DIR}")
  message(STATUS "CUDA: the StarPU found has CUDA; libeellm links cudart and cuBLAS and gets "
                 "the CUDA kernels (architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "CUDA: the StarPU found has no CUDA; the CUDA kernels are compiled "
                 "(target eellm_cuda) but not used")
endif()

file(GLOB CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/codelets/cuda/*.cu)
if(NOT CUDA_SOURCES)
  message(STATUS "CUDA: no CUDA kernels (codelets/cuda/*.cu) to compile")
  return()
endif()
add_library(eellm_cuda OBJECT ${CUDA_SOURCES})
set_target_properties(eellm_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON
  CUDA_VISIBILITY_PRESET hidden)
target_include_directories(eellm_cuda PRIVATE ${CMAKE_SOURCE_DIR})
target_compile_options(eellm_cuda PRIVATE -Xcompiler=-Wall,-Wextra)
if(EELLM_CUDA)
  set(EELLM_CUDA_OBJECTS $<TARGET_OBJECTS:eellm_cuda>)
endif()
