#include "worker/engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <span>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "services/core/logging.h"
#include "services/core/status_macros.h"
#include "worker/engine/kv_cache_manager.h"
#include "worker/backend/sampling/sampler.h"
#include "worker/engine/scheduler.h"
#include "worker/engine/sequence.h"

namespace glm {
namespace {

// The usage counts every event of a request carries.
void SetUsage(const Sequence& seq, TokenEvent* event) {
  event->prompt_tokens = seq.num_prompt_tokens;
  event->generated_tokens = seq.num_generated();
  event->cached_prompt_tokens = seq.num_cached_prompt_tokens;
}

struct PendingEvent {
  std::shared_ptr<const TokenCallback> callback;
  TokenEvent event;
};

bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Validates what a caller controls in a request; the engine's limits come in as arguments.
absl::Status ValidateRequest(const GenerationRequest& request, const TokenCallback& callback,
                             int64_t vocab_size, int32_t max_model_len, int64_t kv_capacity_tokens,
                             bool have_tokenizer) {
  if (request.request_id.empty()) {
    return absl::InvalidArgumentError("request_id is empty: give every request a unique id");
  }
  if (!callback) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request %s has no callback: pass a TokenCallback to receive tokens",
                        request.request_id));
  }
  if (request.prompt_token_ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request %s has an empty prompt: send at least one token", request.request_id));
  }
  if (request.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: max_new_tokens is %d, it must be at least 1", request.request_id,
        request.max_new_tokens));
  }
  if (request.logprobs < 0 || request.logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: logprobs is %d: use 0 (none) to %d (the most likely tokens a position)",
        request.request_id, request.logprobs, kMaxLogprobs));
  }
  const int64_t num_resume = static_cast<int64_t>(request.resume_token_ids.size());
  if (num_resume >= request.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: %d resume_token_ids already reach max_new_tokens %d: nothing is left to "
        "generate (max_new_tokens counts the resumed tokens)",
        request.request_id, num_resume, request.max_new_tokens));
  }
  const int64_t num_prompt = static_cast<int64_t>(request.prompt_token_ids.size());
  const int64_t needed = num_prompt + request.max_new_tokens;
  if (needed > max_model_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: prompt of %d tokens + max_new_tokens %d = %d tokens exceeds max_model_len "
        "%d: shorten the prompt or lower max_new_tokens to at most %d",
        request.request_id, num_prompt, request.max_new_tokens, needed, max_model_len,
        std::max<int64_t>(0, max_model_len - num_prompt)));
  }
  if (needed > kv_capacity_tokens) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "request %s: prompt of %d tokens + max_new_tokens %d = %d tokens can never fit this "
        "worker's KV cache, which holds %d tokens in all: lower max_new_tokens, shorten the "
        "prompt, or send it to a worker with a larger KV cache",
        request.request_id, num_prompt, request.max_new_tokens, needed, kv_capacity_tokens));
  }
  const SamplingParams& s = request.sampling;
  if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: temperature %g must be a finite number >= 0 (0 means greedy)",
        request.request_id, s.temperature));
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: top_p %g must be in (0, 1] (1 disables it)", request.request_id, s.top_p));
  }
  if (s.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: top_k %d must be >= 0 (0 disables it)", request.request_id, s.top_k));
  }
  if (!(s.repetition_penalty > 0.0f) || !std::isfinite(s.repetition_penalty)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s: repetition_penalty %g must be a finite number > 0 (1 disables it)",
        request.request_id, s.repetition_penalty));
  }
  auto check_ids = [&](const std::vector<int32_t>& ids, const char* what) -> absl::Status {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "request %s: %s[%d] = %d is outside the model's vocabulary [0, %d)", request.request_id,
            what, i, ids[i], vocab_size));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_ids(request.prompt_token_ids, "prompt_token_ids"));
  RETURN_IF_ERROR(check_ids(request.resume_token_ids, "resume_token_ids"));
  for (const std::string& stop : request.stop_strings) {
    if (stop.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("request %s: a stop string is empty: remove it", request.request_id));
    }
  }
  if (!request.stop_strings.empty() && !have_tokenizer) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request %s has stop strings but this engine has no tokenizer to decode text: use "
        "token-id stops (eos) or start the worker with a tokenizer",
        request.request_id));
  }
  return absl::OkStatus();
}

}  // namespace

