// The worker's glm_worker_* metrics. Counters and histograms move as requests run; gauges are
// read from Engine::Stats() at scrape time (MetricsExposer refresh), so a scrape right after a
// cancel already shows the freed KV blocks.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include <prometheus/registry.h>

#include "glm/v1/worker.pb.h"
#include "worker/engine/engine.h"

namespace glm {

struct WorkerMetricLabels {
  std::string worker_id;
  std::string pool;        // "<model>/<precision>"
  std::string device;      // "cpu" or the GPU name
  std::string precision;
  std::string compute_capability = "cpu";   // "9.0", "7.0", ... or "cpu"
  int tp_size = 1;
};

class WorkerMetrics {
 public:
  WorkerMetrics(prometheus::Registry& registry, const WorkerMetricLabels& labels);

  void RequestFinished(const std::string& grpc_code, int32_t prompt_tokens,
                       int32_t generated_tokens, double e2e_seconds);
  void FirstToken(double seconds);
  void InterToken(double seconds);
  // Refreshes the gauges from live engine stats (called before every scrape).
  void Refresh(const EngineStats& stats);
  // From EngineOptions::step_observer (the stepping thread): batch size and queue time
  // histograms, and a fresh Backend::Memory() sample at most every 500 ms.
  void StepDone(const StepInfo& info, const Backend& backend);
  // Samples Backend::Memory() for glm_worker_gpu_memory_bytes. Only from the stepping thread,
  // or before the engine starts: backends are not thread-safe. Where the backend reports no
  // free device memory (CPU), free is the host's MemAvailable, read at scrape time.
  void SampleMemory(const Backend& backend);

 private:
  prometheus::Registry& registry_;
  WorkerMetricLabels labels_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Counter& nonfinite_;
  prometheus::Counter& preemptions_;
  prometheus::Counter& prefix_queried_tokens_;
  prometheus::Counter& prefix_hit_tokens_;
  prometheus::Gauge& prefix_cached_blocks_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_usage_;
  prometheus::Gauge& kv_blocks_free_;
  prometheus::Gauge& kv_blocks_used_;
  prometheus::Gauge& steps_;
  prometheus::Gauge& batch_size_;
  prometheus::Counter& steps_total_;
  prometheus::Histogram& step_batch_size_;
  prometheus::Histogram& queue_time_;
  prometheus::Gauge& memory_weights_;
  prometheus::Gauge& memory_kv_;
  prometheus::Gauge& memory_activations_;
  prometheus::Gauge& memory_free_;
  std::mutex mu_;
  int64_t seen_nonfinite_ = 0;
  int64_t seen_preemptions_ = 0;
  int64_t seen_steps_ = 0;
  int64_t seen_prefix_queried_ = 0;
  int64_t seen_prefix_hits_ = 0;
  MemoryReport memory_;                                  // last sample (mu_)
  std::chrono::steady_clock::time_point memory_sampled_{};   // stepping thread only
};

// Load as heartbeats and GetInfo report it.
glm::v1::Load LoadFromStats(const EngineStats& stats);

}  // namespace glm
