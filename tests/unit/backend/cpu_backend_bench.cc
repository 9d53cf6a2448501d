// Decode speed of the CPU backend on a random checkpoint:
//   glm_cpu_backend_bench [shape=small|tiny|demo] [threads=0] [decode_tokens=32] [batch=1]
// "small" is the ~100M-parameter shape of glm-mkmodel's preset (V 8192, D 1024, F 2816, L 8,
// H 16, Hkv 2, Dh 64). Prints load time, prefill and decode tokens per second.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/unit/backend/reference_model.h"
#include "worker/backend/backend.h"
#include "worker/model/safetensors.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int Run(int argc, char** argv) {
  using glm::Architecture;
  const std::string shape = argc > 1 ? argv[1] : "small";
  const int threads = argc > 2 ? std::atoi(argv[2]) : 0;
  const int decode_tokens = argc > 3 ? std::atoi(argv[3]) : 32;
  const int batch = argc > 4 ? std::atoi(argv[4]) : 1;
  glm::ModelConfig config;
  if (shape == "tiny") {
    config = glm::testing_backend::SmallConfig(Architecture::kGlm4, 512, 64, 128, 2, 4, 2, 16);
  } else if (shape == "demo") {
    config = glm::testing_backend::SmallConfig(Architecture::kGlm4, 2048, 256, 704, 4, 8, 2, 32);
  } else if (shape == "small") {
    config = glm::testing_backend::SmallConfig(Architecture::kGlm4, 8192, 1024, 2816, 8, 16, 2, 64);
  } else {
    std::fprintf(stderr, "unknown shape '%s': use tiny, demo or small\n", shape.c_str());
    return 2;
  }
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("glm_cpu_bench_" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  auto start = std::chrono::steady_clock::now();
  {
    auto model = glm::testing_backend::MakeRandomModel(config, 1);
    absl::Status written = glm::testing_backend::WriteCheckpoint(model, glm::DType::kBF16, dir);
    if (!written.ok()) {
      std::fprintf(stderr, "%s\n", written.ToString().c_str());
      return 1;
    }
  }
  std::printf("shape %s: %.1fM parameters, checkpoint written in %.1fs\n", shape.c_str(),
              config.NumParameters() / 1e6, Seconds(start));
  auto checkpoint = glm::Checkpoint::Open(dir);
  if (!checkpoint.ok()) {
    std::fprintf(stderr, "%s\n", checkpoint.status().ToString().c_str());
    return 1;
  }
  auto backend = glm::MakeCpuBackend();
  glm::LoadOptions options;
  options.num_threads = threads;
  start = std::chrono::steady_clock::now();
  absl::Status status = backend->Load(config, **checkpoint, options);
  constexpr int32_t kBlockSize = 16;
  const int prompt = 32;
  const int32_t blocks_per_seq = (prompt + decode_tokens + kBlockSize - 1) / kBlockSize;
  if (status.ok()) status = backend->AllocateKvCache(blocks_per_seq * batch, kBlockSize);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("loaded in %.2fs, weights %.1f MB\n", Seconds(start),
              backend->Memory().weights / 1e6);
  std::filesystem::remove_all(dir);

  auto block_table = [&](int s, int32_t context) {
    std::vector<int32_t> t;
    for (int32_t b = 0; b < (context + kBlockSize - 1) / kBlockSize; ++b) t.push_back(s * blocks_per_seq + b);
    return t;
  };
  std::vector<int32_t> last(batch);
  // Prefill every sequence in one step.
  glm::StepBatch step;
  for (int s = 0; s < batch; ++s) {
    glm::SequenceStep seq;
    seq.seq_id = s;
    seq.token_offset = step.num_tokens();
    seq.num_tokens = prompt;
    seq.context_len = prompt;
    seq.block_table = block_table(s, prompt);
    seq.wants_logits = true;
    for (int i = 0; i < prompt; ++i) {
      step.token_ids.push_back((s * 131 + i * 17) % config.vocab_size);
      step.positions.push_back(i);
    }
    step.seqs.push_back(seq);
  }
  std::vector<float> logits;
  start = std::chrono::steady_clock::now();
  status = backend->Forward(step, &logits);
  const double prefill_s = Seconds(start);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("prefill %d x %d tokens: %.3fs, %.1f tok/s\n", batch, prompt, prefill_s,
              batch * prompt / prefill_s);
  auto argmax = [&](int row) {
    const float* l = logits.data() + static_cast<int64_t>(row) * config.vocab_size;
    return static_cast<int32_t>(std::max_element(l, l + config.vocab_size) - l);
  };
  for (int s = 0; s < batch; ++s) last[s] = argmax(s);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < decode_tokens; ++i) {
    glm::StepBatch decode;
    const int32_t context = prompt + i + 1;
    for (int s = 0; s < batch; ++s) decode.AddDecode(s, last[s], context - 1, block_table(s, context));
    status = backend->Forward(decode, &logits);
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      return 1;
    }
    for (int s = 0; s < batch; ++s) last[s] = argmax(s);
  }
  const double decode_s = Seconds(start);
  std::printf("decode batch %d, %d steps: %.3fs, %.1f steps/s, %.1f tok/s (%d threads)\n", batch,
              decode_tokens, decode_s, decode_tokens / decode_s, batch * decode_tokens / decode_s,
              threads);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
