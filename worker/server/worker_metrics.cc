#include "worker/server/worker_metrics.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "services/grpc/metrics.h"

namespace glm {
namespace {

// MemAvailable of /proc/meminfo in bytes; -1 when unreadable.
int64_t HostMemAvailableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t kib = -1;
    fields >> kib;
    return kib >= 0 ? kib * 1024 : -1;
  }
  return -1;
}

prometheus::Gauge& MemoryGauge(prometheus::Registry& registry, const std::string& pool,
                               const std::string& kind) {
  return GlmGauge(registry, "glm_worker_gpu_memory_bytes",
                  "Device memory by kind (weights, kv, activations, free); CPU workers: host "
                  "bytes, free = MemAvailable")
      .Add({{"pool", pool}, {"kind", kind}});
}

// Counters mirror engine totals: adds what the total gained since the last refresh.
void Advance(prometheus::Counter& counter, int64_t total, int64_t* seen) {
  if (total <= *seen) return;
  counter.Increment(static_cast<double>(total - *seen));
  *seen = total;
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, const WorkerMetricLabels& labels)
    : registry_(registry),
      labels_(labels),
      requests_(GlmCounter(registry, "glm_worker_requests_total",
                           "Requests finished by this worker, by pool and gRPC code")),
      prompt_tokens_(GlmCounter(registry, "glm_worker_prompt_tokens_total",
                                "Prompt tokens of requests this worker finished")
                         .Add({{"pool", labels.pool}})),
      generation_tokens_(GlmCounter(registry, "glm_worker_generation_tokens_total",
                                    "Tokens this worker generated and streamed")
                             .Add({{"pool", labels.pool}})),
      nonfinite_(GlmCounter(registry, "glm_worker_nonfinite_total",
                            "Requests failed by the non-finite logits guard")
                     .Add({{"pool", labels.pool}})),
      preemptions_(GlmCounter(registry, "glm_worker_preemptions_total",
                              "Requests preempted for KV blocks (recomputed later)")
                       .Add({{"pool", labels.pool}})),
      prefix_queried_tokens_(GlmCounter(registry, "glm_worker_prefix_cache_queried_tokens_total",
                                        "Tokens of admitted requests looked up in the prefix cache "
                                        "(recomputes after preemption included)")
                                 .Add({{"pool", labels.pool}})),
      prefix_hit_tokens_(GlmCounter(registry, "glm_worker_prefix_cache_hit_tokens_total",
                                    "Looked-up tokens the prefix cache held (not computed)")
                             .Add({{"pool", labels.pool}})),
      prefix_cached_blocks_(GlmGauge(registry, "glm_worker_prefix_cache_blocks",
                                     "KV blocks a prefix lookup can find (in use or free)")
                                .Add({{"pool", labels.pool}})),
      ttft_(GlmHistogram(registry, "glm_worker_time_to_first_token_seconds",
                         "From request arrival at the worker to its first token")
                .Add({{"pool", labels.pool}}, LatencyBucketsSeconds())),
      itl_(GlmHistogram(registry, "glm_worker_inter_token_latency_seconds",
                        "Time between consecutive streamed tokens")
               .Add({{"pool", labels.pool}}, LatencyBucketsSeconds())),
      e2e_(GlmHistogram(registry, "glm_worker_e2e_request_latency_seconds",
                        "From request arrival at the worker to its last message")
               .Add({{"pool", labels.pool}}, LatencyBucketsSeconds())),
      running_(GlmGauge(registry, "glm_worker_running_requests", "Requests in the running batch")
                   .Add({{"pool", labels.pool}})),
      waiting_(GlmGauge(registry, "glm_worker_waiting_requests", "Requests waiting for admission")
                   .Add({{"pool", labels.pool}})),
      kv_usage_(GlmGauge(registry, "glm_worker_kv_cache_usage_ratio", "KV blocks in use / total")
                    .Add({{"pool", labels.pool}})),
      kv_blocks_free_(GlmGauge(registry, "glm_worker_kv_cache_blocks", "KV cache blocks by state")
                          .Add({{"pool", labels.pool}, {"state", "free"}})),
      kv_blocks_used_(GlmGauge(registry, "glm_worker_kv_cache_blocks", "KV cache blocks by state")
                          .Add({{"pool", labels.pool}, {"state", "used"}})),
      steps_(GlmGauge(registry, "glm_worker_steps", "Engine steps run (forward-progress counter)")
                 .Add({{"pool", labels.pool}})),
      batch_size_(GlmGauge(registry, "glm_worker_batch_size", "Sequences in the last engine step")
                      .Add({{"pool", labels.pool}})),
      steps_total_(GlmCounter(registry, "glm_worker_steps_total",
                              "Engine steps run (forward-progress counter)")
                       .Add({{"pool", labels.pool}})),
      step_batch_size_(GlmHistogram(registry, "glm_worker_step_batch_size",
                                    "Sequences per engine step, observed once per step")
                           .Add({{"pool", labels.pool}}, CountBuckets())),
      queue_time_(GlmHistogram(registry, "glm_worker_queue_time_seconds",
                               "From request arrival at the worker to its admission into the "
                               "running batch")
                      .Add({{"pool", labels.pool}}, LatencyBucketsSeconds())),
      memory_weights_(MemoryGauge(registry, labels.pool, "weights")),
      memory_kv_(MemoryGauge(registry, labels.pool, "kv")),
      memory_activations_(MemoryGauge(registry, labels.pool, "activations")),
      memory_free_(MemoryGauge(registry, labels.pool, "free")) {
  GlmGauge(registry, "glm_worker_info", "Constant 1; labels describe the worker group")
      .Add({{"worker", labels.worker_id},
            {"pool", labels.pool},
            {"device", labels.device},
            {"compute_capability", labels.compute_capability},
            {"precision", labels.precision},
            {"tp_size", std::to_string(labels.tp_size)}})
      .Set(1);
}

