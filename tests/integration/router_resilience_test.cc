// Issue 7 on real processes (loopback, ephemeral ports, glm-mkmodel's tiny checkpoint): the
// router under failure. kill -9 during 50 streams, SIGSTOP (hung worker) ejection, SIGTERM
// drain of a worker and of the router, admission (bounded queue, retry hint, deadline,
// priority), 10x overload with bounded router memory, 1,000 malformed requests, registration
// secret and API keys, prefix affinity. Every loop is bounded in count and time.
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glm/v1/generation.grpc.pb.h"
#include "glm/v1/worker.grpc.pb.h"
#include "gtest/gtest.h"
#include "services/grpc/channel.h"
#include "tests/integration/cluster_helpers.h"
#include "tests/integration/process.h"

namespace glm::testing {
namespace {

// Router flags every test starts from: short heartbeats so failures show within seconds.
std::vector<std::string> RouterArgv(const std::string& model_dir, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {Bin("router/server/glm-router"), "--port=0", "--metrics-port=0",
                                   "--host=127.0.0.1", "--tokenizer=tiny=" + model_dir,
                                   "--heartbeat-timeout-ms=1500", "--heartbeat-interval-ms=200"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<std::string> WorkerArgv(const std::string& model_dir, const std::string& router,
                                    const std::string& id, const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {Bin("worker/server/glm-worker"), "--model=" + model_dir,
                                   "--model-name=tiny", "--port=0", "--metrics-port=0",
                                   "--host=127.0.0.1", "--router=" + router, "--heartbeat-ms=200",
                                   "--worker-id=" + id, "--threads=1", "--kv-cache-mb=16",
                                   "--precision=fp32"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

glm::v1::GenerateRequest SampledRequest(const std::string& prompt, int max_tokens, uint64_t seed) {
  glm::v1::GenerateRequest request;
  request.set_model("tiny");
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  request.set_ignore_eos(true);
  request.mutable_sampling()->set_temperature(0.9f);
  request.mutable_sampling()->set_top_p(0.95f);
  request.mutable_sampling()->set_seed(seed);
  return request;
}

std::map<std::string, std::string> Health(const std::string& router) {
  auto stub = glm::v1::Registry::NewStub(*MakeChannel(router));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(2)));
  glm::v1::ListWorkersResponse response;
  std::map<std::string, std::string> out;
  if (!stub->ListWorkers(&context, {}, &response).ok()) return out;
  for (const auto& w : response.workers()) out[w.info().worker_id()] = w.health();
  return out;
}

// Resident memory of a process in KiB (/proc/PID/status VmRSS); -1 when unreadable.
long VmRssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

bool Alive(Process& p) { return !p.Wait(absl::ZeroDuration()).has_value(); }

// Streams run on threads; each records its tokens as they arrive so the test can act
// mid-stream (kill, stop, drain) once every stream is under way.
struct Streams {
  std::vector<StreamResult> results;
  std::vector<std::atomic<int>> tokens;
  std::vector<std::thread> threads;
  explicit Streams(size_t n) : results(n), tokens(n) {}
  ~Streams() { Join(); }  // an ASSERT that returns early must not leave threads running
  void Start(const std::string& router, const std::vector<glm::v1::GenerateRequest>& requests,
             absl::Duration timeout) {
    for (size_t i = 0; i < requests.size(); ++i) {
      threads.emplace_back([this, router, request = requests[i], i, timeout] {
        auto stub = glm::v1::Generation::NewStub(*MakeChannel(router));
        grpc::ClientContext context;
        context.set_deadline(In(timeout));
        auto reader = stub->Generate(&context, request);
        glm::v1::GenerateResponse response;
        StreamResult& r = results[i];
        while (reader->Read(&response)) {
          ++r.messages;
          r.ids.insert(r.ids.end(), response.token_ids().begin(), response.token_ids().end());
          r.text += response.text();
          if (response.has_final()) r.final_info = response.final();
          tokens[i].store(static_cast<int>(r.ids.size()));
        }
        r.status = reader->Finish();
        tokens[i].store(1 << 20);  // done
      });
    }
  }
  int Finished() const {
    int n = 0;
    for (const auto& t : tokens) n += t.load() == (1 << 20);
    return n;
  }
  int MinTokens() const {
    int m = 1 << 30;
    for (const auto& t : tokens) m = std::min(m, t.load());
    return m;
  }
  void Join() {
    for (auto& t : threads) t.join();
    threads.clear();
  }
};

class RouterResilience : public SharedClusterSuite<RouterResilience> {
  friend class SharedClusterSuite<RouterResilience>;

 protected:
  static void StartSuite() {
    char dir_template[] = "/tmp/glm-router-resilience-XXXXXX";
    dir_ = mkdtemp(dir_template);
    model_dir_ = dir_ + "/tiny";
    if (const char* given = getenv("GLM_TEST_MODEL_DIR"); given && *given) {
      std::filesystem::copy(given, model_dir_, std::filesystem::copy_options::recursive);
      return;
    }
    auto [code, out] = RunCommand({Bin("tools/glm-mkmodel/glm-mkmodel"), "--out=" + model_dir_,
                                   "--preset=tiny", "--seed=3"},
                                  absl::Seconds(120));
    ASSERT_EQ(code, 0) << out;
  }

  std::optional<Node> Router(const std::string& name, const std::vector<std::string>& extra = {}) {
    return StartNode(RouterArgv(model_dir_, extra), dir_ + "/" + name + ".log", "GLM_ROUTER_READY",
                     absl::Seconds(30));
  }
  std::optional<Node> Worker(const Node& router, const std::string& id,
                             const std::vector<std::string>& extra = {}) {
    return StartNode(WorkerArgv(model_dir_, router.address(), id, extra),
                     dir_ + "/" + id + ".log", "GLM_WORKER_READY", absl::Seconds(60), id);
  }
  // Starts `ids` against `router` and waits until all are live there.
  std::map<std::string, std::optional<Node>> Workers(const Node& router,
                                                     const std::vector<std::string>& ids,
                                                     const std::vector<std::string>& extra = {}) {
    std::map<std::string, std::optional<Node>> out;
    for (const std::string& id : ids) {
      out[id] = Worker(router, id, extra);
      EXPECT_TRUE(out[id].has_value()) << id << " did not start; see " << dir_;
    }
    EXPECT_TRUE(WaitFor([&] { return LiveWorkers(router.address()) == static_cast<int>(ids.size()); },
                        absl::Seconds(30)));
    return out;
  }

  static inline std::string dir_;
  static inline std::string model_dir_;
};

// --- Failover with migration ------------------------------------------------------------

TEST_F(RouterResilience, KillNineOneOfThreeWorkersDuringFiftyStreamsLosesNothing) {
  auto router = Router("kill9-router");
  ASSERT_TRUE(router);
  auto workers = Workers(*router, {"k0", "k1", "k2"});
  constexpr int kStreams = 50;
  constexpr int kTokens = 120;  // long enough to be mid-stream at the kill
  std::vector<glm::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    requests.push_back(SampledRequest(absl::StrCat("stream ", i, " tells a story"), kTokens, 1000 + i));
  }
  // The undisturbed run.
  Streams baseline(kStreams);
  baseline.Start(router->address(), requests, absl::Seconds(120));
  baseline.Join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(baseline.results[i].status.ok()) << i << ": " << baseline.results[i].status.error_message();
    ASSERT_EQ(baseline.results[i].ids.size(), static_cast<size_t>(kTokens));
  }

  // Same requests; kill -9 k1 once every stream has tokens.
  Streams disturbed(kStreams);
  disturbed.Start(router->address(), requests, absl::Seconds(120));
  ASSERT_TRUE(WaitFor([&] { return disturbed.MinTokens() >= 2; }, absl::Seconds(60)));
  workers["k1"]->process->Signal(SIGKILL);
  disturbed.Join();
  int migrated = 0;
  for (int i = 0; i < kStreams; ++i) {
    const StreamResult& got = disturbed.results[i];
    ASSERT_TRUE(got.status.ok()) << i << ": " << got.status.error_message();
    EXPECT_EQ(got.ids, baseline.results[i].ids) << "stream " << i;
    EXPECT_EQ(got.text, baseline.results[i].text) << "stream " << i;
    EXPECT_EQ(got.final_info.usage().generated_tokens(), kTokens) << i;
    if (got.final_info.served_by().attempts() > 1) {
      ++migrated;
      EXPECT_NE(got.final_info.served_by().worker_id(), "k1");
    }
  }
  EXPECT_GT(migrated, 0) << "k1's streams should have migrated (was it done before the kill?)";
}

// --- Forward-progress health: a hung (SIGSTOPped) worker -----------------------------

TEST_F(RouterResilience, SigstoppedWorkerIsEjectedWithinStallTimeoutAndItsRequestsMigrate) {
  // Heartbeat expiry is long here so that the forward-progress check is what ejects.
  auto router = Router("stop-router", {"--stall-timeout-ms=1500", "--heartbeat-timeout-ms=6000",
                                       "--eject-backoff-ms=500"});
  ASSERT_TRUE(router);
  auto workers = Workers(*router, {"s0", "s1"});
  constexpr int kStreams = 8;
  constexpr int kTokens = 400;  // long enough to be mid-stream when the worker stops
  std::vector<glm::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    requests.push_back(SampledRequest(absl::StrCat("hung ", i), kTokens, 77 + i));
  }
  Streams baseline(kStreams);
  baseline.Start(router->address(), requests, absl::Seconds(60));
  baseline.Join();

