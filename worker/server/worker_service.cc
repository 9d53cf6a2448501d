#include "worker/server/worker_service.h"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/core/logging.h"
#include "services/grpc/status.h"

namespace glm {
namespace {

// Engine thread -> handler thread. The engine's callback only appends and notifies, so a slow
// client never stalls a step; memory is bounded by the request's max_tokens.
class CallEvents {
 public:
  void Push(const TokenEvent& event) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(event);
    }
    cv_.notify_one();
  }
  // Moves every queued event into `out`, waiting up to `timeout` for the first one.
  void TakeAll(std::vector<TokenEvent>* out, std::chrono::milliseconds timeout) {
    out->clear();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
    while (!events_.empty()) {
      out->push_back(std::move(events_.front()));
      events_.pop_front();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
};

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

WorkerServiceImpl::WorkerServiceImpl(Engine* engine, WorkerMetrics* metrics,
                                     WorkerServiceOptions options)
    : engine_(engine), metrics_(metrics), options_(std::move(options)) {}

absl::StatusOr<GenerationRequest> WorkerServiceImpl::BuildRequest(
    const glm::v1::WorkerGenerateRequest& request) {
  GenerationRequest out;
  if (request.prompt_token_ids().empty()) {
    return absl::InvalidArgumentError("prompt_token_ids is empty: send at least one token");
  }
  const int32_t vocab = options_.model.vocab_size();
  auto check_ids = [&](const google::protobuf::RepeatedField<int32_t>& ids,
                       const char* field) -> absl::Status {
    for (int i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || (vocab > 0 && ids[i] >= vocab)) {
        return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", ids[i],
                                                       " is outside the vocabulary [0, ", vocab,
                                                       ")"));
      }
    }
    return absl::OkStatus();
  };
  if (auto s = check_ids(request.prompt_token_ids(), "prompt_token_ids"); !s.ok()) return s;
  if (auto s = check_ids(request.resume_token_ids(), "resume_token_ids"); !s.ok()) return s;
  if (auto s = ValidateMaxTokens(request.max_tokens(), options_.limits); !s.ok()) return s;
  if (auto s = ValidateStops(request.stop(), options_.limits); !s.ok()) return s;
  if (auto s = ValidateLogprobs(request.logprobs()); !s.ok()) return s;
  auto sampling = SamplingFromProto(request.sampling());
  if (!sampling.ok()) return sampling.status();

  const int32_t context = options_.model.max_context();
  const int32_t used = request.prompt_token_ids_size();
  int32_t max_tokens = request.max_tokens();
  if (max_tokens == 0) {
    max_tokens = options_.default_max_tokens;
    if (context > 0) max_tokens = std::min(max_tokens, context - used);
    if (max_tokens <= request.resume_token_ids_size()) {
      return absl::InvalidArgumentError(absl::StrCat("the prompt has ", used,
                                                     " tokens and leaves no room in the model's "
                                                     "context of ",
                                                     context, ": shorten the prompt"));
    }
  } else if (context > 0 && int64_t(used) + max_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt has ", used, " tokens and max_tokens is ", max_tokens,
        ": together they exceed the model's context of ", context,
        "; shorten the prompt or lower max_tokens"));
  }
  if (request.resume_token_ids_size() >= max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("resume_token_ids has ",
                                                   request.resume_token_ids_size(),
                                                   " tokens, max_tokens is ", max_tokens,
                                                   ": nothing is left to generate"));
  }

  // Engine ids must be unique among live requests; the caller's id is not trusted to be.
  out.request_id = absl::StrCat(request.request_id().empty() ? "req" : request.request_id(), "#",
                                next_request_serial_.fetch_add(1));
  out.prompt_token_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  out.resume_token_ids.assign(request.resume_token_ids().begin(), request.resume_token_ids().end());
  out.sampling = *sampling;
  out.max_new_tokens = max_tokens;
  out.stop_strings.assign(request.stop().begin(), request.stop().end());
  out.ignore_eos = request.ignore_eos();
  out.priority = request.priority() == glm::v1::PRIORITY_BATCH ? 0 : 1;
  out.logprobs = request.logprobs();
  return out;
}

