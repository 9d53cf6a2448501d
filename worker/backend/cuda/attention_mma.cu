// Tensor-core paged attention for bf16/fp16 (sm80+): decode, chunked prefill and flash-decoding
// splits, the work split of the CUDA-core kernel (attention.cu) on mma.sync.
//
// A block serves one work item (a sequence and up to tokens_per_item of its new tokens) for one
// KV head and one split of the context. Its query rows are (token, head of the group) pairs,
// token-major, so K/V are read once per KV head for all G heads (GLM-4-9B: G = 16, so a decode
// token is exactly one 16-row MMA tile). K/V tiles stream through shared memory with cp.async in a
// pipeline of 2-4 stages; rows beyond the context are zero-filled. A tile holds 16 keys per warp.
// Block shapes (DecodeShape): prefill 4 warps / 64-key tiles / 2 stages (3 for A/B runs); decode 4 warps / 64-key
// tiles with 4 stages for small batches (a block keeps a whole short context in flight), or for
// large batches 2 warps / 32-key tiles with 3 stages (less shared memory a block: more blocks per
// SM, so a large batch fits one wave; 2 and 4 stages, and 4 warps / 2 stages, for A/B runs), each
// warp copying and waiting for its own 16 keys of a tile (warp pipelines: no block barrier
// between tiles). With PDL the block reads the step tables and starts loading the K/V cached by
// earlier steps before it waits for the QKV kernel (which writes Q and the new tokens' K/V).
//
// Flash-decoding: with split_counters, a decode item's split count adapts to its context (at
// least min_tiles_per_split tiles a split, so a short context is one block) and the last split
// block of an item merges the partials (CombineSplits); otherwise every split writes partials
// and LaunchPagedAttention runs the combine kernel.
//
// FlashAttention-2 style register dataflow on m16n8k16 MMAs with fp32 accumulation: S = Q K^T lands
// in accumulator fragments whose layout is the A-operand layout of P V, so the probabilities never
// leave registers; the online softmax (in the log2 domain) runs on those fragments with the
// running max/sum of each row shared by the 4 lanes of a quad. Warps split the rows (prefill:
// 4 x 16 rows) or the keys of each tile (decode: 16 rows, each warp 16 of the 64 keys, merged in
// shared memory at the end).
//
// Rounding: the probabilities enter P V in the storage type (as in FlashAttention), so this is
// close to, not bit-identical with, the CPU reference (tests/gpu compare it with a float64 softmax).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "worker/backend/cuda/attention_item.cuh"
#include "worker/backend/cuda/cp_async.cuh"
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kMaxRows = 64;  // query rows of a prefill item (4 row warps of 16)

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GLM_ATTN_MMA_ARCH 1
#endif

template <typename T>
__device__ __forceinline__ uint32_t PackPair(float lo, float hi);
template <typename T>
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);

#if defined(GLM_ATTN_MMA_ARCH)
template <>
__device__ __forceinline__ uint32_t PackPair<Bf16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t PackPair<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ void Mma16816<Bf16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void Mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i. Thread t gets
// (row t/4, cols 2(t%4), 2(t%4)+1) of each matrix, or with .trans (rows 2(t%4), 2(t%4)+1, col t/4).
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
#endif  // GLM_ATTN_MMA_ARCH

// NW warps, RW of them splitting the rows (16 each), the other NW / RW splitting each tile's
// 16 * NW keys; STAGES tiles in the pipeline.
template <int DH, int NW, int RW, int STAGES>
struct MmaSmem {
  static constexpr int kTile = 16 * NW;  // keys a tile
  static constexpr int kKW = NW / RW;
  static constexpr int kRows = 16 * RW;
  static constexpr int kStride = DH + 8;  // 16-bit elements: rows 16 bytes apart mod 128, no conflicts
  static constexpr size_t kStage = size_t{2} * kTile * kStride * 2;  // K and V tiles, bytes
  // Key-split merge: partial O [KW][rows][DH], (m, l) [KW][rows][2], weights [KW][rows],
  // 1 / l [rows] (floats).
  static constexpr size_t kMerge = size_t{kKW} * kRows * DH * 4 + size_t{kKW} * kRows * 2 * 4 +
                                   size_t{kKW} * kRows * 4 + size_t{kRows} * 4;
  static constexpr size_t kQ = size_t{kRows} * kStride * 2;
  static_assert(RW == 1 || kQ <= kStage, "Q is staged in the last tile stage");
  static constexpr size_t kBytes = STAGES * kStage > kMerge ? STAGES * kStage : kMerge;
};

