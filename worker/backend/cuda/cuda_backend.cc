// The CUDA model runner: owns the device weights, the paged KV cache, the activation buffers,
// the cuBLAS handle and the decode CUDA graphs, and enqueues one GLM-4 step per Forward().
//
// One step (T new tokens of S sequences, R of them wanting logits), all on one stream:
//   embedding -> per layer: add+norm, QKV GEMM, bias+rotary+KV write, paged attention,
//   o_proj GEMM, add(+post-norm)+norm, gate_up GEMM, SiLU*up (decode: fused into the GEMV),
//   down GEMM
//   -> final add+norm on the R logit rows only -> LM head GEMM -> argmax + finite check.
// The step's integer inputs travel in one host-to-device copy (StepLayout); the kernels read the
// block-table stride from the device, so a decode graph captured for a padded batch size replays
// for any context lengths.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "services/core/logging.h"
#include "services/core/status_macros.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/cuda_check.h"
#include "worker/backend/cuda/gemm_lt.h"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"
#include "worker/model/safetensors.h"
#include "worker/parallel/communicator.h"
#include "worker/parallel/shard_plan.h"
#ifdef GLM_HAVE_NCCL
#include "worker/parallel/nccl_communicator.h"
#endif

namespace glm {
namespace {

using cuda::KernelTypes;

// A device allocation with its size; freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  absl::Status Allocate(int64_t bytes) {
    Reset();
    if (bytes <= 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMalloc(&ptr_, static_cast<size_t>(bytes)));
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  int64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

// Pinned host memory (the step inputs and small results).
class PinnedBuffer {
 public:
  ~PinnedBuffer() { Reset(); }
  absl::Status Allocate(int64_t bytes) {
    Reset();
    CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr_, static_cast<size_t>(bytes)));
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) CUDA_CHECK(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T>
  T* get() const { return static_cast<T*>(ptr_); }
  int64_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

struct LayerWeights {
  DeviceBuffer qkv;                  // [(H + 2 Hkv) * Dh, D]  q_proj; k_proj; v_proj rows
  DeviceBuffer qkv_bias;             // [(H + 2 Hkv) * Dh]     (empty without attention_bias)
  DeviceBuffer o_proj;               // [D, H * Dh]
  DeviceBuffer gate_up;              // [2F, D]
  DeviceBuffer down;                 // [D, F]
  DeviceBuffer input_norm;           // [D]
  DeviceBuffer post_attention_norm;  // [D]
  DeviceBuffer post_self_attn_norm;  // [D] (Glm4 only)
  DeviceBuffer post_mlp_norm;        // [D] (Glm4 only)
};

// Where each of a step's integer inputs lies in the step buffer (offsets in int32 units), for
// capacities of `tokens` tokens and `seqs` sequences. Block tables come last, packed with the
// step's own stride, so the copy is only as long as the step needs.
struct StepLayout {
  int tokens = 0, seqs = 0;
  int64_t token_ids() const { return 0; }
  int64_t positions() const { return tokens; }
  int64_t slots() const { return 2LL * tokens; }
  int64_t item_seq() const { return 3LL * tokens; }
  int64_t item_token() const { return 4LL * tokens; }
  int64_t seq_qstart() const { return 5LL * tokens; }                 // [seqs + 1]
  int64_t seq_context() const { return 5LL * tokens + seqs + 1; }     // [seqs]
  int64_t logit_rows() const { return 5LL * tokens + 2LL * seqs + 1; }  // [seqs]
  int64_t meta() const { return 5LL * tokens + 3LL * seqs + 1; }      // [4]: bt_stride
  int64_t block_tables() const { return 5LL * tokens + 3LL * seqs + 5; }
};

// Decode CUDA-graph batch sizes: a step of S sequences replays the smallest one >= S (padded
// rows cost GEMM time, so above 16 they are 16-32 apart, at most 33% padding above 32, instead of
// up to 50% with powers of two).
constexpr std::array<int, 17> kGraphBatchSizes = {1,  2,  4,  8,   16,  24,  32,  48, 64,
                                                  80, 96, 112, 128, 160, 192, 224, 256};
constexpr int kMaxDecodeSplits = 32;
// Decode attention blocks per SM that the flash-decoding split aims at: 2, measured best for both
// kernels (H100, 256 x (512/256): decode step 14.0 ms with 2, 15.6 with 4, 15.4 with 6 for the
// tensor-core kernel, docs/PERFORMANCE-cuda-notes.md v5). The tensor-core kernel lowers the count
// further per sequence for short contexts (AttentionArgs::min_tiles_per_split).
constexpr int kDecodeBlocksPerSm = 2;
constexpr int64_t kCublasWorkspaceBytes = 32LL << 20;
constexpr int64_t kKvReserveBytes = 256LL << 20;  // graphs, cuBLAS internals, fragmentation

// Fewest 64-key tiles per flash-decoding split of the tensor-core attention (4 measured best at
// bs1: 136.5 tok/s against 122.9 with 2 and 119.6 with 1).
int MinTilesPerSplit() {
  static const int v = cuda::PositiveEnvOr("GLM_CUDA_MIN_TILES_PER_SPLIT", 4);
  return v;
}

KernelTypes TypesFor(Precision p) {
  switch (p) {
    case Precision::kFp32: return {DType::kF32, DType::kF32};
    case Precision::kBf16: return {DType::kBF16, DType::kBF16};
    case Precision::kFp16: return {DType::kF16, DType::kF16};
    case Precision::kFp16Safe: return {DType::kF32, DType::kF16};
  }
  return {DType::kF32, DType::kF32};
}

class CudaBackend : public Backend {
 public:
  ~CudaBackend() override {
    MaybeReportProfile(false);
    if (prof_start_ != nullptr) CUDA_CHECK(cudaEventDestroy(prof_start_));
    if (prof_stop_ != nullptr) CUDA_CHECK(cudaEventDestroy(prof_stop_));
    for (auto& [size, exec] : graphs_) CUDA_CHECK(cudaGraphExecDestroy(exec));
    lt_tuner_.reset();
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr && owns_stream_) CUDA_CHECK(cudaStreamDestroy(stream_));
  }

  std::string Name() const override { return "cuda"; }
  const ModelConfig& config() const override { return config_; }

  absl::Status Load(const ModelConfig& config, const Checkpoint& checkpoint,
                    const LoadOptions& options) override;
  int64_t KvBytesPerBlock(int32_t block_size) const override {
    return config_.num_hidden_layers * 2LL * block_size * layout_.kv_heads *
           config_.head_dim * DTypeSize(types_.weight);
  }
  absl::Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override;
  absl::Status Forward(const StepBatch& batch, std::vector<float>* logits) override;
  absl::Status ForwardGreedy(const StepBatch& batch, std::vector<int32_t>* token_ids,
                             std::vector<uint8_t>* finite) override;
  absl::Status ForwardSample(const StepBatch& batch, std::span<const RowSampling> rows,
                             std::vector<int32_t>* token_ids, std::vector<uint8_t>* finite,
                             std::vector<RowLogprobs>* logprobs) override;
  MemoryReport Memory() const override;
  int64_t KvBlocksThatFit(int32_t block_size) const override;
  absl::Status WarmUp(int32_t max_num_seqs) override;

 private:
  absl::Status UploadTensor(const Checkpoint& ckpt, const std::string& name,
                            const std::vector<int64_t>& shape, DeviceBuffer* dst,
                            int64_t dst_offset_elems, bool allocate);
  // Tensor parallelism: this rank's slices of `name` (ReadShard, fp32 on the host), converted
  // and uploaded; allocate: at least alloc_elems elements, the rest zero (vocab padding).
  absl::Status UploadShard(const Checkpoint& ckpt, const ShardPlan& plan, const std::string& name,
                           DeviceBuffer* dst, int64_t dst_offset_elems, bool allocate,
                           int64_t alloc_elems = 0);
  absl::Status AllocateActivations(int tokens, int seqs);
  absl::Status Validate(const StepBatch& batch) const;
  // Fills the pinned step inputs for `layout` and copies them to the device.
  absl::Status StageInputs(const StepBatch& batch, const StepLayout& layout, int padded_seqs,
                           int tokens_per_item, int* num_items);
  absl::Status EnqueueForward(const StepLayout& layout, int T, int S, int R, int num_items,
                              int tokens_per_item, int splits, bool write_f32_logits);
  absl::Status Gemm(const void* x, int M, int N, int K, const DeviceBuffer& w, void* y);
  absl::Status RunStep(const StepBatch& batch, bool want_logits);
  int DecodeSplits(int seqs) const;
  void NotePeak();

  ModelConfig config_;
  LoadOptions options_;
  KernelTypes types_;
  int device_ = 0;
  int sm_count_ = 0;
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = true;  // false: the NCCL communicator's stream
  cublasHandle_t cublas_ = nullptr;
  // cuBLASLt GEMMs with the measured-best algorithm for M in (4, 512] (decode buckets, small
  // mixed steps); same stream and workspace as cublas_. Null with GLM_CUDA_LT_TUNE=0.
  std::unique_ptr<LtGemmTuner> lt_tuner_;
  // The own decode GEMM (gemm_wgmma.cu), see Gemm and WgmmaChoice: 0 off, 1 where it times
  // faster than cuBLASLt, 2 always, with its cost model's plan (tests, A/B runs).
  int wgmma_mode_ = 0;
  absl::StatusOr<cuda::WgmmaPlan> WgmmaChoice(const void* x, const void* w, void* y, int M, int N, int K);

  // Tensor parallelism (LoadOptions::comm set, worker/parallel/shard_plan.h's recipe): the
  // collectives run on stream_ (the NCCL communicator's). layout_ holds the local head, kv head,
  // ffn and vocab sizes; without a communicator it is the whole model (tp = 1).
  Communicator* comm_ = nullptr;
  TpLayout layout_;
  DeviceBuffer tp_logits_f32_;  // [S, Vp] fp32 local logits (act != fp32)
  DeviceBuffer tp_gathered_;    // [tp, S, Vp] fp32 every rank's logits

  DeviceBuffer embed_;       // [V, D] (TP: [Vp, D], vocab_per_rank rows, padding rows 0)
  DeviceBuffer final_norm_;  // [D]
  DeviceBuffer lm_head_;     // [V, D] (empty when tied to embed_)
  std::vector<LayerWeights> layers_;
  DeviceBuffer inv_freq_;    // [rot_dim / 2] fp32
  int64_t weight_bytes_ = 0;

  // Activations, for capacity act_tokens_ tokens / act_seqs_ sequences.
  int act_tokens_ = 0, act_seqs_ = 0;
  DeviceBuffer residual_;     // [T, D] act: the residual stream
  DeviceBuffer residual2_;    // [T, D] act: its other half when decode GEMVs fuse the norm
  DeviceBuffer delta_;        // [T, D] act: o_proj / down_proj outputs, added by the next norm
  DeviceBuffer normed_;       // [T, D] act: norm outputs (GEMM inputs)
  DeviceBuffer qkv_;          // [T, (H + 2 Hkv) * Dh] act
  DeviceBuffer attn_;         // [T, H * Dh] act
  DeviceBuffer gate_up_;      // [T, 2F] act
  DeviceBuffer mlp_;          // [T, F] act
  DeviceBuffer gemm_in_;      // [T, max(D, H*Dh, F)] fp16 (fp16-safe: scaled GEMM inputs)
  DeviceBuffer partial_out_;  // [partial_rows, H, Dh] fp32 (flash-decoding partials)
  DeviceBuffer partial_ml_;   // [partial_rows, H, 2] fp32
  DeviceBuffer split_counters_;  // [decode items, Hkv] int32, see cuda::AttentionArgs
  int64_t partial_rows_ = 0;  // splits * T capacity
  DeviceBuffer logits_act_;   // [S, V] act
  DeviceBuffer logits_f32_;   // [S, V] fp32
  DeviceBuffer sampled_;      // [3, S] int32: tokens, finite flags, host-fallback flags
  DeviceBuffer sample_args_;  // [S] cuda::SampleRowArgs
  DeviceBuffer sample_ctx_;   // penalty scopes (context ids), grown on demand
  DeviceBuffer logprob_vals_;  // [S, 1 + kDeviceMaxLogprobs] fp32, see cuda::LaunchLogprobs
  DeviceBuffer logprob_ids_;   // [S, kDeviceMaxLogprobs] int32
  DeviceBuffer scalars_;      // fp32 [alpha, one, zero] + uint32 amax
  DeviceBuffer cublas_workspace_;
  int64_t activation_bytes_ = 0;

  // KV cache.
  int32_t num_blocks_ = 0, block_size_ = 0, max_blocks_per_seq_ = 0;
  DeviceBuffer k_cache_;  // [L, num_blocks, block_size, Hkv, Dh] weight
  DeviceBuffer v_cache_;
  DeviceBuffer step_dev_;     // step inputs, int32
  PinnedBuffer step_host_;
  PinnedBuffer sampled_host_;  // [3, S] int32
  PinnedBuffer sample_args_host_;  // [S] cuda::SampleRowArgs
  PinnedBuffer sample_ctx_host_;
  PinnedBuffer logprob_vals_host_;
  PinnedBuffer logprob_ids_host_;
  Sampler host_sampler_;           // rows the device sampler leaves to the host
  std::vector<float> host_row_;    // [V] one such row's logits
  std::vector<float> host_raw_row_;  // [V] the same before the sampler processes it (logprobs)
  int64_t step_capacity_ints_ = 0;

  // GLM_CUDA_PROFILE=1 (read at every step): steps run eagerly with an event pair around each
  // phase; the totals are logged and cleared at the first step after it is unset.
  absl::Status Phase(const char* name, const std::function<absl::Status()>& fn);
  void MaybeReportProfile(bool profiling_now);
  bool profiling_ = false;
  const char* profile_kind_ = "";
  cudaEvent_t prof_start_ = nullptr, prof_stop_ = nullptr;
  std::map<std::string, std::pair<double, int64_t>> profile_;  // phase -> (ms, calls)
  int64_t profile_steps_ = 0;

  std::map<int, cudaGraphExec_t> graphs_;  // padded decode batch size -> graph
  // GLM_CUDA_GRAPH_EDGES (read at Load; launch.cuh's GraphEdgeMode): the decode graphs'
  // programmatic edges fire at their upstream kernel's launch completion. An A/B switch.
  cuda::GraphEdgeMode graph_edge_mode_ = cuda::GraphEdgeMode::kOff;
  int64_t graph_edges_rewritten_ = 0;
  // `graph` with graph_edge_mode_'s edges rewritten (on a clone) and instantiated; null, with a
  // warning, where the runtime refuses either step (the caller then instantiates `graph` as captured).
  cudaGraphExec_t InstantiateWithEarlyEdges(cudaGraph_t graph, int bucket);
  int64_t peak_used_ = 0;
};

absl::Status CudaBackend::UploadTensor(const Checkpoint& ckpt, const std::string& name,
                                       const std::vector<int64_t>& shape, DeviceBuffer* dst,
                                       int64_t dst_offset_elems, bool allocate) {
  ASSIGN_OR_RETURN(const TensorView* t, ckpt.Get(name, shape));
  const int64_t n = t->numel();
  const int64_t elem = DTypeSize(types_.weight);
  if (allocate) {
    RETURN_IF_ERROR(dst->Allocate(n * elem));
    weight_bytes_ += n * elem;
  }
  char* out = dst->get<char>() + dst_offset_elems * elem;
  if (t->dtype == types_.weight) {
    CUDA_RETURN_IF_ERROR(cudaMemcpy(out, t->data, t->nbytes, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  // Convert on the device: raw bytes to a scratch buffer, then one conversion kernel.
  DeviceBuffer scratch;
  RETURN_IF_ERROR(scratch.Allocate(static_cast<int64_t>(t->nbytes)));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(scratch.get(), t->data, t->nbytes, cudaMemcpyHostToDevice));
  CUDA_RETURN_IF_ERROR(cuda::LaunchConvert(t->dtype, scratch.get(), types_.weight, out, n, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::UploadShard(const Checkpoint& ckpt, const ShardPlan& plan,
                                      const std::string& name, DeviceBuffer* dst,
                                      int64_t dst_offset_elems, bool allocate,
                                      int64_t alloc_elems) {
  const TensorShard* shard = plan.Find(name);
  if (shard == nullptr) {
    return absl::NotFoundError(absl::StrFormat("tensor %s is not in the shard plan", name));
  }
  std::vector<float> host;
  RETURN_IF_ERROR(ReadShard(ckpt, *shard, &host));
  const int64_t n = static_cast<int64_t>(host.size());
  const int64_t elem = DTypeSize(types_.weight);
  if (allocate) {
    const int64_t total = std::max(n, alloc_elems);
    RETURN_IF_ERROR(dst->Allocate(total * elem));
    weight_bytes_ += total * elem;
    if (total > n) CUDA_RETURN_IF_ERROR(cudaMemset(dst->get(), 0, total * elem));
  }
  char* out = dst->get<char>() + dst_offset_elems * elem;
  if (types_.weight == DType::kF32) {
    CUDA_RETURN_IF_ERROR(cudaMemcpy(out, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  DeviceBuffer scratch;
  RETURN_IF_ERROR(scratch.Allocate(n * static_cast<int64_t>(sizeof(float))));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(scratch.get(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_RETURN_IF_ERROR(cuda::LaunchConvert(DType::kF32, scratch.get(), types_.weight, out, n, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Load(const ModelConfig& config, const Checkpoint& checkpoint,
                               const LoadOptions& options) {
  if (options.comm == nullptr && options.tp_size != 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tp_size=%d needs a communicator (LoadOptions::comm, an NCCL one for the CUDA backend)",
        options.tp_size));
  }
#ifdef GLM_HAVE_NCCL
  NcclCommunicator* nccl = nullptr;
#endif
  if (options.comm != nullptr) {
#ifndef GLM_HAVE_NCCL
    return absl::UnimplementedError(
        "tensor parallelism on the CUDA backend needs NCCL: this build has none");
#else
    if (options.comm->Name() != "nccl") {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the CUDA backend needs an NCCL communicator (device buffers), got '%s'",
          options.comm->Name()));
    }
    nccl = static_cast<NcclCommunicator*>(options.comm);
    if (nccl->rank() != options.tp_rank || nccl->size() != options.tp_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "LoadOptions says rank %d of %d, the communicator rank %d of %d", options.tp_rank,
          options.tp_size, nccl->rank(), nccl->size()));
    }
#endif
  }
  if (config.hidden_act != "silu") {
    return absl::InvalidArgumentError(
        absl::StrFormat("hidden_act '%s' is not supported (GLM-4 uses silu)", config.hidden_act));
  }
  if (config.head_dim != 16 && config.head_dim != 32 && config.head_dim != 64 &&
      config.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "head_dim %d is not supported by the CUDA attention kernels (16, 32, 64 or 128)",
        config.head_dim));
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0 ||
      config.num_attention_heads / config.num_key_value_heads > 64) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d query heads over %d KV heads: the CUDA backend needs a whole group of at most 64",
        config.num_attention_heads, config.num_key_value_heads));
  }
  if (config.hidden_size > 12288) {
    return absl::InvalidArgumentError("hidden_size above 12288 is not supported by the norms");
  }
  config_ = config;
  options_ = options;
  device_ = options.device;
  types_ = TypesFor(options.precision);
  ASSIGN_OR_RETURN(GpuInfo gpu, ProbeGpu(device_));
  sm_count_ = gpu.sm_count;
  {
    // Programmatic dependent launch (sm90+) for the own kernels; GLM_CUDA_PDL=0 turns it off.
    const bool pdl = gpu.compute_major >= 9 && cuda::EnvSwitchOn("GLM_CUDA_PDL");
    cuda::SetProgrammaticLaunch(pdl);
    GLM_LOG(INFO) << "cuda backend: programmatic dependent launch "
                  << (pdl ? "on" : (gpu.compute_major >= 9 ? "off (GLM_CUDA_PDL=0)" : "off (needs sm90+)"));
    graph_edge_mode_ = pdl ? cuda::GraphEdgeModeFromEnv() : cuda::GraphEdgeMode::kOff;
    if (graph_edge_mode_ == cuda::GraphEdgeMode::kForeignUpstream) cuda::SetNoteOwnKernels(true);
    if (graph_edge_mode_ != cuda::GraphEdgeMode::kOff) {
      GLM_LOG(INFO) << "cuda backend: decode-graph programmatic edges fire at launch completion of "
                    << (graph_edge_mode_ == cuda::GraphEdgeMode::kAll ? "every upstream kernel"
                                                                      : "cuBLAS upstream kernels")
                    << " (GLM_CUDA_GRAPH_EDGES)";
    }
  }
  if (options.precision == Precision::kBf16 && !gpu.supports_bf16()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "precision bf16 needs sm80+, this GPU is sm%d%d (%s): start with --precision=fp32 or "
        "--precision=fp16-safe",
        gpu.compute_major, gpu.compute_minor, gpu.name));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  std::optional<ShardPlan> plan;
  layout_ = TpLayout{};
  layout_.heads = config.num_attention_heads;
  layout_.kv_heads = config.num_key_value_heads;
  layout_.ffn = config.intermediate_size;
  layout_.vocab_per_rank = layout_.vocab = config.vocab_size;
  if (options.comm != nullptr) {
    ASSIGN_OR_RETURN(plan, MakeShardPlan(config, options.tp_rank, options.tp_size));
    layout_ = plan->layout;
    comm_ = options.comm;
  }
#ifdef GLM_HAVE_NCCL
  if (nccl != nullptr) {
    stream_ = nccl->stream();  // the collectives and the kernels share one stream
    owns_stream_ = false;
  }
#endif
  if (owns_stream_) CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));

