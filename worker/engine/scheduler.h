// Continuous batching with chunked prefill, in vLLM v1's shape: the scheduler decides which
// sequences run this step and how many of their tokens each feeds; it never touches tensors.
//
// Each step: running decodes first (1 token each), then running sequences still prefilling,
// then waiting sequences (priority, then arrival; preempted ones at the front), all under one
// token budget and max_num_seqs. A prompt longer than the budget is fed over several steps.
// When a running sequence cannot get the KV blocks its tokens need, the most recently admitted
// running sequence is preempted: its blocks are freed, its computed tokens reset to 0 and it
// goes to the front of the waiting queue, to be recomputed (prompt + tokens generated so far).
// With prefix caching (KvCacheManager) an admission first takes the cached blocks that hold its
// leading tokens (another request's shared prompt, or its own blocks from before a preemption)
// and computes only the rest; those tokens cost no budget.
//
// Two policies for steps that have prefill work while sequences decode:
//   kMixed (the default): decodes ride in the same step as the prefill chunks (vLLM v1, TGI).
//     Running requests keep streaming while new ones are admitted.
//   kPrefillFirst: a step that can prefill (a running sequence still prefilling, or a waiting one
//     admitted now) runs only prefill work, and the decodes wait (SGLang's default without mixed
//     chunks, vLLM v0's without chunked prefill). A burst of arrivals is prefilled before anyone
//     decodes, so all of them then decode in full-width steps: more throughput offline, longer
//     inter-token gaps for running requests while a burst is admitted, bounded by
//     max_prefill_only_steps in a row, after which one step runs with decodes.
#pragma once

#include <cstdint>
#include <deque>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "worker/engine/kv_cache_manager.h"
#include "worker/engine/sequence.h"

namespace glm {

enum class SchedulingPolicy { kMixed, kPrefillFirst };
// "mixed" / "prefill-first" (the --scheduling flag of glm-worker and glm-bench).
absl::StatusOr<SchedulingPolicy> ParseSchedulingPolicy(std::string_view name);
const char* SchedulingPolicyName(SchedulingPolicy policy);

struct SchedulerOptions {
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 512;
  SchedulingPolicy policy = SchedulingPolicy::kMixed;
  int32_t max_prefill_only_steps = 16;  // kPrefillFirst: steps in a row the decodes may wait
};

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int32_t num_new_tokens = 0;  // fed this step, starting at seq->num_computed_tokens
};

struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;  // decodes, then prefill chunks
  int32_t num_batched_tokens = 0;
  int32_t num_preempted = 0;                 // preemptions made by this decision
  bool empty() const { return scheduled.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvCacheManager* kv_cache);

  // Queues a new sequence (not owned; it must outlive its time in the scheduler).
  void AddWaiting(Sequence* seq);
  // Decides this step. Allocates the KV blocks the scheduled tokens need.
  SchedulerOutput Schedule();
  // Marks the scheduled tokens as computed (after the forward pass ran) and, with prefix
  // caching, registers the blocks they filled.
  void OnStepDone(const SchedulerOutput& output);
  // Drops a sequence (finished, cancelled, failed) wherever it is and frees its blocks.
  // keep_cached = false: its blocks leave the prefix cache too (a failed step's K/V).
  void Remove(Sequence* seq, bool keep_cached = true);

  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  const std::vector<Sequence*>& running() const { return running_; }  // admission order
  const std::deque<Sequence*>& waiting() const { return waiting_; }   // admission order
  int64_t total_preemptions() const { return total_preemptions_; }
  // Prefix caching: tokens of admitted sequences looked up, and those found (not computed).
  int64_t prefix_queried_tokens() const { return prefix_queried_tokens_; }
  int64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }

 private:
  void Preempt(Sequence* seq);
  // One pass of Schedule: the running candidates (decodes too when with_decodes), then
  // admissions unless this step has preempted (preempted_before: earlier passes of this step).
  SchedulerOutput SchedulePass(bool with_decodes, int32_t preempted_before);

  SchedulerOptions options_;
  KvCacheManager* kv_cache_;
  std::vector<Sequence*> running_;   // admission order: the back is preempted first
  std::deque<Sequence*> waiting_;    // next to admit at the front
  int64_t total_preemptions_ = 0;
  int64_t prefix_queried_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
  int32_t prefill_only_in_a_row_ = 0;  // kPrefillFirst: steps since the decodes last ran
};

}  // namespace glm