// out rows of one (item, KV head) = the splits' partials merged (what LaunchAttentionCombine
// computes), read with ld.cg: they were written by other blocks. Every load of a phase is
// independent (thread per (row, split), then per (row, dim)): a loop over the splits per row
// would be a chain of L2 round trips. scratch: nrows * (2 * splits + 1) + splits words of shared memory.
template <typename T, int DH, int kRowsMax, int kThreads>
__device__ void CombineSplits(const AttentionArgs& a, const AttentionItem& it, int G, int kvh,
                              int S, float* scratch) {
  const int nrows = it.nrows;
  float* wts = scratch;            // [nrows][S] running max of each split, then its weight
  float* ls = wts + nrows * S;     // [nrows][S] running sum of each split
  float* sum_l = ls + nrows * S;   // [nrows]
  int* used = reinterpret_cast<int*>(sum_l + nrows);  // [S]
  auto row_of = [&](int s, int r) {
    return (static_cast<int64_t>(s) * a.T + it.Token(r, G)) * a.H + kvh * G + r % G;
  };
  for (int idx = threadIdx.x; idx < nrows * S; idx += blockDim.x) {
    const int r = idx / S, s = idx % S;
    const float2 ml = __ldcg(reinterpret_cast<const float2*>(a.partial_ml + row_of(s, r) * 2));
    wts[idx] = ml.x;
    ls[idx] = ml.y;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < nrows; r += blockDim.x) {
    float gm = -INFINITY;
    for (int s = 0; s < S; ++s) gm = fmaxf(gm, wts[r * S + s]);
    float l = 0.f;
    for (int s = 0; s < S; ++s) {
      const float ms = wts[r * S + s];
      const float w = ms == -INFINITY ? 0.f : expf(ms - gm);
      wts[r * S + s] = w;
      if (w != 0.f) l = fmaf(ls[r * S + s], w, l);
    }
    sum_l[r] = l;
  }
  __syncthreads();
  // Splits that hold keys for some row (decode: the same for every row of an item).
  for (int sp = threadIdx.x; sp < S; sp += blockDim.x) {
    bool any = false;
    for (int r = 0; r < nrows; ++r) any |= wts[r * S + sp] != 0.f;
    used[sp] = any;
  }
  __syncthreads();
  // Thread x owns elements x, x + kThreads, ...: each split's loads are issued together.
  constexpr int kPer = kRowsMax * DH / kThreads;
  float acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0.f;
  for (int sp = 0; sp < S; ++sp) {
    if (!used[sp]) continue;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int idx = threadIdx.x + k * kThreads;
      if (idx < nrows * DH) {
        const int r = idx / DH, d = idx % DH;
        acc[k] = fmaf(__ldcg(a.partial_out + row_of(sp, r) * DH + d), wts[r * S + sp], acc[k]);
      }
    }
  }
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int idx = threadIdx.x + k * kThreads;
    if (idx < nrows * DH) {
      const int r = idx / DH, d = idx % DH;
      out[(it.Token(r, G) * a.H + kvh * G + r % G) * DH + d] =
          FromFloat<T>(sum_l[r] > 0.f ? acc[k] / sum_l[r] : 0.f);
    }
  }
}

// Waits until at most n (0..3) cp.async groups are pending.
__device__ __forceinline__ void CpAsyncWaitAtMost(int n) {
#if defined(GLM_ATTN_MMA_ARCH)
  switch (n) {
    case 0: CpAsyncWait<0>(); break;
    case 1: CpAsyncWait<1>(); break;
    case 2: CpAsyncWait<2>(); break;
    default: CpAsyncWait<3>(); break;
  }
#endif
}

