// Own Hopper GEMM for decode-batch sizes: y[M, N] = x[M, K] . w[N, K]^T, bf16 in and out, fp32
// accumulation, 65 <= M <= 256 (sm90a: TMA + wgmma).
//
// Why: at M = 256 every decode GEMM of GLM-4-9B sits at the H100's ridge point (weights read once
// at the HBM rate take about as long as the tensor work), and cuBLAS's tiles of 128 x 256 leave
// most of the 132 SMs idle on the N = 4,096-4,608 GEMMs (qkv, o_proj: 32-36 tiles) or run 1.6
// waves on gate/up (214 tiles). Here one block covers all M rows (so each weight byte crosses
// from L2 once) and BN of the N columns, and a cluster of S blocks splits K, reducing its fp32
// partials through distributed shared memory: BN (104 / 128 / 144) and S are chosen per shape so
// the grid fills the SMs in whole waves (qkv 32 x 4, o_proj and down 32 x 4, gate/up 264 x 1).
//
// (168 registers a thread: nine warps, three of them on one SM sub-partition of 16,384.)
// A block is 288 threads: warps 0-7 are two consumer warpgroups (64 * MW rows each, MW = 1 for
// M <= 128, 2 above), warp 8 the producer. The producer's one thread streams 64-wide K slices of
// x and w through a ring of shared-memory stages with TMA (128-byte swizzle, rows past M and K
// zero-filled); the weights of the first stages are requested before the PDL wait (they never
// come from an earlier kernel). Consumers run wgmma (both operands from shared memory, K-major)
// one K slice behind the copies, keep one wgmma group in flight and free a stage when its group
// has completed. After the K loop each block writes its partial tile to shared memory, the
// cluster synchronizes, and block r of the cluster sums rows [r R / S, (r + 1) R / S) (R = M) of
// all S partials in a fixed order (deterministic) and stores them as bf16 (or, for the MLP's
// gate/up, whose blocks hold BN / 2 gate and the matching BN / 2 up columns, silu(g) * u).
// With multicast, lanes 0..G-1 of each consumer warp free a stage in the G blocks that fill it
// with plain (CTA-scope release) remote arrives: a cluster-scope release on each made every
// stage ~1 us longer per block of the group.
//
// Measured on an H100 (docs/PERFORMANCE-cuda-notes.md, v17-v18): correct, but not faster than
// cuBLASLt at M = 256 (both stream the weights at ~2.3 TB/s); the backend uses it per shape only
// where it times faster (GLM_CUDA_WGMMA=1).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "worker/backend/cuda/cp_async.cuh"
#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLM_WGMMA_ARCH 1
#endif

constexpr int kBK = 64;               // K elements a stage (128 bytes: one swizzle row)
constexpr int kConsumerThreads = 256;  // two warpgroups
constexpr int kThreads = kConsumerThreads + 32;
constexpr size_t kSmemBudget = 220 * 1024;  // of the 227 KB a block may have

template <int MW, int BN>
struct WgCfg {
  static constexpr int kBM = 128 * MW;
  static constexpr int kABytes = kBM * kBK * 2;
  static constexpr int kBBytes = BN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;  // multiple of 1024 (swizzle atoms)
  static constexpr int kStages = std::min<int>(8, (kSmemBudget - 1024) / kStageBytes);
  static constexpr int kRedStride = BN + 8;  // floats; padded against bank conflicts
  static constexpr size_t kRedBytes = size_t{kBM} * kRedStride * 4;
  static constexpr size_t kDataBytes =
      kRedBytes > size_t{kStages} * kStageBytes ? kRedBytes : size_t{kStages} * kStageBytes;
  // 1,024 bytes of slack to align the ring, then the full / empty barriers.
  static constexpr size_t kSmemBytes = 1024 + kDataBytes + 2 * kStages * 8;
  static_assert(kStageBytes % 1024 == 0 && kABytes % 1024 == 0, "stages must stay 1024-aligned");
  static_assert(kStages >= 3, "too few stages");
};

