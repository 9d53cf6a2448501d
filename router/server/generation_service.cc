#include "router/server/generation_service.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "services/core/logging.h"
#include "router/registry/health.h"
#include "router/server/admission.h"
#include "router/server/api_keys.h"
#include "services/grpc/status.h"
#include "worker/tokenizer/chat_template.h"

namespace glm {
namespace {

// Worker failures worth resending elsewhere: the worker is gone, full or broke the stream.
// Anything else (bad input, cancellation) is the request's own outcome and goes to the client.
constexpr grpc::StatusCode kRetryableCodes[] = {grpc::UNAVAILABLE, grpc::RESOURCE_EXHAUSTED,
                                                grpc::UNKNOWN, grpc::ABORTED};

bool Retryable(grpc::StatusCode code) {
  return std::find(std::begin(kRetryableCodes), std::end(kRetryableCodes), code) !=
         std::end(kRetryableCodes);
}

const glm::v1::ModelDescription* DescriptionOf(const std::vector<WorkerSnapshot>& workers,
                                               const std::string& model) {
  const glm::v1::ModelDescription* found = nullptr;
  for (const WorkerSnapshot& w : workers) {
    if (w.pool.model != model) continue;
    found = &w.info.model();
    if (w.health == WorkerHealth::kLive) break;
  }
  return found;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// The worker's non-finite guard fired: DATA_LOSS marked with the glm-nonfinite trailer (the
// message test keeps an older worker recognised).
bool IsNonFinite(const grpc::Status& status, const grpc::ClientContext& call) {
  if (status.error_code() != grpc::DATA_LOSS) return false;
  const auto& trailers = call.GetServerTrailingMetadata();
  auto it = trailers.find(kNonFiniteMetadataKey);
  if (it != trailers.end() && it->second == "1") return true;
  return absl::StrContains(status.error_message(), "non-finite");
}

// After a non-finite failure on `failed`: the retry may only go to a safe pool (tier 0 of the
// placement table: fp32, bf16, fp16-safe) other than the failed precision, whatever the client
// asked for. Updates `placement` and returns nullopt when such a pool of the model exists;
// otherwise (or on a second non-finite failure) the FAILED_PRECONDITION the client gets.
std::optional<grpc::Status> PlanNonFiniteRetry(const std::vector<WorkerSnapshot>& workers,
                                               const WorkerSnapshot& failed,
                                               const grpc::Status& status, bool already_retried,
                                               PlacementRequest* placement) {
  const std::string what = absl::StrCat(
      "non-finite output (NaN/Inf logits) in precision ", PrecisionLabel(failed.pool.precision),
      " on worker ", failed.worker_id, " (pool ", failed.pool.Name(), ")");
  if (already_retried) {
    return grpc::Status(grpc::FAILED_PRECONDITION,
                        absl::StrCat(what, " after a retry on a safer pool: no pool could "
                                           "compute this request safely (worker: ",
                                     status.error_message(), ")"));
  }
  placement->precision = glm::v1::PRECISION_UNSPECIFIED;
  placement->exclude_precisions.insert(failed.pool.precision);
  for (int p = glm::v1::Precision_MIN; p <= glm::v1::Precision_MAX; ++p) {
    const auto precision = static_cast<glm::v1::Precision>(p);
    if (precision != glm::v1::PRECISION_UNSPECIFIED && PrecisionTier(precision) > 0) {
      placement->exclude_precisions.insert(precision);
    }
  }
  std::set<std::string> safer;
  for (const WorkerSnapshot& w : workers) {
    if (w.pool.model == placement->model && !placement->exclude_precisions.count(w.pool.precision)) {
      safer.insert(w.pool.Name());
    }
  }
  if (safer.empty()) {
    GLM_LOG(WARNING) << what << ": no fp32/bf16/fp16-safe pool of " << placement->model
                     << " to retry on; the client gets FAILED_PRECONDITION";
    return grpc::Status(
        grpc::FAILED_PRECONDITION,
        absl::StrCat(what, ", and no fp32/bf16/fp16-safe pool serves model \"", placement->model,
                     "\" to retry on: start a worker for it with --precision=fp32, fp16-safe "
                     "or auto (worker: ",
                     status.error_message(), ")"));
  }
  GLM_LOG(WARNING) << what << ": retrying on " << absl::StrJoin(safer, ", ");
  return std::nullopt;
}

}  // namespace

GenerationServiceImpl::GenerationServiceImpl(WorkerRegistry* registry, Placer* placer,
                                             const ModelTokenizers* tokenizers,
                                             RouterMetrics* metrics,
                                             GenerationServiceOptions options)
    : registry_(registry),
      placer_(placer),
      tokenizers_(tokenizers),
      metrics_(metrics),
      options_(std::move(options)) {}

absl::StatusOr<PreparedRequest> GenerationServiceImpl::Prepare(
    const glm::v1::GenerateRequest& request, const std::vector<WorkerSnapshot>& workers) {
  if (request.input_case() == glm::v1::GenerateRequest::INPUT_NOT_SET) {
    return absl::InvalidArgumentError("no input: set one of prompt, chat or token_ids");
  }
  PreparedRequest prepared;
  auto model = ResolveModel(workers, request.model());
  if (!model.ok()) return model.status();
  prepared.model = *model;
  const glm::v1::ModelDescription* description = DescriptionOf(workers, prepared.model);

  auto sampling = SamplingFromProto(request.sampling());
  if (!sampling.ok()) return sampling.status();
  if (auto s = ValidateMaxTokens(request.max_tokens(), options_.limits); !s.ok()) return s;
  if (auto s = ValidateStops(request.stop(), options_.limits); !s.ok()) return s;
  if (auto s = ValidateLogprobs(request.logprobs()); !s.ok()) return s;
  if (request.request_id().size() > 128) {
    return absl::InvalidArgumentError("request_id is longer than 128 bytes: shorten it");
  }
  if (request.precision() != glm::v1::PRECISION_UNSPECIFIED &&
      !glm::v1::Precision_IsValid(request.precision())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision ", static_cast<int>(request.precision()),
        " is not a Precision value: use PRECISION_UNSPECIFIED (auto), FP32, BF16, FP16_SAFE or FP16"));
  }

