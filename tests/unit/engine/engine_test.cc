// Engine properties, checked against a fake paged backend whose logits are a pure function of
// each sequence's context read back through its block table (fake_backend.h).
#include "worker/engine/engine.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/fake_backend.h"
#include "tests/unit/engine/fake_tokenizer.h"

namespace glm {
namespace {

using testing::FakeBackendRecord;
using testing::FakeBehavior;
using testing::FakeConfig;
using testing::FakePagedBackend;
using testing::FakeTokenizer;
using testing::Letter;

struct Result {
  std::vector<int32_t> tokens;
  std::vector<int32_t> indices;
  std::vector<std::string> deltas;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  absl::Status error;
  int finished_events = 0;
  int events_after_finish = 0;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  std::vector<float> logprobs;                      // per token event
  std::vector<std::vector<TokenLogprob>> tops;      // per token event
};

// Collects every request's events (thread-safe: the background-thread tests use it too).
class Collector {
 public:
  // key: where the results go; request_id: the id the events must carry (default: key).
  TokenCallback For(const std::string& key, std::string request_id = "") {
    if (request_id.empty()) request_id = key;
    return [this, key, request_id](const TokenEvent& event) {
      std::lock_guard<std::mutex> lock(mutex_);
      Result& r = results_[key];
      EXPECT_EQ(event.request_id, request_id);
      if (r.finished_events > 0) r.events_after_finish++;
      if (event.token_id >= 0) {
        r.tokens.push_back(event.token_id);
        r.indices.push_back(event.index);
        r.logprobs.push_back(event.logprob);
        r.tops.push_back(event.top_logprobs);
      }
      if (!event.text_delta.empty()) r.deltas.push_back(event.text_delta);
      r.text += event.text_delta;
      r.prompt_tokens = event.prompt_tokens;
      r.generated_tokens = event.generated_tokens;
      r.cached_prompt_tokens = event.cached_prompt_tokens;
      if (event.finished) {
        r.finished_events++;
        r.reason = event.finish_reason;
        r.error = event.error;
        cv_.notify_all();
      }
    };
  }
  Result Get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return results_[id];
  }
  bool WaitFinished(const std::vector<std::string>& ids, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& id : ids) {
        auto it = results_.find(id);
        if (it == results_.end() || it->second.finished_events == 0) return false;
      }
      return true;
    });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, Result> results_;
};

EngineOptions SmallOptions() {
  EngineOptions options;
  options.block_size = 4;
  options.num_kv_blocks = 256;
  options.max_num_seqs = 16;
  options.max_num_batched_tokens = 512;
  options.worker_name = "test-worker";
  return options;
}

std::unique_ptr<Engine> MakeEngine(const EngineOptions& options, const FakeBehavior& behavior = {},
                                   const Tokenizer* tokenizer = nullptr,
                                   FakeBackendRecord* record = nullptr) {
  auto engine = Engine::Create(
      options, std::make_unique<FakePagedBackend>(FakeConfig(), behavior, record), tokenizer);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(engine).value();
}

std::vector<int32_t> RandomPrompt(uint32_t seed, int length) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(2, 62);  // no eos, no NaN trigger 63
  std::vector<int32_t> prompt(static_cast<size_t>(length));
  for (int32_t& t : prompt) t = dist(rng);
  return prompt;
}

GenerationRequest MakeRequest(const std::string& id, std::vector<int32_t> prompt, int max_new,
                              float temperature = 0.0f, uint64_t seed = 0) {
  GenerationRequest request;
  request.request_id = id;
  request.prompt_token_ids = std::move(prompt);
  request.max_new_tokens = max_new;
  request.sampling.temperature = temperature;
  request.sampling.seed = seed;
  return request;
}

// A mix of sampling settings, prompt lengths and output lengths.
std::vector<GenerationRequest> SixteenRequests() {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    GenerationRequest r = MakeRequest(absl::StrCat("req", i), RandomPrompt(100 + i, 1 + 3 * i),
                                      8 + i % 7, i % 2 ? 0.9f : 0.0f, 1000 + i);
    if (i % 4 == 1) r.sampling.top_k = 10;
    if (i % 4 == 3) r.sampling.top_p = 0.8f;
    if (i % 3 == 0) r.sampling.repetition_penalty = 1.3f;
    requests.push_back(std::move(r));
  }
  return requests;
}

Result RunAlone(const GenerationRequest& request, const FakeBehavior& behavior = {},
                const Tokenizer* tokenizer = nullptr) {
  auto engine = MakeEngine(SmallOptions(), behavior, tokenizer);
  Collector collector;
  EXPECT_TRUE(engine->Submit(request, collector.For(request.request_id)).ok());
  EXPECT_TRUE(engine->RunUntilIdle().ok());
  return collector.Get(request.request_id);
}

void ExpectSameOutput(const Result& got, const Result& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.text, want.text) << what;
  EXPECT_EQ(got.reason, want.reason) << what;
  EXPECT_EQ(got.finished_events, 1) << what;
  EXPECT_EQ(got.events_after_finish, 0) << what;
}

TEST(Engine, SixteenConcurrentRequestsGiveTheSameTokensAsEachAlone) {
  FakeTokenizer tokenizer;
  FakeBackendRecord record;
  EngineOptions options = SmallOptions();
  options.max_num_batched_tokens = 24;  // forces chunked prefills next to decodes
  auto engine = MakeEngine(options, {}, &tokenizer, &record);
  Collector collector;
  auto requests = SixteenRequests();
  for (const auto& r : requests) ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_GE(record.max_seqs_in_step, 8);  // really batched
  EXPECT_LE(record.max_tokens_in_step, 24);
  // The backend was warmed up once, for the engine's sequence limit, before any step.
  EXPECT_EQ(record.warmups, 1);
  EXPECT_EQ(record.warmup_max_seqs, options.max_num_seqs);
  EXPECT_EQ(record.forwards_at_warmup, 0);
  for (const auto& r : requests) {
    Result alone = RunAlone(r, {}, &tokenizer);
    Result batched = collector.Get(r.request_id);
    ExpectSameOutput(batched, alone, r.request_id);
    EXPECT_EQ(batched.tokens.size(), static_cast<size_t>(r.max_new_tokens));
    EXPECT_EQ(batched.reason, FinishReason::kLength);
  }
  EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  EXPECT_EQ(stats.running + stats.waiting, 0);
}

