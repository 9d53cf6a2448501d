// glmctl: talk to a glm-fleet router.
//   glmctl [--router ADDR] generate --prompt TEXT [--max-tokens N --temperature T --top-p P
//          --seed S --precision auto --json]      streams text as it arrives
//   glmctl [--router ADDR] chat [--system TEXT]    interactive; one user turn per stdin line
//   glmctl [--router ADDR] workers                 table: worker, pool, device, precision, load
//   glmctl [--router ADDR] health                  grpc.health.v1 status of the router
// Exit status: 0 ok, 1 the call failed (message on stderr), 2 bad usage.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glm/v1/generation.grpc.pb.h"
#include "glm/v1/worker.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/core/flags.h"
#include "services/grpc/channel.h"
#include "services/grpc/status.h"
#include "worker/server/proto_convert.h"

ABSL_FLAG(std::string, router, "127.0.0.1:50051", "router host:port");
ABSL_FLAG(std::string, model, "", "model name (empty: the only one served)");
ABSL_FLAG(std::string, prompt, "", "generate: prompt text");
ABSL_FLAG(std::string, system, "", "chat: system message");
ABSL_FLAG(int, max_tokens, 128, "tokens to generate at most");
ABSL_FLAG(double, temperature, -1, "sampling temperature (0 = greedy; unset = server default 1.0)");
ABSL_FLAG(double, top_p, -1, "nucleus mass (0, 1]; unset = 1");
ABSL_FLAG(int, top_k, -1, "top-k (0 = off); unset = off");
ABSL_FLAG(int64_t, seed, -1, "sampling seed (unset = 0)");
ABSL_FLAG(std::string, precision, "auto", "auto, fp32, bf16, fp16-safe, fp16");
ABSL_FLAG(bool, json, false, "generate: print one JSON object at the end instead of streaming");
ABSL_FLAG(int, logprobs, 0,
          "generate --json: each token's logprob and the N most likely tokens at its position "
          "(0 = none, at most 20)");
ABSL_FLAG(int, timeout_ms, 120000, "deadline per call");
ABSL_FLAG(std::string, api_key, "", "API key for a router started with --api-keys-file "
          "(default: $GLM_API_KEY)");

