// The serving path end to end: real glm-router, two glm-worker processes and glm-mkmodel's
// tiny checkpoint on loopback with ephemeral ports (issue 3's checks).
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glm/v1/generation.grpc.pb.h"
#include "glm/v1/worker.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/grpc/channel.h"
#include "services/grpc/http_get.h"
#include "tests/integration/cluster_helpers.h"
#include "tests/integration/process.h"
#include "tests/test_dirs.h"

namespace glm::testing {
namespace {

// The tiny checkpoint the cluster serves: glm-mkmodel's, or GLM_TEST_MODEL_DIR when set (to
// run against another checkpoint). Returns the exit code and output of glm-mkmodel.
std::pair<int, std::string> MakeTinyModel(const std::string& out) {
  if (const char* given = getenv("GLM_TEST_MODEL_DIR"); given && *given) {
    std::error_code ec;
    std::filesystem::copy(given, out, std::filesystem::copy_options::recursive, ec);
    return {ec ? 1 : 0, ec.message()};
  }
  return RunCommand({Bin("tools/glm-mkmodel/glm-mkmodel"), "--out=" + out, "--preset=tiny",
                     "--seed=3"},
                    absl::Seconds(120));
}

// Starts a router; heartbeat timeout short so expiry tests stay fast.
std::optional<Node> StartRouter(const std::string& model_dir, const std::string& log) {
  auto p = Process::Start({Bin("router/server/glm-router"), "--port=0", "--metrics-port=0",
                           "--host=127.0.0.1", "--tokenizer=tiny=" + model_dir,
                           "--heartbeat-timeout-ms=1500", "--heartbeat-interval-ms=200"},
                          log);
  if (!p) return std::nullopt;
  Node node;
  node.process.reset(*p);
  auto ready = node.process->WaitForLine("GLM_ROUTER_READY", absl::Seconds(30));
  if (!ready) return std::nullopt;
  node.port = std::stoi((*ready)["port"]);
  node.metrics_port = std::stoi((*ready)["metrics_port"]);
  return node;
}

std::optional<Node> StartWorker(const std::string& model_dir, const std::string& router,
                                const std::string& id, const std::string& log) {
  auto p = Process::Start({Bin("worker/server/glm-worker"), "--model=" + model_dir,
                           "--model-name=tiny", "--port=0", "--metrics-port=0", "--host=127.0.0.1",
                           "--router=" + router, "--heartbeat-ms=200", "--worker-id=" + id,
                           "--threads=1", "--kv-cache-mb=16", "--precision=fp32"},
                          log);
  if (!p) return std::nullopt;
  Node node;
  node.process.reset(*p);
  auto ready = node.process->WaitForLine("GLM_WORKER_READY", absl::Seconds(60));
  if (!ready) return std::nullopt;
  node.port = std::stoi((*ready)["port"]);
  node.metrics_port = std::stoi((*ready)["metrics_port"]);
  node.id = id;
  return node;
}

glm::v1::GenerateRequest PromptRequest(const std::string& prompt, int max_tokens) {
  glm::v1::GenerateRequest request;
  request.set_model("tiny");
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  return request;
}

class Cluster : public SharedClusterSuite<Cluster> {
  friend class SharedClusterSuite<Cluster>;

 protected:
  static void StartSuite() {
    char dir_template[] = "/tmp/glm-cluster-test-XXXXXX";
    dir_ = mkdtemp(dir_template);
    model_dir_ = dir_ + "/tiny";
    auto [code, out] = MakeTinyModel(model_dir_);
    ASSERT_EQ(code, 0) << out;
    router_ = new std::optional<Node>(StartRouter(model_dir_, dir_ + "/router.log"));
    ASSERT_TRUE(router_->has_value()) << "router did not start; see " << dir_ << "/router.log";
    for (const char* id : {"w0", "w1"}) {
      workers_[id] = StartWorker(model_dir_, (**router_).address(), id, dir_ + "/" + id + ".log");
      ASSERT_TRUE(workers_[id].has_value()) << "worker " << id << " did not start; see " << dir_;
    }
    ASSERT_TRUE(WaitFor([] { return LiveWorkers((**router_).address()) == 2; }, absl::Seconds(30)))
        << "both workers should register within 30 s";
  }
  static void TearDownTestSuite() {
    workers_.clear();
    delete router_;
    router_ = nullptr;
  }
  static std::string router() { return (**router_).address(); }

