// Logprobs on the GPU (LaunchLogprobs): for each logit row whose request asked for them, the
// log-softmax at the sampled token and the row's n most likely tokens, what LogSoftmaxTop
// (worker/backend/sampling/logprobs.h) computes on the host, without copying the row off the
// device. One block a row; rows without logprobs leave at once.
//
// Each thread walks its strided share of the row once: an online (max, sum of exp) pair and a
// sorted list of its n best (value desc, id asc) entries. The block then merges: log-sum-exp from
// the pairs, and n rounds of a block-wide best over the heads of the threads' lists, the winner
// popping its head. Thread lists hold their entries in id order among equal values, and the merge
// breaks ties by id, so the result is the row's exact top n in LogSoftmaxTop's order. The sum is
// in fp32 (the host's in double): the logprobs agree to ~1e-6 relative, the ids exactly.
#include <cfloat>
#include <climits>

#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace cuda {
namespace {

constexpr int kLogprobThreads = 512;

// a beats b: larger value, or the same value and the lower id.
__device__ __forceinline__ bool Beats(float av, int ai, float bv, int bi) {
  return av > bv || (av == bv && ai < bi);
}

// (max, sum of exp(x - max)) of two parts.
__device__ __forceinline__ void MergeLse(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  if (nm == -INFINITY) return;  // both parts empty
  s = (m == -INFINITY ? 0.f : s * __expf(m - nm)) + (om == -INFINITY ? 0.f : os * __expf(om - nm));
  m = nm;
}

// The warp's best (value, id) and the thread t that offered it; every lane gets the result.
__device__ __forceinline__ void WarpBestEntry(float& v, int& i, int& t) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    const int ot = __shfl_xor_sync(0xffffffffu, t, o);
    if (Beats(ov, oi, v, i)) { v = ov; i = oi; t = ot; }
  }
}

// The warp's (max, sum of exp) over its lanes' pairs; every lane gets the result.
__device__ __forceinline__ void WarpMergeLse(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MergeLse(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  }
}

__global__ void __launch_bounds__(kLogprobThreads)
LogprobsKernel(const float* __restrict__ logits, int V, const SampleRowArgs* __restrict__ args,
               const int32_t* __restrict__ tokens, float* __restrict__ values,
               int32_t* __restrict__ ids) {
  GridDependencyWait();
  LaunchDependents();
  const int r = blockIdx.x;
  const int n = args[r].logprobs;
  if (n <= 0 || n > kDeviceMaxLogprobs) return;
  const float* row = logits + static_cast<int64_t>(r) * V;
  float m = -INFINITY, s = 0.f;
  float best_v[kDeviceMaxLogprobs];
  int best_i[kDeviceMaxLogprobs];
  int count = 0;
#pragma unroll
  for (int k = 0; k < kDeviceMaxLogprobs; ++k) {
    best_v[k] = -INFINITY;
    best_i[k] = INT_MAX;
  }
  const auto take = [&](float x, int j) {
    if (x > m) {
      s = (m == -INFINITY ? 0.f : s * __expf(m - x)) + 1.f;
      m = x;
    } else {
      s += __expf(x - m);
    }
    if (count == n && !Beats(x, j, best_v[n - 1], best_i[n - 1])) return;
    int k = count < n ? count++ : n - 1;  // the slot that frees up: the end, or the last entry
    while (k > 0 && Beats(x, j, best_v[k - 1], best_i[k - 1])) {
      best_v[k] = best_v[k - 1];
      best_i[k] = best_i[k - 1];
      --k;
    }
    best_v[k] = x;
    best_i[k] = j;
  };
  if (V % 4 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int v = threadIdx.x; v < V / 4; v += kLogprobThreads) {
      const float4 x = row4[v];
      take(x.x, 4 * v);
      take(x.y, 4 * v + 1);
      take(x.z, 4 * v + 2);
      take(x.w, 4 * v + 3);
    }
  } else {
    for (int j = threadIdx.x; j < V; j += kLogprobThreads) take(row[j], j);
  }

  constexpr int kWarps = kLogprobThreads / 32;
  __shared__ float s_m[kWarps], s_s[kWarps], s_v[kWarps];
  __shared__ int s_i[kWarps], s_t[kWarps];
  __shared__ float s_lse;
  __shared__ int s_winner;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Log-sum-exp of the row.
  WarpMergeLse(m, s);
  if (lane == 0) { s_m[warp] = m; s_s[warp] = s; }
  __syncthreads();
  if (warp == 0) {
    m = lane < kWarps ? s_m[lane] : -INFINITY;
    s = lane < kWarps ? s_s[lane] : 0.f;
    WarpMergeLse(m, s);
    if (lane == 0) s_lse = m + logf(s);
  }
  __syncthreads();
  const float lse = s_lse;
  float* out_v = values + static_cast<int64_t>(r) * (1 + kDeviceMaxLogprobs);
  int32_t* out_i = ids + static_cast<int64_t>(r) * kDeviceMaxLogprobs;
  if (threadIdx.x == 0) {
    const int tok = tokens[r];  // a row the sampler left to the host has none: the host fills it
    out_v[0] = tok >= 0 && tok < V ? row[tok] - lse : NAN;
  }
  // n rounds: the best list head of the block wins and is popped.
  int head = 0;
  for (int k = 0; k < n; ++k) {
    float v = head < count ? best_v[head] : -INFINITY;
    int i = head < count ? best_i[head] : INT_MAX;
    int t = threadIdx.x;
    WarpBestEntry(v, i, t);
    if (lane == 0) { s_v[warp] = v; s_i[warp] = i; s_t[warp] = t; }
    __syncthreads();
    if (warp == 0) {
      v = lane < kWarps ? s_v[lane] : -INFINITY;
      i = lane < kWarps ? s_i[lane] : INT_MAX;
      t = lane < kWarps ? s_t[lane] : -1;
      WarpBestEntry(v, i, t);
      if (lane == 0) {
        out_v[1 + k] = v - lse;
        out_i[k] = i == INT_MAX ? -1 : i;
        s_winner = t;
      }
    }
    __syncthreads();
    if (threadIdx.x == s_winner) ++head;
    __syncthreads();  // s_v / s_winner are rewritten next round
  }
}

}  // namespace

cudaError_t LaunchLogprobs(const float* logits, int rows, int V, const SampleRowArgs* args,
                           const int32_t* tokens, float* values, int32_t* ids, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (V <= 0) return cudaErrorInvalidValue;
  return LaunchKernel(LogprobsKernel, rows, kLogprobThreads, 0, stream, logits, V, args, tokens,
                      values, ids);
}

}  // namespace cuda
}  // namespace glm
