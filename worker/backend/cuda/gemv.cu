// Memory-bound decode GEMM for M <= 4 rows: y[M, N] = alpha * x[M, K] . w[N, K]^T.
//
// At batch 1 a decode step reads every weight once, so its speed is the HBM bandwidth. One warp
// owns one output column n: the warp streams w[n, :] with 16-byte loads, four in flight per lane
// (K = 4096 bf16: 16 loads per lane), and reuses each loaded vector for all M input rows, which
// stay in L1/L2. Weights are loaded with the streaming hint so they do not evict x.
//
// Split-K inside the block (S in {1, 2, 4}): a block of 8 warps serves 8 / S columns, warp w
// streams the K-slice w / (8 / S) of column w % (8 / S). Narrow GEMVs (N = 4096: 512 blocks of
// one column per warp, ~31 warps per SM) have too few bytes in flight and a long serial chain
// of load rounds per warp; splitting K multiplies the warps (and shortens each chain) by S.
// The S warps' sums meet in shared memory in a fixed order (slice 0 + slice 1 + ...), so a
// result depends only on (S, K) and differs from S = 1 only by fp32 summation order.
//
// Epilogues: the decode MLP variant (LaunchGemvSiluMul) gives each warp the gate and the up row
// of its column (eight loads in flight per lane) and applies SiLU-and-multiply before the store;
// the decode QKV variant (LaunchGemvQkvRotary) gives each warp the adjacent rows (2p, 2p+1) and
// applies the bias, GLM's partial rotary and the paged KV write of RotaryKvWriteKernel.
// Both can take their input as a norm prologue (GemvNormIn): every block computes the residual
// add + RMSNorm of the <= 4 rows into shared memory with the standalone kernel's code
// (norm_row.cuh) after the PDL wait, block 0 storing the updated residual. With weight staging
// (NormWeightStaging, on by default here) the norm weights are copied to shared memory before
// the wait (StageNormWeights, where they fit), so the prologue's chain after it is the residual
// / delta reads and the block sums, not two more L2 round trips.
//
// PDL: the first round of weight loads is issued before GridDependencyWait() (weights never
// depend on earlier kernels).
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"
#include "worker/backend/cuda/norm_row.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kGemvWarps = 8;
// Four 16-byte loads in flight per lane. Eight with a predicated tail round was measured slower
// at bs1 (125.6 vs 128.6 tok/s, docs/PERFORMANCE-cuda-notes.md v3).
constexpr int kUnroll = 4;

// What a warp does with its sums:
//   kStore:     one weight row n per warp, writes alpha * sum.
//   kSiluMul:   streams the gate row n and the up row N + n (w is [2N, K]) and writes silu(g) * u
//               with the rounding of LaunchGemv into an act-type gate_up buffer followed by
//               LaunchSiluMul.
//   kQkvRotary: streams the adjacent rows 2n and 2n + 1 (w is [2N, K], the fused q|k|v
//               projection) and does what RotaryKvWriteKernel does to that pair of the act-type
//               qkv row LaunchGemv would have written.
enum class GemvEpilogue { kStore, kSiluMul, kQkvRotary };

template <GemvEpilogue E>
constexpr int GemvRowsPerWarp() { return E == GemvEpilogue::kStore ? 1 : 2; }

// Weight row r (< GemvRowsPerWarp) of the warp of column n.
template <GemvEpilogue E>
__device__ __forceinline__ int64_t GemvWeightRow(int r, int n, int N) {
  if constexpr (E == GemvEpilogue::kSiluMul) return static_cast<int64_t>(r) * N + n;
  if constexpr (E == GemvEpilogue::kQkvRotary) return 2 * static_cast<int64_t>(n) + r;
  return n;
}

// The extra arguments of kQkvRotary (unused by the other epilogues); see LaunchRotaryKvWrite.
struct GemvQkvArgs {
  const void* bias = nullptr;       // [(H + 2 Hkv) * Dh] weight type, may be null
  void* k_cache = nullptr;          // [slots, Hkv, Dh] weight type
  void* v_cache = nullptr;
  const int32_t* positions = nullptr;  // [M]
  const int32_t* slots = nullptr;      // [M], -1: not written
  const float* inv_freq = nullptr;     // [rot_dim / 2]
  int H = 0, Hkv = 0, Dh = 0, rot_dim = 0;
};

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
// accumulator order (vector, then element) is the same for every R, so row r of a two-row warp
// sums exactly like the kStore warp of that row.
template <typename W, int M, int R, bool kSharedX>
__device__ __forceinline__ void GemvAccumulate(const int4 (&wv)[R], const int4* __restrict__ xrows,
                                               int nvec, int i, float (&acc)[R][M]) {
  constexpr int kVec = Vec16<W>::kN;
  float wf[R][kVec];
#pragma unroll
  for (int r = 0; r < R; ++r) Vec16<W>::Unpack(wv[r], wf[r]);
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float xf[kVec];
    const int4* xp = xrows + static_cast<int64_t>(m) * nvec + i;
    Vec16<W>::Unpack(kSharedX ? *xp : __ldg(xp), xf);
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[r][m] = fmaf(wf[r][e], xf[e], acc[r][m]);
  }
}

