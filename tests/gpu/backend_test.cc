// The whole CUDA forward pass against the CPU reference backend on tiny random checkpoints of
// both architectures: mixed steps (chunked prefill + decodes of several sequences over shuffled
// KV blocks), then decode steps that replay CUDA graphs, and a warmed-up backend (graphs
// captured before the first step) bit for bit the same, and sampling on the device picking what
// the host sampler picks from the same logits. fp32: greedy tokens identical and logits
// close; bf16 / fp16-safe: logits within tolerance. Also the own sm90a decode GEMM against the
// cuBLAS path on the same model, and the early-launch graph edges bit for bit against none.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/step_planner.h"
#include "tests/gpu/test_model.h"
#include "tools/glm-mkmodel/random_checkpoint.h"
#include "worker/backend/backend.h"
#include "worker/backend/sampling/logprobs.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/cuda/launch.cuh"
#include "worker/model/safetensors.h"

namespace glm {
namespace {

struct ModelCase {
  const char* name;
  Architecture arch;
  Precision precision;
  DType checkpoint_dtype;
  float max_abs_tol;    // largest |logit difference| allowed
  float mean_abs_tol;   // mean |logit difference| allowed
  double min_agreement; // fraction of steps with the same argmax
};

const ModelCase kCases[] = {
    {"glm_fp32", Architecture::kGlm, Precision::kFp32, DType::kF32, 2e-3f, 2e-4f, 1.0},
    {"glm4_fp32", Architecture::kGlm4, Precision::kFp32, DType::kF32, 2e-3f, 2e-4f, 1.0},
    {"glm_bf16", Architecture::kGlm, Precision::kBf16, DType::kBF16, 0.5f, 0.06f, 0.8},
    {"glm4_bf16", Architecture::kGlm4, Precision::kBf16, DType::kBF16, 0.5f, 0.06f, 0.8},
    {"glm4_fp16safe", Architecture::kGlm4, Precision::kFp16Safe, DType::kBF16, 0.1f, 0.01f, 0.9},
};


class ModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelTest, ForwardMatchesCpuReferenceThroughChunkedPrefillAndGraphDecode) {
  GLM_REQUIRE_CUDA_DEVICE();
  const ModelCase& mc = GetParam();
  auto model = testing::WriteTestModel(mc.name, "tiny", mc.arch, mc.checkpoint_dtype, 7);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = model->config;
  const Checkpoint& ckpt = *model->ckpt;

  LoadOptions opts;
  opts.precision = mc.precision;
  opts.max_num_tokens = 64;
  opts.max_num_seqs = 8;
  auto cpu = MakeCpuBackend();
  auto gpu = MakeCudaBackend();
  // The same model warmed up first (Backend::WarmUp: every decode graph captured from dummy
  // steps on KV block 0 before any real step): it must give the lazily capturing backend's
  // logits bit for bit, real sequences on block 0 included.
  auto warm = MakeCudaBackend();
  ASSERT_TRUE(cpu->Load(config, ckpt, opts).ok());
  absl::Status load = gpu->Load(config, ckpt, opts);
  ASSERT_TRUE(load.ok()) << load;
  ASSERT_TRUE(warm->Load(config, ckpt, opts).ok());
  const int bs = 16, num_blocks = 64;
  ASSERT_TRUE(cpu->AllocateKvCache(num_blocks, bs).ok());
  ASSERT_TRUE(gpu->AllocateKvCache(num_blocks, bs).ok());
  ASSERT_TRUE(warm->AllocateKvCache(num_blocks, bs).ok());
  absl::Status warm_up = warm->WarmUp(opts.max_num_seqs);
  ASSERT_TRUE(warm_up.ok()) << warm_up;
  EXPECT_GT(gpu->KvBlocksThatFit(bs), 0);

  // Sequences on a shuffled block pool (scattered blocks), chunked prefill, then decode.
  testing::StepPlanner planner(config.vocab_size, bs, num_blocks, 99);
  planner.AddSequence(40);
  planner.AddSequence(9);

