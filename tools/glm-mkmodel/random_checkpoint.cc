#include "tools/glm-mkmodel/random_checkpoint.h"

#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "services/core/status_macros.h"
#include "worker/model/safetensors.h"
#include "worker/tokenizer/glm_special_tokens.h"
#include "worker/tokenizer/synthetic.h"
#include "worker/tokenizer/tokenizer.h"

namespace glm {
namespace {

// splitmix64: tiny, fast, and the same on every platform.
class SplitMix64 {
 public:
  static constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += kGamma);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1) with 24 random bits: exact in float.
  float Symmetric() { return static_cast<float>(Next() >> 40) * (1.0f / 8388608.0f) - 1.0f; }

 private:
  uint64_t state_;
};

uint64_t HashName(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Values of one tensor: uniform with standard deviation `std` around `mean`, from a stream keyed
// by (seed, tensor name) so tensors do not depend on the order they are written in.
std::vector<float> RandomValues(uint64_t seed, const std::string& name, int64_t n, float mean,
                                float std) {
  const uint64_t state0 = seed ^ HashName(name);
  const float amplitude = std * 1.7320508f;  // uniform(-a, a) has std a / sqrt(3)
  std::vector<float> out(static_cast<size_t>(n));
  // splitmix64's state after i draws is state0 + i * gamma, so chunks of the stream fill in
  // parallel and the values do not depend on the thread count (a 9B checkpoint: ~9e9 draws).
  auto fill = [&](int64_t begin, int64_t end) {
    SplitMix64 rng(state0 + static_cast<uint64_t>(begin) * SplitMix64::kGamma);
    for (int64_t i = begin; i < end; ++i) out[i] = mean + amplitude * rng.Symmetric();
  };
  constexpr int64_t kChunk = int64_t{1} << 22;
  const int threads = static_cast<int>(std::min<int64_t>(
      std::max(1u, std::thread::hardware_concurrency()), (n + kChunk - 1) / kChunk));
  if (threads <= 1) {
    fill(0, n);
    return out;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const int64_t b = std::min(n, t * per), e = std::min(n, b + per);
    pool.emplace_back(fill, b, e);
  }
  for (auto& th : pool) th.join();
  return out;
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  f << text;
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

// Groups tensors into shards of at most shard_bytes, writing each shard as soon as it is full
// so a 9B checkpoint never sits in memory whole.
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, uint64_t shard_bytes) : dir_(std::move(dir)), limit_(shard_bytes) {}

  absl::Status Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                   const std::vector<float>& values) {
    uint64_t bytes = values.size() * static_cast<uint64_t>(DTypeSize(dtype));
    if (current_.total_bytes() > 0 && current_.total_bytes() + bytes > limit_) {
      RETURN_IF_ERROR(Flush());
    }
    current_.AddFloat(name, dtype, std::move(shape), values);
    return absl::OkStatus();
  }

  // Single shard: model.safetensors. Several: model-0000i-of-0000n.safetensors + index.
  absl::Status Finish() {
    RETURN_IF_ERROR(Flush());
    namespace fs = std::filesystem;
    if (shard_files_.size() == 1) {
      fs::rename(fs::path(dir_) / shard_files_[0], fs::path(dir_) / "model.safetensors");
      return absl::OkStatus();
    }
    nlohmann::json index;
    index["metadata"] = {{"total_size", total_bytes_}};
    nlohmann::json weight_map = nlohmann::json::object();
    const size_t n = shard_files_.size();
    for (size_t i = 0; i < n; ++i) {
      std::string final_name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, n);
      fs::rename(fs::path(dir_) / shard_files_[i], fs::path(dir_) / final_name);
      for (const auto& tensor : shard_tensors_[i]) weight_map[tensor] = final_name;
    }
    index["weight_map"] = weight_map;
    return WriteText((fs::path(dir_) / "model.safetensors.index.json").string(), index.dump(2));
  }

 private:
  absl::Status Flush() {
    if (current_.total_bytes() == 0) return absl::OkStatus();
    std::string name = absl::StrCat("shard-", shard_files_.size(), ".tmp");
    RETURN_IF_ERROR(current_.Write(dir_ + "/" + name, {{"format", "pt"}}));
    total_bytes_ += current_.total_bytes();
    shard_files_.push_back(name);
    shard_tensors_.push_back(current_.names());
    current_ = SafetensorsWriter();
    return absl::OkStatus();
  }

  std::string dir_;
  uint64_t limit_;
  uint64_t total_bytes_ = 0;
  SafetensorsWriter current_;
  std::vector<std::string> shard_files_;
  std::vector<std::vector<std::string>> shard_tensors_;
};

}  // namespace