  glm::v1::WorkerGenerateRequest& worker = prepared.worker_request;
  const ModelTokenizer* tokenizer = tokenizers_ ? tokenizers_->Find(prepared.model) : nullptr;
  auto need_tokenizer = [&]() -> absl::Status {
    if (tokenizer) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "the router has no tokenizer for model \"", prepared.model,
        "\": start glm-router with --tokenizer ", prepared.model,
        "=<checkpoint dir>, or send token_ids"));
  };
  switch (request.input_case()) {
    case glm::v1::GenerateRequest::kPrompt: {
      if (request.prompt().empty()) {
        return absl::InvalidArgumentError("prompt is empty: send some text");
      }
      if (static_cast<int64_t>(request.prompt().size()) > options_.max_prompt_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("prompt has ", request.prompt().size(),
                                                       " bytes: the limit is ",
                                                       options_.max_prompt_bytes));
      }
      if (auto s = need_tokenizer(); !s.ok()) return s;
      for (int32_t id : tokenizer->tokenizer->Encode(request.prompt())) worker.add_prompt_token_ids(id);
      break;
    }
    case glm::v1::GenerateRequest::kChat: {
      const auto& messages = request.chat().messages();
      if (messages.empty()) {
        return absl::InvalidArgumentError("chat.messages is empty: send at least one message");
      }
      if (messages.size() > options_.max_chat_messages) {
        return absl::InvalidArgumentError(absl::StrCat("chat has ", messages.size(),
                                                       " messages: the limit is ",
                                                       options_.max_chat_messages));
      }
      if (auto s = need_tokenizer(); !s.ok()) return s;
      std::optional<Architecture> arch = tokenizer->architecture;
      if (!arch && description) arch = ArchitectureFromName(description->architecture());
      std::vector<ChatMessage> chat;
      int64_t bytes = 0;
      for (const auto& m : messages) {
        chat.push_back({m.role(), m.content()});
        bytes += static_cast<int64_t>(m.content().size());
      }
      if (bytes > options_.max_prompt_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("chat messages have ", bytes,
                                                       " bytes: the limit is ",
                                                       options_.max_prompt_bytes));
      }
      auto rendered = RenderChatPrompt(arch.value_or(Architecture::kGlm4), chat, true);
      if (!rendered.ok()) return rendered.status();
      for (int32_t id : tokenizer->tokenizer->Encode(*rendered)) worker.add_prompt_token_ids(id);
      break;
    }
    case glm::v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return absl::InvalidArgumentError("token_ids.ids is empty: send at least one id");
      const int32_t vocab = description ? description->vocab_size() : 0;
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || (vocab > 0 && ids[i] >= vocab)) {
          return absl::InvalidArgumentError(absl::StrCat("token_ids.ids[", i, "] = ", ids[i],
                                                         " is outside the vocabulary [0, ", vocab,
                                                         ")"));
        }
      }
      worker.mutable_prompt_token_ids()->CopyFrom(ids);
      break;
    }
    default:
      return absl::InvalidArgumentError("unknown input kind: use prompt, chat or token_ids");
  }
  if (worker.prompt_token_ids().empty()) {
    return absl::InvalidArgumentError("the input tokenizes to nothing: send some text");
  }
  if (options_.max_prompt_tokens > 0 && worker.prompt_token_ids_size() > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", worker.prompt_token_ids_size(), " tokens: the limit is ",
        options_.max_prompt_tokens, " (--max-prompt-tokens); shorten it"));
  }

  const int32_t prompt_tokens = worker.prompt_token_ids_size();
  const int32_t context = description ? description->max_context() : 0;
  int32_t max_tokens = request.max_tokens();
  if (max_tokens == 0) {
    max_tokens = options_.default_max_tokens;
    if (context > 0) max_tokens = std::min(max_tokens, context - prompt_tokens);
  }
  if (context > 0 && (max_tokens <= 0 || int64_t(prompt_tokens) + max_tokens > context)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", prompt_tokens, " tokens and max_tokens is ", request.max_tokens(),
        ": together they exceed the model's context of ", context,
        " tokens; shorten the prompt or lower max_tokens"));
  }
  worker.set_request_id(request.request_id().empty()
                            ? absl::StrCat("r", absl::ToUnixMicros(absl::Now()), "-",
                                           next_request_serial_.fetch_add(1))
                            : request.request_id());
  *worker.mutable_sampling() = request.sampling();
  worker.set_max_tokens(max_tokens);
  *worker.mutable_stop() = request.stop();
  worker.set_ignore_eos(request.ignore_eos());
  worker.set_priority(request.priority());
  worker.set_logprobs(request.logprobs());
  return prepared;
}

