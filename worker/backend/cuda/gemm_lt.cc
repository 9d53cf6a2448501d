#include "worker/backend/cuda/gemm_lt.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "services/core/logging.h"
#include "services/core/status_macros.h"
#include "worker/backend/cuda/cuda_check.h"
#include "worker/backend/cuda/launch.cuh"

namespace glm {
namespace {

constexpr int kMaxCandidates = 16;
constexpr double kTuneBudgetMs = 20.0;     // timing per key (less first-use kernel loads)
constexpr double kTuneHardCapMs = 100.0;   // the whole key, loads included (at least 5x the budget)
constexpr int32_t kSplits[] = {2, 3, 4, 6, 8};  // split-K variants tried
constexpr int kMinSplitK = 256;            // K per split at least
// Cluster shapes phase 3 tries (sm90 algorithms; others refuse all but AUTO in AlgoCheck).
constexpr uint16_t kClusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                  CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1,
                                  CUBLASLT_CLUSTER_SHAPE_4x1x1, CUBLASLT_CLUSTER_SHAPE_1x4x1,
                                  CUBLASLT_CLUSTER_SHAPE_2x2x1};
constexpr float kDropFactor = 1.5f;     // one timed run this much slower than the best: dropped
constexpr float kKeepFirstWithin = 0.01f;  // heuristic-first wins ties within 1%

// Largest power of two <= 256 dividing the address (cuBLASLt assumes 256 unless told).
int AlignmentOf(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % static_cast<uintptr_t>(a) != 0) a >>= 1;
  return a;
}

// Tuned choices shared by every tuner in the process: (device, workspace bytes, key) -> algo.
template <typename Key>
struct SharedChoices {
  std::mutex mu;
  std::map<std::tuple<int, size_t, Key>, cublasLtMatmulAlgo_t> algos;
};

template <typename Key>
SharedChoices<Key>& Shared() {
  static auto* s = new SharedChoices<Key>();
  return *s;
}

// One configuration attribute of `a`, or `fallback` when cuBLASLt does not answer.
template <typename V>
V AlgoConfig(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoConfigAttributes_t attr, V fallback = V{}) {
  V v = fallback;
  size_t n = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&a, attr, &v, sizeof(v), &n) != CUBLAS_STATUS_SUCCESS) v = fallback;
  return v;
}
template <typename V>
V AlgoCap(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t attr) {
  V v{};
  size_t n = 0;
  cublasLtMatmulAlgoCapGetAttribute(&a, attr, &v, sizeof(v), &n);
  return v;
}
// A capability that is a list of uint32 ids (tile or stage ids); empty when the algorithm has none.
std::vector<uint32_t> AlgoCapList(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t attr) {
  size_t bytes = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&a, attr, nullptr, 0, &bytes) != CUBLAS_STATUS_SUCCESS) return {};
  std::vector<uint32_t> ids(bytes / sizeof(uint32_t));
  if (ids.empty() ||
      cublasLtMatmulAlgoCapGetAttribute(&a, attr, ids.data(), ids.size() * sizeof(uint32_t), &bytes) !=
          CUBLAS_STATUS_SUCCESS) {
    return {};
  }
  return ids;
}

