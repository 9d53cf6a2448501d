// glm-kv-read-bench: how fast the paged K/V cache can be read in the pattern of the 256-wide
// decode attention, without the attention's math: an experiment that separates the cache's
// layout and the blocks' copy pipeline from the kernel's compute (docs/PERFORMANCE-cuda-notes.md,
// v19).
//
// Each block walks one sequence's keys for HPB KV heads the way AttentionMmaKernel does (16-byte
// cp.async copies of TILE-key K and V tiles through a ring of STAGES shared-memory stages, rows
// padded like the kernel's), touches what arrived, and moves on. Two cache layouts:
//   slot-major (the engine's): element (slot, kvh, d) at (slot * Hkv + kvh) * Dh + d, so one
//     KV head's key is 256 bytes out of each 512-byte slot row (GLM-4-9B: Hkv = 2, Dh = 128);
//   head-major pages: ((page * Hkv + kvh) * block_size + slot % block_size) * Dh + d, so one KV
//     head's keys of a page are block_size * 256 contiguous bytes.
// Page tables as the engine's allocator hands them out for 256 x 512-token prompts decoding
// (each prompt's pages contiguous, the decode pages interleaved), or shuffled.
// Prints GB/s of K/V read (what the attention must read) for each variant, and a plain streaming
// read of the same bytes as the ceiling.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "worker/backend/cuda/cp_async.cuh"