class Engine::Impl {
 public:
  Impl(Engine* engine, const Tokenizer* tokenizer)
      : options_(engine->options_),
        backend_(engine->backend_.get()),
        tokenizer_(tokenizer),
        vocab_size_(static_cast<int32_t>(backend_->config().vocab_size)),
        eos_ids_(backend_->config().eos_token_ids),
        kv_cache_(options_.num_kv_blocks, options_.block_size, options_.enable_prefix_caching),
        scheduler_({options_.max_num_seqs, options_.max_num_batched_tokens, options_.scheduling,
                    options_.max_prefill_only_steps},
                   &kv_cache_) {
    PublishStatsLocked();
  }

  absl::Status Submit(GenerationRequest request, TokenCallback callback);
  void Cancel(const std::string& request_id);
  absl::StatusOr<bool> Step();
  absl::Status RunUntilIdle();
  void Start();
  void Stop();
  EngineStats Stats() const;

 private:
  bool HasWorkLocked() const {
    return !incoming_.empty() || !cancels_.empty() || scheduler_has_work_;
  }
  void PublishStatsLocked();
  void Loop();

  // Step-thread work (step_mutex_ held).
  absl::Status RunForward(const SchedulerOutput& output);
  // Fails a request whose logits were not finite (the guard), emitting none of its tokens.
  void FailNonFinite(Sequence* seq, int32_t generated_index);
  // logprobs: the token's (RowLogprobs) when the request asked for them, else null.
  void AcceptToken(Sequence* seq, int32_t token_id, const RowLogprobs* logprobs = nullptr);
  // Adds text to the held-back text and returns what may be emitted now: everything up to the
  // first stop string (then *stop_hit), all of it when final, otherwise all but the last
  // max_stop_bytes - 1 bytes (cut at a character boundary), which might start a stop string.
  std::string ReleaseText(Sequence* seq, const std::string& piece, bool final, bool* stop_hit);
  void Finish(Sequence* seq, FinishReason reason, absl::Status error);
  void DeliverEvents();

  const EngineOptions& options_;
  Backend* backend_;
  const Tokenizer* tokenizer_;
  const int32_t vocab_size_;
  const std::vector<int32_t> eos_ids_;

  // Guards what Submit/Cancel/Stats share with the stepping thread.
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;   // new work or stop
  std::condition_variable idle_cv_;   // a step finished
  std::vector<std::unique_ptr<Sequence>> incoming_;
  std::vector<std::string> cancels_;
  absl::flat_hash_set<std::string> live_ids_;
  EngineStats stats_;                 // published after every step
  bool scheduler_has_work_ = false;   // published after every step
  bool stop_requested_ = false;
  int64_t next_seq_id_ = 0;
  std::thread thread_;

  // Serializes steps; everything below is touched only with it held.
  std::mutex step_mutex_;
  KvCacheManager kv_cache_;
  Scheduler scheduler_;
  Sampler sampler_;
  absl::flat_hash_map<std::string, std::unique_ptr<Sequence>> sequences_;
  std::vector<Sequence*> finished_;
  std::vector<PendingEvent> events_;
  StepBatch batch_;
  std::vector<float> logits_;  // [num_logit_rows, vocab]
  std::vector<float> logprob_row_;  // [vocab] a row before sampling processes it (logprobs)
  RowLogprobs host_logprobs_;       // a row's logprobs on the logits-observer path
  std::vector<RowLogprobs> sampled_logprobs_;  // [num_logit_rows] from Backend::ForwardSample
  std::vector<RowSampling> row_sampling_;  // [num_logit_rows] for Backend::ForwardSample
  std::vector<int32_t> sampled_tokens_;    // [num_logit_rows] from Backend::ForwardSample
  std::vector<uint8_t> sampled_finite_;    // [num_logit_rows] 1 when the row's logits were finite
  int64_t steps_ = 0;
  int64_t prompt_tokens_ = 0;
  int64_t generated_tokens_ = 0;
  int64_t nonfinite_ = 0;
  int32_t last_batch_size_ = 0;
};