absl::StatusOr<ModelConfig> PresetConfig(const std::string& preset, Architecture arch) {
  ModelConfig c;
  c.architecture = arch;
  c.model_type = arch == Architecture::kGlm4 ? "glm4" : "glm";
  c.partial_rotary_factor = 0.5;
  c.rope_theta = 10000.0;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.rms_norm_eps = 1e-5;
  c.torch_dtype = DType::kBF16;
  auto shape = [&](int64_t v, int64_t d, int64_t f, int64_t l, int64_t h, int64_t hkv, int64_t dh,
                   int64_t max_pos) {
    c.vocab_size = v;
    c.hidden_size = d;
    c.intermediate_size = f;
    c.num_hidden_layers = l;
    c.num_attention_heads = h;
    c.num_key_value_heads = hkv;
    c.head_dim = dh;
    c.max_position_embeddings = max_pos;
  };
  if (preset == "tiny") {
    shape(512, 64, 160, 2, 4, 2, 16, 1024);
  } else if (preset == "demo") {
    shape(2048, 256, 704, 4, 8, 2, 32, 4096);
  } else if (preset == "small") {
    shape(8192, 1024, 2816, 8, 16, 2, 64, 8192);
  } else if (preset == "glm-4-9b-chat") {
    shape(151552, 4096, 13696, 40, 32, 2, 128, 131072);
    c.rms_norm_eps = 1.5625e-07;
  } else if (preset == "glm4-9b-0414") {
    shape(151552, 4096, 13696, 40, 32, 2, 128, 32768);
  } else if (preset == "glm4-32b-0414") {
    shape(151552, 6144, 23040, 61, 48, 2, 128, 32768);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown preset '", preset,
        "': use tiny, demo, small, glm-4-9b-chat, glm4-9b-0414 or glm4-32b-0414"));
  }
  return c;
}