// "algo 21 tile 18 stages 7 split 1 ..." for the debug log.
std::string Describe(const cublasLtMatmulAlgo_t& a) {
  return absl::StrFormat("algo %d tile %u stages %u split %d reduction %u swizzle %u custom %u cluster %u",
                         AlgoConfig<int32_t>(a, CUBLASLT_ALGO_CONFIG_ID, -1),
                         AlgoConfig<uint32_t>(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
                         AlgoConfig<uint32_t>(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                         AlgoConfig<int32_t>(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 1),
                         AlgoConfig<uint32_t>(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                         AlgoConfig<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                         AlgoConfig<uint32_t>(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                         AlgoConfig<uint16_t>(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

// Phase 3's time budget a key (GLM_CUDA_LT_WIDE_BUDGET_MS).
double WideBudgetMs() {
  static const double ms = cuda::PositiveEnvOr("GLM_CUDA_LT_WIDE_BUDGET_MS", 500);
  return ms;
}

std::string KeyString(int M, int N, int K, DType act, DType weight, bool alpha_dev) {
  return absl::StrFormat("M=%d N=%d K=%d %s.%s->%s alpha=%s", M, N, K, DTypeName(weight),
                         DTypeName(weight), DTypeName(act), alpha_dev ? "device" : "host");
}

// GLM_CUDA_LT_BUDGET_MS: the timing budget per key (prefill-sized keys need more than the default).
double TuneBudgetMs() {
  static const double ms = cuda::PositiveEnvOr("GLM_CUDA_LT_BUDGET_MS", static_cast<int>(kTuneBudgetMs));
  return ms;
}

}  // namespace

int LtGemmTuner::MaxM() {
  static const int m = std::max(kMinM, cuda::PositiveEnvOr("GLM_CUDA_LT_MAX_M", kMaxM));
  return m;
}

bool LtGemmTuner::EnabledByEnv() { return cuda::EnvSwitchOn("GLM_CUDA_LT_TUNE"); }

bool LtGemmTuner::WideSearchByEnv() { return cuda::PositiveEnvOr("GLM_CUDA_LT_WIDE", 0) > 0; }

absl::StatusOr<std::unique_ptr<LtGemmTuner>> LtGemmTuner::Create(void* workspace, size_t workspace_bytes,
                                                                 bool share_choices) {
  if (workspace == nullptr && workspace_bytes > 0) {
    return absl::InvalidArgumentError("LtGemmTuner: null workspace with a non-zero size");
  }
  std::unique_ptr<LtGemmTuner> t(new LtGemmTuner());
  t->workspace_ = workspace;
  t->workspace_bytes_ = workspace_bytes;
  t->share_ = share_choices;
  t->wide_ = WideSearchByEnv();
  t->read_flush_ = cuda::PositiveEnvOr("GLM_CUDA_LT_FLUSH_READ", 0) > 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&t->device_));
  CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&t->handle_));
  CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&t->dev_zero_), 16));
  CUDA_RETURN_IF_ERROR(cudaMemset(t->dev_zero_, 0, 16));
  int l2 = 0;
  CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, t->device_));
  if (l2 > 0) {
    t->flush_bytes_ = static_cast<size_t>(l2) / 16 * 16;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&t->flush_, t->flush_bytes_));
  }
  for (cudaEvent_t& ev : t->events_) CUDA_RETURN_IF_ERROR(cudaEventCreate(&ev));
  return t;
}

LtGemmTuner::~LtGemmTuner() {
  for (auto& [key, e] : entries_) {
    if (e.op != nullptr) cublasLtMatmulDescDestroy(e.op);
    if (e.a != nullptr) cublasLtMatrixLayoutDestroy(e.a);
    if (e.b != nullptr) cublasLtMatrixLayoutDestroy(e.b);
    if (e.d != nullptr) cublasLtMatrixLayoutDestroy(e.d);
  }
  for (cudaEvent_t ev : events_) {
    if (ev != nullptr) CUDA_CHECK(cudaEventDestroy(ev));
  }
  if (flush_ != nullptr) CUDA_CHECK(cudaFree(flush_));
  if (dev_zero_ != nullptr) CUDA_CHECK(cudaFree(dev_zero_));
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

int LtGemmTuner::untimed_keys() const {
  int n = 0;
  for (const auto& [key, e] : entries_) n += (e.have_algo && !e.final) ? 1 : 0;
  return n;
}

int LtGemmTuner::MClass(int M) {
  int c = 8;
  while (c < M) c *= 2;
  return c;
}

absl::Status LtGemmTuner::MakeDescriptors(const Key& key, Entry* e) const {
  const int M = std::get<0>(key), N = std::get<1>(key), K = std::get<2>(key);
  const bool alpha_dev = std::get<5>(key);
  const cudaDataType_t act = CudaDataType(static_cast<DType>(std::get<3>(key)));
  const cudaDataType_t weight = CudaDataType(static_cast<DType>(std::get<4>(key)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  const int32_t mode = alpha_dev ? CUBLASLT_POINTER_MODE_DEVICE : CUBLASLT_POINTER_MODE_HOST;
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &mode, sizeof(mode)));
  // Column-major: A = w stored K x N (op T -> N x K), B = x stored K x M, C = D = y stored N x M.
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&e->a, weight, K, N, K));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&e->b, weight, K, M, K));
  CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&e->d, act, N, M, N));
  return absl::OkStatus();
}