  static inline std::string dir_;
  static inline std::string model_dir_;
  static inline std::optional<Node>* router_ = nullptr;
  static inline std::map<std::string, std::optional<Node>> workers_;
};

TEST_F(Cluster, RouterTokensEqualGlmRunForSameSeed) {
  struct Case {
    std::vector<std::string> flags;
    std::function<void(glm::v1::SamplingParams*)> sampling;
  };
  std::vector<Case> cases = {
      {{"--greedy"}, [](auto* s) { s->set_temperature(0); }},
      {{"--temperature=0.9", "--top-p=0.95", "--seed=1234"},
       [](auto* s) { s->set_temperature(0.9f); s->set_top_p(0.95f); s->set_seed(1234); }},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {Bin("tools/glm-run/glm-run"), "--model=" + model_dir_,
                                     "--prompt=The quick brown fox", "--max-new-tokens=16",
                                     "--precision=fp32", "--threads=1", "--json"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    auto [code, out] = RunCommand(argv, absl::Seconds(120));
    ASSERT_EQ(code, 0) << out;
    nlohmann::json expected = nlohmann::json::parse(out);
    glm::v1::GenerateRequest request = PromptRequest("The quick brown fox", 16);
    c.sampling(request.mutable_sampling());
    StreamResult got = Generate(router(), request);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.ids, expected["token_ids"].get<std::vector<int32_t>>()) << c.flags[0];
    EXPECT_EQ(got.text, expected["text"].get<std::string>());
    EXPECT_EQ(got.final_info.served_by().pool(), "tiny/fp32");
    EXPECT_EQ(got.final_info.usage().generated_tokens(), static_cast<int>(got.ids.size()));
  }
}

TEST_F(Cluster, ThirtyTwoConcurrentRequestsAllSucceedOnBothWorkers) {
  std::vector<StreamResult> results(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      glm::v1::GenerateRequest request = PromptRequest(absl::StrCat("request number ", i), 12);
      request.set_ignore_eos(true);
      request.mutable_sampling()->set_seed(i);
      results[i] = Generate(router(), request, absl::Seconds(120));
    });
  }
  for (auto& t : threads) t.join();
  std::map<std::string, int> served;
  for (const StreamResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 12u);
    ++served[r.final_info.served_by().worker_id()];
  }
  EXPECT_EQ(served.size(), 2u) << "both workers should serve";
  for (const auto& [worker, count] : served) EXPECT_GE(count, 8) << worker;
}

TEST_F(Cluster, CancelMidStreamFreesWorkerKvAtOnce) {
  auto stub = glm::v1::Generation::NewStub(*MakeChannel(router()));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(60)));
  glm::v1::GenerateRequest request = PromptRequest("a long story begins", 900);
  request.set_ignore_eos(true);
  auto reader = stub->Generate(&context, request);
  glm::v1::GenerateResponse response;
  int received = 0;
  while (received < 3 && reader->Read(&response)) received += response.token_ids_size();
  ASSERT_GE(received, 3);
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);

  for (auto& [id, worker] : workers_) {
    auto worker_stub = glm::v1::Worker::NewStub(*MakeChannel(worker->address()));
    glm::v1::WorkerInfo info;
    bool idle = WaitFor(
        [&] {
          grpc::ClientContext c;
          c.set_deadline(In(absl::Seconds(2)));
          if (!worker_stub->GetInfo(&c, {}, &info).ok()) return false;
          return info.load().running_requests() == 0 && info.load().waiting_requests() == 0 &&
                 info.load().kv_blocks_free() == info.load().kv_blocks_total();
        },
        absl::Seconds(3));
    EXPECT_TRUE(idle) << id << " still holds the request: " << info.load().ShortDebugString();
    auto metrics = HttpGet("127.0.0.1", worker->metrics_port, "/metrics");
    ASSERT_TRUE(metrics.ok());
    EXPECT_EQ(SumMetric(*metrics, "glm_worker_running_requests"), 0) << id;
    EXPECT_EQ(SumMetric(*metrics, "glm_worker_kv_cache_blocks", "state=\"used\""), 0) << id;
  }
  EXPECT_LT(received, 900);
}

