#include "worker/backend/sampling/sampler.h"

#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace glm {
namespace {

std::vector<float> RandomRow(uint32_t seed, int vocab = 50) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-5.0f, 5.0f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (float& x : row) x = dist(rng);
  return row;
}

int32_t Argmax(const std::vector<float>& row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

TEST(Philox, MatchesRandom123KnownAnswers) {
  auto zero = Philox4x32({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(zero, (std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  auto ones = Philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                         {0xffffffffu, 0xffffffffu});
  EXPECT_EQ(ones, (std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  auto pi = Philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                       {0xa4093822u, 0x299f31d0u});
  EXPECT_EQ(pi, (std::array<uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox, UniformDependsOnlyOnSeedAndIndex) {
  EXPECT_EQ(PhiloxUniform(7, 3), PhiloxUniform(7, 3));
  EXPECT_NE(PhiloxUniform(7, 3), PhiloxUniform(7, 4));
  EXPECT_NE(PhiloxUniform(7, 3), PhiloxUniform(8, 3));
  for (uint64_t i = 0; i < 1000; ++i) {
    double u = PhiloxUniform(123, i);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Sampler, GreedyIsArgmaxWithLowestIndexOnTies) {
  Sampler sampler;
  std::vector<float> row = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(sampler.Sample(row, greedy, {}, 0).token_id, 1);
  std::vector<float> all_negative = {-9.0f, -1.0f, -1.0f};
  EXPECT_EQ(sampler.Sample(all_negative, greedy, {}, 0).token_id, 1);
}

TEST(Sampler, TopK1EqualsGreedyForEverySeed) {
  Sampler sampler;
  for (uint32_t trial = 0; trial < 200; ++trial) {
    std::vector<float> row = RandomRow(trial);
    SamplingParams params;
    params.temperature = 1.3f;
    params.top_k = 1;
    params.seed = trial * 77;
    EXPECT_EQ(sampler.Sample(row, params, {}, trial).token_id, Argmax(row)) << trial;
  }
}

TEST(Sampler, TinyTopPEqualsGreedyForEverySeed) {
  Sampler sampler;
  for (uint32_t trial = 0; trial < 200; ++trial) {
    std::vector<float> row = RandomRow(trial + 1000);
    SamplingParams params;
    params.temperature = 2.0f;
    params.top_p = 1e-6f;
    params.seed = trial;
    EXPECT_EQ(sampler.Sample(row, params, {}, trial).token_id, Argmax(row)) << trial;
  }
}

TEST(Sampler, RepetitionPenaltyChangesTheArgmaxWithHfSemantics) {
  Sampler sampler;
  SamplingParams params;
  params.temperature = 0.0f;
  // Positive logit divided: 2.0 / 1.5 = 1.33 < 1.9.
  std::vector<float> row = {2.0f, 1.9f, -1.0f};
  EXPECT_EQ(sampler.Sample(row, params, {0}, 0).token_id, 0);  // penalty 1: unchanged
  params.repetition_penalty = 1.5f;
  row = {2.0f, 1.9f, -1.0f};
  EXPECT_EQ(sampler.Sample(row, params, {0, 0, 0}, 0).token_id, 1);
  EXPECT_FLOAT_EQ(row[0], 2.0f / 1.5f);  // each distinct id once, not three times
  // Negative logit multiplied: -0.5 * 4 = -2 < -1.5, so id 1 wins over the penalized id 0.
  params.repetition_penalty = 4.0f;
  row = {-0.5f, -1.5f, -3.0f};
  EXPECT_EQ(sampler.Sample(row, params, {0}, 0).token_id, 1);
  EXPECT_FLOAT_EQ(row[0], -2.0f);
  // A penalty below 1 rewards repetition.
  params.repetition_penalty = 0.5f;
  row = {1.0f, 1.5f, 0.0f};
  EXPECT_EQ(sampler.Sample(row, params, {0}, 0).token_id, 0);
}

TEST(Sampler, NonFiniteLogitsAreReportedInsteadOfAToken) {
  Sampler sampler;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (bool greedy : {true, false}) {
      std::vector<float> row = RandomRow(5);
      row[17] = bad;
      SamplingParams params;
      params.temperature = greedy ? 0.0f : 1.0f;
      SampleOutcome outcome = sampler.Sample(row, params, {}, 0);
      EXPECT_TRUE(outcome.nonfinite) << bad;
      EXPECT_EQ(outcome.token_id, -1);
      EXPECT_EQ(outcome.nonfinite_column, 17);
    }
  }
  std::vector<float> finite = RandomRow(5);
  SamplingParams params;
  EXPECT_FALSE(sampler.Sample(finite, params, {}, 0).nonfinite);
}

std::vector<double> Frequencies(const std::vector<float>& logits, SamplingParams params, int draws) {
  Sampler sampler;
  std::vector<double> counts(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) {
    std::vector<float> row = logits;
    SampleOutcome outcome = sampler.Sample(row, params, {}, i);
    counts[static_cast<size_t>(outcome.token_id)] += 1.0;
  }
  for (double& c : counts) c /= draws;
  return counts;
}

void ExpectNear(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  // 20k draws: one standard deviation is at most 0.0036; 0.015 is > 4 sigma.
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.015) << "token " << i;
}

TEST(Sampler, TemperatureSamplingFrequenciesMatchTheDistribution) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams params;
  params.seed = 42;
  params.temperature = 1.0f;
  ExpectNear(Frequencies(logits, params, 20000), {0.5, 0.3, 0.2});
  params.temperature = 0.5f;  // p^2 renormalized
  ExpectNear(Frequencies(logits, params, 20000), {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38});
  params.temperature = 1.0f;
  params.top_k = 2;
  ExpectNear(Frequencies(logits, params, 20000), {0.5 / 0.8, 0.3 / 0.8, 0.0});
  params.top_k = 0;
  params.top_p = 0.6f;  // 0.5 is below 0.6, so the second token stays too
  ExpectNear(Frequencies(logits, params, 20000), {0.5 / 0.8, 0.3 / 0.8, 0.0});
  params.top_p = 0.5f;  // 0.5 is not below 0.5: only the first stays
  ExpectNear(Frequencies(logits, params, 20000), {1.0, 0.0, 0.0});
  // Exactly on the boundary (probabilities 1/2, 1/2 are exact): HF removes the second token.
  ExpectNear(Frequencies({0.0f, 0.0f}, params, 20000), {1.0, 0.0});
  params.top_p = 0.51f;
  ExpectNear(Frequencies({0.0f, 0.0f}, params, 20000), {0.5, 0.5});
}

TEST(Sampler, SameSeedAndIndexDrawTheSameTokenAndSeedsDiffer) {
  Sampler sampler;
  std::vector<float> logits(64, 0.0f);  // uniform: every draw shows the random stream
  SamplingParams a;
  a.seed = 1;
  SamplingParams b;
  b.seed = 2;
  int same_across_seeds = 0;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> r1 = logits, r2 = logits, r3 = logits;
    int32_t t1 = sampler.Sample(r1, a, {}, i).token_id;
    int32_t t2 = sampler.Sample(r2, a, {}, i).token_id;
    int32_t t3 = sampler.Sample(r3, b, {}, i).token_id;
    EXPECT_EQ(t1, t2);
    same_across_seeds += t1 == t3;
  }
  EXPECT_LT(same_across_seeds, 20);  // expected 200/64 ~ 3
}

TEST(Sampler, DrawForGeneratedTokenIUsesPhiloxOfSeedAndIOnly) {
  // Uniform logits: the token is floor(u * vocab), so the draw itself is visible. The context
  // (what a batch or a resume could change) must not enter the draw.
  Sampler sampler;
  const int vocab = 1000;
  SamplingParams params;
  params.seed = 0xC0FFEEull << 32 | 17;
  for (int64_t i = 0; i < 300; ++i) {
    std::vector<float> row(vocab, 0.25f);
    std::vector<int32_t> context(static_cast<size_t>(i % 7), 3);
    const int32_t want = static_cast<int32_t>(PhiloxUniform(params.seed, static_cast<uint64_t>(i)) * vocab);
    EXPECT_EQ(sampler.Sample(row, params, context, i).token_id, want) << i;
  }
}

}  // namespace
}  // namespace glm
