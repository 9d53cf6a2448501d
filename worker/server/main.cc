// glm-worker: loads a checkpoint, serves glm.v1.Worker (+ health, reflection), exposes
// /metrics, registers with a router when --router is given, drains on SIGINT/SIGTERM.
//
// On start-up it prints one machine-readable line on stdout:
//   GLM_WORKER_READY port=NNNN metrics_port=MMMM worker_id=ID pool=MODEL/PRECISION
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/core/flags.h"
#include "services/core/logging.h"
#include "services/grpc/metrics.h"
#include "services/grpc/server.h"
#include "services/grpc/signals.h"
#include "worker/engine/engine.h"
#include "worker/model/config.h"
#include "worker/runtime/model_session.h"
#include "worker/server/capability.h"
#include "worker/server/proto_convert.h"
#include "worker/server/registration.h"
#include "worker/server/tp_group.h"
#include "worker/server/worker_service.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json, model.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, model_name, "", "served model name (default: the directory's name)");
ABSL_FLAG(std::string, host, "0.0.0.0", "address to listen on");
ABSL_FLAG(int, port, 50061, "gRPC port (0 = any free port; printed in the READY line)");
ABSL_FLAG(int, metrics_port, 0, "Prometheus /metrics port (0 = any free port, -1 = off)");
ABSL_FLAG(std::string, advertise_host, "127.0.0.1", "host the router should dial to reach this worker");
ABSL_FLAG(std::string, router, "", "router host:port to register with (empty = standalone)");
ABSL_FLAG(int, heartbeat_ms, 500, "heartbeat interval to the router");
ABSL_FLAG(std::string, registration_token, "", "shared secret the router requires for Register");
ABSL_FLAG(std::string, registration_token_file, "",
          "file holding --registration-token (whitespace trimmed), e.g. a mounted Secret");
ABSL_FLAG(int, tp_size, 1, "tensor-parallel size of this worker group; > 1 without --tp-rank "
                           "starts the other ranks as child processes (worker/server/tp_group.h)");
ABSL_FLAG(std::string, nccl_rendezvous, "",
          "host:port of rank 0 for the tensor-parallel group's rendezvous (used with --tp-size > 1)");
ABSL_FLAG(int, tp_rank, -1, "this process's tensor-parallel rank (one rank per pod; -1 = rank 0, "
                            "spawning ranks 1..N-1 itself)");
ABSL_FLAG(std::string, tp_rendezvous, "",
          "host:port of rank 0 for the tensor-parallel group (default: --nccl-rendezvous)");
ABSL_FLAG(int, tp_timeout_ms, 10000,
          "longest one tensor-parallel collective waits for the other ranks before the group fails");
ABSL_FLAG(std::string, worker_id, "", "worker id (default: <hostname>-<port>)");
ABSL_FLAG(std::string, precision, "auto", "fp32, bf16, fp16-safe, fp16 (naive; needs --allow-unsafe-fp16) or auto");
ABSL_FLAG(bool, allow_unsafe_fp16, false, "allow naive fp16 (overflows on GLM-4; the guard stays on)");
ABSL_FLAG(std::string, simulate_gpu, "",
          "advertise and obey another GPU's limits (v100, t4, a100, h100): precision refusals, "
          "memory fit, capability; the real backend computes with that precision's rounding");
ABSL_FLAG(std::string, backend, "cpu", "cpu or cuda");
ABSL_FLAG(int, threads, 0, "CPU threads for the backend (0 = all cores)");
ABSL_FLAG(int, kv_cache_mb, 256, "KV cache size in MiB");
ABSL_FLAG(int, block_size, 16, "tokens per KV block");
ABSL_FLAG(int, max_num_seqs, 64, "running requests at most");
ABSL_FLAG(int, max_batched_tokens, 512, "token budget per engine step");
ABSL_FLAG(std::string, scheduling, "mixed",
          "steps with prefill work: \"mixed\" (running requests decode in them too) or "
          "\"prefill-first\" (they wait while arrivals are prefilled, at most "
          "--max-prefill-only-steps in a row: more throughput, longer token gaps during bursts)");
ABSL_FLAG(int, max_prefill_only_steps, 16, "prefill-first: steps in a row the decodes may wait");
ABSL_FLAG(bool, enable_prefix_caching, true,
          "keep full KV blocks findable by their tokens after their request ends, so a request "
          "with the same leading tokens (a shared system prompt, an earlier turn) computes only "
          "the rest; false computes every prompt from scratch");
