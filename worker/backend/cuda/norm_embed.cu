// Embedding gather, fused residual-add + RMSNorm, SiLU-and-multiply, dtype conversion and the
// fp16-safe per-tensor scaling: the elementwise/row-wise kernels of a GLM-4 layer.
#include <cuda_fp16.h>

#include <algorithm>

#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"
#include "worker/backend/cuda/norm_row.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kRowThreads = 256;

template <typename Act, typename Weight>
__global__ void EmbeddingKernel(const int32_t* __restrict__ ids, const Weight* __restrict__ table,
                                Act* __restrict__ out, int D) {
  GridDependencyWait();
  LaunchDependents();
  const int t = blockIdx.x;
  const Weight* row = table + static_cast<int64_t>(ids[t]) * D;
  Act* dst = out + static_cast<int64_t>(t) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = FromFloat<Act>(ToFloat(row[d]));
}

// Vocab-parallel: rows [vocab_begin, vocab_begin + vocab) of the vocabulary live in `table`;
// tokens another rank owns get zeros (the all-reduce that follows fills them in).
template <typename Act, typename Weight>
__global__ void EmbeddingShardKernel(const int32_t* __restrict__ ids,
                                     const Weight* __restrict__ table, Act* __restrict__ out,
                                     int D, int vocab_begin, int vocab) {
  GridDependencyWait();
  LaunchDependents();
  const int t = blockIdx.x;
  const int local = ids[t] - vocab_begin;
  Act* dst = out + static_cast<int64_t>(t) * D;
  if (local < 0 || local >= vocab) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = FromFloat<Act>(0.f);
    return;
  }
  const Weight* row = table + static_cast<int64_t>(local) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = FromFloat<Act>(ToFloat(row[d]));
}

// One block per output row; the row (D <= 8192 fp32) is staged in shared memory.
template <typename Act, typename Weight>
__global__ void __launch_bounds__(kRowThreads)
AddRmsNormKernel(Act* __restrict__ residual, const Act* __restrict__ delta,
                 const Weight* __restrict__ post_weight, const Weight* __restrict__ weight,
                 Act* __restrict__ out, const int32_t* __restrict__ row_index, int D, float eps) {
  extern __shared__ float row[];  // [D]
  __shared__ float scratch[32];
  GridDependencyWait();
  LaunchDependents();
  const int i = blockIdx.x;
  const int r = row_index ? row_index[i] : i;
  Act* res = residual + static_cast<int64_t>(r) * D;
  if (delta) {
    const Act* del = delta + static_cast<int64_t>(r) * D;
    if (post_weight) {
      float ss = 0.f;
      for (int d = threadIdx.x; d < D; d += kRowThreads) {
        const float x = ToFloat(del[d]);
        row[d] = x;
        ss += x * x;
      }
      const float inv = rsqrtf(BlockSum<kRowThreads>(ss, scratch) / D + eps);
      for (int d = threadIdx.x; d < D; d += kRowThreads) {
        const float normed = RoundTo<Act>(row[d] * inv) * ToFloat(post_weight[d]);
        row[d] = RoundTo<Act>(ToFloat(res[d]) + RoundTo<Act>(normed));
      }
    } else {
      for (int d = threadIdx.x; d < D; d += kRowThreads)
        row[d] = RoundTo<Act>(ToFloat(res[d]) + ToFloat(del[d]));
    }
    for (int d = threadIdx.x; d < D; d += kRowThreads) res[d] = FromFloat<Act>(row[d]);
  } else {
    for (int d = threadIdx.x; d < D; d += kRowThreads) row[d] = ToFloat(res[d]);
  }
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += kRowThreads) ss += row[d] * row[d];
  const float inv = rsqrtf(BlockSum<kRowThreads>(ss, scratch) / D + eps);
  Act* o = out + static_cast<int64_t>(i) * D;
  for (int d = threadIdx.x; d < D; d += kRowThreads)
    o[d] = FromFloat<Act>(RoundTo<Act>(row[d] * inv) * ToFloat(weight[d]));
}