  Streams disturbed(kStreams);
  disturbed.Start(router->address(), requests, absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return disturbed.MinTokens() >= 2; }, absl::Seconds(30)));
  Process& victim = *workers["s0"]->process;
  victim.Signal(SIGSTOP);
  const absl::Time stopped = absl::Now();
  EXPECT_TRUE(WaitFor([&] { return Health(router->address())["s0"] == "ejected"; }, absl::Seconds(6)))
      << "s0 should be ejected ~1.5 s after it stops";
  const absl::Duration to_eject = absl::Now() - stopped;
  EXPECT_LT(to_eject, absl::Milliseconds(1500 + 1500)) << to_eject;
  disturbed.Join();
  int migrated = 0;
  for (int i = 0; i < kStreams; ++i) {
    const StreamResult& got = disturbed.results[i];
    ASSERT_TRUE(got.status.ok()) << i << ": " << got.status.error_message();
    EXPECT_EQ(got.ids, baseline.results[i].ids) << i;
    EXPECT_EQ(got.text, baseline.results[i].text) << i;
    migrated += got.final_info.served_by().attempts() > 1;
  }
  EXPECT_GT(migrated, 0);
  // New work avoids it while ejected.
  StreamResult during = Generate(router->address(), SampledRequest("while hung", 4, 1));
  ASSERT_TRUE(during.status.ok()) << during.status.error_message();
  EXPECT_EQ(during.final_info.served_by().worker_id(), "s1");

  // Resumed, it progresses (its cancelled requests drain) and is re-admitted after backoff.
  victim.Signal(SIGCONT);
  EXPECT_TRUE(WaitFor([&] { return Health(router->address())["s0"] == "live"; }, absl::Seconds(10)))
      << "s0 should come back after SIGCONT";
  victim.Signal(SIGKILL);
}

