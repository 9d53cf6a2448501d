#include "worker/backend/cuda/launch.cuh"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "worker/backend/cuda/kernels.h"

namespace glm {
namespace cuda {
namespace {
std::atomic<bool> g_programmatic_launch{false};
std::atomic<int> g_norm_stage_override{-1};  // OverrideNormWeightStaging
std::atomic<int> g_norm_threads_override{-1};  // OverrideNormBlockThreads

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

int NormBlockThreads() {
  static const int from_env = PositiveEnvOr("GLM_CUDA_NORM_THREADS", 256) == 128 ? 128 : 256;
  const int forced = g_norm_threads_override.load(std::memory_order_relaxed);
  return forced == 128 || forced == 256 ? forced : from_env;
}

void OverrideNormBlockThreads(int threads) {
  g_norm_threads_override.store(threads == 128 || threads == 256 ? threads : -1);
}

namespace {
// Every thread reads its 16-byte vectors through the L2 (ld.global.cg) and folds them into a
// value whose store never happens in practice: the loads cannot be dropped, and the one
// store that could happen lands in the buffer itself.
__global__ void L2FlushReadKernel(int4* __restrict__ p, int64_t n) {
  int4 acc = make_int4(0, 0, 0, 0);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int4 v = __ldcg(p + i);
    acc.x ^= v.x;
    acc.y += v.y;
    acc.z ^= v.z;
    acc.w += v.w;
  }
  if (acc.x == 0x5bd1e995 && acc.y == 0x1b873593 && acc.z == 0x68e31da4 && acc.w == 0x2545f491) p[0] = acc;
}
}  // namespace

cudaError_t LaunchL2FlushRead(void* buf, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (buf == nullptr || bytes % 16 != 0 || reinterpret_cast<uintptr_t>(buf) % 16 != 0) return cudaErrorInvalidValue;
  const int blocks = 4 * (DeviceSmCount() > 0 ? DeviceSmCount() : 1);
  L2FlushReadKernel<<<blocks, 256, 0, stream>>>(static_cast<int4*>(buf), static_cast<int64_t>(bytes / 16));
  return cudaGetLastError();
}

namespace {
std::mutex g_own_kernels_mu;
std::unordered_set<const void*>& OwnKernels() {
  static auto* kernels = new std::unordered_set<const void*>();  // never destroyed: used at exit
  return *kernels;
}
std::atomic<int64_t> g_rewritten_edges{0};
std::atomic<bool> g_note_own_kernels{false};
}  // namespace

void SetNoteOwnKernels(bool on) { g_note_own_kernels.store(on); }
bool NotingOwnKernels() { return g_note_own_kernels.load(std::memory_order_relaxed); }

void NoteOwnKernel(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_own_kernels_mu);
  OwnKernels().insert(kernel);
}

bool IsOwnKernel(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_own_kernels_mu);
  return OwnKernels().count(kernel) != 0;
}

GraphEdgeMode GraphEdgeModeFromEnv() {
  const char* env = std::getenv("GLM_CUDA_GRAPH_EDGES");
  if (env == nullptr) return GraphEdgeMode::kOff;
  if (std::strcmp(env, "1") == 0) return GraphEdgeMode::kForeignUpstream;
  if (std::strcmp(env, "2") == 0) return GraphEdgeMode::kAll;
  return GraphEdgeMode::kOff;
}

cudaError_t RewriteProgrammaticEdges(cudaGraph_t graph, GraphEdgeMode mode, int* rewritten) {
  *rewritten = 0;
  if (mode == GraphEdgeMode::kOff) return cudaSuccess;
  size_t n = 0;
  cudaError_t err = cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n);
  if (err != cudaSuccess || n == 0) return err;
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  err = cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &n);
  if (err != cudaSuccess) return err;
  std::vector<cudaGraphNode_t> sel_from, sel_to;
  std::vector<cudaGraphEdgeData> old_data, new_data;
  for (size_t i = 0; i < n; ++i) {
    if (data[i].type != cudaGraphDependencyTypeProgrammatic ||
        data[i].from_port != cudaGraphKernelNodePortProgrammatic) {
      continue;
    }
    if (mode == GraphEdgeMode::kForeignUpstream) {
      cudaKernelNodeParams params = {};
      if (cudaGraphKernelNodeGetParams(from[i], &params) == cudaSuccess && IsOwnKernel(params.func)) continue;
      (void)cudaGetLastError();  // a node the runtime cannot describe counts as foreign
    }
    sel_from.push_back(from[i]);
    sel_to.push_back(to[i]);
    old_data.push_back(data[i]);
    cudaGraphEdgeData early = data[i];
    early.from_port = cudaGraphKernelNodePortLaunchCompletion;
    new_data.push_back(early);
  }
  if (sel_from.empty()) return cudaSuccess;
  err = cudaGraphRemoveDependencies(graph, sel_from.data(), sel_to.data(), old_data.data(), sel_from.size());
  if (err != cudaSuccess) return err;
  err = cudaGraphAddDependencies(graph, sel_from.data(), sel_to.data(), new_data.data(), sel_from.size());
  if (err != cudaSuccess) return err;
  *rewritten = static_cast<int>(sel_from.size());
  g_rewritten_edges.fetch_add(*rewritten);
  return cudaSuccess;
}

int64_t RewrittenGraphEdges() { return g_rewritten_edges.load(); }

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunchEnabled() { return g_programmatic_launch.load(std::memory_order_relaxed); }

}  // namespace cuda
}  // namespace glm