// Submits SixteenRequests() to engine, runs it until idle and returns the requests (a failure is
// reported to the test, which should stop on HasFailure()).
std::vector<GenerationRequest> RunSixteen(Engine& engine, Collector& collector) {
  auto requests = SixteenRequests();
  for (const auto& r : requests) {
    const absl::Status st = engine.Submit(r, collector.For(r.request_id));
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return requests;
  }
  const absl::Status run = engine.RunUntilIdle();
  EXPECT_TRUE(run.ok()) << run;
  return requests;
}

// Too few KV blocks for SixteenRequests() at once: 56 tokens for 16 requests needing up to 55 each.
EngineOptions TightKvOptions() {
  EngineOptions options = SmallOptions();
  options.num_kv_blocks = 14;
  options.max_num_batched_tokens = 32;
  options.max_num_seqs = 6;
  return options;
}

// The prefill-first policy changes which steps a request's tokens run in, never the tokens: the
// sixteen requests with chunked prefills, and again with too few KV blocks (preemptions).
TEST(Engine, PrefillFirstGivesEveryRequestTheTokensItGetsAlone) {
  FakeTokenizer tokenizer;
  for (bool tight : {false, true}) {
    EngineOptions options = tight ? TightKvOptions() : SmallOptions();
    if (!tight) options.max_num_batched_tokens = 24;  // chunked prefills
    options.scheduling = SchedulingPolicy::kPrefillFirst;
    options.max_prefill_only_steps = 3;
    FakeBackendRecord record;
    auto engine = MakeEngine(options, {}, &tokenizer, &record);
    Collector collector;
    const auto requests = RunSixteen(*engine, collector);
    if (HasFailure()) return;
    EXPECT_GE(record.max_seqs_in_step, tight ? 2 : 8);
    if (tight) {
      EXPECT_GT(engine->Stats().preemptions, 0);
    }
    for (const auto& r : requests) {
      ExpectSameOutput(collector.Get(r.request_id), RunAlone(r, {}, &tokenizer),
                       absl::StrCat(r.request_id, tight ? " (tight KV)" : ""));
    }
    EXPECT_EQ(engine->Stats().kv_blocks_free, engine->Stats().kv_blocks_total);
  }
}

TEST(Engine, ChunkedPrefillEqualsOneShotPrefill) {
  for (float temperature : {0.0f, 1.0f}) {
    GenerationRequest request = MakeRequest("long", RandomPrompt(7, 50), 12, temperature, 99);
    FakeBackendRecord one_shot_record, chunked_record;
    EngineOptions one_shot = SmallOptions();
    EngineOptions chunked = SmallOptions();
    chunked.max_num_batched_tokens = 3;
    auto a = MakeEngine(one_shot, {}, nullptr, &one_shot_record);
    auto b = MakeEngine(chunked, {}, nullptr, &chunked_record);
    Collector collector;
    ASSERT_TRUE(a->Submit(request, collector.For("a", "long")).ok());
    ASSERT_TRUE(b->Submit(request, collector.For("b", "long")).ok());
    ASSERT_TRUE(a->RunUntilIdle().ok());
    ASSERT_TRUE(b->RunUntilIdle().ok());
    EXPECT_EQ(one_shot_record.max_chunk, 50);
    EXPECT_EQ(chunked_record.max_chunk, 3);
    ExpectSameOutput(collector.Get("b"), collector.Get("a"), "chunked");
    EXPECT_EQ(collector.Get("a").tokens.size(), 12u);
    EXPECT_GT(b->Stats().steps, a->Stats().steps);
  }
}

TEST(Engine, KvExhaustionPreemptsAndStillCompletesEveryRequestIdentically) {
  FakeTokenizer tokenizer;
  EngineOptions options = TightKvOptions();
  FakeBackendRecord record;
  auto engine = MakeEngine(options, {}, &tokenizer, &record);
  Collector collector;
  const auto requests = RunSixteen(*engine, collector);
  if (HasFailure()) return;
  EngineStats stats = engine->Stats();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  EXPECT_LE(record.max_seqs_in_step, 6);
  EXPECT_LE(record.max_tokens_in_step, 32);
  for (const auto& r : requests) {
    ExpectSameOutput(collector.Get(r.request_id), RunAlone(r, {}, &tokenizer), r.request_id);
  }
}

// --- Prefix caching -------------------------------------------------------------------------

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Requests that share a 30-token system prompt (7 full blocks of 4) compute it once: the later
// ones take its blocks from the cache, concurrently, and still get exactly the tokens a fresh
// engine gives each of them alone (the fake backend reads every context back through the block
// table, so a wrong or stale shared block would change them).
TEST(Engine, PrefixCachingComputesASharedPromptOnceAndChangesNoToken) {
  EngineOptions options = SmallOptions();
  options.enable_prefix_caching = true;
  options.max_num_batched_tokens = 16;  // chunked prefills around the shared blocks
  auto engine = MakeEngine(options);
  Collector collector;
  const std::vector<int32_t> system = RandomPrompt(1, 30);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(MakeRequest(absl::StrCat("r", i), Concat(system, RandomPrompt(10 + i, 5)),
                                   8, i % 2 ? 0.9f : 0.0f, 500 + i));
  }
  ASSERT_TRUE(engine->Submit(requests[0], collector.For("r0")).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(engine->Stats().prefix_hit_tokens, 0);
  EXPECT_EQ(engine->Stats().prompt_tokens, 35);
  for (int i = 1; i < 8; ++i) {
    ASSERT_TRUE(engine->Submit(requests[i], collector.For(requests[i].request_id)).ok());
  }
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  for (const auto& r : requests) {
    const Result got = collector.Get(r.request_id);
    ExpectSameOutput(got, RunAlone(r), r.request_id);
    EXPECT_EQ(got.prompt_tokens, 35) << r.request_id;
    EXPECT_EQ(got.cached_prompt_tokens, r.request_id == "r0" ? 0 : 28) << r.request_id;
  }
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.prefix_hit_tokens, 7 * 28);
  EXPECT_EQ(stats.prefix_queried_tokens, 8 * 35);
  EXPECT_EQ(stats.prompt_tokens, 35 + 7 * 7) << "only the uncached tokens are computed";
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  EXPECT_GT(stats.kv_blocks_cached, 7);
}