// --- Drain --------------------------------------------------------------------------------

TEST_F(RouterResilience, SigtermDrainOfAWorkerAndOfTheRouterFailsNoRequest) {
  auto router = Router("drain-router");
  ASSERT_TRUE(router);
  // d0 has a short grace so its longest streams are handed back (migrated), not cut.
  auto workers = Workers(*router, {"d0", "d1"}, {"--drain-grace-ms=150"});
  constexpr int kStreams = 16;
  std::vector<glm::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    // Long and short mixed on both workers (placement alternates between them).
    requests.push_back(SampledRequest(absl::StrCat("drain ", i), (i / 2) % 2 ? 12 : 700, 500 + i));
  }
  Streams load(kStreams);
  load.Start(router->address(), requests, absl::Seconds(120));
  // What this checks must not hang on how fast the machine is: a long stream of d0's has to
  // outlive its grace. So d0 is frozen (SIGSTOP) as soon as it serves some of the streams, gets
  // SIGTERM while frozen, and once it has taken the signal (it leaves the router's list as it
  // starts draining) it is frozen again for twice its grace: its clock runs on, so it wakes up
  // past the grace with whatever is still open and must hand that back. (Waiting for every
  // stream's first token instead let a loaded CI machine finish d0's long streams first.)
  Process& d0 = *workers["d0"]->process;
  auto d0_stub = glm::v1::Worker::NewStub(*MakeChannel(workers["d0"]->address()));
  ASSERT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext c;
        c.set_deadline(In(absl::Seconds(2)));
        glm::v1::WorkerInfo info;
        return d0_stub->GetInfo(&c, {}, &info).ok() && info.load().running_requests() >= 2;
      },
      absl::Seconds(30)))
      << "d0 should be serving streams";
  d0.Signal(SIGSTOP);
  d0.Signal(SIGTERM);
  d0.Signal(SIGCONT);
  ASSERT_TRUE(WaitFor([&] { return Health(router->address()).count("d0") == 0; }, absl::Seconds(10)))
      << "d0 should deregister as it starts draining";
  d0.Signal(SIGSTOP);
  absl::SleepFor(absl::Milliseconds(300));
  d0.Signal(SIGCONT);
  // Requests keep arriving during the drain; none may fail.
  std::vector<StreamResult> late;
  for (int i = 0; i < 6; ++i) {
    late.push_back(Generate(router->address(), SampledRequest(absl::StrCat("late ", i), 6, i)));
  }
  EXPECT_EQ(d0.Wait(absl::Seconds(20)), 0) << "a drained worker exits 0";
  load.Join();
  int handed_back = 0;
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(load.results[i].status.ok()) << i << ": " << load.results[i].status.error_message();
    EXPECT_EQ(load.results[i].ids.size(), static_cast<size_t>(requests[i].max_tokens())) << i;
    handed_back += load.results[i].final_info.served_by().attempts() > 1;
  }
  EXPECT_GT(handed_back, 0) << "d0's long streams outlive its 150 ms grace and must migrate";
  // (One sent within microseconds of the signal may still be taken by d0 before it starts
  // draining; that is fine as long as it completes.)
  for (const StreamResult& r : late) EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(Health(router->address()).count("d0"), 0u) << "d0 deregistered";

  // The router: SIGTERM finishes open streams, refuses new ones, exits 0.
  std::vector<glm::v1::GenerateRequest> open;
  for (int i = 0; i < 4; ++i) open.push_back(SampledRequest(absl::StrCat("router drain ", i), 40, i));
  Streams streams(open.size());
  streams.Start(router->address(), open, absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return streams.MinTokens() >= 1; }, absl::Seconds(30)));
  router->process->Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(200));
  StreamResult refused = Generate(router->address(), SampledRequest("too late", 4, 1), absl::Seconds(5));
  EXPECT_FALSE(refused.status.ok());
  streams.Join();
  for (const StreamResult& r : streams.results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 40u);
  }
  EXPECT_EQ(router->process->Wait(absl::Seconds(15)), 0);
}

