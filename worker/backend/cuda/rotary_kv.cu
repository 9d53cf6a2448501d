// QKV bias + GLM partial interleaved rotary embedding + paged KV-cache write, one block per token.
//
// GLM rotates adjacent pairs (2i, 2i+1) of the first rot_dim = head_dim * partial_rotary_factor
// dims (transformers modeling_glm.py: rotate_half takes x[..., 0::2], x[..., 1::2] and
// cos/sin[..., :rot/2].repeat_interleave(2)), with inv_freq[i] = theta^(-2i / rot_dim).
#include <algorithm>

#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"
#include "worker/backend/cuda/norm_row.cuh"

namespace glm {
namespace cuda {
namespace {

template <typename Act, typename Weight>
__global__ void RotaryKvWriteKernel(Act* __restrict__ qkv, const Weight* __restrict__ bias,
                                    Weight* __restrict__ k_cache, Weight* __restrict__ v_cache,
                                    const int32_t* __restrict__ positions,
                                    const int32_t* __restrict__ slots,
                                    const float* __restrict__ inv_freq, int H, int Hkv, int Dh,
                                    int rot_dim) {
  GridDependencyWait();
  LaunchDependents();
  const int t = blockIdx.x;
  const int width = (H + 2 * Hkv) * Dh;  // row of qkv
  const int64_t slot = slots[t];
  const float pos = static_cast<float>(positions[t]);
  Act* row = qkv + static_cast<int64_t>(t) * width;
  const int half_dh = Dh / 2;
  // One thread per pair of elements (2i, 2i+1) of every head.
  for (int p = threadIdx.x; p < width / 2; p += blockDim.x) {
    const int head = (2 * p) / Dh;          // 0..H-1 q, H..H+Hkv-1 k, then v
    const int pair = p % half_dh;           // pair index inside the head
    const int col = 2 * p;
    float x0 = ToFloat(row[col]), x1 = ToFloat(row[col + 1]);
    if (bias) {
      x0 = RoundTo<Act>(x0 + ToFloat(bias[col]));
      x1 = RoundTo<Act>(x1 + ToFloat(bias[col + 1]));
    }
    const bool is_v = head >= H + Hkv;
    if (!is_v && 2 * pair < rot_dim) {
      float s, c;
      sincosf(pos * inv_freq[pair], &s, &c);
      RotatePair(x0, x1, c, s);
    }
    if (head < H) {
      row[col] = FromFloat<Act>(x0);
      row[col + 1] = FromFloat<Act>(x1);
    } else if (slot >= 0) {
      const int kvh = is_v ? head - H - Hkv : head - H;
      Weight* cache = is_v ? v_cache : k_cache;
      const int64_t base = (slot * Hkv + kvh) * Dh + 2 * pair;
      cache[base] = FromFloat<Weight>(x0);
      cache[base + 1] = FromFloat<Weight>(x1);
    }
  }
}

// RotaryKvWriteKernel on 16-byte vectors of Act (Dh a multiple of the vector width, so a vector
// never straddles two heads): the token's cos/sin are computed once into shared memory (the
// scalar kernel recomputes them for every head), then each thread handles whole vectors. The
// same arithmetic per element, so the same bits.
constexpr int kMaxRotPairs = 128;
template <typename Act, typename Weight>
__global__ void RotaryKvWriteVecKernel(Act* __restrict__ qkv, const Weight* __restrict__ bias,
                                       Weight* __restrict__ k_cache, Weight* __restrict__ v_cache,
                                       const int32_t* __restrict__ positions,
                                       const int32_t* __restrict__ slots,
                                       const float* __restrict__ inv_freq, int H, int Hkv, int Dh,
                                       int rot_dim) {
  constexpr int kV = TVec<Act>::kN;
  __shared__ float sin_tab[kMaxRotPairs], cos_tab[kMaxRotPairs];
  GridDependencyWait();
  LaunchDependents();
  const int t = blockIdx.x;
  const int width = (H + 2 * Hkv) * Dh;
  const int64_t slot = slots[t];
  const float pos = static_cast<float>(positions[t]);
  for (int p = threadIdx.x; p < rot_dim / 2; p += blockDim.x) sincosf(pos * inv_freq[p], &sin_tab[p], &cos_tab[p]);
  __syncthreads();
  Act* row = qkv + static_cast<int64_t>(t) * width;
  const int nvec = width / kV;
  // kBatch vectors a thread at a time, all loaded before any is stored (q is rotated in place:
  // a load after a store could alias it, so one vector a loop trip would serialize the loads).
  constexpr int kBatch = 4;
  for (int v0 = threadIdx.x; v0 < nvec; v0 += kBatch * blockDim.x) {
    int4 xr[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int v = v0 + i * blockDim.x;
      if (v < nvec) xr[i] = *reinterpret_cast<const int4*>(row + v * kV);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int v = v0 + i * blockDim.x;
      if (v >= nvec) continue;
      const int col = v * kV;
      const int head = col / Dh;  // 0..H-1 q, H..H+Hkv-1 k, then v
      const int dim = col % Dh;
      const bool is_v = head >= H + Hkv;
      if (head >= H && slot < 0) continue;  // a K/V row of a token with no cache slot
      float x[kV], b[kV];
      Vec16<Act>::Unpack(xr[i], x);
      if (bias) LoadWeights<Weight, kV>(bias + col, b);
#pragma unroll
      for (int e = 0; e < kV; e += 2) {
        float x0 = x[e], x1 = x[e + 1];
        if (bias) {
          x0 = RoundTo<Act>(x0 + b[e]);
          x1 = RoundTo<Act>(x1 + b[e + 1]);
        }
        const int pair = (dim + e) / 2;
        if (!is_v && 2 * pair < rot_dim) RotatePair(x0, x1, cos_tab[pair], sin_tab[pair]);
        x[e] = x0;
        x[e + 1] = x1;
      }
      if (head < H) {
        TVec<Act>::Store(row + col, x);
      } else {
        const int kvh = is_v ? head - H - Hkv : head - H;
        Weight* dst = (is_v ? v_cache : k_cache) + (slot * Hkv + kvh) * Dh + dim;
        if constexpr (sizeof(Weight) == sizeof(Act)) {
          TVec<Weight>::Store(dst, x);
        } else {
#pragma unroll
          for (int e = 0; e < kV; ++e) dst[e] = FromFloat<Weight>(x[e]);
        }
      }
    }
  }
}

}  // namespace

cudaError_t LaunchRotaryKvWrite(KernelTypes types, void* qkv, const void* bias, void* k_cache,
                                void* v_cache, const int32_t* positions, const int32_t* slots,
                                const float* inv_freq, int T, int H, int Hkv, int Dh, int rot_dim,
                                cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (Dh % 2 != 0 || rot_dim % 2 != 0 || rot_dim > Dh) return cudaErrorInvalidValue;
  return GLM_DISPATCH_TYPES(types, {
    if (Dh % TVec<Act>::kN == 0 && rot_dim / 2 <= kMaxRotPairs) {
      // About 4 vectors a thread (one batch), 32 to 256 threads.
      const int nvec = (H + 2 * Hkv) * Dh / TVec<Act>::kN;
      const int threads = std::min(256, std::max(32, ((nvec + 3) / 4 + 31) / 32 * 32));
      return LaunchKernel(RotaryKvWriteVecKernel<Act, Weight>, T, threads, 0, stream,
                          static_cast<Act*>(qkv), static_cast<const Weight*>(bias),
                          static_cast<Weight*>(k_cache), static_cast<Weight*>(v_cache), positions,
                          slots, inv_freq, H, Hkv, Dh, rot_dim);
    }
    return LaunchKernel(RotaryKvWriteKernel<Act, Weight>, T, 256, 0, stream,
                        static_cast<Act*>(qkv), static_cast<const Weight*>(bias),
                        static_cast<Weight*>(k_cache), static_cast<Weight*>(v_cache), positions,
                        slots, inv_freq, H, Hkv, Dh, rot_dim);
  });
}

}  // namespace cuda
}  // namespace glm
