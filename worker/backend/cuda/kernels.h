// Launchers of the CUDA backend's own kernels. Host code (the backend, tests/gpu) calls these;
// the kernels live in the .cu files beside this header, one file per kernel family.
//
// Element types follow the precision mode (worker/precision/precision.h):
//   act  : residual stream, GEMM outputs, activations     fp32 | bf16 | fp16 | fp32 (fp16-safe)
//   weight: weights, GEMM inputs, KV cache                 fp32 | bf16 | fp16 | fp16 (fp16-safe)
// Every kernel computes in fp32 and rounds to the output type once per stored value, the
// rounding points the CPU reference follows. Every launcher returns cudaGetLastError() of the
// launch (the caller checks it with file:line).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "worker/model/dtype.h"

namespace glm {
namespace cuda {

struct KernelTypes {
  DType act = DType::kF32;
  DType weight = DType::kF32;
};

// out[t, :] = table[ids[t], :].   ids: [T] (must be < V), table: [V, D] weight, out: [T, D] act.
cudaError_t LaunchEmbedding(KernelTypes types, const int32_t* ids, const void* table, void* out,
                            int T, int D, cudaStream_t stream);
// Tensor-parallel (vocab-parallel) embedding: table holds vocabulary rows
// [vocab_begin, vocab_begin + vocab); out[t, :] = table[ids[t] - vocab_begin, :] for the tokens it
// holds and 0 for the others (an all-reduce over the group completes the rows).
cudaError_t LaunchEmbeddingShard(KernelTypes types, const int32_t* ids, const void* table,
                                 void* out, int T, int D, int vocab_begin, int vocab,
                                 cudaStream_t stream);

// Fused residual add + RMSNorm, once per row i in [0, rows):
//   r = row_index ? row_index[i] : i
//   if delta:  d = post_weight ? rmsnorm(delta[r]) * post_weight : delta[r];  residual[r] += d
//   out[i] = rmsnorm(residual[r]) * weight
// residual, delta: [*, D] act; post_weight, weight: [D] weight; out: [rows, D] act.
// rmsnorm(x) = x / sqrt(mean(x^2) + eps) computed in fp32, rounded to act, then times the weight
// (the order of transformers' GlmRMSNorm).
cudaError_t LaunchAddRmsNorm(KernelTypes types, void* residual, const void* delta,
                             const void* post_weight, const void* weight, void* out,
                             const int32_t* row_index, int rows, int D, float eps,
                             cudaStream_t stream);

// QKV bias + GLM partial interleaved rotary + paged KV write, per token t:
//   qkv[t] = [q: H*Dh | k: Hkv*Dh | v: Hkv*Dh] (act), bias the same layout (weight, may be null).
//   q, k get the bias, then the first rot_dim dims rotate pairs (2i, 2i+1) by
//   angle = positions[t] * inv_freq[i]: (x0 c - x1 s, x1 c + x0 s). q is written back in place;
//   k and v (with bias) go to k_cache/v_cache [num_blocks * block_size, Hkv, Dh] (weight) at
//   slot slots[t] (= block * block_size + offset; -1: not written, a padding row).
// inv_freq: [rot_dim / 2] fp32.
cudaError_t LaunchRotaryKvWrite(KernelTypes types, void* qkv, const void* bias, void* k_cache,
                                void* v_cache, const int32_t* positions, const int32_t* slots,
                                const float* inv_freq, int T, int H, int Hkv, int Dh, int rot_dim,
                                cudaStream_t stream);

// Paged attention over each sequence's whole context (cached + new tokens), causal by absolute
// position, GQA-aware: one thread block serves all G = H / Hkv query heads of a KV head, so each
// K/V vector is read once per KV head. The work is split into items (seq, first token) of
// tokens_per_item tokens, and the context of each item into `splits` parts (flash-decoding);
// with splits > 1 the blocks write partials that are merged either by the last block of each
// (item, KV head) (the tensor-core kernel, given split_counters) or by LaunchAttentionCombine.
// LaunchPagedAttention always leaves the finished rows in `out`.
struct AttentionArgs {
  const void* q = nullptr;          // [T, q_stride] act; head h of token t at q + t*q_stride + h*Dh
  int q_stride = 0;
  const void* k_cache = nullptr;    // [num_blocks, block_size, Hkv, Dh] weight (one layer)
  const void* v_cache = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, bt_stride]
  const int32_t* bt_stride = nullptr;     // device scalar: row stride of block_tables
  const int32_t* seq_qstart = nullptr;    // [num_seqs + 1] first new token of each sequence
  const int32_t* seq_context = nullptr;   // [num_seqs] context length after this step
  const int32_t* positions = nullptr;     // [T] absolute positions
  const int32_t* item_seq = nullptr;      // [num_items]
  const int32_t* item_token = nullptr;    // [num_items] offset among the sequence's new tokens
  int num_items = 0;
  int tokens_per_item = 1;              // decode: 1; prefill: AttentionTokensPerItem(G)
  int H = 0, Hkv = 0, Dh = 0, block_size = 0;
  float scale = 1.0f;
  int splits = 1;
  void* out = nullptr;              // [T, H*Dh] act (splits == 1)
  float* partial_out = nullptr;     // [splits, T, H, Dh] (splits > 1)
  float* partial_ml = nullptr;      // [splits, T, H, 2] running max and sum (splits > 1)
  int32_t* split_counters = nullptr;  // [num_items * Hkv] zeroed once; each launch leaves them 0
  // With split_counters (in-kernel combine, decode items of <= 16 rows): the tensor-core kernel
  // uses min(splits, ceil(64-key tiles / min_tiles_per_split)) splits per item.
  int min_tiles_per_split = 4;
  // Block shape of the tensor-core decode kernel (attention_mma.cu's PickDecodeShape): warps 0
  // picks; 2 (32-key tiles) or 4 (64-key) force it. Pipeline depth: 0 picks; 2, 3, 4 (2 warps)
  // or 2, 4 (4 warps) force it; with decode_warps set, warp_pipes gives each warp its own ring
  // of stages. Tests force them; production leaves them 0.
  int decode_warps = 0;
  int stages = 0;
  bool warp_pipes = false;
  int T = 0;
};
// Tokens one prefill work item holds for G query heads per KV head.
int AttentionTokensPerItem(int G);
// Largest head_dim the attention kernels take.
constexpr int kMaxAttentionHeadDim = 128;
cudaError_t LaunchPagedAttention(KernelTypes types, const AttentionArgs& args, cudaStream_t stream);
// Tensor-core variant (mma.sync, attention_mma.cu) for decode, prefill and splits: bf16/fp16 with
// act == weight, Dh in {32, 64, 128}, at most 64 query rows per item, sm80+.
// LaunchPagedAttention picks it by itself where it applies.
bool AttentionMmaSupports(KernelTypes types, const AttentionArgs& args);
cudaError_t LaunchAttentionMma(KernelTypes types, const AttentionArgs& args, cudaStream_t stream);
// Whether LaunchAttentionMma merges the flash-decoding splits inside the kernel (decode items of
// <= 16 rows, given split_counters); otherwise the partials need LaunchAttentionCombine.
bool AttentionMmaMergesSplits(const AttentionArgs& args);
// The CUDA-core kernel only (tests compare the two).
cudaError_t LaunchPagedAttentionSimt(KernelTypes types, const AttentionArgs& args,
                                     cudaStream_t stream);
// out[t, h] = sum over splits of partials, normalized. out: [T, H*Dh] act.
cudaError_t LaunchAttentionCombine(KernelTypes types, const float* partial_out,
                                   const float* partial_ml, void* out, int splits, int T, int H,
                                   int Dh, cudaStream_t stream);

// out[t, j] = silu(gate_up[t, j]) * gate_up[t, F + j].  gate_up: [T, 2F] act, out: [T, F] act.
cudaError_t LaunchSiluMul(KernelTypes types, const void* gate_up, void* out, int T, int F,
                          cudaStream_t stream);

// Whether a norm stages its weights in shared memory before the PDL wait (StageNormWeights,
// norm_row.cuh), by site: the decode GEMV's norm prologue (on by default: bs1 147.8-147.9 ->
// 149.7-149.9 tok/s, H100, 2026-12-07) and LaunchAddRmsNorm's 16-byte-vector kernel (off by
// default: the 256-wide decode step 12.62-12.67 -> 12.73-12.80 ms in the same runs,
// docs/PERFORMANCE-cuda-notes.md v16). Only on sm80+ (cp.async; below sm80 the copy would stall
// the thread). GLM_CUDA_NORM_STAGE=1 stages at both sites, =0 at neither (a benchmark switch,
// read once). Staging changes where the weights are read from, never a result bit.
// OverrideNormWeightStaging: 1 both on, 0 both off, -1 back to the default / environment
// (tests compare both paths in one process).
enum class NormStageSite { kGemvPrologue, kAddNorm };
bool NormWeightStaging(NormStageSite site);
void OverrideNormWeightStaging(int mode);

// Threads a block of LaunchAddRmsNorm's 16-byte-vector kernel (one row a block): 256, or 128
// with GLM_CUDA_NORM_THREADS=128 (read once; an A/B switch: twice the blocks an SM, each thread
// with twice as many of its row's vectors in flight). The block size orders the sum of squares
// differently, so results may differ in the last bit. OverrideNormBlockThreads: 128 or 256, or
// -1 back to the environment (tests run both in one process).
int NormBlockThreads();
void OverrideNormBlockThreads(int threads);

// Memory-bound small-M GEMM: y[M, N] = alpha * x[M, K] . w[N, K]^T, x and w in the weight type,
// y in the act type, fp32 accumulation; alpha: device scalar or null (1). For decode (M <= 4).
// Narrow shapes split K over up to 4 warps of a block (GemvSplitK); results depend on the split
// only through the fp32 summation order.
bool GemvSupports(DType weight, int M, int K);
// The split-K factor (1, 2 or 4) the GEMV launchers use when streaming `rows` weight rows of K
// elements on the current device: LaunchGemv streams N rows, LaunchGemvSiluMul 2F and
// LaunchGemvQkvRotary (H + 2 Hkv) * Dh, so each fused launcher sums exactly like the LaunchGemv
// it replaces. (Tests and benchmarks.)
int GemvSplitK(DType weight, int64_t rows, int K);
cudaError_t LaunchGemv(KernelTypes types, const void* x, const void* w, void* y, int M, int N,
                       int K, const float* alpha, cudaStream_t stream);
// Decode MLP gate/up projection with SiLU-and-multiply fused into the epilogue:
//   y[m, j] = silu(g) * u,  g = alpha * x[m] . w_gate_up[j],  u = alpha * x[m] . w_gate_up[F + j]
// x: [M, K] weight type, w_gate_up: [2F, K] weight (gate rows, then up rows), y: [M, F] act.
// Bit-identical to LaunchGemv into an act-type [M, 2F] buffer followed by LaunchSiluMul.
// Supported where GemvSupports(types.weight, M, K) holds.
// Decode GEMVs whose input is the residual add + RMSNorm of the step (LaunchGemvSiluMul and
// LaunchGemvQkvRotary take it instead of x): every block computes
//   x = LaunchAddRmsNorm's output for (residual_in, delta, post_weight, weight, eps), [M, K]
// into shared memory with the standalone kernel's arithmetic (same bits), and block 0 writes the
// updated residual to residual_out when delta is set. residual_out must not be residual_in
// (other blocks still read it): the caller alternates two residual buffers. act == weight only.
struct GemvNormIn {
  const void* residual_in = nullptr;  // [M, K] act
  const void* delta = nullptr;        // [M, K] act, or null (x = norm of residual_in)
  const void* post_weight = nullptr;  // [K] weight, or null
  const void* weight = nullptr;       // [K] weight
  void* residual_out = nullptr;       // [M, K] act (needed when delta is set)
  float eps = 1e-5f;
};
bool GemvNormSupports(KernelTypes types, int M, int K);
cudaError_t LaunchGemvSiluMul(KernelTypes types, const void* x, const void* w_gate_up, void* y,
                              int M, int F, int K, const float* alpha, cudaStream_t stream,
                              const GemvNormIn* norm = nullptr);
// Decode QKV projection with LaunchRotaryKvWrite fused into the epilogue: one warp (group) per
// adjacent column pair (2p, 2p+1) of the qkv row; x: [M, K] weight type, w_qkv: [(H + 2 Hkv) * Dh,
// K] weight, qkv: [M, (H + 2 Hkv) * Dh] act (only the q columns are written), bias / k_cache /
// v_cache / positions / slots / inv_freq / H / Hkv / Dh / rot_dim as for LaunchRotaryKvWrite with
// T = M. Bit-identical to LaunchGemv into qkv followed by LaunchRotaryKvWrite (q columns of qkv,
// the written cache slots). Supported where GemvSupports(types.weight, M, K) holds and
// types.act == types.weight (not the fp16-safe mode).
cudaError_t LaunchGemvQkvRotary(KernelTypes types, const void* x, const void* w_qkv, void* qkv,
                                int M, int K, const float* alpha, const void* bias,
                                void* k_cache, void* v_cache, const int32_t* positions,
                                const int32_t* slots, const float* inv_freq, int H, int Hkv,
                                int Dh, int rot_dim, cudaStream_t stream,
                                const GemvNormIn* norm = nullptr);

// fp16-safe GEMM inputs: out = fp16(x * s), s = 1 or the power of two that brings max|x| to
// <= 2^15 when it is larger; alpha = 1/s for the GEMM. x: [n] fp32, out: [n] fp16,
// amax_scratch: one uint32 (zeroed here), alpha: device fp32 scalar.
cudaError_t LaunchScaleToFp16(const float* x, int64_t n, void* out, uint32_t* amax_scratch,
                              float* alpha, cudaStream_t stream);

// Sampling on the device with Sampler::Sample's semantics (worker/backend/sampling/sampler.h):
// repetition penalty, the non-finite guard, greedy, temperature over the whole vocabulary, top-k
// (ties at the k-th logit kept) and top-p over the candidates sorted by (logit desc, id asc),
// weights exp((logit - max) / T) in double. A row's draw is its `uniform` (the host computes
// PhiloxUniform). One block a row.
struct SampleRowArgs {
  double uniform = 0.0;      // in [0, 1)
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;
  int32_t top_k = 0;
  float penalty = 1.0f;      // repetition penalty over context_ids[ctx_begin, ctx_begin + ctx_len)
  int32_t ctx_begin = 0;
  int32_t ctx_len = 0;
  int32_t host_only = 0;     // 1: leave the row to the host (fallback = 1)
  int32_t logprobs = 0;      // LaunchLogprobs: the row's n most likely tokens (0: none)
};
// Candidates a row sorts in shared memory. A support wider than this (top_k above it, ties at the
// k-th logit past the room, a top-p nucleus reaching past it) is sampled on the device too, by
// radix selects over fixed-point probability mass instead of the sort (argmax.cu, WideSample).
constexpr int kSampleCandidates = 1024;
// Largest vocabulary whose repetition-penalty bitmap fits the kernel's shared memory on the
// current device (about 180,000 on any GPU, as every GPU gives a block 48 KiB; more where a block may
// opt in to more). Rows with a penalty over a larger vocabulary belong to the host.
int SampleMaxPenaltyVocab();
// logits: [rows, V] fp32 (16-byte aligned when V % 4 == 0: read in vectors); args: [rows]
// (device); context_ids: the penalty scopes (device). Per row: tokens, finite (1: no NaN/Inf
// after the penalty), fallback (1: no token, the host samples this row from the logits: the
// rows marked host_only, and a wide row the mass selects could not place, which they rule out).
// with_penalty: some row has penalty != 1 (V <= SampleMaxPenaltyVocab()).
cudaError_t LaunchSample(const float* logits, int rows, int V, const SampleRowArgs* args,
                         const int32_t* context_ids, bool with_penalty, int32_t* tokens,
                         int32_t* finite, int32_t* fallback, cudaStream_t stream);

// Logprobs of the rows with args[r].logprobs = n in 1..kDeviceMaxLogprobs (worker/backend/sampling/
// logprobs.h, LogSoftmaxTop's results; logits: [rows, V] fp32, the raw ones the sampler read;
// tokens: [rows] the sampled tokens): values[r * (1 + kDeviceMaxLogprobs)] = logprob of tokens[r]
// (NaN when it is outside [0, V)), then the n best tokens' logprobs, most likely first (ties: lower
// id), with their ids in ids[r * kDeviceMaxLogprobs + i] (-1 past V entries). Other rows: untouched.
constexpr int kDeviceMaxLogprobs = 20;
cudaError_t LaunchLogprobs(const float* logits, int rows, int V, const SampleRowArgs* args,
                           const int32_t* tokens, float* values, int32_t* ids, cudaStream_t stream);

// Per logit row: token = first index of the largest value; finite = 1 when no value is NaN/Inf.
// logits: [rows, V] act; logits_f32 (may be null): [rows, V] fp32 copy; tokens, finite: [rows].
cudaError_t LaunchArgmax(DType act, const void* logits, int rows, int V, float* logits_f32,
                         int32_t* tokens, int32_t* finite, cudaStream_t stream);

// Own Hopper GEMM for decode batches (gemm_wgmma.cu; sm90a: TMA + wgmma, split-K over a
// thread-block cluster): row-major y[M, N] = x[M, K] . w[N, K]^T, all bf16, fp32 accumulation,
// for kWgmmaMinM <= M <= kWgmmaMaxM, N % 8 == 0, K % 8 == 0, K >= 128, x / w / y 16-byte aligned.
constexpr int kWgmmaMinM = 65;
constexpr int kWgmmaMaxM = 256;
// Whether the current device runs it: an sm90 GPU, a binary with sm90a code, a driver with
// cuTensorMapEncodeTiled (probed once; the first call synchronizes the device).
bool WgmmaGemmAvailable();
bool WgmmaGemmSupports(KernelTypes types, int M, int N, int K);
// A grid shape: BN columns a block (104, 128, or 144 for M <= 128), K split over `splits` blocks of
// a cluster, and `multicast` (1, 2 or 4) blocks of consecutive column tiles sharing each x slice
// (one TMA multicast per 1 / multicast of the rows); splits * multicast <= 8.
struct WgmmaPlan {
  int bn = 0;
  int splits = 1;
  int multicast = 1;
};
// Every plan the device can run for the shape, fastest first by the kernel's cost model (empty
// when none); PlanWgmmaGemm is the first ({} when none).
std::vector<WgmmaPlan> WgmmaCandidatePlans(int M, int N, int K);
WgmmaPlan PlanWgmmaGemm(int M, int N, int K);
// cudaErrorInvalidValue for a shape or plan outside the above.
cudaError_t LaunchWgmmaGemm(const void* x, const void* w, void* y, int M, int N, int K,
                            WgmmaPlan plan, cudaStream_t stream);
// The MLP's gate/up GEMM with SiLU-and-multiply in its epilogue: w_gate_up [2F, K] (gate rows,
// then up rows), y[M, F] = silu(x . gate^T) * (x . up^T), bit for bit what LaunchWgmmaGemm into a
// bf16 [M, 2F] buffer followed by LaunchSiluMul gives. plan: one for the (M, 2F, K) GEMM; F % 4 == 0.
cudaError_t LaunchWgmmaGemmSiluMul(const void* x, const void* w_gate_up, void* y, int M, int F, int K,
                                   WgmmaPlan plan, cudaStream_t stream);

// Converts n values between element types (weights upload, tests).
cudaError_t LaunchConvert(DType from, const void* in, DType to, void* out, int64_t n,
                          cudaStream_t stream);

// Reads `bytes` (a multiple of 16, buffer 16-byte aligned) through the L2 without writing them:
// evicts what the L2 held and leaves clean lines (a memset flush leaves dirty ones, which the
// next kernel then writes back to DRAM while it runs). The cuBLASLt tuner's timing flush with
// GLM_CUDA_LT_FLUSH_READ=1.
cudaError_t LaunchL2FlushRead(void* buf, size_t bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace glm
