#include "worker/parallel/group_backend.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/core/logging.h"
#include "services/core/status_macros.h"

namespace glm {
namespace {

// ---- StepBatch serialization ----------------------------------------------------------------

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void PutI32s(const std::vector<int32_t>& v) {
    Put<uint32_t>(static_cast<uint32_t>(v.size()));
    const size_t at = out_.size();
    out_.resize(at + v.size() * sizeof(int32_t));
    if (!v.empty()) std::memcpy(out_.data() + at, v.data(), v.size() * sizeof(int32_t));
  }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  bool Get(T* v) {
    if (size_ - at_ < sizeof(T)) return false;
    std::memcpy(v, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  bool GetI32s(std::vector<int32_t>* v) {
    uint32_t n = 0;
    if (!Get(&n) || (size_ - at_) / sizeof(int32_t) < n) return false;
    v->resize(n);
    if (n > 0) std::memcpy(v->data(), data_ + at_, n * sizeof(int32_t));
    at_ += n * sizeof(int32_t);
    return true;
  }
  bool done() const { return at_ == size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

absl::Status Broken(const absl::Status& first) {
  return absl::UnavailableError(
      absl::StrCat("tensor-parallel group failed: ", first.message()));
}

// ---- Rank 0 -----------------------------------------------------------------------------------

class GroupBackend final : public Backend {
 public:
  GroupBackend(std::unique_ptr<Backend> local, Communicator* comm, GroupBackendOptions options)
      : local_(std::move(local)), comm_(comm), options_(std::move(options)) {
    last_send_ = absl::Now();
    keepalive_ = std::thread([this] { KeepaliveLoop(); });
  }

  ~GroupBackend() override {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stopping_ = true;
    }
    stop_cv_.notify_all();
    keepalive_.join();
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_.ok()) {
      absl::Status status = SendLocked(GroupMessageKind::kShutdown, {});
      if (!status.ok()) GLM_LOG(WARNING) << "tensor-parallel shutdown message: " << status;
    }
  }

  std::string Name() const override { return local_->Name(); }

  absl::Status Load(const ModelConfig& config, const Checkpoint& checkpoint,
                    const LoadOptions& options) override {
    return local_->Load(config, checkpoint, options);
  }

  int64_t KvBytesPerBlock(int32_t block_size) const override {
    return local_->KvBytesPerBlock(block_size);
  }

  absl::Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override {
    absl::Status failure;
    absl::Status local;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.ok()) return Broken(broken_);
      Writer w;
      w.Put<int32_t>(num_blocks);
      w.Put<int32_t>(block_size);
      absl::Status status = SendLocked(GroupMessageKind::kAllocateKv, w.Take());
      if (status.ok()) {
        local = local_->AllocateKvCache(num_blocks, block_size);
        float failed = local.ok() ? 0.f : 1.f;  // ranks whose allocation failed, summed
        status = comm_->AllReduceSum(&failed, 1, DType::kF32);
        if (status.ok() && local.ok() && failed > 0) {
          local = absl::ResourceExhaustedError(absl::StrCat(
              static_cast<int>(failed), " tensor-parallel follower rank(s) could not allocate ",
              num_blocks, " KV blocks of ", block_size, " tokens (see their logs)"));
        }
      }
      if (!status.ok()) failure = BreakLocked(status);
    }
    if (!failure.ok()) {
      Notify(failure);
      return Broken(failure);
    }
    return local;
  }

  absl::Status Forward(const StepBatch& batch, std::vector<float>* logits) override {
    return Run(GroupMessageKind::kForward, batch,
               [&] { return local_->Forward(batch, logits); });
  }

  absl::Status ForwardGreedy(const StepBatch& batch, std::vector<int32_t>* token_ids,
                             std::vector<uint8_t>* finite) override {
    return Run(GroupMessageKind::kForwardGreedy, batch,
               [&] { return local_->ForwardGreedy(batch, token_ids, finite); });
  }

  // The leader samples; the followers only take part in the step (ForwardGreedy runs the same
  // collectives as Forward, and their tokens are dropped).
  absl::Status ForwardSample(const StepBatch& batch, std::span<const RowSampling> rows,
                             std::vector<int32_t>* token_ids, std::vector<uint8_t>* finite,
                             std::vector<RowLogprobs>* logprobs) override {
    return Run(GroupMessageKind::kForwardGreedy, batch,
               [&] { return local_->ForwardSample(batch, rows, token_ids, finite, logprobs); });
  }