  const int64_t V = config.vocab_size, D = config.hidden_size, Dh = config.head_dim;
  const int64_t F = layout_.ffn;
  const int64_t Q = layout_.heads * Dh, KV = layout_.kv_heads * Dh;
  // Without a plan: the whole tensors, exactly as before tensor parallelism.
  auto upload = [&](const std::string& name, const std::vector<int64_t>& shape, DeviceBuffer* dst,
                    int64_t offset, bool allocate) {
    return plan ? UploadShard(checkpoint, *plan, name, dst, offset, allocate)
                : UploadTensor(checkpoint, name, shape, dst, offset, allocate);
  };
  if (plan) {
    RETURN_IF_ERROR(UploadShard(checkpoint, *plan, "model.embed_tokens.weight", &embed_, 0, true,
                                layout_.vocab_per_rank * D));
  } else {
    RETURN_IF_ERROR(UploadTensor(checkpoint, "model.embed_tokens.weight", {V, D}, &embed_, 0, true));
  }
  layers_ = std::vector<LayerWeights>(config.num_hidden_layers);
  const int64_t elem = DTypeSize(types_.weight);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrFormat("model.layers.%d.", l);
    LayerWeights& w = layers_[l];
    RETURN_IF_ERROR(w.qkv.Allocate((Q + 2 * KV) * D * elem));
    weight_bytes_ += w.qkv.bytes();
    RETURN_IF_ERROR(upload(p + "self_attn.q_proj.weight", {Q, D}, &w.qkv, 0, false));
    RETURN_IF_ERROR(upload(p + "self_attn.k_proj.weight", {KV, D}, &w.qkv, Q * D, false));
    RETURN_IF_ERROR(upload(p + "self_attn.v_proj.weight", {KV, D}, &w.qkv, (Q + KV) * D, false));
    if (config.attention_bias) {
      RETURN_IF_ERROR(w.qkv_bias.Allocate((Q + 2 * KV) * elem));
      weight_bytes_ += w.qkv_bias.bytes();
      RETURN_IF_ERROR(upload(p + "self_attn.q_proj.bias", {Q}, &w.qkv_bias, 0, false));
      RETURN_IF_ERROR(upload(p + "self_attn.k_proj.bias", {KV}, &w.qkv_bias, Q, false));
      RETURN_IF_ERROR(upload(p + "self_attn.v_proj.bias", {KV}, &w.qkv_bias, Q + KV, false));
    }
    RETURN_IF_ERROR(upload(p + "self_attn.o_proj.weight", {D, Q}, &w.o_proj, 0, true));
    RETURN_IF_ERROR(upload(p + "mlp.gate_up_proj.weight", {2 * F, D}, &w.gate_up, 0, true));
    RETURN_IF_ERROR(upload(p + "mlp.down_proj.weight", {D, F}, &w.down, 0, true));
    RETURN_IF_ERROR(upload(p + "input_layernorm.weight", {D}, &w.input_norm, 0, true));
    RETURN_IF_ERROR(upload(p + "post_attention_layernorm.weight", {D}, &w.post_attention_norm, 0, true));
    if (config.has_post_norms()) {
      RETURN_IF_ERROR(upload(p + "post_self_attn_layernorm.weight", {D}, &w.post_self_attn_norm, 0, true));
      RETURN_IF_ERROR(upload(p + "post_mlp_layernorm.weight", {D}, &w.post_mlp_norm, 0, true));
    }
  }
  RETURN_IF_ERROR(upload("model.norm.weight", {D}, &final_norm_, 0, true));
  if (!config.tie_word_embeddings || checkpoint.Has("lm_head.weight")) {
    if (!plan) {
      RETURN_IF_ERROR(UploadTensor(checkpoint, "lm_head.weight", {V, D}, &lm_head_, 0, true));
    } else if (!config.tie_word_embeddings || plan->Find("lm_head.weight") != nullptr) {
      RETURN_IF_ERROR(UploadShard(checkpoint, *plan, "lm_head.weight", &lm_head_, 0, true,
                                  layout_.vocab_per_rank * D));
    }
  }

  const int rot = static_cast<int>(config.rotary_dim());
  std::vector<float> inv_freq(std::max(rot / 2, 1));
  for (int i = 0; i < rot / 2; ++i) {
    inv_freq[i] = 1.0f / std::pow(static_cast<float>(config.rope_theta),
                                  static_cast<float>(2 * i) / static_cast<float>(rot));
  }
  RETURN_IF_ERROR(inv_freq_.Allocate(inv_freq.size() * sizeof(float)));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(inv_freq_.get(), inv_freq.data(), inv_freq.size() * sizeof(float),
                                  cudaMemcpyHostToDevice));

  RETURN_IF_ERROR(cublas_workspace_.Allocate(kCublasWorkspaceBytes));
  CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_.get(), kCublasWorkspaceBytes));
  if (LtGemmTuner::EnabledByEnv()) {
    ASSIGN_OR_RETURN(lt_tuner_, LtGemmTuner::Create(cublas_workspace_.get(), kCublasWorkspaceBytes));
  }
  // The own decode GEMM (bf16, sm90): opt-in with GLM_CUDA_WGMMA=1 (docs/PERFORMANCE-cuda-notes.md,
  // v17-v18), per shape where it times faster than cuBLASLt.
  const int wgmma = cuda::PositiveEnvOr("GLM_CUDA_WGMMA", 0);
  wgmma_mode_ = types_.act == DType::kBF16 && types_.weight == DType::kBF16 && gpu.compute_major == 9 &&
                        (wgmma == 1 || wgmma == 2) && cuda::WgmmaGemmAvailable()
                    ? wgmma
                    : 0;
  GLM_LOG(INFO) << "cuda backend: wgmma decode GEMM (M " << cuda::kWgmmaMinM << "-" << cuda::kWgmmaMaxM << ") "
                << (wgmma_mode_ == 0 ? "off" : wgmma_mode_ == 1 ? "on where faster" : "on");
  RETURN_IF_ERROR(scalars_.Allocate(64));
  const float host_scalars[4] = {1.f, 1.f, 0.f, 0.f};  // alpha, one, zero, amax bits
  CUDA_RETURN_IF_ERROR(cudaMemcpy(scalars_.get(), host_scalars, sizeof(host_scalars), cudaMemcpyHostToDevice));
  RETURN_IF_ERROR(AllocateActivations(std::max({options.max_num_tokens, options.max_num_seqs, 256}),
                                      std::max(options.max_num_seqs, 256)));
  NotePeak();
  GLM_LOG(INFO) << "cuda backend: " << gpu.name << " sm" << gpu.compute_major << gpu.compute_minor
                << ", " << PrecisionName(options.precision)
                << (comm_ ? absl::StrFormat(", tensor-parallel rank %d of %d over %s", layout_.rank,
                                            layout_.size, comm_->Name())
                          : std::string())
                << ", weights "
                << weight_bytes_ / (1 << 20) << " MiB, activations "
                << activation_bytes_ / (1 << 20) << " MiB";
  return absl::OkStatus();
}