absl::Status LtGemmTuner::Heuristics(const Key& key, const Entry& e, int max_results,
                                     cublasLtMatmulHeuristicResult_t* results, int* returned) const {
  *returned = 0;
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_bytes_;
  const uint32_t align_x = std::get<6>(key), align_w = std::get<7>(key), align_y = std::get<8>(key);
  auto set = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* v, size_t n) {
    return cublasLtMatmulPreferenceSetAttribute(pref, attr, v, n);
  };
  cublasStatus_t st = set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS) st = set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_w, sizeof(align_w));
  if (st == CUBLAS_STATUS_SUCCESS) st = set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_x, sizeof(align_x));
  if (st == CUBLAS_STATUS_SUCCESS) st = set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_y, sizeof(align_y));
  if (st == CUBLAS_STATUS_SUCCESS) st = set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_y, sizeof(align_y));
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_, e.op, e.a, e.b, e.d, e.d, pref, max_results, results, returned);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // no algorithm for this problem
    *returned = 0;
    return absl::OkStatus();
  }
  CUBLAS_RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

cublasStatus_t LtGemmTuner::Matmul(cudaStream_t stream, const Entry& e, const cublasLtMatmulAlgo_t& algo,
                                   const void* x, const void* w, void* y, const void* alpha,
                                   const void* beta) const {
  return cublasLtMatmul(handle_, e.op, alpha, w, e.a, x, e.b, beta, y, e.d, y, e.d, &algo, workspace_,
                        workspace_bytes_, stream);
}

absl::Status LtGemmTuner::Adopt(const Key& key, const cublasLtMatmulAlgo_t& algo, Entry* e) const {
  cublasLtMatmulHeuristicResult_t check{};
  const cublasStatus_t st = cublasLtMatmulAlgoCheck(handle_, e->op, e->a, e->b, e->d, e->d, &algo, &check);
  if (st == CUBLAS_STATUS_SUCCESS && check.state == CUBLAS_STATUS_SUCCESS &&
      check.workspaceSize <= workspace_bytes_) {
    e->algo = algo;
  } else {  // the class's choice does not fit this M: heuristic candidate 0
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    RETURN_IF_ERROR(Heuristics(key, *e, 1, &result, &returned));
    if (returned == 0) {
      e->unsupported = true;
      return absl::OkStatus();
    }
    e->algo = result.algo;
  }
  e->have_algo = e->final = true;
  return absl::OkStatus();
}

