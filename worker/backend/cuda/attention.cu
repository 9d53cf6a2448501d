// Paged attention for decode and (chunked) prefill in one kernel family.
//
// A thread block serves one work item (a sequence and up to tokens_per_item of its new tokens)
// for one KV head and one split of the context. Its query rows are (token, query head of the
// group) pairs: all G = H / Hkv heads that share the KV head, so each K/V vector is read from
// the cache once per KV head (GQA-aware; GLM-4-9B has G = 16). K/V are walked in tiles of 32
// tokens through the block table, with an online softmax (flash-style) in fp32; the causal mask
// compares absolute positions, so a prefill chunk attends to the cached context and to itself.
// Decode splits long contexts over `splits` blocks (flash-decoding) and combines the partials.
//
// Shapes: q [T, q_stride] act (heads of Dh), K/V cache [blocks, block_size, Hkv, Dh] weight,
// out [T, H * Dh] act. Threads: 128 = 4 warps; warp w owns query rows [w*RPW, (w+1)*RPW), lane
// l owns key l of the tile for the scores and dims {l, l+32, ...} of the output.
#include <mutex>

#include "worker/backend/cuda/attention_item.cuh"
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kKeyTile = 32;
constexpr int kAttnThreads = 128;
constexpr int kPrefillRows = 64;
constexpr int kDecodeRows = 16;

template <int RPW, int DH>
constexpr size_t AttentionSmemBytes() {
  constexpr int rows = 4 * RPW, dh = DH, kstride = dh + 4;
  return sizeof(float) * (rows * dh + 2 * kKeyTile * kstride + rows * kKeyTile);
}

template <typename Act, typename KV, int RPW, int DH>
__global__ void __launch_bounds__(kAttnThreads) PagedAttentionKernel(AttentionArgs a, int G) {
  constexpr int kRows = 4 * RPW;
  constexpr int kDh = DH;
  constexpr int DPL = (DH + 31) / 32;  // output dims per lane
  constexpr int kKStride = kDh + 4;  // keeps 16-byte rows aligned and spreads banks
  extern __shared__ float4 smem4[];
  float* q_s = reinterpret_cast<float*>(smem4);  // [kRows, kDh] (pre-scaled)
  float* k_s = q_s + kRows * kDh;                // [kKeyTile, kKStride]
  float* v_s = k_s + kKeyTile * kKStride;        // [kKeyTile, kKStride]
  float* p_s = v_s + kKeyTile * kKStride;        // [kRows, kKeyTile]
  __shared__ int row_pos[kRows];                 // absolute position of each row, -1: unused

  GridDependencyWait();  // the item tables, q and the KV cache come from earlier kernels
  LaunchDependents();
  const int kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const AttentionItem it(a, blockIdx.x, G);
  const int nrows = it.nrows, kv_len = it.kv_len;
  const Act* q = static_cast<const Act*>(a.q);
  const KV* kc = static_cast<const KV*>(a.k_cache);
  const KV* vc = static_cast<const KV*>(a.v_cache);

  for (int idx = tid; idx < kRows * kDh; idx += kAttnThreads) {
    const int r = idx / kDh, d = idx % kDh;
    float v = 0.f;
    if (r < nrows) v = ToFloat(q[it.Token(r, G) * a.q_stride + (kvh * G + r % G) * kDh + d]) * a.scale;
    q_s[idx] = v;
  }
  for (int r = tid; r < kRows; r += kAttnThreads)
    row_pos[r] = r < nrows ? a.positions[it.Token(r, G)] : -1;
  const int num_tiles = (kv_len + kKeyTile - 1) / kKeyTile;
  const int per_split = (num_tiles + a.splits - 1) / a.splits;
  const int tile_begin = split * per_split;
  const int tile_end = min(num_tiles, tile_begin + per_split);

  float m[RPW], l[RPW], o[RPW][DPL];
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) o[rr][dd] = 0.f;
  }
  __syncthreads();

  constexpr int kVec = Vec16<KV>::kN;
  constexpr int kVecPerRow = kDh / kVec;
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int j0 = tile * kKeyTile;
    for (int v = tid; v < kKeyTile * kVecPerRow; v += kAttnThreads) {
      const int t = v / kVecPerRow, c = (v % kVecPerRow) * kVec;
      const int j = j0 + t;
      float kf[kVec], vf[kVec];
      if (j < kv_len) {
        const int64_t base = (it.Slot(j) * a.Hkv + kvh) * kDh + c;
        Vec16<KV>::Unpack(*reinterpret_cast<const int4*>(kc + base), kf);
        Vec16<KV>::Unpack(*reinterpret_cast<const int4*>(vc + base), vf);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) kf[e] = vf[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        k_s[t * kKStride + c + e] = kf[e];
        v_s[t * kKStride + c + e] = vf[e];
      }
    }
    __syncthreads();

    float s[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) s[rr] = 0.f;
    const float* krow = k_s + lane * kKStride;