int CudaBackend::DecodeSplits(int seqs) const {
  const int blocks = seqs * static_cast<int>(layout_.kv_heads);
  static const int per_sm = cuda::PositiveEnvOr("GLM_CUDA_DECODE_BLOCKS_PER_SM", kDecodeBlocksPerSm);
  const int want = (per_sm * sm_count_ + blocks - 1) / std::max(blocks, 1);
  return std::clamp(want, 1, kMaxDecodeSplits);
}

absl::Status CudaBackend::AllocateActivations(int tokens, int seqs) {
  for (auto& [size, exec] : graphs_) CUDA_CHECK(cudaGraphExecDestroy(exec));
  graphs_.clear();  // they point at the old buffers
  const int64_t D = config_.hidden_size, F = layout_.ffn, V = config_.vocab_size;
  const int64_t Vp = layout_.vocab_per_rank, H = layout_.heads;
  const int64_t Q = H * config_.head_dim, KV = layout_.kv_heads * config_.head_dim;
  const int64_t act = DTypeSize(types_.act);
  const int64_t T = tokens, S = seqs;
  RETURN_IF_ERROR(residual_.Allocate(T * D * act));
  // Decode steps that fuse the add+norm into the GEMVs alternate two residual buffers; they
  // have at most 4 tokens.
  RETURN_IF_ERROR(residual2_.Allocate(std::min<int64_t>(T, 4) * D * act));
  RETURN_IF_ERROR(delta_.Allocate(T * D * act));
  RETURN_IF_ERROR(normed_.Allocate(T * D * act));
  RETURN_IF_ERROR(qkv_.Allocate(T * (Q + 2 * KV) * act));
  RETURN_IF_ERROR(attn_.Allocate(T * Q * act));
  RETURN_IF_ERROR(gate_up_.Allocate(T * 2 * F * act));
  RETURN_IF_ERROR(mlp_.Allocate(T * F * act));
  if (types_.act != types_.weight) {
    RETURN_IF_ERROR(gemm_in_.Allocate(T * std::max({D, Q, F}) * DTypeSize(types_.weight)));
  }
  partial_rows_ = 0;
  for (int b : kGraphBatchSizes) partial_rows_ = std::max<int64_t>(partial_rows_, int64_t{b} * DecodeSplits(b));
  partial_rows_ = std::max<int64_t>(partial_rows_, 2 * S);
  RETURN_IF_ERROR(partial_out_.Allocate(partial_rows_ * Q * sizeof(float)));
  RETURN_IF_ERROR(partial_ml_.Allocate(partial_rows_ * H * 2 * sizeof(float)));
  // One counter per (decode item, KV head) for the in-kernel flash-decoding combine; zero here,
  // and every attention launch leaves them zero. Decode items are sequences (graph-padded).
  const int64_t counters = std::max<int64_t>(S, kGraphBatchSizes.back()) * layout_.kv_heads;
  RETURN_IF_ERROR(split_counters_.Allocate(counters * sizeof(int32_t)));
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(split_counters_.get(), 0, split_counters_.bytes(), stream_));
  RETURN_IF_ERROR(logits_act_.Allocate(S * Vp * act));
  RETURN_IF_ERROR(logits_f32_.Allocate(S * V * sizeof(float)));
  if (comm_ != nullptr) {
    if (types_.act != DType::kF32) RETURN_IF_ERROR(tp_logits_f32_.Allocate(S * Vp * sizeof(float)));
    RETURN_IF_ERROR(tp_gathered_.Allocate(layout_.size * S * Vp * int64_t{sizeof(float)}));
#ifdef GLM_HAVE_NCCL
    // 16-bit all-reduces go through an fp32 scratch of the largest one ([T, D]): grown now.
    if (types_.act != DType::kF32) {
      RETURN_IF_ERROR(static_cast<NcclCommunicator*>(comm_)->ReserveScratch(T * D));
    }
#endif
  }
  RETURN_IF_ERROR(sampled_.Allocate(3 * S * sizeof(int32_t)));
  RETURN_IF_ERROR(sampled_host_.Allocate(3 * S * sizeof(int32_t)));
  RETURN_IF_ERROR(sample_args_.Allocate(S * sizeof(cuda::SampleRowArgs)));
  RETURN_IF_ERROR(sample_args_host_.Allocate(S * sizeof(cuda::SampleRowArgs)));
  RETURN_IF_ERROR(logprob_vals_.Allocate(S * (1 + cuda::kDeviceMaxLogprobs) * sizeof(float)));
  RETURN_IF_ERROR(logprob_vals_host_.Allocate(S * (1 + cuda::kDeviceMaxLogprobs) * sizeof(float)));
  RETURN_IF_ERROR(logprob_ids_.Allocate(S * cuda::kDeviceMaxLogprobs * sizeof(int32_t)));
  RETURN_IF_ERROR(logprob_ids_host_.Allocate(S * cuda::kDeviceMaxLogprobs * sizeof(int32_t)));
  act_tokens_ = tokens;
  act_seqs_ = seqs;
  activation_bytes_ = (lt_tuner_ ? static_cast<int64_t>(lt_tuner_->device_bytes()) : 0) +
                      residual_.bytes() + residual2_.bytes() + delta_.bytes() + normed_.bytes() + qkv_.bytes() +
                      attn_.bytes() + gate_up_.bytes() + mlp_.bytes() + gemm_in_.bytes() +
                      partial_out_.bytes() + partial_ml_.bytes() + split_counters_.bytes() +
                      logits_act_.bytes() +
                      logits_f32_.bytes() + sampled_.bytes() + sample_args_.bytes() + logprob_vals_.bytes() +
                      logprob_ids_.bytes() + cublas_workspace_.bytes() +
                      scalars_.bytes() + tp_logits_f32_.bytes() + tp_gathered_.bytes();
  return absl::OkStatus();
}

