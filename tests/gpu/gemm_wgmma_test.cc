// The own Hopper decode GEMM (worker/backend/cuda/gemm_wgmma.cu) against a CPU reference (double
// sums of the bf16 inputs) and cuBLAS's cublasGemmEx of the same row-major y[M, N] = x[M, K] .
// w[N, K]^T: GLM-4-9B's decode shapes at several batch sizes, every block width and split count
// on a shape with ragged N and K edges, determinism, a CUDA-graph replay and the refusals. It also
// prints (does not assert) its time against cuBLAS's on the decode shapes: speed is measured by
// glm-bench. Skips off sm90 (the kernel is sm90a code).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "tests/gpu/gpu_test_util.h"
#include "worker/backend/cuda/kernels.h"

namespace glm {
namespace {

using testing::Rng;
using testing::TypedBuffer;

constexpr cuda::KernelTypes kBf16{DType::kBF16, DType::kBF16};

class WgmmaGemmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GLM_REQUIRE_CUDA_DEVICE();
    if (!cuda::WgmmaGemmAvailable()) {
      GTEST_SKIP() << "the wgmma GEMM runs on sm90 GPUs only (this device or binary has no sm90a code)";
    }
    ASSERT_EQ(cublasCreate(&cublas_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
  }

  // cuBLAS's y (the backend's cublasGemmEx formulation), as floats.
  std::vector<float> Cublas(const TypedBuffer& x, const TypedBuffer& w, int M, int N, int K) {
    TypedBuffer y(DType::kBF16, int64_t{M} * N);
    const float one = 1.f, zero = 0.f;
    EXPECT_EQ(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w.get(), CUDA_R_16BF, K,
                           x.get(), CUDA_R_16BF, K, &zero, y.get(), CUDA_R_16BF, N, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    return y.Download();
  }

  cublasHandle_t cublas_ = nullptr;
};

double Dot(const std::vector<float>& x, const std::vector<float>& w, int m, int n, int K) {
  double s = 0;
  for (int k = 0; k < K; ++k) s += double(x[size_t(m) * K + k]) * double(w[size_t(n) * K + k]);
  return s;
}

// |got - want| within one bf16 rounding of |want| plus fp32 accumulation noise on the scale of
// the terms (sqrt(K) * |x| * |w| for uniform inputs in [-1, 1]).
bool Close(float got, double want, int K) {
  return std::isfinite(got) && std::fabs(got - want) <= 8e-3 * std::fabs(want) + 1e-4 * std::sqrt(double(K));
}

struct Problem {
  int M, N, K;
  TypedBuffer x, w, y;
  std::vector<float> hx, hw;
  Problem(int M_, int N_, int K_, uint64_t seed)
      : M(M_), N(N_), K(K_), x(DType::kBF16, int64_t{M_} * K_), w(DType::kBF16, int64_t{N_} * K_),
        y(DType::kBF16, int64_t{M_} * N_) {
    Rng rng(seed);
    hx = x.Upload(rng.Vector(int64_t{M} * K, -1.f, 1.f));
    hw = w.Upload(rng.Vector(int64_t{N} * K, -1.f, 1.f));
  }
  cudaError_t Run(cuda::WgmmaPlan plan, cudaStream_t stream = nullptr) {
    y.Poison();
    return cuda::LaunchWgmmaGemm(x.get(), w.get(), y.get(), M, N, K, plan, stream);
  }
};

// GLM-4-9B-0414's decode GEMMs (qkv, o_proj, gate/up, down) at batch sizes on both sides of the
// one- / two-row-block switch (M = 128 / 129) and the smallest and largest M taken.
TEST_F(WgmmaGemmTest, DecodeShapesMatchReferenceAndCublas) {
  const int shapes[][2] = {{4608, 4096}, {4096, 4096}, {27392, 4096}, {4096, 13696}};
  for (const auto& s : shapes) {
    for (int M : {65, 128, 129, 256}) {
      const int N = s[0], K = s[1];
      Problem p(M, N, K, 1000 + M + N);
      const cuda::WgmmaPlan plan = cuda::PlanWgmmaGemm(M, N, K);
      const std::string what = "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                               " (BN " + std::to_string(plan.bn) + ", " + std::to_string(plan.splits) + " splits)";
      ASSERT_GT(plan.bn, 0) << what;
      ASSERT_EQ(p.Run(plan), cudaSuccess) << what;
      const std::vector<float> got = p.y.Download();
      ASSERT_EQ(cudaGetLastError(), cudaSuccess) << what;
      // CPU reference on 600 entries: the corners, the last row / column, random ones.
      Rng pick(7 + M);
      int bad = 0;
      for (int i = 0; i < 600; ++i) {
        int m = static_cast<int>(pick.Next() % M), n = static_cast<int>(pick.Next() % N);
        if (i < 4) m = (i & 1) ? M - 1 : 0, n = (i & 2) ? N - 1 : 0;
        const double want = Dot(p.hx, p.hw, m, n, K);
        const float g = got[size_t(m) * N + n];
        if (!Close(g, want, K) && ++bad <= 5) ADD_FAILURE() << what << " y[" << m << "," << n << "] = " << g << ", want " << want;
      }
      EXPECT_EQ(bad, 0) << what;
      // Every entry against cuBLAS (both fp32 sums rounded once to bf16).
      const std::vector<float> ref = Cublas(p.x, p.w, M, N, K);
      int diff = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        if (!Close(got[i], ref[i], K) && ++diff <= 5) ADD_FAILURE() << what << " y[" << i << "] = " << got[i] << ", cuBLAS " << ref[i];
      }
      EXPECT_EQ(diff, 0) << what << ": " << diff << " entries differ from cuBLAS";
    }
  }
}

// Every block width with split counts that do and do not divide the K slices and every multicast
// group size, on N and K that end mid-block (N = 1,000: no block width divides it, and the last
// multicast group has blocks past N; K = 1,000: the last slice is 40 wide, the rest zero-filled),
// every entry against the CPU reference.
TEST_F(WgmmaGemmTest, EveryBlockWidthAndSplitOnRaggedEdges) {
  const int N = 1000, K = 1000;
  for (int M : {65, 200}) {
    Problem p(M, N, K, 77 + M);
    std::vector<double> want(size_t(M) * N);
    for (int m = 0; m < M; ++m) {
      for (int n = 0; n < N; ++n) want[size_t(m) * N + n] = Dot(p.hx, p.hw, m, n, K);
    }
    for (int bn : {104, 128, 144}) {
      for (const auto& sg : {std::pair{1, 1}, {2, 1}, {3, 1}, {5, 1}, {8, 1}, {1, 2}, {3, 2}, {1, 4}, {2, 4}}) {
        const cuda::WgmmaPlan plan{bn, sg.first, sg.second};
        const std::string what = "M=" + std::to_string(M) + " BN=" + std::to_string(bn) + " splits=" +
                                 std::to_string(plan.splits) + " multicast=" + std::to_string(plan.multicast);
        if (M > 128 && bn == 144) {  // no such kernel (registers)
          EXPECT_EQ(p.Run(plan), cudaErrorInvalidValue) << what;
          continue;
        }
        ASSERT_EQ(p.Run(plan), cudaSuccess) << what;
        const std::vector<float> got = p.y.Download();
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          if (!Close(got[i], want[i], K) && ++bad <= 5) ADD_FAILURE() << what << " y[" << i / N << "," << i % N << "] = " << got[i] << ", want " << want[i];
        }
        EXPECT_EQ(bad, 0) << what;
      }
    }
  }
}

// Same inputs, same bits (the split partials are summed in a fixed order), also replayed from a
// CUDA graph (the backend captures its decode steps).
TEST_F(WgmmaGemmTest, DeterministicAndGraphReplayable) {
  const int M = 256, N = 4608, K = 4096;
  Problem p(M, N, K, 5);
  const cuda::WgmmaPlan plan{128, 2, 4};
  ASSERT_EQ(p.Run(plan), cudaSuccess);
  const std::vector<float> first = p.y.Download();
  ASSERT_EQ(p.Run(plan), cudaSuccess);
  EXPECT_EQ(p.y.Download(), first);

  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  ASSERT_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  ASSERT_EQ(cuda::LaunchWgmmaGemm(p.x.get(), p.w.get(), p.y.get(), M, N, K, plan, stream), cudaSuccess);
  ASSERT_CUDA(cudaStreamEndCapture(stream, &graph));
  ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  p.y.Poison();
  ASSERT_CUDA(cudaGraphLaunch(exec, stream));
  ASSERT_CUDA(cudaStreamSynchronize(stream));
  EXPECT_EQ(p.y.Download(), first);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// The SiLU-and-multiply epilogue against the unfused path it replaces (the same plan into a
// bf16 [M, 2F] buffer, then LaunchSiluMul): the same bits, for every block width, split and
// multicast size, on F = 500 (no half block width divides it) and GLM-4-9B's F = 13,696 at M = 256.
TEST_F(WgmmaGemmTest, SiluMulEpilogueMatchesUnfusedPath) {
  struct Case {
    int M, F, K;
  };
  for (const Case c : {Case{65, 500, 1000}, Case{200, 500, 1000}, Case{256, 13696, 4096}}) {
    Problem p(c.M, 2 * c.F, c.K, 300 + c.M + c.F);
    TypedBuffer fused(DType::kBF16, int64_t{c.M} * c.F), unfused(DType::kBF16, int64_t{c.M} * c.F);
    std::vector<cuda::WgmmaPlan> plans;
    if (c.F == 13696) {
      plans = {cuda::PlanWgmmaGemm(c.M, 2 * c.F, c.K), {104, 1, 2}, {128, 1, 4}};
    } else {
      for (int bn : {104, 128, 144}) {
        for (const auto& sg : {std::pair{1, 1}, {3, 1}, {1, 2}, {2, 4}}) {
          if (c.M <= 128 || bn != 144) plans.push_back({bn, sg.first, sg.second});
        }
      }
    }
    for (const cuda::WgmmaPlan plan : plans) {
      const std::string what = "M=" + std::to_string(c.M) + " F=" + std::to_string(c.F) + " BN=" +
                               std::to_string(plan.bn) + " splits=" + std::to_string(plan.splits) +
                               " multicast=" + std::to_string(plan.multicast);
      ASSERT_EQ(p.Run(plan), cudaSuccess) << what;
      unfused.Poison();
      ASSERT_EQ(cuda::LaunchSiluMul(kBf16, p.y.get(), unfused.get(), c.M, c.F, nullptr), cudaSuccess) << what;
      fused.Poison();
      ASSERT_EQ(cuda::LaunchWgmmaGemmSiluMul(p.x.get(), p.w.get(), fused.get(), c.M, c.F, c.K, plan, nullptr),
                cudaSuccess)
          << what;
      const std::vector<float> want = unfused.Download(), got = fused.Download();
      int diff = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        if (!(got[i] == want[i]) && ++diff <= 5) {
          ADD_FAILURE() << what << " y[" << i / c.F << "," << i % c.F << "] = " << got[i] << ", unfused "
                        << want[i];
        }
      }
      EXPECT_EQ(diff, 0) << what;
    }
  }
  Problem p(100, 256, 256, 4);
  EXPECT_EQ(cuda::LaunchWgmmaGemmSiluMul(p.x.get(), p.w.get(), p.y.get(), 100, 126, 256, {128, 1}, nullptr),
            cudaErrorInvalidValue);  // F % 4
}

TEST_F(WgmmaGemmTest, RefusesWhatItDoesNotHandle) {
  Problem p(256, 256, 256, 3);
  const cuda::WgmmaPlan ok{128, 2};
  void* x = p.x.get();
  void* w = p.w.get();
  void* y = p.y.get();
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 64, 256, 256, ok, nullptr), cudaErrorInvalidValue);   // M < 65
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 257, 256, 256, ok, nullptr), cudaErrorInvalidValue);  // M > 256
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 252, 256, ok, nullptr), cudaErrorInvalidValue);  // N % 8
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 124, ok, nullptr), cudaErrorInvalidValue);  // K < 128
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 252, ok, nullptr), cudaErrorInvalidValue);  // K % 8
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 256, {100, 1}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 256, {128, 0}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 256, {128, 9}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 256, {128, 1, 3}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 100, 256, 256, {128, 4, 4}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchWgmmaGemm(x, w, y, 200, 256, 256, {144, 1, 1}, nullptr), cudaErrorInvalidValue);
  EXPECT_FALSE(cuda::WgmmaGemmSupports({DType::kF16, DType::kF16}, 100, 256, 256));
  EXPECT_FALSE(cuda::WgmmaGemmSupports(kBf16, 64, 256, 256));
  EXPECT_TRUE(cuda::WgmmaGemmSupports(kBf16, 65, 256, 256));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// Printed, not asserted: the kernel's time against cublasGemmEx's on the decode shapes, weights