// AddRmsNormKernel on 16-byte vectors (D a multiple of the vector width), the shared row code of
// norm_row.cuh: every load of a pass can be in flight at once (the shared-memory kernel's loops
// issue one dependent load after another). kPer > 0: the row in registers (AddRmsNormRowRegs,
// D / kV <= kPer * kRowThreads; one pass over memory); 0: AddRmsNormRow (any D).
// Six blocks an SM at least (75% occupancy; the register count at no bound gave four).
// stage (decided in LaunchAddRmsNorm): the norm weights go to dynamic shared memory
// before the wait (StageNormWeights), weight then post_weight.
// kThreads: the block (256, or 128 for GLM_CUDA_NORM_THREADS A/B runs: twice the rows an SM).
template <typename Act, typename Weight, int kPer, int kThreads = kRowThreads>
__global__ void __launch_bounds__(kThreads, kThreads <= 128 ? 8 : (kPer <= 2 ? 6 : 4))
AddRmsNormVecKernel(Act* __restrict__ residual, const Act* __restrict__ delta,
                    const Weight* __restrict__ post_weight, const Weight* __restrict__ weight,
                    Act* __restrict__ out, const int32_t* __restrict__ row_index, int D, float eps,
                    bool stage) {
  __shared__ float scratch[32];
  extern __shared__ __align__(16) unsigned char norm_smem[];
  Weight* const s_w = reinterpret_cast<Weight*>(norm_smem);
  Weight* const s_post = s_w + D;
  const bool staged = kNormStageable<Act, Weight> && stage;
  if constexpr (kNormStageable<Act, Weight>) {
    if (staged) StageNormWeights<Act, Weight, kThreads>(post_weight, weight, s_post, s_w, D);
  }
  GridDependencyWait();
  LaunchDependents();
  if (staged) CopyToSharedWait();
  const Weight* w = staged ? s_w : weight;
  const Weight* post_w = post_weight == nullptr ? nullptr : staged ? s_post : post_weight;
  const int i = blockIdx.x;
  const int r = row_index ? row_index[i] : i;
  Act* res = residual + static_cast<int64_t>(r) * D;
  const Act* del = delta ? delta + static_cast<int64_t>(r) * D : nullptr;
  Act* o = out + static_cast<int64_t>(i) * D;
  if constexpr (kPer > 0) {
    AddRmsNormRowRegs<Act, Weight, kThreads, kPer>(res, del, post_w, w, res, o, D, eps, scratch);
  } else {
    AddRmsNormRow<Act, Weight, kThreads>(res, del, post_w, w, res, o, D, eps, scratch);
  }
}

// SiluMulKernel on 16-byte vectors (F a multiple of the vector width): blockIdx.x / threadIdx.x
// walk a row's vectors, blockIdx.y the rows (no 64-bit division a vector).
template <typename Act>
__global__ void __launch_bounds__(256, 6)
SiluMulVecKernel(const Act* __restrict__ gate_up, Act* __restrict__ out, int F, int T) {
  constexpr int kV = TVec<Act>::kN;
  GridDependencyWait();
  LaunchDependents();
  const int j = (blockIdx.x * blockDim.x + threadIdx.x) * kV;
  if (j >= F) return;
  // Rows t and t + gridDim.y an iteration: both rows' loads in flight together.
  for (int64_t t0 = blockIdx.y; t0 < T; t0 += 2 * static_cast<int64_t>(gridDim.y)) {
    int4 gr[2], ur[2];  // packed until used (registers: occupancy)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t t = t0 + r * static_cast<int64_t>(gridDim.y);
      if (t < T) {
        gr[r] = *reinterpret_cast<const int4*>(gate_up + t * 2 * F + j);
        ur[r] = *reinterpret_cast<const int4*>(gate_up + t * 2 * F + F + j);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t t = t0 + r * static_cast<int64_t>(gridDim.y);
      if (t >= T) continue;
      float g[kV], u[kV], y[kV];
      Vec16<Act>::Unpack(gr[r], g);
      Vec16<Act>::Unpack(ur[r], u);
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        y[e] = SiluMul<Act>(g[e], u[e]);
      }
      TVec<Act>::Store(out + t * F + j, y);
    }
  }
}

