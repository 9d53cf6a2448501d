// One row of the fused residual add + RMSNorm (LaunchAddRmsNorm's arithmetic) done by a whole
// block: the standalone AddRmsNorm kernel and the decode GEMVs' norm prologue (gemv.cu) share it,
// so both give the same bits. 16-byte vectors; thread t owns the vectors t, t + kThreads, ...,
// and every sum runs in that order, then across the warps in order. Explicit fmaf / __fmul_rn /
// __fadd_rn: the same bits wherever the compiler inlines it (no contraction differences).
#pragma once

#include <cstddef>

#include "worker/backend/cuda/cp_async.cuh"
#include "worker/backend/cuda/device_types.cuh"

namespace glm {
namespace cuda {

// Block-wide sum for kThreads threads (a multiple of 32); every thread gets the total.
template <int kThreads>
__device__ __forceinline__ float BlockSum(float v, float* scratch /* [32] */) {
  v = WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

// 16-byte vectors of T: load as floats, store from floats (FromFloat per element). Pointers may
// be global or shared.
template <typename T>
struct TVec {
  static constexpr int kN = 16 / sizeof(T);
  __device__ __forceinline__ static void Load(const T* p, float* out) {
    Vec16<T>::Unpack(*reinterpret_cast<const int4*>(p), out);
  }
  __device__ __forceinline__ static int4 Pack(const float* in) {
    union {
      int4 v;
      T e[kN];
    } u;
#pragma unroll
    for (int i = 0; i < kN; ++i) u.e[i] = FromFloat<T>(in[i]);
    return u.v;
  }
  __device__ __forceinline__ static void Store(T* p, const float* in) {
    *reinterpret_cast<int4*>(p) = Pack(in);
  }
};

// kN consecutive weights as floats: one 16-byte load where kN of them make 16 bytes (the
// same values as kN scalar loads, in a fraction of the L1 wavefronts), else scalar loads.
template <typename Weight, int kN>
__device__ __forceinline__ void LoadWeights(const Weight* p, float* out) {
  if constexpr (sizeof(Weight) * kN == 16) {
    TVec<Weight>::Load(p, out);
  } else {
#pragma unroll
    for (int e = 0; e < kN; ++e) out[e] = ToFloat(p[e]);
  }
}

// The per-vector steps of AddRmsNormRow / AddRmsNormRowRegs, shared so both give the same bits.
// ss + sum of x[e]^2, in element order.
template <int kV>
__device__ __forceinline__ float SumSquares(const float* x, float ss) {
#pragma unroll
  for (int e = 0; e < kV; ++e) ss = fmaf(x[e], x[e], ss);
  return ss;
}
// x = RoundTo<Act>(x + d'), d' = d, or with post_w (may be null; this vector's weights from
// post_w + at) RoundTo<Act>(RoundTo<Act>(d * inv_post) * post_w).
template <typename Act, typename Weight, int kV>
__device__ __forceinline__ void AddDelta(float* x, const float* d, const Weight* post_w, int at,
                                         float inv_post) {
  float pw[kV];
  if (post_w != nullptr) LoadWeights<Weight, kV>(post_w + at, pw);
#pragma unroll
  for (int e = 0; e < kV; ++e) {
    if (post_w != nullptr) {
      const float normed = __fmul_rn(RoundTo<Act>(__fmul_rn(d[e], inv_post)), pw[e]);
      x[e] = RoundTo<Act>(__fadd_rn(x[e], RoundTo<Act>(normed)));
    } else {
      x[e] = RoundTo<Act>(__fadd_rn(x[e], d[e]));
    }
  }
}
// x = RoundTo<Act>(x * inv) * w (this vector's weights).
template <typename Act, typename Weight, int kV>
__device__ __forceinline__ void ScaleByNorm(float* x, const Weight* w, float inv) {
  float wv[kV];
  LoadWeights<Weight, kV>(w, wv);
#pragma unroll
  for (int e = 0; e < kV; ++e) x[e] = __fmul_rn(RoundTo<Act>(__fmul_rn(x[e], inv)), wv[e]);
}

// Whether StageNormWeights applies to (Act, Weight): a Weight vector of TVec<Act>::kN elements
// is 16 bytes (not the fp16-safe mode's fp32 activations over fp16 weights).
template <typename Act, typename Weight>
constexpr bool kNormStageable = sizeof(Weight) * TVec<Act>::kN == 16;
// Shared memory StageNormWeights fills: the D weights, then the D post weights if any.
template <typename Weight>
constexpr size_t NormStageBytes(int D, bool with_post) {
  return (with_post ? 2 : 1) * static_cast<size_t>(D) * sizeof(Weight);
}

// Copies the norm weights thread t reads in AddRmsNormRow / AddRmsNormRowRegs (the vectors t,
// t + kThreads, ... of w and of post_w, which may be null) to s_w / s_post in shared memory (D
// weights each), so the row's two dependent weight reads become shared-memory reads instead of
// L2 round trips on the critical path. Weights never come from an earlier kernel: callers issue
// this before GridDependencyWait(), where it overlaps the predecessor's tail (sm80+: cp.async,
// so the thread does not stall on it). Each thread reads back only its own vectors, so
// CopyToSharedWait() before the row, without a barrier, is enough.
template <typename Act, typename Weight, int kThreads>
__device__ __forceinline__ void StageNormWeights(const Weight* post_w, const Weight* w,
                                                 Weight* s_post, Weight* s_w, int D) {
  static_assert(kNormStageable<Act, Weight>, "16-byte weight vectors");
  constexpr int kV = TVec<Act>::kN;
  for (int v = threadIdx.x; v < D / kV; v += kThreads) {
    CopyToShared16(s_w + v * kV, w + v * kV);
    if (post_w != nullptr) CopyToShared16(s_post + v * kV, post_w + v * kV);
  }
}

// D % TVec<Act>::kN == 0. With delta: x = RoundTo<Act>(res_in + d), d = delta or, with post_w,
// RoundTo<Act>(RoundTo<Act>(rmsnorm(delta)) * post_w); res_out (may be null, may equal res_in)
// gets x. Without delta x = res_in. Then out = RoundTo<Act>(x * rsqrt(mean(x^2) + eps)) * w.
// out (global or shared) is used as the staging row; it must not overlap res_in / delta.
template <typename Act, typename Weight, int kThreads>
__device__ void AddRmsNormRow(const Act* res_in, const Act* delta, const Weight* post_w,
                              const Weight* w, Act* res_out, Act* out, int D, float eps,
                              float* scratch /* [32] */) {
  constexpr int kV = TVec<Act>::kN;
  const int nvec = D / kV;
  float inv_post = 0.f;
  if (delta != nullptr && post_w != nullptr) {
    float ss = 0.f;
#pragma unroll 2
    for (int v = threadIdx.x; v < nvec; v += kThreads) {
      float d[kV];
      TVec<Act>::Load(delta + v * kV, d);
      ss = SumSquares<kV>(d, ss);
    }
    inv_post = rsqrtf(BlockSum<kThreads>(ss, scratch) / D + eps);
  }
  float ss = 0.f;
#pragma unroll 2
  for (int v = threadIdx.x; v < nvec; v += kThreads) {
    float x[kV];
    TVec<Act>::Load(res_in + v * kV, x);
    if (delta != nullptr) {
      float d[kV];
      TVec<Act>::Load(delta + v * kV, d);
      AddDelta<Act, Weight, kV>(x, d, post_w, v * kV, inv_post);
      if (res_out != nullptr) TVec<Act>::Store(res_out + v * kV, x);
    }
    ss = SumSquares<kV>(x, ss);
    TVec<Act>::Store(out + v * kV, x);  // exact: x holds Act values
  }
  const float inv = rsqrtf(BlockSum<kThreads>(ss, scratch) / D + eps);
#pragma unroll 2
  for (int v = threadIdx.x; v < nvec; v += kThreads) {
    float x[kV];
    TVec<Act>::Load(out + v * kV, x);  // this thread's own vector, stored above
    ScaleByNorm<Act, Weight, kV>(x, w + v * kV, inv);
    TVec<Act>::Store(out + v * kV, x);
  }
}

// AddRmsNormRow with the row held in registers (kPer vectors a thread, D / kV <= kPer * kThreads):
// one pass of loads, all in flight at once, no staging row. The vectors stay packed (16 bytes
// each, unpacked where used: half the registers of floats, so more blocks fit an SM). The same
// thread-to-vector map and summation order, so the same bits as AddRmsNormRow (kernels_test
// checks it through the standalone kernel and the GEMV prologue). res_out may equal res_in.
template <typename Act, typename Weight, int kThreads, int kPer>
__device__ void AddRmsNormRowRegs(const Act* res_in, const Act* delta, const Weight* post_w,
                                  const Weight* w, Act* res_out, Act* out, int D, float eps,
                                  float* scratch /* [32] */) {
  constexpr int kV = TVec<Act>::kN;
  const int nvec = D / kV;
  int4 xr[kPer], dr[kPer];
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int v = threadIdx.x + p * kThreads;
    if (v < nvec) {
      xr[p] = *reinterpret_cast<const int4*>(res_in + v * kV);
      if (delta != nullptr) dr[p] = *reinterpret_cast<const int4*>(delta + v * kV);
    }
  }
  float inv_post = 0.f;
  if (delta != nullptr && post_w != nullptr) {
    float ss = 0.f;
#pragma unroll
    for (int p = 0; p < kPer; ++p) {
      if (threadIdx.x + p * kThreads < nvec) {
        float d[kV];
        Vec16<Act>::Unpack(dr[p], d);
        ss = SumSquares<kV>(d, ss);
      }
    }
    inv_post = rsqrtf(BlockSum<kThreads>(ss, scratch) / D + eps);
  }
  float ss = 0.f;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int v = threadIdx.x + p * kThreads;
    if (v >= nvec) continue;
    float x[kV];
    Vec16<Act>::Unpack(xr[p], x);
    if (delta != nullptr) {
      float d[kV];
      Vec16<Act>::Unpack(dr[p], d);
      AddDelta<Act, Weight, kV>(x, d, post_w, v * kV, inv_post);
      xr[p] = TVec<Act>::Pack(x);  // exact: x holds Act values
      if (res_out != nullptr) *reinterpret_cast<int4*>(res_out + v * kV) = xr[p];
    }
    ss = SumSquares<kV>(x, ss);
  }
  const float inv = rsqrtf(BlockSum<kThreads>(ss, scratch) / D + eps);
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int v = threadIdx.x + p * kThreads;
    if (v >= nvec) continue;
    float x[kV];
    Vec16<Act>::Unpack(xr[p], x);
    ScaleByNorm<Act, Weight, kV>(x, w + v * kV, inv);
    TVec<Act>::Store(out + v * kV, x);
  }
}

}  // namespace cuda
}  // namespace glm