// --- Admission ----------------------------------------------------------------------------

// --scheduling=prefill-first on a real worker: the same streams as a mixed-policy worker gives,
// token for token (only which steps run them changes); an unknown policy stops the worker at
// start with exit 2 and a message naming both policies.
TEST_F(RouterResilience, PrefillFirstWorkerStreamsWhatAMixedOneDoesAndABadPolicyIsRefused) {
  std::string command;  // RunCommand keeps stdout only: the worker's error goes to stderr
  for (const std::string& arg : WorkerArgv(model_dir_, "127.0.0.1:1", "bad", {"--scheduling=fifo"})) {
    command += "'" + arg + "' ";
  }
  auto [code, out] = RunCommand({"/bin/sh", "-c", command + "2>&1"}, absl::Seconds(30));
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("--scheduling: unknown scheduling policy \"fifo\""), std::string::npos) << out;
  EXPECT_NE(out.find("prefill-first"), std::string::npos) << out;

  std::vector<glm::v1::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(SampledRequest(absl::StrCat("policy ", i, " says"), 20 + 10 * i, 300 + i));
  }
  std::vector<StreamResult> by_policy[2];
  for (int prefill_first : {0, 1}) {
    auto router = Router(prefill_first ? "pf-router" : "mixed-router");
    ASSERT_TRUE(router);
    std::vector<std::string> flags = {"--max-batched-tokens=24"};  // chunked prompts next to decodes
    if (prefill_first) {
      flags.push_back("--scheduling=prefill-first");
      flags.push_back("--max-prefill-only-steps=2");
      flags.push_back("--enable-prefix-caching=false");  // and the cache's flag, both ways
    }
    const std::string id = prefill_first ? "pf0" : "mx0";
    auto workers = Workers(*router, {id}, flags);
    // The policy reached the engine: the worker names it when it starts serving.
    std::string log;
    EXPECT_TRUE(WaitFor(
        [&] {
          std::ifstream log_file(dir_ + "/" + id + ".log");
          log.assign(std::istreambuf_iterator<char>(log_file), std::istreambuf_iterator<char>());
          return log.find(prefill_first ? "prefill-first scheduling, prefix caching off"
                                        : "mixed scheduling, prefix caching on") != std::string::npos;
        },
        absl::Seconds(10)))
        << id << "'s log:\n" << log;
    Streams streams(requests.size());
    streams.Start(router->address(), requests, absl::Seconds(60));
    streams.Join();
    by_policy[prefill_first] = streams.results;
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const StreamResult& pf = by_policy[1][i];
    ASSERT_TRUE(pf.status.ok()) << i << ": " << pf.status.error_message();
    ASSERT_TRUE(by_policy[0][i].status.ok()) << i << ": " << by_policy[0][i].status.error_message();
    EXPECT_EQ(pf.ids.size(), static_cast<size_t>(requests[i].max_tokens())) << i;
    EXPECT_EQ(pf.ids, by_policy[0][i].ids) << i;
    EXPECT_EQ(pf.text, by_policy[0][i].text) << i;
  }
}

