#include "worker/backend/cuda/launch.cuh"

#include <atomic>

namespace glm {
namespace cuda {
namespace {
std::atomic<bool> g_programmatic_launch{false};
}  // namespace

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunchEnabled() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace glm
