// A small cuBLASLt autotuner for the backend's decode-sized GEMMs.
//
// The problem is exactly CudaBackend::Gemm's cublasGemmEx call:
//   row-major y[M, N] = alpha * x[M, K] . w[N, K]^T
//   == column-major D[N, M] = alpha * op(A) . B, A = w (K x N, ld K, TRANSA = T),
//      B = x (K x M, ld K), C = D = y (N x M, ld N), beta = 0;
// x and w in the weight type, y in the act type, CUBLAS_COMPUTE_32F with fp32 scale (no TF32).
//
// Tuning is per class key (N, K, types, alpha mode, pointer alignments, M rounded up to a power
// of two >= 8; the backend's warm-up runs each class's own size first, so the decode graphs of
// that size, the full batches, get the algorithm timed for them): the first eager call of a class asks
// cublasLtMatmulAlgoGetHeuristic for up to 16 candidates at its own M, times them on the stream,
// then split-K variants (2..8, fp32 partials in the workspace) of the two fastest (L2 flushed
// before every run, so the weights come from HBM as in a real step; one warm-up, then 5 timed
// runs, median; a candidate whose first timed run is 1.5x the best so far is dropped; about 20 ms
// of timing per class, first-use kernel loads aside, 100 ms at most), keeps the fastest (the
// heuristic's first wins ties within 1%) and logs one INFO line (GLM_LOG_LEVEL=debug: one line
// per candidate). An opt-in third phase (set_wide_search, GLM_CUDA_LT_WIDE=1) also times the
// configuration space around the fastest candidates (measured neutral end to end on an H100:
// docs/PERFORMANCE-cuda-notes.md v20). Every exact M of the
// class then reuses that algorithm (validated with cublasLtMatmulAlgoCheck for the exact shape,
// else heuristic candidate 0), so arbitrary mixed-step sizes cost no more tuning.
// While the stream is capturing a CUDA graph nothing is timed: an untuned class runs heuristic
// candidate 0 (and is tuned at its next eager call; the graph keeps candidate 0). Tuning
// synchronizes the stream (host waits for the step's queued work first). Timing runs overwrite y;
// the real run comes last. Tuned choices are shared process-wide (per device and
// workspace size), so two backends in one process pick the same algorithms (same numerics).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/backend/cuda/kernels.h"