TEST_F(RouterResilience, AdmissionQueueIsBoundedHonoursDeadlinesAndPutsInteractiveFirst) {
  // Heartbeat expiry is long: the worker is SIGSTOPped for a while below and must stay live.
  auto router = Router("admission-router", {"--max-streams-per-worker=1", "--queue-size=3",
                                            "--heartbeat-timeout-ms=60000"});
  ASSERT_TRUE(router);
  auto workers = Workers(*router, {"a0"});
  auto stub = glm::v1::Generation::NewStub(*MakeChannel(router->address()));

  // A request holds the only slot: once it streams, the worker is paused (SIGSTOP) so the slot
  // stays taken while the queue is exercised, then resumed.
  Streams holder(1);
  holder.Start(router->address(), {SampledRequest("hold the slot", 1000, 1)}, absl::Seconds(60));
  ASSERT_TRUE(WaitFor([&] { return holder.MinTokens() >= 1; }, absl::Seconds(20)));
  Process& worker = *workers["a0"]->process;
  worker.Signal(SIGSTOP);
  struct Resume {
    Process& p;
    ~Resume() { p.Signal(SIGCONT); }
  } resume{worker};
  ASSERT_LT(holder.MinTokens(), 1000) << "the holder finished before the pause";

  // Deadline while queued: DEADLINE_EXCEEDED when the client's deadline passes, not later.
  const absl::Time start = absl::Now();
  StreamResult expired = Generate(router->address(), SampledRequest("impatient", 4, 2), absl::Milliseconds(400));
  EXPECT_EQ(expired.status.error_code(), grpc::DEADLINE_EXCEEDED) << expired.status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));

  // Two batch requests, then an interactive one, all queued.
  struct Queued {
    std::string name;
    glm::v1::Priority priority = glm::v1::PRIORITY_UNSPECIFIED;
    StreamResult result;
    absl::Time first_token = absl::InfiniteFuture();
  };
  std::vector<Queued> queued(3);
  queued[0].name = "batch-1";
  queued[0].priority = glm::v1::PRIORITY_BATCH;
  queued[1].name = "batch-2";
  queued[1].priority = glm::v1::PRIORITY_BATCH;
  queued[2].name = "interactive";
  queued[2].priority = glm::v1::PRIORITY_INTERACTIVE;
  std::vector<std::thread> threads;
  struct Joiner {
    std::vector<std::thread>& threads;
    ~Joiner() {
      for (auto& t : threads) if (t.joinable()) t.join();
    }
  } joiner{threads};
  for (auto& q : queued) {
    threads.emplace_back([&, &q = q] {
      glm::v1::GenerateRequest request = SampledRequest(q.name, 6, 3);
      request.set_priority(q.priority);
      auto s = glm::v1::Generation::NewStub(*MakeChannel(router->address()));
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(60)));
      auto reader = s->Generate(&context, request);
      glm::v1::GenerateResponse r;
      while (reader->Read(&r)) {
        if (q.first_token == absl::InfiniteFuture()) q.first_token = absl::Now();
        q.result.ids.insert(q.result.ids.end(), r.token_ids().begin(), r.token_ids().end());
      }
      q.result.status = reader->Finish();
    });
    // Arrival order is part of the check: the gap outlasts a client thread's start and connect on
    // a loaded machine (150 ms was seen to reorder batch-1 and batch-2 under ctest -j16).
    absl::SleepFor(absl::Milliseconds(400));
  }
  // The queue (3) is full: the next one is refused at once with a retry hint.
  {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    auto reader = stub->Generate(&context, SampledRequest("one too many", 4, 4));
    glm::v1::GenerateResponse r;
    EXPECT_FALSE(reader->Read(&r));
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED) << status.error_message();
    EXPECT_NE(status.error_message().find("retry in"), std::string::npos) << status.error_message();
    EXPECT_NE(status.error_message().find("queue"), std::string::npos) << status.error_message();
    auto trailers = context.GetServerTrailingMetadata();
    auto it = trailers.find("retry-after-ms");
    ASSERT_NE(it, trailers.end()) << "retry-after-ms trailing metadata";
    EXPECT_GT(std::stol(std::string(it->second.data(), it->second.size())), 0);
  }
  worker.Signal(SIGCONT);
  holder.Join();
  ASSERT_TRUE(holder.results[0].status.ok()) << holder.results[0].status.error_message();
  for (auto& t : threads) t.join();
  for (const auto& q : queued) {
    ASSERT_TRUE(q.result.status.ok()) << q.name << ": " << q.result.status.error_message();
    EXPECT_EQ(q.result.ids.size(), 6u) << q.name;
  }
  EXPECT_LT(queued[2].first_token, queued[0].first_token) << "interactive runs before queued batch";
  EXPECT_LT(queued[0].first_token, queued[1].first_token) << "batch in arrival order";
}