namespace {

#define CHECK(x)                                                                       \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

constexpr int kDh = 128;
constexpr int kBs = 16;  // the engine's block size

struct Shape {
  int seqs = 256;
  int ctx = 640;  // keys a sequence sees (512 prompt + half of 256 generated)
  int hkv = 2;
  int pages_per_seq() const { return (ctx + kBs - 1) / kBs; }
};

// cp.async (sm80+); a build for older GPUs compiles the kernel as a trap (main checks the device).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GLM_KV_BENCH_ARCH 1
using glm::cuda::CpAsync16;
using glm::cuda::CpAsyncCommit;
using glm::cuda::CpAsyncWait;
#endif

template <int N>
__device__ __forceinline__ void WaitAtMost(int n) {
#if defined(GLM_KV_BENCH_ARCH)
  if constexpr (N >= 0) {
    if (n >= N) {
      CpAsyncWait<N>();
      return;
    }
    WaitAtMost<N - 1>(n);
  }
#endif
}

// Block (seq, head group): HPB heads, TILE keys a tile, STAGES stages, NT threads.
template <int NT, int TILE, int STAGES, int HPB, bool kHeadMajor>
__global__ void __launch_bounds__(NT) PagedRead(const uint16_t* __restrict__ kc,
                                                const uint16_t* __restrict__ vc,
                                                const int32_t* __restrict__ tables, int pages_per_seq,
                                                int ctx, int hkv, unsigned* sink) {
#if !defined(GLM_KV_BENCH_ARCH)
  __trap();
#else
  constexpr int kStride = HPB * kDh + 8;  // 16-bit elements, padded like the attention's tiles
  constexpr int kVecs = HPB * kDh / 8;    // 16-byte vectors a key row
  static_assert(NT % kVecs == 0 && (TILE * kVecs) % NT == 0, "copy map");
  constexpr int kRowStep = NT / kVecs;
  constexpr int kCopyRows = TILE / kRowStep;
  extern __shared__ __align__(128) uint16_t tiles[];  // [STAGES][K | V][TILE][kStride]
  const int seq = blockIdx.x, h0 = blockIdx.y * HPB;
  const int tid = threadIdx.x;
  const int t0 = tid / kVecs, c0 = (tid % kVecs) * 8;
  const int head = h0 + c0 / kDh, d0 = c0 % kDh;
  const int32_t* table = tables + static_cast<int64_t>(seq) * pages_per_seq;
  const int num_tiles = (ctx + TILE - 1) / TILE;
  auto load = [&](int tile, int stage) {
    uint16_t* kd = tiles + stage * 2 * TILE * kStride + t0 * kStride + c0;
    uint16_t* vd = kd + TILE * kStride;
#pragma unroll
    for (int i = 0; i < kCopyRows; ++i) {
      const int j = tile * TILE + t0 + i * kRowStep;
      const bool valid = j < ctx;
      int64_t off = 0;
      if (valid) {
        const int64_t page = table[j / kBs];
        off = kHeadMajor ? ((page * hkv + head) * kBs + j % kBs) * kDh + d0
                         : ((page * kBs + j % kBs) * hkv + head) * kDh + d0;
      }
      CpAsync16(kd + i * kRowStep * kStride, kc + off, valid);
      CpAsync16(vd + i * kRowStep * kStride, vc + off, valid);
    }
    CpAsyncCommit();
  };
  int issued = 0;
  while (issued < num_tiles && issued < STAGES) {
    load(issued, issued % STAGES);
    ++issued;
  }
  unsigned acc = 0;
  for (int tile = 0; tile < num_tiles; ++tile) {
    while (issued < num_tiles && issued <= tile + STAGES - 1) {
      load(issued, issued % STAGES);
      ++issued;
    }
    WaitAtMost<STAGES>(issued - tile - 1);
    __syncthreads();
    // Touch one word of every 16-byte vector of the stage (what the consumer's ldmatrix would read).
    const unsigned* st = reinterpret_cast<const unsigned*>(tiles + (tile % STAGES) * 2 * TILE * kStride);
    for (int w = tid; w < 2 * TILE * kVecs; w += NT) acc ^= st[(w / kVecs) * (kStride / 2) + (w % kVecs) * 4];
    __syncthreads();
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the reads; practically never taken
#endif
}

// The ceiling: the same bytes read front to back with 16-byte loads.
__global__ void StreamRead(const int4* __restrict__ p, int64_t n, unsigned* sink) {
  unsigned acc = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int4 v = __ldcs(p + i);
    acc ^= static_cast<unsigned>(v.x ^ v.w);
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

// Page tables: prompt pages (512 tokens: 32 pages) contiguous per sequence in allocation order,
// the decode pages after them handed out round-robin (one a sequence every 16 steps), as the
// engine's ascending free list gives them; or every page shuffled.
std::vector<int32_t> Tables(const Shape& s, bool shuffled, int64_t* num_pages) {
  const int pps = s.pages_per_seq();
  const int prompt_pages = std::min(pps, 32);
  std::vector<int32_t> t(static_cast<size_t>(s.seqs) * pps);
  int32_t next = 0;
  for (int q = 0; q < s.seqs; ++q)
    for (int p = 0; p < prompt_pages; ++p) t[q * pps + p] = next++;
  for (int p = prompt_pages; p < pps; ++p)
    for (int q = 0; q < s.seqs; ++q) t[q * pps + p] = next++;
  if (shuffled) {
    std::vector<int32_t> perm(next);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937 rng(7);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (auto& v : t) v = perm[v];
  }
  *num_pages = next;
  return t;
}

struct Buffers {
  uint16_t* k = nullptr;
  uint16_t* v = nullptr;
  int64_t layer_elems = 0;  // one "layer" of the cache
  int layers = 0;
};

// Microseconds one launch_layer(l) takes: reps launches rotating over the buffers' layers (each
// reads bytes not in L2), after one untimed launch a layer.
template <typename F>
double LayerRotatedUs(const Buffers& b, int reps, F launch_layer) {
  for (int l = 0; l < b.layers; ++l) launch_layer(l);
  CHECK(cudaGetLastError());
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventRecord(e0));
  for (int r = 0; r < reps; ++r) launch_layer(r % b.layers);
  CHECK(cudaEventRecord(e1));
  CHECK(cudaEventSynchronize(e1));
  float ms = 0.f;
  CHECK(cudaEventElapsedTime(&ms, e0, e1));
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  return ms * 1e3 / reps;
}

template <int NT, int TILE, int STAGES, int HPB, bool kHeadMajor>
void TimePaged(const Shape& s, const Buffers& b, const int32_t* d_tables, unsigned* sink, int reps) {
  constexpr int kStride = HPB * kDh + 8;
  const size_t smem = size_t{STAGES} * 2 * TILE * kStride * 2;
  auto* kernel = PagedRead<NT, TILE, STAGES, HPB, kHeadMajor>;
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(s.seqs, s.hkv / HPB);
  const double us = LayerRotatedUs(b, reps, [&](int l) {
    kernel<<<grid, NT, smem>>>(b.k + l * b.layer_elems, b.v + l * b.layer_elems, d_tables, s.pages_per_seq(), s.ctx,
                               s.hkv, sink);
  });
  int blocks_per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, NT, smem));
  const double bytes = double(s.seqs) * s.hkv * s.ctx * kDh * 2 * 2;
  // Bytes an SM keeps in flight: STAGES - 1 tiles of K and V a resident block.
  const double in_flight_kb = double(blocks_per_sm) * (STAGES - 1) * 2 * TILE * HPB * kDh * 2 / 1024;
  std::printf("  %-10s HPB %d, %3d thr, %2d-key tiles, %d stages: %3zu KB smem, %d blocks/SM, %3.0f KB in flight/SM:"
              " %6.1f us, %5.0f GB/s\n",
              kHeadMajor ? "head-major" : "slot-major", HPB, NT, TILE, STAGES, smem / 1024, blocks_per_sm,
              in_flight_kb, us, bytes / us * 1e-3);
}

}  // namespace