absl::Status Engine::Impl::Submit(GenerationRequest request, TokenCallback callback) {
  RETURN_IF_ERROR(ValidateRequest(request, callback, vocab_size_, options_.max_model_len,
                                  kv_cache_.capacity_tokens(), tokenizer_ != nullptr));
  auto seq = std::make_unique<Sequence>();
  seq->callback = std::make_shared<const TokenCallback>(std::move(callback));
  seq->num_prompt_tokens = static_cast<int32_t>(request.prompt_token_ids.size());
  seq->token_ids.reserve(request.prompt_token_ids.size() + request.max_new_tokens);
  seq->token_ids = request.prompt_token_ids;
  seq->token_ids.insert(seq->token_ids.end(), request.resume_token_ids.begin(),
                        request.resume_token_ids.end());
  for (const std::string& stop : request.stop_strings) {
    seq->max_stop_bytes = std::max(seq->max_stop_bytes, stop.size());
  }
  seq->arrival_time = Sequence::Clock::now();
  seq->request = std::move(request);
  if (tokenizer_ != nullptr) {
    seq->detokenizer =
        std::make_unique<IncrementalDetokenizer>(tokenizer_, seq->request.skip_special_tokens);
    // Replay the resumed tokens' text the way the earlier attempt produced it, so held-back
    // bytes (a split character, a possible stop-string start) continue exactly; nothing of it
    // is emitted again.
    for (int32_t token : seq->request.resume_token_ids) {
      bool stop_hit = false;
      ReleaseText(seq.get(), seq->detokenizer->Push(token), /*final=*/false, &stop_hit);
    }
  }

  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (live_ids_.contains(seq->id())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "request id %s is already live on worker %s: use a unique id per request", seq->id(),
          options_.worker_name));
    }
    const int64_t waiting = static_cast<int64_t>(incoming_.size()) + stats_.waiting;
    if (waiting >= options_.max_waiting) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "worker %s has %d requests waiting (max_waiting %d): retry later or on another worker",
          options_.worker_name, waiting, options_.max_waiting));
    }
    seq->seq_id = next_seq_id_;
    seq->arrival_order = next_seq_id_;
    next_seq_id_++;
    live_ids_.insert(seq->id());
    incoming_.push_back(std::move(seq));
  }
  work_cv_.notify_one();
  return absl::OkStatus();
}

void Engine::Impl::Cancel(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!live_ids_.contains(request_id)) return;
    cancels_.push_back(request_id);
  }
  work_cv_.notify_one();
}

std::string Engine::Impl::ReleaseText(Sequence* seq, const std::string& piece, bool final,
                                      bool* stop_hit) {
  std::string& held = seq->held_text;
  held += piece;
  std::string released;
  const std::vector<std::string>& stops = seq->request.stop_strings;
  if (!stops.empty()) {
    // Text before `held` was checked when it arrived, and at least max_stop_bytes - 1 bytes
    // were held back, so a stop string ending in the new text starts inside `held`.
    size_t first = std::string::npos;
    for (const std::string& stop : stops) first = std::min(first, held.find(stop));
    if (first != std::string::npos) {
      *stop_hit = true;
      released = held.substr(0, first);
      held.clear();
      return released;
    }
  }
  if (final || stops.empty()) {
    released.swap(held);
    return released;
  }
  const size_t keep = seq->max_stop_bytes - 1;
  if (held.size() <= keep) return released;
  size_t cut = held.size() - keep;
  while (cut > 0 && IsUtf8Continuation(held[cut])) --cut;
  released = held.substr(0, cut);
  held.erase(0, cut);
  return released;
}

void Engine::Impl::Finish(Sequence* seq, FinishReason reason, absl::Status error) {
  seq->finish_reason = reason;
  // Frees its KV blocks now; after an error (a failed forward, non-finite logits) its blocks
  // also leave the prefix cache: no later request may build on those K/V.
  scheduler_.Remove(seq, /*keep_cached=*/reason != FinishReason::kError);
  finished_.push_back(seq);
  if (reason == FinishReason::kCancelled || reason == FinishReason::kError) {
    TokenEvent event;
    event.request_id = seq->id();
    event.finished = true;
    event.finish_reason = reason;
    event.error = std::move(error);
    SetUsage(*seq, &event);
    events_.push_back({seq->callback, std::move(event)});
  }
}