// A prompt already cached to its last block boundary still computes its last block (its logits
// start the generation), and off by default nothing is looked up at all.
TEST(Engine, PrefixCachingRecomputesTheLastBlockAndIsOffByDefault) {
  for (bool enabled : {false, true}) {
    EngineOptions options = SmallOptions();
    options.enable_prefix_caching = enabled;
    auto engine = MakeEngine(options);
    Collector collector;
    const GenerationRequest first = MakeRequest("a", RandomPrompt(3, 12), 4);
    GenerationRequest again = first;
    again.request_id = "b";
    ASSERT_TRUE(engine->Submit(first, collector.For("a")).ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
    ASSERT_TRUE(engine->Submit(again, collector.For("b")).ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
    ExpectSameOutput(collector.Get("b"), collector.Get("a"), "the same prompt again");
    const EngineStats stats = engine->Stats();
    EXPECT_EQ(stats.prefix_hit_tokens, enabled ? 8 : 0);
    EXPECT_EQ(stats.prefix_queried_tokens, enabled ? 24 : 0);
    EXPECT_EQ(stats.prompt_tokens, enabled ? 12 + 4 : 24);
    // a's 3 prompt blocks (15 tokens computed: the last sampled one is never fed); b's copy of
    // the third stays private.
    EXPECT_EQ(stats.kv_blocks_cached, enabled ? 3 : 0);
  }
}

// Preempted requests find what they computed before (unless it was reclaimed meanwhile), and
// every request still gets the tokens it gets alone.
TEST(Engine, PrefixCachingUnderPreemptionChangesNoToken) {
  FakeTokenizer tokenizer;
  EngineOptions options = TightKvOptions();
  options.enable_prefix_caching = true;
  auto engine = MakeEngine(options, {}, &tokenizer);
  Collector collector;
  const auto requests = RunSixteen(*engine, collector);
  if (HasFailure()) return;
  const EngineStats stats = engine->Stats();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_GT(stats.prefix_hit_tokens, 0);
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  for (const auto& r : requests) {
    ExpectSameOutput(collector.Get(r.request_id), RunAlone(r, {}, &tokenizer), r.request_id);
  }
}

// The blocks of a request that failed (here: non-finite logits) leave the cache: a later request
// with the same prompt start computes it again. The control run, with a request that did not
// fail, finds them.
TEST(Engine, PrefixCachingDropsTheBlocksOfAFailedRequest) {
  FakeBehavior behavior;
  behavior.nan_trigger_token = 63;
  const std::vector<int32_t> system = RandomPrompt(4, 12);  // 3 full blocks
  for (bool fail : {false, true}) {
    EngineOptions options = SmallOptions();
    options.enable_prefix_caching = true;
    auto engine = MakeEngine(options, behavior);
    Collector collector;
    const GenerationRequest first =
        MakeRequest("first", Concat(system, {fail ? 63 : 9, 10, 11, 12, 13}), 3);
    ASSERT_TRUE(engine->Submit(first, collector.For("first")).ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
    EXPECT_EQ(collector.Get("first").reason, fail ? FinishReason::kError : FinishReason::kLength);
    const GenerationRequest later = MakeRequest("later", Concat(system, {20, 21}), 3);
    ASSERT_TRUE(engine->Submit(later, collector.For("later")).ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
    ExpectSameOutput(collector.Get("later"), RunAlone(later, behavior), "later");
    EXPECT_EQ(engine->Stats().prefix_hit_tokens, fail ? 0 : 12) << (fail ? "after a failure" : "control");
    EXPECT_EQ(collector.Get("later").cached_prompt_tokens, fail ? 0 : 12);
  }
}

// Churn with prefix caching: requests drawn from three shared prompt starts arrive over time into
// a tight KV pool (preemptions, reclaimed cached blocks), some are cancelled mid-way, a few fail
// non-finite. Every request that ends normally gets exactly the tokens it gets alone, no request
// ends twice, and every block is free at the end.
TEST(Engine, PrefixCachingChurnChangesNoTokenAndLeaksNoBlock) {
  FakeBehavior behavior;
  behavior.nan_trigger_token = 63;
  EngineOptions options = SmallOptions();
  options.enable_prefix_caching = true;
  options.num_kv_blocks = 14;  // 56 token slots
  options.max_num_seqs = 6;
  options.max_num_batched_tokens = 20;
  auto engine = MakeEngine(options, behavior);
  Collector collector;
  std::mt19937 rng(77);
  const std::vector<int32_t> starts[3] = {RandomPrompt(21, 13), RandomPrompt(22, 9), RandomPrompt(23, 17)};
  std::vector<GenerationRequest> requests;
  std::vector<std::string> cancelled;
  for (int i = 0; i < 60; ++i) {
    std::vector<int32_t> prompt = starts[rng() % 3];
    prompt.resize(prompt.size() - rng() % 4);  // sometimes cut inside a shared block
    std::vector<int32_t> tail = RandomPrompt(500 + i, 1 + static_cast<int>(rng() % 6));
    if (i % 17 == 5) tail.back() = 63;  // fails at its first token
    GenerationRequest r = MakeRequest(absl::StrCat("c", i), Concat(prompt, tail), 3 + rng() % 8,
                                      i % 3 ? 0.0f : 0.7f, 900 + i);
    ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
    requests.push_back(r);
    if (i % 7 == 3) {
      engine->Cancel(r.request_id);
      cancelled.push_back(r.request_id);
    }
    for (int s = 0; s < static_cast<int>(rng() % 3); ++s) ASSERT_TRUE(engine->Step().ok());
  }
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  const EngineStats stats = engine->Stats();
  EXPECT_GT(stats.prefix_hit_tokens, 0);
  EXPECT_GT(stats.preemptions, 0) << "the pool was meant to run out";
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  EXPECT_EQ(stats.running + stats.waiting, 0);
  for (const GenerationRequest& r : requests) {
    const Result got = collector.Get(r.request_id);
    EXPECT_EQ(got.finished_events, 1) << r.request_id;
    EXPECT_EQ(got.events_after_finish, 0) << r.request_id;
    if (std::find(cancelled.begin(), cancelled.end(), r.request_id) != cancelled.end()) continue;
    const Result alone = RunAlone(r, behavior);
    EXPECT_EQ(got.reason, alone.reason) << r.request_id;
    EXPECT_EQ(got.tokens, alone.tokens) << r.request_id;
  }
}

TEST(Engine, StepObserverSeesEveryStepAndOneQueueTimePerRequestDespitePreemption) {
  EngineOptions options = SmallOptions();
  options.num_kv_blocks = 14;  // forces preemptions: recomputes must not count as admissions
  options.max_num_batched_tokens = 32;
  options.max_num_seqs = 6;
  std::vector<StepInfo> steps;
  options.step_observer = [&steps](const StepInfo& info) { steps.push_back(info); };
  FakeBackendRecord record;
  auto engine = MakeEngine(options, {}, nullptr, &record);
  Collector collector;
  auto requests = SixteenRequests();
  for (const auto& r : requests) ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  const EngineStats stats = engine->Stats();
  EXPECT_GT(stats.preemptions, 0);
  ASSERT_EQ(static_cast<int64_t>(steps.size()), stats.steps);
  size_t queue_times = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].step, static_cast<int64_t>(i) + 1);
    EXPECT_GE(steps[i].batch_size, 1);
    EXPECT_LE(steps[i].batch_size, 6);
    EXPECT_LE(steps[i].num_batched_tokens, 32);
    for (double seconds : steps[i].queue_seconds) EXPECT_GE(seconds, 0.0);
    queue_times += steps[i].queue_seconds.size();
  }
  EXPECT_EQ(queue_times, requests.size());
  EXPECT_EQ(steps.back().batch_size, stats.last_batch_size);
}

TEST(Engine, SeedsReproduceAndDifferAcrossSeeds) {
  auto run = [](uint64_t seed) {
    return RunAlone(MakeRequest("s", RandomPrompt(3, 5), 24, 1.0f, seed)).tokens;
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
  EXPECT_NE(run(6), run(7));
}

TEST(Engine, ResumeTokensContinueExactlyTheUndisturbedRun) {
  FakeTokenizer tokenizer;
  for (float temperature : {0.0f, 0.9f}) {
    GenerationRequest request = MakeRequest("r", RandomPrompt(11, 9), 16, temperature, 4242);
    request.stop_strings = {"never-there"};  // exercises held-back text across the resume
    request.sampling.repetition_penalty = 1.2f;
    // Some tokens split "é" over two tokens so the resume point can fall inside a character.
    FakeBehavior behavior;
    behavior.script = {{12, testing::kEAcuteLead}, {13, testing::kEAcuteTail}};
    auto engine = MakeEngine(SmallOptions(), behavior, &tokenizer);
    Collector collector;
    std::vector<std::string> texts_by_index(16);
    TokenCallback full_callback = collector.For("full", "r");
    ASSERT_TRUE(engine
                    ->Submit(request,
                             [&](const TokenEvent& e) {
                               if (e.index >= 0) texts_by_index[static_cast<size_t>(e.index)] += e.text_delta;
                               else texts_by_index.back() += e.text_delta;
                               full_callback(e);
                             })
                    .ok());
    ASSERT_TRUE(engine->RunUntilIdle().ok());
    Result full = collector.Get("full");
    ASSERT_EQ(full.tokens.size(), 16u);
    for (size_t k : {1u, 3u, 4u, 7u, 15u}) {
      GenerationRequest resumed = request;
      resumed.resume_token_ids.assign(full.tokens.begin(), full.tokens.begin() + k);
      Collector resumed_collector;
      ASSERT_TRUE(engine->Submit(resumed, resumed_collector.For("r")).ok());
      ASSERT_TRUE(engine->RunUntilIdle().ok());
      Result r = resumed_collector.Get("r");
      EXPECT_EQ(r.tokens, std::vector<int32_t>(full.tokens.begin() + k, full.tokens.end())) << k;
      ASSERT_FALSE(r.indices.empty());
      EXPECT_EQ(r.indices.front(), static_cast<int32_t>(k));
      EXPECT_EQ(r.generated_tokens, 16);
      std::string before;
      for (size_t i = 0; i < k; ++i) before += texts_by_index[i];
      EXPECT_EQ(before + r.text, full.text) << k;
    }
  }
}

// Script a generation: the model emits `tokens` after a prompt of prompt_len tokens.
FakeBehavior Scripted(int prompt_len, const std::vector<int32_t>& tokens) {
  FakeBehavior behavior;
  for (size_t i = 0; i < tokens.size(); ++i) behavior.script[prompt_len + static_cast<int>(i)] = tokens[i];
  return behavior;
}

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

TEST(Engine, StopStringSplitAcrossTokensIsExcludedAndNothingPastItIsEmitted) {
  FakeTokenizer tokenizer;
  const int32_t a = Letter('a'), b = Letter('b'), c = Letter('c');
  std::vector<int32_t> script = {a, b, testing::kSt, testing::kOp, c, c, c, c};
  GenerationRequest request = MakeRequest("stop", {Letter('x'), Letter('y')}, 8);
  request.stop_strings = {"STOP"};
  Result r = RunAlone(request, Scripted(2, script), &tokenizer);
  EXPECT_EQ(r.reason, FinishReason::kStopString);
  EXPECT_EQ(r.text, "ab");
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{a, b, testing::kSt, testing::kOp}));
  for (const std::string& delta : r.deltas) EXPECT_EQ(delta.find('S'), std::string::npos) << delta;
  EXPECT_EQ(r.finished_events, 1);
  EXPECT_EQ(r.events_after_finish, 0);
}

