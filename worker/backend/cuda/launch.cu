#include "worker/backend/cuda/launch.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "worker/backend/cuda/kernels.h"

namespace glm {
namespace cuda {
namespace {
std::atomic<bool> g_programmatic_launch{false};
std::atomic<int> g_norm_stage_override{-1};  // OverrideNormWeightStaging

int CurrentDeviceAttribute(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return v;
}
}  // namespace

int DeviceSmCount() {
  static const int v = CurrentDeviceAttribute(cudaDevAttrMultiProcessorCount);
  return v;
}

int DeviceComputeMajor() {
  static const int v = CurrentDeviceAttribute(cudaDevAttrComputeCapabilityMajor);
  return v;
}

int PositiveEnvOr(const char* name, int fallback) {
  const char* env = std::getenv(name);
  const int v = env != nullptr ? std::atoi(env) : 0;
  return v > 0 ? v : fallback;
}

bool EnvSwitchOn(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

bool NormWeightStaging(NormStageSite site) {
  static const int from_env = [] {  // 1 both sites, 0 neither, -1 the defaults
    const char* env = std::getenv("GLM_CUDA_NORM_STAGE");
    if (env == nullptr) return -1;
    return std::strcmp(env, "1") == 0 ? 1 : std::strcmp(env, "0") == 0 ? 0 : -1;
  }();
  const int forced = g_norm_stage_override.load(std::memory_order_relaxed);
  const int mode = forced >= 0 ? forced : from_env;
  const bool on = mode >= 0 ? mode == 1 : site == NormStageSite::kGemvPrologue;
  return DeviceComputeMajor() >= 8 && on;
}

void OverrideNormWeightStaging(int mode) { g_norm_stage_override.store(mode < 0 ? -1 : mode != 0); }

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunchEnabled() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace glm
