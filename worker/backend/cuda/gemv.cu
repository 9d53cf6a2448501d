// Memory-bound decode GEMM for M <= 4 rows: y[M, N] = alpha * x[M, K] . w[N, K]^T.
//
// At batch 1 a decode step reads every weight once, so its speed is the HBM bandwidth. One warp
// owns one output column n: the warp streams w[n, :] with 16-byte loads, four in flight per lane
// (K = 4096 bf16: 16 loads per lane), and reuses each loaded vector for all M input rows, which
// stay in L1/L2. Weights are loaded with the streaming hint so they do not evict x.
// The decode MLP variant (LaunchGemvSiluMul) gives each warp the gate and the up row of its
// column (eight loads in flight per lane) and applies SiLU-and-multiply before the store.
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kGemvWarps = 8;
// Four 16-byte loads in flight per lane. Eight with a predicated tail round was measured slower
// at bs1 (125.6 vs 128.6 tok/s, docs/PERFORMANCE-cuda-notes.md v3).
constexpr int kUnroll = 4;

// What a warp does with its sums: kStore writes alpha * sum (one weight row per warp); kSiluMul
// streams the gate row n and the up row N + n (w is [2N, K]) and writes silu(g) * u with the
// rounding of LaunchGemv into an act-type gate_up buffer followed by LaunchSiluMul.
enum class GemvEpilogue { kStore, kSiluMul };

template <GemvEpilogue E>
constexpr int GemvRowsPerWarp() { return E == GemvEpilogue::kSiluMul ? 2 : 1; }

// One round of kUnroll 16-byte weight loads per row, at vectors i + u * 32.
template <int R>
__device__ __forceinline__ void GemvLoadRound(const int4* const (&wrow)[R], int i,
                                              int4 (&wv)[kUnroll][R]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) wv[u][r] = __ldcs(wrow[r] + i + u * 32);
}

// acc[r][m] += w row r . x row m over the vector i (x loaded once for all R rows). The per-
// accumulator order (vector, then element) is the same for every R, so row r of a kSiluMul warp
// sums exactly like the kStore warp of that row.
template <typename W, int M, int R>
__device__ __forceinline__ void GemvAccumulate(const int4 (&wv)[R], const int4* __restrict__ xrows,
                                               int nvec, int i, float (&acc)[R][M]) {
  constexpr int kVec = Vec16<W>::kN;
  float wf[R][kVec];
#pragma unroll
  for (int r = 0; r < R; ++r) Vec16<W>::Unpack(wv[r], wf[r]);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float xf[kVec];
    Vec16<W>::Unpack(__ldg(xrows + static_cast<int64_t>(m) * nvec + i), xf);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
  }
}

template <typename W, int M, int R>
__device__ __forceinline__ void GemvConsumeRound(const int4 (&wv)[kUnroll][R],
                                                 const int4* __restrict__ xrows, int nvec, int i,
                                                 float (&acc)[R][M]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) GemvAccumulate<W, M, R>(wv[u], xrows, nvec, i + u * 32, acc);
}

