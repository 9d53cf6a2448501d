// Element types inside kernels and their fp32 conversions. bf16 is handled as raw bits with the
// same round-to-nearest-even as glm::Fp32ToBf16 on the host, so no sm80-only intrinsic is needed
// and the fp16/fp32 paths compile for sm70 (V100, CUDA 12).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "worker/model/dtype.h"

namespace glm {
namespace cuda {

struct alignas(2) Bf16 {
  uint16_t bits;
};

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(Bf16 x) {
  return __uint_as_float(static_cast<uint32_t>(x.bits) << 16);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float f);
template <>
__device__ __forceinline__ float FromFloat<float>(float f) { return f; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float f) { return __float2half_rn(f); }
template <>
__device__ __forceinline__ Bf16 FromFloat<Bf16>(float f) {
  uint32_t bits = __float_as_uint(f);
  Bf16 out;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    out.bits = static_cast<uint16_t>((bits >> 16) | 0x40);
  } else {
    out.bits = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  return out;
}
// Rounds through T (what storing to a T buffer and reading back gives).
template <typename T>
__device__ __forceinline__ float RoundTo(float f) { return ToFloat(FromFloat<T>(f)); }
// The MLP's silu(g) * u for g, u as read from a T buffer: silu rounded through T first (every
// SiLU-and-multiply path computes it this way, so fused and unfused agree bit for bit).
template <typename T>
__device__ __forceinline__ float SiluMul(float g, float u) { return RoundTo<T>(g / (1.f + expf(-g))) * u; }

// 16-byte vectors: unpack into fp32.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kN = 4;
  __device__ __forceinline__ static void Unpack(const int4& v, float* out) {
    out[0] = __int_as_float(v.x); out[1] = __int_as_float(v.y);
    out[2] = __int_as_float(v.z); out[3] = __int_as_float(v.w);
  }
};
template <>
struct Vec16<Bf16> {
  static constexpr int kN = 8;
  __device__ __forceinline__ static void Unpack(const int4& v, float* out) {
    const uint32_t w[4] = {static_cast<uint32_t>(v.x), static_cast<uint32_t>(v.y),
                           static_cast<uint32_t>(v.z), static_cast<uint32_t>(v.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct Vec16<__half> {
  static constexpr int kN = 8;
  __device__ __forceinline__ static void Unpack(const int4& v, float* out) {
    const int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &w[i], 4);
      float2 f = __half22float2(h);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

// GLM's rotation of the pair (x0, x1) by the angle with cosine c and sine s, without contraction
// (the same bits in every kernel that applies it: the rotary kernels and the QKV GEMV epilogue).
__device__ __forceinline__ void RotatePair(float& x0, float& x1, float c, float s) {
  const float r0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  const float r1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
  x0 = r0;
  x1 = r1;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace cuda
}  // namespace glm

// Calls BODY with `using Act = ...; using Weight = ...;` for the four precision combinations.
#define GLM_DISPATCH_TYPES(types, ...)                                                    \
  [&]() -> cudaError_t {                                                                  \
    using ::glm::DType;                                                                   \
    if ((types).act == DType::kF32 && (types).weight == DType::kF32) {                    \
      using Act = float; using Weight = float; __VA_ARGS__                                \
    } else if ((types).act == DType::kBF16 && (types).weight == DType::kBF16) {           \
      using Act = ::glm::cuda::Bf16; using Weight = ::glm::cuda::Bf16; __VA_ARGS__        \
    } else if ((types).act == DType::kF16 && (types).weight == DType::kF16) {             \
      using Act = __half; using Weight = __half; __VA_ARGS__                              \
    } else if ((types).act == DType::kF32 && (types).weight == DType::kF16) {             \
      using Act = float; using Weight = __half; __VA_ARGS__                               \
    }                                                                                     \
    return cudaErrorInvalidValue;                                                         \
  }()