TEST_F(Cluster, BadRequestsAreInvalidArgumentSayingWhatToFix) {
  struct Case {
    std::string name;
    std::function<void(glm::v1::GenerateRequest*)> mutate;
    std::string expect_in_message;
  };
  std::vector<Case> cases = {
      {"no input", [](auto* r) { r->clear_input(); }, "set one of prompt"},
      {"empty prompt", [](auto* r) { r->set_prompt(""); }, "prompt is empty"},
      {"negative max_tokens", [](auto* r) { r->set_max_tokens(-5); }, "max_tokens"},
      {"huge max_tokens", [](auto* r) { r->set_max_tokens(1 << 30); }, "max_tokens"},
      {"bad temperature", [](auto* r) { r->mutable_sampling()->set_temperature(-1); }, "temperature"},
      {"bad top_p", [](auto* r) { r->mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"token id outside vocab",
       [](auto* r) { r->mutable_token_ids()->add_ids(999999); }, "outside the vocabulary"},
      {"empty chat", [](auto* r) { r->mutable_chat(); }, "chat.messages is empty"},
      {"bad chat role",
       [](auto* r) {
         auto* m = r->mutable_chat()->add_messages();
         m->set_role("wizard");
         m->set_content("hi");
       },
       "wizard"},
      {"context overflow", [](auto* r) { r->set_max_tokens(1020); r->set_prompt("one two three four five six seven"); },
       "context"},
  };
  for (const Case& c : cases) {
    glm::v1::GenerateRequest request = PromptRequest("hello", 4);
    c.mutate(&request);
    StreamResult r = Generate(router(), request);
    EXPECT_EQ(r.status.error_code(), grpc::INVALID_ARGUMENT) << c.name << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(c.expect_in_message), std::string::npos)
        << c.name << ": " << r.status.error_message();
    EXPECT_TRUE(r.ids.empty()) << c.name;
  }
}

TEST_F(Cluster, UnknownModelIsNotFoundListingServedModels) {
  glm::v1::GenerateRequest request = PromptRequest("hello", 4);
  request.set_model("gpt-17");
  StreamResult r = Generate(router(), request);
  EXPECT_EQ(r.status.error_code(), grpc::NOT_FOUND);
  EXPECT_NE(r.status.error_message().find("tiny"), std::string::npos) << r.status.error_message();
}

TEST_F(Cluster, ExplicitPrecisionWithoutPoolIsFailedPrecondition) {
  glm::v1::GenerateRequest request = PromptRequest("hello", 4);
  request.set_precision(glm::v1::PRECISION_FP16);
  StreamResult r = Generate(router(), request);
  EXPECT_EQ(r.status.error_code(), grpc::FAILED_PRECONDITION);
  EXPECT_NE(r.status.error_message().find("tiny/fp32"), std::string::npos) << r.status.error_message();
}

