// Global -> shared copies with cp.async (sm80+), shared by the kernels that stage memory in
// shared memory: the tensor-core attention's K/V pipeline and the norms' weight staging.
// Below sm80 only CopyToShared16 exists (a load and a store).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace glm {
namespace cuda {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// 16-byte global -> shared copy; valid == false writes zeros (src is not read).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// 16 bytes global -> shared, complete for the calling thread after CopyToSharedWait(): cp.async
// on sm80+ (the thread goes on while the copy is in flight), else a load and a store. Only the
// calling thread may rely on the copy without a barrier.
__device__ __forceinline__ void CopyToShared16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  CpAsync16(dst, src, true);
#else
  *static_cast<int4*>(dst) = *static_cast<const int4*>(src);
#endif
}
// Commits the calling thread's CopyToShared16 copies and waits for all of them.
__device__ __forceinline__ void CopyToSharedWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  CpAsyncCommit();
  CpAsyncWait<0>();
#endif
}

}  // namespace cuda
}  // namespace glm
