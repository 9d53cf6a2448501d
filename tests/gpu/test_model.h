// The model the whole-model GPU tests start from: a random-weight GLM-4 checkpoint of a preset
// shape (tools/glm-mkmodel) written to a fresh folder under the temp directory, its config
// loaded and the checkpoint opened. The folder goes when the TestModel does.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "tools/glm-mkmodel/random_checkpoint.h"
#include "worker/model/config.h"
#include "worker/model/safetensors.h"

namespace glm::testing {

class TestModel {
 public:
  TestModel() = default;
  TestModel(TestModel&& o) noexcept
      : dir(std::exchange(o.dir, std::string())), config(std::move(o.config)), ckpt(std::move(o.ckpt)) {}
  TestModel& operator=(TestModel&&) = delete;
  TestModel(const TestModel&) = delete;
  ~TestModel() {
    ckpt.reset();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }

  std::string dir;
  ModelConfig config;
  std::unique_ptr<Checkpoint> ckpt;
};

// tag names the folder (glm_gpu_test_<tag>_<pid>); preset and arch as glm-mkmodel's.
inline absl::StatusOr<TestModel> WriteTestModel(const std::string& tag, const std::string& preset,
                                                Architecture arch, DType dtype = DType::kBF16,
                                                uint64_t seed = 1) {
  auto cfg = PresetConfig(preset, arch);
  if (!cfg.ok()) return cfg.status();
  RandomCheckpointSpec spec;
  spec.config = *cfg;
  spec.dtype = dtype;
  spec.seed = seed;
  TestModel m;
  const auto dir = std::filesystem::temp_directory_path() / ("glm_gpu_test_" + tag + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  m.dir = dir.string();
  if (absl::Status st = WriteRandomCheckpoint(spec, m.dir); !st.ok()) return st;
  auto config = LoadModelConfig(m.dir);
  if (!config.ok()) return config.status();
  m.config = *std::move(config);
  auto ckpt = Checkpoint::Open(m.dir);
  if (!ckpt.ok()) return ckpt.status();
  m.ckpt = *std::move(ckpt);
  return m;
}

}  // namespace glm::testing