void Engine::Impl::AcceptToken(Sequence* seq, int32_t token_id, const RowLogprobs* logprobs) {
  const auto now = Sequence::Clock::now();
  if (seq->first_token_time == Sequence::Clock::time_point{}) seq->first_token_time = now;
  seq->last_token_time = now;
  seq->token_ids.push_back(token_id);
  generated_tokens_++;

  const GenerationRequest& request = seq->request;
  const bool is_eos = !request.ignore_eos &&
                      std::find(eos_ids_.begin(), eos_ids_.end(), token_id) != eos_ids_.end();
  const bool at_length = seq->num_generated() >= request.max_new_tokens ||
                         seq->num_tokens() >= options_.max_model_len;
  const bool final = is_eos || at_length;

  TokenEvent event;
  event.request_id = seq->id();
  event.token_id = token_id;
  event.index = seq->num_generated() - 1;
  SetUsage(*seq, &event);
  if (logprobs != nullptr && request.logprobs > 0) {
    event.logprob = logprobs->token_logprob;
    event.top_logprobs = logprobs->top;
  }

  bool stop_hit = false;
  if (seq->detokenizer) {
    // The eos token ends the text; its own text (a special token) is never part of it.
    std::string piece = is_eos ? std::string() : seq->detokenizer->Push(token_id);
    if (final) piece += seq->detokenizer->Flush();
    event.text_delta = ReleaseText(seq, piece, final, &stop_hit);
  }
  FinishReason reason = stop_hit   ? FinishReason::kStopString
                        : is_eos    ? FinishReason::kEos
                        : at_length ? FinishReason::kLength
                                    : FinishReason::kNone;
  if (reason != FinishReason::kNone) {
    event.finished = true;
    event.finish_reason = reason;
  }
  events_.push_back({seq->callback, std::move(event)});
  if (reason != FinishReason::kNone) Finish(seq, reason, absl::OkStatus());
}