grpc::Status GenerationServiceImpl::Generate(grpc::ServerContext* context,
                                             const glm::v1::GenerateRequest* request,
                                             grpc::ServerWriter<glm::v1::GenerateResponse>* writer) {
  const absl::Time arrival = absl::Now();
  std::string pool = "none";
  int32_t prompt_tokens = 0;
  std::vector<int32_t> generated;  // every token sent to the client, in order
  std::optional<absl::Time> admitted_at;  // holds an admission slot since then
  auto finish = [&](const grpc::Status& status) {
    if (admitted_at && admission_) admission_->Released(absl::Now() - *admitted_at);
    if (metrics_) {
      metrics_->RequestFinished(pool, GrpcCodeName(status.error_code()), prompt_tokens,
                                static_cast<int32_t>(generated.size()),
                                Seconds(absl::Now() - arrival));
    }
    return status;
  };
  if (api_keys_) {
    if (grpc::Status auth = api_keys_->Check(*context); !auth.ok()) return finish(auth);
  }

  std::vector<WorkerSnapshot> workers = registry_->Snapshot();
  absl::StatusOr<PreparedRequest> prepared = Prepare(*request, workers);
  if (!prepared.ok()) return finish(ToGrpcStatus(prepared.status()));
  glm::v1::WorkerGenerateRequest& worker_request = prepared->worker_request;
  prompt_tokens = worker_request.prompt_token_ids_size();

  PlacementRequest placement;
  placement.model = prepared->model;
  placement.precision = request->precision();
  placement.affinity_key = placer_->AffinityKey(worker_request.prompt_token_ids().data(),
                                                worker_request.prompt_token_ids_size());
  absl::Time first_token_time = absl::InfinitePast();
  absl::Time last_token_time;
  grpc::Status last_failure;
  bool nonfinite_retried = false;   // the one retry on a safer pool after a non-finite failure

  for (int32_t attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    if (context->IsCancelled()) {
      return finish(grpc::Status(grpc::CANCELLED, "cancelled by the client"));
    }
    // The first placement goes through admission (may queue); retries and migrations were
    // admitted already and only need a worker. Either way the stream is reserved (StreamOpened).
    absl::StatusOr<WorkerSnapshot> worker;
    if (attempt == 1) {
      worker = AdmitFirst(context, request->priority(), placement);
      if (worker.ok()) admitted_at = absl::Now();
    } else {
      workers = registry_->Snapshot();
      worker = placer_->Pick(workers, placement);
      if (worker.ok()) registry_->StreamOpened(worker->worker_id);
    }
    if (!worker.ok()) {
      if (attempt > 1) {
        return finish(grpc::Status(last_failure.error_code(),
                                   absl::StrCat(last_failure.error_message(),
                                                "; no other worker could take over: ",
                                                worker.status().message())));
      }
      return finish(ToGrpcStatus(worker.status()));
    }
    pool = worker->pool.Name();
    worker_request.clear_resume_token_ids();
    for (int32_t id : generated) worker_request.add_resume_token_ids(id);

    std::unique_ptr<grpc::ClientContext> call = grpc::ClientContext::FromServerContext(*context);
    // Tracked so that ejecting the worker (no forward progress) cancels this call and the
    // request migrates.
    std::shared_ptr<ActiveCalls::Call> tracked = calls_ ? calls_->Add(worker->worker_id, call.get())
                                                        : nullptr;
    if (metrics_ && attempt == 1) metrics_->Queued(pool, Seconds(absl::Now() - arrival));
    std::unique_ptr<grpc::ClientReader<glm::v1::GenerateResponse>> reader =
        worker->stub->Generate(call.get(), worker_request);
    glm::v1::GenerateResponse response;
    bool got_final = false;
    bool client_gone = false;
    while (reader->Read(&response)) {
      if (health_) health_->NoteProgress(worker->worker_id);
      // Tokens the client already has (a resumed worker never resends them, but be exact).
      const int64_t already = static_cast<int64_t>(generated.size()) - response.index();
      if (already > 0 && response.token_ids_size() > 0) {
        auto* ids = response.mutable_token_ids();
        const int drop = static_cast<int>(std::min<int64_t>(already, ids->size()));
        ids->erase(ids->begin(), ids->begin() + drop);
        response.set_index(static_cast<int32_t>(generated.size()));
        if (drop > 0) response.clear_text();
      }
      if (response.token_ids_size() > 0) {
        const absl::Time now = absl::Now();
        if (metrics_) {
          if (first_token_time == absl::InfinitePast()) {
            metrics_->FirstToken(pool, Seconds(now - arrival));
          } else {
            metrics_->InterToken(pool, Seconds(now - last_token_time));
          }
          // Tokens that arrive together in one message follow each other with no gap: one
          // observation per token keeps the histogram's count = generated tokens - 1.
          for (int extra = 1; extra < response.token_ids_size(); ++extra) {
            metrics_->InterToken(pool, 0.0);
          }
        }
        if (first_token_time == absl::InfinitePast()) first_token_time = now;
        last_token_time = now;
        generated.insert(generated.end(), response.token_ids().begin(), response.token_ids().end());
      }
      if (response.has_final()) {
        got_final = true;
        glm::v1::FinalInfo* info = response.mutable_final();
        info->mutable_served_by()->set_attempts(attempt);
        info->set_request_id(worker_request.request_id());
        if (first_token_time != absl::InfinitePast()) {
          info->set_time_to_first_token_ms(absl::ToDoubleMilliseconds(first_token_time - arrival));
        }
        info->set_total_time_ms(absl::ToDoubleMilliseconds(absl::Now() - arrival));
      }
      if (response.token_ids_size() == 0 && response.text().empty() && !got_final) continue;
      if (!writer->Write(response)) {
        call->TryCancel();
        client_gone = true;
        break;
      }
      if (got_final) break;
    }
    grpc::Status status = reader->Finish();
    if (calls_) calls_->Remove(tracked);
    if (tracked && tracked->aborted.load() && !got_final && !client_gone && !context->IsCancelled()) {
      status = grpc::Status(grpc::UNAVAILABLE, tracked->reason);  // ejected: migrate
    }
    registry_->StreamClosed(worker->worker_id);
    if (got_final) return finish(grpc::Status::OK);
    if (client_gone || context->IsCancelled()) {
      grpc::StatusCode code = status.error_code() == grpc::DEADLINE_EXCEEDED
                                  ? grpc::DEADLINE_EXCEEDED
                                  : grpc::CANCELLED;
      return finish(grpc::Status(code, code == grpc::CANCELLED ? "cancelled by the client"
                                                               : "deadline exceeded"));
    }
    if (status.ok()) {
      status = grpc::Status(grpc::UNKNOWN, absl::StrCat("worker ", worker->worker_id,
                                                        " ended the stream without a final message"));
    }
    if (IsNonFinite(status, *call)) {
      if (metrics_) metrics_->NonFinite(pool);
      std::optional<grpc::Status> end = PlanNonFiniteRetry(registry_->Snapshot(), *worker, status,
                                                           nonfinite_retried, &placement);
      if (end) return finish(*end);
      nonfinite_retried = true;
      last_failure = grpc::Status(grpc::FAILED_PRECONDITION,
                                  absl::StrCat("worker ", worker->worker_id, ": ",
                                               status.error_message()));
      if (metrics_ && attempt < options_.max_attempts) metrics_->Retry(pool, "nonfinite");
      continue;
    }
    if (!Retryable(status.error_code())) return finish(status);
    GLM_LOG(WARNING) << "request " << worker_request.request_id() << ": worker "
                     << worker->worker_id << " failed after " << generated.size()
                     << " tokens (" << GrpcCodeName(status.error_code()) << ": "
                     << status.error_message() << ")";
    last_failure = grpc::Status(status.error_code(), absl::StrCat("worker ", worker->worker_id,
                                                                  ": ", status.error_message()));
    placement.exclude_workers.insert(worker->worker_id);
    if (metrics_ && attempt < options_.max_attempts) {
      metrics_->Retry(pool, generated.empty() ? "retry" : "migration");
    }
  }
  return finish(last_failure);
}