TEST(Engine, HeldBackTextIsReleasedWhenTheStopStringDoesNotComplete) {
  FakeTokenizer tokenizer;
  const int32_t a = Letter('a');
  std::vector<int32_t> script = {testing::kSt, a, testing::kOp, a, a};
  GenerationRequest request = MakeRequest("nostop", {Letter('x')}, 5);
  request.stop_strings = {"STOP", "zz"};
  Result r = RunAlone(request, Scripted(1, script), &tokenizer);
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.text, "STaOPaa");
}

TEST(Engine, EarliestOfSeveralStopStringsWinsInsideOneToken) {
  FakeTokenizer tokenizer;
  std::vector<int32_t> script = {Letter('h'), Letter('i'), testing::kBang, Letter('q'), Letter('z')};
  GenerationRequest request = MakeRequest("bang", {Letter('x')}, 5);
  request.stop_strings = {"qz", "!"};
  Result r = RunAlone(request, Scripted(1, script), &tokenizer);
  EXPECT_EQ(r.reason, FinishReason::kStopString);
  EXPECT_EQ(r.text, "hi");
  EXPECT_EQ(r.tokens.size(), 3u);
}

TEST(Engine, TextDeltasAreUtf8SafeAcrossTokenBoundaries) {
  FakeTokenizer tokenizer;
  std::vector<int32_t> script = {Letter('a'), testing::kEAcuteLead, testing::kEAcuteTail, Letter('b')};
  Result r = RunAlone(MakeRequest("utf8", {Letter('x')}, 4), Scripted(1, script), &tokenizer);
  EXPECT_EQ(r.text, "a\xC3\xA9" "b");
  for (const std::string& delta : r.deltas) EXPECT_TRUE(IsValidUtf8(delta)) << delta;
  EXPECT_EQ(r.tokens.size(), 4u);
}