template <typename W, int M, int R, bool kSharedX>
__device__ __forceinline__ void GemvConsumeRound(const int4 (&wv)[kUnroll][R],
                                                 const int4* __restrict__ xrows, int nvec, int i,
                                                 float (&acc)[R][M]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    GemvAccumulate<W, M, R, kSharedX>(wv[u], xrows, nvec, i + u * 32, acc);
  }
}

// kQkvRotary for token row m of the pair (2p, 2p+1) of the qkv output: s0, s1 are the GEMV
// sums. The arithmetic is RotaryKvWriteKernel's, line for line, on the values it would read
// back from the act-type qkv buffer LaunchGemv writes (FromFloat<Out>(s * alpha)).
template <typename W, typename Out>
__device__ __forceinline__ void GemvQkvRotaryPair(const GemvQkvArgs& qa, Out* __restrict__ y,
                                                  int N, int p, int m, float s0, float s1,
                                                  float a) {
  const int width = 2 * N;  // (H + 2 Hkv) * Dh, the row of qkv
  const int64_t slot = qa.slots[m];
  const float pos = static_cast<float>(qa.positions[m]);
  const int half_dh = qa.Dh / 2;
  const int head = (2 * p) / qa.Dh;  // 0..H-1 q, H..H+Hkv-1 k, then v
  const int pair = p % half_dh;      // pair index inside the head
  const int col = 2 * p;
  // __fmul_rn: the product is a stored value on the unfused path, never contracted into the
  // bias add (fp32 Out, where RoundTo is the identity).
  float x0 = RoundTo<Out>(__fmul_rn(s0, a)), x1 = RoundTo<Out>(__fmul_rn(s1, a));
  const W* bias = static_cast<const W*>(qa.bias);
  if (bias) {
    x0 = RoundTo<Out>(x0 + ToFloat(bias[col]));
    x1 = RoundTo<Out>(x1 + ToFloat(bias[col + 1]));
  }
  const bool is_v = head >= qa.H + qa.Hkv;
  if (!is_v && 2 * pair < qa.rot_dim) {
    float s, c;
    sincosf(pos * qa.inv_freq[pair], &s, &c);
    RotatePair(x0, x1, c, s);
  }
  if (head < qa.H) {
    Out* row = y + static_cast<int64_t>(m) * width;
    row[col] = FromFloat<Out>(x0);
    row[col + 1] = FromFloat<Out>(x1);
  } else if (slot >= 0) {
    const int kvh = is_v ? head - qa.H - qa.Hkv : head - qa.H;
    W* cache = static_cast<W*>(is_v ? qa.v_cache : qa.k_cache);
    const int64_t base = (slot * qa.Hkv + kvh) * qa.Dh + 2 * pair;
    cache[base] = FromFloat<W>(x0);
    cache[base + 1] = FromFloat<W>(x1);
  }
}

