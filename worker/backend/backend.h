// The seam between the engine and the hardware. The CPU backend (reference, precision
// emulation) and the CUDA backend implement it; the engine never touches tensors.
//
// One Forward() call runs one engine step over a flattened batch: each sequence contributes
// a contiguous run of new tokens (a prefill chunk, or 1 token for decode) whose K/V are
// written into the paged KV cache at the slots named by its block table, and attends to all
// of its context (the cached tokens plus the new ones, causally).
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "worker/backend/sampling/logprobs.h"
#include "worker/backend/sampling/sampler.h"
#include "worker/model/config.h"
#include "worker/precision/precision.h"

namespace glm {

class Checkpoint;
class Communicator;

// One sequence's part of a step.
struct SequenceStep {
  int64_t seq_id = 0;
  int32_t token_offset = 0;   // first of this sequence's tokens in StepBatch::token_ids
  int32_t num_tokens = 0;     // new tokens this step (chunk length; 1 for decode)
  int32_t context_len = 0;    // tokens in the KV cache after this step = start position + num_tokens
  std::vector<int32_t> block_table;  // physical block ids, ceil(context_len / block_size) of them
  bool wants_logits = false;  // produce logits for the last new token (end of prefill / decode)
};

struct StepBatch {
  std::vector<int32_t> token_ids;  // [num_tokens] all sequences' new tokens, concatenated
  std::vector<int32_t> positions;  // [num_tokens] absolute position of each token
  std::vector<SequenceStep> seqs;  // [num_seqs]
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  // Appends a decode row: one new token at `position` (context position + 1), wanting logits.
  void AddDecode(int64_t seq_id, int32_t token, int32_t position, std::vector<int32_t> block_table) {
    SequenceStep s;
    s.seq_id = seq_id;
    s.token_offset = num_tokens();
    s.num_tokens = 1;
    s.context_len = position + 1;
    s.block_table = std::move(block_table);
    s.wants_logits = true;
    token_ids.push_back(token);
    positions.push_back(position);
    seqs.push_back(std::move(s));
  }
  int num_logit_rows() const {
    int n = 0;
    for (const auto& s : seqs) n += s.wants_logits ? 1 : 0;
    return n;
  }
};

// How one logit row's next token is picked (Sampler::Sample's arguments): the request's
// parameters, the index of the token being generated (its Philox draw) and the repetition
// penalty's scope (prompt + generated ids, all in [0, vocab)); and how many of the row's most
// likely tokens come back with their log-probabilities (0: no logprobs for this row).
struct RowSampling {
  const SamplingParams* params = nullptr;
  int64_t generated_index = 0;
  const std::vector<int32_t>* context_ids = nullptr;
  int32_t logprobs = 0;  // 0..kMaxLogprobs
};

struct LoadOptions {
  Precision precision = Precision::kFp32;
  int num_threads = 0;        // CPU backend: 0 = all cores
  int tp_rank = 0;            // tensor parallelism: this rank of tp_size
  int tp_size = 1;
  Communicator* comm = nullptr;  // required when tp_size > 1 (not owned)
  int device = 0;             // CUDA device ordinal
  // GPU backends: fraction of the device's memory this process may hold in all (weights,
  // activations, KV pool); KvBlocksThatFit() sizes the KV pool from what it leaves.
  double gpu_memory_utilization = 0.90;
  // GPU backends: the largest step (tokens, sequences) activation buffers are allocated for at
  // Load, so the KV pool can take the rest. A larger step grows them (and may fail).
  int32_t max_num_tokens = 2048;
  int32_t max_num_seqs = 256;
};

// Where the memory of a backend goes (bytes), reported as metrics and by glm-bench.
struct MemoryReport {
  int64_t weights = 0;
  int64_t kv_cache = 0;
  int64_t activations = 0;
  int64_t free = -1;   // device memory still free (-1: not applicable, e.g. CPU)
  int64_t total = -1;
  int64_t peak = -1;   // most device memory this process held so far (-1: not tracked)
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string Name() const = 0;   // "cpu", "cuda"
  // Loads (this rank's shard of) the weights, converting to the precision's storage dtype.
  virtual absl::Status Load(const ModelConfig& config, const Checkpoint& checkpoint,
                            const LoadOptions& options) = 0;
  // Bytes one KV block takes on this rank: layers * 2 (K,V) * block_size * local kv heads * Dh * elem.
  virtual int64_t KvBytesPerBlock(int32_t block_size) const = 0;
  // Allocates the paged KV cache: [layers][num_blocks][block_size][local kv heads][Dh] for K and V.
  virtual absl::Status AllocateKvCache(int32_t num_blocks, int32_t block_size) = 0;
  // Runs the step. logits: [batch.num_logit_rows(), vocab_size] fp32, in the order of the
  // sequences that want logits. Full vocabulary on every rank (vocab-parallel head gathered).
  virtual absl::Status Forward(const StepBatch& batch, std::vector<float>* logits) = 0;
  virtual MemoryReport Memory() const = 0;
  virtual const ModelConfig& config() const = 0;

