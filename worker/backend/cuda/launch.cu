#include "worker/backend/cuda/launch.cuh"

#include <atomic>

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

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunchEnabled() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace glm