// NW warps; RW of them split the rows (16 each), the other NW / RW split each tile's 16 * NW
// keys. STAGES: K/V tiles in flight + 1 (2: double buffering; 3-4 where one block keeps more of
// its context in flight: small decode batches walk a whole short context, and the latency of each
// tile is the cost).
// WP (decode only): warp pipelines. Each warp copies its own 16 keys of every tile into its own
// ring of STAGES stages and waits only for its own copies (a warp barrier instead of the block's):
// the warps of a block no longer wait for each other between tiles.
// Row-split (prefill) shapes: at least 3 blocks an SM, which their 70 KB of shared memory
// allows; unbounded they took 173 registers, i.e. 2 blocks (bounded: 168, and at Dh = 128 a
// 48-byte spill outside the tile loop; v9 in docs/PERFORMANCE-cuda-notes.md).
template <typename T, int DH, int NW, int RW, int STAGES, bool WP = false>
__global__ void __launch_bounds__(32 * NW, RW > 1 ? 3 : 1) AttentionMmaKernel(AttentionArgs a, int G) {
  LaunchDependents();
#if !defined(GLM_ATTN_MMA_ARCH)
  __trap();
#else
  using Smem = MmaSmem<DH, NW, RW, STAGES>;
  constexpr int kThreads = 32 * NW;
  constexpr int kTile = Smem::kTile;
  constexpr int KW = Smem::kKW;
  constexpr int kRows = Smem::kRows;
  constexpr int kWarpKeys = kTile / KW;  // 16 * RW
  constexpr int kNT = kWarpKeys / 8;     // S column tiles of a warp
  constexpr int kDT = DH / 8;            // O column tiles
  constexpr int kKS = DH / 16;           // k-steps of Q K^T
  constexpr int kStride = Smem::kStride;
  static_assert(NW % RW == 0, "block shape");
  static_assert(STAGES >= 2 && STAGES <= 4, "stages");
  static_assert(!WP || RW == 1, "warp pipelines are a decode shape");
  constexpr int kVecs = DH / 8;          // 16-byte vectors per row
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kLn2 = 0.6931471805599453f;
  extern __shared__ __align__(128) unsigned char smem[];
  uint16_t* tiles = reinterpret_cast<uint16_t*>(smem);  // [STAGES][K | V][kTile][kStride]
  __shared__ int row_pos[kRows];

  const int kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int rw = warp % RW, kw = warp / RW;
  const int g = lane / 4, tq = lane % 4;
  // Before GridDependencyWait() (PDL), only what no earlier kernel of the step writes: the step
  // tables (copied from the host before the step's first kernel) and the K/V of positions
  // cached by earlier steps. Q and the new tokens' K/V come from the QKV kernel just before.
  // Items in reverse order: the last items of a prompt see the most keys; start them first.
  const int item = a.num_items - 1 - blockIdx.x;
  const AttentionItem it(a, item, G);
  const int nrows = it.nrows, kv_len = it.kv_len;
  const int num_tiles = (kv_len + kTile - 1) / kTile;
  // With the in-kernel combine the split count adapts to the context: at least
  // a.min_tiles_per_split 64-key tiles' worth of keys a split, so a short context is one block
  // that writes its rows directly (no partials, no counter) and the surplus split blocks leave at
  // once. (A decode graph fixes a.splits for every context length it will see.)
  int splits = a.splits;
  if constexpr (RW == 1) {
    if (splits > 1 && a.split_counters != nullptr) {
      const int per = max(1, a.min_tiles_per_split * 64 / kTile);
      splits = min(splits, max(1, (num_tiles + per - 1) / per));
    }
  }
  // Surplus split blocks leave without waiting for the QKV kernel, freeing their SM for the
  // next kernel's blocks at once; split 0 of every item waits, so this kernel still cannot
  // complete before its predecessor (launch.cuh).
  if (split >= splits) return;
  const uint16_t* q = static_cast<const uint16_t*>(a.q);
  const uint16_t* kc = static_cast<const uint16_t*>(a.k_cache);
  const uint16_t* vc = static_cast<const uint16_t*>(a.v_cache);
  for (int r = tid; r < kRows; r += kThreads) row_pos[r] = r < nrows ? a.positions[it.Token(r, G)] : -1;

  const int per_split = (num_tiles + splits - 1) / splits;
  const int tile_begin = min(num_tiles, split * per_split);
  const int tile_end = min(num_tiles, tile_begin + per_split);
  // Thread tid copies 16-byte column c0 of the tile rows t0, t0 + kRowStep, ...: the offsets
  // that do not depend on the tile are computed once, and a power-of-two block size (the
  // engine's) maps a key to its cache slot with shifts (the per-key integer division and 64-bit
  // arithmetic were most of the instructions of a decode tile; the kernel is issue-bound at
  // 8 warps an SM).
  // With warp pipelines the warp's 32 lanes copy its kWarpKeys rows.
  constexpr int kCopyThreads = WP ? 32 : kThreads;
  constexpr int kCopyKeys = WP ? kWarpKeys : kTile;
  static_assert(kCopyThreads % kVecs == 0 && (kCopyKeys * kVecs) % kCopyThreads == 0, "tile copy map");
  constexpr int kRowStep = kCopyThreads / kVecs;
  constexpr int kCopyRows = kCopyKeys / kRowStep;  // tile rows a thread copies
  const int copy_tid = WP ? lane : tid;
  const int t0 = copy_tid / kVecs, c0 = (copy_tid % kVecs) * 8;
  // A stage's K rows, then its V rows: the block's tile, or (WP) the warp's part of it in the
  // warp's own ring ([NW][STAGES][K | V][kWarpKeys][kStride], the same bytes).
  auto stage_k = [&](int stage) {
    return WP ? tiles + (kw * STAGES + stage) * 2 * kWarpKeys * kStride : tiles + stage * 2 * kTile * kStride;
  };
  constexpr int kStageRows = WP ? kWarpKeys : kTile;  // K rows of a stage before its V rows
  const int copy_key0 = WP ? kw * kWarpKeys : 0;      // the copier's first key inside a tile
  const int64_t slot_stride = static_cast<int64_t>(a.Hkv) * DH;
  const int64_t col0 = static_cast<int64_t>(kvh) * DH + c0;
  const int bs = a.block_size;
  const bool bs_pow2 = (bs & (bs - 1)) == 0;
  const int bs_shift = __ffs(bs) - 1;
  const int32_t* table = it.block_table;
  auto load_tile = [&](int tile, int stage) {
    uint16_t* k_dst = stage_k(stage) + t0 * kStride + c0;
    uint16_t* v_dst = k_dst + kStageRows * kStride;
#pragma unroll
    for (int i = 0; i < kCopyRows; ++i) {
      const int j = tile * kTile + copy_key0 + t0 + i * kRowStep;
      const bool valid = j < kv_len;
      int64_t base = 0;
      if (valid) {
        const int64_t slot = bs_pow2 ? (static_cast<int64_t>(table[j >> bs_shift]) << bs_shift) | (j & (bs - 1))
                                     : it.Slot(j);
        base = slot * slot_stride + col0;
      }
      CpAsync16(k_dst + i * kRowStep * kStride, kc + base, valid);
      CpAsync16(v_dst + i * kRowStep * kStride, vc + base, valid);
    }
    CpAsyncCommit();
  };
  // Tile t lives in stage (t - tile_begin) % STAGES; up to STAGES - 1 tiles are in flight ahead of
  // the one being computed. Before the wait: the tiles whose keys all precede the item's first
  // new token (stages 0..STAGES-2; the last stage holds Q meanwhile).
  // Decode blocks (RW == 1) read Q straight into registers, so all STAGES stages take tiles;
  // the row-split blocks stage Q through the last stage, which stays free until then.
  constexpr int kTileStagesBeforeQ = RW == 1 ? STAGES : STAGES - 1;
  int issued = tile_begin;
  const int first_new = nrows > 0 ? a.positions[it.token_begin] : 0;
  while (issued < tile_end && issued - tile_begin < kTileStagesBeforeQ &&
         (issued + 1) * kTile <= first_new) {
    load_tile(issued, (issued - tile_begin) % STAGES);
    ++issued;
  }
  GridDependencyWait();

  uint32_t qa[kKS][4];
  if constexpr (RW == 1) {
    // The tiles with the new tokens' K/V first (their loads overlap the Q loads), then Q's A
    // fragments from global memory: a[0] = (row g, cols 2tq, 2tq + 1), a[1] = row g + 8,
    // a[2] / a[3] the same 8 columns on (ldmatrix's layout, without the shared-memory pass).
    while (issued < tile_end && issued - tile_begin < STAGES) {
      load_tile(issued, (issued - tile_begin) % STAGES);
      ++issued;
    }
    const uint32_t* q_lo = nullptr;
    const uint32_t* q_hi = nullptr;
    if (g < nrows) {
      q_lo = reinterpret_cast<const uint32_t*>(q + it.Token(g, G) * a.q_stride + (kvh * G + g % G) * DH);
    }
    if (g + 8 < nrows) {
      q_hi = reinterpret_cast<const uint32_t*>(q + it.Token(g + 8, G) * a.q_stride +
                                               (kvh * G + (g + 8) % G) * DH);
    }
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
      const int c = (ks * 16 + 2 * tq) / 2;  // in 32-bit pairs
      qa[ks][0] = q_lo ? q_lo[c] : 0u;
      qa[ks][1] = q_hi ? q_hi[c] : 0u;
      qa[ks][2] = q_lo ? q_lo[c + 4] : 0u;
      qa[ks][3] = q_hi ? q_hi[c + 4] : 0u;
    }
    __syncthreads();  // row_pos
  } else {
    // Q rows through shared memory (the last stage of the tile buffers, not yet in use) into A
    // fragments.
    uint16_t* q_stage = tiles + (STAGES - 1) * 2 * kTile * kStride;
    for (int v = tid; v < kRows * kVecs; v += kThreads) {
      const int r = v / kVecs, c = (v % kVecs) * 8;
      int4 val = make_int4(0, 0, 0, 0);
      if (r < nrows) {
        val = *reinterpret_cast<const int4*>(q + it.Token(r, G) * a.q_stride + (kvh * G + r % G) * DH + c);
      }
      *reinterpret_cast<int4*>(q_stage + r * kStride + c) = val;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
      LdMatrixX4(qa[ks], q_stage + (rw * 16 + lane % 8 + 8 * ((lane / 8) & 1)) * kStride + ks * 16 + 8 * (lane / 16));
    }
    __syncthreads();  // the last stage is free again
  }
  const int pos_lo = row_pos[rw * 16 + g], pos_hi = row_pos[rw * 16 + g + 8];

  const float sl2 = a.scale * kLog2e;  // scores in the log2 domain
  float o[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
  const int key0 = kw * kWarpKeys;  // the warp's first key inside a tile

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) % STAGES;
    // Tiles up to tile + STAGES - 1 in flight; the stage they reuse was computed last iteration.
    while (issued < tile_end && issued <= tile + STAGES - 1) {
      load_tile(issued, (issued - tile_begin) % STAGES);
      ++issued;
    }
    CpAsyncWaitAtMost(issued - tile - 1);  // this tile's group is complete
    if constexpr (WP) {
      __syncwarp();
    } else {
      __syncthreads();
    }
    // k_t / v_t: row 0 is the warp's first key.
    const uint16_t* k_t = stage_k(stage) + (WP ? 0 : key0) * kStride;
    const uint16_t* v_t = k_t + kStageRows * kStride;
    const int j0 = tile * kTile + key0;
    // Rows of this warp that see at least one of its keys (causal): else skip the math.
    if (__any_sync(0xffffffffu, j0 <= max(pos_lo, pos_hi))) {  // warp-uniform: MMAs are collective
      // Decode (kNT <= 2 column tiles): two accumulators per S column tile (even and odd
      // k-steps), summed at the end: twice the independent MMA chains (at 2 warps a scheduler
      // the chain latency is the cost). Prefill warps have kNT = 8 chains already.
      constexpr bool kSplitChains = kNT <= 2;
      float s[kNT][4], s_odd[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = s_odd[nt][e] = 0.f;
      }
#pragma unroll
      for (int ks = 0; ks < kKS; ks += 2) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          uint32_t b[4];
          LdMatrixX4(b, k_t + (nt * 8 + lane % 8) * kStride + ks * 16 + 8 * (lane / 8));
          Mma16816<T>(s[nt], qa[ks], b[0], b[1]);
          Mma16816<T>(kSplitChains ? s_odd[nt] : s[nt], qa[ks + 1], b[2], b[3]);
        }
      }
      if constexpr (kSplitChains) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] += s_odd[nt][e];
        }
      }
      float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = j0 + nt * 8 + 2 * tq + e;
          s[nt][e] = j <= pos_lo ? s[nt][e] * sl2 : -INFINITY;
          s[nt][2 + e] = j <= pos_hi ? s[nt][2 + e] * sl2 : -INFINITY;
          mx_lo = fmaxf(mx_lo, s[nt][e]);
          mx_hi = fmaxf(mx_hi, s[nt][2 + e]);
        }
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
      }
      const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
      const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;
      const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
      const float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
      m_lo = new_lo;
      m_hi = new_hi;
      float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          s[nt][e] = exp2f(s[nt][e] - base_lo);
          s[nt][2 + e] = exp2f(s[nt][2 + e] - base_hi);
          sum_lo += s[nt][e];
          sum_hi += s[nt][2 + e];
        }
      }
      l_lo = l_lo * corr_lo + sum_lo;  // per-lane partial sums; the quad adds them up at the end
      l_hi = l_hi * corr_hi + sum_hi;
      // Rescale O only where a row's running max moved (multiplying by 1 changes nothing; the
      // test is warp-uniform, so late tiles of a long context usually skip the 4 * kDT multiplies).
      if (!__all_sync(0xffffffffu, corr_lo == 1.f && corr_hi == 1.f)) {
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          o[dt][0] *= corr_lo;
          o[dt][1] *= corr_lo;
          o[dt][2] *= corr_hi;
          o[dt][3] *= corr_hi;
        }
      }