#if defined(GLM_WGMMA_ARCH)
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ bool MbarTryWait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  while (!MbarTryWait(bar, parity)) {
  }
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// A [box rows, 64] tile at (row, k) of a 2-D tensor map into shared memory, completing on bar.
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const CUtensorMap* map, int k, int row,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(bar)
      : "memory");
}
// The same tile into the shared memory (same offset, same barrier offset) of every block of the
// cluster in cta_mask.
__device__ __forceinline__ void TmaLoad2dMulticast(uint32_t dst, const CUtensorMap* map, int k, int row,
                                                   uint32_t bar, uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(bar), "h"(cta_mask)
      : "memory");
}
// Arrive on the barrier at the same offset in block `rank` of the cluster (release at CTA scope,
// the default: what it orders is this block's wgmma reads, already complete).
__device__ __forceinline__ void MbarArriveCluster(uint32_t bar, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}
__device__ __forceinline__ void ClusterSync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::
                   : "memory");
}
__device__ __forceinline__ float4 LoadSharedCluster(uint32_t addr, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(remote)
               : "memory");
  return v;
}

// Shared-memory matrix descriptor of a K-major tile with 128-byte swizzle: rows of 128 bytes,
// 8-row groups 1,024 bytes apart; a K step of 16 elements adds 32 bytes to the start address.
__device__ __forceinline__ uint64_t SmemDesc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// wgmma.mma_async m64nNk16, D (fp32) += A (smem) . B (smem)^T, both bf16 and K-major. The
// accumulator operand lists come from macros: N / 2 registers "%0" .. "%(N/2 - 1)" bound to d[0..],
// then the two descriptors and the scale-d predicate (always 1: accumulate).
#define GLM_WG_R4(a, b, c, e) "%" #a ", %" #b ", %" #c ", %" #e
#define GLM_WG_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define GLM_WG_REGS52                                                                            \
  GLM_WG_R4(0, 1, 2, 3) ", " GLM_WG_R4(4, 5, 6, 7) ", " GLM_WG_R4(8, 9, 10, 11) ", "            \
  GLM_WG_R4(12, 13, 14, 15) ", " GLM_WG_R4(16, 17, 18, 19) ", " GLM_WG_R4(20, 21, 22, 23) ", "  \
  GLM_WG_R4(24, 25, 26, 27) ", " GLM_WG_R4(28, 29, 30, 31) ", " GLM_WG_R4(32, 33, 34, 35) ", "  \
  GLM_WG_R4(36, 37, 38, 39) ", " GLM_WG_R4(40, 41, 42, 43) ", " GLM_WG_R4(44, 45, 46, 47) ", "  \
  GLM_WG_R4(48, 49, 50, 51)
#define GLM_WG_REGS64 \
  GLM_WG_REGS52 ", " GLM_WG_R4(52, 53, 54, 55) ", " GLM_WG_R4(56, 57, 58, 59) ", " GLM_WG_R4(60, 61, 62, 63)
#define GLM_WG_REGS72 GLM_WG_REGS64 ", " GLM_WG_R4(64, 65, 66, 67) ", " GLM_WG_R4(68, 69, 70, 71)
#define GLM_WG_OUT52                                                                              \
  GLM_WG_D4(0), GLM_WG_D4(4), GLM_WG_D4(8), GLM_WG_D4(12), GLM_WG_D4(16), GLM_WG_D4(20),          \
      GLM_WG_D4(24), GLM_WG_D4(28), GLM_WG_D4(32), GLM_WG_D4(36), GLM_WG_D4(40), GLM_WG_D4(44),   \
      GLM_WG_D4(48)