absl::Status Engine::Impl::RunForward(const SchedulerOutput& output) {
  batch_.token_ids.clear();
  batch_.positions.clear();
  batch_.seqs.clear();
  for (const ScheduledSequence& scheduled : output.scheduled) {
    const Sequence& seq = *scheduled.seq;
    const int32_t start = seq.num_computed_tokens;
    const int32_t end = start + scheduled.num_new_tokens;
    SequenceStep step;
    step.seq_id = seq.seq_id;
    step.token_offset = batch_.num_tokens();
    step.num_tokens = scheduled.num_new_tokens;
    step.context_len = end;
    step.block_table = seq.block_table;
    step.wants_logits = end == seq.num_tokens();
    for (int32_t position = start; position < end; ++position) {
      batch_.token_ids.push_back(seq.token_ids[static_cast<size_t>(position)]);
      batch_.positions.push_back(position);
    }
    if (!seq.is_decode()) prompt_tokens_ += scheduled.num_new_tokens;
    batch_.seqs.push_back(std::move(step));
  }

  // Unless someone watches logits, the backend picks the tokens and computes the logprobs itself
  // (on a GPU: sampling, logprobs and the non-finite check on the device, no [rows, vocab] copy
  // to the host).
  const bool backend_samples = !options_.logits_observer;
  absl::Status status;
  size_t expected = static_cast<size_t>(batch_.num_logit_rows()) * vocab_size_;
  if (backend_samples) {
    row_sampling_.clear();
    for (size_t i = 0; i < output.scheduled.size(); ++i) {
      if (!batch_.seqs[i].wants_logits) continue;
      const Sequence* seq = output.scheduled[i].seq;
      row_sampling_.push_back(
          {&seq->request.sampling, seq->num_generated(), &seq->token_ids, seq->request.logprobs});
    }
    status = backend_->ForwardSample(batch_, row_sampling_, &sampled_tokens_, &sampled_finite_,
                                     &sampled_logprobs_);
    expected = static_cast<size_t>(batch_.num_logit_rows());
    if (status.ok() && (sampled_finite_.size() != expected || sampled_logprobs_.size() != expected)) {
      sampled_tokens_.clear();
    }
  } else {
    status = backend_->Forward(batch_, &logits_);
  }
  const size_t produced = backend_samples ? sampled_tokens_.size() : logits_.size();
  if (status.ok() && produced != expected) {
    status = absl::InternalError(absl::StrFormat(
        "backend %s returned %d values for %d rows of vocabulary %d", backend_->Name(),
        produced, batch_.num_logit_rows(), vocab_size_));
  }
  if (!status.ok()) {
    absl::Status failure(status.code(),
                         absl::StrFormat("forward pass failed on worker %s at step %d: %s",
                                         options_.worker_name, steps_ + 1, status.message()));
    for (const ScheduledSequence& scheduled : output.scheduled) {
      Finish(scheduled.seq, FinishReason::kError, failure);
    }
    return failure;
  }

  steps_++;
  last_batch_size_ = static_cast<int32_t>(output.scheduled.size());
  scheduler_.OnStepDone(output);
  StepInfo step_info;   // for options_.step_observer, called at the end of this step
  step_info.step = steps_;
  step_info.batch_size = last_batch_size_;
  step_info.num_batched_tokens = batch_.num_tokens();
  const auto scheduled_at = Sequence::Clock::now();
  for (const ScheduledSequence& scheduled : output.scheduled) {
    Sequence* seq = scheduled.seq;
    if (seq->first_scheduled_time != Sequence::Clock::time_point{}) continue;
    seq->first_scheduled_time = scheduled_at;
    step_info.queue_seconds.push_back(
        std::chrono::duration<double>(scheduled_at - seq->arrival_time).count());
  }

  size_t row = 0;
  for (size_t i = 0; i < output.scheduled.size(); ++i) {
    if (!batch_.seqs[i].wants_logits) continue;
    Sequence* seq = output.scheduled[i].seq;
    const int32_t generated_index = seq->num_generated();
    if (backend_samples) {
      const bool finite = sampled_finite_[row] != 0;
      const int32_t token = sampled_tokens_[row];
      const RowLogprobs& lp = sampled_logprobs_[row];
      row++;
      if (!finite) {
        FailNonFinite(seq, generated_index);
        continue;
      }
      AcceptToken(seq, token, &lp);
      continue;
    }
    std::span<float> logits(logits_.data() + row * vocab_size_, static_cast<size_t>(vocab_size_));
    row++;
    if (options_.logits_observer) {
      options_.logits_observer(seq->request.request_id, generated_index, logits.data(), vocab_size_);
    }
    // The sampler processes the row in place (penalty, temperature): logprobs come from a copy
    // of the model's own row.
    const RowSampling sampling{&seq->request.sampling, generated_index, &seq->token_ids,
                               seq->request.logprobs};
    SampleOutcome outcome = SampleHostRow(sampler_, logits, sampling, &logprob_row_, &host_logprobs_);
    if (outcome.nonfinite) {
      FailNonFinite(seq, generated_index);
      continue;
    }
    AcceptToken(seq, outcome.token_id, sampling.logprobs > 0 ? &host_logprobs_ : nullptr);
  }
  if (options_.step_observer) options_.step_observer(step_info);
  return absl::OkStatus();
}

void Engine::Impl::FailNonFinite(Sequence* seq, int32_t generated_index) {
  nonfinite_++;
  Finish(seq, FinishReason::kError,
         absl::DataLossError(absl::StrFormat(
             "non-finite logits (NaN/Inf) at generated token %d (step %d) on worker %s in "
             "precision %s: the model overflowed this precision; retry on an "
             "fp32/bf16/fp16-safe pool",
             generated_index, steps_, options_.worker_name, options_.precision_name)));
}

void Engine::Impl::PublishStatsLocked() {
  stats_.running = scheduler_.num_running();
  stats_.waiting = scheduler_.num_waiting();
  stats_.kv_blocks_total = kv_cache_.num_blocks_total();
  stats_.kv_blocks_free = kv_cache_.num_blocks_free();
  stats_.steps = steps_;
  stats_.prompt_tokens = prompt_tokens_;
  stats_.generated_tokens = generated_tokens_;
  stats_.preemptions = scheduler_.total_preemptions();
  stats_.nonfinite = nonfinite_;
  stats_.kv_blocks_cached = kv_cache_.num_blocks_cached();
  stats_.prefix_queried_tokens = scheduler_.prefix_queried_tokens();
  stats_.prefix_hit_tokens = scheduler_.prefix_hit_tokens();
  stats_.last_batch_size = last_batch_size_;
  scheduler_has_work_ = scheduler_.has_work();
}

