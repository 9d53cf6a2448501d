// The engine driving the real CPU backend on a tiny random GLM-4 checkpoint: continuous batching,
// chunked prefill and preemption must not change any request's tokens.
#include <cstring>
#include <filesystem>
#include <map>

#include "gtest/gtest.h"
#include "tools/glm-mkmodel/random_checkpoint.h"
#include "worker/runtime/model_session.h"

namespace glm {
namespace {

class EngineOnCpuBackend : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            ("engine-cpu-" + std::to_string(getpid())))
               .string();
    RandomCheckpointSpec spec;
    spec.config = *PresetConfig("tiny", Architecture::kGlm4);
    spec.seed = 5;
    setup_status_ = WriteRandomCheckpoint(spec, dir_);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  // A failure inside SetUpTestSuite would make gtest report the tests as skipped (and ctest
  // count them as such): fail each test instead.
  void SetUp() override { ASSERT_TRUE(setup_status_.ok()) << setup_status_; }

  using LogitRows = std::map<std::pair<std::string, int32_t>, std::vector<float>>;

  static std::unique_ptr<ModelSession> Open(int32_t kv_blocks, int32_t batched_tokens,
                                            bool prefix_caching = false, LogitRows* logits = nullptr) {
    ModelSessionOptions options;
    options.engine.enable_prefix_caching = prefix_caching;
    if (logits != nullptr) {
      options.engine.logits_observer = [logits](const std::string& id, int32_t index,
                                                const float* row, int64_t vocab) {
        (*logits)[{id, index}].assign(row, row + vocab);
      };
    }
    options.model_dir = dir_;
    options.precision = "fp32";
    options.threads = 2;
    options.engine.block_size = 4;
    options.engine.num_kv_blocks = kv_blocks;
    options.engine.max_num_batched_tokens = batched_tokens;
    options.engine.max_num_seqs = 16;
    auto session = ModelSession::Open(options);
    EXPECT_TRUE(session.ok()) << session.status();
    return session.ok() ? *std::move(session) : nullptr;
  }

  static GenerationRequest Request(int i) {
    GenerationRequest r;
    r.request_id = "r" + std::to_string(i);
    for (int t = 0; t < 5 + 3 * i; ++t) r.prompt_token_ids.push_back((37 * i + 11 * t) % 490);
    r.max_new_tokens = 12;
    r.ignore_eos = true;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;  // half greedy, half seeded sampling
    r.sampling.top_p = 0.9f;
    r.sampling.seed = 1000 + i;
    return r;
  }

  // Runs requests all at once through one engine; returns tokens by request id.
  static std::map<std::string, std::vector<int32_t>> RunTogether(ModelSession& session, int n) {
    std::map<std::string, std::vector<int32_t>> out;
    for (int i = 0; i < n; ++i) {
      GenerationRequest r = Request(i);
      EXPECT_TRUE(session.engine()
                      .Submit(r,
                              [&out](const TokenEvent& e) {
                                if (e.token_id >= 0) out[e.request_id].push_back(e.token_id);
                                if (e.finished) {
                                  EXPECT_TRUE(e.error.ok()) << e.error;
                                }
                              })
                      .ok());
    }
    EXPECT_TRUE(session.engine().RunUntilIdle().ok());
    return out;
  }

  static inline std::string dir_;
  static inline absl::Status setup_status_;
};

TEST_F(EngineOnCpuBackend, SixteenConcurrentRequestsEqualEachRequestAlone) {
  auto alone_session = Open(256, 512);
  ASSERT_NE(alone_session, nullptr);
  std::map<std::string, std::vector<int32_t>> alone;
  for (int i = 0; i < 16; ++i) {
    RunResult result;
    ASSERT_TRUE(alone_session->Generate(Request(i), nullptr, nullptr, &result).ok());
    alone["r" + std::to_string(i)] = result.token_ids;
  }
  // Small token budget: prefills are chunked and share steps with other requests' decodes.
  auto batched_session = Open(256, 24);
  ASSERT_NE(batched_session, nullptr);
  auto together = RunTogether(*batched_session, 16);
  EXPECT_EQ(together, alone);
  EXPECT_GT(batched_session->engine().Stats().last_batch_size, 0);
}