#define GLM_WG_OUT64 GLM_WG_OUT52, GLM_WG_D4(52), GLM_WG_D4(56), GLM_WG_D4(60)
#define GLM_WG_OUT72 GLM_WG_OUT64, GLM_WG_D4(64), GLM_WG_D4(68)
// N: the instruction's n; R: N / 2; DA, DB, P: the operand numbers R, R + 1, R + 2.
#define GLM_WG_MMA(N, R, DA, DB, P)                                                            \
  __device__ __forceinline__ void WgmmaM64N##N(float (&d)[R], uint64_t desc_a, uint64_t desc_b) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                               \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" GLM_WG_REGS##R  \
                 "}, %" #DA ", %" #DB ", p, 1, 1, 0, 0;\n}\n"                                  \
                 : GLM_WG_OUT##R                                                               \
                 : "l"(desc_a), "l"(desc_b), "r"(1));                                          \
  }
GLM_WG_MMA(104, 52, 52, 53, 54)
GLM_WG_MMA(128, 64, 64, 65, 66)
GLM_WG_MMA(144, 72, 72, 73, 74)
#undef GLM_WG_MMA
#undef GLM_WG_OUT72
#undef GLM_WG_OUT64
#undef GLM_WG_OUT52
#undef GLM_WG_REGS72
#undef GLM_WG_REGS64
#undef GLM_WG_REGS52
#undef GLM_WG_D4
#undef GLM_WG_R4

template <int BN>
__device__ __forceinline__ void Wgmma(float (&d)[BN / 2], uint64_t da, uint64_t db) {
  if constexpr (BN == 104) {
    WgmmaM64N104(d, da, db);
  } else if constexpr (BN == 128) {
    WgmmaM64N128(d, da, db);
  } else {
    static_assert(BN == 144, "BN is 104, 128 or 144");
    WgmmaM64N144(d, da, db);
  }
}
#endif  // GLM_WGMMA_ARCH