void WorkerMetrics::RequestFinished(const std::string& grpc_code, int32_t prompt_tokens,
                                    int32_t generated_tokens, double e2e_seconds) {
  requests_.Add({{"pool", labels_.pool}, {"code", grpc_code}}).Increment();
  if (prompt_tokens > 0) prompt_tokens_.Increment(prompt_tokens);
  if (generated_tokens > 0) generation_tokens_.Increment(generated_tokens);
  e2e_.Observe(e2e_seconds);
}

void WorkerMetrics::FirstToken(double seconds) { ttft_.Observe(seconds); }
void WorkerMetrics::InterToken(double seconds) { itl_.Observe(seconds); }

void WorkerMetrics::Refresh(const EngineStats& stats) {
  running_.Set(stats.running);
  waiting_.Set(stats.waiting);
  kv_usage_.Set(stats.kv_usage());
  kv_blocks_free_.Set(stats.kv_blocks_free);
  kv_blocks_used_.Set(stats.kv_blocks_total - stats.kv_blocks_free);
  steps_.Set(static_cast<double>(stats.steps));
  batch_size_.Set(stats.last_batch_size);
  std::lock_guard<std::mutex> lock(mu_);
  Advance(nonfinite_, stats.nonfinite, &seen_nonfinite_);
  Advance(preemptions_, stats.preemptions, &seen_preemptions_);
  Advance(steps_total_, stats.steps, &seen_steps_);
  Advance(prefix_queried_tokens_, stats.prefix_queried_tokens, &seen_prefix_queried_);
  Advance(prefix_hit_tokens_, stats.prefix_hit_tokens, &seen_prefix_hits_);
  prefix_cached_blocks_.Set(stats.kv_blocks_cached);
  memory_weights_.Set(static_cast<double>(memory_.weights));
  memory_kv_.Set(static_cast<double>(memory_.kv_cache));
  memory_activations_.Set(static_cast<double>(memory_.activations));
  const int64_t free_bytes = memory_.free >= 0 ? memory_.free : HostMemAvailableBytes();
  memory_free_.Set(static_cast<double>(std::max<int64_t>(free_bytes, 0)));
}

void WorkerMetrics::StepDone(const StepInfo& info, const Backend& backend) {
  step_batch_size_.Observe(info.batch_size);
  for (double seconds : info.queue_seconds) queue_time_.Observe(seconds);
  if (std::chrono::steady_clock::now() - memory_sampled_ >= std::chrono::milliseconds(500)) {
    SampleMemory(backend);
  }
}

void WorkerMetrics::SampleMemory(const Backend& backend) {
  memory_sampled_ = std::chrono::steady_clock::now();
  MemoryReport report = backend.Memory();
  std::lock_guard<std::mutex> lock(mu_);
  memory_ = report;
}

glm::v1::Load LoadFromStats(const EngineStats& stats) {
  glm::v1::Load load;
  load.set_running_requests(stats.running);
  load.set_waiting_requests(stats.waiting);
  load.set_kv_cache_usage(stats.kv_usage());
  load.set_kv_blocks_free(stats.kv_blocks_free);
  load.set_kv_blocks_total(stats.kv_blocks_total);
  load.set_steps(stats.steps);
  load.set_generated_tokens(stats.generated_tokens);
  return load;
}

}  // namespace glm
