// cp.async (sm80+) helpers shared by the tensor-core attention and the streamed GEMV.
// GLM_CP_ASYNC_ARCH is defined in the host pass and for sm80+ device passes; kernels that use
// these helpers trap in device passes below sm80 (their launchers never select them there).
#pragma once

#include <cstdint>

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GLM_CP_ASYNC_ARCH 1
#endif

namespace glm {
namespace cuda {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(GLM_CP_ASYNC_ARCH)
// 16-byte global -> shared copy; valid == false writes zeros (src is not read).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif  // GLM_CP_ASYNC_ARCH

}  // namespace cuda
}  // namespace glm