template <int MW, int BN>
__global__ void __maxnreg__(168)
    WgmmaGemmKernel(const __grid_constant__ CUtensorMap map_x, const __grid_constant__ CUtensorMap map_w,
                    Bf16* __restrict__ y, int M, int N, int k_blocks, int glu_f) {
#if defined(GLM_WGMMA_ARCH)
  using C = WgCfg<MW, BN>;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = SmemAddr(smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;
  uint8_t* data = smem_raw + (base - raw);
  const uint32_t full = base + static_cast<uint32_t>(C::kDataBytes);
  const uint32_t empty = full + C::kStages * 8;
  // Cluster (S, G, 1): rank = split + S * g. The S blocks of one N tile split K; the G blocks of
  // one split (G consecutive N tiles) share x: each loads 1 / G of its rows into all G.
  const int S = gridDim.x, split = blockIdx.x;
  uint32_t G;
  asm("mov.u32 %0, %%cluster_nctaid.y;\n" : "=r"(G));
  const int g = blockIdx.y % G;
  const int kb0 = split * k_blocks / S, nk = (split + 1) * k_blocks / S - kb0;
  // glu_f > 0: w is [gate; up] ([2 glu_f, K]); a block's columns are BN / 2 gate rows and the
  // same BN / 2 up rows, and it writes silu(g) * u, y [M, glu_f] (N is unused).
  const int n0 = blockIdx.y * (glu_f > 0 ? BN / 2 : BN);
  const int warp = threadIdx.x / 32;
  const bool clustered = S * G > 1;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      MbarInit(full + 8 * s, 1);
      MbarInit(empty + 8 * s, 8 * G);  // every consumer warp of the G blocks
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if (clustered) {
    ClusterSync();  // the barriers of every block exist before any copy lands in it
  } else {
    __syncthreads();
  }

  float acc[MW][BN / 2];
  if (warp == 8) {
    if (threadIdx.x == kConsumerThreads) {
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_w)) : "memory");
      asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map_x)) : "memory");
      auto load_w = [&](uint32_t stage, int i, uint32_t bar) {
        if (glu_f > 0) {
          TmaLoad2d(stage + C::kABytes, &map_w, (kb0 + i) * kBK, n0, bar);
          TmaLoad2d(stage + C::kABytes + BN / 2 * 128, &map_w, (kb0 + i) * kBK, glu_f + n0, bar);
        } else {
          TmaLoad2d(stage + C::kABytes, &map_w, (kb0 + i) * kBK, n0, bar);
        }
      };
      const int first = nk < C::kStages ? nk : C::kStages;
      for (int i = 0; i < first; ++i) {  // weights: never written by an earlier kernel
        MbarExpectTx(full + 8 * i, C::kStageBytes);
        load_w(base + i * C::kStageBytes, i, full + 8 * i);
      }
      GridDependencyWait();
      const int slice_rows = C::kBM / G;
      uint16_t mask = 0;
      for (uint32_t j = 0; j < G; ++j) mask |= static_cast<uint16_t>(1u << (split + S * j));
      for (int i = 0; i < nk; ++i) {
        const int s = i % C::kStages;
        const uint32_t stage = base + s * C::kStageBytes;
        if (i >= C::kStages) {
          MbarWait(empty + 8 * s, ((i / C::kStages) - 1) & 1);
          MbarExpectTx(full + 8 * s, C::kStageBytes);
          load_w(stage, i, full + 8 * s);
        }
        if (G == 1) {
          TmaLoad2d(stage, &map_x, (kb0 + i) * kBK, 0, full + 8 * s);
        } else {
          TmaLoad2dMulticast(stage + g * slice_rows * 128, &map_x, (kb0 + i) * kBK, g * slice_rows,
                             full + 8 * s, mask);
        }
      }
    } else {
      GridDependencyWait();
    }
  } else {
    GridDependencyWait();
    const int wg = warp / 4;  // rows [wg * 64 * MW, (wg + 1) * 64 * MW)
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < MW; ++m) {
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) acc[m][j] = 0.f;
    }
    for (int i = 0; i < nk; ++i) {
      const int s = i % C::kStages;
      const uint32_t stage = base + s * C::kStageBytes;
      MbarWait(full + 8 * s, (i / C::kStages) & 1);
      WgmmaFence();
#pragma unroll
      for (int k = 0; k < kBK / 16; ++k) {
        const uint64_t db = SmemDesc(stage + C::kABytes + 32 * k);
#pragma unroll
        for (int m = 0; m < MW; ++m) {
          Wgmma<BN>(acc[m], SmemDesc(stage + (wg * MW + m) * 64 * 128 + 32 * k), db);
        }
      }
      WgmmaCommit();
      WgmmaWait<1>();  // the previous slice's group is done: its stage may be refilled
      // Lane j of every consumer warp frees the stage in block j of the multicast group.
      if (i > 0 && lane < static_cast<int>(G)) {
        const uint32_t bar = empty + 8 * ((i - 1) % C::kStages);
        if (G == 1) {
          MbarArrive(bar);
        } else {
          MbarArriveCluster(bar, split + S * lane);
        }
      }
    }
    WgmmaWait<0>();
  }
  LaunchDependents();
  __syncthreads();  // every wgmma has read its stages: the ring becomes the partial tile

  float* red = reinterpret_cast<float*>(data);
  if (warp < 8) {
    const int wg = warp / 4, lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < MW; ++m) {
      const int row = (wg * MW + m) * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = 8 * j + 2 * (lane % 4);
        *reinterpret_cast<float2*>(red + row * C::kRedStride + col) =
            make_float2(acc[m][4 * j], acc[m][4 * j + 1]);
        *reinterpret_cast<float2*>(red + (row + 8) * C::kRedStride + col) =
            make_float2(acc[m][4 * j + 2], acc[m][4 * j + 3]);
      }
    }
  }
  if (clustered) {
    ClusterSync();
  } else {
    __syncthreads();
  }
  const int r0 = split * M / S, r1 = (split + 1) * M / S;
  // The sum of the S partials at (row, c .. c + 3), in split order (deterministic).
  auto sum4 = [&](int row, int c) {
    const uint32_t addr = SmemAddr(red + row * C::kRedStride + c);
    float4 sum = LoadSharedCluster(addr, S * g);
    for (int r = 1; r < S; ++r) {
      const float4 v = LoadSharedCluster(addr, r + S * g);
      sum.x += v.x;
      sum.y += v.y;
      sum.z += v.z;
      sum.w += v.w;
    }
    return sum;
  };
  auto store4 = [](Bf16* dst, float a, float b, float c, float d) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(c, d);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(dst) = packed;
  };
  if (glu_f > 0) {
    constexpr int kVec = BN / 8;
    for (int idx = threadIdx.x; idx < (r1 - r0) * kVec; idx += kThreads) {
      const int row = r0 + idx / kVec, c = 4 * (idx % kVec);
      if (n0 + c >= glu_f) continue;
      const float4 gs = sum4(row, c), us = sum4(row, BN / 2 + c);
      // g and u rounded as the unfused path's bf16 gate_up buffer holds them.
      auto act = [](float gv, float uv) { return SiluMul<Bf16>(RoundTo<Bf16>(gv), RoundTo<Bf16>(uv)); };
      store4(y + static_cast<int64_t>(row) * glu_f + n0 + c, act(gs.x, us.x), act(gs.y, us.y),
             act(gs.z, us.z), act(gs.w, us.w));
    }
  } else {
    constexpr int kVec = BN / 4;
    for (int idx = threadIdx.x; idx < (r1 - r0) * kVec; idx += kThreads) {
      const int row = r0 + idx / kVec, c = 4 * (idx % kVec);
      if (n0 + c >= N) continue;
      const float4 v = sum4(row, c);
      store4(y + static_cast<int64_t>(row) * N + n0 + c, v.x, v.y, v.z, v.w);
    }
  }
  if (clustered) ClusterSync();  // no block leaves while another still reads its shared memory