// PDL: the weights never depend on earlier kernels, so the first round of weight loads (of
// every K-slice) is issued before GridDependencyWait(); x, alpha and the epilogue's inputs
// (written by the predecessors) are read after it.
// N: output columns of the warps (kSiluMul: F; kQkvRotary: column pairs, (H + 2 Hkv) * Dh / 2).
// kNorm: x is not read; every block computes it into shared memory from na (AddRmsNormRow, the
// standalone norm kernel's arithmetic) after the wait, block 0 also storing the new residual.
// stage_norm (kNorm, decided in LaunchGemvSplit): the norm weights are copied to shared
// memory after x's [M, K] before the wait (StageNormWeights).
template <typename W, typename Out, int M, GemvEpilogue E, int S, bool kNorm>
__device__ __forceinline__ void GemvBody(const W* __restrict__ x, const W* __restrict__ w,
                                         Out* __restrict__ y, int N, int K,
                                         const float* __restrict__ alpha, const GemvQkvArgs& qa,
                                         const GemvNormIn& na, bool stage_norm) {
  static_assert(S == 1 || S == 2 || S == 4, "split-K factor");
  constexpr int kVec = Vec16<W>::kN;
  constexpr int R = GemvRowsPerWarp<E>();
  constexpr int kCols = kGemvWarps / S;  // columns per block
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int col = warp % kCols;
  const int slice = warp / kCols;
  const int n = blockIdx.x * kCols + col;
  const bool active = n < N;
  const int nvec = K / kVec;
  // K-slice [begin, end) of whole vectors, sizes differing by at most one.
  const int begin = S == 1 ? 0 : static_cast<int>(static_cast<int64_t>(slice) * nvec / S);
  const int end = S == 1 ? nvec : static_cast<int>(static_cast<int64_t>(slice + 1) * nvec / S);
  const int4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    wrow[r] = reinterpret_cast<const int4*>(w + GemvWeightRow<E>(r, active ? n : 0, N) * K);
  int i = begin + lane;
  // Lanes with a full first round: the same condition as the main loop's at i = begin + lane.
  const bool first_round = active && i + (kUnroll - 1) * 32 < end;
  int4 wv[kUnroll][R];
  if (first_round) GemvLoadRound<R>(wrow, i, wv);
  // kNorm: shared memory holds x's [M, K], then (stage_norm) the norm weight and post weight.
  extern __shared__ __align__(16) unsigned char gemv_smem[];
  W* const xs = reinterpret_cast<W*>(gemv_smem);
  W* const s_w = xs + M * K;
  if constexpr (kNorm) {
    if (stage_norm) {
      StageNormWeights<W, W, kGemvWarps * 32>(static_cast<const W*>(na.post_weight),
                                              static_cast<const W*>(na.weight), s_w + K, s_w, K);
    }
  }
  GridDependencyWait();
  LaunchDependents();
  const int4* xrows = reinterpret_cast<const int4*>(x);
  if constexpr (kNorm) {
    static_assert(sizeof(Out) == sizeof(W), "the norm prologue needs act == weight");
    __shared__ float scratch[32];
    const W* res_in = static_cast<const W*>(na.residual_in);
    const W* del = static_cast<const W*>(na.delta);
    W* res_out = blockIdx.x == 0 ? static_cast<W*>(na.residual_out) : nullptr;
    const W* norm_w = static_cast<const W*>(na.weight);
    const W* post_w = static_cast<const W*>(na.post_weight);
    if (stage_norm) {
      CopyToSharedWait();
      norm_w = s_w;
      if (post_w != nullptr) post_w = s_w + K;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int64_t off = static_cast<int64_t>(m) * K;
      AddRmsNormRow<W, W, kGemvWarps * 32>(res_in + off, del ? del + off : nullptr, post_w, norm_w,
                                           res_out ? res_out + off : nullptr, xs + off, K, na.eps,
                                           scratch);
    }
    __syncthreads();
    xrows = reinterpret_cast<const int4*>(xs);
  }
  // With S > 1 every warp reaches the __syncthreads() below.
  if (S == 1 && !active) return;
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0.f;
  if (first_round) {
    GemvConsumeRound<W, M, R, kNorm>(wv, xrows, nvec, i, acc);
    for (i += kUnroll * 32; i + (kUnroll - 1) * 32 < end; i += kUnroll * 32) {
      GemvLoadRound<R>(wrow, i, wv);
      GemvConsumeRound<W, M, R, kNorm>(wv, xrows, nvec, i, acc);
    }
  }
  if (active) {
    for (; i < end; i += 32) {
      int4 wt[R];
#pragma unroll
      for (int r = 0; r < R; ++r) wt[r] = __ldcs(wrow[r] + i);
      GemvAccumulate<W, M, R, kNorm>(wt, xrows, nvec, i, acc);
    }
  }
  // The column's sums (in every lane of the slice-0 warp): slice 0 + slice 1 + ... in order.
  float sum[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) sum[r][m] = WarpSum(acc[r][m]);
  if constexpr (S > 1) {
    __shared__ float partial[S - 1][kCols][R][M];
    if (slice > 0 && lane == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) partial[slice - 1][col][r][m] = sum[r][m];
    }
    __syncthreads();
    if (slice > 0 || !active) return;
#pragma unroll
    for (int s = 0; s < S - 1; ++s)
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) sum[r][m] += partial[s][col][r][m];
  }
  const float a = alpha ? *alpha : 1.f;
  if constexpr (E == GemvEpilogue::kQkvRotary) {
    // Lane m serves token row m.
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (lane == m) {
        s0 = sum[0][m];
        s1 = sum[1][m];
      }
    }
    if (lane < M) GemvQkvRotaryPair<W, Out>(qa, y, N, n, lane, s0, s1, a);
  } else {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      Out* dst = y + static_cast<int64_t>(m) * N + n;
      if constexpr (E == GemvEpilogue::kStore) {
        if (lane == 0) *dst = FromFloat<Out>(sum[0][m] * a);
      } else {
        if (lane == 0) {
          // The unfused path: gate_up stored in Out, then SiluMulKernel. __fmul_rn keeps the
          // products from being contracted into expf's arithmetic (fp32 Out: no rounding between).
          const float g = RoundTo<Out>(__fmul_rn(sum[0][m], a));
          const float u = RoundTo<Out>(__fmul_rn(sum[1][m], a));
          *dst = FromFloat<Out>(SiluMul<Out>(g, u));
        }
      }
    }
  }
}

