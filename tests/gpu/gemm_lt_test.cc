// LtGemmTuner (worker/backend/cuda/gemm_lt.h) against the backend's cublasGemmEx formulation of
// the same GEMM (row-major y[M, N] = alpha * x[M, K] . w[N, K]^T) and a CPU reference on a few rows:
// every type case, decode-sized shapes, algorithm reuse per key and per M class, the wide search
// (phase 3), the read-only L2 flush, the untimed path
// while a CUDA graph is being captured, and the documented refusals (M outside [5, 512]).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "tests/gpu/gpu_test_util.h"
#include "worker/backend/cuda/gemm_lt.h"

namespace glm {
namespace {

using cuda::KernelTypes;
using testing::Rng;
using testing::RoundThrough;
using testing::TypedBuffer;

constexpr size_t kWorkspaceBytes = 32u << 20;  // the backend's kCublasWorkspaceBytes

struct TypeCase {
  const char* name;
  KernelTypes types;  // {act, weight}
  float tol;          // relative, on top of an absolute floor of tol * sqrt(K) * |alpha|
  bool device_alpha;  // fp16-safe: alpha on the device (pointer mode device)
};
const TypeCase kTypeCases[] = {
    {"bf16", {DType::kBF16, DType::kBF16}, 1e-2f, false},
    {"fp16", {DType::kF16, DType::kF16}, 1e-2f, false},
    {"fp32", {DType::kF32, DType::kF32}, 1e-5f, false},
    {"fp16safe", {DType::kF32, DType::kF16}, 1e-5f, true},
};
constexpr float kDeviceAlpha = 0.5f;

using testing::ExpectClose;

class LtGemmTest : public ::testing::TestWithParam<TypeCase> {
 protected:
  void SetUp() override {
    GLM_REQUIRE_CUDA_DEVICE();
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ASSERT_CUDA(cudaMalloc(&workspace_, kWorkspaceBytes));
    ASSERT_CUDA(cudaMalloc(&scalars_, 16));
    const float host[2] = {kDeviceAlpha, 0.f};  // alpha, zero
    ASSERT_CUDA(cudaMemcpy(scalars_, host, sizeof(host), cudaMemcpyHostToDevice));
    ASSERT_EQ(cublasCreate(&cublas_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(cublas_, stream_), CUBLAS_STATUS_SUCCESS);
    // The reference gets its own workspace: the tuner's must not be touched behind its back
    // (it would be harmless on one stream, but keep the two independent).
    ASSERT_CUDA(cudaMalloc(&ref_workspace_, kWorkspaceBytes));
    ASSERT_EQ(cublasSetWorkspace(cublas_, ref_workspace_, kWorkspaceBytes), CUBLAS_STATUS_SUCCESS);
    auto tuner = LtGemmTuner::Create(workspace_, kWorkspaceBytes, /*share_choices=*/false);
    ASSERT_TRUE(tuner.ok()) << tuner.status();
    tuner_ = std::move(*tuner);
  }
  void TearDown() override {
    tuner_.reset();
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (ref_workspace_ != nullptr) cudaFree(ref_workspace_);
    if (scalars_ != nullptr) cudaFree(scalars_);
    if (workspace_ != nullptr) cudaFree(workspace_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  const float* alpha_dev() const { return GetParam().device_alpha ? scalars_ : nullptr; }
  float alpha() const { return GetParam().device_alpha ? kDeviceAlpha : 1.f; }

  // The backend's cublasGemmEx call (CudaBackend::Gemm) into y.
  void ReferenceGemm(const void* x, const void* w, void* y, int M, int N, int K) {
    const KernelTypes t = GetParam().types;
    const float one = 1.f, zero = 0.f;
    const bool dev = GetParam().device_alpha;
    ASSERT_EQ(cublasSetPointerMode(cublas_, dev ? CUBLAS_POINTER_MODE_DEVICE : CUBLAS_POINTER_MODE_HOST),
              CUBLAS_STATUS_SUCCESS);
    const cublasStatus_t st = cublasGemmEx(
        cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, dev ? static_cast<const void*>(scalars_) : &one, w,
        CudaDataType(t.weight), K, x, CudaDataType(t.weight), K, dev ? static_cast<const void*>(scalars_ + 1) : &zero,
        y, CudaDataType(t.act), N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    ASSERT_EQ(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(st, CUBLAS_STATUS_SUCCESS);
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
  }

  // One shape: the tuner's result against cublasGemmEx (all elements) and a CPU reference
  // (first and last rows); `expect_timing`: this call must time a new M class.
  void CheckShape(int M, int N, int K, uint64_t seed, bool expect_timing) {
    const TypeCase& tc = GetParam();
    const std::string what = std::string(tc.name) + " M=" + std::to_string(M) + " N=" +
                             std::to_string(N) + " K=" + std::to_string(K);
    Rng rng(seed);
    TypedBuffer xb(tc.types.weight, int64_t{M} * K), wb(tc.types.weight, int64_t{N} * K);
    TypedBuffer y_lt(tc.types.act, int64_t{M} * N), y_ref(tc.types.act, int64_t{M} * N);
    ASSERT_NE(xb.get(), nullptr);
    ASSERT_NE(wb.get(), nullptr);
    ASSERT_NE(y_lt.get(), nullptr);
    ASSERT_NE(y_ref.get(), nullptr);
    const std::vector<float> x = xb.Upload(rng.Vector(int64_t{M} * K, -1, 1));
    const std::vector<float> w = wb.Upload(rng.Vector(int64_t{N} * K, -1, 1));
    y_ref.Poison();
    ASSERT_CUDA(cudaDeviceSynchronize());
    ReferenceGemm(xb.get(), wb.get(), y_ref.get(), M, N, K);
    if (HasFatalFailure()) return;
    const std::vector<float> ref = y_ref.Download();
    const float floor = std::sqrt(static_cast<float>(K)) * alpha();

    const int tuned0 = tuner_->tuned_keys(), timed0 = tuner_->timed_keys();
    y_lt.Poison();
    ASSERT_CUDA(cudaDeviceSynchronize());
    absl::Status st = tuner_->Run(stream_, tc.types, xb.get(), wb.get(), y_lt.get(), M, N, K, alpha_dev());
    ASSERT_TRUE(st.ok()) << what << ": " << st;
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_EQ(tuner_->timed_keys(), timed0 + (expect_timing ? 1 : 0)) << what;
    EXPECT_EQ(tuner_->tuned_keys(), tuned0 + (expect_timing ? 1 : 0)) << what;
    EXPECT_EQ(tuner_->untimed_keys(), 0) << what;
    const std::vector<float> got = y_lt.Download();
    ExpectClose(got, ref, tc.tol, floor, what + " vs cublasGemmEx");

    // CPU reference (double accumulation of the rounded inputs) on the first and last rows.
    for (int m : {0, M - 1}) {
      std::vector<float> want(N), row(got.begin() + int64_t{m} * N, got.begin() + int64_t{m + 1} * N);
      for (int n = 0; n < N; ++n) {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += double(x[int64_t{m} * K + k]) * w[int64_t{n} * K + k];
        want[n] = RoundThrough(tc.types.act, static_cast<float>(acc * alpha()));
      }
      ExpectClose(row, want, tc.tol, floor, what + " row " + std::to_string(m) + " vs CPU");
    }

    // The same key again: no new tuning, same algorithm, same result.
    y_lt.Poison();
    ASSERT_CUDA(cudaDeviceSynchronize());
    st = tuner_->Run(stream_, tc.types, xb.get(), wb.get(), y_lt.get(), M, N, K, alpha_dev());
    ASSERT_TRUE(st.ok()) << what << " (second call): " << st;
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_EQ(tuner_->timed_keys(), timed0 + (expect_timing ? 1 : 0)) << what << " (second call)";
    EXPECT_EQ(tuner_->tuned_keys(), tuned0 + (expect_timing ? 1 : 0)) << what << " (second call)";
    ExpectClose(y_lt.Download(), got, tc.tol, floor, what + " second call vs first");
  }

  cudaStream_t stream_ = nullptr;
  void* workspace_ = nullptr;
  void* ref_workspace_ = nullptr;
  float* scalars_ = nullptr;  // [alpha, 0] on the device
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<LtGemmTuner> tuner_;
};

TEST_P(LtGemmTest, MatchesCublasGemmExAndReusesTheAlgorithm) {
  CheckShape(8, 256, 512, 1, /*expect_timing=*/true);
  if (HasFatalFailure()) return;
  CheckShape(96, 4608, 4096, 2, /*expect_timing=*/true);
  if (HasFatalFailure()) return;
  CheckShape(256, 1000, 320, 3, /*expect_timing=*/true);
}

// Phase 3 (the wide search): the configurations it times are real candidates (some finish their
// timed runs), and whatever wins still computes the GEMM.
TEST_P(LtGemmTest, WideSearchMatchesCublasGemmEx) {
  tuner_->set_wide_search(true);
  CheckShape(64, 4608, 4096, 11, /*expect_timing=*/true);
  if (HasFatalFailure()) return;
  EXPECT_GT(tuner_->wide_timed(), 0) << "phase 3 timed no configuration to the end";
  CheckShape(256, 1000, 320, 12, /*expect_timing=*/true);
}

// The read-only L2 flush (set_read_flush) times the candidates too, and the choice computes the
// GEMM.
TEST_P(LtGemmTest, ReadFlushTunesAndMatches) {
  tuner_->set_read_flush(true);
  CheckShape(64, 4608, 4096, 13, /*expect_timing=*/true);
  if (HasFatalFailure()) return;
  CheckShape(200, 1000, 320, 14, /*expect_timing=*/true);
}

// Every M of a class (power of two >= 8) reuses the class's timed algorithm; the next class tunes.
TEST_P(LtGemmTest, OneTuningPerMClass) {
  EXPECT_EQ(LtGemmTuner::MClass(5), 8);
  EXPECT_EQ(LtGemmTuner::MClass(8), 8);
  EXPECT_EQ(LtGemmTuner::MClass(9), 16);
  EXPECT_EQ(LtGemmTuner::MClass(96), 128);
  EXPECT_EQ(LtGemmTuner::MClass(512), 512);
  CheckShape(96, 1024, 512, 4, /*expect_timing=*/true);
  if (HasFatalFailure()) return;
  CheckShape(100, 1024, 512, 5, /*expect_timing=*/false);  // class 128 again
  if (HasFatalFailure()) return;
  CheckShape(128, 1024, 512, 6, /*expect_timing=*/false);
  if (HasFatalFailure()) return;
  CheckShape(129, 1024, 512, 7, /*expect_timing=*/true);  // class 256
  if (HasFatalFailure()) return;
  CheckShape(100, 1024, 256, 8, /*expect_timing=*/true);  // another K: another class key
}

// While the stream captures a graph nothing is timed (heuristic candidate 0); the graph computes
// the right result; the next eager call tunes.
TEST_P(LtGemmTest, CaptureRunsUntimedThenEagerTunes) {
  const TypeCase& tc = GetParam();
  const int M = 64, N = 768, K = 512;
  Rng rng(9);
  TypedBuffer xb(tc.types.weight, M * K), wb(tc.types.weight, N * K);
  TypedBuffer y_lt(tc.types.act, M * N), y_ref(tc.types.act, M * N);
  xb.Upload(rng.Vector(M * K, -1, 1));
  wb.Upload(rng.Vector(N * K, -1, 1));
  y_ref.Poison();
  y_lt.Poison();
  ASSERT_CUDA(cudaDeviceSynchronize());
  ReferenceGemm(xb.get(), wb.get(), y_ref.get(), M, N, K);
  if (HasFatalFailure()) return;
  const std::vector<float> ref = y_ref.Download();
  const float floor = std::sqrt(static_cast<float>(K)) * alpha();

  cudaGraph_t graph = nullptr;
  ASSERT_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  const absl::Status st = tuner_->Run(stream_, tc.types, xb.get(), wb.get(), y_lt.get(), M, N, K, alpha_dev());
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_CUDA(end);
  EXPECT_EQ(tuner_->timed_keys(), 0);
  EXPECT_EQ(tuner_->tuned_keys(), 0);
  EXPECT_EQ(tuner_->untimed_keys(), 1);
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  ASSERT_CUDA(cudaGraphLaunch(exec, stream_));
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  ExpectClose(y_lt.Download(), ref, tc.tol, floor, "graph replay");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  y_lt.Poison();
  ASSERT_CUDA(cudaDeviceSynchronize());
  const absl::Status st2 = tuner_->Run(stream_, tc.types, xb.get(), wb.get(), y_lt.get(), M, N, K, alpha_dev());
  ASSERT_TRUE(st2.ok()) << st2;
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  EXPECT_EQ(tuner_->timed_keys(), 1);
  EXPECT_EQ(tuner_->tuned_keys(), 1);
  EXPECT_EQ(tuner_->untimed_keys(), 0);
  ExpectClose(y_lt.Download(), ref, tc.tol, floor, "eager after tuning");
}

INSTANTIATE_TEST_SUITE_P(Types, LtGemmTest, ::testing::ValuesIn(kTypeCases),
                         [](const ::testing::TestParamInfo<TypeCase>& info) { return info.param.name; });

// M <= 4 belongs to the GEMV, M > 512 (prefill) to cublasGemmEx: Handles() says no and Run
// refuses with InvalidArgument, tuning nothing.
TEST(LtGemmTunerRange, RefusesMOutsideTheDecodeRange) {
  EXPECT_FALSE(LtGemmTuner::Handles(1));
  EXPECT_FALSE(LtGemmTuner::Handles(4));
  EXPECT_TRUE(LtGemmTuner::Handles(5));
  EXPECT_TRUE(LtGemmTuner::Handles(256));
  EXPECT_TRUE(LtGemmTuner::Handles(512));
  EXPECT_FALSE(LtGemmTuner::Handles(513));
  EXPECT_FALSE(LtGemmTuner::Handles(1024));
  GLM_REQUIRE_CUDA_DEVICE();
  void* workspace = nullptr;
  ASSERT_CUDA(cudaMalloc(&workspace, kWorkspaceBytes));
  auto tuner = LtGemmTuner::Create(workspace, kWorkspaceBytes, /*share_choices=*/false);
  ASSERT_TRUE(tuner.ok()) << tuner.status();
  const int N = 256, K = 512;
  TypedBuffer x(DType::kBF16, 1024 * K), w(DType::kBF16, N * K), y(DType::kBF16, 1024 * N);
  for (int M : {4, 1024}) {
    const absl::Status st =
        (*tuner)->Run(nullptr, {DType::kBF16, DType::kBF16}, x.get(), w.get(), y.get(), M, N, K, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "M=" << M << ": " << st;
  }
  EXPECT_EQ((*tuner)->tuned_keys(), 0);
  EXPECT_EQ((*tuner)->timed_keys(), 0);
  EXPECT_EQ((*tuner)->untimed_keys(), 0);
  tuner->reset();
  cudaFree(workspace);
}

TEST(LtGemmTunerRange, EnvSwitch) {
  const char* old = std::getenv("GLM_CUDA_LT_TUNE");
  const std::string saved = old ? old : "";
  unsetenv("GLM_CUDA_LT_TUNE");
  EXPECT_TRUE(LtGemmTuner::EnabledByEnv());
  setenv("GLM_CUDA_LT_TUNE", "1", 1);
  EXPECT_TRUE(LtGemmTuner::EnabledByEnv());
  setenv("GLM_CUDA_LT_TUNE", "0", 1);
  EXPECT_FALSE(LtGemmTuner::EnabledByEnv());
  if (old) setenv("GLM_CUDA_LT_TUNE", saved.c_str(), 1); else unsetenv("GLM_CUDA_LT_TUNE");
}

}  // namespace
}  // namespace glm