namespace glm {
namespace {

std::unique_ptr<grpc::ClientContext> NewContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  std::string api_key = absl::GetFlag(FLAGS_api_key);
  if (api_key.empty() && getenv("GLM_API_KEY") != nullptr) api_key = getenv("GLM_API_KEY");
  if (!api_key.empty()) context->AddMetadata("authorization", "Bearer " + api_key);
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  return context;
}

int Fail(const grpc::Status& status) {
  std::fprintf(stderr, "glmctl: %s: %s\n", GrpcCodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

absl::StatusOr<glm::v1::GenerateRequest> BaseRequest() {
  glm::v1::GenerateRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  request.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  glm::v1::SamplingParams* sampling = request.mutable_sampling();
  if (absl::GetFlag(FLAGS_temperature) >= 0) sampling->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (absl::GetFlag(FLAGS_top_p) >= 0) sampling->set_top_p(absl::GetFlag(FLAGS_top_p));
  if (absl::GetFlag(FLAGS_top_k) >= 0) sampling->set_top_k(absl::GetFlag(FLAGS_top_k));
  if (absl::GetFlag(FLAGS_seed) >= 0) sampling->set_seed(absl::GetFlag(FLAGS_seed));
  glm::v1::Precision precision;
  if (!ParsePrecisionLabel(absl::GetFlag(FLAGS_precision), &precision)) {
    return absl::InvalidArgumentError("--precision: use auto, fp32, bf16, fp16-safe or fp16");
  }
  request.set_precision(precision);
  request.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  return request;
}

// Streams one request; text goes to stdout as it arrives unless `quiet`. Returns the status
// and fills text/ids/final.
grpc::Status Stream(glm::v1::Generation::Stub* stub, const glm::v1::GenerateRequest& request,
                    bool quiet, std::string* text, std::vector<int32_t>* ids,
                    glm::v1::FinalInfo* final_info,
                    std::vector<glm::v1::TokenLogprob>* logprobs = nullptr) {
  auto context = NewContext();
  auto reader = stub->Generate(context.get(), request);
  glm::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ids->insert(ids->end(), response.token_ids().begin(), response.token_ids().end());
    if (logprobs != nullptr) {
      logprobs->insert(logprobs->end(), response.logprobs().begin(), response.logprobs().end());
    }
    *text += response.text();
    if (!quiet && !response.text().empty()) {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      std::fflush(stdout);
    }
    if (response.has_final()) *final_info = response.final();
  }
  return reader->Finish();
}

int Generate(glm::v1::Generation::Stub* stub) {
  auto request = BaseRequest();
  if (!request.ok()) {
    std::fprintf(stderr, "glmctl: %s\n", std::string(request.status().message()).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_prompt).empty()) {
    std::fprintf(stderr, "glmctl generate: --prompt TEXT is required\n");
    return 2;
  }
  request->set_prompt(absl::GetFlag(FLAGS_prompt));
  const bool json = absl::GetFlag(FLAGS_json);
  std::string text;
  std::vector<int32_t> ids;
  glm::v1::FinalInfo final_info;
  std::vector<glm::v1::TokenLogprob> logprobs;
  grpc::Status status = Stream(stub, *request, json, &text, &ids, &final_info, &logprobs);
  if (!status.ok()) {
    if (!json) std::printf("\n");
    return Fail(status);
  }
  if (json) {
    nlohmann::json out;
    out["text"] = text;
    out["token_ids"] = ids;
    out["finish_reason"] = FinishReasonLabel(final_info.finish_reason());
    out["prompt_tokens"] = final_info.usage().prompt_tokens();
    out["generated_tokens"] = final_info.usage().generated_tokens();
    out["cached_prompt_tokens"] = final_info.usage().cached_prompt_tokens();
    if (request->logprobs() > 0) {
      nlohmann::json list = nlohmann::json::array();
      for (const glm::v1::TokenLogprob& lp : logprobs) {
        nlohmann::json top = nlohmann::json::array();
        for (const glm::v1::TopLogprob& t : lp.top()) {
          top.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}});
        }
        list.push_back({{"token_id", lp.token_id()}, {"logprob", lp.logprob()}, {"top", top}});
      }
      out["logprobs"] = list;
    }
    out["worker"] = final_info.served_by().worker_id();
    out["pool"] = final_info.served_by().pool();
    out["precision"] = PrecisionLabel(final_info.served_by().precision());
    out["attempts"] = final_info.served_by().attempts();   // 2 after a non-finite retry
    out["ttft_ms"] = final_info.time_to_first_token_ms();
    out["total_ms"] = final_info.total_time_ms();
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr, "[%d tokens, %s, %s on %s, ttft %.1f ms, total %.1f ms]\n",
                 final_info.usage().generated_tokens(),
                 FinishReasonLabel(final_info.finish_reason()).c_str(),
                 final_info.served_by().pool().c_str(), final_info.served_by().worker_id().c_str(),
                 final_info.time_to_first_token_ms(), final_info.total_time_ms());
  }
  return 0;
}

int Chat(glm::v1::Generation::Stub* stub) {
  auto request = BaseRequest();
  if (!request.ok()) {
    std::fprintf(stderr, "glmctl: %s\n", std::string(request.status().message()).c_str());
    return 2;
  }
  glm::v1::ChatInput history;
  if (!absl::GetFlag(FLAGS_system).empty()) {
    auto* m = history.add_messages();
    m->set_role("system");
    m->set_content(absl::GetFlag(FLAGS_system));
  }
  std::string line;
  // One turn per line until EOF; the history grows with each answer.
  for (int turn = 0; turn < 10000; ++turn) {
    std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    auto* user = history.add_messages();
    user->set_role("user");
    user->set_content(line);
    *request->mutable_chat() = history;
    std::string text;
    std::vector<int32_t> ids;
    glm::v1::FinalInfo final_info;
    grpc::Status status = Stream(stub, *request, false, &text, &ids, &final_info);
    std::printf("\n");
    std::fflush(stdout);
    if (!status.ok()) {
      history.mutable_messages()->RemoveLast();  // the turn did not happen
      Fail(status);
      continue;
    }
    auto* assistant = history.add_messages();
    assistant->set_role("assistant");
    assistant->set_content(text);
  }
  return 0;
}

