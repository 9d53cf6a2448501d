// Sampling on the GPU. ArgmaxKernel: greedy, the argmax of each logit row with the non-finite
// guard in the same pass (no extra read of the logits), and an optional fp32 copy for the other
// samplers; rows whose length is a multiple of the 16-byte vector are read (and copied) in
// vectors (the rows then start 16-byte aligned, as the buffers do). SampleKernel: everything
// Sampler::Sample does, on the fp32 copy. One block a row for both.
#include <cfloat>
#include <algorithm>
#include <climits>
#include <mutex>
#include <unordered_map>

#include "worker/backend/cuda/device_types.cuh"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kArgmaxThreads = 1024;

// Larger value wins; equal values: the lower index (torch.argmax returns the first maximum).
__device__ __forceinline__ void Better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

// Reduces (value, index, non-finite flag) over the warp; every lane gets the result.
__device__ __forceinline__ void WarpBest(float& v, int& i, int& bad) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    Better(v, i, ov, oi);
  }
  bad = __any_sync(0xffffffffu, bad);
}

template <typename Act>
__global__ void __launch_bounds__(kArgmaxThreads)
ArgmaxKernel(const Act* __restrict__ logits, int V, float* __restrict__ logits_f32,
             int32_t* __restrict__ tokens, int32_t* __restrict__ finite) {
  GridDependencyWait();
  LaunchDependents();
  const int r = blockIdx.x;
  const Act* row = logits + static_cast<int64_t>(r) * V;
  float* out = logits_f32 ? logits_f32 + static_cast<int64_t>(r) * V : nullptr;
  float best = -FLT_MAX;
  int best_i = INT_MAX;
  int bad = 0;
  const auto take = [&](float x, int j) {
    if (!isfinite(x)) {
      bad = 1;
    } else {
      Better(best, best_i, x, j);
    }
  };
  constexpr int kVec = Vec16<Act>::kN;
  if (V % kVec == 0) {
    // 16-byte loads, four in flight a thread: a bs1 row (151,552 logits) is one block's work,
    // and one scalar load at a time made it a chain of ~150 L2 round trips (~50 us a step).
    const int4* row4 = reinterpret_cast<const int4*>(row);
    const int nv = V / kVec;
#pragma unroll 4
    for (int v = threadIdx.x; v < nv; v += kArgmaxThreads) {
      float x[kVec];
      Vec16<Act>::Unpack(__ldcs(row4 + v), x);
      if (out) {
#pragma unroll
        for (int e = 0; e < kVec; e += 4) {
          *reinterpret_cast<float4*>(out + v * kVec + e) = make_float4(x[e], x[e + 1], x[e + 2], x[e + 3]);
        }
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) take(x[e], v * kVec + e);
    }
  } else {
    for (int j = threadIdx.x; j < V; j += kArgmaxThreads) {
      const float x = ToFloat(row[j]);
      if (out) out[j] = x;
      take(x, j);
    }
  }
  WarpBest(best, best_i, bad);
  __shared__ float s_val[32];
  __shared__ int s_idx[32], s_bad[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { s_val[warp] = best; s_idx[warp] = best_i; s_bad[warp] = bad; }
  __syncthreads();
  if (warp == 0) {
    best = s_val[lane]; best_i = s_idx[lane]; bad = s_bad[lane];
    WarpBest(best, best_i, bad);
    if (lane == 0) {
      tokens[r] = best_i == INT_MAX ? 0 : best_i;
      finite[r] = bad ? 0 : 1;
    }
  }
}

constexpr int kSampleThreads = 1024;
constexpr int kRadixBins = 256;
// Radix histograms: one per 4 warps (the counts are warp-aggregated first, so 8 copies keep
// atomic contention low while the fixed part stays small).
constexpr int kHistCopies = 8;
// Dynamic shared memory: radix histograms, candidate keys, candidate weights, then the penalty
// bitmap (V bits) when some row has a penalty. 24 KiB + V/8: GLM-4's 151,552-token vocabulary
// fits the 48 KiB every GPU gives a block without opting in.
constexpr size_t kSampleSmemFixed = size_t{kHistCopies} * kRadixBins * 4 +
                                    size_t{kSampleCandidates} * 8 + size_t{kSampleCandidates} * 8;
// (The weights double as SegmentSearch's scratch, one double a thread.)
static_assert(kSampleCandidates >= kSampleThreads, "SegmentSearch scratch");
constexpr size_t SampleSmemBytes(int bitmap_words) {
  return kSampleSmemFixed + size_t{4} * static_cast<size_t>(bitmap_words);
}

// Order-preserving map of a float (no NaN) to uint32: larger float, larger key. -0 is mapped as
// +0 (the host compares floats, where they tie).
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t u = __float_as_uint(x == 0.f ? 0.f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float KeyValue(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// Candidate sort key: ascending order = logit descending, then id ascending (Sampler's order).
__device__ __forceinline__ uint64_t CandidateKey(uint32_t key, int id) {
  return (static_cast<uint64_t>(~key) << 32) | static_cast<uint32_t>(id);
}

// Block-wide (value, index, bad) reduction; every thread gets the result.
__device__ void BlockBest(float& v, int& i, int& bad) {
  __shared__ float s_val[32];
  __shared__ int s_idx[32], s_bad[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  WarpBest(v, i, bad);
  if (lane == 0) { s_val[warp] = v; s_idx[warp] = i; s_bad[warp] = bad; }
  __syncthreads();
  v = s_val[lane % (blockDim.x / 32)];
  i = s_idx[lane % (blockDim.x / 32)];
  bad = s_bad[lane % (blockDim.x / 32)];
  WarpBest(v, i, bad);
  __syncthreads();  // s_* reusable
}

// Deterministic block scan of doubles (fixed association, no subtraction): returns the block
// total; *excl gets the sum of the lower threads' values.
__device__ double BlockExclusiveScan(double x, double* excl) {
  __shared__ double s_warp[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  const double up = __shfl_up_sync(0xffffffffu, incl, 1);
  const double lane_excl = lane == 0 ? 0.0 : up;
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  const int nw = blockDim.x / 32;
  double wincl = lane < nw ? s_warp[lane] : 0.0;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, wincl, o);
    if (lane >= o) wincl += y;
  }
  const double total = __shfl_sync(0xffffffffu, wincl, nw - 1);
  const double wup = __shfl_sync(0xffffffffu, wincl, warp == 0 ? 0 : warp - 1);
  const double warp_excl = warp == 0 ? 0.0 : wup;
  *excl = warp == 0 ? lane_excl : (lane == 0 ? warp_excl : warp_excl + lane_excl);
  __syncthreads();  // s_warp reusable
  return total;
}

__device__ double BlockSum(double x) {
  double excl;
  return BlockExclusiveScan(x, &excl);
}

// The first id j (vocabulary order) at which the running sum of f (f >= 0) exceeds
// target_of(total), total the sum over the whole row: thread t sums its contiguous segment, the
// segment sums' block scan places the target, and its owner walks its segment. Returns -1 if no
// id does (rounding past the top); where the walk's rounding stops short inside the owner's
// segment, its last id with f > 0. scratch: kSampleThreads doubles of shared memory. All threads
// call it; all get it.
template <typename F, typename Target>
__device__ int SegmentSearch(int V, F f, Target target_of, double* scratch) {
  __shared__ int s_pick;
  const int tid = threadIdx.x;
  const int seg = (V + kSampleThreads - 1) / kSampleThreads;
  const int b = min(V, tid * seg), e = min(V, b + seg);
  double local = 0.0;
  for (int j = b; j < e; ++j) local += f(j);
  double excl;
  const double total = BlockExclusiveScan(local, &excl);
  scratch[tid] = excl;
  if (tid == 0) s_pick = INT_MAX;
  __syncthreads();
  const double next = tid + 1 < kSampleThreads ? scratch[tid + 1] : total;
  const double target = target_of(total);
  if (excl <= target && target < next) {
    double c = excl;
    int pick = -1, last = -1;
    for (int j = b; j < e; ++j) {
      const double fj = f(j);
      if (fj > 0.0) last = j;
      c += fj;
      if (target < c) {
        pick = j;
        break;
      }
    }
    if (pick < 0) pick = last;
    if (pick >= 0) atomicMin(&s_pick, pick);
  }
  __syncthreads();
  const int out = s_pick;
  __syncthreads();  // scratch and s_pick reusable
  return out == INT_MAX ? -1 : out;
}

// Calls f(x, j, valid) for every logit x = row[j] of a row, 16 values a thread in flight (four
// 16-byte loads when V is a multiple of 4, the row then 16-byte aligned; four scalar loads
// otherwise): one load at a time would make each pass over a 151,552-logit row a chain of ~150
// memory round trips. Every lane of the block makes the same calls (valid = false past the end,
// x then 0), so f may use warp collectives.
template <typename F>
__device__ __forceinline__ void ForEachLogit(const float* __restrict__ row, int V, F f) {
  const int tid = threadIdx.x;
  if ((V & 3) == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int nv = V >> 2;
    for (int base = 0; base < nv; base += 4 * kSampleThreads) {
      float4 x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int v = base + u * kSampleThreads + tid;
        x[u] = v < nv ? __ldg(row4 + v) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int v = base + u * kSampleThreads + tid;
        const bool ok = v < nv;
        f(x[u].x, 4 * v, ok);
        f(x[u].y, 4 * v + 1, ok);
        f(x[u].z, 4 * v + 2, ok);
        f(x[u].w, 4 * v + 3, ok);
      }
    }
  } else {
    for (int base = 0; base < V; base += 4 * kSampleThreads) {
      float x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int j = base + u * kSampleThreads + tid;
        x[u] = j < V ? __ldg(row + j) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int j = base + u * kSampleThreads + tid;
        f(x[u], j, j < V);
      }
    }
  }
}

// Exact block-wide sum of uint64 (order-free); every thread gets it.
__device__ uint64_t BlockSumU64(uint64_t x) {
  __shared__ uint64_t s_part[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  if (lane == 0) s_part[warp] = x;
  __syncthreads();
  uint64_t y = lane < static_cast<int>(blockDim.x / 32) ? s_part[lane] : 0u;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
  __syncthreads();  // s_part reusable
  return y;
}

// Sampling from a support too wide for the candidate sort (a top-p nucleus past
// kSampleCandidates tokens, top_k above it, ties at the k-th logit past the room): radix selects
// by probability mass instead of a sort. A token's mass is its weight exp((x - max) / T) in
// fixed point (w * 2^qshift, truncated; sums of up to V of them fit 62 bits), so every sum is an
// integer sum and exact in any order: the same row gives the same token on every run. Sampler
// sums the same weights in double in sorted order; the two can differ only where the draw or
// the top-p boundary falls within ~2^-qshift (about 6e-14 at V = 151,552) of a token's edge.
struct WideScratch {
  uint64_t* hist;  // [kHistCopies][kRadixBins] mass histograms
  uint64_t* bins;  // [kRadixBins]
};

// A radix select over the row's ordered keys, 8 bits a pass from the top. Each pass, add(h, raw,
// j, ok, prefix, mask, shift) histograms the logits whose key matches the digits chosen so far
// (h: its warp's copy of the kHistCopies histograms; every lane calls it, ok false past V), the
// copies are summed into bins, and pick(bins, shift), on thread 0, names the bin to go down into
// (keeping the caller's running counts in shared memory). Returns the selected key; all threads
// of the block call it and see pick's shared state after it.
template <typename T, typename Add, typename Pick>
__device__ uint32_t RadixSelect(const float* __restrict__ row, int V, T* hist, T* bins, Add add, Pick pick) {
  __shared__ int s_bin;
  const int tid = threadIdx.x;
  T* my_hist = hist + (tid / 32 % kHistCopies) * kRadixBins;
  uint32_t prefix = 0u, mask = 0u;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < kHistCopies * kRadixBins; i += kSampleThreads) hist[i] = T{0};
    __syncthreads();
    ForEachLogit(row, V, [&](float raw, int j, bool ok) { add(my_hist, raw, j, ok, prefix, mask, shift); });
    __syncthreads();
    for (int bin = tid; bin < kRadixBins; bin += kSampleThreads) {
      T c{0};
      for (int hc = 0; hc < kHistCopies; ++hc) c += hist[hc * kRadixBins + bin];
      bins[bin] = c;
    }
    __syncthreads();
    if (tid == 0) s_bin = pick(bins, shift);
    __syncthreads();
    prefix |= static_cast<uint32_t>(s_bin) << shift;
    mask |= 0xffu << shift;
    __syncthreads();  // s_bin and the bins read before the next pass writes them
  }
  return prefix;
}