absl::Status WriteRandomCheckpoint(const RandomCheckpointSpec& spec, const std::string& out_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));

  ModelConfig config = spec.config;
  const int64_t V = config.vocab_size, D = config.hidden_size, F = config.intermediate_size;
  const int64_t L = config.num_hidden_layers, Dh = config.head_dim;
  const int64_t Q = config.num_attention_heads * Dh, KV = config.num_key_value_heads * Dh;
  if (spec.massive_activations && (spec.massive_layer >= L || spec.massive_channel >= D)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--massive-layer %d / channel %d outside the model (%d layers, hidden %d)",
        spec.massive_layer, spec.massive_channel, L, D));
  }

  // Tokenizer first: eos ids come from its special tokens.
  // Real GLM-4 vocabularies (151552 rows) hold 151343 tokens: 151329 BPE tokens, then the 14
  // specials from id 151329 on; the remaining embedding rows are padding. Smaller models use
  // every row.
  const int32_t tokenizer_vocab = V >= kGlmFirstSpecialId + kGlmNumSpecialTokens
                                      ? kGlmFirstSpecialId + kGlmNumSpecialTokens
                                      : static_cast<int32_t>(V);
  ASSIGN_OR_RETURN(std::string tokenizer_json, BuildGlmTokenizerJson(tokenizer_vocab));
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromJson(tokenizer_json));
  config.eos_token_ids.clear();
  for (const char* name : {"<|endoftext|>", "<|user|>", "<|observation|>"}) {
    if (auto id = tokenizer->TokenToId(name)) config.eos_token_ids.push_back(*id);
  }
  if (auto pad = tokenizer->TokenToId("<|endoftext|>")) config.pad_token_id = *pad;
  config.torch_dtype = spec.dtype;

  RETURN_IF_ERROR(WriteText(out_dir + "/tokenizer.json", tokenizer_json));
  RETURN_IF_ERROR(WriteText(out_dir + "/tokenizer_config.json",
                            BuildGlmTokenizerConfigJson(config.architecture)));
  RETURN_IF_ERROR(WriteText(out_dir + "/config.json", ModelConfigToJson(config)));
  nlohmann::json gen;
  gen["eos_token_id"] = config.eos_token_ids;
  gen["pad_token_id"] = config.pad_token_id;
  gen["do_sample"] = false;
  gen["_glm_fleet_note"] = "random weights written by glm-mkmodel";
  RETURN_IF_ERROR(WriteText(out_dir + "/generation_config.json", gen.dump(2)));

  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(D));
  const uint64_t seed = spec.seed;
  ShardedWriter writer(out_dir, spec.shard_bytes);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float std) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return writer.Add(name, spec.dtype, std::move(shape), RandomValues(seed, name, n, mean, std));
  };

  // Massive activations: a fixed residual channel c carries ~1.8e5 after layer m's MLP. Layers
  // after m see it through their norms, whose weights are rescaled so that the other channels
  // keep a normal magnitude after normalisation (what trained models learn to do).
  const int64_t c = spec.massive_channel;
  // Typical |x_c| after the plant, divided by sqrt(D): what rms(x) becomes.
  const float massive_value = 1.8e5f;
  const float norm_rescale = massive_value * inv_sqrt_d;

  {
    // [V, D]. With massive activations, channel c is a steady positive feature (~1 for every
    // token) that layer m's MLP amplifies.
    std::vector<float> embed = RandomValues(seed, "model.embed_tokens.weight", V * D, 0.0f, 1.0f);
    if (spec.massive_activations) {
      for (int64_t t = 0; t < V; ++t) embed[t * D + c] = 1.0f + 0.1f * embed[t * D + c];
    }
    RETURN_IF_ERROR(writer.Add("model.embed_tokens.weight", spec.dtype, {V, D}, embed));
  }
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    const bool after_massive = spec.massive_activations && l > spec.massive_layer;
    // reads_residual: input_layernorm / post_attention_layernorm normalise the residual stream
    // (which carries the massive channel); Glm4's post_self_attn / post_mlp norms normalise a
    // sublayer's output.
    auto norm = [&](const std::string& name, bool reads_residual) -> absl::Status {
      std::vector<float> w = RandomValues(seed, p + name, D, 1.0f, 0.06f);  // [D]
      if (after_massive && reads_residual) {
        for (int64_t i = 0; i < D; ++i) w[i] = (i == c) ? 1e-4f : w[i] * norm_rescale;
      }
      if (spec.massive_activations && l == spec.massive_layer &&
          name == "post_mlp_layernorm.weight") {
        // Glm4 normalises the MLP output before the residual add: keep channel c massive.
        w[c] = massive_value * inv_sqrt_d;
      }
      return writer.Add(p + name, spec.dtype, {D}, w);
    };
    RETURN_IF_ERROR(norm("input_layernorm.weight", true));
    RETURN_IF_ERROR(add(p + "self_attn.q_proj.weight", {Q, D}, 0.0f, inv_sqrt_d));   // [H*Dh, D]
    RETURN_IF_ERROR(add(p + "self_attn.k_proj.weight", {KV, D}, 0.0f, inv_sqrt_d));  // [Hkv*Dh, D]
    RETURN_IF_ERROR(add(p + "self_attn.v_proj.weight", {KV, D}, 0.0f, inv_sqrt_d));  // [Hkv*Dh, D]
    if (config.attention_bias) {
      RETURN_IF_ERROR(add(p + "self_attn.q_proj.bias", {Q}, 0.0f, 0.1f));   // [H*Dh]
      RETURN_IF_ERROR(add(p + "self_attn.k_proj.bias", {KV}, 0.0f, 0.1f));  // [Hkv*Dh]
      RETURN_IF_ERROR(add(p + "self_attn.v_proj.bias", {KV}, 0.0f, 0.1f));  // [Hkv*Dh]
    }
    RETURN_IF_ERROR(add(p + "self_attn.o_proj.weight", {D, Q}, 0.0f,
                        0.5f / std::sqrt(static_cast<float>(Q))));  // [D, H*Dh]
    if (config.has_post_norms()) RETURN_IF_ERROR(norm("post_self_attn_layernorm.weight", false));
    RETURN_IF_ERROR(norm("post_attention_layernorm.weight", true));

    // [2F, D]: rows [0, F) gate, [F, 2F) up.
    std::vector<float> gate_up =
        RandomValues(seed, p + "mlp.gate_up_proj.weight", 2 * F * D, 0.0f, inv_sqrt_d);
    // [D, F]
    std::vector<float> down = RandomValues(seed, p + "mlp.down_proj.weight", D * F, 0.0f,
                                           0.5f / std::sqrt(static_cast<float>(F)));
    if (spec.massive_activations && l == spec.massive_layer) {
      // Intermediate neuron 0 reads the steady feature in channel c strongly enough that
      // silu(g) * u is about 9e4 (past fp16's range as a down-projection input), and writes
      // twice that back into channel c of the residual stream.
      for (int64_t i = 0; i < D; ++i) {
        gate_up[0 * D + i] = 0.0f;
        gate_up[F * D + i] = 0.0f;
      }
      gate_up[0 * D + c] = 300.0f;   // gate
      gate_up[F * D + c] = 300.0f;   // up
      for (int64_t i = 0; i < D; ++i) down[i * F + 0] = (i == c) ? 2.0f : 0.0f;
    }
    RETURN_IF_ERROR(writer.Add(p + "mlp.gate_up_proj.weight", spec.dtype, {2 * F, D}, gate_up));
    RETURN_IF_ERROR(writer.Add(p + "mlp.down_proj.weight", spec.dtype, {D, F}, down));
    if (config.has_post_norms()) RETURN_IF_ERROR(norm("post_mlp_layernorm.weight", false));
  }
  {
    std::vector<float> w = RandomValues(seed, "model.norm.weight", D, 1.0f, 0.06f);  // [D]
    if (spec.massive_activations) {
      for (int64_t i = 0; i < D; ++i) w[i] = (i == c) ? 1e-4f : w[i] * norm_rescale;
    }
    RETURN_IF_ERROR(writer.Add("model.norm.weight", spec.dtype, {D}, w));
  }
  if (!config.tie_word_embeddings) {
    RETURN_IF_ERROR(add("lm_head.weight", {V, D}, 0.0f,
                        static_cast<float>(spec.logit_scale) * inv_sqrt_d));  // [V, D]
  }
  return writer.Finish();
}

}  // namespace glm