grpc::Status GenerationServiceImpl::ListModels(grpc::ServerContext* context,
                                               const glm::v1::ListModelsRequest*,
                                               glm::v1::ListModelsResponse* response) {
  if (api_keys_) {
    if (grpc::Status auth = api_keys_->Check(*context); !auth.ok()) return auth;
  }
  std::map<std::string, std::map<std::string, glm::v1::PoolInfo>> models;
  std::map<std::string, std::string> architectures;
  for (const WorkerSnapshot& w : registry_->Snapshot()) {
    glm::v1::PoolInfo& pool = models[w.pool.model][w.pool.Name()];
    pool.set_name(w.pool.Name());
    pool.set_precision(w.pool.precision);
    pool.set_workers_total(pool.workers_total() + 1);
    if (w.health == WorkerHealth::kLive) pool.set_workers_live(pool.workers_live() + 1);
    pool.set_max_context(std::max(pool.max_context(), w.info.model().max_context()));
    architectures[w.pool.model] = w.info.model().architecture();
  }
  for (auto& [name, pools] : models) {
    glm::v1::ModelInfo* model = response->add_models();
    model->set_name(name);
    model->set_architecture(architectures[name]);
    for (auto& [pool_name, pool] : pools) *model->add_pools() = pool;
  }
  return grpc::Status::OK;
}

}  // namespace glm