  const int V = static_cast<int>(config.vocab_size);
  double max_diff = 0, sum_diff = 0;
  int64_t compared = 0;
  int rows_total = 0, agree = 0, steps = 0;
  for (int step = 0; step < 14; ++step) {
    if (step == 4) planner.AddSequence(23);
    std::vector<int> row_seq;
    StepBatch batch = planner.Next(24, &row_seq);  // chunked prefill: at most 24 tokens a step
    std::vector<float> want, got;
    absl::Status cs = cpu->Forward(batch, &want);
    ASSERT_TRUE(cs.ok()) << cs;
    absl::Status gs = gpu->Forward(batch, &got);
    ASSERT_TRUE(gs.ok()) << gs;
    ASSERT_EQ(got.size(), want.size());
    std::vector<float> got_warm;
    ASSERT_TRUE(warm->Forward(batch, &got_warm).ok());
    ASSERT_EQ(got_warm.size(), got.size());
    EXPECT_EQ(0, std::memcmp(got_warm.data(), got.data(), got.size() * sizeof(float)))
        << "the warmed-up backend differs at step " << step;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "step " << step << " logit " << i;
      const double d = std::fabs(double(got[i]) - want[i]);
      max_diff = std::max(max_diff, d);
      sum_diff += d;
      ++compared;
    }
    std::vector<int32_t> next;  // both continue with the reference's token
    for (size_t r = 0; r < row_seq.size(); ++r) {
      const float* w = want.data() + r * V;
      const float* g = got.data() + r * V;
      const int32_t wt = static_cast<int32_t>(std::max_element(w, w + V) - w);
      const int32_t gt = static_cast<int32_t>(std::max_element(g, g + V) - g);
      agree += wt == gt;
      ++rows_total;
      next.push_back(wt);
    }
    planner.Finish(batch, row_seq, next);
    // Decode-only steps run through CUDA graphs (captured at the first step of each padded
    // size): replaying the very same step must give the same logits bit for bit, and the
    // greedy entry must return the argmax of those logits.
    const bool all_decode = std::all_of(batch.seqs.begin(), batch.seqs.end(),
                                        [](const SequenceStep& st) { return st.num_tokens == 1; });
    if (all_decode) {
      std::vector<float> replay;
      ASSERT_TRUE(gpu->Forward(batch, &replay).ok());
      ASSERT_EQ(replay.size(), got.size());
      EXPECT_EQ(0, std::memcmp(replay.data(), got.data(), got.size() * sizeof(float)))
          << "graph replay differs from the eager step " << step;
      std::vector<int32_t> greedy;
      std::vector<uint8_t> finite;
      ASSERT_TRUE(gpu->ForwardGreedy(batch, &greedy, &finite).ok());
      ASSERT_EQ(greedy.size(), row_seq.size());
      for (size_t r = 0; r < row_seq.size(); ++r) {
        const float* g = got.data() + r * V;
        EXPECT_EQ(greedy[r], std::max_element(g, g + V) - g);
        EXPECT_EQ(finite[r], 1);
      }
      // Sampling on the device: the same tokens as Sampler on the host from these logits, for
      // a mix of samplers in one batch (rows the device leaves to the host included).
      std::vector<SamplingParams> params(row_seq.size());
      std::vector<std::vector<int32_t>> scopes(row_seq.size());
      std::vector<RowSampling> rows;
      for (size_t r = 0; r < row_seq.size(); ++r) {
        SamplingParams& p = params[r];
        const float* g = got.data() + r * V;
        switch ((r + step) % 5) {
          case 0: p.temperature = 0.8f; p.top_k = 5; break;
          case 1: p.temperature = 1.0f; p.top_p = 0.9f; break;
          case 2: p.temperature = 1.0f; break;
          case 3: p.temperature = 0.0f; p.repetition_penalty = 1.3f; break;
          default: p.temperature = 0.7f; p.top_k = 2000; p.top_p = 0.5f; p.repetition_penalty = 0.9f;
        }
        p.seed = 1000 + 31 * step + r;
        scopes[r] = {static_cast<int32_t>(std::max_element(g, g + V) - g), 1, 2, 2};
        // Logprobs on some rows (none, a few, the most a request may ask for).
        const int32_t n_logprobs = r % 3 == 0 ? 0 : (r % 3 == 1 ? 5 : kMaxLogprobs);
        rows.push_back(RowSampling{&p, step, &scopes[r], n_logprobs});
      }
      std::vector<int32_t> sampled;
      std::vector<uint8_t> sampled_finite;
      std::vector<RowLogprobs> sampled_logprobs;
      absl::Status ss = gpu->ForwardSample(batch, rows, &sampled, &sampled_finite, &sampled_logprobs);
      ASSERT_TRUE(ss.ok()) << ss;
      ASSERT_EQ(sampled.size(), row_seq.size());
      ASSERT_EQ(sampled_logprobs.size(), row_seq.size());
      Sampler host;
      // The device's logprobs against LogSoftmaxTop on the same raw row at the same token: the
      // same ids in the same order, values to fp32 summation order.
      auto expect_logprobs = [&](size_t r, int32_t n, int32_t token, const RowLogprobs& lp) {
        if (n == 0) {
          EXPECT_TRUE(lp.top.empty()) << "row " << r << " asked for no logprobs";
          return;
        }
        RowLogprobs want;
        LogSoftmaxTop(std::span<const float>(got.data() + r * V, V), token, n, &want);
        EXPECT_NEAR(lp.token_logprob, want.token_logprob, 1e-4f + 1e-5f * std::fabs(want.token_logprob))
            << "step " << step << " row " << r;
        ASSERT_EQ(lp.top.size(), want.top.size()) << "step " << step << " row " << r;
        for (size_t k = 0; k < want.top.size(); ++k) {
          EXPECT_EQ(lp.top[k].token_id, want.top[k].token_id) << "step " << step << " row " << r << " rank " << k;
          EXPECT_NEAR(lp.top[k].logprob, want.top[k].logprob, 1e-4f + 1e-5f * std::fabs(want.top[k].logprob));
        }
      };
      for (size_t r = 0; r < row_seq.size(); ++r) {
        std::vector<float> row(got.begin() + r * V, got.begin() + (r + 1) * V);
        const SampleOutcome want = host.Sample(row, params[r], scopes[r], step);
        EXPECT_EQ(sampled_finite[r], want.nonfinite ? 0 : 1);
        EXPECT_EQ(sampled[r], want.token_id) << "step " << step << " row " << r;
        expect_logprobs(r, rows[r].logprobs, sampled[r], sampled_logprobs[r]);
      }
      // Plain greedy rows with logprobs: the sampler's path, not the argmax-only one.
      SamplingParams greedy_params;
      greedy_params.temperature = 0.0f;
      for (size_t r = 0; r < rows.size(); ++r) {
        rows[r].params = &greedy_params;
        rows[r].logprobs = 1 + static_cast<int32_t>(r % 4);
      }
      ss = gpu->ForwardSample(batch, rows, &sampled, &sampled_finite, &sampled_logprobs);
      ASSERT_TRUE(ss.ok()) << ss;
      for (size_t r = 0; r < row_seq.size(); ++r) {
        EXPECT_EQ(sampled[r], greedy[r]) << "step " << step << " row " << r;
        expect_logprobs(r, rows[r].logprobs, sampled[r], sampled_logprobs[r]);
        ASSERT_FALSE(sampled_logprobs[r].top.empty());
        EXPECT_EQ(sampled_logprobs[r].top[0].token_id, greedy[r]);
      }
      EXPECT_EQ(gpu->ForwardSample(batch, rows, &sampled, &sampled_finite, nullptr).code(),
                absl::StatusCode::kInvalidArgument)
          << "logprobs asked for without an output";
      rows.pop_back();
      EXPECT_EQ(gpu->ForwardSample(batch, rows, &sampled, &sampled_finite, &sampled_logprobs).code(),
                absl::StatusCode::kInvalidArgument);
    }
    ++steps;
  }
  const double mean_diff = sum_diff / std::max<int64_t>(compared, 1);
  const double agreement = double(agree) / std::max(rows_total, 1);
  std::printf("[%s] %d steps, %d logit rows: max |diff| %.3g, mean |diff| %.3g, argmax agreement %.3f\n",
              mc.name, steps, rows_total, max_diff, mean_diff, agreement);
  EXPECT_LE(max_diff, mc.max_abs_tol);
  EXPECT_LE(mean_diff, mc.mean_abs_tol);
  EXPECT_GE(agreement, mc.min_agreement);
  const MemoryReport mem = gpu->Memory();
  EXPECT_GT(mem.weights, 0);
  EXPECT_EQ(mem.kv_cache, gpu->KvBytesPerBlock(bs) * num_blocks);
  EXPECT_GE(mem.peak, mem.weights + mem.kv_cache);
}

