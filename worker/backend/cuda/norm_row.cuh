// One row of the fused residual add + RMSNorm (LaunchAddRmsNorm's arithmetic) done by a whole
// block: the standalone AddRmsNorm kernel and the decode GEMVs' norm prologue (gemv.cu) share it,
// so both give the same bits. 16-byte vectors; thread t owns the vectors t, t + kThreads, ...,
// and every sum runs in that order, then across the warps in order. Explicit fmaf / __fmul_rn /
// __fadd_rn: the same bits wherever the compiler inlines it (no contraction differences).
#pragma once

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

// The per-vector steps of AddRmsNormRow / NormRowRegs, shared so both give the same bits.
// ss + sum of x[e]^2, in element order.
template <int kV>
__device__ __forceinline__ float SumSquares(const float* x, float ss) {
#pragma unroll
  for (int e = 0; e < kV; ++e) ss = fmaf(x[e], x[e], ss);
  return ss;
}
// x = RoundTo<Act>(x + d'), d' = d, or with has_post (pw: this vector's post-norm weights as
// floats, read only then) RoundTo<Act>(RoundTo<Act>(d * inv_post) * pw).
template <typename Act, int kV>
__device__ __forceinline__ void AddDeltaW(float* x, const float* d, const float* pw, bool has_post,
                                          float inv_post) {
#pragma unroll
  for (int e = 0; e < kV; ++e) {
    if (has_post) {
      const float normed = __fmul_rn(RoundTo<Act>(__fmul_rn(d[e], inv_post)), pw[e]);
      x[e] = RoundTo<Act>(__fadd_rn(x[e], RoundTo<Act>(normed)));
    } else {
      x[e] = RoundTo<Act>(__fadd_rn(x[e], d[e]));
    }
  }
}
// The same with the post-norm weights read from post_w + at (post_w may be null).
template <typename Act, typename Weight, int kV>
__device__ __forceinline__ void AddDelta(float* x, const float* d, const Weight* post_w, int at,
                                         float inv_post) {
  float pw[kV];
  if (post_w != nullptr) LoadWeights<Weight, kV>(post_w + at, pw);
  AddDeltaW<Act, kV>(x, d, pw, post_w != nullptr, inv_post);
}
// x = RoundTo<Act>(x * inv) * wv (this vector's weights as floats).
template <typename Act, int kV>
__device__ __forceinline__ void ScaleByNormW(float* x, const float* wv, float inv) {
#pragma unroll
  for (int e = 0; e < kV; ++e) x[e] = __fmul_rn(RoundTo<Act>(__fmul_rn(x[e], inv)), wv[e]);
}
// The same with the weights read from w.
template <typename Act, typename Weight, int kV>
__device__ __forceinline__ void ScaleByNorm(float* x, const Weight* w, float inv) {
  float wv[kV];
  LoadWeights<Weight, kV>(w, wv);
  ScaleByNormW<Act, kV>(x, wv, inv);
}

// kN consecutive weights held raw in registers (one 16-byte load where they make 16 bytes),
// unpacked to the floats LoadWeights gives: a kernel that normalizes many rows loads its
// thread's weights once.
template <typename Weight, int kN>
struct WeightVec {
  alignas(sizeof(Weight) * kN == 16 ? 16 : alignof(Weight)) Weight e[kN];
  __device__ __forceinline__ void Load(const Weight* p) {
    if constexpr (sizeof(Weight) * kN == 16) {
      *reinterpret_cast<int4*>(e) = *reinterpret_cast<const int4*>(p);
    } else {
#pragma unroll
      for (int i = 0; i < kN; ++i) e[i] = p[i];
    }
  }
  __device__ __forceinline__ void Unpack(float* out) const {
#pragma unroll
    for (int i = 0; i < kN; ++i) out[i] = ToFloat(e[i]);
  }
};

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

// AddRmsNormRow with the row held in registers, kPer 16-byte vectors a thread (D / kV <= kPer *
// kThreads), for a kernel that normalizes many rows: LoadRowRegs issues a row's loads (all in
// flight at once; the next row's while this one is computed), NormRowRegs computes it with the
// thread's weights preloaded (WeightVec). The vectors stay packed until used (registers:
// occupancy). The same thread-to-vector map and summation order, so the same bits as
// AddRmsNormRow (kernels_test checks it through the standalone kernel and the GEMV prologue).
template <typename Act, int kThreads, int kPer>
__device__ __forceinline__ void LoadRowRegs(const Act* res_in, const Act* delta, int nvec,
                                            int4 (&xr)[kPer], int4 (&dr)[kPer]) {
  constexpr int kV = TVec<Act>::kN;
#pragma unroll
  for (int p = 0; p < kPer; ++p) {
    const int v = threadIdx.x + p * kThreads;
    if (v < nvec) {
      xr[p] = *reinterpret_cast<const int4*>(res_in + v * kV);
      if (delta != nullptr) dr[p] = *reinterpret_cast<const int4*>(delta + v * kV);
    }
  }
}
// has_delta: dr holds the delta row; has_post (implies has_delta): pw the post-norm weights.
// res_out (may be null) gets the new residual.
template <typename Act, typename Weight, int kThreads, int kPer>
__device__ __forceinline__ void NormRowRegs(int4 (&xr)[kPer], const int4 (&dr)[kPer], bool has_delta,
                                            bool has_post,
                                            const WeightVec<Weight, TVec<Act>::kN> (&wv)[kPer],
                                            const WeightVec<Weight, TVec<Act>::kN> (&pw)[kPer],
                                            Act* res_out, Act* out, int D, float eps,
                                            float* scratch /* [32] */) {
  constexpr int kV = TVec<Act>::kN;
  const int nvec = D / kV;
  float inv_post = 0.f;
  if (has_post) {
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
    if (has_delta) {
      float d[kV], pwf[kV];
      Vec16<Act>::Unpack(dr[p], d);
      if (has_post) pw[p].Unpack(pwf);
      AddDeltaW<Act, kV>(x, d, pwf, has_post, inv_post);
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
    float x[kV], wf[kV];
    Vec16<Act>::Unpack(xr[p], x);
    wv[p].Unpack(wf);
    ScaleByNormW<Act, kV>(x, wf, inv);
    TVec<Act>::Store(out + v * kV, x);
  }
}

}  // namespace cuda
}  // namespace glm