TEST_F(RouterResilience, TenTimesOverloadIsOnlyResourceExhaustedWithBoundedRouterMemory) {
  // Capacity: 2 workers x 2 streams + 4 queued = 8; each wave sends 80. The workers are paused
  // (SIGSTOP) while a wave arrives, so the accepted requests hold their slots however slowly the
  // 80 client threads start on a loaded machine (the router's liveness timeouts are long enough
  // not to eject them meanwhile), and resumed once every refused request has its answer.
  auto router = Router("overload-router", {"--max-streams-per-worker=2", "--queue-size=4",
                                           "--stall-timeout-ms=60000", "--heartbeat-timeout-ms=60000"});
  ASSERT_TRUE(router);
  auto workers = Workers(*router, {"o0", "o1"});
  struct Paused {  // both workers stopped for a scope
    std::vector<Process*> procs;
    explicit Paused(std::vector<Process*> p) : procs(std::move(p)) {
      for (Process* q : procs) q->Signal(SIGSTOP);
    }
    ~Paused() {
      for (Process* q : procs) q->Signal(SIGCONT);
    }
  };
  ASSERT_TRUE(Generate(router->address(), SampledRequest("warm up", 4, 1)).status.ok());
  const long rss_before = VmRssKiB(router->process->pid());
  ASSERT_GT(rss_before, 0);
  constexpr int kRequests = 80;
  constexpr int kTokens = 16;
  long rss_after_first = 0;
  for (int wave = 0; wave < 2; ++wave) {
    std::vector<glm::v1::GenerateRequest> requests;
    for (int i = 0; i < kRequests; ++i) {
      requests.push_back(SampledRequest(absl::StrCat("overload ", wave, " ", i), kTokens, i));
    }
    Streams burst(kRequests);
    {
      Paused paused({workers["o0"]->process.get(), workers["o1"]->process.get()});
      burst.Start(router->address(), requests, absl::Seconds(120));
      ASSERT_TRUE(WaitFor([&] { return burst.Finished() >= kRequests - 8; }, absl::Seconds(60)))
          << burst.Finished() << " of " << kRequests << " answered while the workers are paused";
    }
    burst.Join();
    int ok = 0, exhausted = 0;
    for (const StreamResult& r : burst.results) {
      if (r.status.ok()) {
        ++ok;
        EXPECT_EQ(r.ids.size(), static_cast<size_t>(kTokens)) << "accepted requests complete";
      } else {
        EXPECT_EQ(r.status.error_code(), grpc::RESOURCE_EXHAUSTED) << r.status.error_message();
        EXPECT_TRUE(r.ids.empty());
        ++exhausted;
      }
    }
    EXPECT_GE(ok, 8) << "at least the capacity is served";
    EXPECT_GT(exhausted, kRequests / 2) << "beyond capacity: RESOURCE_EXHAUSTED";
    if (wave == 0) rss_after_first = VmRssKiB(router->process->pid());
  }
  const long rss_after = VmRssKiB(router->process->pid());
  ASSERT_TRUE(Alive(*router->process));
  EXPECT_LT(rss_after - rss_before, 64 * 1024) << "router RSS grew from " << rss_before << " to "
                                                << rss_after << " KiB";
  EXPECT_LT(rss_after - rss_after_first, 16 * 1024) << "a second wave must not keep growing";
}

// --- Malformed input ---------------------------------------------------------------------

// One raw call to Generation/Generate with `payload` as the request bytes.
grpc::Status RawGenerate(grpc::Channel* channel, const std::string& payload) {
  static const grpc::internal::RpcMethod method("/glm.v1.Generation/Generate",
                                                grpc::internal::RpcMethod::SERVER_STREAMING);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(20)));
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel, method, &context, request));
  grpc::ByteBuffer response;
  int messages = 0;
  while (messages < 10000 && reader->Read(&response)) ++messages;
  return reader->Finish();
}

std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}
std::string Tag(int field, int wire) { return Varint((static_cast<uint64_t>(field) << 3) | wire); }
std::string Bytes(int field, const std::string& data) { return Tag(field, 2) + Varint(data.size()) + data; }