template <typename W, typename Out, int M, GemvEpilogue E, int S, bool kNorm>
__global__ void __launch_bounds__(kGemvWarps * 32)
GemvKernel(const W* __restrict__ x, const W* __restrict__ w, Out* __restrict__ y, int N, int K,
           const float* __restrict__ alpha, GemvQkvArgs qa, GemvNormIn na, bool stage_norm) {
  GemvBody<W, Out, M, E, S, kNorm>(x, w, y, N, K, alpha, qa, na, stage_norm);
}

// The same kernel compiled for kGemvTightBlocks blocks an SM (GemvTight below).
constexpr int kGemvTightBlocks = 8;
template <typename W, typename Out, int M, GemvEpilogue E, int S, bool kNorm>
__global__ void __launch_bounds__(kGemvWarps * 32, kGemvTightBlocks)
GemvKernelTight(const W* __restrict__ x, const W* __restrict__ w, Out* __restrict__ y, int N,
                int K, const float* __restrict__ alpha, GemvQkvArgs qa, GemvNormIn na,
                bool stage_norm) {
  GemvBody<W, Out, M, E, S, kNorm>(x, w, y, N, K, alpha, qa, na, stage_norm);
}

// SMs of the current device, queried once per process.
int GemvSmCount() {
  const int sms = DeviceSmCount();
  return sms > 0 ? sms : 132;  // an H100's count when the query fails
}

// Split-K factor for `rows` streamed weight rows of nvec 16-byte vectors: the smallest S in
// {1, 2, 4} with rows * S / 8 >= 4 blocks per SM (4 when none reaches it), halved while a slice
// would have fewer than 64 vectors (two per lane). Based on the weight rows, not the output
// columns: a kSiluMul warp streams 2 rows (twice the loads in flight), and the choice must be
// the same as the unfused LaunchGemv over those 2F rows for the fused result to stay bit-exact
// (likewise kQkvRotary against LaunchGemv over the (H + 2 Hkv) * Dh qkv rows).
// GLM_CUDA_GEMV_BLOCKS_PER_SM overrides the 4 (a benchmark switch, read once). 4 against 6 at
// bs1, GLM-4-9B shape, H200 (2026-12-03, twice each in one call): bf16 190.3 -> 194.8 tok/s,
// fp32 101.4 -> 103.2, fp16-safe 153.6 -> 154.2 (the QKV GEMV runs unsplit); H100 (v7): 3 144.4,
// 6 144.0, 12 140.1 tok/s.
int GemvSplitFor(int64_t rows, int nvec) {
  static const int per_sm = PositiveEnvOr("GLM_CUDA_GEMV_BLOCKS_PER_SM", 4);
  const int64_t want_blocks = per_sm * static_cast<int64_t>(GemvSmCount());
  int s = 4;
  for (int c : {1, 2, 4}) {
    if (rows * c >= want_blocks * kGemvWarps) {
      s = c;
      break;
    }
  }
  while (s > 1 && nvec < 64 * s) s /= 2;
  return s;
}

// The norm prologue's x rows in shared memory (GemvNormSupports keeps them under 44 KB), and the
// staged norm weights after them where they fit the same 44 KB (not the fp32 rows of M >= 2).
constexpr size_t kGemvNormSmem = 44 * 1024;

