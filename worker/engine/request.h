// What a caller hands the engine, and what the engine hands back per token.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/backend/sampling/logprobs.h"  // kMaxLogprobs, TokenLogprob
#include "worker/backend/sampling/sampler.h"   // SamplingParams

namespace glm {

enum class FinishReason { kNone = 0, kEos, kStopString, kLength, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);  // "eos", "stop", "length", "cancelled", "error"

struct GenerationRequest {
  std::string request_id;                 // unique among live requests of an engine
  std::vector<int32_t> prompt_token_ids;
  // Tokens an earlier attempt already generated (router migration). They are fed like prompt
  // tokens but count as generated: sampling continues at index resume_token_ids.size() and
  // max_new_tokens includes them. No event is emitted for them.
  std::vector<int32_t> resume_token_ids;
  SamplingParams sampling;
  int32_t max_new_tokens = 16;
  std::vector<std::string> stop_strings;  // generation ends before the first occurrence
  bool ignore_eos = false;
  bool skip_special_tokens = true;        // in text deltas
  int32_t priority = 0;                   // larger runs first when admitting
  // 0: none; 1..kMaxLogprobs: every generated token's log-probability and the `logprobs` most
  // likely tokens of its position, from the model's distribution (raw logits: before
  // temperature, repetition penalty, top-k / top-p). The backend computes them next to its
  // sampler (Backend::ForwardSample; on a GPU on the device, without moving the logits).
  int32_t logprobs = 0;
};

// One event per generated token; the last one has finished = true (it may carry no token,
// e.g. cancelled or a stop string that ends inside held-back text).
struct TokenEvent {
  std::string request_id;
  int32_t token_id = -1;       // -1: no token in this event
  int32_t index = -1;          // 0-based index among generated tokens (resume tokens count)
  std::string text_delta;      // UTF-8 complete characters only
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status error;          // set when finish_reason == kError (e.g. non-finite logits)
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // prompt tokens the prefix cache held (not computed)
  // With GenerationRequest::logprobs: the token's own logprob, and the most likely tokens of its
  // position, most likely first (ties: lower id first).
  float logprob = 0.f;
  std::vector<TokenLogprob> top_logprobs;
};

using TokenCallback = std::function<void(const TokenEvent&)>;

}  // namespace glm
