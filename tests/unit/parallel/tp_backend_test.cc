// Tensor parallelism end to end in one process: N ranks on threads over the CPU communicator,
// each a CPU backend holding its shard; rank 0 runs the engine through the group backend
// (worker/parallel/group_backend.h), the others RunFollower. TP=2 and TP=4 must give TP=1's
// greedy tokens (and the transformers fixtures' greedy_fp32) and logits within 1e-5; sampled
// requests must get the same tokens through the group's ForwardSample as through Forward and the
// engine's sampler; a follower that dies must bring the group down within seconds.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/golden/golden_models.h"
#include "tests/unit/parallel/parallel_test_util.h"
#include "tools/glm-mkmodel/random_checkpoint.h"
#include "worker/backend/backend.h"
#include "worker/engine/engine.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"
#include "worker/parallel/group_backend.h"

namespace glm {
namespace {

struct Prompt {
  std::vector<int32_t> ids;
  int max_new_tokens = 0;
};

// What one run of all prompts (submitted together: batched prefill and decode) produced.
struct RunOutput {
  std::vector<std::vector<int32_t>> tokens;                  // [prompt][generated]
  std::map<std::pair<int, int>, std::vector<float>> logits;  // (prompt, index) -> [vocab]
  absl::Status status;
};

// Loads the checkpoint on tp ranks (threads), runs the prompts through rank 0's engine: greedy
// unless `sampling` is given (request p then uses seed sampling->seed + p); observe_logits records
// every logit row (the engine then samples from Forward()'s logits, not ForwardSample()).
RunOutput RunGroup(const std::string& dir, int tp, const std::vector<Prompt>& prompts,
                   Precision precision = Precision::kFp32, const SamplingParams* sampling = nullptr,
                   bool observe_logits = true) {
  RunOutput out;
  out.tokens.resize(prompts.size());
  auto config = LoadModelConfig(dir);
  auto checkpoint = Checkpoint::Open(dir);
  if (!config.ok() || !checkpoint.ok()) {
    out.status = config.ok() ? checkpoint.status() : config.status();
    return out;
  }
  auto comms = testing::MakeThreadGroup(tp);
  if (!comms.ok()) {
    out.status = comms.status();
    return out;
  }
  std::mutex mu;
  std::vector<absl::Status> statuses = testing::RunOnAllRanks(tp, [&](int rank) -> absl::Status {
    auto backend = MakeCpuBackend();
    LoadOptions load;
    load.precision = precision;
    load.num_threads = 1;
    load.tp_rank = rank;
    load.tp_size = tp;
    load.comm = (*comms)[rank].get();
    absl::Status loaded = backend->Load(*config, **checkpoint, load);
    if (!loaded.ok()) {
      (*comms)[rank]->Abort();
      return loaded;
    }
    if (rank != 0) return RunFollower(*backend, *(*comms)[rank]);
    std::unique_ptr<Backend> group =
        tp > 1 ? MakeGroupBackend(std::move(backend), (*comms)[0].get()) : std::move(backend);
    EngineOptions options;
    options.kv_cache_bytes = 8 << 20;
    options.block_size = 8;
    if (observe_logits) {
      options.logits_observer = [&](const std::string& id, int32_t index, const float* logits,
                                    int64_t vocab) {
        std::lock_guard<std::mutex> lock(mu);
        out.logits[{std::stoi(id), index}] = std::vector<float>(logits, logits + vocab);
      };
    }
    auto engine = Engine::Create(options, std::move(group), nullptr);
    if (!engine.ok()) return engine.status();
    absl::Status first_error;
    for (size_t p = 0; p < prompts.size(); ++p) {
      GenerationRequest request;
      request.request_id = std::to_string(p);
      request.prompt_token_ids = prompts[p].ids;
      request.max_new_tokens = prompts[p].max_new_tokens;
      request.sampling.temperature = 0.f;
      if (sampling != nullptr) {
        request.sampling = *sampling;
        request.sampling.seed = sampling->seed + p;
      }
      request.ignore_eos = true;
      absl::Status submitted = (*engine)->Submit(request, [&, p](const TokenEvent& event) {
        std::lock_guard<std::mutex> lock(mu);
        if (event.token_id >= 0) out.tokens[p].push_back(event.token_id);
        if (event.finished && !event.error.ok() && first_error.ok()) first_error = event.error;
      });
      if (!submitted.ok()) return submitted;
    }
    absl::Status ran = (*engine)->RunUntilIdle();
    (*engine).reset();  // the group backend tells the followers to shut down
    if (!ran.ok()) return ran;
    return first_error;
  });
  for (const absl::Status& s : statuses) {
    if (!s.ok() && out.status.ok()) out.status = s;
  }
  return out;
}

float MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

using testing::GoldenModel;

class TensorParallelGolden : public ::testing::TestWithParam<GoldenModel> {
 protected:
  void SetUp() override {
    fixture_ = testing::LoadGoldenFixture(GetParam().name);
    dir_ = (std::filesystem::path(::testing::TempDir()) /
            (std::string("tp-golden-") + GetParam().name + "-" + std::to_string(getpid())))
               .string();
    absl::Status written = testing::WriteGoldenCheckpoint(GetParam(), fixture_, dir_);
    ASSERT_TRUE(written.ok()) << written;
    for (const auto& prompt : fixture_["prompts"]) {
      prompts_.push_back({prompt["input_ids"].get<std::vector<int32_t>>(),
                          fixture_["new_tokens"].get<int>()});
      greedy_.push_back(prompt["greedy_fp32"].get<std::vector<int32_t>>());
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  nlohmann::json fixture_;
  std::string dir_;
  std::vector<Prompt> prompts_;
  std::vector<std::vector<int32_t>> greedy_;  // transformers fp32
};

TEST_P(TensorParallelGolden, Tp2AndTp4EqualTp1AndTransformers) {
  const RunOutput tp1 = RunGroup(dir_, 1, prompts_);
  ASSERT_TRUE(tp1.status.ok()) << tp1.status;
  for (size_t p = 0; p < prompts_.size(); ++p) EXPECT_EQ(tp1.tokens[p], greedy_[p]) << "prompt " << p;
  for (int tp : {2, 4}) {
    const RunOutput run = RunGroup(dir_, tp, prompts_);
    ASSERT_TRUE(run.status.ok()) << "tp " << tp << ": " << run.status;
    for (size_t p = 0; p < prompts_.size(); ++p) {
      EXPECT_EQ(run.tokens[p], greedy_[p]) << "tp " << tp << " prompt " << p;
      EXPECT_EQ(run.tokens[p], tp1.tokens[p]) << "tp " << tp << " prompt " << p;
    }
    ASSERT_EQ(run.logits.size(), tp1.logits.size());
    float worst = 0;
    for (const auto& [key, logits] : tp1.logits) {
      auto it = run.logits.find(key);
      ASSERT_NE(it, run.logits.end());
      worst = std::max(worst, MaxDiff(it->second, logits));
    }
    EXPECT_LE(worst, 1e-5f) << "tp " << tp;
    std::cout << GetParam().name << " tp " << tp << ": " << tp1.logits.size()
              << " logits rows, max |tp - tp1| = " << worst << "\n";
  }
}

TEST_P(TensorParallelGolden, Bf16EmulationTp2TracksTp1) {
  // bf16 rounds each rank's partial o_proj / down_proj sum before the all-reduce (as a GPU's bf16
  // buffer would), so TP is not bitwise TP=1 here; the first token and the logits' scale agree.
  const std::vector<Prompt> prompts(prompts_.begin(), prompts_.begin() + 1);
  const RunOutput tp1 = RunGroup(dir_, 1, prompts, Precision::kBf16);
  const RunOutput tp2 = RunGroup(dir_, 2, prompts, Precision::kBf16);
  ASSERT_TRUE(tp1.status.ok()) << tp1.status;
  ASSERT_TRUE(tp2.status.ok()) << tp2.status;
  EXPECT_EQ(tp2.tokens[0].at(0), tp1.tokens[0].at(0));
  const auto& a = tp1.logits.at({0, 0});
  const auto& b = tp2.logits.at({0, 0});
  float max_abs = 0;
  for (float v : a) max_abs = std::max(max_abs, std::abs(v));
  EXPECT_LE(MaxDiff(a, b), 0.03f * max_abs);
}

TEST_P(TensorParallelGolden, Tp2SamplesLikeTheEnginesOwnSampler) {
  // Without a logits observer the engine calls ForwardSample: the group's leader samples its
  // gathered logits, the followers take part in the step. The same requests with an observer go
  // through Forward() and the engine's Sampler; TP=2's logits are deterministic, so the tokens
  // must be the same.
  SamplingParams sampling;
  sampling.temperature = 0.9f;
  sampling.top_k = 20;
  sampling.top_p = 0.9f;
  sampling.repetition_penalty = 1.1f;
  sampling.seed = 77;
  const RunOutput sampled = RunGroup(dir_, 2, prompts_, Precision::kFp32, &sampling, false);
  ASSERT_TRUE(sampled.status.ok()) << sampled.status;
  EXPECT_TRUE(sampled.logits.empty());
  const RunOutput observed = RunGroup(dir_, 2, prompts_, Precision::kFp32, &sampling, true);
  ASSERT_TRUE(observed.status.ok()) << observed.status;
  int differs_from_greedy = 0;
  for (size_t p = 0; p < prompts_.size(); ++p) {
    ASSERT_EQ(sampled.tokens[p].size(), static_cast<size_t>(prompts_[p].max_new_tokens));
    EXPECT_EQ(sampled.tokens[p], observed.tokens[p]) << "prompt " << p;
    differs_from_greedy += sampled.tokens[p] != greedy_[p];
  }
  EXPECT_GT(differs_from_greedy, 0) << "the sampler never left the greedy path: the test shows nothing";
}

INSTANTIATE_TEST_SUITE_P(Golden, TensorParallelGolden,
                         ::testing::Values(testing::kGoldenModels[0], testing::kGoldenModels[1]),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(TensorParallel, VocabNotDivisibleByTpIsPadded) {
  const std::string dir = (std::filesystem::path(::testing::TempDir()) /
                           ("tp-vocab-" + std::to_string(getpid())))
                              .string();
  RandomCheckpointSpec spec;
  auto config = PresetConfig("tiny", Architecture::kGlm4);
  ASSERT_TRUE(config.ok());
  spec.config = *config;
  spec.config.vocab_size = 509;  // 2 and 4 ranks: 255 / 128 rows per rank, the last one padded
  spec.config.tie_word_embeddings = true;
  spec.seed = 5;
  ASSERT_TRUE(WriteRandomCheckpoint(spec, dir).ok());
  const std::vector<Prompt> prompts = {{{1, 508, 7, 300, 45}, 6}, {{500, 2, 3}, 4}};
  const RunOutput tp1 = RunGroup(dir, 1, prompts);
  ASSERT_TRUE(tp1.status.ok()) << tp1.status;
  for (int tp : {2, 4}) {
    const RunOutput run = RunGroup(dir, tp, prompts);
    ASSERT_TRUE(run.status.ok()) << run.status;
    EXPECT_EQ(run.tokens, tp1.tokens) << "tp " << tp;
    for (const auto& [key, logits] : tp1.logits) {
      ASSERT_EQ(run.logits.at(key).size(), 509u);
      EXPECT_LE(MaxDiff(run.logits.at(key), logits), 1e-5f) << "tp " << tp;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(TensorParallel, StepBatchRoundTrips) {
  StepBatch batch;
  batch.token_ids = {5, 6, 7, 9};
  batch.positions = {0, 1, 2, 17};
  batch.seqs.resize(2);
  batch.seqs[0] = {41, 0, 3, 3, {4}, false};
  batch.seqs[1] = {-2, 3, 1, 18, {7, 1, 3}, true};
  std::vector<uint8_t> bytes = SerializeStepBatch(batch);
  auto parsed = ParseStepBatch(bytes.data(), bytes.size());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->token_ids, batch.token_ids);
  EXPECT_EQ(parsed->positions, batch.positions);
  ASSERT_EQ(parsed->seqs.size(), 2u);
  EXPECT_EQ(parsed->seqs[1].seq_id, -2);
  EXPECT_EQ(parsed->seqs[1].block_table, batch.seqs[1].block_table);
  EXPECT_TRUE(parsed->seqs[1].wants_logits);
  EXPECT_FALSE(parsed->seqs[0].wants_logits);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_FALSE(ParseStepBatch(bytes.data(), cut).ok()) << cut;
  }
}

// A follower that dies (its communicator closed, as when its process is killed) makes rank 0's
// group fail within seconds: on_failure fires, running requests fail UNAVAILABLE, later calls
// fail fast; nothing hangs.
class TensorParallelFailure : public ::testing::TestWithParam<bool /*busy*/> {};

TEST_P(TensorParallelFailure, DeadFollowerFailsTheGroupWithinSeconds) {
  const bool busy = GetParam();
  const std::string dir = (std::filesystem::path(::testing::TempDir()) /
                           ("tp-kill-" + std::to_string(getpid()) + (busy ? "-busy" : "-idle")))
                              .string();
  RandomCheckpointSpec spec;
  auto config = PresetConfig("tiny", Architecture::kGlm4);
  ASSERT_TRUE(config.ok());
  spec.config = *config;
  ASSERT_TRUE(WriteRandomCheckpoint(spec, dir).ok());
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok());
  auto comms = testing::MakeThreadGroup(2, absl::Seconds(10));
  ASSERT_TRUE(comms.ok()) << comms.status();

  std::vector<std::unique_ptr<Backend>> backends;
  for (int rank = 0; rank < 2; ++rank) {
    backends.push_back(MakeCpuBackend());
    LoadOptions load;
    load.num_threads = 1;
    load.tp_rank = rank;
    load.tp_size = 2;
    load.comm = (*comms)[rank].get();
    ASSERT_TRUE(backends.back()->Load(*config, **checkpoint, load).ok());
  }
  absl::Status follower_status;
  std::thread follower([&] { follower_status = RunFollower(*backends[1], *(*comms)[1]); });

  std::mutex mu;
  std::condition_variable cv;
  bool failed = false;
  std::chrono::steady_clock::time_point failed_at;
  absl::Status failure;
  GroupBackendOptions group_options;
  group_options.keepalive = absl::Milliseconds(500);
  group_options.on_failure = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    failed = true;
    failed_at = std::chrono::steady_clock::now();
    failure = s;
    cv.notify_all();
  };
  EngineOptions options;
  options.kv_cache_bytes = 4 << 20;
  auto engine = Engine::Create(
      options, MakeGroupBackend(std::move(backends[0]), (*comms)[0].get(), group_options), nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  (*engine)->Start();

  std::atomic<int> tokens{0};
  absl::Status request_error;
  bool finished = false;
  GenerationRequest request;
  request.request_id = "long";
  request.prompt_token_ids = {1, 2, 3, 4, 5};
  request.max_new_tokens = 900;
  request.sampling.temperature = 0.f;
  request.ignore_eos = true;
  if (busy) {
    ASSERT_TRUE((*engine)
                    ->Submit(request,
                             [&](const TokenEvent& e) {
                               if (e.token_id >= 0) ++tokens;
                               if (e.finished) {
                                 std::lock_guard<std::mutex> lock(mu);
                                 finished = true;
                                 request_error = e.error;
                                 cv.notify_all();
                               }
                             })
                    .ok());
    while (tokens.load() < 5) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // a few keepalives
  }
  const auto killed_at = std::chrono::steady_clock::now();
  // "kill -9": the follower's sockets are shut down under it (Abort), as the kernel does for a
  // killed process. (The real kill -9 of a follower process: tests/integration/tp_cluster_test.cc.)
  (*comms)[1]->Abort();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return failed; }))
        << "the group did not notice the dead follower within 10 s";
    if (busy) {
      ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return finished; }));
      EXPECT_EQ(request_error.code(), absl::StatusCode::kUnavailable) << request_error;
    }
  }
  const double seconds =
      std::chrono::duration<double>(failed_at - killed_at).count();
  EXPECT_LT(seconds, 10.0);
  std::cout << (busy ? "busy" : "idle") << ": group failed " << seconds << " s after the kill: "
            << failure << "\n";
  follower.join();
  EXPECT_FALSE(follower_status.ok());

  // Later requests fail fast with UNAVAILABLE instead of hanging.
  std::atomic<bool> done{false};
  absl::Status later;
  request.request_id = "after";
  request.max_new_tokens = 2;
  const auto submitted_at = std::chrono::steady_clock::now();
  ASSERT_TRUE((*engine)
                  ->Submit(request,
                           [&](const TokenEvent& e) {
                             if (e.finished) {
                               later = e.error;
                               done = true;
                             }
                           })
                  .ok());
  while (!done && std::chrono::steady_clock::now() - submitted_at < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(done.load());
  EXPECT_EQ(later.code(), absl::StatusCode::kUnavailable) << later;
  (*engine)->Stop();
  std::filesystem::remove_all(dir);
}

