#include "worker/backend/cuda/launch.cuh"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace glm {
namespace cuda {
namespace {
std::atomic<bool> g_programmatic_launch{false};

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

bool NormWeightStaging() {
  static const bool v = [] {
    const char* env = std::getenv("GLM_CUDA_NORM_STAGE");
    return DeviceComputeMajor() >= 8 && !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return v;
}

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunchEnabled() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace glm
