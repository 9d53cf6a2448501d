// QKV bias + GLM partial interleaved rotary embedding + paged KV-cache write, one block per token.
//
// GLM rotates adjacent pairs (2i, 2i+1) of the first rot_dim = head_dim * partial_rotary_factor
// dims (transformers modeling_glm.py: rotate_half takes x[..., 0::2], x[..., 1::2] and
// cos/sin[..., :rot/2].repeat_interleave(2)), with inv_freq[i] = theta^(-2i / rot_dim).
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

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
      const float r0 = x0 * c - x1 * s;
      const float r1 = x1 * c + x0 * s;
      x0 = r0;
      x1 = r1;
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

}  // namespace

cudaError_t LaunchRotaryKvWrite(KernelTypes types, void* qkv, const void* bias, void* k_cache,
                                void* v_cache, const int32_t* positions, const int32_t* slots,
                                const float* inv_freq, int T, int H, int Hkv, int Dh, int rot_dim,
                                cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (Dh % 2 != 0 || rot_dim % 2 != 0 || rot_dim > Dh) return cudaErrorInvalidValue;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchKernel(RotaryKvWriteKernel<Act, Weight>, T, 256, 0, stream,
                        static_cast<Act*>(qkv), static_cast<const Weight*>(bias),
                        static_cast<Weight*>(k_cache), static_cast<Weight*>(v_cache), positions,
                        slots, inv_freq, H, Hkv, Dh, rot_dim);
  });
}

}  // namespace cuda
}  // namespace glm