namespace glm {

// The cuBLAS / cuBLASLt data type of a storage type (the backend's cublasGemmEx, the tuner, tests).
inline cudaDataType_t CudaDataType(DType dt) {
  switch (dt) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

class LtGemmTuner {
 public:
  // The M range the tuner takes: above the GEMV's (M <= 4), up to decode buckets and small mixed
  // steps. Larger M (prefill) stay on cublasGemmEx; Run refuses M outside. GLM_CUDA_LT_MAX_M
  // (a benchmark switch, read once) moves the upper bound, e.g. to time prefill-sized GEMMs.
  static constexpr int kMinM = 5;
  static constexpr int kMaxM = 512;
  static int MaxM();
  static bool Handles(int M) { return M >= kMinM && M <= MaxM(); }
  // False when GLM_CUDA_LT_TUNE=0 (A/B measurements against plain cublasGemmEx).
  static bool EnabledByEnv();

  // workspace: device memory shared with the cuBLAS handle on the same stream (never used
  // concurrently); it must outlive the tuner. share_choices: look up / publish tuned choices in the
  // process-wide table (off in tests that must see tuning happen). Allocates an L2-sized flush
  // buffer on the current device.
  static absl::StatusOr<std::unique_ptr<LtGemmTuner>> Create(void* workspace, size_t workspace_bytes,
                                                             bool share_choices = true);
  ~LtGemmTuner();
  // Device memory the tuner holds (its L2 flush buffer), for the backend's memory report.
  size_t device_bytes() const { return flush_bytes_; }
  LtGemmTuner(const LtGemmTuner&) = delete;
  LtGemmTuner& operator=(const LtGemmTuner&) = delete;

  // y = alpha * x . w^T as above. alpha_dev: device fp32 scalar (pointer mode device, beta a device
  // zero owned by the tuner) or null (alpha = 1, beta = 0 on the host).
  // Errors: InvalidArgument for M outside [kMinM, kMaxM] or a non-positive N / K;
  // Unimplemented when cuBLASLt has no working algorithm for the key (the caller may fall back to
  // cublasGemmEx; remembered, so later calls answer at once); Internal for CUDA / cuBLAS failures.
  absl::Status Run(cudaStream_t stream, cuda::KernelTypes types, const void* x, const void* w,
                   void* y, int M, int N, int K, const float* alpha_dev);

  // Median time in microseconds of `launch` (one kernel sequence on `stream`) the way candidates
  // are timed: one untimed warm-up, then kTimedRuns runs each after an L2 flush. Synchronizes the
  // stream; not while capturing. For the backend's own kernels against Run's choice.
  absl::StatusOr<float> TimeUs(cudaStream_t stream, const std::function<cudaError_t()>& launch);

  // Phase 3 of tuning (off by default; GLM_CUDA_LT_WIDE=1 turns it on for new tuners): after the
  // heuristic's candidates and their split-K variants, the configurations around the fastest ones
  // (every tile and stage count the algorithm lists x seven cluster shapes, auto and 1x1 to 2x2,
  // for the three fastest algorithm ids, then split-K with fp32 partials, CTA swizzle and custom
  // options of the three fastest configurations), each validated with cublasLtMatmulAlgoCheck,
  // timed like the others within GLM_CUDA_LT_WIDE_BUDGET_MS (default 500) a key.
  static bool WideSearchByEnv();
  void set_wide_search(bool on) { wide_ = on; }
  // Phase-3 configurations timed to the end (not dropped) over every key this tuner timed.
  int wide_timed() const { return wide_timed_; }

  // The L2 flush before every timed run: a memset of an L2-sized buffer (default), or with
  // set_read_flush(true) / GLM_CUDA_LT_FLUSH_READ=1 a read of it (LaunchL2FlushRead), which
  // leaves no dirty lines for the timed run to write back (an A/B switch: v20 in
  // docs/PERFORMANCE-cuda-notes.md reads the memset flush as doubling a small GEMM's DRAM
  // traffic).
  void set_read_flush(bool on) { read_flush_ = on; }

  // Class keys with a timed algorithm in this tuner (timed here or taken from the process-wide
  // table).
  int tuned_keys() const { return static_cast<int>(class_algos_.size()); }
  // Class keys this tuner timed itself.
  int timed_keys() const { return timed_keys_; }
  // Exact shapes running heuristic candidate 0 untimed (first seen while capturing).
  int untimed_keys() const;
  // The M class: the smallest power of two >= max(M, 8).
  static int MClass(int M);

 private:
  // (M, N, K, act, weight, alpha on device, alignment of x, w, y in bytes); for a class, M is
  // MClass(M).
  using Key = std::tuple<int, int, int, int, int, bool, int, int, int>;
  struct Entry {  // one exact shape
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool have_algo = false;
    bool final = false;        // algo settled (the class's timed choice, or its fallback)
    bool unsupported = false;  // no working cuBLASLt algorithm
  };

  LtGemmTuner() = default;
  absl::Status MakeDescriptors(const Key& key, Entry* e) const;
  // Up to max_results candidates for the exact shape (alignments and workspace as preferences);
  // *returned = 0 when cuBLASLt has none.
  absl::Status Heuristics(const Key& key, const Entry& e, int max_results,
                          cublasLtMatmulHeuristicResult_t* results, int* returned) const;
  // Times the candidates for `key` (exact) and settles e; e->unsupported when none runs.
  absl::Status Tune(cudaStream_t stream, const Key& key, const Key& class_key, Entry* e,
                    const void* x, const void* w, void* y, const void* alpha, const void* beta);
  // The class's algorithm for this exact shape: AlgoCheck, else heuristic candidate 0.
  absl::Status Adopt(const Key& key, const cublasLtMatmulAlgo_t& algo, Entry* e) const;
  cublasStatus_t Matmul(cudaStream_t stream, const Entry& e, const cublasLtMatmulAlgo_t& algo,
                        const void* x, const void* w, void* y, const void* alpha, const void* beta) const;
  // The timed runs of TimeUs and Tune: kTimedRuns launches, each after an L2 flush; the median in
  // ms, or +inf when a launch fails (*failed: the stream is synchronized, the error cleared) or
  // the first run takes over drop_above_ms (the others are not launched).
  absl::StatusOr<float> MedianMs(cudaStream_t stream, const std::function<bool()>& launch,
                                 float drop_above_ms, bool* failed);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool share_ = true;
  int device_ = 0;
  float* dev_zero_ = nullptr;  // beta for pointer mode device
  void* flush_ = nullptr;      // L2-sized buffer written before each timed run
  size_t flush_bytes_ = 0;
  static constexpr int kTimedRuns = 5;
  cudaEvent_t events_[2 * kTimedRuns] = {};
  std::map<Key, Entry> entries_;                     // exact shapes
  std::map<Key, cublasLtMatmulAlgo_t> class_algos_;  // timed choices
  int timed_keys_ = 0;
  bool wide_ = false;
  bool read_flush_ = false;
  int wide_timed_ = 0;
};

}  // namespace glm
