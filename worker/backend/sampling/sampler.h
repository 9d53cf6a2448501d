// Picks the next token from one row of fp32 logits on the host, with HF transformers'
// semantics: repetition penalty, then temperature, top-k, top-p; greedy (argmax, lowest index
// on ties like torch.argmax) when temperature == 0.
//
// Randomness is counter-based: the draw for generated token i of a request is
// Philox4x32-10(key = seed, counter = i). It depends on nothing else, so a request resumed
// after k tokens draws the same numbers and batch composition cannot change a result.
//
// The non-finite guard lives in the pass that finds the row's max/argmax (needed by both
// greedy and softmax): a NaN/Inf anywhere in the row is reported instead of a token.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace glm {

struct SamplingParams {
  float temperature = 1.0f;         // 0 => greedy (argmax)
  float top_p = 1.0f;               // (0, 1]
  int32_t top_k = 0;                // 0 => off
  float repetition_penalty = 1.0f;  // HF semantics: logit / p if > 0 else logit * p, over prompt+generated
  uint64_t seed = 0;                // the draw for generated token i uses Philox(seed, i): a request
                                    // resumed after k tokens continues the same random stream
  bool greedy() const { return temperature <= 0.0f; }
};

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);
// Uniform in [0, 1) with 53 random bits, for draw `index` of `seed`.
double PhiloxUniform(uint64_t seed, uint64_t index);

struct SampleOutcome {
  int32_t token_id = -1;
  bool nonfinite = false;        // the row held a NaN or Inf: no token
  int32_t nonfinite_column = -1; // first column found non-finite
};

class Sampler {
 public:
  // logits: [vocab] one row, modified in place (penalty). context_ids: the sequence's prompt and
  // generated ids so far (the repetition penalty's scope), all in [0, vocab).
  SampleOutcome Sample(std::span<float> logits, const SamplingParams& params,
                       const std::vector<int32_t>& context_ids, int64_t generated_index);

 private:
  std::vector<int32_t> distinct_ids_;                // scratch: penalized ids
  std::vector<std::pair<float, int32_t>> candidates_;  // scratch: (scaled logit, id)
  std::vector<double> weights_;                      // scratch: unnormalized probabilities
};

}  // namespace glm
