#include "worker/backend/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "services/core/logging.h"

namespace glm {

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t{kMul0} * counter[0];
    uint64_t p1 = uint64_t{kMul1} * counter[2];
    counter = {static_cast<uint32_t>(p1 >> 32) ^ counter[1] ^ key[0], static_cast<uint32_t>(p1),
               static_cast<uint32_t>(p0 >> 32) ^ counter[3] ^ key[1], static_cast<uint32_t>(p0)};
    key[0] += kWeyl0;
    key[1] += kWeyl1;
  }
  return counter;
}

double PhiloxUniform(uint64_t seed, uint64_t index) {
  auto out = Philox4x32({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0, 0},
                        {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  uint64_t bits = (uint64_t{out[0]} << 21) ^ (out[1] >> 11);  // 53 bits
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

SampleOutcome Sampler::Sample(std::span<float> logits, const SamplingParams& params,
                              const std::vector<int32_t>& context_ids, int64_t generated_index) {
  SampleOutcome outcome;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  GLM_CHECK(vocab > 0);

  // Repetition penalty (HF RepetitionPenaltyLogitsProcessor): each distinct id once.
  if (params.repetition_penalty != 1.0f && !context_ids.empty()) {
    distinct_ids_.assign(context_ids.begin(), context_ids.end());
    std::sort(distinct_ids_.begin(), distinct_ids_.end());
    distinct_ids_.erase(std::unique(distinct_ids_.begin(), distinct_ids_.end()), distinct_ids_.end());
    const float penalty = params.repetition_penalty;
    for (int32_t id : distinct_ids_) {
      float& logit = logits[static_cast<size_t>(id)];
      logit = logit > 0.0f ? logit / penalty : logit * penalty;
    }
  }

  // One pass: max, argmax (first index of the max) and the non-finite guard. NaN compares false
  // and would slip past the max, so finiteness is tested on every element explicitly.
  float max_logit = -std::numeric_limits<float>::infinity();
  int32_t argmax = 0;
  bool all_finite = true;
  for (int32_t i = 0; i < vocab; ++i) {
    const float x = logits[static_cast<size_t>(i)];
    if (!std::isfinite(x)) [[unlikely]] {
      if (all_finite) outcome.nonfinite_column = i;
      all_finite = false;
    }
    if (x > max_logit) {
      max_logit = x;
      argmax = i;
    }
  }
  if (!all_finite) {
    outcome.nonfinite = true;
    return outcome;
  }
  if (params.greedy()) {
    outcome.token_id = argmax;
    return outcome;
  }

  const double inv_temperature = 1.0 / params.temperature;
  const bool use_top_k = params.top_k > 0 && params.top_k < vocab;
  const bool use_top_p = params.top_p < 1.0f;
  const double u = PhiloxUniform(params.seed, static_cast<uint64_t>(generated_index));

  if (!use_top_k && !use_top_p) {
    // Full distribution in vocabulary order: no sort needed.
    weights_.resize(static_cast<size_t>(vocab));
    double total = 0.0;
    for (int32_t i = 0; i < vocab; ++i) {
      double w = std::exp((double(logits[static_cast<size_t>(i)]) - max_logit) * inv_temperature);
      weights_[static_cast<size_t>(i)] = w;
      total += w;
    }
    double target = u * total;
    double cumulative = 0.0;
    for (int32_t i = 0; i < vocab; ++i) {
      cumulative += weights_[static_cast<size_t>(i)];
      if (target < cumulative) {
        outcome.token_id = i;
        return outcome;
      }
    }
    outcome.token_id = argmax;  // rounding left target at the very top
    return outcome;
  }

  // Candidates by descending logit, ties by ascending id (deterministic).
  candidates_.resize(static_cast<size_t>(vocab));
  for (int32_t i = 0; i < vocab; ++i) candidates_[static_cast<size_t>(i)] = {logits[static_cast<size_t>(i)], i};
  auto higher = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t kept = candidates_.size();
  if (use_top_k) {
    kept = static_cast<size_t>(params.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(kept),
                      candidates_.end(), higher);
    // HF keeps every token whose logit ties the k-th (only logits below it are removed).
    const float kth = candidates_[kept - 1].first;
    auto ties_end = std::partition(candidates_.begin() + static_cast<std::ptrdiff_t>(kept),
                                   candidates_.end(),
                                   [&](const std::pair<float, int32_t>& c) { return c.first == kth; });
    std::sort(candidates_.begin() + static_cast<std::ptrdiff_t>(kept), ties_end, higher);
    kept = static_cast<size_t>(ties_end - candidates_.begin());
  } else {
    std::sort(candidates_.begin(), candidates_.end(), higher);
  }

  weights_.resize(kept);
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    double w = std::exp((double(candidates_[i].first) - max_logit) * inv_temperature);
    weights_[i] = w;
    total += w;
  }
  if (use_top_p) {
    // HF TopPLogitsWarper: a token stays when the probability of the tokens ranked above it is
    // below top_p; the most likely token always stays.
    double above = 0.0;
    size_t keep_p = 0;
    while (keep_p < kept && (keep_p == 0 || above / total < double(params.top_p))) {
      above += weights_[keep_p];
      ++keep_p;
    }
    kept = keep_p;
    total = 0.0;
    for (size_t i = 0; i < kept; ++i) total += weights_[i];
  }
  double target = u * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += weights_[i];
    if (target < cumulative) {
      outcome.token_id = candidates_[i].second;
      return outcome;
    }
  }
  outcome.token_id = candidates_[0].second;
  return outcome;
}

}  // namespace glm