TEST_F(Cluster, MetricsMoveWithARequest) {
  auto before = HttpGet("127.0.0.1", (**router_).metrics_port, "/metrics");
  ASSERT_TRUE(before.ok()) << before.status();
  glm::v1::GenerateRequest request = PromptRequest("metrics please", 5);
  request.set_ignore_eos(true);
  StreamResult r = Generate(router(), request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto after = HttpGet("127.0.0.1", (**router_).metrics_port, "/metrics");
  ASSERT_TRUE(after.ok());
  auto delta = [&](const std::string& metric, const std::string& labels = "") {
    double b = std::max(0.0, SumMetric(*before, metric, labels));
    return SumMetric(*after, metric, labels) - b;
  };
  EXPECT_EQ(delta("glm_requests_total", "pool=\"tiny/fp32\",code=\"OK\""), 1);
  EXPECT_EQ(delta("glm_generation_tokens_total", "pool=\"tiny/fp32\""), 5);
  EXPECT_EQ(delta("glm_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(delta("glm_inter_token_latency_seconds_count"), 4);
  EXPECT_EQ(delta("glm_queue_time_seconds_count"), 1);
  EXPECT_EQ(SumMetric(*after, "glm_pool_workers", "pool=\"tiny/fp32\",state=\"live\""), 2);
  EXPECT_EQ(SumMetric(*after, "glm_worker_group_info"), 2);
  // The serving worker counted it too.
  const std::string served = r.final_info.served_by().worker_id();
  ASSERT_TRUE(workers_.count(served)) << served;
  auto worker_metrics = HttpGet("127.0.0.1", workers_[served]->metrics_port, "/metrics");
  ASSERT_TRUE(worker_metrics.ok());
  EXPECT_GE(SumMetric(*worker_metrics, "glm_worker_generation_tokens_total"), 5);
  EXPECT_EQ(SumMetric(*worker_metrics, "glm_worker_info", "precision=\"fp32\""), 1);
}

// Prefix caching (on by default in glm-worker): a worker that served a prompt computes only
// what follows its full blocks the next time; it reports the cached tokens in the usage and its
// metrics, and the tokens are those of a worker that computed everything.
TEST_F(Cluster, WorkerPrefixCacheReusesASharedPromptAndChangesNoToken) {
  auto generate = [](const Node& worker, const std::string& id, const std::vector<int32_t>& prompt) {
    auto stub = glm::v1::Worker::NewStub(*MakeChannel(worker.address()));
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(60)));
    glm::v1::WorkerGenerateRequest request;
    request.set_request_id(id);
    for (int32_t token : prompt) request.add_prompt_token_ids(token);
    request.set_max_tokens(6);
    request.set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(0);
    auto reader = stub->Generate(&context, request);
    StreamResult result;
    glm::v1::GenerateResponse response;
    while (reader->Read(&response)) {
      result.ids.insert(result.ids.end(), response.token_ids().begin(), response.token_ids().end());
      if (response.has_final()) result.final_info = response.final();
    }
    result.status = reader->Finish();
    return result;
  };
  std::vector<int32_t> shared;  // 40 tokens: 2 full blocks of 16, then 8
  for (int i = 0; i < 40; ++i) shared.push_back(200 + 7 * i);  // < 512, the tiny vocabulary
  std::vector<int32_t> follow_up = shared;
  for (int32_t token : {11, 12, 13}) follow_up.push_back(token);

  const Node& w0 = *workers_["w0"];
  const Node& w1 = *workers_["w1"];
  auto before = HttpGet("127.0.0.1", w0.metrics_port, "/metrics");
  ASSERT_TRUE(before.ok()) << before.status();
  const StreamResult fresh = generate(w1, "prefix-fresh", follow_up);  // w1 never saw this prefix
  ASSERT_TRUE(fresh.status.ok()) << fresh.status.error_message();
  EXPECT_EQ(fresh.final_info.usage().cached_prompt_tokens(), 0);
  const StreamResult first = generate(w0, "prefix-first", shared);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.final_info.usage().cached_prompt_tokens(), 0);
  const StreamResult cached = generate(w0, "prefix-cached", follow_up);
  ASSERT_TRUE(cached.status.ok()) << cached.status.error_message();
  EXPECT_EQ(cached.final_info.usage().prompt_tokens(), 43);
  EXPECT_EQ(cached.final_info.usage().cached_prompt_tokens(), 32);
  EXPECT_EQ(cached.ids, fresh.ids) << "the cached blocks gave other tokens than a full compute";
  EXPECT_EQ(cached.ids.size(), 6u);

  auto after = HttpGet("127.0.0.1", w0.metrics_port, "/metrics");
  ASSERT_TRUE(after.ok()) << after.status();
  auto delta = [&](const std::string& metric) {
    return SumMetric(*after, metric) - std::max(0.0, SumMetric(*before, metric));
  };
  EXPECT_EQ(delta("glm_worker_prefix_cache_hit_tokens_total"), 32);
  EXPECT_EQ(delta("glm_worker_prefix_cache_queried_tokens_total"), 40 + 43);
  EXPECT_GE(SumMetric(*after, "glm_worker_prefix_cache_blocks"), 2);
}