// PDL: the weights never depend on earlier kernels, so the first round of weight loads is issued
// before GridDependencyWait(); x and alpha (written by the predecessors) are read after it.
template <typename W, typename Out, int M, GemvEpilogue E>
__global__ void __launch_bounds__(kGemvWarps * 32)
GemvKernel(const W* __restrict__ x, const W* __restrict__ w, Out* __restrict__ y, int N, int K,
           const float* __restrict__ alpha) {
  constexpr int kVec = Vec16<W>::kN;
  constexpr int R = GemvRowsPerWarp<E>();
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kGemvWarps + threadIdx.x / 32;
  const bool active = n < N;
  const int nvec = K / kVec;
  const int4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    wrow[r] = reinterpret_cast<const int4*>(w + (static_cast<int64_t>(r) * N + (active ? n : 0)) * K);
  int i = lane;
  // Lanes with a full first round: the same condition as the main loop's at i = lane.
  const bool first_round = active && i + (kUnroll - 1) * 32 < nvec;
  int4 wv[kUnroll][R];
  if (first_round) GemvLoadRound<R>(wrow, i, wv);
  GridDependencyWait();
  LaunchDependents();
  if (!active) return;
  const int4* xrows = reinterpret_cast<const int4*>(x);
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  if (first_round) {
    GemvConsumeRound<W, M, R>(wv, xrows, nvec, i, acc);
    for (i += kUnroll * 32; i + (kUnroll - 1) * 32 < nvec; i += kUnroll * 32) {
      GemvLoadRound<R>(wrow, i, wv);
      GemvConsumeRound<W, M, R>(wv, xrows, nvec, i, acc);
    }
  }
  for (; i < nvec; i += 32) {
    int4 wt[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wt[r] = __ldcs(wrow[r] + i);
    GemvAccumulate<W, M, R>(wt, xrows, nvec, i, acc);
  }
  const float a = alpha ? *alpha : 1.f;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    Out* dst = y + static_cast<int64_t>(m) * N + n;
    if constexpr (E == GemvEpilogue::kStore) {
      const float s = WarpSum(acc[0][m]);
      if (lane == 0) *dst = FromFloat<Out>(s * a);
    } else {
      const float sg = WarpSum(acc[0][m]);
      const float su = WarpSum(acc[1][m]);
      if (lane == 0) {
        // The unfused path: gate_up stored in Out, then SiluMulKernel. __fmul_rn keeps the
        // products from being contracted into expf's arithmetic (fp32 Out: no rounding between).
        const float g = RoundTo<Out>(__fmul_rn(sg, a));
        const float u = RoundTo<Out>(__fmul_rn(su, a));
        const float silu = RoundTo<Out>(g / (1.f + expf(-g)));
        *dst = FromFloat<Out>(silu * u);
      }
    }
  }
}

// N: output columns (kSiluMul: F, with w holding 2F rows).
template <typename W, typename Out, GemvEpilogue E>
cudaError_t LaunchGemvTyped(const void* x, const void* w, void* y, int M, int N, int K,
                            const float* alpha, cudaStream_t stream) {
  const dim3 grid((N + kGemvWarps - 1) / kGemvWarps), block(kGemvWarps * 32);
  const W* xp = static_cast<const W*>(x);
  const W* wp = static_cast<const W*>(w);
  Out* yp = static_cast<Out*>(y);
  switch (M) {
    case 1: return LaunchKernel(GemvKernel<W, Out, 1, E>, grid, block, 0, stream, xp, wp, yp, N, K, alpha);
    case 2: return LaunchKernel(GemvKernel<W, Out, 2, E>, grid, block, 0, stream, xp, wp, yp, N, K, alpha);
    case 3: return LaunchKernel(GemvKernel<W, Out, 3, E>, grid, block, 0, stream, xp, wp, yp, N, K, alpha);
    case 4: return LaunchKernel(GemvKernel<W, Out, 4, E>, grid, block, 0, stream, xp, wp, yp, N, K, alpha);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool GemvSupports(DType weight, int M, int K) {
  const int vec = weight == DType::kF32 ? 4 : 8;
  return M >= 1 && M <= 4 && K % vec == 0;
}

cudaError_t LaunchGemv(KernelTypes types, const void* x, const void* w, void* y, int M, int N,
                       int K, const float* alpha, cudaStream_t stream) {
  if (!GemvSupports(types.weight, M, K)) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchGemvTyped<Weight, Act, GemvEpilogue::kStore>(x, w, y, M, N, K, alpha, stream);
  });
}

cudaError_t LaunchGemvSiluMul(KernelTypes types, const void* x, const void* w_gate_up, void* y,
                              int M, int F, int K, const float* alpha, cudaStream_t stream) {
  if (!GemvSupports(types.weight, M, K)) return cudaErrorInvalidValue;
  if (F == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchGemvTyped<Weight, Act, GemvEpilogue::kSiluMul>(x, w_gate_up, y, M, F, K, alpha,
                                                                stream);
  });
}

}  // namespace cuda
}  // namespace glm