// Among the keys >= min_key, the key whose tie group holds the need-th unit of mass counted from
// the largest key down: above < need <= above + the group's mass, above = the mass of the keys
// above it (>= min_key). need_frac >= 0: need = max(1, ceil(need_frac * total)) with total the mass
// of all keys >= min_key (the first pass's histogram); else need = need_abs.
template <typename Pen, typename Mass>
__device__ void MassSelect(const float* __restrict__ row, int V, Pen penalize, Mass mass,
                           uint32_t min_key, double need_frac, uint64_t need_abs, WideScratch ws,
                           uint32_t* key_out, uint64_t* above_out, uint64_t* need_out) {
  __shared__ uint64_t s_above, s_need;
  if (threadIdx.x == 0) {
    s_above = 0u;
    s_need = need_abs;
  }
  // (RadixSelect's first barrier orders these before pick.)
  const auto add = [&](uint64_t* h, float raw, int j, bool ok, uint32_t prefix, uint32_t mask, int shift) {
    if (!ok) return;
    const float x = penalize(raw, j);
    const uint32_t key = OrderedKey(x);
    if (key < min_key || (key & mask) != prefix) return;
    const uint64_t q = mass(x);
    if (q != 0u) {
      atomicAdd(reinterpret_cast<unsigned long long*>(&h[(key >> shift) & 0xffu]),
                static_cast<unsigned long long>(q));
    }
  };
  const auto pick = [&](const uint64_t* bins, int shift) {
    uint64_t need = s_need;
    if (shift == 24 && need_frac >= 0.0) {
      uint64_t total = 0u;
      for (int bin = 0; bin < kRadixBins; ++bin) total += bins[bin];
      const double want = ceil(need_frac * static_cast<double>(total));
      need = want < 1.0 ? 1u : (want >= static_cast<double>(total) ? total : static_cast<uint64_t>(want));
    }
    // The bin where the mass from the top reaches need (the lowest bin with mass, should
    // rounding have left need above the whole range).
    int bin = kRadixBins - 1, last = -1;
    uint64_t acc = s_above, acc_last = s_above;
    for (; bin >= 0; --bin) {
      const uint64_t m = bins[bin];
      if (m == 0u) continue;
      if (acc + m >= need) break;
      last = bin;
      acc_last = acc;
      acc += m;
    }
    if (bin < 0) {
      bin = last < 0 ? 0 : last;
      acc = acc_last;
    }
    s_above = acc;
    s_need = need;
    return bin;
  };
  *key_out = RadixSelect(row, V, ws.hist, ws.bins, add, pick);
  *above_out = s_above;
  *need_out = s_need;
  __syncthreads();  // s_above / s_need read before a later call writes them
}