void Engine::Impl::DeliverEvents() {
  for (PendingEvent& pending : events_) (*pending.callback)(pending.event);
  events_.clear();
}

absl::StatusOr<bool> Engine::Impl::Step() {
  std::lock_guard<std::mutex> step_lock(step_mutex_);
  std::vector<std::unique_ptr<Sequence>> incoming;
  std::vector<std::string> cancels;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    incoming.swap(incoming_);
    cancels.swap(cancels_);
  }
  bool did_work = false;
  for (std::unique_ptr<Sequence>& seq : incoming) {
    Sequence* raw = seq.get();
    sequences_[raw->id()] = std::move(seq);
    scheduler_.AddWaiting(raw);
  }
  for (const std::string& id : cancels) {
    auto it = sequences_.find(id);
    if (it == sequences_.end() || it->second->status == SequenceStatus::kFinished) continue;
    Finish(it->second.get(), FinishReason::kCancelled, absl::OkStatus());
    did_work = true;
  }

  absl::Status status = absl::OkStatus();
  SchedulerOutput output = scheduler_.Schedule();
  if (!output.empty()) {
    did_work = true;
    status = RunForward(output);
  }

  // Keep the finished sequences alive until their events are out (the events hold the
  // callbacks, not the sequences, so erasing first is safe).
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Sequence* seq : finished_) live_ids_.erase(seq->id());
    PublishStatsLocked();
  }
  for (Sequence* seq : finished_) sequences_.erase(seq->id());
  finished_.clear();
  DeliverEvents();
  idle_cv_.notify_all();
  if (!status.ok()) return status;
  return did_work;
}

absl::Status Engine::Impl::RunUntilIdle() {
  bool background = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    background = thread_.joinable();
  }
  if (background) {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_cv_.wait(lock, [&] { return !HasWorkLocked() || stop_requested_; });
    return absl::OkStatus();
  }
  while (true) {
    ASSIGN_OR_RETURN(bool did_work, Step());
    if (did_work) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!HasWorkLocked()) return absl::OkStatus();
    return absl::InternalError(absl::StrFormat(
        "engine on worker %s made no progress with %d running and %d waiting requests and %d "
        "of %d KV blocks free",
        options_.worker_name, stats_.running, stats_.waiting, stats_.kv_blocks_free,
        stats_.kv_blocks_total));
  }
}

void Engine::Impl::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] { return stop_requested_ || HasWorkLocked(); });
      if (stop_requested_) return;
    }
    absl::StatusOr<bool> did_work = Step();
    if (!did_work.ok()) {
      GLM_LOG(ERROR) << "engine step failed: " << did_work.status();
    } else if (!*did_work) {
      // Work is queued but nothing could run: a scheduler bug, never expected. Log and back off
      // instead of spinning.
      GLM_LOG(ERROR) << "engine step made no progress although work is queued";
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_requested_; });
    }
  }
}

void Engine::Impl::Start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (thread_.joinable()) return;
  stop_requested_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Impl::Stop() {
  std::thread thread;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_requested_ = true;
    thread.swap(thread_);
  }
  work_cv_.notify_all();
  idle_cv_.notify_all();
  if (thread.joinable()) thread.join();

  // Everything still live ends with kCancelled.
  std::lock_guard<std::mutex> step_lock(step_mutex_);
  std::vector<std::unique_ptr<Sequence>> incoming;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    incoming.swap(incoming_);
    cancels_.clear();
  }
  for (std::unique_ptr<Sequence>& seq : incoming) {
    Sequence* raw = seq.get();
    sequences_[raw->id()] = std::move(seq);
    scheduler_.AddWaiting(raw);
  }
  for (auto& [id, seq] : sequences_) Finish(seq.get(), FinishReason::kCancelled, absl::OkStatus());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Sequence* seq : finished_) live_ids_.erase(seq->id());
    PublishStatsLocked();
    stop_requested_ = false;
  }
  sequences_.clear();
  finished_.clear();
  DeliverEvents();
}

EngineStats Engine::Impl::Stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  EngineStats stats = stats_;
  stats.waiting += static_cast<int32_t>(incoming_.size());
  return stats;
}