  MemoryReport Memory() const override { return local_->Memory(); }
  const ModelConfig& config() const override { return local_->config(); }
  int64_t KvBlocksThatFit(int32_t block_size) const override {
    return local_->KvBlocksThatFit(block_size);
  }

 private:
  template <typename Fn>
  absl::Status Run(GroupMessageKind kind, const StepBatch& batch, Fn&& local) {
    absl::Status failure;
    absl::Status result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.ok()) return Broken(broken_);
      absl::Status sent = SendLocked(kind, SerializeStepBatch(batch));
      if (!sent.ok()) {
        failure = BreakLocked(sent);
      } else {
        result = local();
        if (!result.ok()) {
          // Was it the group (a collective failed) or this step (every rank rejects it)? A
          // broken communicator fails every later call, so a ping tells.
          absl::Status ping = SendLocked(GroupMessageKind::kPing, {});
          if (!ping.ok()) failure = BreakLocked(result);
        }
      }
    }
    if (!failure.ok()) {
      Notify(failure);
      return Broken(failure);
    }
    return result;
  }

  // Broadcasts one message (header, then payload). mu_ held.
  absl::Status SendLocked(GroupMessageKind kind, std::vector<uint8_t> payload) {
    GroupMessageHeader header;
    header.magic = kGroupMessageMagic;
    header.kind = static_cast<uint32_t>(kind);
    header.payload_bytes = payload.size();
    header.seq = seq_++;
    last_send_ = absl::Now();
    RETURN_IF_ERROR(comm_->Broadcast(&header, sizeof(header), 0));
    if (!payload.empty()) {
      RETURN_IF_ERROR(comm_->Broadcast(payload.data(), static_cast<int64_t>(payload.size()), 0));
    }
    return absl::OkStatus();
  }

  // Records the first failure and aborts the communicator so the followers fail fast. mu_ held.
  absl::Status BreakLocked(absl::Status status) {
    if (broken_.ok()) {
      broken_ = status;
      GLM_LOG(ERROR) << "tensor-parallel group of " << comm_->size() << " failed: " << status;
      comm_->Abort();
    }
    return broken_;
  }

  void Notify(const absl::Status& status) {
    if (notified_.exchange(true)) return;
    if (options_.on_failure) options_.on_failure(status);
  }

  void KeepaliveLoop() {
    const absl::Duration period = options_.keepalive;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(stop_mu_);
        stop_cv_.wait_for(lock, absl::ToChronoMilliseconds(period / 4),
                          [&] { return stopping_; });
        if (stopping_) return;
      }
      absl::Status failure;
      {
        std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
        if (!lock.owns_lock()) continue;  // a step is running: it talks to the followers
        if (!broken_.ok()) return;
        if (absl::Now() - last_send_ < period) continue;
        absl::Status sent = SendLocked(GroupMessageKind::kPing, {});
        if (!sent.ok()) failure = BreakLocked(sent);
      }
      if (!failure.ok()) {
        Notify(failure);
        return;
      }
    }
  }

  std::unique_ptr<Backend> local_;
  Communicator* comm_;
  GroupBackendOptions options_;

  std::mutex mu_;           // one message (and the step it announces) at a time
  absl::Status broken_;     // first group failure
  uint64_t seq_ = 0;
  absl::Time last_send_;
  std::atomic<bool> notified_{false};

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread keepalive_;
};

}  // namespace

std::vector<uint8_t> SerializeStepBatch(const StepBatch& batch) {
  Writer w;
  w.PutI32s(batch.token_ids);
  w.PutI32s(batch.positions);
  w.Put<uint32_t>(static_cast<uint32_t>(batch.seqs.size()));
  for (const SequenceStep& s : batch.seqs) {
    w.Put<int64_t>(s.seq_id);
    w.Put<int32_t>(s.token_offset);
    w.Put<int32_t>(s.num_tokens);
    w.Put<int32_t>(s.context_len);
    w.Put<uint8_t>(s.wants_logits ? 1 : 0);
    w.PutI32s(s.block_table);
  }
  return w.Take();
}