grpc::Status WorkerServiceImpl::Generate(grpc::ServerContext* context,
                                         const glm::v1::WorkerGenerateRequest* request,
                                         grpc::ServerWriter<glm::v1::GenerateResponse>* writer) {
  const absl::Time arrival = absl::Now();
  open_streams_.fetch_add(1);
  struct OpenStreamGuard {
    std::atomic<int32_t>* count;
    ~OpenStreamGuard() { count->fetch_sub(1); }
  } guard{&open_streams_};

  int32_t prompt_tokens = request->prompt_token_ids_size();
  int32_t generated_tokens = 0;
  auto finish = [&](const grpc::Status& status) {
    if (metrics_) {
      metrics_->RequestFinished(GrpcCodeName(status.error_code()), prompt_tokens,
                                generated_tokens, Seconds(absl::Now() - arrival));
    }
    return status;
  };
  if (draining_) {
    return finish(grpc::Status(grpc::UNAVAILABLE, absl::StrCat("worker ", options_.worker_id,
                                                               " is draining: send the request "
                                                               "to another worker")));
  }
  absl::StatusOr<GenerationRequest> built = BuildRequest(*request);
  if (!built.ok()) return finish(ToGrpcStatus(built.status()));
  const std::string engine_id = built->request_id;
  const int32_t resumed = static_cast<int32_t>(built->resume_token_ids.size());

  auto events = std::make_shared<CallEvents>();
  absl::Status submitted =
      engine_->Submit(std::move(*built), [events](const TokenEvent& e) { events->Push(e); });
  if (!submitted.ok()) return finish(ToGrpcStatus(submitted));

  bool cancel_sent = false;
  absl::Time cancel_time;
  absl::Time first_token_time = absl::InfinitePast();
  absl::Time last_token_time;
  std::vector<TokenEvent> batch;
  while (true) {
    events->TakeAll(&batch, std::chrono::milliseconds(20));
    if (!cancel_sent && context->IsCancelled()) {
      engine_->Cancel(engine_id);
      cancel_sent = true;
      cancel_time = absl::Now();
    }
    if (cancel_sent && batch.empty() && absl::Now() - cancel_time > absl::Seconds(10)) {
      // The engine never confirmed the cancel (stopped?). Give the thread back anyway.
      GLM_LOG(WARNING) << "request " << engine_id << ": no cancel confirmation after 10 s";
      return finish(grpc::Status(grpc::CANCELLED, "cancelled by the client"));
    }
    if (aborting_.load() && !cancel_sent && batch.empty()) {
      engine_->Cancel(engine_id);
      return finish(grpc::Status(grpc::UNAVAILABLE,
                                 absl::StrCat("worker ", options_.worker_id,
                                              " shut down after its drain grace period: "
                                              "resume the request on another worker")));
    }
    if (batch.empty()) continue;

    glm::v1::GenerateResponse response;
    const TokenEvent* final_event = nullptr;
    const absl::Time now = absl::Now();
    for (const TokenEvent& event : batch) {
      if (event.token_id >= 0) {
        if (response.token_ids_size() == 0) response.set_index(event.index);
        response.add_token_ids(event.token_id);
        if (request->logprobs() > 0) {
          glm::v1::TokenLogprob* lp = response.add_logprobs();
          lp->set_token_id(event.token_id);
          lp->set_logprob(event.logprob);
          for (const TokenLogprob& t : event.top_logprobs) {
            glm::v1::TopLogprob* top = lp->add_top();
            top->set_token_id(t.token_id);
            top->set_logprob(t.logprob);
          }
        }
        ++generated_tokens;
        if (metrics_) {
          if (first_token_time == absl::InfinitePast()) {
            first_token_time = now;
            metrics_->FirstToken(Seconds(now - arrival));
          } else {
            metrics_->InterToken(Seconds(now - last_token_time));
          }
        }
        if (first_token_time == absl::InfinitePast()) first_token_time = now;
        last_token_time = now;
      }
      response.mutable_text()->append(event.text_delta);
      if (event.finished) {
        final_event = &event;
        break;
      }
    }
    if (final_event != nullptr && final_event->finish_reason == FinishReason::kError) {
      // Tokens before the failure still go out (a migration resumes after them); then the error.
      if (response.token_ids_size() > 0 && !cancel_sent) writer->Write(response);
      absl::Status error = final_event->error.ok()
                               ? absl::InternalError("engine failed the request without a reason")
                               : final_event->error;
      if (absl::IsDataLoss(error)) {
        // The non-finite guard fired: the failing step emitted no token. Mark it so the router
        // retries on a safer pool instead of treating it as the request's own outcome.
        context->AddTrailingMetadata(kNonFiniteMetadataKey, "1");
        if (!absl::StrContains(error.message(), options_.worker_id)) {
          error = absl::DataLossError(absl::StrCat(error.message(), " [worker ",
                                                   options_.worker_id, ", pool ", options_.pool,
                                                   "]"));
        }
      }
      return finish(ToGrpcStatus(error));
    }
    if (final_event != nullptr) {
      if (cancel_sent || final_event->finish_reason == FinishReason::kCancelled) {
        return finish(grpc::Status(grpc::CANCELLED, cancel_sent ? "cancelled by the client"
                                                                : "cancelled by the worker"));
      }
      glm::v1::FinalInfo* info = response.mutable_final();
      info->set_finish_reason(FinishReasonToProto(final_event->finish_reason));
      info->mutable_usage()->set_prompt_tokens(final_event->prompt_tokens > 0
                                                   ? final_event->prompt_tokens
                                                   : prompt_tokens);
      info->mutable_usage()->set_generated_tokens(final_event->generated_tokens > 0
                                                      ? final_event->generated_tokens
                                                      : generated_tokens + resumed);
      info->mutable_usage()->set_cached_prompt_tokens(final_event->cached_prompt_tokens);
      glm::v1::ServedBy* served = info->mutable_served_by();
      served->set_worker_id(options_.worker_id);
      served->set_pool(options_.pool);
      served->set_precision(options_.capability.precision());
      served->set_attempts(1);
      info->set_request_id(request->request_id());
      if (first_token_time != absl::InfinitePast()) {
        info->set_time_to_first_token_ms(absl::ToDoubleMilliseconds(first_token_time - arrival));
      }
      info->set_total_time_ms(absl::ToDoubleMilliseconds(absl::Now() - arrival));
      if (!writer->Write(response)) {
        return finish(grpc::Status(grpc::CANCELLED, "client went away before the last message"));
      }
      return finish(grpc::Status::OK);
    }
    if (!cancel_sent && !writer->Write(response)) {
      engine_->Cancel(engine_id);
      cancel_sent = true;
      cancel_time = absl::Now();
    }
    if (aborting_.load() && !cancel_sent) {
      engine_->Cancel(engine_id);  // the tokens above went out; the router resumes after them
      return finish(grpc::Status(grpc::UNAVAILABLE,
                                 absl::StrCat("worker ", options_.worker_id,
                                              " shut down after its drain grace period: "
                                              "resume the request on another worker")));
    }
  }
}

glm::v1::Load WorkerServiceImpl::CurrentLoad() const { return LoadFromStats(engine_->Stats()); }

glm::v1::WorkerInfo WorkerServiceImpl::Info() const {
  glm::v1::WorkerInfo info;
  info.set_worker_id(options_.worker_id);
  info.set_address(options_.address);
  *info.mutable_model() = options_.model;
  *info.mutable_capability() = options_.capability;
  *info.mutable_load() = CurrentLoad();
  info.set_version(options_.version);
  info.set_state(draining_ ? "draining" : "serving");
  return info;
}

grpc::Status WorkerServiceImpl::GetInfo(grpc::ServerContext*, const glm::v1::GetInfoRequest*,
                                        glm::v1::WorkerInfo* response) {
  *response = Info();
  return grpc::Status::OK;
}

}  // namespace glm
