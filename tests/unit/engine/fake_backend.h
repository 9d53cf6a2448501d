// A deterministic Backend for engine tests. Its "KV cache" is a paged store of token ids:
// Forward() writes each new token into the slot its block table names and reads the whole
// context back through the block table, and the logits are a pure function of that context.
// So batching cannot change a result, while a wrong block table, a wrong chunk or a stale
// block gives different logits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "absl/strings/str_format.h"
#include "worker/backend/backend.h"

namespace glm::testing {

struct FakeBehavior {
  int32_t eos_at_context_len = -1;  // eos logit +50 when the context has exactly this many tokens
  int32_t nan_trigger_token = -1;   // a context holding this token gets a NaN logit
  std::map<int32_t, int32_t> script;  // context length -> token forced (logit +50)
};

struct FakeBackendRecord {
  int64_t forwards = 0;
  int32_t max_seqs_in_step = 0;
  int32_t max_tokens_in_step = 0;
  int32_t max_chunk = 0;         // most new tokens of one sequence in one step
  int32_t min_prefill_chunk = 1 << 30;
  int64_t warmups = 0;               // WarmUp() calls
  int32_t warmup_max_seqs = 0;       // its argument
  int64_t forwards_at_warmup = -1;   // forwards before the (last) WarmUp()
};

inline ModelConfig FakeConfig(int64_t vocab = 64, int64_t max_positions = 256) {
  ModelConfig config;
  config.vocab_size = vocab;
  config.hidden_size = 8;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 1;
  config.num_key_value_heads = 1;
  config.head_dim = 8;
  config.max_position_embeddings = max_positions;
  config.eos_token_ids = {0};
  return config;
}

class FakePagedBackend : public Backend {
 public:
  FakePagedBackend(ModelConfig config, FakeBehavior behavior, FakeBackendRecord* record = nullptr)
      : config_(std::move(config)), behavior_(std::move(behavior)), record_(record) {}

  std::string Name() const override { return "fake"; }
  absl::Status Load(const ModelConfig&, const Checkpoint&, const LoadOptions&) override {
    return absl::OkStatus();
  }
  int64_t KvBytesPerBlock(int32_t block_size) const override { return int64_t{block_size} * 64; }
  absl::Status AllocateKvCache(int32_t num_blocks, int32_t block_size) override {
    block_size_ = block_size;
    num_blocks_ = num_blocks;
    store_.assign(static_cast<size_t>(num_blocks) * block_size, -1);
    return absl::OkStatus();
  }
  MemoryReport Memory() const override { return {}; }
  const ModelConfig& config() const override { return config_; }
  // Like the CUDA backend's dummy steps: scribbles on KV block 0 (a sequence that read a slot
  // it had not written would then see the wrong context).
  absl::Status WarmUp(int32_t max_num_seqs) override {
    for (int32_t i = 0; i < block_size_ && !store_.empty(); ++i) store_[static_cast<size_t>(i)] = 1;
    if (record_) {
      record_->warmups++;
      record_->warmup_max_seqs = max_num_seqs;
      record_->forwards_at_warmup = record_->forwards;
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const StepBatch& batch, std::vector<float>* logits) override {
    if (batch.token_ids.size() != batch.positions.size()) {
      return absl::InternalError("token_ids and positions differ in length");
    }
    logits->clear();
    int32_t tokens_seen = 0;
    for (const SequenceStep& seq : batch.seqs) {
      if (seq.token_offset != tokens_seen || seq.num_tokens < 1) {
        return absl::InternalError(absl::StrFormat("seq %d: bad offset/length", seq.seq_id));
      }
      tokens_seen += seq.num_tokens;
      const int64_t needed_blocks = (seq.context_len + block_size_ - 1) / block_size_;
      if (static_cast<int64_t>(seq.block_table.size()) != needed_blocks) {
        return absl::InternalError(absl::StrFormat("seq %d: %d blocks for context %d", seq.seq_id,
                                                   seq.block_table.size(), seq.context_len));
      }
      for (int32_t block : seq.block_table) {
        if (block < 0 || block >= num_blocks_) return absl::InternalError("block id out of range");
      }
      for (int32_t i = 0; i < seq.num_tokens; ++i) {
        const int32_t position = batch.positions[static_cast<size_t>(seq.token_offset + i)];
        if (position != seq.context_len - seq.num_tokens + i) {
          return absl::InternalError(absl::StrFormat("seq %d: position %d out of order", seq.seq_id,
                                                     position));
        }
        Slot(seq.block_table, position) = batch.token_ids[static_cast<size_t>(seq.token_offset + i)];
      }
      if (record_) {
        record_->max_chunk = std::max(record_->max_chunk, seq.num_tokens);
        if (seq.num_tokens > 1) {
          record_->min_prefill_chunk = std::min(record_->min_prefill_chunk, seq.num_tokens);
        }
      }
    }
    if (tokens_seen != batch.num_tokens()) return absl::InternalError("tokens not covered");
    for (const SequenceStep& seq : batch.seqs) {
      if (!seq.wants_logits) continue;
      std::vector<int32_t> context;
      for (int32_t position = 0; position < seq.context_len; ++position) {
        context.push_back(Slot(seq.block_table, position));
      }
      AppendLogits(context, logits);
    }
    if (record_) {
      record_->forwards++;
      record_->max_seqs_in_step =
          std::max(record_->max_seqs_in_step, static_cast<int32_t>(batch.seqs.size()));
      record_->max_tokens_in_step = std::max(record_->max_tokens_in_step, batch.num_tokens());
    }
    return absl::OkStatus();
  }

  // The model: logits in [-4, 4) from a hash of the whole context.
  void AppendLogits(const std::vector<int32_t>& context, std::vector<float>* logits) const {
    uint64_t hash = 1469598103934665603ull;
    for (int32_t token : context) hash = (hash ^ static_cast<uint64_t>(token + 1)) * 1099511628211ull;
    const size_t base = logits->size();
    for (int64_t v = 0; v < config_.vocab_size; ++v) {
      uint64_t x = hash + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(v + 1);
      x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
      x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
      x ^= x >> 31;
      logits->push_back(static_cast<float>(x % 8000) / 1000.0f - 4.0f);
    }
    float* row = logits->data() + base;
    for (int32_t eos : config_.eos_token_ids) row[eos] = -20.0f;
    // The trigger appears only where a prompt or the script puts it.
    if (behavior_.nan_trigger_token >= 0) row[behavior_.nan_trigger_token] = -20.0f;
    const int32_t length = static_cast<int32_t>(context.size());
    if (length == behavior_.eos_at_context_len) {
      for (int32_t eos : config_.eos_token_ids) row[eos] = 50.0f;
    }
    if (auto it = behavior_.script.find(length); it != behavior_.script.end()) row[it->second] = 50.0f;
    if (behavior_.nan_trigger_token >= 0 &&
        std::find(context.begin(), context.end(), behavior_.nan_trigger_token) != context.end()) {
      row[5] = std::numeric_limits<float>::quiet_NaN();
    }
  }

 private:
  int32_t& Slot(const std::vector<int32_t>& block_table, int32_t position) {
    const int32_t block = block_table[static_cast<size_t>(position / block_size_)];
    return store_[static_cast<size_t>(block) * block_size_ + position % block_size_];
  }

  ModelConfig config_;
  FakeBehavior behavior_;
  FakeBackendRecord* record_;
  int32_t block_size_ = 0;
  int32_t num_blocks_ = 0;
  std::vector<int32_t> store_;  // [num_blocks * block_size] token id per KV slot
};

}  // namespace glm::testing