int Workers(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = glm::v1::Registry::NewStub(channel);
  auto context = NewContext();
  glm::v1::ListWorkersResponse response;
  grpc::Status status = stub->ListWorkers(context.get(), glm::v1::ListWorkersRequest(), &response);
  if (!status.ok()) return Fail(status);
  std::printf("%-24s %-22s %-9s %-44s %-4s %-10s %7s %7s %6s %9s\n", "WORKER", "POOL", "HEALTH",
              "DEVICE", "CC", "PRECISION", "RUNNING", "WAITING", "KV%", "ADDRESS");
  for (const glm::v1::WorkerStatus& w : response.workers()) {
    const auto& cap = w.info().capability();
    std::string device = cap.devices_size() > 0 ? cap.devices(0).name() : "?";
    if (device.size() > 28) device = device.substr(0, 25) + "...";
    if (cap.tp_size() > 1) device = absl::StrCat(device, " x", cap.tp_size());
    // A worker started with --simulate-gpu says so: "Tesla V100-SXM2-32GB (simulated v100)".
    if (cap.devices_size() > 0 && !cap.devices(0).simulated().empty()) {
      device = absl::StrCat(device, " (simulated ", cap.devices(0).simulated(), ")");
    }
    // Compute capability: "7.0" for a V100, "cpu" for the CPU backend.
    std::string cc = "?";
    if (cap.devices_size() > 0) {
      const auto& d = cap.devices(0);
      cc = d.kind() == glm::v1::DEVICE_KIND_CPU
               ? "cpu"
               : absl::StrCat(d.compute_capability_major(), ".", d.compute_capability_minor());
    }
    std::printf("%-24s %-22s %-9s %-44s %-4s %-10s %7d %7d %5.1f%% %s\n",
                w.info().worker_id().c_str(), w.pool().c_str(), w.health().c_str(), device.c_str(),
                cc.c_str(), PrecisionLabel(cap.precision()).c_str(), w.info().load().running_requests(),
                w.info().load().waiting_requests(), 100.0 * w.info().load().kv_cache_usage(),
                w.info().address().c_str());
  }
  if (response.workers().empty()) std::printf("(no workers registered)\n");
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  int worst = 0;
  for (const char* service : {"", "glm.v1.Generation"}) {
    auto context = NewContext();
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = stub->Check(context.get(), request, &response);
    if (!status.ok()) return Fail(status);
    std::printf("%-20s %s\n", *service ? service : "(server)",
                grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
    if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) worst = 1;
  }
  return worst;
}

}  // namespace
}  // namespace glm

int main(int argc, char** argv) {
  std::vector<std::string> args = glm::ParseFlags(
      argc, argv, "glmctl [--router ADDR] (generate --prompt TEXT | chat | workers | health)");
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: glmctl [--router ADDR] (generate --prompt TEXT | chat | workers | health)\n");
    return 2;
  }
  auto channel = glm::MakeChannel(absl::GetFlag(FLAGS_router));
  if (!channel.ok()) {
    std::fprintf(stderr, "glmctl: --router: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  const std::string& command = args[0];
  if (command == "generate" || command == "chat") {
    auto stub = glm::v1::Generation::NewStub(*channel);
    return command == "generate" ? glm::Generate(stub.get()) : glm::Chat(stub.get());
  }
  if (command == "workers") return glm::Workers(*channel);
  if (command == "health") return glm::Health(*channel);
  std::fprintf(stderr, "glmctl: unknown command \"%s\": use generate, chat, workers or health\n",
               command.c_str());
  return 2;
}