// from HBM (an L2-sized buffer overwritten before each run), median of 9.
TEST_F(WgmmaGemmTest, PrintsTimeAgainstCublas) {
  void* flush = nullptr;
  const size_t flush_bytes = 64u << 20;
  ASSERT_CUDA(cudaMalloc(&flush, flush_bytes));
  cudaEvent_t start, stop;
  ASSERT_CUDA(cudaEventCreate(&start));
  ASSERT_CUDA(cudaEventCreate(&stop));
  auto time_us = [&](auto&& launch) {
    std::vector<float> runs;
    for (int r = 0; r < 10; ++r) {
      cudaMemsetAsync(flush, r, flush_bytes);
      cudaEventRecord(start);
      launch();
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      if (r > 0) runs.push_back(ms * 1e3f);
    }
    std::sort(runs.begin(), runs.end());
    return runs[runs.size() / 2];
  };
  const struct {
    const char* name;
    int N, K;
  } shapes[] = {{"qkv", 4608, 4096},  {"o_proj", 4096, 4096},   {"gate_up", 27392, 4096},
                {"down", 4096, 13696}, {"lm_head", 151552, 4096}};
  for (int M : {128, 256}) {
    for (const auto& s : shapes) {
      // Timing only: constant inputs (0x3c3c = 0.0115 in bf16), no host upload.
      TypedBuffer x(DType::kBF16, int64_t{M} * s.K), w(DType::kBF16, int64_t{s.N} * s.K),
          y(DType::kBF16, int64_t{M} * s.N);
      ASSERT_CUDA(cudaMemset(x.get(), 0x3c, x.Bytes()));
      ASSERT_CUDA(cudaMemset(w.get(), 0x3c, w.Bytes()));
      const cuda::WgmmaPlan plan = cuda::PlanWgmmaGemm(M, s.N, s.K);
      auto own_us = [&](cuda::WgmmaPlan pl) {
        return time_us([&] { cuda::LaunchWgmmaGemm(x.get(), w.get(), y.get(), M, s.N, s.K, pl, nullptr); });
      };
      const float own = own_us(plan);
      const float one = 1.f, zero = 0.f;
      const float lib = time_us([&] {
        cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &one, w.get(), CUDA_R_16BF, s.K, x.get(),
                     CUDA_R_16BF, s.K, &zero, y.get(), CUDA_R_16BF, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      });
      const double bytes = 2.0 * (double(s.N) * s.K + double(M) * s.K + double(M) * s.N);
      std::printf("wgmma-gemm M=%d %-8s N=%6d K=%5d: own %6.1f us (BN %d, %d splits, multicast %d, %4.0f GB/s, "
                  "%3.0f TFLOP/s), cublasGemmEx %6.1f us\n",
                  M, s.name, s.N, s.K, own, plan.bn, plan.splits, plan.multicast, bytes / own * 1e-3,
                  2.0 * M * s.N * s.K / own * 1e-6, lib);
      if (std::string(s.name) == "lm_head") continue;
      // Every other plan at this shape: the planner's model against the measured best.
      float best = own;
      cuda::WgmmaPlan best_plan = plan;
      std::string line;
      for (int bn : {104, 128, 144}) {
        for (int g : {1, 2, 4}) {
          for (int sp = 1; sp * g <= 8; ++sp) {
            const cuda::WgmmaPlan pl{bn, sp, g};
            if (cuda::LaunchWgmmaGemm(x.get(), w.get(), y.get(), M, s.N, s.K, pl, nullptr) != cudaSuccess) {
              (void)cudaGetLastError();
              continue;
            }
            const float t = own_us(pl);
            char buf[48];
            std::snprintf(buf, sizeof(buf), " %d/%d/%d:%.1f", bn, sp, g, t);
            line += buf;
            if (t < best) best = t, best_plan = pl;
          }
        }
      }
      std::printf("wgmma-gemm M=%d %-8s best %6.1f us (BN %d, %d splits, multicast %d); all (BN/splits/multicast:us)%s\n",
                  M, s.name, best, best_plan.bn, best_plan.splits, best_plan.multicast, line.c_str());
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(flush);
}

// A profiling hook, not a check: GLM_WGMMA_PROFILE="M,N,K,BN,SPLITS,MULTICAST" runs that plan three
// times (for Nsight Compute, e.g. --launch-skip 1 --launch-count 1); skipped when unset.
TEST_F(WgmmaGemmTest, ProfilePlanFromEnv) {
  const char* env = std::getenv("GLM_WGMMA_PROFILE");
  if (env == nullptr) GTEST_SKIP() << "GLM_WGMMA_PROFILE is not set (a profiling hook)";
  int M = 0, N = 0, K = 0, bn = 0, sp = 0, g = 0;
  ASSERT_EQ(std::sscanf(env, "%d,%d,%d,%d,%d,%d", &M, &N, &K, &bn, &sp, &g), 6) << env;
  TypedBuffer x(DType::kBF16, int64_t{M} * K), w(DType::kBF16, int64_t{N} * K), y(DType::kBF16, int64_t{M} * N);
  ASSERT_CUDA(cudaMemset(x.get(), 0x3c, x.Bytes()));
  ASSERT_CUDA(cudaMemset(w.get(), 0x3c, w.Bytes()));
  for (int r = 0; r < 3; ++r) {
    ASSERT_EQ(cuda::LaunchWgmmaGemm(x.get(), w.get(), y.get(), M, N, K, {bn, sp, g}, nullptr), cudaSuccess);
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace glm