// logprobs through the router: one entry per streamed token, each with the asked number of
// most likely tokens in order; greedy picks the first of them; out of range is INVALID_ARGUMENT.
TEST_F(Cluster, LogprobsStreamWithEveryTokenThroughTheRouter) {
  glm::v1::GenerateRequest request = PromptRequest("The quick brown fox", 8);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0);
  request.set_logprobs(3);
  auto stub = glm::v1::Generation::NewStub(*MakeChannel(router()));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(60)));
  auto reader = stub->Generate(&context, request);
  glm::v1::GenerateResponse response;
  std::vector<int32_t> ids;
  std::vector<glm::v1::TokenLogprob> logprobs;
  while (reader->Read(&response)) {
    EXPECT_EQ(response.logprobs_size(), response.token_ids_size());
    ids.insert(ids.end(), response.token_ids().begin(), response.token_ids().end());
    logprobs.insert(logprobs.end(), response.logprobs().begin(), response.logprobs().end());
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(ids.size(), 8u);
  ASSERT_EQ(logprobs.size(), 8u);
  for (size_t k = 0; k < ids.size(); ++k) {
    const glm::v1::TokenLogprob& lp = logprobs[k];
    EXPECT_EQ(lp.token_id(), ids[k]);
    ASSERT_EQ(lp.top_size(), 3) << k;
    EXPECT_EQ(lp.top(0).token_id(), ids[k]) << "greedy takes the most likely token";
    EXPECT_FLOAT_EQ(lp.logprob(), lp.top(0).logprob());
    double mass = 0;
    for (int n = 0; n < 3; ++n) {
      EXPECT_LE(lp.top(n).logprob(), 0.f);
      if (n > 0) {
        EXPECT_LE(lp.top(n).logprob(), lp.top(n - 1).logprob());
      }
      mass += std::exp(lp.top(n).logprob());
    }
    EXPECT_LE(mass, 1.0 + 1e-5);
  }
  // The same tokens as without logprobs (the worker samples on the host path for them).
  request.set_logprobs(0);
  StreamResult plain = Generate(router(), request);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  EXPECT_EQ(plain.ids, ids);
  request.set_logprobs(21);
  StreamResult refused = Generate(router(), request);
  EXPECT_EQ(refused.status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("logprobs is 21"), std::string::npos)
      << refused.status.error_message();
}

TEST_F(Cluster, HealthServingAndGlmctlShowsWorkers) {
  for (const std::string& address : {router(), workers_["w0"]->address()}) {
    auto stub = grpc::health::v1::Health::NewStub(*MakeChannel(address));
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(2)));
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(stub->Check(&context, {}, &response).ok()) << address;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  auto [code, out] = RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router(), "workers"},
                                absl::Seconds(30));
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("w0"), std::string::npos) << out;
  EXPECT_NE(out.find("w1"), std::string::npos) << out;
  EXPECT_NE(out.find("tiny/fp32"), std::string::npos) << out;
  auto [health_code, health] = RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router(), "health"},
                                          absl::Seconds(30));
  EXPECT_EQ(health_code, 0) << health;
  EXPECT_NE(health.find("SERVING"), std::string::npos);
  auto [gen_code, generated] =
      RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router(), "generate",
                  "--prompt=hi there", "--max-tokens=4", "--temperature=0", "--json"},
                 absl::Seconds(60));
  ASSERT_EQ(gen_code, 0) << generated;
  nlohmann::json j = nlohmann::json::parse(generated);
  EXPECT_EQ(j["pool"], "tiny/fp32");
  // A two-token prompt fills no KV block: nothing of it can come from the prefix cache.
  EXPECT_EQ(j["cached_prompt_tokens"], 0) << generated;
  auto [lp_code, with_logprobs] =
      RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router(), "generate",
                  "--prompt=hi there", "--max-tokens=4", "--temperature=0", "--json", "--logprobs=2"},
                 absl::Seconds(60));
  ASSERT_EQ(lp_code, 0) << with_logprobs;
  nlohmann::json lj = nlohmann::json::parse(with_logprobs);
  ASSERT_EQ(lj["logprobs"].size(), lj["token_ids"].size()) << with_logprobs;
  EXPECT_EQ(lj["logprobs"][0]["top"].size(), 2u) << with_logprobs;
  EXPECT_EQ(lj["logprobs"][0]["token_id"], lj["token_ids"][0]);
  auto [chat_code, chat] = RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router(), "chat",
                                       "--max-tokens=3", "--temperature=0"},
                                      absl::Seconds(60), "hello\nand again\n");
  EXPECT_EQ(chat_code, 0) << chat;
}

