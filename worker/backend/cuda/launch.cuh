// Kernel launches with programmatic dependent launch (PDL, sm90+).
//
// A decode step at batch 1 is ~450 kernels of 2-40 us; without PDL each one starts only after
// its predecessor has fully drained, so every boundary costs the launch latency plus the DRAM
// ramp of the next kernel. With PDL the next kernel's blocks become resident while the current
// one still runs, do the work that does not depend on it (a GEMV issues its first weight loads),
// and wait in GridDependencyWait() until the predecessor has completed and its writes are
// visible. The rules every kernel launched through LaunchKernel follows:
//   - every block calls GridDependencyWait() before it reads anything an earlier kernel wrote
//     and before it writes anything a concurrent predecessor may still read, and at least one
//     block of every launch waits before exiting (every block, unless it does no work at all);
//     so kernel N+1 cannot complete before kernel N has, and the chain stays ordered;
//   - LaunchDependents() may be called anywhere (after the wait, by convention): it only lets the
//     next kernel's blocks be scheduled early, never lets them pass their own wait.
// On devices below sm90, or with GLM_CUDA_PDL=0, launches are plain stream-ordered launches and
// the two device calls compile to nothing / return at once.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace glm {
namespace cuda {

// Whether launches carry the PDL attribute (set once by the backend from the device's compute
// capability and GLM_CUDA_PDL; off by default, so tests and tools get plain launches).
void SetProgrammaticLaunch(bool enabled);
bool ProgrammaticLaunchEnabled();

// The current device's SM count and compute capability major, queried once per process (one
// device per process); 0 when the query fails (the CUDA error is cleared).
int DeviceSmCount();
int DeviceComputeMajor();

// A positive integer from the environment, or `fallback`: the GLM_CUDA_* tuning switches that
// benchmarks A/B (tools/glm-bench/device_run.sh ab-VAR=VALUE); unset in production.
int PositiveEnvOr(const char* name, int fallback);
// An on/off switch from the environment: on unless it is set to exactly "0" (the same kind of
// benchmark switch: GLM_CUDA_PDL, GLM_CUDA_WARMUP, ...).
bool EnvSwitchOn(const char* name);

__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void LaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The kernels launched through LaunchKernel, by host symbol: RewriteProgrammaticEdges tells them
// from the cuBLAS kernels of a captured graph. LaunchKernel notes them only once
// SetNoteOwnKernels(true) has been called (by a backend running GraphEdgeMode::kForeignUpstream,
// the one reader), so the launch path takes no lock otherwise.
void SetNoteOwnKernels(bool on);
bool NotingOwnKernels();
void NoteOwnKernel(const void* kernel);
bool IsOwnKernel(const void* kernel);

// Decode-graph edges (GLM_CUDA_GRAPH_EDGES, an A/B switch; off by default). A PDL launch captured
// into a graph becomes a programmatic edge from the kernel node before it, which fires when every
// block of that kernel has called LaunchDependents() or exited: after a cuBLAS GEMM (which never
// calls it) only once its last block has exited, so the next kernel's launch and fill follow
// the GEMM's drain. Rewritten to fire at the upstream's launch completion (every block of it has
// begun: cudaGraphKernelNodePortLaunchCompletion), the downstream kernel launches while the
// upstream's last wave runs, its blocks take the SMs that wave leaves idle and do their pre-wait
// work there. What they read still waits in GridDependencyWait(): griddepcontrol.wait returns
// only once the prerequisite grid has completed and its writes are visible, whichever port the
// edge fires from, so results do not change (tests/gpu/backend_test.cc checks every logit).
//   kForeignUpstream: only edges whose upstream kernel is not one of ours (cuBLAS -> own kernel;
//         needs SetNoteOwnKernels(true) before the capture, else every upstream counts as foreign);
//   kAll: every programmatic edge (own -> own too: ours call LaunchDependents() near their start,
//         so for those it moves the trigger only a little).
enum class GraphEdgeMode { kOff = 0, kForeignUpstream = 1, kAll = 2 };
// GLM_CUDA_GRAPH_EDGES (1 or 2; anything else, or unset: off), read at every call.
GraphEdgeMode GraphEdgeModeFromEnv();
// Rewrites the programmatic edges of `graph` that `mode` selects; *rewritten: how many. The
// process-wide total is RewrittenGraphEdges() (tests).
cudaError_t RewriteProgrammaticEdges(cudaGraph_t graph, GraphEdgeMode mode, int* rewritten);
int64_t RewrittenGraphEdges();

// kernel<<<grid, block, smem, stream>>>(args...) with the PDL attribute when enabled; returns the
// launch's error.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                         cudaStream_t stream, Args&&... args) {
  if (NotingOwnKernels()) NoteOwnKernel(reinterpret_cast<const void*>(kernel));
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = ProgrammaticLaunchEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...);
}

}  // namespace cuda
}  // namespace glm