#pragma unroll
      for (int kk = 0; kk < kWarpKeys / 16; ++kk) {
        const uint32_t pa[4] = {PackPair<T>(s[2 * kk][0], s[2 * kk][1]),
                                PackPair<T>(s[2 * kk][2], s[2 * kk][3]),
                                PackPair<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                PackPair<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < DH / 16; ++np) {
          uint32_t b[4];
          LdMatrixX4Trans(b, v_t + (kk * 16 + lane % 8 + 8 * ((lane / 8) & 1)) * kStride + np * 16 +
                                 8 * (lane / 16));
          Mma16816<T>(o[2 * np], pa, b[0], b[1]);
          Mma16816<T>(o[2 * np + 1], pa, b[2], b[3]);
        }
      }
    }
    // The next iteration's load overwrites this stage.
    if constexpr (WP) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  }
  if constexpr (WP) __syncthreads();  // the merge below reuses the other warps' stages
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
  }

  T* out = static_cast<T*>(a.out);
  if constexpr (KW == 1) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = rw * 16 + g + 8 * half;
      if (r >= nrows) continue;
      const int64_t t = it.Token(r, G);
      const int h = kvh * G + r % G;
      const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo;
      if (splits == 1) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        uint32_t* dst = reinterpret_cast<uint32_t*>(out + (t * a.H + h) * DH);
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          dst[dt * 4 + tq] = PackPair<T>(o[dt][2 * half] * inv, o[dt][2 * half + 1] * inv);
        }
      } else {
        const int64_t row = (static_cast<int64_t>(split) * a.T + t) * a.H + h;
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
          *reinterpret_cast<float2*>(a.partial_out + row * DH + dt * 8 + 2 * tq) =
              make_float2(o[dt][2 * half], o[dt][2 * half + 1]);
        }
        if (tq == 0) {
          a.partial_ml[row * 2] = m * kLn2;  // natural-log units, as the combine kernel expects
          a.partial_ml[row * 2 + 1] = l;
        }
      }
    }
  } else {
    // Key-split warps: merge the KW partial softmaxes of each row in shared memory.
    float* mo = reinterpret_cast<float*>(smem);  // [KW][kRows][DH]
    float* ml = mo + KW * kRows * DH;            // [KW][kRows][2]
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = rw * 16 + g + 8 * half;
      float* dst = mo + (kw * kRows + r) * DH;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<float2*>(dst + dt * 8 + 2 * tq) = make_float2(o[dt][2 * half], o[dt][2 * half + 1]);
      }
      if (tq == 0) {
        ml[(kw * kRows + r) * 2] = half ? m_hi : m_lo;
        ml[(kw * kRows + r) * 2 + 1] = half ? l_hi : l_lo;
      }
    }
    float* wts = ml + KW * kRows * 2;  // [KW][kRows]: exp2(m_w - m) of each warp's partial
    float* inv_l = wts + KW * kRows;   // [kRows]: 1 / l (0 for a row that saw no key)
    __syncthreads();
    // One thread a row: the row's max, the warps' weights and the total sum, once.
    if (tid < kRows) {
      const int r = tid;
      float gm = -INFINITY;
#pragma unroll
      for (int w = 0; w < KW; ++w) gm = fmaxf(gm, ml[(w * kRows + r) * 2]);
      float sum_l = 0.f;
#pragma unroll
      for (int w = 0; w < KW; ++w) {
        const float wt = gm == -INFINITY ? 0.f : exp2f(ml[(w * kRows + r) * 2] - gm);
        wts[w * kRows + r] = wt;
        sum_l += ml[(w * kRows + r) * 2 + 1] * wt;
      }
      inv_l[r] = sum_l > 0.f ? 1.f / sum_l : 0.f;
      if (splits > 1 && r < nrows) {
        const int64_t row = (static_cast<int64_t>(split) * a.T + it.Token(r, G)) * a.H + kvh * G + r % G;
        a.partial_ml[row * 2] = gm * kLn2;
        a.partial_ml[row * 2 + 1] = sum_l;
      }
    }
    __syncthreads();
    // Four dims a thread.
    for (int idx = tid; idx < kRows * DH / 4; idx += kThreads) {
      const int r = idx / (DH / 4), d = (idx % (DH / 4)) * 4;
      if (r >= nrows) continue;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int w = 0; w < KW; ++w) {
        const float wt = wts[w * kRows + r];
        const float4 v = *reinterpret_cast<const float4*>(mo + (w * kRows + r) * DH + d);
        acc.x = fmaf(v.x, wt, acc.x);
        acc.y = fmaf(v.y, wt, acc.y);
        acc.z = fmaf(v.z, wt, acc.z);
        acc.w = fmaf(v.w, wt, acc.w);
      }
      const int64_t t = it.Token(r, G);
      const int h = kvh * G + r % G;
      if (splits == 1) {
        const float il = inv_l[r];
        uint32_t* dst = reinterpret_cast<uint32_t*>(out + (t * a.H + h) * DH + d);
        dst[0] = PackPair<T>(acc.x * il, acc.y * il);
        dst[1] = PackPair<T>(acc.z * il, acc.w * il);
      } else {
        const int64_t row = (static_cast<int64_t>(split) * a.T + t) * a.H + h;
        *reinterpret_cast<float4*>(a.partial_out + row * DH + d) = acc;
      }
    }
  }
  // Decode items (16 rows; a constexpr branch: CombineSplits holds a row tile in registers)
  // merge their splits in the last block to finish: see AttentionMmaMergesSplits().
  if constexpr (RW == 1) {
    if (splits > 1 && a.split_counters != nullptr) {
      // No separate combine kernel (at batch 1 that would be 40 launches a token).
      __shared__ int is_last;
      __threadfence();  // this block's partials are visible device-wide before it is counted
      __syncthreads();
      if (tid == 0) {
        int* counter = a.split_counters + item * a.Hkv + kvh;
        is_last = atomicAdd(counter, 1) == splits - 1;
        if (is_last) *counter = 0;  // every other split has counted: ready for the next launch
      }
      __syncthreads();
      if (!is_last) return;
      __threadfence();
      CombineSplits<T, DH, kRows, kThreads>(a, it, G, kvh, splits, reinterpret_cast<float*>(smem));
    }
  }
