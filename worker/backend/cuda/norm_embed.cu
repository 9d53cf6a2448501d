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

// The norm weights a 16-byte-vector row kernel reads, and the PDL wait: with stage (where
// kNormStageable), weight and post_weight (may be null) are copied to s_w and s_w + D in shared
// memory before GridDependencyWait() (StageNormWeights), so the copies overlap the predecessor's
// tail. wait_copies: wait for them here; else they complete with the caller's first cp.async group.
template <typename Weight>
struct RowNormWeights {
  const Weight* w;
  const Weight* post_w;  // null without a post norm
};
template <typename Act, typename Weight>
__device__ __forceinline__ RowNormWeights<Weight> NormWeightsAfterWait(const Weight* post_weight,
                                                                       const Weight* weight,
                                                                       Weight* s_w, int D,
                                                                       bool stage, bool wait_copies) {
  Weight* const s_post = s_w + D;
  const bool staged = kNormStageable<Act, Weight> && stage;
  if constexpr (kNormStageable<Act, Weight>) {
    if (staged) StageNormWeights<Act, Weight, kRowThreads>(post_weight, weight, s_post, s_w, D);
  }
  GridDependencyWait();
  LaunchDependents();
  if (staged && wait_copies) CopyToSharedWait();
  return {staged ? s_w : weight, post_weight == nullptr ? nullptr : staged ? s_post : post_weight};
}

// AddRmsNormKernel on 16-byte vectors (D a multiple of the vector width), the shared row code of
// norm_row.cuh: every load of a pass can be in flight at once (the shared-memory kernel's loops
// issue one dependent load after another). kPer > 0: the row in registers (AddRmsNormRowRegs,
// D / kV <= kPer * kRowThreads; one pass over memory); 0: AddRmsNormRow (any D).
// Six blocks an SM at least (75% occupancy; the register count at no bound gave four).
// stage (decided in LaunchAddRmsNorm): the norm weights go to dynamic shared memory
// before the wait (StageNormWeights), weight then post_weight.
template <typename Act, typename Weight, int kPer>
__global__ void __launch_bounds__(kRowThreads, kPer <= 2 ? 6 : 4)
AddRmsNormVecKernel(Act* __restrict__ residual, const Act* __restrict__ delta,
                    const Weight* __restrict__ post_weight, const Weight* __restrict__ weight,
                    Act* __restrict__ out, const int32_t* __restrict__ row_index, int D, float eps,
                    bool stage) {
  __shared__ float scratch[32];
  extern __shared__ __align__(16) unsigned char norm_smem[];
  const auto [w, post_w] = NormWeightsAfterWait<Act, Weight>(
      post_weight, weight, reinterpret_cast<Weight*>(norm_smem), D, stage, /*wait_copies=*/true);
  const int i = blockIdx.x;
  const int r = row_index ? row_index[i] : i;
  Act* res = residual + static_cast<int64_t>(r) * D;
  const Act* del = delta ? delta + static_cast<int64_t>(r) * D : nullptr;
  Act* o = out + static_cast<int64_t>(i) * D;
  if constexpr (kPer > 0) {
    AddRmsNormRowRegs<Act, Weight, kRowThreads, kPer>(res, del, post_w, w, res, o, D, eps, scratch);
  } else {
    AddRmsNormRow<Act, Weight, kRowThreads>(res, del, post_w, w, res, o, D, eps, scratch);
  }
}