  // Greedy decoding without moving logits off the device: for each row Forward() would return,
  // the first index of the largest logit and whether the whole row was finite (the non-finite
  // guard). The default runs Forward() and scans the rows on the host.
  virtual absl::Status ForwardGreedy(const StepBatch& batch, std::vector<int32_t>* token_ids,
                                     std::vector<uint8_t>* finite);
  // Runs the step and picks each logit row's token the way Sampler::Sample would from
  // Forward()'s logits (greedy, temperature, top-k, top-p, repetition penalty, the non-finite
  // guard: finite = 0 and no token for a row with a NaN/Inf). rows: one per logit row, in
  // Forward()'s order. logprobs (may be null when no row asks for them): one entry per row,
  // filled as LogSoftmaxTop does from Forward()'s row for rows with RowSampling::logprobs > 0
  // and finite logits, empty otherwise. The default runs Forward() (ForwardGreedy() when every
  // row is plain greedy without logprobs) and Sampler on the host; a GPU backend samples and
  // computes logprobs on the device.
  virtual absl::Status ForwardSample(const StepBatch& batch, std::span<const RowSampling> rows,
                                     std::vector<int32_t>* token_ids, std::vector<uint8_t>* finite,
                                     std::vector<RowLogprobs>* logprobs);
  // Pays the first-use costs of decode steps of up to max_num_seqs sequences before serving, so
  // that no request waits for them: on a GPU, each CUDA-graph batch size is run once eagerly
  // (kernel loads, GEMM tuning) and captured. Dummy steps write into KV block 0 only, which a
  // sequence always overwrites before it reads; call after AllocateKvCache, before real steps
  // (graphs are dropped again by AllocateKvCache). Default: nothing to do.
  virtual absl::Status WarmUp(int32_t max_num_seqs) { return absl::OkStatus(); }
  // KV blocks of block_size tokens that fit in the memory left by weights and activations under
  // LoadOptions::gpu_memory_utilization; 0 when the backend has no device limit (CPU: the engine
  // sizes the pool from its own options).
  virtual int64_t KvBlocksThatFit(int32_t block_size) const { return 0; }
};

inline absl::Status Backend::ForwardGreedy(const StepBatch& batch,
                                           std::vector<int32_t>* token_ids,
                                           std::vector<uint8_t>* finite) {
  std::vector<float> logits;
  absl::Status status = Forward(batch, &logits);
  if (!status.ok()) return status;
  const int64_t vocab = config().vocab_size;
  const int rows = batch.num_logit_rows();
  token_ids->assign(rows, 0);
  finite->assign(rows, 1);
  for (int r = 0; r < rows; ++r) {
    const float* row = logits.data() + static_cast<int64_t>(r) * vocab;
    int64_t best = -1;
    for (int64_t j = 0; j < vocab; ++j) {
      if (!std::isfinite(row[j])) { (*finite)[r] = 0; continue; }
      if (best < 0 || row[j] > row[best]) best = j;
    }
    (*token_ids)[r] = static_cast<int32_t>(best < 0 ? 0 : best);
  }
  return absl::OkStatus();
}

// True when every row is greedy without a repetition penalty or logprobs (ForwardGreedy()
// suffices).
inline bool AllPlainGreedy(std::span<const RowSampling> rows) {
  for (const RowSampling& row : rows) {
    if (!row.params->greedy() || row.params->repetition_penalty != 1.0f || row.logprobs > 0) return false;
  }
  return true;
}

// One host row through Sampler::Sample (which processes `logits` in place: penalty,
// temperature) and, when row.logprobs > 0 and the row is finite, its logprobs from the row as it
// came (LogSoftmaxTop; raw: scratch for that copy).
inline SampleOutcome SampleHostRow(Sampler& sampler, std::span<float> logits, const RowSampling& row,
                                   std::vector<float>* raw, RowLogprobs* logprobs) {
  if (row.logprobs > 0) raw->assign(logits.begin(), logits.end());
  SampleOutcome outcome = sampler.Sample(logits, *row.params, *row.context_ids, row.generated_index);
  if (row.logprobs > 0 && !outcome.nonfinite) LogSoftmaxTop(*raw, outcome.token_id, row.logprobs, logprobs);
  return outcome;
}

// ForwardSample's argument checks: one RowSampling per logit row, logprobs in range and a place
// to put them. Sizes *logprobs to the rows (entries cleared).
inline absl::Status CheckSampleRows(const StepBatch& batch, std::span<const RowSampling> rows,
                                    std::vector<RowLogprobs>* logprobs) {
  if (static_cast<int>(rows.size()) != batch.num_logit_rows()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ForwardSample: %d sampling rows for %d logit rows (one RowSampling per logit row is needed)",
        rows.size(), batch.num_logit_rows()));
  }
  for (const RowSampling& row : rows) {
    if (row.logprobs < 0 || row.logprobs > kMaxLogprobs) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ForwardSample: logprobs %d for a row: use 0 to %d", row.logprobs, kMaxLogprobs));
    }
    if (row.logprobs > 0 && logprobs == nullptr) {
      return absl::InvalidArgumentError("ForwardSample: a row asks for logprobs and there is no output for them");
    }
  }
  if (logprobs != nullptr) {
    logprobs->resize(rows.size());
    for (RowLogprobs& lp : *logprobs) lp.top.clear();
  }
  return absl::OkStatus();
}