TEST(Engine, EosEndsTheRequestUnlessIgnored) {
  FakeTokenizer tokenizer;
  FakeBehavior behavior;
  behavior.eos_at_context_len = 6;  // prompt 3 + 3 generated: the 4th token is eos
  GenerationRequest request = MakeRequest("eos", {Letter('a'), Letter('b'), Letter('c')}, 10);
  Result r = RunAlone(request, behavior, &tokenizer);
  EXPECT_EQ(r.reason, FinishReason::kEos);
  ASSERT_EQ(r.tokens.size(), 4u);
  EXPECT_EQ(r.tokens.back(), testing::kEos);
  EXPECT_EQ(r.text.find("<eos>"), std::string::npos);
  request.ignore_eos = true;
  Result ignored = RunAlone(request, behavior, &tokenizer);
  EXPECT_EQ(ignored.reason, FinishReason::kLength);
  EXPECT_EQ(ignored.tokens.size(), 10u);
  EXPECT_EQ(ignored.tokens[3], testing::kEos);
  EXPECT_EQ(std::vector<int32_t>(ignored.tokens.begin(), ignored.tokens.begin() + 4), r.tokens);
}

TEST(Engine, MaxNewTokensEndsWithLengthAndIndexedEvents) {
  Result r = RunAlone(MakeRequest("len", RandomPrompt(1, 4), 7, 0.7f, 3));
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.tokens.size(), 7u);
  EXPECT_EQ(r.indices, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(r.prompt_tokens, 4);
  EXPECT_EQ(r.generated_tokens, 7);
  EXPECT_EQ(r.finished_events, 1);
}

TEST(Engine, CancelFreesBlocksAtTheNextStepBoundary) {
  EngineOptions options = SmallOptions();
  options.max_num_seqs = 2;
  auto engine = MakeEngine(options);
  Collector collector;
  ASSERT_TRUE(engine->Submit(MakeRequest("a", RandomPrompt(1, 20), 100), collector.For("a")).ok());
  ASSERT_TRUE(engine->Submit(MakeRequest("b", RandomPrompt(2, 20), 100), collector.For("b")).ok());
  ASSERT_TRUE(engine->Submit(MakeRequest("c", RandomPrompt(3, 5), 10), collector.For("c")).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine->Step().ok());
  const int32_t total = engine->Stats().kv_blocks_total;
  EXPECT_LT(engine->Stats().kv_blocks_free, total);
  engine->Cancel("a");
  engine->Cancel("c");  // still waiting (max_num_seqs 2)
  engine->Cancel("no-such-request");
  ASSERT_TRUE(engine->Step().ok());
  EXPECT_EQ(collector.Get("a").reason, FinishReason::kCancelled);
  EXPECT_EQ(collector.Get("c").reason, FinishReason::kCancelled);
  EXPECT_TRUE(collector.Get("c").tokens.empty());
  EXPECT_EQ(engine->Stats().running, 1);
  engine->Cancel("b");
  ASSERT_TRUE(engine->Step().ok());
  EXPECT_EQ(collector.Get("b").reason, FinishReason::kCancelled);
  EXPECT_EQ(engine->Stats().kv_blocks_free, total);
  EXPECT_EQ(collector.Get("a").finished_events, 1);
  // The id is free again once cancelled.
  EXPECT_TRUE(engine->Submit(MakeRequest("a", RandomPrompt(1, 3), 2), collector.For("a2", "a")).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(collector.Get("a2").reason, FinishReason::kLength);
}

TEST(Engine, CancelFromACallbackOnTheBackgroundThread) {
  auto engine = MakeEngine(SmallOptions());
  Collector collector;
  auto inner = collector.For("self");
  Engine* raw = engine.get();
  engine->Start();
  ASSERT_TRUE(engine
                  ->Submit(MakeRequest("self", RandomPrompt(4, 10), 200),
                           [&, raw](const TokenEvent& e) {
                             inner(e);
                             if (e.index == 2) raw->Cancel("self");
                           })
                  .ok());
  ASSERT_TRUE(collector.WaitFinished({"self"}, std::chrono::seconds(10)));
  Result r = collector.Get("self");
  EXPECT_EQ(r.reason, FinishReason::kCancelled);
  EXPECT_LE(r.tokens.size(), 4u);  // at most one more step ran before the boundary
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
  engine->Stop();
}

TEST(Engine, BackgroundThreadServesRequestsSubmittedFromManyThreads) {
  auto engine = MakeEngine(SmallOptions());
  engine->Start();
  Collector collector;
  std::vector<std::thread> clients;
  std::vector<std::string> ids;
  for (int t = 0; t < 4; ++t) ids.push_back(absl::StrCat("t", t));
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      EXPECT_TRUE(engine->Submit(MakeRequest(ids[t], RandomPrompt(t, 5 + t), 6, 0.8f, t),
                                 collector.For(ids[t]))
                      .ok());
    });
  }
  for (auto& c : clients) c.join();
  ASSERT_TRUE(collector.WaitFinished(ids, std::chrono::seconds(10)));
  engine->Stop();
  for (int t = 0; t < 4; ++t) {
    ExpectSameOutput(collector.Get(ids[t]),
                     RunAlone(MakeRequest(ids[t], RandomPrompt(t, 5 + t), 6, 0.8f, t)), ids[t]);
  }
}