template <typename Act>
__global__ void SiluMulKernel(const Act* __restrict__ gate_up, Act* __restrict__ out, int F,
                              int64_t n) {
  GridDependencyWait();
  LaunchDependents();
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = idx / F, j = idx % F;
    const float g = ToFloat(gate_up[t * 2 * F + j]);
    const float u = ToFloat(gate_up[t * 2 * F + F + j]);
    out[idx] = FromFloat<Act>(SiluMul<Act>(g, u));
  }
}

__global__ void AbsMaxKernel(const float* __restrict__ x, int64_t n, uint32_t* amax) {
  GridDependencyWait();
  LaunchDependents();
  float m = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(x[i]));  // NaN is dropped by fmaxf; inf is kept and stays inf below
  m = WarpMax(m);
  // Non-negative floats order like their bit patterns.
  if (threadIdx.x % 32 == 0) atomicMax(amax, __float_as_uint(m));
}

__device__ __forceinline__ float Fp16SafeScale(uint32_t amax_bits) {
  const float amax = __uint_as_float(amax_bits);
  constexpr float kLimit = 32768.f;
  if (!(amax > kLimit) || isinf(amax)) return 1.f;  // inf stays inf: the guard catches it
  return exp2f(-ceilf(log2f(amax / kLimit)));
}

__global__ void ScaleToFp16Kernel(const float* __restrict__ x, int64_t n, __half* __restrict__ out,
                                  const uint32_t* amax, float* alpha) {
  GridDependencyWait();
  LaunchDependents();
  const float s = Fp16SafeScale(*amax);
  if (blockIdx.x == 0 && threadIdx.x == 0) *alpha = 1.f / s;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(x[i] * s);
}

template <typename From, typename To>
__global__ void ConvertKernel(const From* __restrict__ in, To* __restrict__ out, int64_t n) {
  GridDependencyWait();
  LaunchDependents();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = FromFloat<To>(ToFloat(in[i]));
}

int GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

cudaError_t LaunchEmbedding(KernelTypes types, const int32_t* ids, const void* table, void* out,
                            int T, int D, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchKernel(EmbeddingKernel<Act, Weight>, T, 256, 0, stream, ids,
                        static_cast<const Weight*>(table), static_cast<Act*>(out), D);
  });
}

cudaError_t LaunchEmbeddingShard(KernelTypes types, const int32_t* ids, const void* table,
                                 void* out, int T, int D, int vocab_begin, int vocab,
                                 cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchKernel(EmbeddingShardKernel<Act, Weight>, T, 256, 0, stream, ids,
                        static_cast<const Weight*>(table), static_cast<Act*>(out), D, vocab_begin,
                        vocab);
  });
}