TEST_F(EngineOnCpuBackend, KvExhaustionPreemptsAndStillCompletesEveryRequestIdentically) {
  auto roomy = Open(256, 64);
  auto cramped = Open(40, 64);  // 160 token slots for 16 requests of up to 62 tokens each
  ASSERT_NE(roomy, nullptr);
  ASSERT_NE(cramped, nullptr);
  auto expected = RunTogether(*roomy, 16);
  auto got = RunTogether(*cramped, 16);
  EXPECT_EQ(got, expected);
  EXPECT_GT(cramped->engine().Stats().preemptions, 0) << "the pool was meant to run out";
  EXPECT_EQ(cramped->engine().Stats().kv_blocks_free, cramped->engine().Stats().kv_blocks_total);
}

TEST_F(EngineOnCpuBackend, SeedsReproduceAndDiffer) {
  auto session = Open(256, 64);
  ASSERT_NE(session, nullptr);
  GenerationRequest r = Request(1);
  r.max_new_tokens = 16;
  RunResult a, b, c;
  ASSERT_TRUE(session->Generate(r, nullptr, nullptr, &a).ok());
  ASSERT_TRUE(session->Generate(r, nullptr, nullptr, &b).ok());
  r.sampling.seed += 1;
  ASSERT_TRUE(session->Generate(r, nullptr, nullptr, &c).ok());
  EXPECT_EQ(a.token_ids, b.token_ids);
  EXPECT_NE(a.token_ids, c.token_ids);
}

// Prefix caching on the real backend: requests that continue a cached 20-token prefix (5 blocks)
// get every logit bit for bit as a full compute gives them, sharing the blocks concurrently.
TEST_F(EngineOnCpuBackend, PrefixCachedContinuationsGiveEveryLogitBitForBit) {
  auto request = [](int i) {
    GenerationRequest r = Request(i);
    std::vector<int32_t> prompt;
    for (int t = 0; t < 20; ++t) prompt.push_back((13 * t + 7) % 490);  // shared
    for (int t = 0; t < 3 + i; ++t) prompt.push_back((29 * i + 5 * t + 1) % 490);
    r.prompt_token_ids = prompt;
    r.max_new_tokens = 6;
    return r;
  };
  LogitRows full, cached;
  auto plain = Open(256, 16, /*prefix_caching=*/false, &full);
  auto caching = Open(256, 16, /*prefix_caching=*/true, &cached);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(caching, nullptr);
  for (ModelSession* session : {plain.get(), caching.get()}) {
    for (auto [from, to] : {std::pair{0, 1}, std::pair{1, 6}}) {  // the first one alone, then 5 at once
      for (int i = from; i < to; ++i) {
        ASSERT_TRUE(session->engine().Submit(request(i), [](const TokenEvent& e) {
          if (e.finished) {
            EXPECT_TRUE(e.error.ok()) << e.error;
          }
        }).ok());
      }
      ASSERT_TRUE(session->engine().RunUntilIdle().ok());
    }
  }
  EXPECT_EQ(caching->engine().Stats().prefix_hit_tokens, 5 * 20);
  EXPECT_EQ(plain->engine().Stats().prefix_hit_tokens, 0);
  ASSERT_EQ(cached.size(), full.size());
  EXPECT_EQ(full.size(), 6u * 6u);
  for (const auto& [key, row] : full) {
    auto it = cached.find(key);
    ASSERT_NE(it, cached.end()) << key.first << " token " << key.second;
    EXPECT_EQ(std::memcmp(it->second.data(), row.data(), row.size() * sizeof(float)), 0)
        << key.first << " token " << key.second << ": logits differ";
  }
}

}  // namespace
}  // namespace glm