absl::Status CudaBackend::AllocateKvCache(int32_t num_blocks, int32_t block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV cache of %d blocks of %d tokens: both must be positive", num_blocks, block_size));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  for (auto& [size, exec] : graphs_) CUDA_CHECK(cudaGraphExecDestroy(exec));
  graphs_.clear();
  k_cache_.Reset();
  v_cache_.Reset();
  const int64_t half = KvBytesPerBlock(block_size) / 2 * num_blocks;
  absl::Status st = k_cache_.Allocate(half);
  if (st.ok()) st = v_cache_.Allocate(half);
  if (!st.ok()) {
    k_cache_.Reset();
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV cache of %d blocks (%d MiB) does not fit on the GPU: %s; lower --gpu-memory-utilization "
        "or the block count (KvBlocksThatFit says %d)",
        num_blocks, 2 * half >> 20, st.message(), KvBlocksThatFit(block_size)));
  }
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  const int64_t max_len = config_.max_position_embeddings > 0 ? config_.max_position_embeddings : 32768;
  max_blocks_per_seq_ = static_cast<int32_t>((max_len + block_size - 1) / block_size);
  StepLayout cap{act_tokens_, act_seqs_};
  step_capacity_ints_ = cap.block_tables() + int64_t{act_seqs_} * max_blocks_per_seq_;
  RETURN_IF_ERROR(step_dev_.Allocate(step_capacity_ints_ * 4));
  RETURN_IF_ERROR(step_host_.Allocate(step_capacity_ints_ * 4));
  NotePeak();
  return absl::OkStatus();
}

absl::Status CudaBackend::WarmUp(int32_t max_num_seqs) {
  if (num_blocks_ == 0) return absl::FailedPreconditionError("WarmUp() before AllocateKvCache()");
  if (max_num_seqs <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("WarmUp(%d): max_num_seqs must be positive", max_num_seqs));
  }
  // With a communicator every step runs eagerly (no graphs), and every rank would have to take
  // part in the same dummy steps: nothing to warm up here.
  if (comm_ != nullptr) return absl::OkStatus();
  // GLM_CUDA_WARMUP=0: a benchmark switch (A/B against first-use costs paid while serving).
  if (!cuda::EnvSwitchOn("GLM_CUDA_WARMUP")) {
    GLM_LOG(INFO) << "cuda backend: warm-up skipped (GLM_CUDA_WARMUP=0)";
    return absl::OkStatus();
  }
  const auto start = std::chrono::steady_clock::now();
  const int most = std::min(max_num_seqs, act_seqs_);
  std::vector<int32_t> tokens;
  std::vector<uint8_t> finite;
  int captured = 0;
  // Largest first: the GEMM tuner times each M class (a power of two) at the first exact M it
  // sees and the smaller sizes of the class adopt that choice, so the class's own size (the
  // full batch it is named after) is the one it is tuned for.
  for (size_t k = kGraphBatchSizes.size(); k-- > 0;) {
    const int b = kGraphBatchSizes[k];
    const int below = k > 0 ? kGraphBatchSizes[k - 1] : 0;  // the next smaller graph size
    if (below >= most) continue;  // no step of at most `most` sequences pads to b
    if (graphs_.count(b) != 0) continue;
    // min(b, most) sequences pad to graph size b, like a real step of that many.
    const int seqs = std::min(b, most);
    StepBatch batch;
    for (int i = 0; i < seqs; ++i) batch.AddDecode(i, /*token=*/0, /*position=*/0, {0});
    RETURN_IF_ERROR(ForwardGreedy(batch, &tokens, &finite));
    captured += graphs_.count(b) != 0 ? 1 : 0;
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  GLM_LOG(INFO) << absl::StrFormat(
      "cuda backend: warmed up decode steps of up to %d sequences (%d graphs captured%s) in %.2f s",
      most, captured,
      graph_edge_mode_ == cuda::GraphEdgeMode::kOff
          ? ""
          : absl::StrFormat(", %d programmatic edges rewritten", graph_edges_rewritten_),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return absl::OkStatus();
}

cudaGraphExec_t CudaBackend::InstantiateWithEarlyEdges(cudaGraph_t graph, int bucket) {
  cudaGraph_t clone = nullptr;
  cudaGraphExec_t exec = nullptr;
  int rewritten = 0;
  cudaError_t err = cudaGraphClone(&clone, graph);
  if (err == cudaSuccess) err = cuda::RewriteProgrammaticEdges(clone, graph_edge_mode_, &rewritten);
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, clone, 0);
  if (clone != nullptr) CUDA_CHECK(cudaGraphDestroy(clone));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    GLM_LOG(WARNING) << "cuda backend: decode graph of " << bucket
                     << " sequences keeps its captured edges: the rewrite failed with "
                     << cudaGetErrorString(err);
    return nullptr;
  }
  graph_edges_rewritten_ += rewritten;
  return exec;
}