// A follower that hangs (alive, connected, silent) fails the group after the communicator's
// op timeout instead of blocking rank 0 forever.
TEST(TensorParallel, HungFollowerFailsTheGroupAfterTheOpTimeout) {
  const std::string dir = (std::filesystem::path(::testing::TempDir()) /
                           ("tp-hung-" + std::to_string(getpid())))
                              .string();
  RandomCheckpointSpec spec;
  auto config = PresetConfig("tiny", Architecture::kGlm);
  ASSERT_TRUE(config.ok());
  spec.config = *config;
  ASSERT_TRUE(WriteRandomCheckpoint(spec, dir).ok());
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok());
  auto comms = testing::MakeThreadGroup(2, absl::Seconds(1));
  ASSERT_TRUE(comms.ok()) << comms.status();
  auto backend = MakeCpuBackend();
  LoadOptions load;
  load.num_threads = 1;
  load.tp_size = 2;
  load.comm = (*comms)[0].get();
  ASSERT_TRUE(backend->Load(*config, **checkpoint, load).ok());
  std::atomic<bool> notified{false};
  GroupBackendOptions group_options;
  group_options.keepalive = absl::Milliseconds(100);
  group_options.on_failure = [&](const absl::Status&) { notified = true; };
  const auto start = std::chrono::steady_clock::now();
  // Rank 1 never runs RunFollower: the KV allocation message cannot complete.
  auto engine = Engine::Create(
      EngineOptions{}, MakeGroupBackend(std::move(backend), (*comms)[0].get(), group_options),
      nullptr);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kUnavailable) << engine.status();
  EXPECT_TRUE(notified.load());
  EXPECT_LT(seconds, 5.0);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(WhileBusyAndIdle, TensorParallelFailure, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Busy" : "Idle"; });

}  // namespace
}  // namespace glm
