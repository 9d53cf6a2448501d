#include "worker/engine/scheduler.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

#include "services/core/logging.h"

namespace glm {

absl::StatusOr<SchedulingPolicy> ParseSchedulingPolicy(std::string_view name) {
  if (name == "mixed") return SchedulingPolicy::kMixed;
  if (name == "prefill-first") return SchedulingPolicy::kPrefillFirst;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown scheduling policy \"", std::string(name),
                   "\": use \"mixed\" (decodes ride with prefill chunks) or \"prefill-first\" "
                   "(prefill steps first while requests arrive)"));
}

const char* SchedulingPolicyName(SchedulingPolicy policy) {
  return policy == SchedulingPolicy::kPrefillFirst ? "prefill-first" : "mixed";
}

Scheduler::Scheduler(const SchedulerOptions& options, KvCacheManager* kv_cache)
    : options_(options), kv_cache_(kv_cache) {
  GLM_CHECK(options_.max_num_seqs > 0 && options_.max_num_batched_tokens > 0);
}

void Scheduler::AddWaiting(Sequence* seq) {
  seq->status = SequenceStatus::kWaiting;
  // Before the first sequence of lower priority: higher priority first, arrival order within
  // one priority. Preempted sequences were put at the front and stay ahead of equal priority.
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const Sequence* other) { return other->priority() < seq->priority(); });
  waiting_.insert(it, seq);
}

void Scheduler::Preempt(Sequence* seq) {
  kv_cache_->Free(&seq->block_table);  // its full blocks stay cached: the recompute may find them
  seq->num_computed_tokens = 0;
  seq->num_hashed_blocks = 0;
  seq->num_preemptions++;
  seq->status = SequenceStatus::kWaiting;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  waiting_.push_front(seq);
  total_preemptions_++;
}

SchedulerOutput Scheduler::Schedule() {
  const bool decodes_wait_now =
      options_.policy == SchedulingPolicy::kPrefillFirst &&
      prefill_only_in_a_row_ < options_.max_prefill_only_steps &&
      std::any_of(running_.begin(), running_.end(), [](const Sequence* s) { return s->is_decode(); });
  if (decodes_wait_now) {
    // Prefill work only; when there is none (nothing prefilling, nobody admissible), the decodes.
    SchedulerOutput out = SchedulePass(/*with_decodes=*/false, 0);
    if (!out.empty()) {
      prefill_only_in_a_row_++;
      return out;
    }
    SchedulerOutput with_decodes = SchedulePass(/*with_decodes=*/true, out.num_preempted);
    with_decodes.num_preempted += out.num_preempted;
    prefill_only_in_a_row_ = 0;
    return with_decodes;
  }
  prefill_only_in_a_row_ = 0;
  return SchedulePass(/*with_decodes=*/true, 0);
}

SchedulerOutput Scheduler::SchedulePass(bool with_decodes, int32_t preempted_before) {
  SchedulerOutput out;
  int32_t budget = options_.max_num_batched_tokens;

  // Running sequences: decodes first, then those still prefilling, each in admission order.
  std::vector<Sequence*> candidates;
  candidates.reserve(running_.size());
  if (with_decodes) {
    for (Sequence* seq : running_) if (seq->is_decode()) candidates.push_back(seq);
  }
  for (Sequence* seq : running_) if (!seq->is_decode()) candidates.push_back(seq);

  for (Sequence* seq : candidates) {
    if (budget == 0) break;
    if (seq->status != SequenceStatus::kRunning) continue;  // preempted earlier in this loop
    int32_t num_new = std::min(seq->num_uncomputed(), budget);
    bool scheduled = true;
    while (!kv_cache_->Allocate(int64_t{seq->num_computed_tokens} + num_new, &seq->block_table)) {
      Sequence* victim = running_.back();
      // Candidates run in admission order (decodes, then the at most one partially prefilled
      // sequence, which is always the latest admitted), so the latest admitted has not been
      // scheduled yet in this step.
      GLM_CHECK(std::none_of(out.scheduled.begin(), out.scheduled.end(),
                             [&](const ScheduledSequence& s) { return s.seq == victim; }))
          << "preemption victim " << victim->id() << " was already scheduled";
      Preempt(victim);
      out.num_preempted++;
      if (victim == seq) {
        scheduled = false;
        break;
      }
    }
    if (!scheduled) continue;
    out.scheduled.push_back({seq, num_new});
    budget -= num_new;
  }

  // Admit waiting sequences; not while this step had to preempt (memory is tight, and the
  // preempted sequences must not be re-admitted in the very step that evicted them).
  while (preempted_before + out.num_preempted == 0 && budget > 0 && !waiting_.empty() &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence* seq = waiting_.front();  // nothing computed, no blocks (new or preempted)
    // Prefix caching: the leading full blocks already in the cache are taken, not computed; at
    // least the last token is computed (its logits are what the admission is for).
    const std::vector<int32_t> prefix =  // empty without prefix caching
        kv_cache_->MatchPrefix(seq->token_ids, (seq->num_tokens() - 1) / kv_cache_->block_size());
    const int32_t cached = static_cast<int32_t>(prefix.size()) * kv_cache_->block_size();
    int32_t num_new = std::min(seq->num_tokens() - cached, budget);
    // Strict order: when the head does not fit, nobody behind it jumps the queue.
    if (!kv_cache_->AllocateWithPrefix(prefix, int64_t{cached} + num_new, &seq->block_table)) break;
    seq->num_computed_tokens = cached;
    seq->num_hashed_blocks = static_cast<int32_t>(prefix.size());
    if (kv_cache_->prefix_caching()) {
      prefix_queried_tokens_ += seq->num_tokens();
      prefix_hit_tokens_ += cached;
      if (seq->num_preemptions == 0) {
        seq->num_cached_prompt_tokens = std::min(cached, seq->num_prompt_tokens);
      }
    }
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    out.scheduled.push_back({seq, num_new});
    budget -= num_new;
  }

  for (const ScheduledSequence& s : out.scheduled) out.num_batched_tokens += s.num_new_tokens;
  return out;
}

void Scheduler::OnStepDone(const SchedulerOutput& output) {
  for (const ScheduledSequence& s : output.scheduled) {
    Sequence* seq = s.seq;
    seq->num_computed_tokens += s.num_new_tokens;
    kv_cache_->CacheFullBlocks(seq->token_ids, seq->num_computed_tokens, seq->block_table,
                               &seq->num_hashed_blocks);
  }
}

void Scheduler::Remove(Sequence* seq, bool keep_cached) {
  kv_cache_->Free(&seq->block_table, keep_cached);
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) {
    running_.erase(it);
  }
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) {
    waiting_.erase(it);
  }
  seq->status = SequenceStatus::kFinished;
}

}  // namespace glm