int main(int argc, char** argv) {
  Shape s;
  if (argc > 1) s.ctx = std::atoi(argv[1]);
  int dev = 0;
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, dev));
  if (prop.major < 8) {
    std::fprintf(stderr, "%s: cp.async needs sm80 or newer; this is sm%d%d\n", prop.name, prop.major, prop.minor);
    return 1;
  }
  std::printf("%s, %d SMs; %d sequences x %d keys x %d KV heads, Dh %d, block size %d: %.1f MB of K/V a layer\n",
              prop.name, prop.multiProcessorCount, s.seqs, s.ctx, s.hkv, kDh, kBs,
              double(s.seqs) * s.hkv * s.ctx * kDh * 4 / 1e6);
  constexpr int kReps = 40;
  for (int shuffled = 0; shuffled < 2; ++shuffled) {
    int64_t pages = 0;
    const std::vector<int32_t> tables = Tables(s, shuffled != 0, &pages);
    Buffers b;
    b.layers = 4;
    b.layer_elems = pages * kBs * s.hkv * kDh;
    CHECK(cudaMalloc(&b.k, size_t(b.layer_elems) * b.layers * 2));
    CHECK(cudaMalloc(&b.v, size_t(b.layer_elems) * b.layers * 2));
    CHECK(cudaMemset(b.k, 0x11, size_t(b.layer_elems) * b.layers * 2));
    CHECK(cudaMemset(b.v, 0x22, size_t(b.layer_elems) * b.layers * 2));
    int32_t* d_tables = nullptr;
    unsigned* sink = nullptr;
    CHECK(cudaMalloc(&d_tables, tables.size() * 4));
    CHECK(cudaMalloc(&sink, 4));
    CHECK(cudaMemcpy(d_tables, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice));
    std::printf("page tables: %s\n", shuffled ? "shuffled" : "engine order (prompt pages contiguous)");
    // The production shape first (2 warps, 32-key tiles, 3 stages), then its neighbours: the
    // other layout, both heads in one block, more or fewer bytes in flight an SM.
    TimePaged<64, 32, 3, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 32, 3, 1, true>(s, b, d_tables, sink, kReps);
    TimePaged<128, 32, 3, 2, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 32, 2, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 32, 4, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 32, 4, 1, true>(s, b, d_tables, sink, kReps);
    TimePaged<64, 16, 6, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 16, 6, 1, true>(s, b, d_tables, sink, kReps);
    TimePaged<64, 16, 8, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<64, 32, 6, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<128, 64, 2, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<128, 64, 3, 1, false>(s, b, d_tables, sink, kReps);
    TimePaged<128, 64, 3, 1, true>(s, b, d_tables, sink, kReps);
    if (!shuffled) {
      // The ceiling: one layer's K and V bytes (what the paged reads touch), streamed.
      const int64_t n = b.layer_elems * 2 / 16;  // int4s of K
      const int grid = prop.multiProcessorCount * 8;
      const double us = LayerRotatedUs(b, kReps, [&](int l) {
        StreamRead<<<grid, 256>>>(reinterpret_cast<const int4*>(b.k + l * b.layer_elems), n, sink);
        StreamRead<<<grid, 256>>>(reinterpret_cast<const int4*>(b.v + l * b.layer_elems), n, sink);
      });
      std::printf("  streamed (K then V, 16-byte loads): %6.1f us, %6.0f GB/s\n", us,
                  double(b.layer_elems) * 4 / us * 1e-3);
    }
    CHECK(cudaFree(b.k));
    CHECK(cudaFree(b.v));
    CHECK(cudaFree(d_tables));
    CHECK(cudaFree(sink));
  }
  return 0;
}