INSTANTIATE_TEST_SUITE_P(Models, ModelTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

// Steps n sequences (3 + i % 7 prompt tokens each) through `ref` and `other` side by side: a
// prefill step, then `steps` - 1 decode steps of n rows (the first at a graph size runs eagerly
// and captures, the later ones replay the graph), every sequence's next token ref's argmax.
// compare(step, rows, want, got) gets both backends' logits of each step.
void StepSideBySide(Backend& ref, Backend& other, const ModelConfig& config, int block_size,
                    int num_blocks, int n, int steps,
                    const std::function<void(int, int, const std::vector<float>&, const std::vector<float>&)>& compare) {
  const int V = static_cast<int>(config.vocab_size);
  testing::StepPlanner planner(config.vocab_size, block_size, num_blocks, 5 + n);
  for (int i = 0; i < n; ++i) planner.AddSequence(3 + i % 7);
  for (int step = 0; step < steps; ++step) {
    std::vector<int> row_seq;
    const StepBatch batch = planner.Next(2048, &row_seq);
    ASSERT_EQ(static_cast<int>(row_seq.size()), n);
    std::vector<float> want, got;
    ASSERT_TRUE(ref.Forward(batch, &want).ok());
    const absl::Status st = other.Forward(batch, &got);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(got.size(), want.size());
    compare(step, n, want, got);
    if (::testing::Test::HasFatalFailure()) return;
    std::vector<int32_t> next;
    for (int r = 0; r < n; ++r) {
      const float* w = want.data() + size_t(r) * V;
      next.push_back(static_cast<int32_t>(std::max_element(w, w + V) - w));
    }
    planner.Finish(batch, row_seq, next);
  }
}

// A bf16 "demo"-shaped Glm4 model (every GEMM's K >= 256) loaded twice: once as is, once with
// `env`=`value` set while it loads (the backend reads its GLM_CUDA_* switches at Load).
struct TwoBackends {
  testing::TestModel model;  // first: outlives the backends
  std::unique_ptr<Backend> ref, other;
};
absl::StatusOr<TwoBackends> LoadTwoBackends(const std::string& tag, const char* env, const char* value,
                                            int num_blocks, int block_size) {
  auto model = testing::WriteTestModel(tag, "demo", Architecture::kGlm4, DType::kBF16, 11);
  if (!model.ok()) return model.status();
  TwoBackends b{*std::move(model), MakeCudaBackend(), MakeCudaBackend()};
  LoadOptions opts;
  opts.precision = Precision::kBf16;
  opts.max_num_tokens = 2048;
  opts.max_num_seqs = 256;
  if (absl::Status st = b.ref->Load(b.model.config, *b.model.ckpt, opts); !st.ok()) return st;
  if (setenv(env, value, 1) != 0) return absl::InternalError("setenv failed");
  const absl::Status load = b.other->Load(b.model.config, *b.model.ckpt, opts);
  unsetenv(env);
  if (!load.ok()) return load;
  if (absl::Status st = b.ref->AllocateKvCache(num_blocks, block_size); !st.ok()) return st;
  if (absl::Status st = b.other->AllocateKvCache(num_blocks, block_size); !st.ok()) return st;
  return b;
}

// The own sm90a decode GEMM inside the backend (GLM_CUDA_WGMMA=2: every GEMM of a 65-256-row
// decode step, both row-block kinds, and the MLP's SiLU fused into its gate/up epilogue) against
// the same model on the default cuBLAS path: 200 and then 96 sequences prefilled together and
// decoded three steps (eager, then graph replays). Only the GEMMs' summation order differs, so
// the logits agree closely.
TEST(CudaBackendTest, OwnDecodeGemmMatchesCublasPath) {
  GLM_REQUIRE_CUDA_DEVICE();
  if (!cuda::WgmmaGemmAvailable()) {
    GTEST_SKIP() << "the own decode GEMM runs on sm90 GPUs only (this device or binary has no sm90a code)";
  }
  const int bs = 16, num_blocks = 512;
  auto b = LoadTwoBackends("wgmma", "GLM_CUDA_WGMMA", "2", num_blocks, bs);
  ASSERT_TRUE(b.ok()) << b.status();
  const int V = static_cast<int>(b->model.config.vocab_size);
  for (int n : {200, 96}) {
    double max_diff = 0, sum_diff = 0;
    int64_t compared = 0;
    int rows = 0, agree = 0;
    StepSideBySide(*b->ref, *b->other, b->model.config, bs, num_blocks, n, 4,
                   [&](int step, int nrows, const std::vector<float>& want, const std::vector<float>& got) {
                     for (int r = 0; r < nrows; ++r) {
                       const float* w = want.data() + size_t(r) * V;
                       const float* g = got.data() + size_t(r) * V;
                       for (int v = 0; v < V; ++v) {
                         ASSERT_TRUE(std::isfinite(g[v])) << "n " << n << " step " << step << " row " << r;
                         const double d = std::fabs(double(g[v]) - w[v]);
                         max_diff = std::max(max_diff, d);
                         sum_diff += d;
                         ++compared;
                       }
                       agree += std::max_element(w, w + V) - w == std::max_element(g, g + V) - g;
                       ++rows;
                     }
                   });
    if (HasFatalFailure()) return;
    const double mean_diff = sum_diff / std::max<int64_t>(compared, 1);
    std::printf("[own decode GEMM, %d sequences] max |diff| %.3g, mean |diff| %.3g, argmax agreement %.3f\n",
                n, max_diff, mean_diff, double(agree) / rows);
    EXPECT_LE(max_diff, 0.25) << n << " sequences";
    EXPECT_LE(mean_diff, 0.02) << n << " sequences";
    EXPECT_GE(double(agree) / rows, 0.9) << n << " sequences";
  }
}

// GLM_CUDA_GRAPH_EDGES (launch.cuh's GraphEdgeMode): the decode graphs' programmatic edges
// rewritten to fire at their upstream kernel's launch completion change when kernels start, never
// what they compute: every logit of a prefill step and of five decode steps (eager + capture, then
// graph replays) at 200 and 96 sequences (cuBLASLt GEMMs upstream of own kernels) and 3 sequences
// (GEMVs: own kernels only) is bit for bit the default backend's. Mode 1 rewrites only the edges
// out of cuBLAS kernels, so fewer than mode 2, which rewrites every one.
TEST(CudaBackendTest, EarlyLaunchGraphEdgesKeepEveryLogit) {
  GLM_REQUIRE_CUDA_DEVICE();
  int major = 0;
  ASSERT_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major < 9) GTEST_SKIP() << "programmatic edges come from PDL launches, which need sm90+ (this GPU is sm" << major << "x)";
  const int bs = 16, num_blocks = 512;
  int64_t rewritten[3] = {0, 0, 0};  // by mode
  for (int mode : {1, 2}) {
    const std::string value = std::to_string(mode);
    const int64_t before = cuda::RewrittenGraphEdges();
    auto b = LoadTwoBackends("edges" + value, "GLM_CUDA_GRAPH_EDGES", value.c_str(), num_blocks, bs);
    ASSERT_TRUE(b.ok()) << b.status();
    for (int n : {200, 96, 3}) {
      int64_t differing = 0;
      StepSideBySide(*b->ref, *b->other, b->model.config, bs, num_blocks, n, 6,
                     [&](int step, int, const std::vector<float>& want, const std::vector<float>& got) {
                       for (size_t i = 0; i < want.size(); ++i) {
                         if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0 && differing++ < 5) {
                           ADD_FAILURE() << "mode " << mode << ", " << n << " sequences, step " << step
                                         << ", logit " << i << ": " << got[i] << " against " << want[i];
                         }
                       }
                     });
      if (HasFatalFailure()) return;
      EXPECT_EQ(differing, 0) << "mode " << mode << ", " << n << " sequences";
    }
    rewritten[mode] = cuda::RewrittenGraphEdges() - before;
    std::printf("[GLM_CUDA_GRAPH_EDGES=%d] %lld programmatic edges rewritten in the decode graphs\n", mode,
                static_cast<long long>(rewritten[mode]));
  }
  EXPECT_GT(rewritten[1], 0) << "no cuBLAS -> own kernel edge was rewritten";
  EXPECT_GT(rewritten[2], rewritten[1]) << "mode 2 rewrites own -> own edges too";
}