TEST(Engine, StopCancelsWhatIsStillLive) {
  auto engine = MakeEngine(SmallOptions());
  Collector collector;
  ASSERT_TRUE(engine->Submit(MakeRequest("x", RandomPrompt(1, 5), 50), collector.For("x")).ok());
  ASSERT_TRUE(engine->Step().ok());
  engine->Stop();
  EXPECT_EQ(collector.Get("x").reason, FinishReason::kCancelled);
  EXPECT_EQ(collector.Get("x").finished_events, 1);
  EXPECT_EQ(engine->Stats().kv_blocks_free, engine->Stats().kv_blocks_total);
}

TEST(Engine, NonFiniteLogitsFailOnlyThatRequestWithAClearStatus) {
  FakeBehavior behavior;
  behavior.nan_trigger_token = 63;
  // "late": the model emits the trigger as its 3rd token, so the 4th draw (index 3) sees NaN.
  GenerationRequest late = MakeRequest("late", {Letter('q'), Letter('r')}, 10);
  behavior.script = {{4, 63}};
  GenerationRequest early = MakeRequest("early", {Letter('a'), 63, Letter('b')}, 10);
  GenerationRequest fine1 = MakeRequest("fine1", RandomPrompt(8, 7), 10, 0.8f, 1);
  GenerationRequest fine2 = MakeRequest("fine2", RandomPrompt(9, 5), 10);  // longer than 4: unscripted
  EngineOptions options = SmallOptions();
  options.precision_name = "fp16";
  auto engine = MakeEngine(options, behavior);
  Collector collector;
  for (const auto* r : {&late, &early, &fine1, &fine2}) {
    ASSERT_TRUE(engine->Submit(*r, collector.For(r->request_id)).ok());
  }
  ASSERT_TRUE(engine->RunUntilIdle().ok());

  Result e = collector.Get("early");
  EXPECT_EQ(e.reason, FinishReason::kError);
  EXPECT_TRUE(e.tokens.empty());
  EXPECT_EQ(e.error.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(e.error.message().find("non-finite logits (NaN/Inf) at generated token 0"),
            std::string::npos) << e.error;
  EXPECT_NE(e.error.message().find("on worker test-worker in precision fp16"), std::string::npos)
      << e.error;
  EXPECT_NE(e.error.message().find("retry on an fp32/bf16/fp16-safe pool"), std::string::npos);

  Result l = collector.Get("late");
  EXPECT_EQ(l.reason, FinishReason::kError);
  EXPECT_EQ(l.tokens.size(), 3u);
  EXPECT_EQ(l.tokens.back(), 63);
  EXPECT_NE(l.error.message().find("at generated token 3"), std::string::npos) << l.error;

  for (const auto* r : {&fine1, &fine2}) {
    ExpectSameOutput(collector.Get(r->request_id), RunAlone(*r, behavior), r->request_id);
    EXPECT_EQ(collector.Get(r->request_id).reason, FinishReason::kLength);
  }
  EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.nonfinite, 2);
  EXPECT_EQ(stats.kv_blocks_free, stats.kv_blocks_total);
}