#endif  // GLM_ATTN_MMA_ARCH
}

template <typename T, int DH, int NW, int RW, int STAGES, bool WP = false>
cudaError_t LaunchTyped(const AttentionArgs& a, int G, cudaStream_t stream) {
  constexpr size_t smem = MmaSmem<DH, NW, RW, STAGES>::kBytes;
  auto* kernel = AttentionMmaKernel<T, DH, NW, RW, STAGES, WP>;
  static const cudaError_t attr_err = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (attr_err != cudaSuccess) return attr_err;
  return LaunchKernel(kernel, dim3(a.num_items, a.Hkv, a.splits), dim3(32 * NW), smem, stream, a, G);
}

// The block shape for decode items (<= 16 rows) launched as `blocks` blocks on `sm_count` SMs:
// a.decode_warps / a.stages when set, else the automatic choice.
struct DecodeShape {
  int warps = 4;
  int stages = 2;
  bool warp_pipes = false;
};

DecodeShape PickDecodeShape(const AttentionArgs& a, int64_t blocks, int sm_count) {
  // Batches of at most one block per SM (small): 4 warps, 64-key tiles, 4 stages: a block keeps
  // a short context in flight (8 warps / 128-key tiles measured no better at bs1). Larger ones:
  // 2 warps, 32-key tiles, 3 stages (52 KB of shared memory at Dh = 128, 4 blocks per SM: 256
  // sequences x 2 KV heads run in one wave with two tiles in flight a block; H200,
  // 256 x (512/256): decode step 13.21 -> 12.82 ms and 12.76 -> 12.59 ms against 4 warps /
  // 2 stages in two A/B runs, docs/PERFORMANCE-cuda-notes.md v8). GLM_CUDA_ATTN_LARGE_WARPS /
  // _STAGES are benchmark switches for A/B runs.
  // The large shape runs warp pipelines (AttentionMmaKernel's WP; H100, 256 x (512/256): decode
  // step 12.77 -> 12.45 ms, docs/PERFORMANCE-cuda-notes.md v19); GLM_CUDA_ATTN_WARP_PIPES=0
  // turns them off for A/B runs.
  static const int large_warps = PositiveEnvOr("GLM_CUDA_ATTN_LARGE_WARPS", 2);
  static const int large_stages = PositiveEnvOr("GLM_CUDA_ATTN_LARGE_STAGES", 3);
  static const bool warp_pipes = EnvSwitchOn("GLM_CUDA_ATTN_WARP_PIPES");
  // GLM_CUDA_ATTN_SMALL_WARP_PIPES=1: the 4-warp shape with warp pipelines too (an A/B switch:
  // H100 bs1 151.3 -> 151.2 tok/s, neutral in the decode graphs; v19).
  static const bool small_warp_pipes = PositiveEnvOr("GLM_CUDA_ATTN_SMALL_WARP_PIPES", 0) == 1;
  const bool few = blocks <= sm_count;
  DecodeShape s;
  s.warps = a.decode_warps != 0 ? a.decode_warps : (few ? 4 : large_warps);
  if (s.warps != 2) s.warps = 4;
  const int stages = a.stages != 0 ? a.stages : (few ? 4 : large_stages);
  if (s.warps == 2) {
    s.stages = stages == 3 || stages == 4 ? stages : 2;
    s.warp_pipes = a.decode_warps != 0 ? a.warp_pipes : !few && warp_pipes;
  } else {
    s.stages = stages == 4 ? 4 : 2;
    s.warp_pipes = a.decode_warps != 0 ? a.warp_pipes : small_warp_pipes;
  }
  return s;
}