absl::StatusOr<StepBatch> ParseStepBatch(const uint8_t* data, size_t size) {
  Reader r(data, size);
  StepBatch batch;
  uint32_t num_seqs = 0;
  auto bad = [&] {
    return absl::DataLossError(absl::StrCat("malformed tensor-parallel step message (", size,
                                            " bytes)"));
  };
  if (!r.GetI32s(&batch.token_ids) || !r.GetI32s(&batch.positions) || !r.Get(&num_seqs)) {
    return bad();
  }
  if (num_seqs > size) return bad();
  batch.seqs.resize(num_seqs);
  for (SequenceStep& s : batch.seqs) {
    uint8_t wants = 0;
    if (!r.Get(&s.seq_id) || !r.Get(&s.token_offset) || !r.Get(&s.num_tokens) ||
        !r.Get(&s.context_len) || !r.Get(&wants) || !r.GetI32s(&s.block_table)) {
      return bad();
    }
    s.wants_logits = wants != 0;
  }
  if (!r.done()) return bad();
  return batch;
}

std::unique_ptr<Backend> MakeGroupBackend(std::unique_ptr<Backend> local, Communicator* comm,
                                          GroupBackendOptions options) {
  return std::make_unique<GroupBackend>(std::move(local), comm, std::move(options));
}

absl::Status RunFollower(Backend& backend, Communicator& comm) {
  const std::string who = absl::StrCat("tensor-parallel rank ", comm.rank(), " of ", comm.size());
  uint64_t expected_seq = 0;
  std::vector<uint8_t> payload;
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> finite;
  while (true) {
    GroupMessageHeader header;
    absl::Status status = comm.Broadcast(&header, sizeof(header), 0);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat(who, ": waiting for rank 0: ", status.message()));
    }
    if (header.magic != kGroupMessageMagic || header.seq != expected_seq ||
        header.payload_bytes > (uint64_t{1} << 34)) {
      comm.Abort();
      return absl::DataLossError(absl::StrCat(who, ": bad message from rank 0 (magic ",
                                              header.magic, ", seq ", header.seq, ", expected ",
                                              expected_seq, ")"));
    }
    ++expected_seq;
    payload.resize(header.payload_bytes);
    if (!payload.empty()) {
      status = comm.Broadcast(payload.data(), static_cast<int64_t>(payload.size()), 0);
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrCat(who, ": receiving a message: ", status.message()));
      }
    }
    switch (static_cast<GroupMessageKind>(header.kind)) {
      case GroupMessageKind::kPing:
        break;
      case GroupMessageKind::kShutdown:
        return absl::OkStatus();
      case GroupMessageKind::kAllocateKv: {
        Reader r(payload.data(), payload.size());
        int32_t num_blocks = 0, block_size = 0;
        absl::Status local;
        if (!r.Get(&num_blocks) || !r.Get(&block_size)) {
          local = absl::DataLossError("malformed AllocateKv message");
        } else {
          local = backend.AllocateKvCache(num_blocks, block_size);
        }
        if (!local.ok()) GLM_LOG(ERROR) << who << ": AllocateKvCache: " << local;
        float failed = local.ok() ? 0.f : 1.f;
        status = comm.AllReduceSum(&failed, 1, DType::kF32);
        if (!status.ok()) return status;
        break;
      }
      case GroupMessageKind::kForward:
      case GroupMessageKind::kForwardGreedy: {
        absl::StatusOr<StepBatch> batch = ParseStepBatch(payload.data(), payload.size());
        if (!batch.ok()) {
          comm.Abort();
          return absl::Status(batch.status().code(),
                              absl::StrCat(who, ": ", batch.status().message()));
        }
        absl::Status ran =
            static_cast<GroupMessageKind>(header.kind) == GroupMessageKind::kForward
                ? backend.Forward(*batch, &logits)
                : backend.ForwardGreedy(*batch, &tokens, &finite);
        if (!ran.ok()) GLM_LOG(WARNING) << who << ": step failed: " << ran;
        break;
      }
      default:
        comm.Abort();
        return absl::DataLossError(
            absl::StrCat(who, ": unknown message kind ", header.kind, " from rank 0"));
    }
  }
}

}  // namespace glm
