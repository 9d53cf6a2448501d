// The engine's automatic prefix caching on the CUDA backend: requests that continue a prompt the
// cache holds (their first blocks' K/V written by an earlier request, shared by several running
// ones at once) against the same requests computed in full by an engine without the cache, on
// the same GPU. fp32: the same greedy tokens and logits close; bf16: logits within the tolerance
// the whole-model test allows against the CPU reference, compared while the tokens agree. The
// backend only sees block tables, so this is the chunked-prefill path starting at a cached block.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tests/gpu/gpu_test_util.h"
#include "tests/gpu/test_model.h"
#include "worker/backend/backend.h"
#include "worker/backend/cuda/cuda_backend.h"
#include "worker/engine/engine.h"

namespace glm {
namespace {

struct PrefixCase {
  const char* name;
  Precision precision;
  DType checkpoint_dtype;
  float max_abs_tol;
};

const PrefixCase kPrefixCases[] = {
    {"prefix_fp32", Precision::kFp32, DType::kF32, 2e-3f},
    {"prefix_bf16", Precision::kBf16, DType::kBF16, 0.5f},
};

class EnginePrefixTest : public ::testing::TestWithParam<PrefixCase> {};

using Rows = std::map<std::pair<std::string, int32_t>, std::vector<float>>;

struct EngineRun {
  std::map<std::string, std::vector<int32_t>> tokens;
  Rows logits;
  EngineStats stats;
};

GenerationRequest Request(int i) {
  GenerationRequest r;
  r.request_id = "r" + std::to_string(i);
  for (int t = 0; t < 40; ++t) r.prompt_token_ids.push_back((13 * t + 7) % 500);  // 2 blocks of 16 + 8
  for (int t = 0; t < 2 + 3 * i; ++t) r.prompt_token_ids.push_back((29 * i + 5 * t + 1) % 500);
  r.max_new_tokens = 6;
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;  // greedy: the fp32 runs must pick the same tokens
  return r;
}

// Request 0 alone, then requests 1..5 at once, through an engine on a fresh CUDA backend.
void RunEngine(const testing::TestModel& model, const PrefixCase& pc, bool prefix_caching, EngineRun* out) {
  LoadOptions opts;
  opts.precision = pc.precision;
  opts.max_num_tokens = 256;
  opts.max_num_seqs = 8;
  std::unique_ptr<Backend> backend = MakeCudaBackend();
  const absl::Status load = backend->Load(model.config, *model.ckpt, opts);
  ASSERT_TRUE(load.ok()) << load;
  EngineOptions eo;
  eo.block_size = 16;
  eo.num_kv_blocks = 128;
  eo.max_num_seqs = 8;
  eo.max_num_batched_tokens = 64;
  eo.enable_prefix_caching = prefix_caching;
  eo.logits_observer = [out](const std::string& id, int32_t index, const float* row, int64_t vocab) {
    out->logits[{id, index}].assign(row, row + vocab);
  };
  auto engine = Engine::Create(eo, std::move(backend), nullptr);
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (auto [from, to] : {std::pair{0, 1}, std::pair{1, 6}}) {
    for (int i = from; i < to; ++i) {
      const absl::Status submitted = (*engine)->Submit(Request(i), [out](const TokenEvent& e) {
        if (e.token_id >= 0) out->tokens[e.request_id].push_back(e.token_id);
        if (e.finished) {
          EXPECT_TRUE(e.error.ok()) << e.request_id << ": " << e.error;
        }
      });
      ASSERT_TRUE(submitted.ok()) << submitted;
    }
    const absl::Status ran = (*engine)->RunUntilIdle();
    ASSERT_TRUE(ran.ok()) << ran;
  }
  out->stats = (*engine)->Stats();
}

TEST_P(EnginePrefixTest, CachedContinuationsMatchAFullCompute) {
  GLM_REQUIRE_CUDA_DEVICE();
  const PrefixCase& pc = GetParam();
  auto model = testing::WriteTestModel(pc.name, "tiny", Architecture::kGlm4, pc.checkpoint_dtype, 11);
  ASSERT_TRUE(model.ok()) << model.status();
  EngineRun full, cached;
  RunEngine(*model, pc, /*prefix_caching=*/false, &full);
  if (HasFailure()) return;
  RunEngine(*model, pc, /*prefix_caching=*/true, &cached);
  if (HasFailure()) return;
  EXPECT_EQ(full.stats.prefix_hit_tokens, 0);
  EXPECT_EQ(cached.stats.prefix_hit_tokens, 5 * 32) << "requests 1..5 each find the 2 full prompt blocks";
  ASSERT_EQ(cached.logits.size(), full.logits.size());
  double max_diff = 0;
  int compared = 0;
  for (int i = 0; i < 6; ++i) {
    const std::string id = "r" + std::to_string(i);
    const std::vector<int32_t>& want = full.tokens[id];
    const std::vector<int32_t>& got = cached.tokens[id];
    ASSERT_EQ(got.size(), 6u) << id;
    if (pc.precision == Precision::kFp32) {
      EXPECT_EQ(got, want) << id;
    }
    // Row k was computed on the tokens before it: compare while those agree.
    for (int32_t k = 0; k < 6; ++k) {
      if (k > 0 && got[k - 1] != want[k - 1]) break;
      const std::vector<float>& a = full.logits[{id, k}];
      const std::vector<float>& b = cached.logits[{id, k}];
      ASSERT_EQ(a.size(), b.size()) << id << " row " << k;
      for (size_t v = 0; v < a.size(); ++v) {
        ASSERT_TRUE(std::isfinite(b[v])) << id << " row " << k << " logit " << v;
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(a[v] - b[v])));
      }
      ++compared;
    }
  }
  EXPECT_GE(compared, 6);
  EXPECT_LE(max_diff, pc.max_abs_tol) << "largest |logit difference| over " << compared << " rows";
  std::printf("%s: %d rows compared, max |logit difference| %.3g\n", pc.name, compared, max_diff);
}

INSTANTIATE_TEST_SUITE_P(Precisions, EnginePrefixTest, ::testing::ValuesIn(kPrefixCases),
                         [](const ::testing::TestParamInfo<PrefixCase>& info) { return info.param.name; });

}  // namespace
}  // namespace glm