#endif  // GLM_WGMMA_ARCH
}

// 1 when this binary's code for the current device has the sm90a kernels (probe kernel of the
// same translation unit, so the same fatbinary image is picked).
__global__ void WgmmaProbeKernel(int* out) {
#if defined(GLM_WGMMA_ARCH)
  *out = 1;
#else
  *out = 0;
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 EncodeFn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// Tensor maps are pure descriptors of (address, shape, box): cached, so eager steps do not encode
// the same weight's map again (graph replays carry theirs in the kernel parameters).
bool TensorMap(const void* ptr, int rows, int K, int box_rows, CUtensorMap* out) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, int>, CUtensorMap> cache;
  const auto key = std::make_tuple(ptr, rows, K, box_rows);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) {
    *out = it->second;
    return true;
  }
  PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeFn();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(K) * 2};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  CUtensorMap map;
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(ptr), dims, strides, box,
             elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return false;
  }
  if (cache.size() >= 4096) cache.clear();
  cache.emplace(key, map);
  *out = map;
  return true;
}

using KernelFn = void (*)(CUtensorMap, CUtensorMap, Bf16*, int, int, int, int);

template <int MW, int BN>
KernelFn Kernel() {
  return &WgmmaGemmKernel<MW, BN>;
}
template <int MW, int BN>
size_t SmemBytes() {
  return WgCfg<MW, BN>::kSmemBytes;
}

// MW = 2 with BN = 144 does not fit: 144 accumulators a thread need more than the 168 registers
// nine warps may have (an SM sub-partition holds 3 of them in 16,384 registers).
struct Variant {
  int bn;
  KernelFn mw1, mw2;
  size_t smem1, smem2;
};
const Variant kVariants[] = {
    {144, Kernel<1, 144>(), nullptr, SmemBytes<1, 144>(), 0},
    {128, Kernel<1, 128>(), Kernel<2, 128>(), SmemBytes<1, 128>(), SmemBytes<2, 128>()},
    {104, Kernel<1, 104>(), Kernel<2, 104>(), SmemBytes<1, 104>(), SmemBytes<2, 104>()},
};
constexpr int kMaxClusterBlocks = 8;  // portable cluster size