// logprobs: every token's log-probability and the most likely tokens of its position, from the
// model's raw distribution (the fake backend's logits of that context, log-softmaxed here in
// double), for greedy and sampled requests batched with ones that ask for none; the tokens are
// those of runs without logprobs (the host path samples what the backend path samples).
TEST(Engine, LogprobsAreTheLogSoftmaxOfTheModelsLogitsAndChangeNoToken) {
  const FakePagedBackend model(FakeConfig(), {});
  auto engine = MakeEngine(SmallOptions());
  Collector collector;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = MakeRequest(absl::StrCat("lp", i), RandomPrompt(40 + i, 3 + 2 * i), 6,
                                      i % 2 ? 0.9f : 0.0f, 70 + i);
    if (i == 3) r.sampling.repetition_penalty = 1.4f;  // processing does not touch logprobs
    r.logprobs = i == 2 ? 0 : 1 + 2 * i;               // 1, 3, none, 7
    requests.push_back(r);
    ASSERT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
  }
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  for (const GenerationRequest& r : requests) {
    const Result got = collector.Get(r.request_id);
    GenerationRequest plain = r;
    plain.logprobs = 0;
    ExpectSameOutput(got, RunAlone(plain), r.request_id);
    ASSERT_EQ(got.tops.size(), got.tokens.size());
    std::vector<int32_t> context = r.prompt_token_ids;
    for (size_t k = 0; k < got.tokens.size(); ++k) {
      if (r.logprobs == 0) {
        EXPECT_TRUE(got.tops[k].empty()) << r.request_id;
        continue;
      }
      std::vector<float> row;
      model.AppendLogits(context, &row);
      double max_logit = *std::max_element(row.begin(), row.end()), sum = 0;
      for (float v : row) sum += std::exp(v - max_logit);
      const double lse = max_logit + std::log(sum);
      EXPECT_NEAR(got.logprobs[k], row[static_cast<size_t>(got.tokens[k])] - lse, 1e-5)
          << r.request_id << " token " << k;
      std::vector<int32_t> order(row.size());
      for (size_t v = 0; v < order.size(); ++v) order[v] = static_cast<int32_t>(v);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
      ASSERT_EQ(got.tops[k].size(), static_cast<size_t>(r.logprobs)) << r.request_id;
      for (int n = 0; n < r.logprobs; ++n) {
        EXPECT_EQ(got.tops[k][n].token_id, order[n]) << r.request_id << " token " << k << " rank " << n;
        EXPECT_NEAR(got.tops[k][n].logprob, row[static_cast<size_t>(order[n])] - lse, 1e-5);
      }
      if (r.sampling.temperature == 0.0f) {
        EXPECT_EQ(got.tops[k][0].token_id, got.tokens[k]);
      }
      context.push_back(got.tokens[k]);
    }
  }
  GenerationRequest bad = MakeRequest("bad", {5, 6}, 2);
  bad.logprobs = kMaxLogprobs + 1;
  const absl::Status refused = engine->Submit(bad, collector.For("bad"));
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("logprobs is 21: use 0 (none) to 20"), std::string::npos) << refused;
}

// The two places logprobs are computed agree: the backend's (ForwardSample, what serving uses)
// and the engine's own from Forward()'s logits (the path a logits observer forces), token for
// token and value for value.
TEST(Engine, LogprobsFromTheBackendEqualThoseFromTheHostLogitsPath) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest r = MakeRequest(absl::StrCat("lp", i), RandomPrompt(90 + i, 4 + i), 5,
                                      i == 1 ? 0.8f : 0.0f, 11 + i);
    r.logprobs = i == 2 ? kMaxLogprobs : 2 + i;
    requests.push_back(r);
  }
  auto run = [&](bool observe) {
    EngineOptions options = SmallOptions();
    int observed = 0;
    if (observe) options.logits_observer = [&](const std::string&, int32_t, const float*, int64_t) { ++observed; };
    auto engine = MakeEngine(options);
    Collector collector;
    for (const GenerationRequest& r : requests) {
      EXPECT_TRUE(engine->Submit(r, collector.For(r.request_id)).ok());
    }
    EXPECT_TRUE(engine->RunUntilIdle().ok());
    EXPECT_EQ(observed > 0, observe);
    std::vector<Result> results;
    for (const GenerationRequest& r : requests) results.push_back(collector.Get(r.request_id));
    return results;
  };
  const std::vector<Result> backend = run(false), host = run(true);
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string& id = requests[i].request_id;
    EXPECT_EQ(backend[i].tokens, host[i].tokens) << id;
    EXPECT_EQ(backend[i].logprobs, host[i].logprobs) << id;
    ASSERT_EQ(backend[i].tops.size(), host[i].tops.size()) << id;
    ASSERT_FALSE(backend[i].tops.empty()) << id;
    for (size_t k = 0; k < backend[i].tops.size(); ++k) {
      ASSERT_EQ(backend[i].tops[k].size(), static_cast<size_t>(requests[i].logprobs)) << id;
      for (size_t n = 0; n < backend[i].tops[k].size(); ++n) {
        EXPECT_EQ(backend[i].tops[k][n].token_id, host[i].tops[k][n].token_id) << id;
        EXPECT_EQ(backend[i].tops[k][n].logprob, host[i].tops[k][n].logprob) << id;
      }
    }
  }
}

TEST(Engine, TopK1AndTinyTopPEqualGreedy) {
  GenerationRequest greedy = MakeRequest("g", RandomPrompt(21, 6), 20);
  Result want = RunAlone(greedy);
  for (uint64_t seed : {1, 2, 3}) {
    GenerationRequest top_k = MakeRequest("g", RandomPrompt(21, 6), 20, 1.5f, seed);
    top_k.sampling.top_k = 1;
    EXPECT_EQ(RunAlone(top_k).tokens, want.tokens);
    GenerationRequest top_p = MakeRequest("g", RandomPrompt(21, 6), 20, 1.5f, seed);
    top_p.sampling.top_p = 1e-6f;
    EXPECT_EQ(RunAlone(top_p).tokens, want.tokens);
  }
  GenerationRequest sampled = MakeRequest("g", RandomPrompt(21, 6), 20, 1.5f, 1);
  EXPECT_NE(RunAlone(sampled).tokens, want.tokens);  // the comparison can fail
}

absl::Status SubmitStatus(Engine& engine, GenerationRequest request) {
  return engine.Submit(std::move(request), [](const TokenEvent&) {});
}

void ExpectInvalid(const absl::Status& status, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(status.message().find(needle), std::string::npos) << status;
}