int64_t CudaBackend::KvBlocksThatFit(int32_t block_size) const {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(device_) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    return 0;
  }
  // What this process may hold in all, less what is held now (weights, activations, any KV
  // cache already allocated is counted as free again since it would be replaced).
  const int64_t held_now = static_cast<int64_t>(total_bytes - free_bytes) - k_cache_.bytes() - v_cache_.bytes();
  const int64_t max_len = config_.max_position_embeddings > 0 ? config_.max_position_embeddings : 32768;
  const StepLayout cap{act_tokens_, act_seqs_};
  const int64_t step_bytes =
      step_dev_.bytes() > 0 ? 0 : (cap.block_tables() + int64_t{act_seqs_} * ((max_len + block_size - 1) / block_size)) * 4;
  const int64_t budget = static_cast<int64_t>(options_.gpu_memory_utilization * total_bytes) -
                         held_now - kKvReserveBytes - step_bytes;
  const int64_t per_block = KvBytesPerBlock(block_size);
  return budget > 0 && per_block > 0 ? budget / per_block : 0;
}

void CudaBackend::NotePeak() {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    peak_used_ = std::max<int64_t>(peak_used_, static_cast<int64_t>(total_bytes - free_bytes));
  }
}

MemoryReport CudaBackend::Memory() const {
  MemoryReport r;
  r.weights = weight_bytes_;
  r.kv_cache = k_cache_.bytes() + v_cache_.bytes();
  r.activations = activation_bytes_ + step_dev_.bytes();
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(device_) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    r.free = static_cast<int64_t>(free_bytes);
    r.total = static_cast<int64_t>(total_bytes);
    r.peak = std::max<int64_t>(peak_used_, static_cast<int64_t>(total_bytes - free_bytes));
  }
  return r;
}

absl::Status CudaBackend::Validate(const StepBatch& batch) const {
  if (num_blocks_ == 0) return absl::FailedPreconditionError("Forward() before AllocateKvCache()");
  const int T = batch.num_tokens();
  if (T == 0 || batch.seqs.empty()) return absl::InvalidArgumentError("empty step");
  if (batch.positions.size() != batch.token_ids.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "step has %d token ids but %d positions", T, batch.positions.size()));
  }
  for (int32_t id : batch.token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d is outside the vocabulary [0, %d)", id, config_.vocab_size));
    }
  }
  int expected_offset = 0;
  for (const SequenceStep& s : batch.seqs) {
    if (s.token_offset != expected_offset || s.num_tokens <= 0 || s.context_len < s.num_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "sequence %d: tokens [%d, +%d) with context %d do not follow the previous sequence "
          "(expected offset %d)", s.seq_id, s.token_offset, s.num_tokens, s.context_len, expected_offset));
    }
    expected_offset += s.num_tokens;
    const int64_t needed = (int64_t{s.context_len} + block_size_ - 1) / block_size_;
    if (static_cast<int64_t>(s.block_table.size()) < needed || needed > max_blocks_per_seq_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "sequence %d: context %d needs %d blocks of %d, block table has %d (at most %d)", s.seq_id,
          s.context_len, needed, block_size_, s.block_table.size(), max_blocks_per_seq_));
    }
    for (int64_t b = 0; b < needed; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= num_blocks_) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "sequence %d: block id %d outside the pool [0, %d)", s.seq_id, s.block_table[b], num_blocks_));
      }
    }
    for (int i = 0; i < s.num_tokens; ++i) {
      const int32_t pos = batch.positions[s.token_offset + i];
      if (pos != s.context_len - s.num_tokens + i) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "sequence %d: token %d has position %d, expected %d (context %d, %d new)", s.seq_id, i,
            pos, s.context_len - s.num_tokens + i, s.context_len, s.num_tokens));
      }
    }
  }
  if (expected_offset != T) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sequences cover %d tokens, the step has %d", expected_offset, T));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::StageInputs(const StepBatch& batch, const StepLayout& L, int padded_seqs,
                                      int tokens_per_item, int* num_items) {
  int32_t* h = step_host_.get<int32_t>();
  const int T = batch.num_tokens();
  const int S = static_cast<int>(batch.seqs.size());
  int stride = 1;
  for (const SequenceStep& s : batch.seqs) {
    stride = std::max<int>(stride, (s.context_len + block_size_ - 1) / block_size_);
  }
  int items = 0, rows = 0;
  for (int si = 0; si < S; ++si) {
    const SequenceStep& s = batch.seqs[si];
    h[L.seq_qstart() + si] = s.token_offset;
    h[L.seq_context() + si] = s.context_len;
    int32_t* bt = h + L.block_tables() + int64_t{si} * stride;
    const int nb = (s.context_len + block_size_ - 1) / block_size_;
    std::memcpy(bt, s.block_table.data(), sizeof(int32_t) * nb);
    std::fill(bt + nb, bt + stride, 0);
    for (int i = 0; i < s.num_tokens; ++i) {
      const int t = s.token_offset + i;
      const int32_t pos = batch.positions[t];
      h[L.token_ids() + t] = batch.token_ids[t];
      h[L.positions() + t] = pos;
      h[L.slots() + t] = s.block_table[pos / block_size_] * block_size_ + pos % block_size_;
    }
    for (int tok0 = 0; tok0 < s.num_tokens; tok0 += tokens_per_item) {
      h[L.item_seq() + items] = si;
      h[L.item_token() + items] = tok0;
      ++items;
    }
    if (s.wants_logits) h[L.logit_rows() + rows++] = s.token_offset + s.num_tokens - 1;
  }
  // Padding sequences of a decode graph: one token at position 0 that writes no KV and sees
  // no context (its logits row is computed and ignored).
  for (int si = S; si < padded_seqs; ++si) {
    const int t = si;  // decode: token index == sequence index
    h[L.token_ids() + t] = 0;
    h[L.positions() + t] = 0;
    h[L.slots() + t] = -1;
    h[L.item_seq() + items] = si;
    h[L.item_token() + items] = 0;
    ++items;
    h[L.seq_qstart() + si] = t;
    h[L.seq_context() + si] = 0;
    std::fill(h + L.block_tables() + int64_t{si} * stride, h + L.block_tables() + int64_t{si + 1} * stride, 0);
    h[L.logit_rows() + rows++] = t;
  }
  const int seqs_total = std::max(S, padded_seqs);
  h[L.seq_qstart() + seqs_total] = padded_seqs > S ? padded_seqs : T;
  h[L.meta()] = stride;
  *num_items = items;
  const int64_t ints = L.block_tables() + int64_t{seqs_total} * stride;
  if (ints > step_capacity_ints_) {
    return absl::InternalError(absl::StrFormat("step inputs need %d ints, buffer holds %d", ints, step_capacity_ints_));
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(step_dev_.get(), h, ints * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Gemm(const void* x, int M, int N, int K, const DeviceBuffer& w, void* y) {
  const float* alpha_dev = nullptr;
  const void* input = x;
  float* scalars = scalars_.get<float>();
  if (types_.act != types_.weight) {  // fp16-safe: fp32 activations -> scaled fp16 GEMM input
    CUDA_RETURN_IF_ERROR(cuda::LaunchScaleToFp16(static_cast<const float*>(x), int64_t{M} * K,
                                                 gemm_in_.get(), reinterpret_cast<uint32_t*>(scalars + 3),
                                                 scalars, stream_));
    input = gemm_in_.get();
    alpha_dev = scalars;
  }
  if (cuda::GemvSupports(types_.weight, M, K)) {
    CUDA_RETURN_IF_ERROR(cuda::LaunchGemv(types_, input, w.get(), y, M, N, K, alpha_dev, stream_));
    return absl::OkStatus();
  }
  // Decode batches of 65-256 rows on an sm90 GPU (GLM_CUDA_WGMMA=1): the own wgmma GEMM where it
  // timed faster than cuBLASLt for the shape (gemm_wgmma.cu).
  ASSIGN_OR_RETURN(const cuda::WgmmaPlan plan, WgmmaChoice(input, w.get(), y, M, N, K));
  if (plan.bn > 0) {
    CUDA_RETURN_IF_ERROR(cuda::LaunchWgmmaGemm(input, w.get(), y, M, N, K, plan, stream_));
    return absl::OkStatus();
  }
  // Decode-sized M: cuBLASLt with the algorithm timed at the key's first eager call (graph
  // capture reuses it). kUnimplemented: cuBLASLt has no algorithm here, cublasGemmEx below.
  if (lt_tuner_ != nullptr && LtGemmTuner::Handles(M)) {
    const absl::Status st = lt_tuner_->Run(stream_, types_, input, w.get(), y, M, N, K, alpha_dev);
    if (st.code() != absl::StatusCode::kUnimplemented) return st;
  }
  // Row-major y[M, N] = x[M, K] . w[N, K]^T  ==  column-major y^T[N, M] = w^T . x^T.
  const float one = 1.f, zero = 0.f;
  if (alpha_dev != nullptr) CUBLAS_RETURN_IF_ERROR(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_DEVICE));
  const cublasStatus_t st = cublasGemmEx(
      cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, alpha_dev ? static_cast<const void*>(alpha_dev) : &one,
      w.get(), CudaDataType(types_.weight), K, input, CudaDataType(types_.weight), K,
      alpha_dev ? static_cast<const void*>(scalars + 2) : &zero, y, CudaDataType(types_.act), N,
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (alpha_dev != nullptr) CUBLAS_RETURN_IF_ERROR(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
  CUBLAS_RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

// {} (bn = 0: cuBLAS) unless the own GEMM is on and takes the shape and pointers; else the own
// GEMM's plans (the cost model's first kWgmmaTimedPlans) against cuBLASLt's timed choice for the
// same shape, each timed as the tuner times its candidates (L2 flushed, median); the winner holds
// for every M of the key's row-block kind. GLM_CUDA_WGMMA=2 or no tuner: the model's plan,
// untimed. While capturing an unsettled key: cuBLASLt, not remembered (settled at the next eager
// call). Choices are shared process-wide, so two backends in one process agree.
absl::StatusOr<cuda::WgmmaPlan> CudaBackend::WgmmaChoice(const void* x, const void* w, void* y, int M, int N,
                                                         int K) {
  constexpr int kWgmmaTimedPlans = 8;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (wgmma_mode_ == 0 || !cuda::WgmmaGemmSupports(types_, M, N, K) || !aligned(x) || !aligned(w) ||
      !aligned(y)) {
    return cuda::WgmmaPlan{};
  }
  // Per (device, mode, M > 128, N, K): the own GEMM's plan when it timed faster than cuBLASLt's
  // choice, else bn = 0 (cuBLASLt).
  static std::mutex shared_mu;
  static std::map<std::tuple<int, int, bool, int, int>, cuda::WgmmaPlan> shared;
  const auto shared_key = std::make_tuple(device_, wgmma_mode_, M > 128, N, K);
  {
    std::lock_guard<std::mutex> lock(shared_mu);
    auto sf = shared.find(shared_key);
    if (sf != shared.end()) return sf->second;
  }
  cuda::WgmmaPlan chosen;
  if (lt_tuner_ == nullptr || wgmma_mode_ == 2) {
    chosen = cuda::PlanWgmmaGemm(M, N, K);
  } else {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream_, &capture));
    if (capture != cudaStreamCaptureStatusNone) return cuda::WgmmaPlan{};
    auto lt = [&]() -> cudaError_t {
      return lt_tuner_->Run(stream_, types_, x, w, y, M, N, K, nullptr).ok() ? cudaSuccess : cudaErrorUnknown;
    };
    const absl::Status lt_status = lt_tuner_->Run(stream_, types_, x, w, y, M, N, K, nullptr);  // tunes
    if (!lt_status.ok() && lt_status.code() != absl::StatusCode::kUnimplemented) return lt_status;
    float best_us = std::numeric_limits<float>::infinity();
    float lt_us = best_us;
    if (lt_status.ok()) {
      ASSIGN_OR_RETURN(lt_us, lt_tuner_->TimeUs(stream_, lt));
      best_us = lt_us;
    }
    const std::vector<cuda::WgmmaPlan> plans = cuda::WgmmaCandidatePlans(M, N, K);
    std::string tried;
    for (size_t i = 0; i < plans.size() && i < kWgmmaTimedPlans; ++i) {
      const cuda::WgmmaPlan p = plans[i];
      const absl::StatusOr<float> us = lt_tuner_->TimeUs(stream_, [&] {
        return cuda::LaunchWgmmaGemm(x, w, y, M, N, K, p, stream_);
      });
      if (!us.ok()) {  // a refused launch: skipped (a fault would surface in the sync below)
        (void)cudaGetLastError();
        CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
        absl::StrAppendFormat(&tried, " %dx%dx%d refused", p.bn, p.splits, p.multicast);
        continue;
      }
      absl::StrAppendFormat(&tried, " %dx%dx%d %.1f", p.bn, p.splits, p.multicast, *us);
      if (*us < best_us) {
        best_us = *us;
        chosen = p;
      }
    }
    const std::string winner =
        chosen.bn > 0 ? absl::StrFormat("own %dx%dx%d", chosen.bn, chosen.splits, chosen.multicast)
                      : std::string("cuBLASLt");
    GLM_LOG(INFO) << absl::StrFormat(
        "wgmma GEMM M %s N %d K %d: cuBLASLt %.1f us, own (bn x splits x multicast, us)%s: %s",
        M > 128 ? "129-256" : "65-128", N, K, lt_us, tried, winner);
  }
  std::lock_guard<std::mutex> lock(shared_mu);
  return shared.emplace(shared_key, chosen).first->second;  // a concurrent backend's choice wins
}

absl::Status CudaBackend::Phase(const char* name, const std::function<absl::Status()>& fn) {
  // GLM_CUDA_DEBUG_SKIP=phase[,phase...] (or ':' between them, which device_run.sh's ab-VAR=V
  // lists leave alone): phases not run at all (wrong results, fast): what a
  // phase costs inside the decode graphs, where per-phase events cannot be placed. Benchmarks
  // of the cost attribution only; logged loudly at load.
  static const std::vector<std::string> skip = [] {
    const char* env = std::getenv("GLM_CUDA_DEBUG_SKIP");
    if (env == nullptr) return std::vector<std::string>();
    GLM_LOG(WARNING) << "GLM_CUDA_DEBUG_SKIP=" << env << ": those phases are skipped, results are wrong";
    return std::vector<std::string>(absl::StrSplit(env, absl::ByAnyChar(",:"), absl::SkipEmpty()));
  }();
  if (!skip.empty() && std::find(skip.begin(), skip.end(), name) != skip.end()) return absl::OkStatus();
  if (!profiling_) return fn();
  if (prof_start_ == nullptr) {
    CUDA_RETURN_IF_ERROR(cudaEventCreate(&prof_start_));
    CUDA_RETURN_IF_ERROR(cudaEventCreate(&prof_stop_));
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(prof_start_, stream_));
  RETURN_IF_ERROR(fn());
  CUDA_RETURN_IF_ERROR(cudaEventRecord(prof_stop_, stream_));
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(prof_stop_));
  float ms = 0.f;
  CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, prof_start_, prof_stop_));
  auto& slot = profile_[std::string(profile_kind_) + "/" + name];
  slot.first += ms;
  slot.second += 1;
  return absl::OkStatus();
}

