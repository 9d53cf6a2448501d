// Log-probabilities of a logits row, as a request with `logprobs` gets them: the log-softmax of
// the model's raw row (before repetition penalty, temperature, top-k / top-p) at the picked token,
// and the row's n most likely tokens, most likely first (ties: the lower id first).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace glm {

constexpr int32_t kMaxLogprobs = 20;  // most likely tokens a position a request may ask for

struct TokenLogprob {
  int32_t token_id = -1;
  float logprob = 0.f;
};

// One logits row's answer for a request with logprobs.
struct RowLogprobs {
  float token_logprob = 0.f;
  std::vector<TokenLogprob> top;  // n entries, most likely first
};

// The row's log-sum-exp in double, then row[token] - lse and the n (<= row.size()) best entries.
void LogSoftmaxTop(std::span<const float> row, int32_t token, int32_t n, RowLogprobs* out);

}  // namespace glm