// AddRmsNormVecKernel for many contiguous rows (prefill): a grid of as many blocks as fit the GPU
// walks the rows, and every block copies its next row (residual and delta) into a shared-memory
// ring with cp.async before the reductions and stores of the current one, so its loads stay in
// flight through them (a block a row, the Vec kernel's way, leaves each block's loads idle while
// it reduces and stores: 1.8 TB/s on the H100's 8,192-row prefill steps, where the SiLU kernel's
// stream moves 2.8). The ring costs no registers, so as many blocks an SM fit as for the Vec
// kernel (v10's version held the next row in registers: 3 blocks an SM, slower than the Vec
// kernel's 6). Each thread copies and reads back only its own vectors (no barrier for the ring).
// The row arithmetic is AddRmsNormRegs: the Vec kernel's bits. Contiguous rows only (no
// row_index): a row is loaded before the block's previous row is stored, safe for distinct rows.
// sm80+ only (cp.async; AddNormPipelineGrid is 0 below).
template <typename Act, typename Weight, int kPer>
__global__ void __launch_bounds__(kRowThreads, kPer <= 2 ? 5 : 4)
AddRmsNormPipeKernel(Act* residual, const Act* __restrict__ delta,
                     const Weight* __restrict__ post_weight, const Weight* __restrict__ weight,
                     Act* __restrict__ out, int rows, int D, float eps, bool stage) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int kV = TVec<Act>::kN;
  __shared__ float scratch[32];
  extern __shared__ __align__(16) unsigned char norm_smem[];
  Act* const ring = reinterpret_cast<Act*>(norm_smem);  // [2][residual | delta][D], then weights
  const auto [w, post_w] = NormWeightsAfterWait<Act, Weight>(
      post_weight, weight, reinterpret_cast<Weight*>(ring + 4 * D), D, stage, /*wait_copies=*/false);
  const int nvec = D / kV;
  // Row r's vectors of this thread into ring stage buf, as one cp.async group (the staged weights
  // above, if any, complete with the first group).
  const auto issue = [&](int r, int buf) {
    const int64_t at = static_cast<int64_t>(r) * D;
    Act* const s_res = ring + buf * 2 * D;
#pragma unroll
    for (int p = 0; p < kPer; ++p) {
      const int v = threadIdx.x + p * kRowThreads;
      if (v < nvec) {
        CpAsync16(s_res + v * kV, residual + at + v * kV, true);
        if (delta != nullptr) CpAsync16(s_res + D + v * kV, delta + at + v * kV, true);
      }
    }
    CpAsyncCommit();
  };
  int buf = 0;
  issue(blockIdx.x, 0);
  for (int r = blockIdx.x; r < rows; r += gridDim.x, buf ^= 1) {  // uniform across the block
    const int next = r + gridDim.x;
    if (next < rows) {
      issue(next, buf ^ 1);  // the stage this thread read back in the previous trip
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    int4 xr[kPer], dr[kPer];
    const Act* const s_res = ring + buf * 2 * D;
    LoadRowRegs<Act, kRowThreads, kPer>(s_res, delta != nullptr ? s_res + D : nullptr, D, xr, dr);
    const int64_t at = static_cast<int64_t>(r) * D;
    AddRmsNormRegs<Act, Weight, kRowThreads, kPer>(xr, dr, delta != nullptr, post_w, w,
                                                   residual + at, out + at, D, eps, scratch);
  }
#endif
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

// SiluMulVecKernel for few rows (decode): one wave of blocks, each thread kPer vector pairs of
// the row-major [T][F / kV] list (stride: the grid's threads), every load issued before the first
// use. At T = 256 (F = 13,696) the Vec kernel's grid, a block for each row and 2,048 columns, is
// 1,792 blocks: 2.3 waves at 6 blocks an SM. Same SiluMul per element: the Vec kernel's bits.
template <typename Act, int kPer>
__global__ void __launch_bounds__(256, 6)
SiluMulWaveKernel(const Act* __restrict__ gate_up, Act* __restrict__ out, int F, int n_vec) {
  constexpr int kV = TVec<Act>::kN;
  GridDependencyWait();
  LaunchDependents();
  const int fv = F / kV;
  const int stride = gridDim.x * blockDim.x;
  const int i0 = blockIdx.x * blockDim.x + threadIdx.x;
  int4 gr[kPer], ur[kPer];  // packed until used (registers)
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int i = i0 + p * stride;
    if (i < n_vec) {
      const int64_t t = i / fv;
      const int j = (i - static_cast<int>(t) * fv) * kV;
      gr[p] = *reinterpret_cast<const int4*>(gate_up + t * 2 * F + j);
      ur[p] = *reinterpret_cast<const int4*>(gate_up + t * 2 * F + F + j);
    }
  }
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int i = i0 + p * stride;
    if (i >= n_vec) continue;
    const int64_t t = i / fv;
    const int j = (i - static_cast<int>(t) * fv) * kV;
    float g[kV], u[kV], y[kV];
    Vec16<Act>::Unpack(gr[p], g);
    Vec16<Act>::Unpack(ur[p], u);
#pragma unroll
    for (int e = 0; e < kV; ++e) y[e] = SiluMul<Act>(g[e], u[e]);
    TVec<Act>::Store(out + t * F + j, y);
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

// The pipelined add-norm kernel for D (16-byte vectors, at most four a thread), or null.
template <typename Act, typename Weight>
auto PipeKernel(int D) -> decltype(&AddRmsNormPipeKernel<Act, Weight, 1>) {
  constexpr int kV = TVec<Act>::kN;
  if (D % kV != 0) return nullptr;
  const int per = (D / kV + kRowThreads - 1) / kRowThreads;
  return per <= 1   ? AddRmsNormPipeKernel<Act, Weight, 1>
         : per <= 2 ? AddRmsNormPipeKernel<Act, Weight, 2>
         : per <= 4 ? AddRmsNormPipeKernel<Act, Weight, 4>
                    : nullptr;
}
// Its grid: as many blocks as fit the GPU at once (0: no such kernel, or the query failed).
// Its dynamic shared memory: the two-row ring, then the staged weights (stage_bytes, may be 0).
template <typename Act>
size_t PipeSmem(int D, size_t stage_bytes) {
  return size_t{4} * D * sizeof(Act) + stage_bytes;
}
template <typename Act, typename Weight>
int PipeGrid(int D, size_t stage_bytes) {
  auto* kernel = PipeKernel<Act, Weight>(D);
  int per_sm = 0;
  const size_t smem_bytes = PipeSmem<Act>(D, stage_bytes);
  if (kernel == nullptr || DeviceComputeMajor() < 8 ||
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem_bytes)) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowThreads, smem_bytes) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return per_sm * DeviceSmCount();
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
      const int per = (D / kV + kRowThreads - 1) / kRowThreads;  // vectors a thread
      auto* kernel = per <= 1   ? AddRmsNormVecKernel<Act, Weight, 1>
                     : per <= 2 ? AddRmsNormVecKernel<Act, Weight, 2>
                     : per <= 4 ? AddRmsNormVecKernel<Act, Weight, 4>
                                : AddRmsNormVecKernel<Act, Weight, 0>;
      // Staged weights: at most 24 KB a block, so six blocks an SM still fit (an sm80's 164 KB).
      const size_t stage_bytes = NormStageBytes<Weight>(D, post_weight != nullptr);
      const bool stage = kNormStageable<Act, Weight> &&
                         NormWeightStaging(NormStageSite::kAddNorm) && stage_bytes <= 24 * 1024;
      if (row_index == nullptr && rows >= 2 * DeviceSmCount() && AddNormPipelined()) {
        const int grid = PipeGrid<Act, Weight>(D, stage ? stage_bytes : 0);
        if (grid > 0 && rows >= 2 * grid) {  // at least two rows a block, else nothing to overlap
          return LaunchKernel(PipeKernel<Act, Weight>(D), grid, kRowThreads,
                              PipeSmem<Act>(D, stage ? stage_bytes : 0), stream, static_cast<Act*>(residual), static_cast<const Act*>(delta),
                              static_cast<const Weight*>(post_weight),
                              static_cast<const Weight*>(weight), static_cast<Act*>(out), rows, D,
                              eps, stage);
        }
      }
      return LaunchKernel(kernel, rows, kRowThreads, stage ? stage_bytes : 0, stream,
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

int AddNormPipelineGrid(KernelTypes types, int D, bool with_post) {
  int grid = 0;
  const cudaError_t err = GLM_DISPATCH_TYPES(types, {
    const size_t stage_bytes = NormStageBytes<Weight>(D, with_post);
    const bool stage = kNormStageable<Act, Weight> &&
                       NormWeightStaging(NormStageSite::kAddNorm) && stage_bytes <= 24 * 1024;
    grid = PipeGrid<Act, Weight>(D, stage ? stage_bytes : 0);
    return cudaSuccess;
  });
  return err == cudaSuccess ? grid : 0;
}

// Threads of one wave of SiluMulWaveKernel on this GPU (the 4-vector kernel's occupancy, the
// lowest of the four), or 0 where the wave kernel is off (SiluMulOneWave()).
template <typename Act>
int SiluWaveThreads() {
  if (!SiluMulOneWave()) return 0;
  static const int threads = [] {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, SiluMulWaveKernel<Act, 4>, 256, 0) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return per_sm * DeviceSmCount() * 256;
  }();
  return threads;
}