absl::Status LtGemmTuner::Run(cudaStream_t stream, cuda::KernelTypes types, const void* x,
                              const void* w, void* y, int M, int N, int K, const float* alpha_dev) {
  if (!Handles(M)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "LtGemmTuner handles M in [%d, %d] only, got M=%d (use cublasGemmEx / the GEMV)", kMinM, MaxM(), M));
  }
  if (N <= 0 || K <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("LtGemmTuner: bad GEMM shape N=%d K=%d", N, K));
  }
  if (x == nullptr || w == nullptr || y == nullptr) {
    return absl::InvalidArgumentError("LtGemmTuner: null x, w or y");
  }
  const bool dev = alpha_dev != nullptr;
  const Key key{M, N, K, static_cast<int>(types.act), static_cast<int>(types.weight), dev,
                AlignmentOf(x), AlignmentOf(w), AlignmentOf(y)};
  Key class_key = key;
  std::get<0>(class_key) = MClass(M);
  static const float kOne = 1.f, kZero = 0.f;
  const void* alpha = dev ? static_cast<const void*>(alpha_dev) : &kOne;
  const void* beta = dev ? static_cast<const void*>(dev_zero_) : &kZero;
  auto unsupported = [&] {
    return absl::UnimplementedError("cuBLASLt has no working algorithm for " +
                                    KeyString(M, N, K, types.act, types.weight, dev));
  };

  auto [it, inserted] = entries_.try_emplace(key);
  Entry& e = it->second;
  if (inserted) RETURN_IF_ERROR(MakeDescriptors(key, &e));
  if (!e.final && !e.unsupported) {
    // The class's timed choice: this tuner's, else the process-wide table's.
    auto found = class_algos_.find(class_key);
    if (found == class_algos_.end() && share_) {
      auto& shared = Shared<Key>();
      std::lock_guard<std::mutex> lock(shared.mu);
      auto sf = shared.algos.find(std::make_tuple(device_, workspace_bytes_, class_key));
      if (sf != shared.algos.end()) found = class_algos_.emplace(class_key, sf->second).first;
    }
    if (found != class_algos_.end()) {
      RETURN_IF_ERROR(Adopt(key, found->second, &e));
    } else {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream, &capture));
      if (capture == cudaStreamCaptureStatusNone) {
        RETURN_IF_ERROR(Tune(stream, key, class_key, &e, x, w, y, alpha, beta));
      } else if (!e.have_algo) {
        // Capturing a graph: no timing (no syncs allowed); heuristic candidate 0 for now.
        cublasLtMatmulHeuristicResult_t result{};
        int returned = 0;
        RETURN_IF_ERROR(Heuristics(key, e, 1, &result, &returned));
        if (returned == 0) {
          e.unsupported = true;
        } else {
          e.algo = result.algo;
          e.have_algo = true;
        }
      }
    }
  }
  if (e.unsupported) return unsupported();
  CUBLAS_RETURN_IF_ERROR(Matmul(stream, e, e.algo, x, w, y, alpha, beta));
  return absl::OkStatus();
}

absl::StatusOr<float> LtGemmTuner::MedianMs(cudaStream_t stream, const std::function<bool()>& launch,
                                             float drop_above_ms, bool* failed) {
  *failed = false;
  float runs[kTimedRuns];
  int n = 0;
  for (int k = 0; k < kTimedRuns; ++k) {
    if (flush_ != nullptr) {
      CUDA_RETURN_IF_ERROR(read_flush_ ? cuda::LaunchL2FlushRead(flush_, flush_bytes_, stream)
                                       : cudaMemsetAsync(flush_, k & 0xff, flush_bytes_, stream));
    }
    CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[2 * k], stream));
    if (!launch()) {
      *failed = true;
      (void)cudaGetLastError();  // a refused launch must not surface in the next kernel's check
      CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));  // surfaces a faulting kernel
      return std::numeric_limits<float>::infinity();
    }
    CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[2 * k + 1], stream));
    ++n;
    if (k == 0) {  // one timed run first: drop clearly slower candidates early
      CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[1]));
      CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&runs[0], events_[0], events_[1]));
      if (runs[0] > drop_above_ms) return std::numeric_limits<float>::infinity();
    }
  }
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[2 * n - 1]));
  for (int k = 1; k < n; ++k) {
    CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&runs[k], events_[2 * k], events_[2 * k + 1]));
  }
  std::sort(runs, runs + n);
  return runs[n / 2];
}

absl::StatusOr<float> LtGemmTuner::TimeUs(cudaStream_t stream, const std::function<cudaError_t()>& launch) {
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  CUDA_RETURN_IF_ERROR(launch());
  cudaError_t err = cudaSuccess;
  bool failed = false;
  auto ms = MedianMs(
      stream,
      [&] {
        err = launch();
        return err == cudaSuccess;
      },
      std::numeric_limits<float>::infinity(), &failed);
  if (!ms.ok()) return ms.status();
  CUDA_RETURN_IF_ERROR(err);
  return *ms * 1e3f;
}