TEST_F(Cluster, NodeGrpcJsClientStreamsFromProtoFilesAlone) {
  const std::string node_modules = SourceDir() + "/tests/npm/node_modules";
  if (!std::filesystem::exists(node_modules + "/@grpc/grpc-js") ||
      RunCommand({"/usr/bin/env", "node", "--version"}, absl::Seconds(10)).first != 0) {
    FAIL() << "node or tests/npm/node_modules missing: run scripts/npm-tools.sh";
  }
  auto [code, out] = RunCommand(
      {"/usr/bin/env", "NODE_PATH=" + node_modules, "node",
       SourceDir() + "/tests/integration/node/generate_client.js", router(),
       SourceDir() + "/proto"},
      absl::Seconds(60));
  ASSERT_EQ(code, 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  // Same request from C++: the JS client must see identical tokens and text.
  glm::v1::GenerateRequest request = PromptRequest("Hello from node", 8);
  request.mutable_sampling()->set_temperature(0);
  StreamResult expected = Generate(router(), request);
  ASSERT_TRUE(expected.status.ok());
  EXPECT_EQ(j["token_ids"].get<std::vector<int32_t>>(), expected.ids);
  EXPECT_EQ(j["text"].get<std::string>(), expected.text);
  EXPECT_EQ(j["finish_reason"], "FINISH_REASON_LENGTH");
  EXPECT_EQ(j["bad_request_code"], 3) << "INVALID_ARGUMENT for an empty prompt";
}

// A separate small cluster that this test may break: one worker, killed.
TEST(ClusterFailure, NoLiveWorkerIsUnavailableAndSigtermExitsCleanly) {
  char dir_template[] = "/tmp/glm-cluster-fail-XXXXXX";
  std::string dir = mkdtemp(dir_template);
  std::string model = dir + "/tiny";
  ASSERT_EQ(MakeTinyModel(model).first, 0);
  auto router = StartRouter(model, dir + "/router.log");
  ASSERT_TRUE(router);
  auto worker = StartWorker(model, router->address(), "lonely", dir + "/worker.log");
  ASSERT_TRUE(worker);
  ASSERT_TRUE(WaitFor([&] { return LiveWorkers(router->address()) == 1; }, absl::Seconds(20)));
  ASSERT_TRUE(Generate(router->address(), PromptRequest("hi", 2)).status.ok());

  worker->process->Signal(SIGKILL);
  ASSERT_TRUE(worker->process->Wait(absl::Seconds(10)).has_value());
  ASSERT_TRUE(WaitFor([&] { return LiveWorkers(router->address()) == 0; }, absl::Seconds(10)))
      << "the killed worker should expire after the 1.5 s heartbeat timeout";
  StreamResult r = Generate(router->address(), PromptRequest("hi", 2));
  EXPECT_EQ(r.status.error_code(), grpc::UNAVAILABLE) << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("tiny/fp32"), std::string::npos) << r.status.error_message();

  // A worker SIGTERMed deregisters at once (no expiry wait) and exits 0.
  auto second = StartWorker(model, router->address(), "polite", dir + "/worker2.log");
  ASSERT_TRUE(second);
  ASSERT_TRUE(WaitFor([&] { return LiveWorkers(router->address()) == 1; }, absl::Seconds(20)));
  second->process->Signal(SIGTERM);
  EXPECT_EQ(second->process->Wait(absl::Seconds(15)), 0);
  auto stub = glm::v1::Registry::NewStub(*MakeChannel(router->address()));
  grpc::ClientContext context;
  glm::v1::ListWorkersResponse listed;
  ASSERT_TRUE(stub->ListWorkers(&context, {}, &listed).ok());
  for (const auto& w : listed.workers()) EXPECT_NE(w.info().worker_id(), "polite");

  router->process->Signal(SIGTERM);
  EXPECT_EQ(router->process->Wait(absl::Seconds(15)), 0);
}

}  // namespace
}  // namespace glm::testing