// The tight variant of the M = 1 store GEMV, compiled for 8 blocks an SM (<= 32 registers). The
// plain one takes 34-38, which the allocation granularity (8 a thread) rounds to 40: 6 blocks an
// SM, so bs1's o_proj and down_proj GEMVs (4,096 columns at S = 2: 1,024 blocks) ran 792 blocks
// in a first wave and 232 in a second; 8 an SM runs them in one. GLM_CUDA_GEMV_TIGHT=0 turns it
// off (a benchmark switch, read once). Same code, same bits: only the register allocation moves.
template <int M, GemvEpilogue E, bool kNorm>
constexpr bool kGemvHasTight = M == 1 && E == GemvEpilogue::kStore && !kNorm;

bool GemvTight() {
  static const bool on = EnvSwitchOn("GLM_CUDA_GEMV_TIGHT");
  return on;
}

template <typename W, typename Out, int M, GemvEpilogue E, bool kNorm>
cudaError_t LaunchGemvSplit(int S, const W* x, const W* w, Out* y, int N, int K,
                            const float* alpha, const GemvQkvArgs& qa, const GemvNormIn& na,
                            cudaStream_t stream) {
  const dim3 block(kGemvWarps * 32);
  size_t smem = kNorm ? size_t{M} * K * sizeof(W) : 0;
  const size_t stage_bytes = NormStageBytes<W>(K, na.post_weight != nullptr);
  const bool stage = kNorm && kNormStageable<W, W> &&
                     NormWeightStaging(NormStageSite::kGemvPrologue) &&
                     smem + stage_bytes <= kGemvNormSmem;
  if (stage) smem += stage_bytes;
  const auto launch = [&](auto kernel, int s) {
    const dim3 grid((N + kGemvWarps / s - 1) / (kGemvWarps / s));
    return LaunchKernel(kernel, grid, block, smem, stream, x, w, y, N, K, alpha, qa, na, stage);
  };
  if constexpr (kGemvHasTight<M, E, kNorm>) {
    if (GemvTight()) {
      switch (S) {
        case 1: return launch(GemvKernelTight<W, Out, M, E, 1, kNorm>, 1);
        case 2: return launch(GemvKernelTight<W, Out, M, E, 2, kNorm>, 2);
        case 4: return launch(GemvKernelTight<W, Out, M, E, 4, kNorm>, 4);
        default: return cudaErrorInvalidValue;
      }
    }
  }
  switch (S) {
    case 1: return launch(GemvKernel<W, Out, M, E, 1, kNorm>, 1);
    case 2: return launch(GemvKernel<W, Out, M, E, 2, kNorm>, 2);
    case 4: return launch(GemvKernel<W, Out, M, E, 4, kNorm>, 4);
    default: return cudaErrorInvalidValue;
  }
}

// N: output columns of the warps (kSiluMul: F, with w holding 2F rows; kQkvRotary: column
// pairs, with w holding 2N rows).
template <typename W, typename Out, GemvEpilogue E, bool kNorm = false>
cudaError_t LaunchGemvTyped(const void* x, const void* w, void* y, int M, int N, int K,
                            const float* alpha, const GemvQkvArgs& qa, cudaStream_t stream,
                            const GemvNormIn& na = GemvNormIn{}) {
  const int S = GemvSplitFor(static_cast<int64_t>(N) * GemvRowsPerWarp<E>(), K / Vec16<W>::kN);
  const W* xp = static_cast<const W*>(x);
  const W* wp = static_cast<const W*>(w);
  Out* yp = static_cast<Out*>(y);
  switch (M) {
    case 1: return LaunchGemvSplit<W, Out, 1, E, kNorm>(S, xp, wp, yp, N, K, alpha, qa, na, stream);
    case 2: return LaunchGemvSplit<W, Out, 2, E, kNorm>(S, xp, wp, yp, N, K, alpha, qa, na, stream);
    case 3: return LaunchGemvSplit<W, Out, 3, E, kNorm>(S, xp, wp, yp, N, K, alpha, qa, na, stream);
    case 4: return LaunchGemvSplit<W, Out, 4, E, kNorm>(S, xp, wp, yp, N, K, alpha, qa, na, stream);
    default: return cudaErrorInvalidValue;
  }
}

