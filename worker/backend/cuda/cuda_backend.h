// The CUDA backend: GLM-4 on one GPU, or one tensor-parallel rank's shard with an NCCL
// communicator (LoadOptions::comm).
//
// Weights live on the device in the precision's storage dtype (bf16, fp16, fp32; fp16-safe keeps
// fp16 weights with an fp32 residual stream). GEMMs go to cuBLAS, except decode steps of <= 4
// rows which use the memory-bound GEMV kernel; attention, norms, rotary, SiLU and sampling are
// the kernels in kernels.h. Decode steps of 1..256 sequences replay CUDA graphs captured per
// padded batch size (1, 2, 4, 8, 16, then every 16-32 up to 256). Every sampler (greedy,
// temperature, top-k, top-p, repetition penalty) runs on the device (ForwardSample); the rows it
// cannot finish there (a top-p nucleus or top-k beyond cuda::kSampleCandidates) are sampled on
// the host from the device's fp32 logits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"

namespace glm {

struct GpuInfo {
  int device = 0;
  std::string name;                 // "NVIDIA H100 80GB HBM3"
  int compute_major = 0;            // 9 for sm90
  int compute_minor = 0;
  int64_t memory_total = 0;         // bytes
  int64_t memory_free = 0;          // bytes, at the time of the probe
  int sm_count = 0;
  int driver_version = 0;           // CUDA driver API version, e.g. 13000
  int runtime_version = 0;          // CUDA runtime the binary was built with
  int nccl_version = 0;             // 0 when built without NCCL
  bool supports_bf16() const { return compute_major >= 8; }
  std::string ComputeCapability() const;  // "9.0"
};

// INVALID_ARGUMENT / UNAVAILABLE when no such device (the message says how many there are).
absl::StatusOr<GpuInfo> ProbeGpu(int device);
// Number of visible CUDA devices; 0 (not an error) when there is no driver or device.
int CudaDeviceCount();

// The CUDA backend. Load() fails with FAILED_PRECONDITION when the precision does not suit the
// device (bf16 below sm80), with a message naming what to use instead.
std::unique_ptr<Backend> MakeCudaBackend();

// Measured device-to-device copy bandwidth in bytes/s (bytes read + written, over `bytes` per
// direction, best of a few copies): the roofline glm-bench divides by.
absl::StatusOr<double> MeasureCopyBandwidth(int device, int64_t bytes);

}  // namespace glm