template <typename T, int DH>
cudaError_t LaunchRows(const AttentionArgs& a, int G, cudaStream_t stream) {
  const int rows = a.tokens_per_item * G;
  if (rows <= 16) {
    const int64_t blocks = int64_t{a.num_items} * a.Hkv * a.splits;
    const DecodeShape shape = PickDecodeShape(a, blocks, DeviceSmCount());
    if (shape.warps == 2 && shape.warp_pipes) {
      if (shape.stages == 4) return LaunchTyped<T, DH, 2, 1, 4, true>(a, G, stream);
      if (shape.stages == 3) return LaunchTyped<T, DH, 2, 1, 3, true>(a, G, stream);
      return LaunchTyped<T, DH, 2, 1, 2, true>(a, G, stream);
    }
    if (shape.warps == 2) {
      if (shape.stages == 4) return LaunchTyped<T, DH, 2, 1, 4>(a, G, stream);
      if (shape.stages == 3) return LaunchTyped<T, DH, 2, 1, 3>(a, G, stream);
      return LaunchTyped<T, DH, 2, 1, 2>(a, G, stream);
    }
    if (shape.warp_pipes) {
      if (shape.stages == 4) return LaunchTyped<T, DH, 4, 1, 4, true>(a, G, stream);
      return LaunchTyped<T, DH, 4, 1, 2, true>(a, G, stream);
    }
    if (shape.stages == 4) return LaunchTyped<T, DH, 4, 1, 4>(a, G, stream);
    return LaunchTyped<T, DH, 4, 1, 2>(a, G, stream);
  }
  // Prefill items (4 warps, 64-key tiles): 2 stages (70 KB at Dh = 128: 3 blocks an SM), or 3
  // (104 KB: 2 blocks an SM, each with two tiles in flight ahead of the one it computes), for A/B
  // runs (GLM_CUDA_ATTN_PREFILL_STAGES=3) and the kernel tests (a.stages = 3).
  static const int prefill_stages = PositiveEnvOr("GLM_CUDA_ATTN_PREFILL_STAGES", 2);
  const bool three = (a.stages != 0 ? a.stages : prefill_stages) == 3;
  if (rows <= 32) return three ? LaunchTyped<T, DH, 4, 2, 3>(a, G, stream) : LaunchTyped<T, DH, 4, 2, 2>(a, G, stream);
  return three ? LaunchTyped<T, DH, 4, 4, 3>(a, G, stream) : LaunchTyped<T, DH, 4, 4, 2>(a, G, stream);
}