TEST(CudaBackendTest, RejectsBadStepsWithInvalidArgument) {
  GLM_REQUIRE_CUDA_DEVICE();
  auto model = testing::WriteTestModel("bad", "tiny", Architecture::kGlm4);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = model->config;
  const Checkpoint& ckpt = *model->ckpt;
  auto gpu = MakeCudaBackend();
  LoadOptions opts;
  opts.precision = Precision::kFp32;
  ASSERT_TRUE(gpu->Load(config, ckpt, opts).ok());
  EXPECT_EQ(gpu->WarmUp(4).code(), absl::StatusCode::kFailedPrecondition);  // no KV cache yet
  ASSERT_TRUE(gpu->AllocateKvCache(8, 16).ok());
  EXPECT_EQ(gpu->WarmUp(0).code(), absl::StatusCode::kInvalidArgument);
  StepBatch batch;
  batch.token_ids = {1, static_cast<int32_t>(config.vocab_size)};  // second id out of range
  batch.positions = {0, 1};
  SequenceStep s;
  s.num_tokens = 2;
  s.context_len = 2;
  s.block_table = {3};
  s.wants_logits = true;
  batch.seqs = {s};
  std::vector<float> logits;
  EXPECT_EQ(gpu->Forward(batch, &logits).code(), absl::StatusCode::kInvalidArgument);
  batch.token_ids[1] = 2;
  batch.seqs[0].block_table = {8};  // outside the pool
  EXPECT_EQ(gpu->Forward(batch, &logits).code(), absl::StatusCode::kInvalidArgument);
  batch.seqs[0].block_table = {7};
  EXPECT_TRUE(gpu->Forward(batch, &logits).ok());
  EXPECT_EQ(logits.size(), static_cast<size_t>(config.vocab_size));
}

}  // namespace
}  // namespace glm
