// The GPU's kernel and copy timeline through CUPTI's activity API (what Nsight Systems records,
// for a machine without it): every kernel, CUDA-graph nodes one by one, with its GPU start and
// end, grid and stream, kept for the windows the caller opens, written as the CSV of
// `nsys stats --report cuda_gpu_trace` so tools/glm-bench/nsys_kernels.py reads either.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace glm::bench {

class KernelTrace {
 public:
  // Starts recording (before the first CUDA call, so no context misses it). One at a time.
  static absl::StatusOr<std::unique_ptr<KernelTrace>> Start();
  ~KernelTrace();

  // Records whose GPU start lies between an Open and the next Close are kept.
  void Open();
  void Close();

  // Waits for the device, flushes CUPTI's buffers and writes the kept records to `path`.
  // Returns how many it wrote; RESOURCE_EXHAUSTED (the file written all the same) when CUPTI
  // dropped records.
  absl::StatusOr<int64_t> Write(const std::string& path);

 private:
  KernelTrace() = default;
};

}  // namespace glm::bench