#pragma unroll 4
    for (int d = 0; d < kDh; d += 4) {
      const float4 k4 = *reinterpret_cast<const float4*>(krow + d);
#pragma unroll
      for (int rr = 0; rr < RPW; ++rr) {
        const float4 q4 = *reinterpret_cast<const float4*>(q_s + (warp * RPW + rr) * kDh + d);
        s[rr] = fmaf(q4.x, k4.x, fmaf(q4.y, k4.y, fmaf(q4.z, k4.z, fmaf(q4.w, k4.w, s[rr]))));
      }
    }
    const int j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      const int r = warp * RPW + rr;
      const bool valid = j < kv_len && j <= row_pos[r];
      const float sv = valid ? s[rr] : -INFINITY;
      const float new_m = fmaxf(m[rr], WarpMax(sv));
      const float p = valid ? expf(sv - new_m) : 0.f;
      const float corr = m[rr] == -INFINITY ? 0.f : expf(m[rr] - new_m);
      l[rr] = l[rr] * corr + WarpSum(p);
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) o[rr][dd] *= corr;
      m[rr] = new_m;
      p_s[r * kKeyTile + lane] = p;
    }
    __syncwarp();
#pragma unroll 4
    for (int t = 0; t < kKeyTile; ++t) {
      float vv[DPL];
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd)
        vv[dd] = (kDh % 32 == 0 || lane + 32 * dd < kDh) ? v_s[t * kKStride + lane + 32 * dd] : 0.f;
#pragma unroll
      for (int rr = 0; rr < RPW; ++rr) {
        const float p = p_s[(warp * RPW + rr) * kKeyTile + t];
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) o[rr][dd] = fmaf(p, vv[dd], o[rr][dd]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    const int r = warp * RPW + rr;
    if (r >= nrows) continue;
    const int64_t t = it.Token(r, G);
    const int h = kvh * G + r % G;
    if (a.splits == 1) {
      const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
      Act* out = static_cast<Act*>(a.out) + (t * a.H + h) * kDh;
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd)
        if (kDh % 32 == 0 || lane + 32 * dd < kDh) out[lane + 32 * dd] = FromFloat<Act>(o[rr][dd] * inv);
    } else {
      const int64_t row = (static_cast<int64_t>(split) * a.T + t) * a.H + h;
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd)
        if (kDh % 32 == 0 || lane + 32 * dd < kDh) a.partial_out[row * kDh + lane + 32 * dd] = o[rr][dd];
      if (lane == 0) {
        a.partial_ml[row * 2] = m[rr];
        a.partial_ml[row * 2 + 1] = l[rr];
      }
    }
  }
}

template <typename Act>
__global__ void AttentionCombineKernel(const float* __restrict__ partial_out,
                                       const float* __restrict__ partial_ml, Act* __restrict__ out,
                                       int splits, int T, int H, int Dh) {
  GridDependencyWait();
  LaunchDependents();
  const int t = blockIdx.x, h = blockIdx.y;
  float gm = -INFINITY;
  for (int s = 0; s < splits; ++s)
    gm = fmaxf(gm, partial_ml[((static_cast<int64_t>(s) * T + t) * H + h) * 2]);
  for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
    float sum_l = 0.f, acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t row = (static_cast<int64_t>(s) * T + t) * H + h;
      const float ms = partial_ml[row * 2];
      if (ms == -INFINITY) continue;
      const float w = expf(ms - gm);
      sum_l = fmaf(partial_ml[row * 2 + 1], w, sum_l);  // same arithmetic as CombineSplits
      acc = fmaf(partial_out[row * Dh + d], w, acc);
    }
    out[(static_cast<int64_t>(t) * H + h) * Dh + d] = FromFloat<Act>(sum_l > 0.f ? acc / sum_l : 0.f);
  }
}