TEST(Engine, SubmitRejectsEveryInvalidRequestWithAnActionableMessage) {
  EngineOptions options = SmallOptions();
  options.max_model_len = 100;
  options.num_kv_blocks = 20;  // 80 tokens
  options.max_waiting = 3;
  auto engine = MakeEngine(options);
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  auto base = [] { return MakeRequest("v", {5, 6, 7}, 4); };

  GenerationRequest r = base();
  r.prompt_token_ids.clear();
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "empty prompt");
  r = base();
  r.request_id.clear();
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "request_id is empty");
  r = base();
  r.max_new_tokens = 0;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "max_new_tokens is 0");
  r = base();
  r.prompt_token_ids.assign(60, 5);
  r.max_new_tokens = 50;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid,
                "prompt of 60 tokens + max_new_tokens 50 = 110 tokens exceeds max_model_len 100");
  r = base();
  r.prompt_token_ids.assign(60, 5);
  r.max_new_tokens = 30;  // within max_model_len, beyond the 80-token KV pool
  ExpectInvalid(SubmitStatus(*engine, r), absl::StatusCode::kResourceExhausted, "holds 80 tokens");
  r = base();
  r.sampling.temperature = -0.1f;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "temperature");
  r.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "temperature");
  r = base();
  r.sampling.top_p = 0.0f;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "top_p 0 must be in (0, 1]");
  r.sampling.top_p = 1.5f;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "top_p");
  r = base();
  r.sampling.top_k = -1;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "top_k -1");
  r = base();
  r.sampling.repetition_penalty = 0.0f;
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "repetition_penalty");
  r = base();
  r.prompt_token_ids = {5, 64};
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "prompt_token_ids[1] = 64 is outside");
  r = base();
  r.prompt_token_ids = {-1};
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "outside the model's vocabulary [0, 64)");
  r = base();
  r.resume_token_ids = {70};
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "resume_token_ids[0] = 70");
  r = base();
  r.resume_token_ids = {5, 5, 5, 5};
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "nothing is left to generate");
  r = base();
  r.stop_strings = {"x"};
  ExpectInvalid(SubmitStatus(*engine, r), kInvalid, "no tokenizer");
  ExpectInvalid(engine->Submit(base(), nullptr), kInvalid, "no callback");

  ASSERT_TRUE(SubmitStatus(*engine, base()).ok());
  ExpectInvalid(SubmitStatus(*engine, base()), kInvalid, "already live");
  GenerationRequest other = base();
  other.request_id = "w2";
  ASSERT_TRUE(SubmitStatus(*engine, other).ok());
  other.request_id = "w3";
  ASSERT_TRUE(SubmitStatus(*engine, other).ok());
  other.request_id = "w4";
  ExpectInvalid(SubmitStatus(*engine, other), absl::StatusCode::kResourceExhausted, "max_waiting 3");
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_TRUE(SubmitStatus(*engine, base()).ok());  // finished ids can be reused
}

TEST(Engine, StopStringsAreValidatedWithATokenizer) {
  FakeTokenizer tokenizer;
  auto engine = MakeEngine(SmallOptions(), {}, &tokenizer);
  GenerationRequest r = MakeRequest("v", {5}, 4);
  r.stop_strings = {"ok", ""};
  ExpectInvalid(SubmitStatus(*engine, r), absl::StatusCode::kInvalidArgument, "stop string is empty");
}

TEST(Engine, CreateRejectsBadOptionsAndSizesTheKvCacheFromBytes) {
  auto create = [](EngineOptions options, int64_t max_positions = 256) {
    return Engine::Create(options,
                          std::make_unique<FakePagedBackend>(FakeConfig(64, max_positions), FakeBehavior{}),
                          nullptr);
  };
  EngineOptions options = SmallOptions();
  options.block_size = 0;
  EXPECT_EQ(create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions();
  options.max_num_batched_tokens = 0;
  EXPECT_EQ(create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = SmallOptions();
  options.max_prefill_only_steps = 0;
  ExpectInvalid(create(options).status(), absl::StatusCode::kInvalidArgument,
                "max_prefill_only_steps is 0: it must be at least 1");
  options = SmallOptions();
  options.max_model_len = 300;
  ExpectInvalid(create(options).status(), absl::StatusCode::kInvalidArgument,
                "max_model_len 300 exceeds the model's max_position_embeddings 256");
  options = SmallOptions();
  options.num_kv_blocks = 0;
  options.kv_cache_bytes = 100;  // one block of 4 tokens takes 256 bytes in the fake
  ExpectInvalid(create(options).status(), absl::StatusCode::kResourceExhausted,
                "raise kv_cache_bytes to at least 256");
  options.kv_cache_bytes = 256 * 10 + 255;
  auto engine = create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().kv_blocks_total, 10);
  EXPECT_EQ((*engine)->options().num_kv_blocks, 10);
  EXPECT_EQ((*engine)->options().max_model_len, 256);
  EXPECT_EQ((*engine)->Stats().kv_blocks_free, 10);
}

TEST(Engine, PriorityAdmitsHigherFirst) {
  EngineOptions options = SmallOptions();
  options.max_num_seqs = 1;
  auto engine = MakeEngine(options);
  std::vector<std::string> order;
  auto record = [&](const TokenEvent& e) {
    if (e.finished) order.push_back(e.request_id);
  };
  GenerationRequest low = MakeRequest("low", {5, 6}, 2);
  GenerationRequest high = MakeRequest("high", {5, 6}, 2);
  high.priority = 3;
  ASSERT_TRUE(engine->Submit(low, record).ok());
  ASSERT_TRUE(engine->Submit(high, record).ok());
  ASSERT_TRUE(engine->RunUntilIdle().ok());
  EXPECT_EQ(order, (std::vector<std::string>{"high", "low"}));
}

TEST(FinishReason, NamesMatchTheApi) {
  EXPECT_STREQ(FinishReasonName(FinishReason::kEos), "eos");
  EXPECT_STREQ(FinishReasonName(FinishReason::kStopString), "stop");
  EXPECT_STREQ(FinishReasonName(FinishReason::kLength), "length");
  EXPECT_STREQ(FinishReasonName(FinishReason::kCancelled), "cancelled");
  EXPECT_STREQ(FinishReasonName(FinishReason::kError), "error");
}

}  // namespace
}  // namespace glm