const Variant* FindVariant(int bn) {
  for (const Variant& v : kVariants) {
    if (v.bn == bn) return &v;
  }
  return nullptr;
}

// Clusters of splits x multicast blocks of the kernel that can be resident at once (0 if none /
// error); also raises the kernel's dynamic shared-memory limit. Cached.
int MaxClusters(KernelFn fn, size_t smem, int splits, int multicast) {
  static std::mutex mu;
  static std::map<std::tuple<KernelFn, int, int>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(fn, splits, multicast);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int clusters = 0;
  if (fn != nullptr && cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)) == cudaSuccess) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(splits, multicast, 1);
    config.blockDim = dim3(kThreads, 1, 1);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = splits;
    attr[0].val.clusterDim.y = multicast;
    attr[0].val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&clusters, fn, &config) != cudaSuccess) clusters = 0;
  }
  (void)cudaGetLastError();
  cache.emplace(key, clusters);
  return clusters;
}

// DRAM bytes a second (the bus's peak), 0 when unknown.
double DramBytesPerSecond() {
  static const double rate = [] {
    int dev = 0, khz = 0, bits = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0.0;
    }
    return 2.0 * khz * 1e3 * bits / 8;
  }();
  return rate;
}

// The shapes kernels.h promises (TMA needs 16-byte row strides; the epilogue stores 4 columns).
bool ShapeSupported(int M, int N, int K) {
  return M >= kWgmmaMinM && M <= kWgmmaMaxM && N > 0 && N % 8 == 0 && K >= 2 * kBK && K % 8 == 0;
}

}  // namespace