int SiluMulWaveThreads(KernelTypes types) {
  int threads = 0;
  const cudaError_t err = GLM_DISPATCH_TYPES(types, {
    threads = SiluWaveThreads<Act>();
    return cudaSuccess;
  });
  return err == cudaSuccess ? threads : 0;
}

cudaError_t LaunchSiluMul(KernelTypes types, const void* gate_up, void* out, int T, int F,
                          cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(T) * F;
  if (n == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    constexpr int kV = TVec<Act>::kN;
    if (F % kV == 0) {
      const int64_t n_vec = n / kV;
      const int wave = SiluWaveThreads<Act>();  // 0: not in use
      if (wave > 0 && n_vec <= int64_t{4} * wave) {
        const int per = static_cast<int>((n_vec + wave - 1) / wave);
        const int grid = static_cast<int>((n_vec + int64_t{per} * 256 - 1) / (int64_t{per} * 256));
        auto* kernel = per <= 1   ? SiluMulWaveKernel<Act, 1>
                       : per <= 2 ? SiluMulWaveKernel<Act, 2>
                       : per <= 3 ? SiluMulWaveKernel<Act, 3>
                                  : SiluMulWaveKernel<Act, 4>;
        return LaunchKernel(kernel, grid, 256, 0, stream, static_cast<const Act*>(gate_up),
                            static_cast<Act*>(out), F, static_cast<int>(n_vec));
      }
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