TEST_F(RouterResilience, AThousandRandomizedBadRequestsGetAStatusAndCrashNothing) {
  auto router = Router("fuzz-router", {"--max-request-bytes=65536", "--max-prompt-tokens=512"});
  ASSERT_TRUE(router);
  auto workers = Workers(*router, {"f0"});
  auto channel = *MakeChannel(router->address());
  std::mt19937_64 rng(20240607);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    return s;
  };
  const std::string invalid_utf8[] = {"\xff\xfe", "abc\xc3", "\xed\xa0\x80", "\xc0\xaf", "ok\x80ok"};
  glm::v1::GenerateRequest valid = SampledRequest("hello", 4, 1);
  const std::string valid_bytes = valid.SerializeAsString();
  // Each generator makes one bad request (bytes on the wire).
  std::vector<std::function<std::string()>> generators = {
      [&] { return random_bytes(rng() % 300); },
      [&] { return std::string(); },  // empty: no input
      [&] {  // a valid request with bytes flipped
        std::string s = valid_bytes;
        for (int k = 0; k < 3; ++k) s[rng() % s.size()] ^= static_cast<char>(1 + rng() % 255);
        return s;
      },
      [&] { return Tag(2, 0) + Varint(rng()); },                       // prompt as a varint
      [&] { return Tag(6, 2) + Varint(4) + "abcd"; },                  // max_tokens as bytes
      [&] { return Bytes(2, "hi") + Tag(6, 0) + Varint(~0ull); },       // huge max_tokens
      [&] { return Bytes(2, invalid_utf8[rng() % 5]); },               // invalid UTF-8 prompt
      [&] { return Bytes(2, "hi") + Bytes(7, invalid_utf8[rng() % 5]); },  // ... in a stop string
      [&] { return Bytes(1, invalid_utf8[rng() % 5]) + Bytes(2, "hi"); },  // ... in the model
      [&] { return Bytes(2, "hi") + Tag(6, 2) + Varint(1ull << 40); },   // length past the end
      [&] { return Bytes(2, std::string(70000, 'x')); },                // over --max-request-bytes
      [&] {  // token ids far outside the vocabulary
        glm::v1::GenerateRequest r = valid;
        r.mutable_token_ids()->add_ids(static_cast<int32_t>(rng()));
        r.mutable_token_ids()->add_ids(-1);
        return r.SerializeAsString();
      },
      [&] {  // a thousand tokens over --max-prompt-tokens
        glm::v1::GenerateRequest r = valid;
        for (int k = 0; k < 1000; ++k) r.mutable_token_ids()->add_ids(k % 50);
        return r.SerializeAsString();
      },
      [&] {  // too many / too long stop strings
        glm::v1::GenerateRequest r = valid;
        int n = 1 + rng() % 40;
        for (int k = 0; k < n; ++k) r.add_stop(std::string(1 + rng() % 400, 'a'));
        if (n <= 16) r.add_stop(std::string(300, 'b'));
        return r.SerializeAsString();
      },
      [&] {  // sampling values out of range
        glm::v1::GenerateRequest r = valid;
        r.mutable_sampling()->set_temperature(rng() % 2 ? NAN : 1e30f);
        r.mutable_sampling()->set_top_p(-3);
        return r.SerializeAsString();
      },
      [&] {  // unknown enum values, negative max_tokens
        glm::v1::GenerateRequest r = valid;
        r.set_max_tokens(-static_cast<int32_t>(1 + rng() % 1000000));
        r.set_precision(static_cast<glm::v1::Precision>(99));
        return r.SerializeAsString();
      },
      [&] {  // deeply nested garbage in the chat field
        std::string s = "x";
        for (int k = 0; k < 200; ++k) s = Bytes(1, s);
        return Bytes(3, s);
      },
  };
  constexpr int kRequests = 1000;
  constexpr int kThreads = 4;
  std::mutex mu;
  std::map<int, int> by_code;
  std::vector<std::string> problems;
  std::vector<std::thread> threads;
  std::vector<std::string> payloads;
  for (int i = 0; i < kRequests; ++i) payloads.push_back(generators[i % generators.size()]());
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < kRequests; i += kThreads) {
        grpc::Status status = RawGenerate(channel.get(), payloads[i]);
        std::lock_guard<std::mutex> lock(mu);
        ++by_code[status.error_code()];
        const bool useful = status.ok() || status.error_message().size() >= 10;
        const bool expected_code =
            status.ok() || status.error_code() == grpc::INVALID_ARGUMENT ||
            status.error_code() == grpc::INTERNAL || status.error_code() == grpc::RESOURCE_EXHAUSTED ||
            status.error_code() == grpc::NOT_FOUND || status.error_code() == grpc::FAILED_PRECONDITION;
        if ((!useful || !expected_code) && problems.size() < 20) {
          problems.push_back(absl::StrCat("#", i, " (generator ", i % generators.size(), "): code ",
                                          status.error_code(), " \"", status.error_message(), "\""));
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& p : problems) ADD_FAILURE() << p;
  int total = 0;
  for (const auto& [code, n] : by_code) total += n;
  EXPECT_EQ(total, kRequests);
  EXPECT_GT(by_code[grpc::INVALID_ARGUMENT], 100);
  EXPECT_EQ(by_code[grpc::DEADLINE_EXCEEDED], 0) << "no request may hang";
  EXPECT_EQ(by_code[grpc::UNAVAILABLE], 0) << "nothing crashed";
  ASSERT_TRUE(Alive(*router->process)) << "router crashed";
  ASSERT_TRUE(Alive(*workers["f0"]->process)) << "worker crashed";
  StreamResult after = Generate(router->address(), valid);
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

// --- Security -----------------------------------------------------------------------------

TEST_F(RouterResilience, RegistrationNeedsTheSecretAndTheEndpointItsApiKeys) {
  std::ofstream(dir_ + "/registration-token") << "s3cret-token\n";
  std::ofstream(dir_ + "/api-keys") << "# keys\nkey-one\n\nkey-two\n";
  auto router = Router("secure-router", {"--registration-token-file=" + dir_ + "/registration-token",
                                         "--api-keys-file=" + dir_ + "/api-keys"});
  ASSERT_TRUE(router);
  auto good = Worker(*router, "trusted", {"--registration-token=s3cret-token"});
  auto wrong = Worker(*router, "impostor", {"--registration-token=guess"});
  auto none = Worker(*router, "anonymous");
  ASSERT_TRUE(good && wrong && none);
  ASSERT_TRUE(WaitFor([&] { return LiveWorkers(router->address()) == 1; }, absl::Seconds(20)));
  absl::SleepFor(absl::Milliseconds(800));  // the others keep retrying; give them the chance
  auto listed = Health(router->address());
  EXPECT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed.count("trusted"), 1u);

  // Raw registry calls without / with a wrong token.
  auto registry = glm::v1::Registry::NewStub(*MakeChannel(router->address()));
  {
    grpc::ClientContext context;
    glm::v1::RegisterRequest request;
    request.mutable_info()->set_worker_id("sneaky");
    request.mutable_info()->set_address(wrong->address());
    request.mutable_info()->mutable_model()->set_name("tiny");
    glm::v1::RegisterResponse response;
    grpc::Status s = registry->Register(&context, request, &response);
    EXPECT_EQ(s.error_code(), grpc::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer guess");
    glm::v1::HeartbeatRequest request;
    request.set_worker_id("trusted");
    request.set_state("draining");  // would stop placement on a real worker if accepted
    glm::v1::HeartbeatResponse response;
    EXPECT_EQ(registry->Heartbeat(&context, request, &response).error_code(), grpc::UNAUTHENTICATED);
  }

  // API keys: missing and wrong are UNAUTHENTICATED; a listed key is served, never by an impostor.
  auto stub = glm::v1::Generation::NewStub(*MakeChannel(router->address()));
  auto call = [&](const std::string& key, const glm::v1::GenerateRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(30)));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
    auto reader = stub->Generate(&context, request);
    glm::v1::GenerateResponse r;
    std::string served;
    while (reader->Read(&r)) {
      if (r.has_final()) served = r.final().served_by().worker_id();
    }
    return std::make_pair(reader->Finish(), served);
  };
  auto [missing, s1] = call("", SampledRequest("hi", 4, 1));
  EXPECT_EQ(missing.error_code(), grpc::UNAUTHENTICATED);
  EXPECT_NE(missing.error_message().find("API key"), std::string::npos) << missing.error_message();
  auto [bad, s2] = call("key-three", SampledRequest("hi", 4, 1));
  EXPECT_EQ(bad.error_code(), grpc::UNAUTHENTICATED);
  for (int i = 0; i < 6; ++i) {
    auto [ok, served] = call(i % 2 ? "key-one" : "key-two", SampledRequest("hi", 4, i));
    ASSERT_TRUE(ok.ok()) << ok.error_message();
    EXPECT_EQ(served, "trusted");
  }
  {
    grpc::ClientContext context;
    glm::v1::ListModelsResponse models;
    EXPECT_EQ(stub->ListModels(&context, {}, &models).error_code(), grpc::UNAUTHENTICATED);
  }
  auto [code, out] = RunCommand({Bin("tools/glmctl/glmctl"), "--router=" + router->address(),
                                 "--api-key=key-one", "generate", "--prompt=hi", "--max-tokens=2",
                                 "--json"},
                                absl::Seconds(30));
  EXPECT_EQ(code, 0) << out;
}