void CudaBackend::MaybeReportProfile(bool profiling_now) {
  if (profiling_now || profile_.empty()) return;
  double total = 0;
  for (const auto& [name, v] : profile_) total += v.first;
  std::string report = absl::StrFormat("cuda profile over %d steps (ms per step, %% of phases):", profile_steps_);
  for (const auto& [name, v] : profile_) {
    report += absl::StrFormat("\n  %-28s %8.3f ms  %5.1f%%  (%d calls)", name, v.first / profile_steps_,
                              100.0 * v.first / total, v.second);
  }
  GLM_LOG(INFO) << report;
  profile_.clear();
  profile_steps_ = 0;
}

absl::Status CudaBackend::EnqueueForward(const StepLayout& L, int T, int S, int R, int num_items,
                                         int tokens_per_item, int splits, bool write_f32_logits) {
  // Local sizes (the whole model without a communicator).
  const int D = static_cast<int>(config_.hidden_size), F = static_cast<int>(layout_.ffn);
  const int V = static_cast<int>(config_.vocab_size), Vp = static_cast<int>(layout_.vocab_per_rank);
  const int H = static_cast<int>(layout_.heads), Hkv = static_cast<int>(layout_.kv_heads);
  const int Dh = static_cast<int>(config_.head_dim);
  const int QKV = (H + 2 * Hkv) * Dh;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const bool post_norms = config_.has_post_norms();
  int32_t* step = step_dev_.get<int32_t>();
  const int64_t kv_layer_elems = int64_t{num_blocks_} * block_size_ * Hkv * Dh;
  const int64_t welem = DTypeSize(types_.weight);
  // Decode steps (T <= 4) run fused GEMVs: bias + rotary + KV write in the QKV GEMV's epilogue,
  // SiLU-and-multiply in the gate/up one (each bit-identical to the unfused pair). Not in
  // fp16-safe mode, whose Gemm() scales the fp32 activations into an fp16 GEMM input first.
  const bool decode_gemv = types_.act == types_.weight && cuda::GemvSupports(types_.weight, T, D);

  // Tensor parallelism: row-parallel outputs (vocab-parallel embedding, o_proj, down_proj) are
  // summed over the group before anything else reads them (post norms, residual add).
  auto all_reduce = [&](DeviceBuffer& buf) -> absl::Status {
    if (comm_ == nullptr) return absl::OkStatus();
    return Phase("all_reduce", [&] { return comm_->AllReduceSum(buf.get(), int64_t{T} * D, types_.act); });
  };
  RETURN_IF_ERROR(Phase("embedding", [&] {
    if (comm_ != nullptr) {
      CUDA_RETURN_IF_ERROR(cuda::LaunchEmbeddingShard(
          types_, step + L.token_ids(), embed_.get(), residual_.get(), T, D,
          static_cast<int>(layout_.vocab_begin), static_cast<int>(layout_.vocab), stream_));
      return absl::OkStatus();
    }
    CUDA_RETURN_IF_ERROR(cuda::LaunchEmbedding(types_, step + L.token_ids(), embed_.get(),
                                               residual_.get(), T, D, stream_));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(all_reduce(residual_));
  // Decode steps (T <= 4) compute the residual add + RMSNorm inside the two GEMVs that read
  // it (every block normalizes the rows into shared memory, block 0 stores the new residual):
  // 80 fewer kernels a token. The residual then alternates between two buffers, `res` being the
  // current one.
  const bool fused_norm = decode_gemv && cuda::GemvNormSupports(types_, T, D);
  void* res = residual_.get();
  void* res_alt = residual2_.get();
  auto norm_in = [&](const DeviceBuffer* delta, const DeviceBuffer* post, const DeviceBuffer& weight) {
    cuda::GemvNormIn n;
    n.residual_in = res;
    n.delta = delta ? delta->get() : nullptr;
    n.post_weight = post ? post->get() : nullptr;
    n.weight = weight.get();
    n.residual_out = delta ? res_alt : nullptr;
    n.eps = eps;
    return n;
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerWeights& w = layers_[l];
    const LayerWeights* prev = l > 0 ? &layers_[l - 1] : nullptr;
    const DeviceBuffer* in_delta = prev ? &delta_ : nullptr;
    const DeviceBuffer* in_post = prev && post_norms ? &prev->post_mlp_norm : nullptr;
    if (!fused_norm) {
      RETURN_IF_ERROR(Phase("add_norm", [&] {
        CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(
            types_, res, in_delta ? in_delta->get() : nullptr, in_post ? in_post->get() : nullptr,
            w.input_norm.get(), normed_.get(), nullptr, T, D, eps, stream_));
        return absl::OkStatus();
      }));
    }
    char* k_layer = k_cache_.get<char>() + l * kv_layer_elems * welem;
    char* v_layer = v_cache_.get<char>() + l * kv_layer_elems * welem;
    if (decode_gemv) {
      const cuda::GemvNormIn nin = norm_in(in_delta, in_post, w.input_norm);
      RETURN_IF_ERROR(Phase(fused_norm ? "gemm_qkv_norm_rotary" : "gemm_qkv_rotary", [&] {
        CUDA_RETURN_IF_ERROR(cuda::LaunchGemvQkvRotary(
            types_, normed_.get(), w.qkv.get(), qkv_.get(), T, D, nullptr, w.qkv_bias.get(),
            k_layer, v_layer, step + L.positions(), step + L.slots(), inv_freq_.get<float>(), H,
            Hkv, Dh, static_cast<int>(config_.rotary_dim()), stream_, fused_norm ? &nin : nullptr));
        return absl::OkStatus();
      }));
      if (fused_norm && in_delta != nullptr) std::swap(res, res_alt);
    } else {
      RETURN_IF_ERROR(Phase("gemm_qkv", [&] { return Gemm(normed_.get(), T, QKV, D, w.qkv, qkv_.get()); }));
      RETURN_IF_ERROR(Phase("rotary_kv", [&] {
        CUDA_RETURN_IF_ERROR(cuda::LaunchRotaryKvWrite(
            types_, qkv_.get(), w.qkv_bias.get(), k_layer, v_layer, step + L.positions(),
            step + L.slots(), inv_freq_.get<float>(), T, H, Hkv, Dh,
            static_cast<int>(config_.rotary_dim()), stream_));
        return absl::OkStatus();
      }));
    }
    cuda::AttentionArgs a;
    a.q = qkv_.get();
    a.q_stride = QKV;
    a.k_cache = k_layer;
    a.v_cache = v_layer;
    a.block_tables = step + L.block_tables();
    a.bt_stride = step + L.meta();
    a.seq_qstart = step + L.seq_qstart();
    a.seq_context = step + L.seq_context();
    a.positions = step + L.positions();
    a.item_seq = step + L.item_seq();
    a.item_token = step + L.item_token();
    a.num_items = num_items;
    a.tokens_per_item = tokens_per_item;
    a.H = H;
    a.Hkv = Hkv;
    a.Dh = Dh;
    a.block_size = block_size_;
    a.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    a.splits = splits;
    a.out = attn_.get();
    a.partial_out = partial_out_.get<float>();
    a.partial_ml = partial_ml_.get<float>();
    a.T = T;
    a.split_counters = split_counters_.get<int32_t>();
    a.min_tiles_per_split = MinTilesPerSplit();
    RETURN_IF_ERROR(Phase("attention", [&] {  // flash-decoding partials merged inside
      CUDA_RETURN_IF_ERROR(cuda::LaunchPagedAttention(types_, a, stream_));
      return absl::OkStatus();
    }));
    RETURN_IF_ERROR(Phase("gemm_o", [&] { return Gemm(attn_.get(), T, D, H * Dh, w.o_proj, delta_.get()); }));
    RETURN_IF_ERROR(all_reduce(delta_));
    if (!fused_norm) {
      RETURN_IF_ERROR(Phase("add_norm", [&] {
        CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(
            types_, res, delta_.get(), post_norms ? w.post_self_attn_norm.get() : nullptr,
            w.post_attention_norm.get(), normed_.get(), nullptr, T, D, eps, stream_));
        return absl::OkStatus();
      }));
    }
    if (decode_gemv) {
      // One GEMV streams the gate and up rows and writes silu(g) * u (no gate_up round trip).
      const cuda::GemvNormIn nin =
          norm_in(&delta_, post_norms ? &w.post_self_attn_norm : nullptr, w.post_attention_norm);
      RETURN_IF_ERROR(Phase(fused_norm ? "gemm_norm_gate_up_silu" : "gemm_gate_up_silu", [&] {
        CUDA_RETURN_IF_ERROR(cuda::LaunchGemvSiluMul(types_, normed_.get(), w.gate_up.get(), mlp_.get(),
                                                     T, F, D, nullptr, stream_, fused_norm ? &nin : nullptr));
        return absl::OkStatus();
      }));
      if (fused_norm) std::swap(res, res_alt);
    } else {
      // The own GEMM, where it wins the gate/up shape, writes silu(g) * u from its epilogue.
      ASSIGN_OR_RETURN(const cuda::WgmmaPlan own,
                       WgmmaChoice(normed_.get(), w.gate_up.get(), gate_up_.get(), T, 2 * F, D));
      if (own.bn > 0) {
        RETURN_IF_ERROR(Phase("gemm_gate_up_silu", [&] {
          CUDA_RETURN_IF_ERROR(cuda::LaunchWgmmaGemmSiluMul(normed_.get(), w.gate_up.get(), mlp_.get(), T, F,
                                                            D, own, stream_));
          return absl::OkStatus();
        }));
      } else {
        RETURN_IF_ERROR(Phase("gemm_gate_up", [&] {
          return Gemm(normed_.get(), T, 2 * F, D, w.gate_up, gate_up_.get());
        }));
        RETURN_IF_ERROR(Phase("silu_mul", [&] {
          CUDA_RETURN_IF_ERROR(cuda::LaunchSiluMul(types_, gate_up_.get(), mlp_.get(), T, F, stream_));
          return absl::OkStatus();
        }));
      }
    }
    RETURN_IF_ERROR(Phase("gemm_down", [&] { return Gemm(mlp_.get(), T, D, F, w.down, delta_.get()); }));
    RETURN_IF_ERROR(all_reduce(delta_));
  }
  // Final norm and LM head on the logit rows only.
  const LayerWeights& last = layers_.back();
  RETURN_IF_ERROR(Phase("final_norm", [&] {
    CUDA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(
        types_, res, delta_.get(), post_norms ? last.post_mlp_norm.get() : nullptr,
        final_norm_.get(), normed_.get(), step + L.logit_rows(), R, D, eps, stream_));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(Phase("lm_head", [&] {
    return Gemm(normed_.get(), R, Vp, D, lm_head_.bytes() ? lm_head_ : embed_, logits_act_.get());
  }));
  int32_t* sampled = sampled_.get<int32_t>();
  if (comm_ != nullptr) {
    // Vocab-parallel head: gather every rank's [R, Vp] fp32 logits, assemble [R, V] in
    // logits_f32_ (dropping the padding columns), argmax over the assembled rows.
    RETURN_IF_ERROR(Phase("lm_head_gather", [&] {
      if (R == 0) return absl::OkStatus();
      const int64_t local_n = int64_t{R} * Vp;
      const float* local = logits_act_.get<float>();
      if (types_.act != DType::kF32) {
        CUDA_RETURN_IF_ERROR(cuda::LaunchConvert(types_.act, logits_act_.get(), DType::kF32,
                                                 tp_logits_f32_.get(), local_n, stream_));
        local = tp_logits_f32_.get<float>();
      }
      float* gathered = tp_gathered_.get<float>();
      RETURN_IF_ERROR(comm_->AllGather(local, gathered, local_n, DType::kF32));
      for (int r = 0; r < layout_.size; ++r) {
        const int64_t col0 = int64_t{r} * Vp;
        const int64_t cols = std::min<int64_t>(Vp, V - col0);
        if (cols <= 0) continue;
        CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
            logits_f32_.get<float>() + col0, size_t{sizeof(float)} * V, gathered + r * local_n,
            size_t{sizeof(float)} * Vp, sizeof(float) * cols, R, cudaMemcpyDeviceToDevice, stream_));
      }
      return absl::OkStatus();
    }));
    RETURN_IF_ERROR(Phase("argmax", [&] {
      CUDA_RETURN_IF_ERROR(cuda::LaunchArgmax(DType::kF32, logits_f32_.get(), R, V, nullptr,
                                              sampled, sampled + act_seqs_, stream_));
      return absl::OkStatus();
    }));
    (void)write_f32_logits;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(Phase("argmax", [&] {
    CUDA_RETURN_IF_ERROR(cuda::LaunchArgmax(types_.act, logits_act_.get(), R, V,
                                            write_f32_logits ? logits_f32_.get<float>() : nullptr,
                                            sampled, sampled + act_seqs_, stream_));
    return absl::OkStatus();
  }));
  (void)S;
  return absl::OkStatus();
}

absl::Status CudaBackend::RunStep(const StepBatch& batch, bool want_logits) {
  RETURN_IF_ERROR(Validate(batch));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const int T = batch.num_tokens();
  const int S = static_cast<int>(batch.seqs.size());
  const int R = batch.num_logit_rows();
  if (T > act_tokens_ || S > act_seqs_) {
    GLM_LOG(WARNING) << "cuda backend: step of " << T << " tokens / " << S
                     << " sequences exceeds the activation buffers (" << act_tokens_ << " / "
                     << act_seqs_ << "); growing them (raise LoadOptions::max_num_tokens)";
    RETURN_IF_ERROR(AllocateActivations(std::max(T, act_tokens_), std::max(S, act_seqs_)));
    StepLayout cap{act_tokens_, act_seqs_};
    step_capacity_ints_ = cap.block_tables() + int64_t{act_seqs_} * max_blocks_per_seq_;
    RETURN_IF_ERROR(step_dev_.Allocate(step_capacity_ints_ * 4));
    RETURN_IF_ERROR(step_host_.Allocate(step_capacity_ints_ * 4));
    NotePeak();
  }
  const char* prof_env = std::getenv("GLM_CUDA_PROFILE");
  const bool profiling_now = prof_env != nullptr && prof_env[0] == '1';
  MaybeReportProfile(profiling_now);
  profiling_ = profiling_now;
  bool all_decode = true;
  for (const SequenceStep& s : batch.seqs) all_decode &= s.num_tokens == 1 && s.wants_logits;
  profile_kind_ = all_decode ? (S == 1 ? "decode_bs1" : "decode_batch") : (S == 1 ? "prefill_bs1" : "mixed");
  if (profiling_) ++profile_steps_;
  const int G = static_cast<int>(layout_.heads / layout_.kv_heads);
  int bucket = 0;
  // With a communicator every step runs eagerly: no CUDA graphs (the NCCL communicator waits on
  // each collective from the host, its forward-progress watchdog).
  if (all_decode && !profiling_ && comm_ == nullptr) {
    for (int b : kGraphBatchSizes) {
      if (b >= S) { bucket = b; break; }
    }
  }
  int num_items = 0;
  if (bucket > 0) {
    const StepLayout L{bucket, bucket};
    RETURN_IF_ERROR(StageInputs(batch, L, bucket, 1, &num_items));
    const int splits = DecodeSplits(bucket);
    auto it = graphs_.find(bucket);
    if (it == graphs_.end()) {
      // First step of this size: run it eagerly (loads modules, sets kernel attributes), then
      // capture the same work for the next steps.
      RETURN_IF_ERROR(EnqueueForward(L, bucket, bucket, bucket, num_items, 1, splits, true));
      CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
      cudaGraph_t graph = nullptr;
      CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      absl::Status st = EnqueueForward(L, bucket, bucket, bucket, num_items, 1, splits, true);
      const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
      RETURN_IF_ERROR(st);
      CUDA_RETURN_IF_ERROR(end);
      cudaGraphExec_t exec = nullptr;
      if (graph_edge_mode_ != cuda::GraphEdgeMode::kOff) exec = InstantiateWithEarlyEdges(graph, bucket);
      const cudaError_t inst = exec != nullptr ? cudaSuccess : cudaGraphInstantiate(&exec, graph, 0);
      CUDA_CHECK(cudaGraphDestroy(graph));
      CUDA_RETURN_IF_ERROR(inst);
      graphs_[bucket] = exec;
      NotePeak();
    } else {
      CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
    }
  } else {
    const bool decode_only = [&] {
      for (const SequenceStep& s : batch.seqs) if (s.num_tokens != 1) return false;
      return true;
    }();
    const int tokens_per_item = decode_only ? 1 : cuda::AttentionTokensPerItem(G);
    int splits = decode_only ? DecodeSplits(S) : 1;
    while (splits > 1 && int64_t{splits} * T > partial_rows_) --splits;
    const StepLayout L{T, S};
    RETURN_IF_ERROR(StageInputs(batch, L, 0, tokens_per_item, &num_items));
    RETURN_IF_ERROR(EnqueueForward(L, T, S, R, num_items, tokens_per_item, splits, want_logits));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Forward(const StepBatch& batch, std::vector<float>* logits) {
  RETURN_IF_ERROR(RunStep(batch, true));
  const int R = batch.num_logit_rows();
  logits->resize(static_cast<size_t>(R) * config_.vocab_size);
  if (R > 0) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits->data(), logits_f32_.get(),
                                         logits->size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::ForwardGreedy(const StepBatch& batch, std::vector<int32_t>* token_ids,
                                        std::vector<uint8_t>* finite) {
  RETURN_IF_ERROR(RunStep(batch, false));
  const int R = batch.num_logit_rows();
  int32_t* host = sampled_host_.get<int32_t>();
  if (R > 0) {
    // Tokens [0, R) and finite flags [act_seqs_, act_seqs_ + R) in one copy (one copy less a
    // step: at batch 1 the step's host round trip is on the critical path).
    const int32_t* dev = sampled_.get<int32_t>();
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, dev, (act_seqs_ + R) * sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  token_ids->assign(host, host + R);
  finite->resize(R);
  for (int r = 0; r < R; ++r) (*finite)[r] = host[act_seqs_ + r] != 0;
  return absl::OkStatus();
}

absl::Status CudaBackend::ForwardSample(const StepBatch& batch, std::span<const RowSampling> rows,
                                        std::vector<int32_t>* token_ids,
                                        std::vector<uint8_t>* finite,
                                        std::vector<RowLogprobs>* logprobs) {
  static_assert(cuda::kDeviceMaxLogprobs == kMaxLogprobs, "the device logprobs hold kMaxLogprobs entries");
  RETURN_IF_ERROR(CheckSampleRows(batch, rows, logprobs));
  const int R = batch.num_logit_rows();
  if (AllPlainGreedy(rows)) return ForwardGreedy(batch, token_ids, finite);
  // GLM_CUDA_DEVICE_SAMPLING=0: a benchmark switch, every row sampled on the host from the
  // copied logits (Backend's default), for an A/B of the device sampler.
  static const bool on_device = cuda::EnvSwitchOn("GLM_CUDA_DEVICE_SAMPLING");
  if (!on_device) return Backend::ForwardSample(batch, rows, token_ids, finite, logprobs);
  RETURN_IF_ERROR(RunStep(batch, true));  // fp32 logits in logits_f32_
  const int V = config_.vocab_size;
  // Row arguments and penalty scopes: pinned, one copy each. A penalty over a vocabulary too
  // large for the kernel's bitmap leaves that row to the host.
  const bool penalty_fits = V <= cuda::SampleMaxPenaltyVocab();
  int64_t ctx_ints = 0;
  for (const RowSampling& row : rows) {
    if (row.params->repetition_penalty != 1.0f && penalty_fits) ctx_ints += row.context_ids->size();
  }
  if (ctx_ints > INT32_MAX) return absl::InvalidArgumentError("ForwardSample: penalty scopes beyond 2^31 ids");
  if (ctx_ints * 4 > sample_ctx_.bytes()) {
    const int64_t bytes = std::max<int64_t>(ctx_ints * 4, 2 * sample_ctx_.bytes());
    RETURN_IF_ERROR(sample_ctx_.Allocate(bytes));
    RETURN_IF_ERROR(sample_ctx_host_.Allocate(bytes));
  }
  auto* args = sample_args_host_.get<cuda::SampleRowArgs>();
  int32_t* ctx = sample_ctx_host_.get<int32_t>();
  int32_t ctx_used = 0;
  bool with_penalty = false;
  bool with_logprobs = false;
  for (int r = 0; r < R; ++r) {
    const SamplingParams& sp = *rows[r].params;
    cuda::SampleRowArgs& a = args[r];
    a = cuda::SampleRowArgs{};
    a.uniform = PhiloxUniform(sp.seed, static_cast<uint64_t>(rows[r].generated_index));
    a.temperature = sp.temperature;
    a.top_p = sp.top_p;
    a.top_k = sp.top_k;
    a.penalty = sp.repetition_penalty;
    a.logprobs = rows[r].logprobs;
    with_logprobs |= a.logprobs > 0;
    if (sp.repetition_penalty != 1.0f) {
      if (!penalty_fits) {
        a.host_only = 1;
        continue;
      }
      const std::vector<int32_t>& ids = *rows[r].context_ids;
      a.ctx_begin = ctx_used;
      a.ctx_len = static_cast<int32_t>(ids.size());
      std::memcpy(ctx + ctx_used, ids.data(), ids.size() * sizeof(int32_t));
      ctx_used += a.ctx_len;
      with_penalty = true;
    }
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sample_args_.get(), args, R * sizeof(cuda::SampleRowArgs),
                                       cudaMemcpyHostToDevice, stream_));
  if (ctx_used > 0) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sample_ctx_.get(), ctx, ctx_used * sizeof(int32_t),
                                         cudaMemcpyHostToDevice, stream_));
  }
  int32_t* out = sampled_.get<int32_t>();  // tokens [0, S), finite [S, 2S), fallback [2S, 3S)
  CUDA_RETURN_IF_ERROR(cuda::LaunchSample(logits_f32_.get<float>(), R, V,
                                          sample_args_.get<cuda::SampleRowArgs>(),
                                          sample_ctx_.get<int32_t>(), with_penalty, out,
                                          out + act_seqs_, out + 2 * act_seqs_, stream_));
  // Logprobs of the raw rows at the sampled tokens: [R, 1 + n] values and [R, n] ids come back,
  // never the rows.
  constexpr int kLp = cuda::kDeviceMaxLogprobs;
  if (with_logprobs) {
    CUDA_RETURN_IF_ERROR(cuda::LaunchLogprobs(logits_f32_.get<float>(), R, V,
                                              sample_args_.get<cuda::SampleRowArgs>(), out,
                                              logprob_vals_.get<float>(), logprob_ids_.get<int32_t>(),
                                              stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logprob_vals_host_.get<float>(), logprob_vals_.get(),
                                         R * (1 + kLp) * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logprob_ids_host_.get<int32_t>(), logprob_ids_.get(),
                                         R * kLp * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  }
  int32_t* host = sampled_host_.get<int32_t>();
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, out, (2 * act_seqs_ + R) * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  token_ids->assign(host, host + R);
  finite->resize(R);
  const float* lp_vals = logprob_vals_host_.get<float>();
  const int32_t* lp_ids = logprob_ids_host_.get<int32_t>();
  for (int r = 0; r < R; ++r) {
    (*finite)[r] = host[act_seqs_ + r] != 0;
    const int n = rows[r].logprobs;
    if (host[2 * act_seqs_ + r] == 0) {
      if (n == 0 || !(*finite)[r]) continue;
      RowLogprobs& lp = (*logprobs)[r];
      lp.token_logprob = lp_vals[r * (1 + kLp)];
      for (int k = 0; k < n && lp_ids[r * kLp + k] >= 0; ++k) {
        lp.top.push_back({lp_ids[r * kLp + k], lp_vals[r * (1 + kLp) + 1 + k]});
      }
      continue;
    }
    // A row the device left alone (host_only: a penalty over a vocabulary too large for the
    // kernel's bitmap; or a wide row it could not place): Sampler on its logits, logprobs from
    // the row as it came.
    host_row_.resize(V);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(host_row_.data(), logits_f32_.get<float>() + int64_t{r} * V,
                                    V * sizeof(float), cudaMemcpyDeviceToHost));
    const SampleOutcome outcome = SampleHostRow(host_sampler_, host_row_, rows[r], &host_raw_row_,
                                                n > 0 ? &(*logprobs)[r] : nullptr);
    (*finite)[r] = outcome.nonfinite ? 0 : 1;
    (*token_ids)[r] = outcome.nonfinite ? 0 : outcome.token_id;
  }
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<Backend> MakeCudaBackend() { return std::make_unique<CudaBackend>(); }

}  // namespace glm