// The token Sampler would draw with target u from the tokens whose key is >= min_key (top-k's
// k-th key with every tie, or 0: the whole vocabulary), through top-p when use_top_p: the mass
// selects of the nucleus boundary and of the draw, then the draw's place among its key's ties
// (ids ascending, as Sampler sorts them). All threads of the block call it; all get the token.
template <typename Pen>
__device__ int WideSample(const float* __restrict__ row, int V, Pen penalize, double max_logit,
                          double inv_t, double u, bool use_top_p, float top_p, uint32_t min_key,
                          WideScratch ws) {
  const int qshift = 62 - (32 - __clz(V));  // V * 2^qshift < 2^62
  const double qscale = ldexp(1.0, qshift);
  const auto mass = [&](float x) {
    return static_cast<uint64_t>(__double2ull_rz(exp((static_cast<double>(x) - max_logit) * inv_t) * qscale));
  };
  // The nucleus: the keys above its last key, and the first m tokens of that key's ties.
  uint32_t last_key = min_key;
  uint64_t nucleus = 0u;
  if (use_top_p) {
    uint64_t above = 0u, need = 0u;
    MassSelect(row, V, penalize, mass, min_key, static_cast<double>(top_p), 0u, ws, &last_key, &above, &need);
    const uint64_t q = mass(KeyValue(last_key));
    const uint64_t m = q == 0u ? 1u : (need - above + q - 1u) / q;  // need > above
    nucleus = above + m * q;
  } else {
    uint64_t local = 0u;
    ForEachLogit(row, V, [&](float raw, int j, bool ok) {
      if (!ok) return;
      const float x = penalize(raw, j);
      if (OrderedKey(x) >= min_key) local += mass(x);
    });
    nucleus = BlockSumU64(local);
  }
  // The draw: the token holding unit target = floor(u * nucleus) of the nucleus' mass.
  if (nucleus == 0u) nucleus = 1u;
  uint64_t target = static_cast<uint64_t>(__double2ull_rz(u * static_cast<double>(nucleus)));
  if (target >= nucleus) target = nucleus - 1u;
  uint32_t key = 0u;
  uint64_t above = 0u, need = 0u;
  MassSelect(row, V, penalize, mass, last_key, -1.0, target + 1u, ws, &key, &above, &need);
  const uint64_t q = mass(KeyValue(key));
  const int64_t t = q == 0u ? 0 : static_cast<int64_t>((target - above) / q);  // among key's ties
  // The t-th id (ascending) whose key is `key` (counts are integers below 2^53: exact sums).
  return SegmentSearch(
      V, [&](int j) { return OrderedKey(penalize(row[j], j)) == key ? 1.0 : 0.0; },
      [&](double) { return static_cast<double>(t); }, reinterpret_cast<double*>(ws.bins));
}