bool WgmmaGemmAvailable() {
  static const bool available = [] {
    if (DeviceComputeMajor() != 9 || EncodeFn() == nullptr) return false;
    int* flag = nullptr;
    if (cudaMalloc(&flag, sizeof(int)) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    int host = 0;
    WgmmaProbeKernel<<<1, 1>>>(flag);
    const bool ok = cudaGetLastError() == cudaSuccess &&
                    cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(flag);
    (void)cudaGetLastError();
    return ok && host == 1;
  }();
  return available;
}

bool WgmmaGemmSupports(KernelTypes types, int M, int N, int K) {
  return types.act == DType::kBF16 && types.weight == DType::kBF16 && ShapeSupported(M, N, K) &&
         WgmmaGemmAvailable();
}

// Every plan that can run, in order of modelled time: the largest of the tensor work of the
// busiest SM, the L2 -> SM traffic (x re-read once per multicast group and split, w once) and the
// DRAM stream, plus the epilogue. Rates are an H100's (tensor 3.6e12 MAC/s an SM; L2 -> SM
// 6.5 TB/s; DRAM 85% of the bus peak). A ranking only: on an H100 the kernel streams the weights
// at ~2.3 TB/s whatever the plan (notes v18), which is why the backend times the first few.
std::vector<WgmmaPlan> WgmmaCandidatePlans(int M, int N, int K) {
  std::vector<std::pair<double, WgmmaPlan>> plans;
  const int mw = M > 128 ? 2 : 1;
  const double bm = 128.0 * mw;
  const int k_blocks = (K + kBK - 1) / kBK;
  const double dram = 0.85 * (DramBytesPerSecond() > 0 ? DramBytesPerSecond() : 3.35e12);
  for (const Variant& v : kVariants) {
    const int tiles = (N + v.bn - 1) / v.bn;
    for (int g : {1, 2, 4}) {
      if (g > tiles) break;
      for (int s = 1; s * g <= kMaxClusterBlocks && k_blocks / s >= 2; ++s) {
        const int clusters = MaxClusters(mw == 1 ? v.mw1 : v.mw2, mw == 1 ? v.smem1 : v.smem2, s, g);
        if (clusters <= 0) continue;
        const int groups = (tiles + g - 1) / g;
        const double waves = (groups + clusters - 1) / clusters;
        const double kbs = (k_blocks + s - 1) / s;
        const double tensor_us = waves * bm * v.bn * kbs * kBK / 3.6e12 * 1e6;
        const double l2_us = double(groups) * g * s * kbs * (bm * 128 / g + v.bn * 128.0) / 6.5e12 * 1e6;
        const double dram_us = (double(N) * K + double(M) * K) * 2 / dram * 1e6;
        const double epilogue_us = 0.5 + (s > 1 ? bm * v.bn * 4 / 150e9 * 1e6 : 0.0);
        plans.push_back({std::max({tensor_us, l2_us, dram_us}) + epilogue_us, WgmmaPlan{v.bn, s, g}});
      }
    }
  }
  std::stable_sort(plans.begin(), plans.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<WgmmaPlan> out;
  for (const auto& p : plans) out.push_back(p.second);
  return out;
}

WgmmaPlan PlanWgmmaGemm(int M, int N, int K) {
  const std::vector<WgmmaPlan> plans = WgmmaCandidatePlans(M, N, K);
  return plans.empty() ? WgmmaPlan{} : plans.front();
}

namespace {

// glu_f > 0: the SiLU-and-multiply variant (w [2 glu_f, K], y [M, glu_f]; N = 2 glu_f).
cudaError_t Launch(const void* x, const void* w, void* y, int M, int N, int K, WgmmaPlan plan, int glu_f,
                   cudaStream_t stream) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const Variant* v = FindVariant(plan.bn);
  const int g = plan.multicast;
  if (!ShapeSupported(M, N, K) || plan.splits < 1 || (g != 1 && g != 2 && g != 4) ||
      plan.splits * g > kMaxClusterBlocks || !aligned(x) || !aligned(w) || !aligned(y) || v == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int mw = M > 128 ? 2 : 1;
  const KernelFn fn = mw == 1 ? v->mw1 : v->mw2;
  const size_t smem = mw == 1 ? v->smem1 : v->smem2;
  if (fn == nullptr) return cudaErrorInvalidValue;
  if (MaxClusters(fn, smem, plan.splits, g) <= 0) return cudaErrorInvalidConfiguration;
  CUtensorMap map_x, map_w;
  if (!TensorMap(x, M, K, 128 * mw / g, &map_x) ||
      !TensorMap(w, N, K, glu_f > 0 ? plan.bn / 2 : plan.bn, &map_w)) {
    return cudaErrorInvalidValue;
  }
  const int tiles = glu_f > 0 ? (glu_f + plan.bn / 2 - 1) / (plan.bn / 2) : (N + plan.bn - 1) / plan.bn;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(plan.splits, (tiles + g - 1) / g * g, 1);  // blocks past N load x for the group
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = plan.splits;
  attr[0].val.clusterDim.y = g;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = ProgrammaticLaunchEnabled() ? 2 : 1;
  const int k_blocks = (K + kBK - 1) / kBK;
  return cudaLaunchKernelEx(&config, fn, map_x, map_w, static_cast<Bf16*>(y), M, N, k_blocks, glu_f);
}

}  // namespace

cudaError_t LaunchWgmmaGemm(const void* x, const void* w, void* y, int M, int N, int K, WgmmaPlan plan,
                            cudaStream_t stream) {
  return Launch(x, w, y, M, N, K, plan, 0, stream);
}

cudaError_t LaunchWgmmaGemmSiluMul(const void* x, const void* w_gate_up, void* y, int M, int F, int K,
                                   WgmmaPlan plan, cudaStream_t stream) {
  if (F <= 0 || F % 4 != 0) return cudaErrorInvalidValue;
  return Launch(x, w_gate_up, y, M, 2 * F, K, plan, F, stream);
}

}  // namespace cuda
}  // namespace glm