ABSL_FLAG(int, max_model_len, 0, "context limit (0 = the model's max_position_embeddings)");
ABSL_FLAG(int, max_waiting, 1024, "queued requests beyond this get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, default_max_tokens, 256, "max_tokens used when a request says 0");
ABSL_FLAG(int, max_tokens_limit, 4096, "largest max_tokens a request may ask for");
ABSL_FLAG(int, drain_grace_ms, 10000, "on SIGTERM, how long running requests may finish");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate: serve TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls-cert");

namespace glm {
namespace {

// Set when the tensor-parallel group broke: the worker deregisters and exits non-zero.
std::atomic<bool> g_tp_group_failed{false};

absl::StatusOr<std::unique_ptr<ModelSession>> OpenModel(
    ModelSessionOptions options, const std::string& worker_name,
    std::function<void(const StepInfo&)> step_observer, TpGroup* tp_group = nullptr) {
  if (options.model_dir.empty()) {
    return absl::InvalidArgumentError("--model is required: a checkpoint directory");
  }
  options.engine.worker_name = worker_name;
  options.engine.step_observer = std::move(step_observer);
  if (tp_group != nullptr) {
    tp_group->Configure(&options, [](const absl::Status& status) {
      GLM_LOG(ERROR) << "tensor-parallel group failed, leaving: " << status;
      g_tp_group_failed = true;
      RequestShutdown();
    });
  }
  return ModelSession::Open(options);
}

// The session options the flags give; a flag value no parser accepts is an error naming the flag
// (Run() exits 2 with it before anything starts).
absl::StatusOr<ModelSessionOptions> SessionOptionsFromFlags() {
  ModelSessionOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.backend = absl::GetFlag(FLAGS_backend);
  options.precision = absl::GetFlag(FLAGS_precision);
  options.allow_unsafe_fp16 = absl::GetFlag(FLAGS_allow_unsafe_fp16);
  options.simulate_gpu = absl::GetFlag(FLAGS_simulate_gpu);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.engine.block_size = absl::GetFlag(FLAGS_block_size);
  options.engine.kv_cache_bytes = int64_t(absl::GetFlag(FLAGS_kv_cache_mb)) << 20;
  options.engine.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.engine.max_num_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  options.engine.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.engine.max_waiting = absl::GetFlag(FLAGS_max_waiting);
  const absl::StatusOr<SchedulingPolicy> policy =
      ParseSchedulingPolicy(absl::GetFlag(FLAGS_scheduling));
  if (!policy.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--scheduling: ", policy.status().message()));
  }
  options.engine.scheduling = *policy;
  options.engine.max_prefill_only_steps = absl::GetFlag(FLAGS_max_prefill_only_steps);
  options.engine.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  return options;
}

std::string DefaultWorkerId(int port) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "-", port);
}

int Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  std::string model_name = absl::GetFlag(FLAGS_model_name);
  if (model_name.empty()) {
    model_name = std::filesystem::path(model_dir).lexically_normal().filename().string();
    if (model_name.empty()) model_name = std::filesystem::path(model_dir).parent_path().filename().string();
  }
  std::string worker_id = absl::GetFlag(FLAGS_worker_id);
  absl::StatusOr<std::string> registration_token =
      SecretFromFlags("registration-token", absl::GetFlag(FLAGS_registration_token),
                      absl::GetFlag(FLAGS_registration_token_file));
  if (!registration_token.ok()) {
    std::cerr << "glm-worker: " << registration_token.status().message() << "\n";
    return 2;
  }
  const int tp_size = absl::GetFlag(FLAGS_tp_size);
  // Tensor parallelism (worker/server/tp_group.h): followers never get past this block.
  TpGroupOptions tp_options;
  tp_options.tp_size = tp_size;
  tp_options.tp_rank = absl::GetFlag(FLAGS_tp_rank);
  tp_options.rendezvous = absl::GetFlag(FLAGS_tp_rendezvous);
  if (tp_options.rendezvous.empty()) tp_options.rendezvous = absl::GetFlag(FLAGS_nccl_rendezvous);
  tp_options.backend = absl::GetFlag(FLAGS_backend);
  tp_options.op_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_tp_timeout_ms));
  if (absl::Status valid = ValidateTpGroupOptions(tp_options); !valid.ok()) {
    std::cerr << "glm-worker: " << valid.message() << "\n";
    return 2;
  }
  absl::StatusOr<ModelSessionOptions> session_options = SessionOptionsFromFlags();
  if (!session_options.ok()) {
    std::cerr << "glm-worker: " << session_options.status().message() << "\n";
    return 2;
  }
  if (tp_options.tp_rank > 0) return RunTpFollowerProcess(tp_options, *session_options);
  std::unique_ptr<TpGroup> tp_group;  // declared before the session: outlives its engine
  if (tp_size > 1) {
    absl::StatusOr<std::unique_ptr<TpGroup>> started = TpGroup::StartRank0(tp_options);
    if (!started.ok()) {
      std::cerr << "glm-worker: " << started.status().message() << "\n";
      return 2;
    }
    tp_group = std::move(*started);
  }
  // The metrics need the bound port (worker id), so they exist after the engine: the engine's
  // step observer forwards to them once they are set (and stops before they go).
  struct StepMetricsSink {
    std::atomic<const Backend*> backend{nullptr};
    std::atomic<WorkerMetrics*> metrics{nullptr};
  };
  auto step_sink = std::make_shared<StepMetricsSink>();
  absl::StatusOr<std::unique_ptr<ModelSession>> session =
      OpenModel(*std::move(session_options), worker_id.empty() ? "glm-worker" : worker_id,
                [step_sink](const StepInfo& info) {
                  WorkerMetrics* m = step_sink->metrics.load();
                  if (m != nullptr) m->StepDone(info, *step_sink->backend.load());
                },
                tp_group.get());
  if (!session.ok()) {
    std::cerr << "glm-worker: " << session.status().message() << "\n";
    return 2;
  }
  Engine* engine = &(*session)->engine();
  const ModelConfig& config = (*session)->config();
  const Precision precision = (*session)->precision();
  const std::string precision_name = PrecisionName(precision);
  const std::string pool = absl::StrCat(model_name, "/", precision_name);

  CapabilityOptions capability_options;
  capability_options.backend = engine->backend()->Name();
  capability_options.precision = precision;
  capability_options.num_threads = absl::GetFlag(FLAGS_threads);
  capability_options.tp_size = tp_size;
  capability_options.device = (*session)->device();
  WorkerServiceOptions options;
  options.pool = pool;
  options.capability = ProbeCapability(capability_options);
  options.model.set_name(model_name);
  options.model.set_architecture(ArchitectureName(config.architecture));
  const int max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.model.set_max_context(static_cast<int32_t>(
      max_model_len > 0 ? max_model_len : config.max_position_embeddings));
  options.model.set_vocab_size(static_cast<int32_t>(config.vocab_size));
  options.default_max_tokens = absl::GetFlag(FLAGS_default_max_tokens);
  options.limits.max_tokens_limit = absl::GetFlag(FLAGS_max_tokens_limit);

  std::unique_ptr<MetricsExposer> exposer;
  std::unique_ptr<WorkerMetrics> metrics;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto started = MetricsExposer::Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
    if (!started.ok()) {
      std::cerr << "glm-worker: " << started.status().message() << "\n";
      return 2;
    }
    exposer = std::move(*started);
  }

  GrpcServerOptions server_options;
  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = absl::GetFlag(FLAGS_port);
  server_options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  server_options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  server_options.health_service_names = {"glm.v1.Worker"};
  // The worker id and advertised address need the bound port (--port 0), and the service needs
  // them, so the server starts with a forwarding service that answers UNAVAILABLE until the
  // real one is in place (a few microseconds later).
  class Forwarding final : public glm::v1::Worker::Service {
   public:
    std::atomic<WorkerServiceImpl*> target{nullptr};
    grpc::Status Generate(grpc::ServerContext* c, const glm::v1::WorkerGenerateRequest* r,
                          grpc::ServerWriter<glm::v1::GenerateResponse>* w) override {
      WorkerServiceImpl* t = target.load();
      if (!t) return grpc::Status(grpc::UNAVAILABLE, "worker is starting: retry shortly");
      return t->Generate(c, r, w);
    }
    grpc::Status GetInfo(grpc::ServerContext* c, const glm::v1::GetInfoRequest* r,
                         glm::v1::WorkerInfo* w) override {
      WorkerServiceImpl* t = target.load();
      if (!t) return grpc::Status(grpc::UNAVAILABLE, "worker is starting: retry shortly");
      return t->GetInfo(c, r, w);
    }
  } forwarding;
  server_options.services = {&forwarding};
  auto server = GrpcServer::Start(server_options);
  if (!server.ok()) {
    std::cerr << "glm-worker: " << server.status().message() << "\n";
    return 2;
  }
  const int port = (*server)->port();
  if (worker_id.empty()) worker_id = DefaultWorkerId(port);
  SetLogTag(worker_id);
  options.worker_id = worker_id;
  options.address = absl::StrCat(absl::GetFlag(FLAGS_advertise_host), ":", port);

  if (exposer) {
    WorkerMetricLabels labels;
    labels.worker_id = worker_id;
    labels.pool = pool;
    labels.device = options.capability.devices_size() > 0 ? options.capability.devices(0).name() : "cpu";
    labels.precision = precision_name;
    labels.tp_size = options.capability.tp_size();
    labels.compute_capability = ComputeCapabilityLabel(options.capability);
    metrics = std::make_unique<WorkerMetrics>(exposer->registry(), labels);
    metrics->SampleMemory(*engine->backend());   // the engine has not started: no race
    step_sink->backend.store(engine->backend());
    step_sink->metrics.store(metrics.get());
  }
  std::unique_ptr<WorkerServiceImpl> service;
  service = std::make_unique<WorkerServiceImpl>(engine, metrics.get(), options);
  if (metrics) {
    WorkerMetrics* m = metrics.get();
    exposer->SetRefresh([m, engine] { m->Refresh(engine->Stats()); });
  }
  engine->Start();
  forwarding.target.store(service.get());

  std::unique_ptr<RouterRegistration> registration;
  if (!absl::GetFlag(FLAGS_router).empty()) {
    RegistrationOptions reg;
    reg.router_address = absl::GetFlag(FLAGS_router);
    reg.heartbeat_interval_ms = absl::GetFlag(FLAGS_heartbeat_ms);
    reg.registration_token = *registration_token;
    WorkerServiceImpl* s = service.get();
    registration = std::make_unique<RouterRegistration>(reg, [s] { return s->Info(); });
    registration->Start();
  }

  std::printf("GLM_WORKER_READY port=%d metrics_port=%d worker_id=%s pool=%s\n", port,
              exposer ? exposer->port() : -1, worker_id.c_str(), pool.c_str());
  std::fflush(stdout);
  GLM_LOG(INFO) << "serving " << pool << " on port " << port << " (device "
                << (*session)->device().Describe() << ", precision " << precision_name
                << ", " << SchedulingPolicyName(engine->options().scheduling)
                << " scheduling, prefix caching "
                << (engine->options().enable_prefix_caching ? "on" : "off")
                << ", non-finite guard on)";

  int sig = WaitForShutdownSignal();
  GLM_LOG(INFO) << "signal " << sig << ": draining";
  // Drain: stop new work (router first, so it stops placing here), let streams finish.
  service->SetDraining(true);
  (*server)->SetServing(false);
  if (registration) registration->Stop(/*deregister=*/true);
  // A broken tensor-parallel group fails every step: nothing left to drain for long.
  const absl::Time drain_deadline =
      absl::Now() + (g_tp_group_failed ? absl::Seconds(1)
                                       : absl::Milliseconds(absl::GetFlag(FLAGS_drain_grace_ms)));
  while (service->open_streams() > 0 && absl::Now() < drain_deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (service->open_streams() > 0) {
    // Grace over: end the rest with UNAVAILABLE so the router migrates them (not CANCELLED).
    GLM_LOG(WARNING) << service->open_streams() << " streams still open after --drain-grace-ms: "
                     << "handing them back to the router";
    service->AbortOpenStreams();
    const absl::Time abort_deadline = absl::Now() + absl::Seconds(2);
    while (service->open_streams() > 0 && absl::Now() < abort_deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  (*server)->Shutdown(absl::Milliseconds(500));
  engine->Stop();
  step_sink->metrics.store(nullptr);
  forwarding.target.store(nullptr);
  GLM_LOG(INFO) << "stopped";
  if (g_tp_group_failed) {
    std::cerr << "glm-worker: the tensor-parallel group failed (see the log): exiting 3\n";
    return 3;
  }
  return 0;
}

}  // namespace
}  // namespace glm

int main(int argc, char** argv) {
  glm::BlockShutdownSignals();
  glm::ParseFlags(argc, argv,
                  "glm-worker --model DIR [--port 0] [--router HOST:PORT] [--precision fp32]");
  glm::SetLogTag("glm-worker");
  return glm::Run();
}
