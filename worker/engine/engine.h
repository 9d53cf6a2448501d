// The engine: owns a backend, a paged KV cache manager and a scheduler, and runs steps.
//
//   Submit() validates and queues a request (thread-safe).
//   Step() runs one scheduler decision + one backend forward + sampling, and emits events.
//   Start()/Stop() run Step() on a background thread until stopped.
//
// Scheduling is continuous batching: each step takes running decodes first, then prefill chunks
// of waiting/partially prefilled requests, under max_num_batched_tokens. When KV blocks run out
// the most recently admitted request is preempted (its blocks freed; it is recomputed later).
// With EngineOptions::enable_prefix_caching, full KV blocks outlive their request and a request
// whose leading tokens match them computes only the rest (kv_cache_manager.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/engine/request.h"
#include "worker/engine/scheduler.h"
#include "worker/tokenizer/tokenizer.h"

namespace glm {

// What one engine step did, for EngineOptions::step_observer (worker metrics).
struct StepInfo {
  int64_t step = 0;                 // 1-based: EngineStats::steps after this step
  int32_t batch_size = 0;           // sequences in this forward
  int32_t num_batched_tokens = 0;   // tokens in this forward (prefill chunks + decodes)
  // Seconds from arrival at the engine (Submit) to first admission into the running batch, one
  // entry per sequence scheduled for the first time in this step (recomputes after preemption
  // are not admissions).
  std::vector<double> queue_seconds;
};

struct EngineOptions {
  int32_t block_size = 16;                  // tokens per KV block
  int32_t num_kv_blocks = 0;                // 0: derived from kv_cache_bytes
  int64_t kv_cache_bytes = 256ll << 20;     // used when num_kv_blocks == 0
  int32_t max_num_seqs = 64;                // running requests at most
  int32_t max_num_batched_tokens = 512;     // token budget per step (prefill chunks + decodes)
  // Whether decodes ride in steps with prefill work (kMixed) or wait while arrivals are
  // prefilled (kPrefillFirst, at most max_prefill_only_steps steps in a row): scheduler.h.
  SchedulingPolicy scheduling = SchedulingPolicy::kMixed;
  int32_t max_prefill_only_steps = 16;
  // Automatic prefix caching (kv_cache_manager.h): full KV blocks stay findable by their tokens
  // after their request frees them, and a request whose leading tokens match computes only the
  // rest. Off here (the library default keeps every request computed from scratch); glm-worker
  // turns it on unless --enable_prefix_caching=false.
  bool enable_prefix_caching = false;
  int32_t max_model_len = 0;                // 0: config.max_position_embeddings
  int32_t max_waiting = 1024;               // queued requests beyond this: RESOURCE_EXHAUSTED
  std::string worker_name = "local";        // named in error messages
  std::string precision_name = "fp32";      // the backend's precision, named in non-finite errors
  // Sees every logits row [vocab] before sampling touches it (glm-run --dump-last-logits, golden
  // tests). Runs on the stepping thread; must not call back into the engine.
  std::function<void(const std::string& request_id, int32_t generated_index, const float* logits,
                     int64_t vocab)>
      logits_observer;
  // Called once per step after a successful forward and sampling (metrics: batch size, queue
  // time, forward progress). Runs on the stepping thread; must be cheap and must not call back
  // into the engine except Stats().
  std::function<void(const StepInfo&)> step_observer;
};

struct EngineStats {
  int32_t running = 0;
  int32_t waiting = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_free = 0;
  int64_t steps = 0;                // forward steps run so far (forward-progress counter)
  int64_t prompt_tokens = 0;        // processed prefill tokens, total
  int64_t generated_tokens = 0;     // sampled tokens, total
  int64_t preemptions = 0;
  int64_t nonfinite = 0;            // requests failed by the non-finite guard
  int32_t kv_blocks_cached = 0;     // prefix caching: blocks a lookup can find (in use or free)
  int64_t prefix_queried_tokens = 0;  // prefix caching: tokens of admissions looked up
  int64_t prefix_hit_tokens = 0;      // ... and found in the cache (not computed)
  int32_t last_batch_size = 0;
  double kv_usage() const {
    return kv_blocks_total ? 1.0 - double(kv_blocks_free) / kv_blocks_total : 0.0;
  }
};

class Engine {
 public:
  // tokenizer may be null (token-id only use: no text deltas, no stop strings).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        std::unique_ptr<Backend> backend,
                                                        const Tokenizer* tokenizer);
  ~Engine();

  // INVALID_ARGUMENT for an empty prompt, prompt + max_new_tokens beyond max_model_len, bad
  // sampling values, duplicate id; RESOURCE_EXHAUSTED when the waiting queue is full or when
  // prompt + max_new_tokens can never fit the whole KV cache (the message says how many fit).
  // The callback runs on the stepping thread without the engine's state lock: it may call
  // Submit/Cancel/Stats, not Step/RunUntilIdle/Stop. Exactly one event has finished = true.
  absl::Status Submit(GenerationRequest request, TokenCallback callback);
  // Finishes the request with kCancelled and frees its KV blocks now (at the next step boundary).
  void Cancel(const std::string& request_id);
  // Runs one step. Returns false when there was nothing to do.
  absl::StatusOr<bool> Step();
  // Runs until every submitted request has finished (tests, glm-run, benchmarks).
  absl::Status RunUntilIdle();

  void Start();
  void Stop();  // finishes nothing: running requests get kCancelled

  EngineStats Stats() const;
  const ModelConfig& config() const;
  Backend* backend() { return backend_.get(); }
  const EngineOptions& options() const { return options_; }

  class Impl;

 private:
  Engine() = default;
  EngineOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glm