template <typename T>
cudaError_t LaunchDh(const AttentionArgs& a, int G, cudaStream_t stream) {
  switch (a.Dh) {
    case 32: return LaunchRows<T, 32>(a, G, stream);
    case 64: return LaunchRows<T, 64>(a, G, stream);
    case 128: return LaunchRows<T, 128>(a, G, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool AttentionMmaSupports(KernelTypes types, const AttentionArgs& a) {
  const int G = a.Hkv > 0 ? a.H / a.Hkv : 0;
  return types.act == types.weight && types.act != DType::kF32 && G > 0 &&
         a.tokens_per_item * G <= kMaxRows && (a.Dh == 32 || a.Dh == 64 || a.Dh == 128) &&
         DeviceComputeMajor() >= 8;
}

cudaError_t LaunchAttentionMma(KernelTypes types, const AttentionArgs& a, cudaStream_t stream) {
  if (!AttentionMmaSupports(types, a)) return cudaErrorInvalidValue;
  if (a.num_items == 0) return cudaSuccess;
  const int G = a.H / a.Hkv;
  return types.act == DType::kBF16 ? LaunchDh<Bf16>(a, G, stream) : LaunchDh<__half>(a, G, stream);
}

bool AttentionMmaMergesSplits(const AttentionArgs& a) {
  const int G = a.Hkv > 0 ? a.H / a.Hkv : 0;
  return a.splits > 1 && a.split_counters != nullptr && a.tokens_per_item * G <= 16;
}

}  // namespace cuda
}  // namespace glm
