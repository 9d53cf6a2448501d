// Greedy sampling on the GPU: argmax of each logit row with the non-finite guard in the same
// pass (no extra read of the logits), and an optional fp32 copy for host-side sampling. One block
// a row; rows whose length is a multiple of the 16-byte vector are read (and copied) in vectors
// (the rows then start 16-byte aligned, as the buffers do).
#include <cfloat>

#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kArgmaxThreads = 1024;

// Larger value wins; equal values: the lower index (torch.argmax returns the first maximum).
__device__ __forceinline__ void Better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

// Reduces (value, index, non-finite flag) over the warp; every lane gets the result.
__device__ __forceinline__ void WarpBest(float& v, int& i, int& bad) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    Better(v, i, ov, oi);
  }
  bad = __any_sync(0xffffffffu, bad);
}

template <typename Act>
__global__ void __launch_bounds__(kArgmaxThreads)
ArgmaxKernel(const Act* __restrict__ logits, int V, float* __restrict__ logits_f32,
             int32_t* __restrict__ tokens, int32_t* __restrict__ finite) {
  GridDependencyWait();
  LaunchDependents();
  const int r = blockIdx.x;
  const Act* row = logits + static_cast<int64_t>(r) * V;
  float* out = logits_f32 ? logits_f32 + static_cast<int64_t>(r) * V : nullptr;
  float best = -FLT_MAX;
  int best_i = INT_MAX;
  int bad = 0;
  const auto take = [&](float x, int j) {
    if (!isfinite(x)) {
      bad = 1;
    } else {
      Better(best, best_i, x, j);
    }
  };
  constexpr int kVec = Vec16<Act>::kN;
  if (V % kVec == 0) {
    // 16-byte loads, four in flight a thread: a bs1 row (151,552 logits) is one block's work,
    // and one scalar load at a time made it a chain of ~150 L2 round trips (~50 us a step).
    const int4* row4 = reinterpret_cast<const int4*>(row);
    const int nv = V / kVec;
#pragma unroll 4
    for (int v = threadIdx.x; v < nv; v += kArgmaxThreads) {
      float x[kVec];
      Vec16<Act>::Unpack(__ldcs(row4 + v), x);
      if (out) {
#pragma unroll
        for (int e = 0; e < kVec; e += 4) {
          *reinterpret_cast<float4*>(out + v * kVec + e) = make_float4(x[e], x[e + 1], x[e + 2], x[e + 3]);
        }
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) take(x[e], v * kVec + e);
    }
  } else {
    for (int j = threadIdx.x; j < V; j += kArgmaxThreads) {
      const float x = ToFloat(row[j]);
      if (out) out[j] = x;
      take(x, j);
    }
  }
  WarpBest(best, best_i, bad);
  __shared__ float s_val[32];
  __shared__ int s_idx[32], s_bad[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { s_val[warp] = best; s_idx[warp] = best_i; s_bad[warp] = bad; }
  __syncthreads();
  if (warp == 0) {
    best = s_val[lane]; best_i = s_idx[lane]; bad = s_bad[lane];
    WarpBest(best, best_i, bad);
    if (lane == 0) {
      tokens[r] = best_i == INT_MAX ? 0 : best_i;
      finite[r] = bad ? 0 : 1;
    }
  }
}

}  // namespace

cudaError_t LaunchArgmax(DType act, const void* logits, int rows, int V, float* logits_f32,
                         int32_t* tokens, int32_t* finite, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (act) {
    case DType::kF32:
      return LaunchKernel(ArgmaxKernel<float>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const float*>(logits), V, logits_f32, tokens, finite);
    case DType::kBF16:
      return LaunchKernel(ArgmaxKernel<Bf16>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const Bf16*>(logits), V, logits_f32, tokens, finite);
    case DType::kF16:
      return LaunchKernel(ArgmaxKernel<__half>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const __half*>(logits), V, logits_f32, tokens, finite);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace glm