__global__ void __launch_bounds__(kSampleThreads)
SampleKernel(const float* __restrict__ logits, int V, const SampleRowArgs* __restrict__ args,
             const int32_t* __restrict__ context_ids, int bitmap_words, int32_t* __restrict__ tokens,
             int32_t* __restrict__ finite, int32_t* __restrict__ fallback) {
  GridDependencyWait();
  LaunchDependents();
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem);                     // [copies][bins]
  uint64_t* cand = reinterpret_cast<uint64_t*>(hist + kHistCopies * kRadixBins);
  double* w = reinterpret_cast<double*>(cand + kSampleCandidates);       // weights / scan
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(w + kSampleCandidates);  // [bitmap_words]
  __shared__ uint32_t s_bins[kRadixBins];
  __shared__ int s_remaining, s_count[2], s_wide;
  // The wide path's mass histograms over the radix histograms and the candidate keys (16 KiB),
  // its reduced bins over the weights.
  const WideScratch ws{reinterpret_cast<uint64_t*>(smem), reinterpret_cast<uint64_t*>(w)};

  const int r = blockIdx.x, tid = threadIdx.x, lane = tid % 32;
  const SampleRowArgs p = args[r];
  auto finish = [&](int token, int is_finite, int to_host) {
    if (tid == 0) {
      tokens[r] = token;
      finite[r] = is_finite;
      fallback[r] = to_host;
    }
  };
  if (p.host_only) {
    finish(0, 1, 1);
    return;
  }
  const float* row = logits + static_cast<int64_t>(r) * V;
  const bool penal = p.penalty != 1.f && p.ctx_len > 0 && bitmap_words > 0;
  if (penal) {
    for (int i = tid; i < bitmap_words; i += kSampleThreads) bitmap[i] = 0u;
    __syncthreads();
    for (int i = tid; i < p.ctx_len; i += kSampleThreads) {
      const int id = context_ids[p.ctx_begin + i];
      if (id >= 0 && id < V) atomicOr(&bitmap[id >> 5], 1u << (id & 31));
    }
    __syncthreads();
  }
  // The logit after the repetition penalty (HF: divided if positive, else multiplied; once per
  // distinct id: the bitmap).
  const auto penalize = [&](float x, int j) {
    if (penal && ((bitmap[j >> 5] >> (j & 31)) & 1u)) x = x > 0.f ? x / p.penalty : x * p.penalty;
    return x;
  };
  const auto value = [&](int j) { return penalize(row[j], j); };

  // Pass 1: max, first argmax, the non-finite guard.
  float best = -FLT_MAX;
  int best_i = INT_MAX;
  int bad = 0;
  ForEachLogit(row, V, [&](float raw, int j, bool ok) {
    if (!ok) return;
    const float x = penalize(raw, j);
    if (!isfinite(x)) {
      bad = 1;
    } else {
      Better(best, best_i, x, j);
    }
  });
  BlockBest(best, best_i, bad);
  if (best_i == INT_MAX) best_i = 0;
  if (bad) return finish(0, 0, 0);
  if (!(p.temperature > 0.f)) return finish(best_i, 1, 0);

  const double max_logit = best;
  const double inv_t = 1.0 / static_cast<double>(p.temperature);
  const auto weight = [&](float x) { return exp((static_cast<double>(x) - max_logit) * inv_t); };
  const bool use_top_k = p.top_k > 0 && p.top_k < V;
  const bool use_top_p = p.top_p < 1.f;

  if (!use_top_k && !use_top_p) {
    // The whole distribution in vocabulary order.
    const int t = SegmentSearch(
        V, [&](int j) { return weight(value(j)); }, [&](double total) { return p.uniform * total; }, w);
    return finish(t < 0 ? best_i : t, 1, 0);  // rounding past the top: argmax
  }

  // The wide path's token (a row it could not place, which the mass sums rule out, goes to the
  // host rather than out as an invalid id).
  const auto finish_wide = [&](uint32_t min_key) {
    const int t = WideSample(row, V, penalize, max_logit, inv_t, p.uniform, use_top_p, p.top_p, min_key, ws);
    finish(t >= 0 ? t : 0, 1, t >= 0 ? 0 : 1);
  };
  const int K = use_top_k ? p.top_k : min(V, kSampleCandidates);
  // Radix select of the K-th largest key; warp-aggregated counts.
  if (tid == 0) s_remaining = K;  // keys still to pass, from the top
  const auto count = [&](uint32_t* h, float raw, int j, bool ok, uint32_t prefix, uint32_t mask, int shift) {
    const uint32_t key = ok ? OrderedKey(penalize(raw, j)) : 0u;
    const bool match = ok && (key & mask) == prefix;
    const uint32_t digit = (key >> shift) & 0xffu;
    const unsigned active = __ballot_sync(0xffffffffu, match);
    if (match) {
      const unsigned peers = __match_any_sync(active, digit);
      if (lane == __ffs(peers) - 1) atomicAdd(&h[digit], static_cast<uint32_t>(__popc(peers)));
    }
  };
  const auto pick_kth = [&](const uint32_t* bins, int) {
    int rem = s_remaining, bin = kRadixBins - 1;
    for (; bin > 0; --bin) {
      if (static_cast<int>(bins[bin]) >= rem) break;
      rem -= static_cast<int>(bins[bin]);
    }
    s_remaining = rem;
    return bin;
  };
  const uint32_t kth = RadixSelect(row, V, hist, s_bins, count, pick_kth);
  const int remaining = s_remaining;
  // top_k past the candidates: every key >= the k-th (ties kept) through the mass selects.
  if (use_top_k && p.top_k > kSampleCandidates) return finish_wide(kth);
  const int count_gt = K - remaining;  // keys above the K-th
  const int tie_room = kSampleCandidates - count_gt;
  if (tid == 0) s_count[0] = s_count[1] = 0;
  __syncthreads();
  ForEachLogit(row, V, [&](float raw, int j, bool ok) {
    if (!ok) return;
    const uint32_t key = OrderedKey(penalize(raw, j));
    if (key > kth) {
      cand[atomicAdd(&s_count[0], 1)] = CandidateKey(key, j);
    } else if (key == kth) {
      const int t = atomicAdd(&s_count[1], 1);
      if (t < tie_room) cand[count_gt + t] = CandidateKey(key, j);
    }
  });
  __syncthreads();
  const int ties = s_count[1];
  const bool all_ties = ties <= tie_room;
  // Top-k keeps every tie of the k-th logit (HF); without top-k the candidates must be a prefix
  // of the sorted vocabulary, so incomplete ties are dropped.
  if (use_top_k && !all_ties) return finish_wide(kth);
  const int n_cand = all_ties ? count_gt + ties : count_gt;
  if (n_cand == 0) return finish_wide(0u);  // top-p alone, the top key's ties past the room
  for (int i = n_cand + tid; i < kSampleCandidates; i += kSampleThreads) cand[i] = ~uint64_t{0};
  __syncthreads();
  // Bitonic sort, ascending.
  for (int k = 2; k <= kSampleCandidates; k <<= 1) {
    for (int jj = k >> 1; jj > 0; jj >>= 1) {
      for (int i = tid; i < kSampleCandidates; i += kSampleThreads) {
        const int ixj = i ^ jj;
        if (ixj > i) {
          const uint64_t a = cand[i], b = cand[ixj];
          if (((i & k) == 0) == (a > b)) {
            cand[i] = b;
            cand[ixj] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < n_cand; i += kSampleThreads) {
    w[i] = weight(KeyValue(~static_cast<uint32_t>(cand[i] >> 32)));
  }
  // Top-p without top-k normalizes by the whole vocabulary: when the candidates are not all of
  // it, one more pass (summed in a fixed order, not the sorted one: rounding may differ).
  const bool covered = use_top_k || n_cand == V;
  double full_total = 0.0;
  if (!covered) {
    double local = 0.0;
    ForEachLogit(row, V, [&](float raw, int j, bool ok) {
      if (ok) local += weight(penalize(raw, j));
    });
    full_total = BlockSum(local);
  }
  __syncthreads();
  if (tid == 0) {
    const int kept = use_top_k ? n_cand : V;
    double total = 0.0;
    if (covered) {
      for (int i = 0; i < n_cand; ++i) total += w[i];
    } else {
      total = full_total;
    }
    int keep = n_cand;
    bool to_host = false;
    if (use_top_p) {
      // HF TopPLogitsWarper: a token stays while the probability ranked above it is below top_p.
      double above = 0.0;
      int keep_p = 0;
      while (keep_p < kept && (keep_p == 0 || above / total < static_cast<double>(p.top_p))) {
        if (keep_p >= n_cand) { to_host = true; break; }
        above += w[keep_p];
        ++keep_p;
      }
      keep = keep_p;
      total = 0.0;
      for (int i = 0; i < keep; ++i) total += w[i];
    }
    int token = static_cast<int>(cand[0] & 0xffffffffu);
    if (!to_host) {
      const double target = p.uniform * total;
      double c = 0.0;
      for (int i = 0; i < keep; ++i) {
        c += w[i];
        if (target < c) { token = static_cast<int>(cand[i] & 0xffffffffu); break; }
      }
    }
    s_wide = to_host ? 1 : 0;
    if (!to_host) {
      tokens[r] = token;
      finite[r] = 1;
      fallback[r] = 0;
    }
  }
  __syncthreads();
  // A nucleus reaching past the candidates (top-p alone on a flat distribution).
  if (s_wide) finish_wide(0u);
}

}  // namespace

int SampleMaxPenaltyVocab() {
  // Per device: the block's opt-in shared memory limit (48 KiB on every GPU without opting in;
  // 64 KiB on sm75, 96 KiB on sm70, 163 KiB on sm80, 227 KiB on sm90), less the fixed part and
  // the kernel's static shared memory.
  static std::mutex mu;
  static std::unordered_map<int, int> limit;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  auto it = limit.find(device);
  if (it != limit.end()) return it->second;
  int optin = 0;
  cudaFuncAttributes attrs{};
  int words = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
      cudaFuncGetAttributes(&attrs, SampleKernel) == cudaSuccess) {
    const int64_t room = int64_t{optin} - static_cast<int64_t>(attrs.sharedSizeBytes) -
                         static_cast<int64_t>(kSampleSmemFixed);
    words = room > 0 ? static_cast<int>(room / 4) : 0;
  }
  (void)cudaGetLastError();
  const int vocab = static_cast<int>(std::min<int64_t>(int64_t{words} * 32, INT_MAX));
  limit.emplace(device, vocab);
  return vocab;
}

cudaError_t LaunchSample(const float* logits, int rows, int V, const SampleRowArgs* args,
                         const int32_t* context_ids, bool with_penalty, int32_t* tokens,
                         int32_t* finite, int32_t* fallback, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (V <= 0 || (with_penalty && V > SampleMaxPenaltyVocab())) return cudaErrorInvalidValue;
  const int bitmap_words = with_penalty ? (V + 31) / 32 : 0;
  const size_t smem = SampleSmemBytes(bitmap_words);
  if (smem > 48 * 1024) {
    // Opting in to more than the default is per device and per size: raise it when needed.
    // (The attribute is process-wide for the function on the current device.)
    static std::mutex mu;
    static std::unordered_map<int, size_t> opted;
    int device = 0;
    const cudaError_t got = cudaGetDevice(&device);
    if (got != cudaSuccess) return got;
    std::lock_guard<std::mutex> lock(mu);
    if (opted[device] < smem) {
      const cudaError_t set = cudaFuncSetAttribute(SampleKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(smem));
      if (set != cudaSuccess) return set;
      opted[device] = smem;
    }
  }
  return LaunchKernel(SampleKernel, rows, kSampleThreads, smem, stream, logits, V, args,
                      context_ids, bitmap_words, tokens, finite, fallback);
}

cudaError_t LaunchArgmax(DType act, const void* logits, int rows, int V, float* logits_f32,
                         int32_t* tokens, int32_t* finite, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  switch (act) {
    case DType::kF32:
      return LaunchKernel(ArgmaxKernel<float>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const float*>(logits), V, logits_f32, tokens, finite);
    case DType::kBF16:
      return LaunchKernel(ArgmaxKernel<Bf16>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const Bf16*>(logits), V, logits_f32, tokens, finite);
    case DType::kF16:
      return LaunchKernel(ArgmaxKernel<__half>, rows, kArgmaxThreads, 0, stream,
                          static_cast<const __half*>(logits), V, logits_f32, tokens, finite);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace glm