// --- Placement ----------------------------------------------------------------------------

// With --prefix-affinity-tokens=8 (and p2c placement), then with the router's defaults (32
// tokens, least-load): a shared system prompt stays on one worker, where the worker's prefix
// cache serves its blocks to the later requests; different prompts still spread.
TEST_F(RouterResilience, PrefixAffinityKeepsASharedPrefixOnOneWorker) {
  const std::string system =
      "You are a helpful assistant for the glm-fleet project. Answer briefly and precisely, and "
      "say so when a question about the cluster cannot be answered from what you were told. ";
  for (bool defaults : {false, true}) {
    auto router = defaults ? Router("affinity-default-router")
                           : Router("affinity-router", {"--prefix-affinity-tokens=8", "--placement=p2c"});
    ASSERT_TRUE(router);
    const std::string tag = defaults ? "d" : "p";
    auto workers = Workers(*router, {tag + "0", tag + "1", tag + "2"});
    std::set<std::string> shared, distinct;
    int cached = 0;
    for (int i = 0; i < 9; ++i) {
      StreamResult r = Generate(router->address(), SampledRequest(system + absl::StrCat("Question ", i), 2, i));
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      shared.insert(r.final_info.served_by().worker_id());
      cached += r.final_info.usage().cached_prompt_tokens();
      StreamResult d = Generate(router->address(),
                                SampledRequest(absl::StrCat(i, " unrelated words make a different prefix ", i), 2, i));
      ASSERT_TRUE(d.status.ok()) << d.status.error_message();
      distinct.insert(d.final_info.served_by().worker_id());
    }
    const std::string what = defaults ? " (router defaults)" : " (8 tokens)";
    EXPECT_EQ(shared.size(), 1u) << "same first tokens -> same worker" << what;
    EXPECT_GT(distinct.size(), 1u) << "different prefixes spread" << what;
    EXPECT_GE(cached, 8 * 32) << "the 8 later requests found the system prompt's blocks" << what;
  }
}

}  // namespace
}  // namespace glm::testing