absl::Status LtGemmTuner::Tune(cudaStream_t stream, const Key& key, const Key& class_key, Entry* e,
                               const void* x, const void* w, void* y, const void* alpha,
                               const void* beta) {
  using Clock = std::chrono::steady_clock;
  auto ms_since = [](Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  };
  // Drain the step's work queued so far, so that neither the budget nor the first candidate's
  // timing includes it (an eager step ends with a sync anyway).
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  const Clock::time_point start = Clock::now();
  const std::string what = KeyString(std::get<0>(key), std::get<1>(key), std::get<2>(key),
                                     static_cast<DType>(std::get<3>(key)),
                                     static_cast<DType>(std::get<4>(key)), std::get<5>(key));

  cublasLtMatmulHeuristicResult_t results[kMaxCandidates] = {};
  int returned = 0;
  RETURN_IF_ERROR(Heuristics(key, *e, kMaxCandidates, results, &returned));
  if (returned == 0) {
    e->unsupported = true;
    GLM_LOG(WARNING) << "cublasLt: no algorithm for " << what << "; using cublasGemmEx";
    return absl::OkStatus();  // Run answers Unimplemented
  }
  struct Candidate {
    cublasLtMatmulAlgo_t algo;
    std::string name;
    float ms = std::numeric_limits<float>::infinity();  // median; inf: failed or dropped
  };
  std::vector<Candidate> cands;
  for (int i = 0; i < returned; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS && results[i].workspaceSize <= workspace_bytes_) {
      cands.push_back({results[i].algo, absl::StrFormat("heuristic #%d", i)});
    }
  }

  // Timing budget: wall time less the warm-up launches (first-use kernel loading, paid once per
  // kernel and process), plus a hard cap on the whole key.
  double spent_ms = 0, last_cost_ms = 0;
  float best_ms = std::numeric_limits<float>::infinity();
  int tried = 0, timed = 0;
  auto over_budget = [&] {
    return std::isfinite(best_ms) &&
           (spent_ms + last_cost_ms > TuneBudgetMs() ||
            ms_since(start) > std::max(kTuneHardCapMs, 5 * TuneBudgetMs()));
  };
  auto time_candidate = [&](Candidate& c) -> absl::Status {
    const Clock::time_point t0 = Clock::now();
    ++tried;
    // Warm-up (module load, first-launch setup): untimed.
    if (Matmul(stream, *e, c.algo, x, w, y, alpha, beta) != CUBLAS_STATUS_SUCCESS) {
      (void)cudaGetLastError();  // a refused launch must not surface in the next kernel's check
      return absl::OkStatus();
    }
    const double warm_ms = ms_since(t0);
    bool failed = false;
    auto run = [&] { return Matmul(stream, *e, c.algo, x, w, y, alpha, beta) == CUBLAS_STATUS_SUCCESS; };
    ASSIGN_OR_RETURN(c.ms, MedianMs(stream, run, kDropFactor * best_ms, &failed));
    if (std::isfinite(c.ms)) {
      ++timed;
      best_ms = std::min(best_ms, c.ms);
    }
    last_cost_ms = std::max(0.0, ms_since(t0) - warm_ms);
    spent_ms += last_cost_ms;
    GLM_LOG(DEBUG) << "cublasLt " << what << ": " << c.name << " (" << Describe(c.algo)
                   << "): " << (std::isfinite(c.ms) ? absl::StrFormat("%.1f us", c.ms * 1e3f)
                                                    : std::string(failed ? "failed" : "dropped"));
    return absl::OkStatus();
  };

  // Phase 1: the heuristic's candidates, in its order.
  for (Candidate& c : cands) {
    if (over_budget()) break;
    RETURN_IF_ERROR(time_candidate(c));
  }
  const size_t num_heuristic = cands.size();
  // Phase 2: split-K variants (fp32 partial sums in the workspace, deterministic) of the two
  // fastest heuristic candidates: small-M, small-N GEMMs leave most SMs idle without them.
  std::vector<size_t> order;
  for (size_t i = 0; i < num_heuristic; ++i) {
    if (std::isfinite(cands[i].ms)) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cands[a].ms < cands[b].ms; });
  if (order.size() > 2) order.resize(2);
  const int K = std::get<2>(key);
  for (size_t base : order) {
    const cublasLtMatmulAlgo_t algo = cands[base].algo;
    int32_t split_support = 0, split = 1;
    uint32_t reduction_mask = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &split_support,
                                          sizeof(split_support), &written) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &reduction_mask,
                                          sizeof(reduction_mask), &written) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split),
                                             &written) != CUBLAS_STATUS_SUCCESS) {
      continue;
    }
    if (!split_support || split > 1 || !(reduction_mask & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)) continue;
    for (int32_t s : kSplits) {
      if (K / s < kMinSplitK) break;
      Candidate v{algo, absl::StrFormat("%s split-K %d", cands[base].name, s)};
      const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoConfigSetAttribute(&v.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof(s)) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&v.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                               sizeof(scheme)) != CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoCheck(handle_, e->op, e->a, e->b, e->d, e->d, &v.algo, &check) !=
              CUBLAS_STATUS_SUCCESS ||
          check.state != CUBLAS_STATUS_SUCCESS || check.workspaceSize > workspace_bytes_) {
        continue;
      }
      cands.push_back(std::move(v));
    }
  }
  for (size_t i = num_heuristic; i < cands.size(); ++i) {
    if (over_budget()) break;
    RETURN_IF_ERROR(time_candidate(cands[i]));
  }
  const size_t num_narrow = cands.size();
  if (wide_) {
    // Phase 3 (GLM_CUDA_LT_WIDE=1): the configuration space around the fastest algorithms so far,
    // which the heuristic's 16 answers sample only thinly. Widened budget for this phase.
    const Clock::time_point wide_start = Clock::now();
    auto add = [&](const cublasLtMatmulAlgo_t& algo, const std::string& name) {
      for (const Candidate& c : cands) {
        if (std::memcmp(&c.algo, &algo, sizeof(algo)) == 0) return false;
      }
      cublasLtMatmulHeuristicResult_t check{};
      cublasLtMatmulAlgo_t a = algo;
      if (cublasLtMatmulAlgoCheck(handle_, e->op, e->a, e->b, e->d, e->d, &a, &check) != CUBLAS_STATUS_SUCCESS ||
          check.state != CUBLAS_STATUS_SUCCESS || check.workspaceSize > workspace_bytes_) {
        return false;
      }
      cands.push_back({algo, name});
      return true;
    };
    auto wide_over = [&] { return ms_since(wide_start) > WideBudgetMs(); };
    auto time_from = [&](size_t from) -> absl::Status {
      for (size_t i = from; i < cands.size() && !wide_over(); ++i) RETURN_IF_ERROR(time_candidate(cands[i]));
      return absl::OkStatus();
    };
    auto fastest = [&](size_t n, bool distinct_ids) {
      std::vector<size_t> idx;
      for (size_t i = 0; i < cands.size(); ++i) {
        if (std::isfinite(cands[i].ms)) idx.push_back(i);
      }
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return cands[a].ms < cands[b].ms; });
      std::vector<size_t> out;
      std::vector<int32_t> ids;
      for (size_t i : idx) {
        const int32_t id = AlgoConfig<int32_t>(cands[i].algo, CUBLASLT_ALGO_CONFIG_ID);
        if (distinct_ids && std::find(ids.begin(), ids.end(), id) != ids.end()) continue;
        ids.push_back(id);
        out.push_back(i);
        if (out.size() == n) break;
      }
      return out;
    };
    // 3a: tile x stages x cluster shape of the fastest candidate of each of the 3 fastest ids.
    const size_t a_from = cands.size();
    for (size_t base : fastest(3, true)) {
      const cublasLtMatmulAlgo_t algo = cands[base].algo;
      const std::vector<uint32_t> tiles = AlgoCapList(algo, CUBLASLT_ALGO_CAP_TILE_IDS);
      std::vector<uint32_t> stages = AlgoCapList(algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
      if (stages.empty()) stages.push_back(AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID));
      for (uint32_t tile : tiles) {
        for (uint32_t stage : stages) {
          for (uint16_t cluster : kClusters) {
            cublasLtMatmulAlgo_t v = algo;
            if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile)) !=
                    CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stage, sizeof(stage)) !=
                    CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                                     sizeof(cluster)) != CUBLAS_STATUS_SUCCESS) {
              continue;
            }
            add(v, absl::StrFormat("%s / tile %u stages %u cluster %u", cands[base].name, tile, stage, cluster));
          }
        }
      }
    }
    RETURN_IF_ERROR(time_from(a_from));
    // 3b: split-K, CTA swizzle and custom options of the 3 fastest configurations now.
    const size_t b_from = cands.size();
    for (size_t base : fastest(3, false)) {
      const cublasLtMatmulAlgo_t algo = cands[base].algo;
      const int32_t split_support = AlgoCap<int32_t>(algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT);
      const uint32_t reduction_mask = AlgoCap<uint32_t>(algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK);
      const uint32_t swizzle_max = AlgoCap<uint32_t>(algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT) ? 1 : 0;
      const int32_t custom_max = std::min(AlgoCap<int32_t>(algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX), 7);
      std::vector<std::pair<int32_t, uint32_t>> splits = {{1, CUBLASLT_REDUCTION_SCHEME_NONE}};
      if (split_support) {
        for (int32_t s : kSplits) {
          if (K / s < kMinSplitK) break;
          // fp32 partials only, as phase 2: in place (atomics) is not deterministic, partials in the
          // output type round every split's sum.
          if (reduction_mask & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) {
            splits.emplace_back(s, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
          }
        }
      }
      for (const auto& [s, scheme] : splits) {
        for (uint32_t swizzle = 0; swizzle <= swizzle_max; ++swizzle) {
          for (uint32_t custom = 0; custom <= static_cast<uint32_t>(std::max(custom_max, 0)); ++custom) {
            cublasLtMatmulAlgo_t v = algo;
            if (cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof(s)) !=
                    CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                                     sizeof(scheme)) != CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle,
                                                     sizeof(swizzle)) != CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&v, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom,
                                                     sizeof(custom)) != CUBLAS_STATUS_SUCCESS) {
              continue;
            }
            add(v, absl::StrFormat("%s / split %d reduction %u swizzle %u custom %u", cands[base].name, s, scheme,
                                   swizzle, custom));
          }
        }
      }
    }
    RETURN_IF_ERROR(time_from(b_from));
  }

  int best = -1, first = -1;
  for (size_t i = 0; i < cands.size(); ++i) {
    if (!std::isfinite(cands[i].ms)) continue;
    if (first < 0) first = static_cast<int>(i);
    if (best < 0 || cands[i].ms < cands[best].ms) best = static_cast<int>(i);
  }
  if (best < 0) {
    e->unsupported = true;
    GLM_LOG(WARNING) << "cublasLt: none of " << cands.size() << " candidates ran for " << what
                     << "; using cublasGemmEx";
    return absl::OkStatus();
  }
  // The heuristic's first working choice wins near-ties (timing noise).
  if (cands[first].ms <= (1.f + kKeepFirstWithin) * cands[best].ms) best = first;
  cublasLtMatmulAlgo_t algo = cands[best].algo;
  if (share_) {  // first one published wins, so every tuner in the process agrees
    auto& shared = Shared<Key>();
    std::lock_guard<std::mutex> lock(shared.mu);
    algo = shared.algos.emplace(std::make_tuple(device_, workspace_bytes_, class_key), algo).first->second;
  }
  class_algos_[class_key] = algo;
  ++timed_keys_;
  for (size_t i = num_narrow; i < cands.size(); ++i) wide_timed_ += std::isfinite(cands[i].ms) ? 1 : 0;
  if (std::memcmp(&algo, &cands[best].algo, sizeof(algo)) == 0) {
    e->algo = algo;
    e->have_algo = e->final = true;
  } else {  // another tuner published first (only with concurrent tuners on one device)
    RETURN_IF_ERROR(Adopt(key, algo, e));
  }
  GLM_LOG(INFO) << absl::StrFormat(
      "cublasLt tuned %s (M class %d): %s %.1f us vs heuristic-first %.1f us (%.1f%% faster); "
      "%d of %d candidates timed (%d split-K, %d wide), tuning %.1f ms%s",
      what, std::get<0>(class_key), cands[best].name, cands[best].ms * 1e3f, cands[first].ms * 1e3f,
      100.0 * (cands[first].ms - cands[best].ms) / cands[first].ms, timed, static_cast<int>(cands.size()),
      static_cast<int>(num_narrow - num_heuristic), static_cast<int>(cands.size() - num_narrow), ms_since(start),
      cands.size() > num_narrow ? " (" + Describe(cands[best].algo) + ")" : std::string());
  return absl::OkStatus();
}

}  // namespace glm