// act == weight launches (the fused epilogues), with or without the norm prologue.
template <GemvEpilogue E>
cudaError_t LaunchGemvSameTypes(DType type, const void* x, const void* w, void* y, int M, int N,
                                int K, const float* alpha, const GemvQkvArgs& qa,
                                const GemvNormIn* norm, cudaStream_t stream) {
  const auto launch = [&](auto element) -> cudaError_t {
    using T = decltype(element);
    if (norm != nullptr) return LaunchGemvTyped<T, T, E, true>(x, w, y, M, N, K, alpha, qa, stream, *norm);
    return LaunchGemvTyped<T, T, E>(x, w, y, M, N, K, alpha, qa, stream);
  };
  switch (type) {
    case DType::kF32: return launch(float{});
    case DType::kBF16: return launch(Bf16{});
    case DType::kF16: return launch(__half{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool GemvSupports(DType weight, int M, int K) {
  const int vec = weight == DType::kF32 ? 4 : 8;
  return M >= 1 && M <= 4 && K % vec == 0;
}

int GemvSplitK(DType weight, int64_t rows, int K) {
  return GemvSplitFor(rows, K / (weight == DType::kF32 ? 4 : 8));
}

cudaError_t LaunchGemv(KernelTypes types, const void* x, const void* w, void* y, int M, int N,
                       int K, const float* alpha, cudaStream_t stream) {
  if (!GemvSupports(types.weight, M, K)) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  return GLM_DISPATCH_TYPES(types, {
    return LaunchGemvTyped<Weight, Act, GemvEpilogue::kStore>(x, w, y, M, N, K, alpha,
                                                             GemvQkvArgs{}, stream);
  });
}

bool GemvNormSupports(KernelTypes types, int M, int K) {
  const int64_t elem = types.weight == DType::kF32 ? 4 : 2;
  // x staged in at most 44 KB of dynamic shared memory: with the kernel's static shared memory
  // it stays under the 48 KB a launch gets without an opt-in attribute.
  return types.act == types.weight && GemvSupports(types.weight, M, K) && static_cast<size_t>(M * K * elem) <= kGemvNormSmem;
}

cudaError_t LaunchGemvSiluMul(KernelTypes types, const void* x, const void* w_gate_up, void* y,
                              int M, int F, int K, const float* alpha, cudaStream_t stream,
                              const GemvNormIn* norm) {
  if (!GemvSupports(types.weight, M, K)) return cudaErrorInvalidValue;
  if (norm != nullptr && !GemvNormSupports(types, M, K)) return cudaErrorInvalidValue;
  if (F == 0) return cudaSuccess;
  if (norm != nullptr) {  // GemvNormSupports: act == weight
    return LaunchGemvSameTypes<GemvEpilogue::kSiluMul>(types.weight, x, w_gate_up, y, M, F, K, alpha,
                                                       GemvQkvArgs{}, norm, stream);
  }
  return GLM_DISPATCH_TYPES(types, {
    return LaunchGemvTyped<Weight, Act, GemvEpilogue::kSiluMul>(x, w_gate_up, y, M, F, K, alpha,
                                                                GemvQkvArgs{}, stream);
  });
}

cudaError_t LaunchGemvQkvRotary(KernelTypes types, const void* x, const void* w_qkv, void* qkv,
                                int M, int K, const float* alpha, const void* bias,
                                void* k_cache, void* v_cache, const int32_t* positions,
                                const int32_t* slots, const float* inv_freq, int H, int Hkv,
                                int Dh, int rot_dim, cudaStream_t stream, const GemvNormIn* norm) {
  if (!GemvSupports(types.weight, M, K) || types.act != types.weight) return cudaErrorInvalidValue;
  if (norm != nullptr && !GemvNormSupports(types, M, K)) return cudaErrorInvalidValue;
  if (Dh % 2 != 0 || rot_dim % 2 != 0 || rot_dim > Dh || H < 0 || Hkv < 0) {
    return cudaErrorInvalidValue;
  }
  const int pairs = (H + 2 * Hkv) * Dh / 2;
  if (pairs == 0) return cudaSuccess;
  GemvQkvArgs qa;
  qa.bias = bias;
  qa.k_cache = k_cache;
  qa.v_cache = v_cache;
  qa.positions = positions;
  qa.slots = slots;
  qa.inv_freq = inv_freq;
  qa.H = H;
  qa.Hkv = Hkv;
  qa.Dh = Dh;
  qa.rot_dim = rot_dim;
  // act == weight only (the fp16-safe mode's scaled fp16 input stays on the unfused path).
  return LaunchGemvSameTypes<GemvEpilogue::kQkvRotary>(types.weight, x, w_qkv, qkv, M, pairs, K,
                                                       alpha, qa, norm, stream);
}

}  // namespace cuda
}  // namespace glm
