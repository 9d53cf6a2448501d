// One request's whole state inside the engine: its tokens, how many of them are in the KV
// cache, the KV blocks holding them, sampling and detokenization state, and timestamps for
// metrics. Nothing about a request lives anywhere else (the scheduler and KV manager only
// hold pointers to it / operate on its block table).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/request.h"
#include "worker/tokenizer/tokenizer.h"

namespace glm {

enum class SequenceStatus { kWaiting = 0, kRunning = 1, kFinished = 2 };

struct Sequence {
  using Clock = std::chrono::steady_clock;

  int64_t seq_id = 0;            // engine-unique, the backend's SequenceStep::seq_id
  int64_t arrival_order = 0;     // submission order; ties of priority admit the earlier first
  GenerationRequest request;     // as submitted: sampling, stop strings, flags, priority
  std::shared_ptr<const TokenCallback> callback;

  // Context: prompt, then resume tokens, then tokens generated here. Every token but the
  // newest is fed to the model; resume tokens count as generated.
  std::vector<int32_t> token_ids;       // [num_tokens]
  int32_t num_prompt_tokens = 0;        // prompt_token_ids.size()
  int32_t num_computed_tokens = 0;      // prefix of token_ids whose K/V are in the cache
  std::vector<int32_t> block_table;     // [ceil(num_computed_tokens / block_size)] physical ids
  // Prefix caching: leading blocks of block_table hashed for the cache (found there or
  // registered after their K/V were computed); KvCacheManager::CacheFullBlocks advances it.
  int32_t num_hashed_blocks = 0;
  // Prompt tokens the first admission found in the prefix cache (not computed for this request).
  int32_t num_cached_prompt_tokens = 0;

  SequenceStatus status = SequenceStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_preemptions = 0;

  // Text: UTF-8-safe deltas from the detokenizer (null without a tokenizer); held_text is
  // decoded text not emitted yet because it could be the start of a stop string.
  std::unique_ptr<IncrementalDetokenizer> detokenizer;
  std::string held_text;
  size_t max_stop_bytes = 0;            // longest stop string, bytes

  Clock::time_point arrival_time{};
  Clock::time_point first_scheduled_time{};  // first admitted into the running batch
  Clock::time_point first_token_time{};  // first token sampled here (resume tokens excluded)
  Clock::time_point last_token_time{};

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_generated() const { return num_tokens() - num_prompt_tokens; }
  // Tokens still to feed before the next token can be sampled.
  int32_t num_uncomputed() const { return num_tokens() - num_computed_tokens; }
  // Running and only the last sampled token left to feed. A prompt whose last chunk is one token
  // (chunking, or a prefix-cache hit up to its last token) is still prefilling: that token came
  // with the request, so the test is on where the newest token came from.
  bool is_decode() const {
    return num_computed_tokens > 0 && num_uncomputed() == 1 &&
           num_tokens() > num_prompt_tokens + static_cast<int32_t>(request.resume_token_ids.size());
  }
  int32_t priority() const { return request.priority; }
  const std::string& id() const { return request.request_id; }
};

}  // namespace glm