inline absl::Status Backend::ForwardSample(const StepBatch& batch,
                                           std::span<const RowSampling> rows,
                                           std::vector<int32_t>* token_ids,
                                           std::vector<uint8_t>* finite,
                                           std::vector<RowLogprobs>* logprobs) {
  if (absl::Status s = CheckSampleRows(batch, rows, logprobs); !s.ok()) return s;
  if (AllPlainGreedy(rows)) return ForwardGreedy(batch, token_ids, finite);
  std::vector<float> logits;
  absl::Status status = Forward(batch, &logits);
  if (!status.ok()) return status;
  const int64_t vocab = config().vocab_size;
  token_ids->assign(rows.size(), 0);
  finite->assign(rows.size(), 1);
  Sampler sampler;
  std::vector<float> raw;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::span<float> row(logits.data() + static_cast<int64_t>(r) * vocab, static_cast<size_t>(vocab));
    const SampleOutcome outcome =
        SampleHostRow(sampler, row, rows[r], &raw, logprobs != nullptr ? &(*logprobs)[r] : nullptr);
    (*finite)[r] = outcome.nonfinite ? 0 : 1;
    (*token_ids)[r] = outcome.nonfinite ? 0 : outcome.token_id;
  }
  return absl::OkStatus();
}

// The CPU reference backend (worker/backend/cpu).
std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace glm