// ---- Engine -----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       std::unique_ptr<Backend> backend,
                                                       const Tokenizer* tokenizer) {
  if (backend == nullptr) return absl::InvalidArgumentError("Engine::Create needs a backend");
  const ModelConfig& config = backend->config();
  if (config.vocab_size <= 0 || config.vocab_size > std::numeric_limits<int32_t>::max()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "backend %s reports vocab_size %d: load the model into the backend before creating the "
        "engine",
        backend->Name(), config.vocab_size));
  }
  EngineOptions resolved = options;
  if (resolved.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block_size is %d: it must be at least 1 (16 is usual)", resolved.block_size));
  }
  if (resolved.max_num_seqs < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_num_seqs is %d: it must be at least 1", resolved.max_num_seqs));
  }
  if (resolved.max_num_batched_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_num_batched_tokens is %d: it must be at least 1", resolved.max_num_batched_tokens));
  }
  if (resolved.max_prefill_only_steps < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_prefill_only_steps is %d: it must be at least 1 (the prefill-first policy's bound on "
        "steps in a row without decodes)",
        resolved.max_prefill_only_steps));
  }
  if (resolved.max_waiting < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_waiting is %d: it must be >= 0", resolved.max_waiting));
  }
  const int64_t max_positions = config.max_position_embeddings;
  if (resolved.max_model_len < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_model_len is %d: use 0 for the model's max_position_embeddings or a positive limit",
        resolved.max_model_len));
  }
  if (resolved.max_model_len == 0) {
    if (max_positions <= 0) {
      return absl::InvalidArgumentError(
          "max_model_len is 0 and the model config has no max_position_embeddings: set "
          "max_model_len");
    }
    resolved.max_model_len =
        static_cast<int32_t>(std::min<int64_t>(max_positions, std::numeric_limits<int32_t>::max()));
  } else if (max_positions > 0 && resolved.max_model_len > max_positions) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_model_len %d exceeds the model's max_position_embeddings %d: lower max_model_len",
        resolved.max_model_len, max_positions));
  }
  if (resolved.num_kv_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_kv_blocks is %d: use 0 to derive it from kv_cache_bytes or a positive count",
        resolved.num_kv_blocks));
  }
  if (resolved.num_kv_blocks == 0) {
    const int64_t bytes_per_block = backend->KvBytesPerBlock(resolved.block_size);
    if (bytes_per_block <= 0) {
      return absl::InternalError(absl::StrFormat("backend %s reports %d bytes per KV block",
                                                 backend->Name(), bytes_per_block));
    }
    const int64_t num_blocks = resolved.kv_cache_bytes / bytes_per_block;
    if (num_blocks < 1) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "kv_cache_bytes %d holds no KV block: one block of %d tokens takes %d bytes; raise "
          "kv_cache_bytes to at least %d",
          resolved.kv_cache_bytes, resolved.block_size, bytes_per_block, bytes_per_block));
    }
    resolved.num_kv_blocks =
        static_cast<int32_t>(std::min<int64_t>(num_blocks, std::numeric_limits<int32_t>::max()));
  }
  RETURN_IF_ERROR(backend->AllocateKvCache(resolved.num_kv_blocks, resolved.block_size));
  RETURN_IF_ERROR(backend->WarmUp(resolved.max_num_seqs));

  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = resolved;
  engine->backend_ = std::move(backend);
  engine->impl_ = std::make_unique<Impl>(engine.get(), tokenizer);
  return engine;
}

Engine::~Engine() {
  if (impl_) impl_->Stop();
}

absl::Status Engine::Submit(GenerationRequest request, TokenCallback callback) {
  return impl_->Submit(std::move(request), std::move(callback));
}
void Engine::Cancel(const std::string& request_id) { impl_->Cancel(request_id); }
absl::StatusOr<bool> Engine::Step() { return impl_->Step(); }
absl::Status Engine::RunUntilIdle() { return impl_->RunUntilIdle(); }
void Engine::Start() { impl_->Start(); }
void Engine::Stop() { impl_->Stop(); }
EngineStats Engine::Stats() const { return impl_->Stats(); }
const ModelConfig& Engine::config() const { return backend_->config(); }

}  // namespace glm