cudaError_t LaunchAddRmsNorm(KernelTypes types, void* residual, const void* delta,
                             const void* post_weight, const void* weight, void* out,
                             const int32_t* row_index, int rows, int D, float eps,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (D > 12288) return cudaErrorInvalidValue;  // row staged in 48 KB of shared memory
  const size_t smem = static_cast<size_t>(D) * sizeof(float);
  return GLM_DISPATCH_TYPES(types, {
    constexpr int kV = TVec<Act>::kN;
    if (D % kV == 0) {
      const int threads = NormBlockThreads();
      const int per = (D / kV + threads - 1) / threads;  // vectors a thread
      auto* kernel = threads == 128 ? (per <= 2   ? AddRmsNormVecKernel<Act, Weight, 2, 128>
                                       : per <= 4 ? AddRmsNormVecKernel<Act, Weight, 4, 128>
                                                  : AddRmsNormVecKernel<Act, Weight, 0, 128>)
                     : per <= 1 ? AddRmsNormVecKernel<Act, Weight, 1>
                     : per <= 2 ? AddRmsNormVecKernel<Act, Weight, 2>
                     : per <= 4 ? AddRmsNormVecKernel<Act, Weight, 4>
                                : AddRmsNormVecKernel<Act, Weight, 0>;
      // Staged weights: at most 24 KB a block, so six blocks an SM still fit (an sm80's 164 KB).
      const size_t stage_bytes = NormStageBytes<Weight>(D, post_weight != nullptr);
      const bool stage = kNormStageable<Act, Weight> &&
                         NormWeightStaging(NormStageSite::kAddNorm) && stage_bytes <= 24 * 1024;
      return LaunchKernel(kernel, rows, threads, stage ? stage_bytes : 0, stream,
                          static_cast<Act*>(residual), static_cast<const Act*>(delta),
                          static_cast<const Weight*>(post_weight), static_cast<const Weight*>(weight),
                          static_cast<Act*>(out), row_index, D, eps, stage);
    }
    return LaunchKernel(AddRmsNormKernel<Act, Weight>, rows, kRowThreads, smem, stream,
                        static_cast<Act*>(residual), static_cast<const Act*>(delta),
                        static_cast<const Weight*>(post_weight), static_cast<const Weight*>(weight),
                        static_cast<Act*>(out), row_index, D, eps);
  });
}

cudaError_t LaunchSiluMul(KernelTypes types, const void* gate_up, void* out, int T, int F,
                          cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(T) * F;
  if (n == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    constexpr int kV = TVec<Act>::kN;
    if (F % kV == 0) {
      // About 32 blocks of 256 threads an SM (the rows beyond loop inside a block).
      const int gx = (F / kV + 255) / 256;
      const int gy = std::max(1, std::min(T, 32 * DeviceSmCount() / gx));
      const dim3 grid(gx, std::min(gy, 65535));
      return LaunchKernel(SiluMulVecKernel<Act>, grid, 256, 0, stream,
                          static_cast<const Act*>(gate_up), static_cast<Act*>(out), F, T);
    }
    return LaunchKernel(SiluMulKernel<Act>, GridFor(n, 256), 256, 0, stream,
                        static_cast<const Act*>(gate_up), static_cast<Act*>(out), F, n);
  });
}

cudaError_t LaunchScaleToFp16(const float* x, int64_t n, void* out, uint32_t* amax_scratch,
                              float* alpha, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(amax_scratch, 0, sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  const int grid = GridFor(n, 256) < 1024 ? GridFor(n, 256) : 1024;
  err = LaunchKernel(AbsMaxKernel, grid, 256, 0, stream, x, n, amax_scratch);
  if (err != cudaSuccess) return err;
  return LaunchKernel(ScaleToFp16Kernel, GridFor(n, 256), 256, 0, stream, x, n,
                      static_cast<__half*>(out), amax_scratch, alpha);
}

namespace {
template <typename From>
cudaError_t ConvertFrom(const From* in, DType to, void* out, int64_t n, cudaStream_t stream) {
  const int grid = GridFor(n, 256);
  switch (to) {
    case DType::kF32: return LaunchKernel(ConvertKernel<From, float>, grid, 256, 0, stream, in, static_cast<float*>(out), n);
    case DType::kBF16: return LaunchKernel(ConvertKernel<From, Bf16>, grid, 256, 0, stream, in, static_cast<Bf16*>(out), n);
    case DType::kF16: return LaunchKernel(ConvertKernel<From, __half>, grid, 256, 0, stream, in, static_cast<__half*>(out), n);
  }
  return cudaErrorInvalidValue;
}
}  // namespace

cudaError_t LaunchConvert(DType from, const void* in, DType to, void* out, int64_t n,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (from) {
    case DType::kF32: return ConvertFrom(static_cast<const float*>(in), to, out, n, stream);
    case DType::kBF16: return ConvertFrom(static_cast<const Bf16*>(in), to, out, n, stream);
    case DType::kF16: return ConvertFrom(static_cast<const __half*>(in), to, out, n, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace glm