template <typename Act, typename KV, int RPW, int DH>
cudaError_t LaunchAttentionTyped(const AttentionArgs& a, int G, cudaStream_t stream) {
  constexpr size_t smem = AttentionSmemBytes<RPW, DH>();
  // Once per process (one device per process); the result of the first call is kept.
  static const cudaError_t attr_err = cudaFuncSetAttribute(
      PagedAttentionKernel<Act, KV, RPW, DH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(smem));
  if (attr_err != cudaSuccess) return attr_err;
  const dim3 grid(a.num_items, a.Hkv, a.splits);
  return LaunchKernel(PagedAttentionKernel<Act, KV, RPW, DH>, grid, kAttnThreads, smem, stream, a,
                      G);
}

template <typename Act, typename KV, int RPW>
cudaError_t LaunchAttentionDh(const AttentionArgs& a, int G, cudaStream_t stream) {
  switch (a.Dh) {
    case 16: return LaunchAttentionTyped<Act, KV, RPW, 16>(a, G, stream);
    case 32: return LaunchAttentionTyped<Act, KV, RPW, 32>(a, G, stream);
    case 64: return LaunchAttentionTyped<Act, KV, RPW, 64>(a, G, stream);
    case 128: return LaunchAttentionTyped<Act, KV, RPW, 128>(a, G, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int AttentionTokensPerItem(int G) { return G >= kPrefillRows ? 1 : kPrefillRows / G; }

cudaError_t LaunchPagedAttention(KernelTypes types, const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_items == 0) return cudaSuccess;
  const bool mma = AttentionMmaSupports(types, a);
  const cudaError_t err =
      mma ? LaunchAttentionMma(types, a, stream) : LaunchPagedAttentionSimt(types, a, stream);
  if (err != cudaSuccess || a.splits == 1 || (mma && AttentionMmaMergesSplits(a))) return err;
  return LaunchAttentionCombine(types, a.partial_out, a.partial_ml, a.out, a.splits, a.T, a.H, a.Dh,
                                stream);
}

cudaError_t LaunchPagedAttentionSimt(KernelTypes types, const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_items == 0) return cudaSuccess;
  if (a.Hkv <= 0 || a.H % a.Hkv != 0 || a.splits < 1) return cudaErrorInvalidValue;
  const int G = a.H / a.Hkv;
  if (a.tokens_per_item * G > kPrefillRows) return cudaErrorInvalidValue;
  const bool decode_rows = a.tokens_per_item * G <= kDecodeRows;
  return GLM_DISPATCH_TYPES(types, {
    if (decode_rows) return LaunchAttentionDh<Act, Weight, kDecodeRows / 4>(a, G, stream);
    return LaunchAttentionDh<Act, Weight, kPrefillRows / 4>(a, G, stream);
  });
}

cudaError_t LaunchAttentionCombine(KernelTypes types, const float* partial_out,
                                   const float* partial_ml, void* out, int splits, int T, int H,
                                   int Dh, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const dim3 grid(T, H);
  switch (types.act) {
    case DType::kF32:
      return LaunchKernel(AttentionCombineKernel<float>, grid, Dh, 0, stream, partial_out,
                          partial_ml, static_cast<float*>(out), splits, T, H, Dh);
    case DType::kBF16:
      return LaunchKernel(AttentionCombineKernel<Bf16>, grid, Dh, 0, stream, partial_out,
                          partial_ml, static_cast<Bf16*>(out), splits, T, H, Dh);
    case DType::kF16:
      return LaunchKernel(AttentionCombineKernel<__half>, grid, Dh, 0, stream, partial_out,
                          partial_ml, static_cast<__half*>(out), splits, T, H, Dh);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace glm
