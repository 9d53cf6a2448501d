#include "tools/glm-bench/kernel_trace.h"

#include <cuda_runtime.h>
#include <cupti.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"

namespace glm::bench {
namespace {

#if CUPTI_API_VERSION >= 130000
using KernelRecord = CUpti_ActivityKernel10;
using MemcpyRecord = CUpti_ActivityMemcpy6;
using MemsetRecord = CUpti_ActivityMemset4;
#define GLM_KERNEL_TRACE_SUPPORTED 1
#endif

// One GPU operation of the timeline: a kernel (grid set) or a copy / memset (grid 0).
struct Op {
  uint64_t start = 0, end = 0;
  uint32_t grid[3] = {0, 0, 0}, block[3] = {0, 0, 0};
  uint32_t stream = 0;
  int name = 0;  // into State::names
};

// CUPTI hands buffers to plain function pointers: the one trace's state lives here.
struct State {
  std::mutex mu;
  std::vector<Op> ops;
  std::vector<std::string> names;
  std::unordered_map<std::string, int> name_ids;
  std::vector<std::pair<uint64_t, uint64_t>> windows;  // [open, close) CUPTI timestamps
  uint64_t open_at = 0;
  bool open = false;
  size_t dropped = 0;

  int NameId(const std::string& name) {
    auto [it, inserted] = name_ids.emplace(name, static_cast<int>(names.size()));
    if (inserted) names.push_back(name);
    return it->second;
  }
};
State* g_state = nullptr;
// Guards g_state itself: CUPTI may hand back a buffer from its own thread after the trace has
// been stopped and g_state deleted (seen on an H100: a segfault in the Engine run that follows);
// such records are dropped.
std::mutex g_state_mu;

constexpr size_t kBufferBytes = size_t{8} << 20;
constexpr size_t kAlign = 8;

absl::Status CuptiError(const char* what, CUptiResult r) {
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  return absl::InternalError(absl::StrFormat("CUPTI %s: %s (%d); --kernel_trace needs a GPU", what,
                                             text ? text : "?", static_cast<int>(r)));
}

#if defined(GLM_KERNEL_TRACE_SUPPORTED)
void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kAlign, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

const char* CopyName(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[CUDA memcpy Host-to-Device]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[CUDA memcpy Device-to-Host]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[CUDA memcpy Device-to-Device]";
    default: return "[CUDA memcpy]";
  }
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> state_lock(g_state_mu);
  if (g_state != nullptr) {
    std::lock_guard<std::mutex> lock(g_state->mu);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
      Op op;
      if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
        const auto* k = reinterpret_cast<const KernelRecord*>(record);
        op = {k->start, k->end, {static_cast<uint32_t>(k->gridX), static_cast<uint32_t>(k->gridY),
                                 static_cast<uint32_t>(k->gridZ)},
              {static_cast<uint32_t>(k->blockX), static_cast<uint32_t>(k->blockY),
               static_cast<uint32_t>(k->blockZ)},
              k->streamId, g_state->NameId(k->name ? k->name : "?")};
      } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
        const auto* m = reinterpret_cast<const MemcpyRecord*>(record);
        op.start = m->start;
        op.end = m->end;
        op.stream = m->streamId;
        op.name = g_state->NameId(CopyName(m->copyKind));
      } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
        const auto* m = reinterpret_cast<const MemsetRecord*>(record);
        op.start = m->start;
        op.end = m->end;
        op.stream = m->streamId;
        op.name = g_state->NameId("[CUDA memset]");
      } else {
        continue;
      }
      g_state->ops.push_back(op);
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS) g_state->dropped += dropped;
  }
  std::free(buffer);
}
#endif

// A CSV field: quoted, quotes doubled (kernel names hold commas).
std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<std::unique_ptr<KernelTrace>> KernelTrace::Start() {
#if !defined(GLM_KERNEL_TRACE_SUPPORTED)
  return absl::UnimplementedError("--kernel_trace needs CUPTI 13 or newer (built with an older toolkit)");
#else
  {
    std::lock_guard<std::mutex> state_lock(g_state_mu);
    if (g_state) return absl::FailedPreconditionError("a kernel trace is already running");
    g_state = new State;
  }
  std::unique_ptr<KernelTrace> trace(new KernelTrace);
  if (CUptiResult r = cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted); r != CUPTI_SUCCESS) {
    return CuptiError("cuptiActivityRegisterCallbacks", r);
  }
  for (CUpti_ActivityKind kind : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                  CUPTI_ACTIVITY_KIND_MEMSET}) {
    if (CUptiResult r = cuptiActivityEnable(kind); r != CUPTI_SUCCESS) return CuptiError("cuptiActivityEnable", r);
  }
  return trace;
#endif
}

KernelTrace::~KernelTrace() {
#if defined(GLM_KERNEL_TRACE_SUPPORTED)
  for (CUpti_ActivityKind kind : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                  CUPTI_ACTIVITY_KIND_MEMSET}) {
    cuptiActivityDisable(kind);
  }
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> state_lock(g_state_mu);
  delete g_state;
  g_state = nullptr;
#endif
}

void KernelTrace::Open() {
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  std::lock_guard<std::mutex> lock(g_state->mu);
  if (g_state->open) return;
  g_state->open = true;
  g_state->open_at = now;
}

void KernelTrace::Close() {
  // The GPU runs behind the host: a window closes once the work enqueued in it is done.
  cudaDeviceSynchronize();
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  std::lock_guard<std::mutex> lock(g_state->mu);
  if (!g_state->open) return;
  g_state->open = false;
  g_state->windows.emplace_back(g_state->open_at, now);
}

absl::StatusOr<int64_t> KernelTrace::Write(const std::string& path) {
  if (g_state->open) Close();
  if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("kernel trace: cudaDeviceSynchronize: %s", cudaGetErrorString(e)));
  }
  if (CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED); r != CUPTI_SUCCESS) {
    return CuptiError("cuptiActivityFlushAll", r);
  }
  std::lock_guard<std::mutex> lock(g_state->mu);
  std::vector<Op> kept;
  for (const Op& op : g_state->ops) {
    for (const auto& [open, close] : g_state->windows) {
      if (op.start >= open && op.start < close) {
        kept.push_back(op);
        break;
      }
    }
  }
  std::sort(kept.begin(), kept.end(), [](const Op& a, const Op& b) { return a.start < b.start; });
  std::ofstream out(path);
  if (!out) return absl::InvalidArgumentError("--kernel_trace: cannot write " + path);
  out << "Start (ns),Duration (ns),GrdX,GrdY,GrdZ,BlkX,BlkY,BlkZ,Strm,Name\n";
  for (const Op& op : kept) {
    out << op.start << ',' << (op.end - op.start) << ',' << op.grid[0] << ',' << op.grid[1] << ','
        << op.grid[2] << ',' << op.block[0] << ',' << op.block[1] << ',' << op.block[2] << ','
        << op.stream << ',' << Quoted(g_state->names[static_cast<size_t>(op.name)]) << '\n';
  }
  out.close();
  if (!out) return absl::InternalError("--kernel_trace: writing " + path + " failed");
  if (g_state->dropped > 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "kernel trace: CUPTI dropped %d records (the trace in %s misses them)", g_state->dropped, path));
  }
  return static_cast<int64_t>(kept.size());
}

}  // namespace glm::bench
