// Every CUDA kernel of the backend against a CPU reference written here with the rounding
// contract of worker/backend/cpu/cpu_backend.cc: fresh random inputs, outputs poisoned (NaN)
// before each launch so an unwritten element fails the comparison.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tests/gpu/gpu_test_util.h"
#include "worker/backend/cuda/kernels.h"
#include "worker/backend/sampling/logprobs.h"
#include "worker/backend/sampling/sampler.h"

namespace glm {
namespace {

using cuda::KernelTypes;
using testing::Rng;
using testing::RoundThrough;
using testing::TypedBuffer;

struct TypeCase {
  const char* name;
  KernelTypes types;
  float tol;  // relative tolerance of a value rounded once more or less than the reference
};
const TypeCase kTypeCases[] = {
    {"fp32", {DType::kF32, DType::kF32}, 2e-5f},
    {"bf16", {DType::kBF16, DType::kBF16}, 1.6e-2f},
    {"fp16", {DType::kF16, DType::kF16}, 2e-3f},
    {"fp16safe", {DType::kF32, DType::kF16}, 2e-3f},
};

class KernelTest : public ::testing::TestWithParam<TypeCase> {};

using testing::ExpectClose;

TEST_P(KernelTest, EmbeddingCopiesRowsExactly) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  const int V = 97, D = 136, T = 9;
  Rng rng(1);
  TypedBuffer table(tc.types.weight, V * D), out(tc.types.act, T * D);
  const auto tab = table.Upload(rng.Vector(V * D, -2, 2));
  std::vector<int32_t> ids = {0, 96, 5, 5, 17, 33, 1, 95, 64};
  void* d_ids = nullptr;
  testing::UploadInts(&d_ids, ids);
  out.Poison();
  ASSERT_CUDA(cuda::LaunchEmbedding(tc.types, static_cast<int32_t*>(d_ids), table.get(), out.get(), T, D, nullptr));
  std::vector<float> want(T * D);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < D; ++d) want[t * D + d] = RoundThrough(tc.types.act, tab[ids[t] * D + d]);
  ExpectClose(out.Download(), want, 0.f, 0.f, "embedding");
  cudaFree(d_ids);
}

// Reference for LaunchAddRmsNorm (rounding points 3 and 7).
void RefAddRmsNorm(DType act, std::vector<float>& residual, const std::vector<float>* delta,
                   const std::vector<float>* post_w, const std::vector<float>& w,
                   std::vector<float>& out, const std::vector<int32_t>* rows_idx, int rows, int D,
                   float eps) {
  auto rms = [&](const float* x) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += double(x[d]) * x[d];
    return 1.0f / std::sqrt(float(ss / D) + eps);
  };
  for (int i = 0; i < rows; ++i) {
    const int r = rows_idx ? (*rows_idx)[i] : i;
    float* res = &residual[r * D];
    if (delta) {
      const float* del = &(*delta)[r * D];
      const float inv = post_w ? rms(del) : 1.f;
      for (int d = 0; d < D; ++d) {
        const float dd = post_w ? RoundThrough(act, RoundThrough(act, del[d] * inv) * (*post_w)[d]) : del[d];
        res[d] = RoundThrough(act, res[d] + dd);
      }
    }
    const float inv = rms(res);
    for (int d = 0; d < D; ++d) out[i * D + d] = RoundThrough(act, RoundThrough(act, res[d] * inv) * w[d]);
  }
}

// OverrideNormBlockThreads for a scope.
struct NormThreadsOverride {
  explicit NormThreadsOverride(int threads) { cuda::OverrideNormBlockThreads(threads); }
  ~NormThreadsOverride() { cuda::OverrideNormBlockThreads(-1); }
};

TEST_P(KernelTest, AddRmsNormMatchesReferenceWithAndWithoutPostNormAndGather) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  const int T = 7;
  const float eps = 1e-5f;
  // D = 4096: the 16-byte-vector kernel (2 vectors a thread at 256 threads, 4 at 128), 6144 (4 /
  // 6: the register and the looping variants at 128); D = 1002 (not a multiple of the vector
  // width of any type): the shared-memory one. Both block sizes of the vector kernel.
  for (int threads : {256, 128})
  for (int D : {4096, 6144, 1002})
  for (int variant = 0; variant < 4; ++variant) {  // plain, +delta, +delta+post, gather
    NormThreadsOverride block(threads);
    ASSERT_EQ(cuda::NormBlockThreads(), threads);
    Rng rng(10 + variant);
    TypedBuffer res(tc.types.act, T * D), del(tc.types.act, T * D), w(tc.types.weight, D),
        pw(tc.types.weight, D), out(tc.types.act, T * D);
    auto h_res = res.Upload(rng.Vector(T * D, -3, 3));
    auto h_del = del.Upload(rng.Vector(T * D, -1, 1));
    auto h_w = w.Upload(rng.Vector(D, 0.5, 1.5));
    auto h_pw = pw.Upload(rng.Vector(D, 0.5, 1.5));
    const bool with_delta = variant >= 1, with_post = variant >= 2, gather = variant == 3;
    std::vector<int32_t> idx = {6, 2, 3};
    void* d_idx = nullptr;
    testing::UploadInts(&d_idx, idx);
    const int rows = gather ? 3 : T;
    out.Poison();
    ASSERT_CUDA(cuda::LaunchAddRmsNorm(tc.types, res.get(), with_delta ? del.get() : nullptr,
                                       with_post ? pw.get() : nullptr, w.get(), out.get(),
                                       gather ? static_cast<int32_t*>(d_idx) : nullptr, rows, D, eps, nullptr));
    std::vector<float> want(rows * D);
    RefAddRmsNorm(tc.types.act, h_res, with_delta ? &h_del : nullptr, with_post ? &h_pw : nullptr, h_w,
                  want, gather ? &idx : nullptr, rows, D, eps);
    auto got = out.Download();
    got.resize(rows * D);
    ExpectClose(got, want, 2 * tc.tol, 0.05f,
                "rmsnorm variant " + std::to_string(variant) + " D=" + std::to_string(D) + " threads " + std::to_string(threads));
    if (with_delta) {
      auto got_res = res.Download();
      if (gather) {  // only gathered rows are updated
        for (int r : idx) {
          std::vector<float> g(got_res.begin() + r * D, got_res.begin() + (r + 1) * D);
          std::vector<float> e(h_res.begin() + r * D, h_res.begin() + (r + 1) * D);
          ExpectClose(g, e, 2 * tc.tol, 0.05f, "residual row");
        }
      } else {
        ExpectClose(got_res, h_res, 2 * tc.tol, 0.05f, "residual");
      }
    }
    cudaFree(d_idx);
  }
}

// Dh = 128 takes the 16-byte-vector kernel, Dh = 6 (no whole vectors a head) the scalar one.
TEST_P(KernelTest, RotaryRotatesInterleavedPairsOfTheRotaryDimsAndWritesPagedKv) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  for (const auto& [Dh, rot] : {std::pair<int, int>{128, 64}, std::pair<int, int>{6, 4}}) {
    SCOPED_TRACE(::testing::Message() << "Dh=" << Dh << " rot=" << rot);
    const int T = 5, H = 4, Hkv = 2, bs = 16, blocks = 8;
    const int W = (H + 2 * Hkv) * Dh;
    Rng rng(3);
    TypedBuffer qkv(tc.types.act, T * W), bias(tc.types.weight, W);
    TypedBuffer kc(tc.types.weight, blocks * bs * Hkv * Dh), vc(tc.types.weight, blocks * bs * Hkv * Dh);
    auto h_qkv = qkv.Upload(rng.Vector(T * W, -2, 2));
    auto h_bias = bias.Upload(rng.Vector(W, -0.5, 0.5));
    kc.Poison();
    vc.Poison();
    std::vector<int32_t> pos = {0, 1, 17, 900, 3000};
    std::vector<int32_t> slots = {5 * bs + 0, 5 * bs + 1, 2 * bs + 1, 7 * bs + 4, -1};
    void *d_pos, *d_slots, *d_inv;
    testing::UploadInts(&d_pos, pos);
    testing::UploadInts(&d_slots, slots);
    const std::vector<float> inv = testing::UploadInvFreq(&d_inv, rot);
    ASSERT_CUDA(cuda::LaunchRotaryKvWrite(tc.types, qkv.get(), bias.get(), kc.get(), vc.get(),
                                          static_cast<int32_t*>(d_pos), static_cast<int32_t*>(d_slots),
                                          static_cast<float*>(d_inv), T, H, Hkv, Dh, rot, nullptr));
    auto got_q = qkv.Download();
    auto got_k = kc.Download();
    auto got_v = vc.Download();
    std::vector<float> want_q, gq;
    std::vector<float> want_kv, gkv;
    for (int t = 0; t < T; ++t) {
      for (int head = 0; head < H + 2 * Hkv; ++head) {
        for (int i = 0; i < Dh / 2; ++i) {
          const int c = head * Dh + 2 * i;
          float x0 = RoundThrough(tc.types.act, h_qkv[t * W + c] + h_bias[c]);
          float x1 = RoundThrough(tc.types.act, h_qkv[t * W + c + 1] + h_bias[c + 1]);
          if (head < H + Hkv && 2 * i < rot) {
            const float ang = float(pos[t]) * inv[i];
            const float cs = std::cos(ang), sn = std::sin(ang);
            const float r0 = x0 * cs - x1 * sn, r1 = x1 * cs + x0 * sn;
            x0 = r0;
            x1 = r1;
          }
          if (head < H) {
            want_q.push_back(RoundThrough(tc.types.act, x0));
            want_q.push_back(RoundThrough(tc.types.act, x1));
            gq.push_back(got_q[t * W + c]);
            gq.push_back(got_q[t * W + c + 1]);
          } else if (slots[t] >= 0) {
            const bool is_v = head >= H + Hkv;
            const int kvh = is_v ? head - H - Hkv : head - H;
            const auto& cache = is_v ? got_v : got_k;
            const int64_t base = (int64_t(slots[t]) * Hkv + kvh) * Dh + 2 * i;
            want_kv.push_back(RoundThrough(tc.types.weight, x0));
            want_kv.push_back(RoundThrough(tc.types.weight, x1));
            gkv.push_back(cache[base]);
            gkv.push_back(cache[base + 1]);
          }
        }
      }
    }
    ExpectClose(gq, want_q, 2 * tc.tol + 1e-4f, 0.05f, "q");
    ExpectClose(gkv, want_kv, 2 * tc.tol + 1e-4f, 0.05f, "kv");
    // The padding token (slot -1) wrote nothing: every slot outside the four written stays NaN.
    int written = 0;
    for (float x : got_k) written += std::isnan(x) ? 0 : 1;
    EXPECT_EQ(written, 4 * Hkv * Dh);
    cudaFree(d_pos);
    cudaFree(d_slots);
    cudaFree(d_inv);
  }
}

// Paged attention against a direct softmax over each token's visible context.
struct AttnCase {
  int H, Hkv, Dh;
  std::vector<int> new_tokens, context;  // per sequence
  int splits;
};

void RunAttentionCase(const TypeCase& tc, const AttnCase& ac, uint64_t seed, bool force_simt = false) {
  const int bs = 16;
  const int S = static_cast<int>(ac.context.size());
  const int G = ac.H / ac.Hkv;
  Rng rng(seed);
  int T = 0, total_blocks = 0;
  std::vector<int32_t> qstart, positions, item_seq, item_tok, ctx(ac.context.begin(), ac.context.end());
  const bool decode = std::all_of(ac.new_tokens.begin(), ac.new_tokens.end(), [](int n) { return n == 1; });
  const int tpi = decode ? 1 : cuda::AttentionTokensPerItem(G);
  int stride = 0;
  for (int s = 0; s < S; ++s) stride = std::max(stride, (ac.context[s] + bs - 1) / bs);
  for (int s = 0; s < S; ++s) total_blocks += (ac.context[s] + bs - 1) / bs;
  total_blocks += 3;
  // Block tables: a shuffled permutation so sequences interleave in the pool.
  std::vector<int32_t> perm(total_blocks);
  for (int i = 0; i < total_blocks; ++i) perm[i] = i;
  for (int i = total_blocks - 1; i > 0; --i) std::swap(perm[i], perm[rng.Next() % (i + 1)]);
  std::vector<int32_t> bt(S * stride, 0);
  int next = 0;
  for (int s = 0; s < S; ++s) {
    for (int b = 0; b < (ac.context[s] + bs - 1) / bs; ++b) bt[s * stride + b] = perm[next++];
    qstart.push_back(T);
    for (int i = 0; i < ac.new_tokens[s]; ++i) positions.push_back(ac.context[s] - ac.new_tokens[s] + i);
    for (int t0 = 0; t0 < ac.new_tokens[s]; t0 += tpi) { item_seq.push_back(s); item_tok.push_back(t0); }
    T += ac.new_tokens[s];
  }
  qstart.push_back(T);
  const int Dh = ac.Dh, H = ac.H, Hkv = ac.Hkv;
  const int q_stride = (H + 2 * Hkv) * Dh;
  TypedBuffer q(tc.types.act, T * q_stride), kc(tc.types.weight, total_blocks * bs * Hkv * Dh),
      vc(tc.types.weight, total_blocks * bs * Hkv * Dh), out(tc.types.act, T * H * Dh);
  auto h_q = q.Upload(rng.Vector(T * q_stride, -1.5, 1.5));
  auto h_k = kc.Upload(rng.Vector(total_blocks * bs * Hkv * Dh, -1.5, 1.5));
  auto h_v = vc.Upload(rng.Vector(total_blocks * bs * Hkv * Dh, -1, 1));
  out.Poison();
  void *d_bt, *d_stride, *d_qs, *d_ctx, *d_pos, *d_is, *d_it;
  testing::UploadInts(&d_bt, bt);
  testing::UploadInts(&d_stride, {stride});
  testing::UploadInts(&d_qs, qstart);
  testing::UploadInts(&d_ctx, ctx);
  testing::UploadInts(&d_pos, positions);
  testing::UploadInts(&d_is, item_seq);
  testing::UploadInts(&d_it, item_tok);
  float *d_po = nullptr, *d_ml = nullptr;
  cudaMalloc(&d_po, sizeof(float) * ac.splits * T * H * Dh);
  cudaMalloc(&d_ml, sizeof(float) * ac.splits * T * H * 2);
  cuda::AttentionArgs a;
  a.q = q.get(); a.q_stride = q_stride; a.k_cache = kc.get(); a.v_cache = vc.get();
  a.block_tables = static_cast<int32_t*>(d_bt); a.bt_stride = static_cast<int32_t*>(d_stride);
  a.seq_qstart = static_cast<int32_t*>(d_qs); a.seq_context = static_cast<int32_t*>(d_ctx);
  a.positions = static_cast<int32_t*>(d_pos); a.item_seq = static_cast<int32_t*>(d_is);
  a.item_token = static_cast<int32_t*>(d_it); a.num_items = static_cast<int>(item_seq.size());
  a.tokens_per_item = tpi; a.H = H; a.Hkv = Hkv; a.Dh = Dh; a.block_size = bs;
  a.scale = 1.0f / std::sqrt(float(Dh)); a.splits = ac.splits; a.out = out.get();
  a.partial_out = d_po; a.partial_ml = d_ml; a.T = T;
  void* d_counters = nullptr;
  testing::UploadInts(&d_counters, std::vector<int32_t>(item_seq.size() * Hkv, 0));
  // Runs 0 and 1: the in-kernel split combine (tensor-core kernel with counters); it must leave
  // its counters at zero, so the second launch (a graph replay) gives the same rows bit for bit.
  // Runs 2.. : the same with each decode block shape forced (warps, pipeline depth; the automatic
  // choice takes 4 warps and 4 stages for small batches like these); prefill items take the
  // forced depth too (3: the 3-stage prefill shape, else 2). Last run: without counters
  // (every split writes partials, the combine kernel merges them).
  struct Forced { int warps, stages; bool warp_pipes; const char* what; };
  const std::vector<Forced> shapes = {{4, 2, false, "4 warps, 2-stage pipeline"},
                                      {4, 4, false, "4 warps, 4-stage pipeline"},
                                      {2, 2, false, "2 warps / 32-key tiles, 2 stages"},
                                      {2, 3, false, "2 warps / 32-key tiles, 3 stages"},
                                      {2, 4, false, "2 warps / 32-key tiles, 4 stages"},
                                      {2, 2, true, "2 warp pipelines, 2 stages"},
                                      {2, 3, true, "2 warp pipelines, 3 stages"},
                                      {2, 4, true, "2 warp pipelines, 4 stages"},
                                      {4, 2, true, "4 warp pipelines, 2 stages"},
                                      {4, 4, true, "4 warp pipelines, 4 stages"}};
  const int runs = 3 + static_cast<int>(shapes.size());
  std::vector<float> fused;
  std::vector<std::vector<float>> forced;
  for (int run = 0; run < runs; ++run) {
    out.Poison();
    if (force_simt) {
      ASSERT_CUDA(cuda::LaunchPagedAttentionSimt(tc.types, a, nullptr));
      if (ac.splits > 1) {
        ASSERT_CUDA(cuda::LaunchAttentionCombine(tc.types, d_po, d_ml, out.get(), ac.splits, T, H, Dh, nullptr));
      }
    } else {
      a.split_counters = run < runs - 1 ? static_cast<int32_t*>(d_counters) : nullptr;
      const bool forcing = run >= 2 && run < runs - 1;
      a.decode_warps = forcing ? shapes[run - 2].warps : 0;
      a.stages = forcing ? shapes[run - 2].stages : 0;
      a.warp_pipes = forcing && shapes[run - 2].warp_pipes;
      ASSERT_CUDA(cuda::LaunchPagedAttention(tc.types, a, nullptr));
    }
    if (run == 0) fused = out.Download();
    if (run == 1) {
      EXPECT_EQ(out.Download(), fused) << "a second launch differs (split counters not reset?)";
    }
    if (run >= 2 && run < runs - 1) forced.push_back(out.Download());
  }
  auto got = out.Download();
  {
    std::vector<int32_t> counters(item_seq.size() * Hkv, -1);
    ASSERT_EQ(cudaMemcpy(counters.data(), d_counters, counters.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int32_t c : counters) ASSERT_EQ(c, 0) << "split counters not reset";
  }
  cudaFree(d_counters);
  std::vector<float> want(T * H * Dh);
  for (int s = 0; s < S; ++s) {
    for (int i = 0; i < ac.new_tokens[s]; ++i) {
      const int t = qstart[s] + i;
      const int visible = positions[t] + 1;
      for (int h = 0; h < H; ++h) {
        const int kvh = h / G;
        std::vector<double> sc(visible);
        double mx = -1e300;
        for (int j = 0; j < visible; ++j) {
          const int64_t slot = int64_t(bt[s * stride + j / bs]) * bs + j % bs;
          double dot = 0;
          for (int d = 0; d < Dh; ++d) dot += double(h_q[t * q_stride + h * Dh + d]) * h_k[(slot * Hkv + kvh) * Dh + d];
          sc[j] = dot / std::sqrt(double(Dh));
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int j = 0; j < visible; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
        for (int d = 0; d < Dh; ++d) {
          double acc = 0;
          for (int j = 0; j < visible; ++j) {
            const int64_t slot = int64_t(bt[s * stride + j / bs]) * bs + j % bs;
            acc += sc[j] * h_v[(slot * Hkv + kvh) * Dh + d];
          }
          want[(int64_t(t) * H + h) * Dh + d] = RoundThrough(tc.types.act, float(acc / sum));
        }
      }
    }
  }
  ExpectClose(got, want, 2 * tc.tol + 1e-4f, 0.05f, "attention");
  ExpectClose(fused, want, 2 * tc.tol + 1e-4f, 0.05f, "attention, splits merged in the kernel");
  for (size_t i = 0; i < shapes.size(); ++i) {
    ExpectClose(forced[i], want, 2 * tc.tol + 1e-4f, 0.05f, std::string("attention, ") + shapes[i].what);
  }
  for (void* p : {d_bt, d_stride, d_qs, d_ctx, d_pos, d_is, d_it}) cudaFree(p);
  cudaFree(d_po);
  cudaFree(d_ml);
}

TEST_P(KernelTest, PagedDecodeAttentionGqa16MatchesSoftmaxReference) {
  GLM_REQUIRE_CUDA_DEVICE();
  RunAttentionCase(GetParam(), {32, 2, 128, {1, 1, 1}, {1, 45, 300}, 1}, 5);
}

TEST_P(KernelTest, SplitKDecodeAttentionCombinesPartials) {
  GLM_REQUIRE_CUDA_DEVICE();
  RunAttentionCase(GetParam(), {32, 2, 128, {1, 1}, {1000, 77}, 7}, 6);
}

TEST_P(KernelTest, ChunkedPrefillAttendsToCachedContextAndCausallyToItself) {
  GLM_REQUIRE_CUDA_DEVICE();
  // seq 0: 37 new tokens after 63 cached; seq 1: a fresh prompt of 70; seq 2: a decode.
  RunAttentionCase(GetParam(), {32, 2, 128, {37, 70, 1}, {100, 70, 20}, 1}, 7);
}

TEST_P(KernelTest, ChunkedPrefillOnCudaCoresMatchesToo) {
  GLM_REQUIRE_CUDA_DEVICE();
  // Where the tensor-core kernel takes prefill (bf16, fp16), the CUDA-core one must still be right.
  RunAttentionCase(GetParam(), {32, 2, 128, {37, 70, 1}, {100, 70, 20}, 1}, 7, /*force_simt=*/true);
}

TEST_P(KernelTest, AttentionSmallHeadsAndGroups) {
  GLM_REQUIRE_CUDA_DEVICE();
  RunAttentionCase(GetParam(), {4, 2, 16, {9, 1}, {40, 33}, 1}, 8);
  RunAttentionCase(GetParam(), {6, 2, 64, {1, 1}, {200, 3}, 3}, 9);
}

TEST_P(KernelTest, AttentionLongPromptAndMultiQueryGroups) {
  GLM_REQUIRE_CUDA_DEVICE();
  // A 300-token prompt: several 64-key tiles through the double-buffered pipeline, and causal
  // masks that cut tiles in the middle.
  RunAttentionCase(GetParam(), {32, 2, 128, {300}, {300}, 1}, 10);
  // 32 query heads on one KV head: 32 rows per decode item (two row warps, two key warps).
  RunAttentionCase(GetParam(), {32, 1, 128, {1, 1, 1}, {300, 70, 1}, 2}, 11);
  // Long contexts: the in-kernel combine picks min(32, tiles / 4) splits per sequence.
  RunAttentionCase(GetParam(), {32, 2, 128, {1, 1, 1}, {2000, 600, 130}, 32}, 13);
  // Decode with 64-dim heads and empty splits (more splits than tiles).
  RunAttentionCase(GetParam(), {16, 2, 64, {1, 1}, {65, 9}, 4}, 12);
}

TEST_P(KernelTest, SiluMulMatchesReference) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  const int T = 3;
  for (int F : {1000, 1001}) {  // 16-byte vectors, and the scalar kernel
  Rng rng(11);
  TypedBuffer gu(tc.types.act, T * 2 * F), out(tc.types.act, T * F);
  auto h = gu.Upload(rng.Vector(T * 2 * F, -6, 6));
  out.Poison();
  ASSERT_CUDA(cuda::LaunchSiluMul(tc.types, gu.get(), out.get(), T, F, nullptr));
  std::vector<float> want(T * F);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < F; ++j) {
      const float g = h[t * 2 * F + j], u = h[t * 2 * F + F + j];
      want[t * F + j] = RoundThrough(tc.types.act, RoundThrough(tc.types.act, g / (1 + std::exp(-g))) * u);
    }
  ExpectClose(out.Download(), want, 2 * tc.tol, 0.01f, "silu");
  }
}

// N = 300 and 64 columns stream few rows, so the launcher splits K four ways (GemvSplitK); the
// N derived from the SM count give 2 and 1 (4 blocks of 8 warps per SM, the default target,
// reached at S = 2 and 1), and K = 1544 bf16 (193 vectors) halves a split of 4 to 2 slices of 96
// and 97 vectors.
TEST_P(KernelTest, GemvMatchesReferenceForOneToFourRows) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  int dev = 0, sms = 0;
  ASSERT_CUDA(cudaGetDevice(&dev));
  ASSERT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  struct Shape { int N, K; };
  const Shape shapes[] = {{300, 13696}, {64, 8192}, {16 * sms + 24, 4096}, {32 * sms + 8, 1000},
                          {20, 1544}, {4 * sms + 3, 200}};
  bool seen[5] = {};
  for (const Shape& sh : shapes) {
    const int N = sh.N, K = sh.K;
    const int split = cuda::GemvSplitK(tc.types.weight, N, K);
    ASSERT_TRUE(split == 1 || split == 2 || split == 4) << split;
    seen[split] = true;
    for (int M = 1; M <= 4; ++M) {
      const std::string what = "gemv N=" + std::to_string(N) + " K=" + std::to_string(K) +
                               " M=" + std::to_string(M) + " split=" + std::to_string(split);
      Rng rng(20 + M + N + K);
      TypedBuffer x(tc.types.weight, M * K), w(tc.types.weight, int64_t{N} * K), y(tc.types.act, M * N);
      auto hx = x.Upload(rng.Vector(M * K, -1, 1));
      auto hw = w.Upload(rng.Vector(int64_t{N} * K, -0.05, 0.05));
      float alpha = 0.5f;
      float* d_alpha = nullptr;
      cudaMalloc(&d_alpha, 4);
      cudaMemcpy(d_alpha, &alpha, 4, cudaMemcpyHostToDevice);
      y.Poison();
      ASSERT_TRUE(cuda::GemvSupports(tc.types.weight, M, K));
      ASSERT_CUDA(cuda::LaunchGemv(tc.types, x.get(), w.get(), y.get(), M, N, K, d_alpha, nullptr));
      std::vector<float> want(M * N);
      for (int m = 0; m < M; ++m)
        for (int n = 0; n < N; ++n) {
          double acc = 0;
          const float* xr = &hx[int64_t{m} * K];
          const float* wr = &hw[int64_t{n} * K];
          for (int k = 0; k < K; ++k) acc += double(xr[k]) * wr[k];
          want[m * N + n] = RoundThrough(tc.types.act, float(acc) * alpha);
        }
      ExpectClose(y.Download(), want, 2 * tc.tol + 1e-4f, 0.3f, what);
      cudaFree(d_alpha);
    }
  }
  EXPECT_TRUE(seen[1] && seen[2] && seen[4]) << "split-K factors 1, 2 and 4 not all exercised";
}

// The decode MLP's fused gate/up GEMV + SiLU-and-multiply against the unfused pair it replaces
// (LaunchGemv into an act-type [M, 2F] buffer, then LaunchSiluMul): the same values, bit for bit.
// Both launchers choose the split-K factor from the 2F weight rows they stream (GemvSplitK), so
// they sum in the same order. F = 300 (600 rows) splits K four ways where K has >= 256 vectors:
// K = 4096 + 64 bf16 is 520 vectors (slices of 130: one full round of 128 per lane and a tail);
// K = 1544 bf16 is 193 vectors (two slices of 96 and 97, no full round in one of them);
// K = 200 has fewer vectors than one round, so no split and every lane runs the tail loop only.
TEST_P(KernelTest, GemvSiluMulMatchesUnfusedPathBitForBit) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  const int F = 300;
  for (int K : {4096 + 64, 4096 + 8 * 24, 8 * 193, 200}) {
    for (int M = 1; M <= 4; ++M) {
      for (bool with_alpha : {false, true}) {
        const std::string what = "gemv_silu K=" + std::to_string(K) + " M=" + std::to_string(M) +
                                 (with_alpha ? " alpha" : "");
        Rng rng(50 + M + K);
        TypedBuffer x(tc.types.weight, M * K), w(tc.types.weight, 2 * F * K),
            gate_up(tc.types.act, M * 2 * F), unfused(tc.types.act, M * F), fused(tc.types.act, M * F);
        x.Upload(rng.Vector(M * K, -1, 1));
        w.Upload(rng.Vector(2 * F * K, -0.1, 0.1));
        float alpha = 0.75f;
        float* d_alpha = nullptr;
        if (with_alpha) {
          cudaMalloc(&d_alpha, 4);
          cudaMemcpy(d_alpha, &alpha, 4, cudaMemcpyHostToDevice);
        }
        gate_up.Poison();
        unfused.Poison();
        fused.Poison();
        ASSERT_TRUE(cuda::GemvSupports(tc.types.weight, M, K)) << what;
        ASSERT_CUDA(cuda::LaunchGemv(tc.types, x.get(), w.get(), gate_up.get(), M, 2 * F, K, d_alpha, nullptr));
        ASSERT_CUDA(cuda::LaunchSiluMul(tc.types, gate_up.get(), unfused.get(), M, F, nullptr));
        ASSERT_CUDA(cuda::LaunchGemvSiluMul(tc.types, x.get(), w.get(), fused.get(), M, F, K, d_alpha, nullptr));
        const auto want = unfused.Download();
        const auto got = fused.Download();
        ASSERT_EQ(got.size(), want.size()) << what;
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_TRUE(std::isfinite(want[i])) << what << "[" << i << "]";
          if (!(got[i] == want[i]) && ++bad <= 5) {
            EXPECT_EQ(got[i], want[i]) << what << "[" << i << "]";
          }
        }
        EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " values differ";
        if (d_alpha) cudaFree(d_alpha);
      }
    }
  }
}

// The compute capability major of device 0 (0 when the query fails).
int ComputeMajor() {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess) return 0;
  return major;
}

// Resets the norm weight staging override when a test leaves (also on a failed assertion).
struct StagingOverride {
  explicit StagingOverride(int mode) { cuda::OverrideNormWeightStaging(mode); }
  void Set(int mode) { cuda::OverrideNormWeightStaging(mode); }
  ~StagingOverride() { cuda::OverrideNormWeightStaging(-1); }
};

// Norm weight staging (the weights copied to shared memory before the PDL wait) changes where
// the norm weights are read from, never a bit: the standalone add-norm with and without it, for
// D = 4096 (two vectors a thread), 6144 (the four-vector kernel) and 1002 (the shared-memory
// kernel, which never stages), every variant. The GEMV prologue is compared both ways below.
TEST_P(KernelTest, AddRmsNormWeightStagingKeepsEveryBit) {
  GLM_REQUIRE_CUDA_DEVICE();
  if (ComputeMajor() < 8) GTEST_SKIP() << "norm weight staging needs sm80+ (cp.async); this GPU never stages";
  const TypeCase& tc = GetParam();
  StagingOverride staging(1);
  EXPECT_TRUE(cuda::NormWeightStaging(cuda::NormStageSite::kAddNorm));
  EXPECT_TRUE(cuda::NormWeightStaging(cuda::NormStageSite::kGemvPrologue));
  staging.Set(0);
  EXPECT_FALSE(cuda::NormWeightStaging(cuda::NormStageSite::kAddNorm));
  EXPECT_FALSE(cuda::NormWeightStaging(cuda::NormStageSite::kGemvPrologue));
  const int T = 5;
  const float eps = 1e-5f;
  for (int D : {4096, 6144, 1002})
  for (int variant = 0; variant < 4; ++variant) {  // plain, +delta, +delta+post, gather
    const std::string what = "D=" + std::to_string(D) + " variant " + std::to_string(variant);
    Rng rng(30 + variant);
    TypedBuffer res_off(tc.types.act, T * D), res_on(tc.types.act, T * D), del(tc.types.act, T * D),
        w(tc.types.weight, D), pw(tc.types.weight, D), out_off(tc.types.act, T * D),
        out_on(tc.types.act, T * D);
    const auto h_res = res_off.Upload(rng.Vector(T * D, -3, 3));
    res_on.Upload(h_res);
    del.Upload(rng.Vector(T * D, -1, 1));
    w.Upload(rng.Vector(D, 0.5, 1.5));
    pw.Upload(rng.Vector(D, 0.5, 1.5));
    const bool with_delta = variant >= 1, with_post = variant >= 2, gather = variant == 3;
    const std::vector<int32_t> idx = {4, 0, 2};
    void* d_idx = nullptr;
    testing::UploadInts(&d_idx, idx);
    const int rows = gather ? 3 : T;
    out_off.Poison();
    out_on.Poison();
    for (int on : {0, 1}) {
      staging.Set(on);
      ASSERT_CUDA(cuda::LaunchAddRmsNorm(tc.types, (on ? res_on : res_off).get(), with_delta ? del.get() : nullptr,
                                         with_post ? pw.get() : nullptr, w.get(), (on ? out_on : out_off).get(),
                                         gather ? static_cast<int32_t*>(d_idx) : nullptr, rows, D, eps, nullptr));
    }
    auto got_off = out_off.Download(), got_on = out_on.Download();
    got_off.resize(rows * D);
    got_on.resize(rows * D);
    for (float v : got_off) ASSERT_TRUE(std::isfinite(v)) << what << ": unwritten output";
    EXPECT_EQ(got_on, got_off) << what;
    EXPECT_EQ(res_on.Download(), res_off.Download()) << what << ": residual";
    cudaFree(d_idx);
  }
}

// The decode GEMVs' norm prologue (GemvNormIn: every block computes the residual add + RMSNorm
// of its input) against LaunchAddRmsNorm followed by the same GEMV: the output and the updated
// residual are the same bits, for the plain, +delta and +delta+post-norm variants, with the norm
// weight staging off and on for either side (it applies where the rows and weights fit 44 KB).
TEST_P(KernelTest, GemvNormPrologueMatchesAddRmsNormThenGemvBitForBit) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  if (!cuda::GemvNormSupports(tc.types, 1, 4096)) {
    EXPECT_NE(tc.types.act, tc.types.weight);  // only the fp16-safe mode goes without
    const cuda::GemvNormIn none;
    EXPECT_EQ(cuda::LaunchGemvSiluMul(tc.types, nullptr, nullptr, nullptr, 1, 8, 4096, nullptr, nullptr,
                                      &none), cudaErrorInvalidValue);
    return;
  }
  const int F = 200;
  const float eps = 1e-5f;
  StagingOverride staging(0);
  for (int stage = 0; stage < 4; ++stage) {  // bit 0: the standalone norm stages, bit 1: the prologue
  for (int K : {4096, 1024 + 8}) {
    for (int M = 1; M <= 4; ++M) {
      if (!cuda::GemvNormSupports(tc.types, M, K)) continue;  // fp32, K = 4096, M > 2: over 44 KB
      for (int variant = 0; variant < 3; ++variant) {  // no delta, +delta, +delta+post
        const std::string what = "K=" + std::to_string(K) + " M=" + std::to_string(M) +
                                 " variant " + std::to_string(variant) + " staging " +
                                 std::to_string(stage & 1) + "/" + std::to_string(stage >> 1);
        Rng rng(70 + M + K + variant);
        TypedBuffer res_a(tc.types.act, M * K), res_b(tc.types.act, M * K), res_out(tc.types.act, M * K),
            delta(tc.types.act, M * K), nw(tc.types.weight, K), pw(tc.types.weight, K),
            normed(tc.types.act, M * K), w(tc.types.weight, 2 * F * K), want(tc.types.act, M * F),
            got(tc.types.act, M * F);
        const auto h_res = res_a.Upload(rng.Vector(M * K, -3, 3));  // rounded to the act type
        res_b.Upload(h_res);
        delta.Upload(rng.Vector(M * K, -1, 1));
        nw.Upload(rng.Vector(K, 0.5, 1.5));
        pw.Upload(rng.Vector(K, 0.5, 1.5));
        w.Upload(rng.Vector(2 * F * K, -0.1, 0.1));
        want.Poison();
        got.Poison();
        res_out.Poison();
        const bool with_delta = variant >= 1, with_post = variant == 2;
        staging.Set(stage & 1);
        ASSERT_CUDA(cuda::LaunchAddRmsNorm(tc.types, res_a.get(), with_delta ? delta.get() : nullptr,
                                           with_post ? pw.get() : nullptr, nw.get(), normed.get(), nullptr,
                                           M, K, eps, nullptr));
        ASSERT_CUDA(cuda::LaunchGemvSiluMul(tc.types, normed.get(), w.get(), want.get(), M, F, K, nullptr, nullptr));
        cuda::GemvNormIn n;
        n.residual_in = res_b.get();
        n.delta = with_delta ? delta.get() : nullptr;
        n.post_weight = with_post ? pw.get() : nullptr;
        n.weight = nw.get();
        n.residual_out = with_delta ? res_out.get() : nullptr;
        n.eps = eps;
        staging.Set(stage >> 1);
        ASSERT_CUDA(cuda::LaunchGemvSiluMul(tc.types, nullptr, w.get(), got.get(), M, F, K, nullptr, nullptr, &n));
        EXPECT_EQ(got.Download(), want.Download()) << what;
        EXPECT_EQ(res_b.Download(), h_res) << what << ": residual_in must stay untouched";
        if (with_delta) {
          EXPECT_EQ(res_out.Download(), res_a.Download()) << what << ": updated residual";
        }
      }
    }
  }
  }
}

// The decode QKV GEMV with bias + partial rotary + paged KV write fused into its epilogue against
// the pair it replaces (LaunchGemv into the act-type qkv buffer, then LaunchRotaryKvWrite): q
// columns of qkv and the caches (written slots and the untouched rest) bit for bit; the fused
// kernel leaves the k/v columns of qkv unwritten. Both GEMVs stream the (H + 2 Hkv) * Dh rows,
// so they split K alike: 4 ways for K = 4160 (bf16 520 vectors), 2 or 4 for K = 1544, none for
// K = 200. Positions include one past sincosf's fast-path range; slot -1 is a padding row.
TEST_P(KernelTest, GemvQkvRotaryMatchesGemvThenRotaryBitForBit) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  if (tc.types.act != tc.types.weight) {  // fp16-safe mode: unfused path only
    EXPECT_EQ(cuda::LaunchGemvQkvRotary(tc.types, nullptr, nullptr, nullptr, 1, 64, nullptr, nullptr,
                                        nullptr, nullptr, nullptr, nullptr, nullptr, 4, 2, 64, 32,
                                        nullptr),
              cudaErrorInvalidValue);
    return;
  }
  struct Shape { int H, Hkv, Dh, rot; };
  const int bs = 16, blocks = 8;
  const std::vector<int32_t> pos = {3, 1000, 0, 131071};
  const std::vector<int32_t> slots = {5 * bs + 3, -1, 2 * bs + 0, 7 * bs + 15};
  void *d_pos = nullptr, *d_slots = nullptr;
  testing::UploadInts(&d_pos, pos);
  testing::UploadInts(&d_slots, slots);
  auto same_bits = [](float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; };
  for (const Shape& sh : {Shape{4, 2, 64, 32}, Shape{4, 2, 128, 64}}) {
    const int QKV = (sh.H + 2 * sh.Hkv) * sh.Dh;
    const int64_t cache_elems = int64_t{blocks} * bs * sh.Hkv * sh.Dh;
    void* d_inv = nullptr;
    testing::UploadInvFreq(&d_inv, sh.rot);
    for (int K : {4096 + 64, 8 * 193, 200}) {
      Rng rng(70 + K + sh.Dh);
      TypedBuffer w(tc.types.weight, int64_t{QKV} * K), bias(tc.types.weight, QKV);
      w.Upload(rng.Vector(int64_t{QKV} * K, -0.1, 0.1));
      bias.Upload(rng.Vector(QKV, -0.5, 0.5));
      const auto cache_init = rng.Vector(cache_elems, -2, 2);
      for (int M = 1; M <= 4; ++M) {
        for (bool with_bias : {true, false}) {
          const std::string what = "qkv_rotary Dh=" + std::to_string(sh.Dh) + " K=" +
                                   std::to_string(K) + " M=" + std::to_string(M) +
                                   (with_bias ? " bias" : " alpha, no bias");
          TypedBuffer x(tc.types.weight, M * K), qkv_ref(tc.types.act, M * QKV),
              qkv_fused(tc.types.act, M * QKV);
          TypedBuffer kc_ref(tc.types.weight, cache_elems), vc_ref(tc.types.weight, cache_elems);
          TypedBuffer kc_fused(tc.types.weight, cache_elems), vc_fused(tc.types.weight, cache_elems);
          x.Upload(rng.Vector(M * K, -1, 1));
          const auto k_init = kc_ref.Upload(cache_init);
          const auto v_init = vc_ref.Upload(cache_init);
          kc_fused.Upload(cache_init);
          vc_fused.Upload(cache_init);
          qkv_ref.Poison();
          qkv_fused.Poison();
          // Without bias, an alpha (the GEMV's device scalar) instead.
          float alpha = 0.75f;
          float* d_alpha = nullptr;
          if (!with_bias) {
            cudaMalloc(&d_alpha, 4);
            cudaMemcpy(d_alpha, &alpha, 4, cudaMemcpyHostToDevice);
          }
          const void* b = with_bias ? bias.get() : nullptr;
          const int32_t* p = static_cast<int32_t*>(d_pos);
          const int32_t* sl = static_cast<int32_t*>(d_slots);
          const float* iv = static_cast<float*>(d_inv);
          ASSERT_CUDA(cuda::LaunchGemv(tc.types, x.get(), w.get(), qkv_ref.get(), M, QKV, K, d_alpha, nullptr));
          ASSERT_CUDA(cuda::LaunchRotaryKvWrite(tc.types, qkv_ref.get(), b, kc_ref.get(), vc_ref.get(), p,
                                                sl, iv, M, sh.H, sh.Hkv, sh.Dh, sh.rot, nullptr));
          ASSERT_CUDA(cuda::LaunchGemvQkvRotary(tc.types, x.get(), w.get(), qkv_fused.get(), M, K,
                                                d_alpha, b, kc_fused.get(), vc_fused.get(), p, sl,
                                                iv, sh.H, sh.Hkv, sh.Dh, sh.rot, nullptr));
          const auto want_q = qkv_ref.Download(), got_q = qkv_fused.Download();
          int bad = 0;
          for (int m = 0; m < M; ++m) {
            for (int c = 0; c < QKV; ++c) {
              const int64_t i = int64_t{m} * QKV + c;
              if (c < sh.H * sh.Dh) {
                EXPECT_TRUE(std::isfinite(want_q[i])) << what << " q[" << m << "][" << c << "]";
                if (!same_bits(got_q[i], want_q[i]) && ++bad <= 5) {
                  EXPECT_EQ(got_q[i], want_q[i]) << what << " q[" << m << "][" << c << "]";
                }
              } else if (!std::isnan(got_q[i]) && ++bad <= 5) {
                ADD_FAILURE() << what << " k/v column written: qkv[" << m << "][" << c << "] = " << got_q[i];
              }
            }
          }
          // Slots written by the reference: the rows m < M with slots[m] >= 0.
          std::vector<bool> written(int64_t{blocks} * bs, false);
          for (int m = 0; m < M; ++m)
            if (slots[m] >= 0) written[slots[m]] = true;
          const int64_t slot_elems = int64_t{sh.Hkv} * sh.Dh;
          for (int kv = 0; kv < 2; ++kv) {
            const auto want = (kv ? vc_ref : kc_ref).Download();
            const auto got = (kv ? vc_fused : kc_fused).Download();
            const auto& init = kv ? v_init : k_init;
            for (int64_t i = 0; i < cache_elems; ++i) {
              const char* name = kv ? " v_cache[" : " k_cache[";
              if (!written[i / slot_elems]) {
                if (!same_bits(got[i], init[i]) && ++bad <= 5) {
                  ADD_FAILURE() << what << name << i << "] (slot " << i / slot_elems
                                << " not written) changed: " << got[i] << " vs " << init[i];
                }
              } else if (!same_bits(got[i], want[i]) && ++bad <= 5) {
                EXPECT_EQ(got[i], want[i]) << what << name << i << "] (slot " << i / slot_elems << ")";
              }
            }
          }
          EXPECT_EQ(bad, 0) << what << ": " << bad << " values differ";
          if (d_alpha) cudaFree(d_alpha);
        }
      }
    }
    cudaFree(d_inv);
  }
  cudaFree(d_pos);
  cudaFree(d_slots);
}

// The decode QKV GEMV with the norm prologue (what bs1 runs: GLM-4-9B's 32 / 2 heads of 128,
// 4,608 rows, 288 blocks) against LaunchAddRmsNorm followed by the QKV GEMV without it: q
// columns, written cache slots and the updated residual bit for bit, with the post-norm and
// delta, staging off and on for the fused side, M = 1..4, K = 4,096 and 1,032.
TEST_P(KernelTest, GemvQkvRotaryNormPrologueMatchesAddRmsNormThenQkvBitForBit) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  if (!cuda::GemvNormSupports(tc.types, 1, 4096)) {
    EXPECT_NE(tc.types.act, tc.types.weight);  // only the fp16-safe mode goes without
    return;
  }
  const int H = 32, Hkv = 2, Dh = 128, rot = 64, bs = 16, blocks = 8;
  const int QKV = (H + 2 * Hkv) * Dh;
  const float eps = 1e-5f;
  const std::vector<int32_t> pos = {3, 1000, 0, 77};
  const std::vector<int32_t> slots = {5 * bs + 3, -1, 2 * bs + 0, 7 * bs + 15};
  void *d_pos = nullptr, *d_slots = nullptr, *d_inv = nullptr;
  testing::UploadInts(&d_pos, pos);
  testing::UploadInts(&d_slots, slots);
  testing::UploadInvFreq(&d_inv, rot);
  const int32_t* p = static_cast<int32_t*>(d_pos);
  const int32_t* sl = static_cast<int32_t*>(d_slots);
  const float* iv = static_cast<float*>(d_inv);
  const int64_t cache_elems = int64_t{blocks} * bs * Hkv * Dh;
  StagingOverride staging(0);
  for (int K : {4096, 1024 + 8}) {
    Rng rng(90 + K);
    TypedBuffer w(tc.types.weight, int64_t{QKV} * K), nw(tc.types.weight, K), pw(tc.types.weight, K);
    w.Upload(rng.Vector(int64_t{QKV} * K, -0.1, 0.1));
    nw.Upload(rng.Vector(K, 0.5, 1.5));
    pw.Upload(rng.Vector(K, 0.5, 1.5));
    const auto cache_init = rng.Vector(cache_elems, -2, 2);
    for (int M = 1; M <= 4; ++M) {
      if (!cuda::GemvNormSupports(tc.types, M, K)) continue;  // fp32, K = 4096, M > 2: over 44 KB
      for (int stage : {0, 1}) {
        const std::string what = "K=" + std::to_string(K) + " M=" + std::to_string(M) +
                                 " staging " + std::to_string(stage);
        TypedBuffer res_a(tc.types.act, M * K), res_b(tc.types.act, M * K), res_out(tc.types.act, M * K),
            delta(tc.types.act, M * K), normed(tc.types.act, M * K), qkv_ref(tc.types.act, M * QKV),
            qkv_got(tc.types.act, M * QKV), kc_ref(tc.types.weight, cache_elems),
            vc_ref(tc.types.weight, cache_elems), kc_got(tc.types.weight, cache_elems),
            vc_got(tc.types.weight, cache_elems);
        const auto h_res = res_a.Upload(rng.Vector(M * K, -3, 3));
        res_b.Upload(h_res);
        delta.Upload(rng.Vector(M * K, -1, 1));
        for (TypedBuffer* c : {&kc_ref, &vc_ref, &kc_got, &vc_got}) c->Upload(cache_init);
        qkv_ref.Poison();
        qkv_got.Poison();
        res_out.Poison();
        staging.Set(0);
        ASSERT_CUDA(cuda::LaunchAddRmsNorm(tc.types, res_a.get(), delta.get(), pw.get(), nw.get(),
                                           normed.get(), nullptr, M, K, eps, nullptr));
        ASSERT_CUDA(cuda::LaunchGemvQkvRotary(tc.types, normed.get(), w.get(), qkv_ref.get(), M, K, nullptr,
                                              nullptr, kc_ref.get(), vc_ref.get(), p, sl, iv, H, Hkv,
                                              Dh, rot, nullptr));
        cuda::GemvNormIn n;
        n.residual_in = res_b.get();
        n.delta = delta.get();
        n.post_weight = pw.get();
        n.weight = nw.get();
        n.residual_out = res_out.get();
        n.eps = eps;
        staging.Set(stage);
        ASSERT_CUDA(cuda::LaunchGemvQkvRotary(tc.types, nullptr, w.get(), qkv_got.get(), M, K, nullptr,
                                              nullptr, kc_got.get(), vc_got.get(), p, sl, iv, H, Hkv,
                                              Dh, rot, nullptr, &n));
        auto want_q = qkv_ref.Download(), got_q = qkv_got.Download();
        int bad = 0;
        for (int m = 0; m < M; ++m)
          for (int c = 0; c < H * Dh; ++c) {
            const int64_t i = int64_t{m} * QKV + c;
            if (std::memcmp(&want_q[i], &got_q[i], sizeof(float)) != 0 && ++bad <= 5) {
              EXPECT_EQ(got_q[i], want_q[i]) << what << " q[" << m << "][" << c << "]";
            }
          }
        EXPECT_EQ(bad, 0) << what << ": q values differ";
        EXPECT_EQ(kc_got.Download(), kc_ref.Download()) << what << ": k_cache";
        EXPECT_EQ(vc_got.Download(), vc_ref.Download()) << what << ": v_cache";
        EXPECT_EQ(res_out.Download(), res_a.Download()) << what << ": updated residual";
        EXPECT_EQ(res_b.Download(), h_res) << what << ": residual_in must stay untouched";
      }
    }
  }
  cudaFree(d_inv);
  cudaFree(d_pos);
  cudaFree(d_slots);
}

TEST_P(KernelTest, ArgmaxPicksFirstMaximumAndFlagsNonFiniteRows) {
  GLM_REQUIRE_CUDA_DEVICE();
  const TypeCase& tc = GetParam();
  const int rows = 4, V = 151552;
  Rng rng(30);
  auto h = rng.Vector(rows * V, -10, 10);
  h[0 * V + 123456] = 50.f;  // clear maximum
  h[1 * V + 7] = 60.f;       // a tie: the first index wins
  h[1 * V + 90000] = 60.f;
  h[2 * V + 5] = std::numeric_limits<float>::quiet_NaN();
  h[2 * V + 6] = 70.f;
  h[3 * V + 100] = std::numeric_limits<float>::infinity();
  h[3 * V + 8] = 40.f;
  TypedBuffer logits(tc.types.act, rows * V), f32(DType::kF32, rows * V);
  auto rounded = logits.Upload(h);
  f32.Poison();
  int32_t *d_tok = nullptr, *d_fin = nullptr;
  cudaMalloc(&d_tok, rows * 4);
  cudaMalloc(&d_fin, rows * 4);
  ASSERT_CUDA(cuda::LaunchArgmax(tc.types.act, logits.get(), rows, V, f32.as<float>(), d_tok, d_fin, nullptr));
  std::vector<int32_t> tok(rows), fin(rows);
  cudaMemcpy(tok.data(), d_tok, rows * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(fin.data(), d_fin, rows * 4, cudaMemcpyDeviceToHost);
  EXPECT_EQ(tok[0], 123456);
  EXPECT_EQ(tok[1], 7);
  EXPECT_EQ(tok[2], 6);
  EXPECT_EQ(tok[3], 8);
  EXPECT_EQ(fin[0], 1);
  EXPECT_EQ(fin[1], 1);
  EXPECT_EQ(fin[2], 0);
  EXPECT_EQ(fin[3], 0);
  auto copy = f32.Download();
  int mismatched = 0;
  for (size_t i = 0; i < copy.size(); ++i)
    if (!(copy[i] == rounded[i]) && !(std::isnan(copy[i]) && std::isnan(rounded[i]))) ++mismatched;
  EXPECT_EQ(mismatched, 0);
  // A row length that is no multiple of the 16-byte vector takes the scalar path.
  {
    const int V2 = 1001;
    auto h2 = rng.Vector(2 * V2, -10, 10);
    h2[1000] = 30.f;            // the last element of row 0
    h2[V2 + 3] = 30.f;          // row 1: a tie, the first wins
    h2[V2 + 999] = 30.f;
    h2[V2 + 500] = -std::numeric_limits<float>::infinity();
    TypedBuffer l2(tc.types.act, 2 * V2), c2(DType::kF32, 2 * V2);
    auto r2 = l2.Upload(h2);
    c2.Poison();
    ASSERT_CUDA(cuda::LaunchArgmax(tc.types.act, l2.get(), 2, V2, c2.as<float>(), d_tok, d_fin, nullptr));
    cudaMemcpy(tok.data(), d_tok, 2 * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(fin.data(), d_fin, 2 * 4, cudaMemcpyDeviceToHost);
    EXPECT_EQ(tok[0], 1000);
    EXPECT_EQ(tok[1], 3);
    EXPECT_EQ(fin[0], 1);
    EXPECT_EQ(fin[1], 0);
    EXPECT_EQ(c2.Download(), r2);
  }
  cudaFree(d_tok);
  cudaFree(d_fin);
}

// One row of a LaunchSample test: its logits, parameters and penalty scope, and whether the
// device must leave it to the host.
struct SampleCase {
  std::string what;
  std::vector<float> logits;
  SamplingParams params;
  std::vector<int32_t> context;
  int64_t generated_index = 0;
  bool host_only = false;  // the row is marked for the host: the device must leave it alone
};

// Runs LaunchSample over the cases (one row each, vocabulary V) and checks every row against
// Sampler::Sample on the same logits: the same token and finite flag (host_only rows: the
// fallback flag and nothing else).
void ExpectSampleMatchesHost(const std::vector<SampleCase>& cases, int V) {
  const int rows = static_cast<int>(cases.size());
  std::vector<float> all;
  std::vector<cuda::SampleRowArgs> args(rows);
  std::vector<int32_t> ctx;
  bool with_penalty = false;
  for (int r = 0; r < rows; ++r) {
    const SampleCase& c = cases[r];
    ASSERT_EQ(static_cast<int>(c.logits.size()), V) << c.what;
    all.insert(all.end(), c.logits.begin(), c.logits.end());
    cuda::SampleRowArgs& a = args[r];
    a.uniform = PhiloxUniform(c.params.seed, static_cast<uint64_t>(c.generated_index));
    a.temperature = c.params.temperature;
    a.top_p = c.params.top_p;
    a.top_k = c.params.top_k;
    a.penalty = c.params.repetition_penalty;
    a.ctx_begin = static_cast<int32_t>(ctx.size());
    a.ctx_len = static_cast<int32_t>(c.context.size());
    a.host_only = c.host_only ? 1 : 0;
    ctx.insert(ctx.end(), c.context.begin(), c.context.end());
    with_penalty |= c.params.repetition_penalty != 1.f;
  }
  TypedBuffer logits(DType::kF32, static_cast<int64_t>(rows) * V);
  logits.Upload(all);
  void *d_args = nullptr, *d_ctx = nullptr, *d_out = nullptr;
  ASSERT_CUDA(cudaMalloc(&d_args, rows * sizeof(cuda::SampleRowArgs)));
  ASSERT_CUDA(cudaMemcpy(d_args, args.data(), rows * sizeof(cuda::SampleRowArgs), cudaMemcpyHostToDevice));
  if (ctx.empty()) ctx.push_back(0);
  testing::UploadInts(&d_ctx, ctx);
  ASSERT_CUDA(cudaMalloc(&d_out, 3 * rows * 4));
  ASSERT_CUDA(cudaMemset(d_out, 0x7f, 3 * rows * 4));  // unwritten outputs fail
  int32_t* out = static_cast<int32_t*>(d_out);
  ASSERT_CUDA(cuda::LaunchSample(logits.as<float>(), rows, V, static_cast<cuda::SampleRowArgs*>(d_args),
                                 static_cast<int32_t*>(d_ctx), with_penalty, out, out + rows,
                                 out + 2 * rows, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<int32_t> got(3 * rows);
  ASSERT_CUDA(cudaMemcpy(got.data(), d_out, 3 * rows * 4, cudaMemcpyDeviceToHost));
  cudaFree(d_args);
  cudaFree(d_ctx);
  cudaFree(d_out);
  Sampler host;
  int on_device = 0;
  for (int r = 0; r < rows; ++r) {
    const SampleCase& c = cases[r];
    const int32_t token = got[r], finite = got[rows + r], fallback = got[2 * rows + r];
    ASSERT_TRUE(fallback == 0 || fallback == 1) << c.what << ": fallback flag " << fallback;
    EXPECT_EQ(fallback, c.host_only ? 1 : 0) << c.what;
    if (fallback) continue;
    ++on_device;
    std::vector<float> row = c.logits;
    const SampleOutcome want = host.Sample(row, c.params, c.context, c.generated_index);
    EXPECT_EQ(finite, want.nonfinite ? 0 : 1) << c.what;
    if (!want.nonfinite) {
      EXPECT_EQ(token, want.token_id) << c.what;
    }
  }
  EXPECT_GT(on_device, 0);
}

SamplingParams Params(float temperature, float top_p, int top_k, float penalty, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.repetition_penalty = penalty;
  p.seed = seed;
  return p;
}

// Rows of `V` logits where `peak` tokens stand well above a flat floor (a nucleus of a few
// tokens, like a trained model's), with exact ties among the peaks.
std::vector<float> PeakedRow(Rng& rng, int V, int peak) {
  std::vector<float> row = rng.Vector(V, -4, 0);
  for (int i = 0; i < peak; ++i) {
    const int id = 1 + static_cast<int>(rng.Uniform(0, 1) * (V - 2));
    if (i % 4 == 3) {
      row[id] = row[id - 1] = 9.f;  // a tie
    } else {
      row[id] = rng.Uniform(6, 12);
    }
  }
  return row;
}

TEST(SampleKernelTest, PicksWhatTheHostSamplerPicks) {
  GLM_REQUIRE_CUDA_DEVICE();
  EXPECT_GE(cuda::SampleMaxPenaltyVocab(), 151552) << "GLM-4's vocabulary must fit the penalty bitmap";
  for (const int V : {300, 4099, 151552}) {
    SCOPED_TRACE("V " + std::to_string(V));
    Rng rng(50 + V);
    std::vector<SampleCase> cases;
    const int draws = V > 10000 ? 6 : 24;  // draws a configuration (seeds and indices differ)
    // Rows: peaked (a nucleus of a few tokens), flat (uniform in [-3, 3]: a nucleus of most of
    // the vocabulary), or flat rounded to bf16 (the LM head's precision: thousands of exact ties).
    enum Shape { kPeaked, kFlat, kFlatBf16 };
    const auto add = [&](const std::string& what, SamplingParams p, Shape shape, bool penalized = false) {
      for (int d = 0; d < draws; ++d) {
        SampleCase c;
        c.what = what + " draw " + std::to_string(d);
        c.logits = shape == kPeaked ? PeakedRow(rng, V, 40) : rng.Vector(V, -3, 3);
        if (shape == kFlatBf16) {
          for (float& x : c.logits) x = RoundThrough(DType::kBF16, x);
        }
        c.params = p;
        c.params.seed = p.seed + 7919 * d;
        c.generated_index = d * 3;
        if (penalized) {
          for (int i = 0; i < 200; ++i) c.context.push_back(static_cast<int32_t>(rng.Uniform(0, 1) * (V - 1)));
          // The row's top tokens are in the scope (so the penalty changes the result) twice.
          const int top = static_cast<int>(std::max_element(c.logits.begin(), c.logits.end()) - c.logits.begin());
          c.context.push_back(top);
          c.context.push_back(top);
        }
        cases.push_back(std::move(c));
      }
    };
    add("greedy + penalty", Params(0, 1, 0, 1.3f, 1), kPeaked, true);
    add("temperature 1, whole vocabulary", Params(1, 1, 0, 1, 2), kFlat);
    add("temperature 0.7, whole vocabulary, peaked", Params(0.7f, 1, 0, 1, 3), kPeaked);
    add("top-k 1", Params(1, 1, 1, 1, 4), kFlat);
    add("top-k 5", Params(0.8f, 1, 5, 1, 5), kPeaked);
    add("top-k 50", Params(1.2f, 1, 50, 1, 6), kFlat);
    add("top-k 1024", Params(1, 1, 1024, 1, 7), kFlat);
    add("top-p 0.5, peaked", Params(1, 0.5f, 0, 1, 9), kPeaked);
    add("top-p 0.9, peaked", Params(0.9f, 0.9f, 0, 1, 10), kPeaked);
    add("top-k 40 + top-p 0.8", Params(1, 0.8f, 40, 1, 11), kFlat);
    add("top-k 20 + top-p 0.95 + penalty, peaked", Params(0.6f, 0.95f, 20, 1.5f, 12), kPeaked, true);
    add("temperature + penalty", Params(1, 1, 0, 0.8f, 13), kFlat, true);
    // Supports wider than the candidate sort (V > 1,024: the mass selects of WideSample).
    add("top-k 1025", Params(1, 1, 1025, 1, 8), kFlat);
    add("top-p 0.9, flat", Params(1, 0.9f, 0, 1, 14), kFlat);
    add("top-p 0.9, flat, bf16 ties", Params(1, 0.9f, 0, 1, 16), kFlatBf16);
    add("top-p 0.3, flat, bf16 ties, temperature 0.5", Params(0.5f, 0.3f, 0, 1, 17), kFlatBf16);
    add("top-p 0.99 + penalty, flat", Params(1.3f, 0.99f, 0, 1.2f, 18), kFlat, true);
    if (V > 3000) {
      add("top-k 3000, bf16 ties", Params(1, 1, 3000, 1, 19), kFlatBf16);
      add("top-k 2500 + top-p 0.7", Params(0.8f, 0.7f, 2500, 1, 20), kFlat);
    }
    // Ties at the k-th logit: all kept (HF), here within the candidates.
    for (int d = 0; d < draws; ++d) {
      SampleCase c;
      c.what = "top-k 3 with ties at the 3rd, draw " + std::to_string(d);
      c.logits = rng.Vector(V, -3, 3);
      c.logits[V - 1] = 10.f;
      for (int i = 0; i < 6; ++i) c.logits[(i * 37 + d) % (V - 1)] = 7.f;
      c.params = Params(1, 1, 3, 1, 15 + d);
      c.generated_index = d;
      cases.push_back(std::move(c));
    }
    // Ties at the k-th logit beyond the candidates' room (the draw lands among the ties for most
    // seeds: their ids ascending decide), and a top key whose ties alone fill the room (top-p).
    if (V > 2048) {
      for (int d = 0; d < draws; ++d) {
        SampleCase c;
        c.what = "top-k 10 with 2,000 ties at the 10th, draw " + std::to_string(d);
        c.logits = rng.Vector(V, -3, 3);
        for (int i = 0; i < 2000; ++i) c.logits[i * (V / 2000)] = 5.f;
        c.logits[V - 3] = 6.f;
        c.params = Params(1, 1, 10, 1, 40 + d);
        c.generated_index = d;
        cases.push_back(c);
        c.what = "top-p 0.5 with 2,000 ties at the top, draw " + std::to_string(d);
        c.logits[V - 3] = 4.f;
        c.params = Params(1, 0.5f, 0, 1, 60 + d);
        cases.push_back(std::move(c));
      }
    }
    // A row marked for the host: left alone.
    {
      SampleCase c;
      c.what = "host_only";
      c.logits = rng.Vector(V, -3, 3);
      c.params = Params(1, 0.9f, 0, 1.1f, 42);
      c.host_only = true;
      cases.push_back(std::move(c));
    }
    // Non-finite rows: no token whatever the sampler; the penalty cannot hide a NaN.
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      SampleCase c;
      c.what = "non-finite " + std::to_string(bad);
      c.logits = rng.Vector(V, -3, 3);
      c.logits[V / 2] = bad;
      c.params = Params(1, 0.9f, 50, 1.2f, 41);
      c.context = {V / 2, 1};
      cases.push_back(std::move(c));
    }
    ExpectSampleMatchesHost(cases, V);
  }
}

// `draws` device draws from one row (Philox seed 1234, draw d's index d): every row finite, none
// left to the host.
std::vector<int32_t> DrawMany(const std::vector<float>& row, int draws, float temperature, int top_k,
                              float top_p) {
  const int V = static_cast<int>(row.size());
  std::vector<float> all;
  all.reserve(static_cast<size_t>(draws) * V);
  std::vector<cuda::SampleRowArgs> args(draws);
  for (int d = 0; d < draws; ++d) {
    all.insert(all.end(), row.begin(), row.end());
    args[d].uniform = PhiloxUniform(1234, d);
    args[d].temperature = temperature;
    args[d].top_k = top_k;
    args[d].top_p = top_p;
  }
  TypedBuffer logits(DType::kF32, static_cast<int64_t>(draws) * V);
  logits.Upload(all);
  void *d_args = nullptr, *d_out = nullptr;
  EXPECT_EQ(cudaMalloc(&d_args, draws * sizeof(cuda::SampleRowArgs)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d_args, args.data(), draws * sizeof(cuda::SampleRowArgs), cudaMemcpyHostToDevice),
            cudaSuccess);
  EXPECT_EQ(cudaMalloc(&d_out, 3 * draws * 4), cudaSuccess);
  int32_t* out = static_cast<int32_t*>(d_out);
  EXPECT_EQ(cuda::LaunchSample(logits.as<float>(), draws, V, static_cast<cuda::SampleRowArgs*>(d_args),
                               nullptr, false, out, out + draws, out + 2 * draws, nullptr),
            cudaSuccess);
  std::vector<int32_t> got(3 * draws);
  EXPECT_EQ(cudaMemcpy(got.data(), d_out, 3 * draws * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_args);
  cudaFree(d_out);
  for (int d = 0; d < draws; ++d) {
    EXPECT_EQ(got[draws + d], 1) << "draw " << d << " finite";
    EXPECT_EQ(got[2 * draws + d], 0) << "draw " << d << " fallback";
  }
  got.resize(draws);
  return got;
}

// Sampling from the device over many draws follows the softmax: the tokens' frequencies over
// 4,096 draws of one peaked row match their probabilities, from the candidate sort (top-k 8,
// temperature 0.5) and from the mass selects (top-k 2,000: 8 heavy tokens over a floor).
TEST(SampleKernelTest, FrequenciesFollowTheDistribution) {
  GLM_REQUIRE_CUDA_DEVICE();
  const int V = 8195, draws = 4096;
  const int ids[8] = {10, 2000, 3000, 4000, 5000, 6000, 7000, V - 1};
  const float vals[8] = {3.0f, 2.8f, 2.5f, 2.2f, 2.0f, 1.5f, 1.0f, 0.5f};
  for (const int top_k : {8, 2000}) {
    SCOPED_TRACE("top_k " + std::to_string(top_k));
    Rng rng(77);
    std::vector<float> row = rng.Vector(V, -5, 0);
    for (int i = 0; i < 8; ++i) row[ids[i]] = vals[i];
    const float T = 0.5f;
    const std::vector<int32_t> got = DrawMany(row, draws, T, top_k, 1.f);
    // The support: the top_k largest logits (the row has no ties at its k-th).
    std::vector<float> sorted = row;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    double z = 0;
    for (int i = 0; i < top_k; ++i) z += std::exp((sorted[i] - vals[0]) / T);
    const float kth = sorted[top_k - 1];
    int in_heavy = 0;
    for (int i = 0; i < 8; ++i) {
      const double p = std::exp((vals[i] - vals[0]) / T) / z;
      const int n = static_cast<int>(std::count(got.begin(), got.end(), ids[i]));
      in_heavy += n;
      const double sd = std::sqrt(draws * p * (1 - p));
      EXPECT_NEAR(n, draws * p, 5 * sd + 1) << "token " << ids[i] << " p " << p;
    }
    for (int d = 0; d < draws; ++d) {
      ASSERT_TRUE(got[d] >= 0 && got[d] < V && row[got[d]] >= kth) << "draw " << d << " picked " << got[d];
    }
    if (top_k == 8) {
      EXPECT_EQ(in_heavy, draws);
    } else {
      EXPECT_LT(in_heavy, draws) << "the floor's mass is drawn too";
    }
  }
}

// Logprobs on the device: LogSoftmaxTop's ids in its order (ties to the lower id, also across
// the threads' lists) and its values to fp32 summation order, for n = 1, a few and the most, on
// a vector row and a scalar one (V % 4 != 0), a row narrower than n, rows without logprobs left
// untouched, and a sampled token outside the row (NaN).
TEST(LogprobsKernelTest, MatchesTheHostLogSoftmaxTop) {
  GLM_REQUIRE_CUDA_DEVICE();
  for (const int V : {151552, 8195, 7}) {
    SCOPED_TRACE("V " + std::to_string(V));
    const int rows = 6;
    const int32_t ns[rows] = {1, 5, kMaxLogprobs, 0, kMaxLogprobs, 3};
    Rng rng(500 + V);
    std::vector<float> all = rng.Vector(int64_t{rows} * V, -8, 8);
    std::vector<int32_t> tokens(rows);
    for (int r = 0; r < rows; ++r) {
      float* row = all.data() + int64_t{r} * V;
      if (V > 100) {
        // Ties among the best: equal values in different threads' strides and in one thread's.
        for (int j : {V - 1, 3, V / 2, 149, 2}) row[j] = 12.5f;
        row[V / 3] = 12.75f;
      }
      tokens[r] = static_cast<int32_t>((r * 7919) % V);
    }
    tokens[5] = V + 3;  // outside the row: NaN
    TypedBuffer logits(DType::kF32, int64_t{rows} * V);
    logits.Upload(all);
    std::vector<cuda::SampleRowArgs> args(rows);
    for (int r = 0; r < rows; ++r) args[r].logprobs = ns[r];
    void *d_args = nullptr, *d_tok = nullptr, *d_vals = nullptr, *d_ids = nullptr;
    constexpr int kLp = cuda::kDeviceMaxLogprobs;
    ASSERT_CUDA(cudaMalloc(&d_args, rows * sizeof(cuda::SampleRowArgs)));
    ASSERT_CUDA(cudaMemcpy(d_args, args.data(), rows * sizeof(cuda::SampleRowArgs), cudaMemcpyHostToDevice));
    testing::UploadInts(&d_tok, tokens);
    ASSERT_CUDA(cudaMalloc(&d_vals, rows * (1 + kLp) * 4));
    ASSERT_CUDA(cudaMalloc(&d_ids, rows * kLp * 4));
    ASSERT_CUDA(cudaMemset(d_vals, 0x7f, rows * (1 + kLp) * 4));  // what no row may change
    ASSERT_CUDA(cudaMemset(d_ids, 0x7f, rows * kLp * 4));
    ASSERT_CUDA(cuda::LaunchLogprobs(logits.as<float>(), rows, V, static_cast<cuda::SampleRowArgs*>(d_args),
                                     static_cast<int32_t*>(d_tok), static_cast<float*>(d_vals),
                                     static_cast<int32_t*>(d_ids), nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> vals(rows * (1 + kLp));
    std::vector<int32_t> ids(rows * kLp);
    ASSERT_CUDA(cudaMemcpy(vals.data(), d_vals, vals.size() * 4, cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(ids.data(), d_ids, ids.size() * 4, cudaMemcpyDeviceToHost));
    cudaFree(d_args);
    cudaFree(d_tok);
    cudaFree(d_vals);
    cudaFree(d_ids);
    int32_t untouched_id = 0;
    std::memset(&untouched_id, 0x7f, 4);
    for (int r = 0; r < rows; ++r) {
      SCOPED_TRACE("row " + std::to_string(r));
      const int32_t* got_ids = ids.data() + r * kLp;
      const float* got_vals = vals.data() + r * (1 + kLp);
      if (ns[r] == 0) {
        for (int k = 0; k < kLp; ++k) EXPECT_EQ(got_ids[k], untouched_id);
        continue;
      }
      const std::span<const float> row(all.data() + int64_t{r} * V, V);
      RowLogprobs want;
      LogSoftmaxTop(row, std::min(tokens[r], V - 1), ns[r], &want);
      if (tokens[r] >= V) {
        EXPECT_TRUE(std::isnan(got_vals[0]));
      } else {
        EXPECT_NEAR(got_vals[0], want.token_logprob, 1e-4f + 1e-5f * std::fabs(want.token_logprob));
      }
      for (int k = 0; k < ns[r]; ++k) {
        if (k >= static_cast<int>(want.top.size())) {
          EXPECT_EQ(got_ids[k], -1) << "rank " << k << " of a row of " << V;
          continue;
        }
        EXPECT_EQ(got_ids[k], want.top[k].token_id) << "rank " << k;
        EXPECT_NEAR(got_vals[1 + k], want.top[k].logprob, 1e-4f + 1e-5f * std::fabs(want.top[k].logprob))
            << "rank " << k;
      }
      if (V > 100 && ns[r] >= 5) {
        EXPECT_EQ(got_ids[0], V / 3);
        EXPECT_EQ(got_ids[1], 2);  // the tie at 12.5, lowest id first
        EXPECT_EQ(got_ids[2], 3);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, KernelTest, ::testing::ValuesIn(kTypeCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ScaleToFp16Test, ScalesOnlyTensorsBeyondTwoToTheFifteenByAPowerOfTwo) {
  GLM_REQUIRE_CUDA_DEVICE();
  for (float amax : {1000.f, 32768.f, 90000.f, 1e6f}) {
    const int n = 5000;
    Rng rng(40);
    auto h = rng.Vector(n, -1, 1);
    h[1234] = -amax;
    TypedBuffer x(DType::kF32, n), out(DType::kF16, n);
    x.Upload(h);
    out.Poison();
    uint32_t* amax_dev = nullptr;
    float* alpha_dev = nullptr;
    cudaMalloc(&amax_dev, 4);
    cudaMalloc(&alpha_dev, 4);
    ASSERT_CUDA(cuda::LaunchScaleToFp16(x.as<float>(), n, out.get(), amax_dev, alpha_dev, nullptr));
    float alpha = 0;
    cudaMemcpy(&alpha, alpha_dev, 4, cudaMemcpyDeviceToHost);
    const float s = amax <= 32768.f ? 1.f : std::exp2(-std::ceil(std::log2(amax / 32768.f)));
    EXPECT_EQ(alpha, 1.f / s) << "amax " << amax;
    std::vector<float> want(n);
    for (int i = 0; i < n; ++i) want[i] = RoundThrough(DType::kF16, h[i] * s);
    ExpectClose(out.Download(), want, 0.f, 0.f, "scaled");
    cudaFree(amax_dev);
    cudaFree(alpha_dev);
  }
}

// The tuner's read-only L2 flush reads without writing (the buffer's bytes stay as they were)
// and refuses what it cannot read as 16-byte vectors.
TEST(L2FlushReadTest, LeavesTheBufferAndRefusesBadArguments) {
  GLM_REQUIRE_CUDA_DEVICE();
  const size_t bytes = size_t{8} << 20;
  std::vector<uint32_t> h(bytes / 4);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint32_t>(i * 2654435761u);
  void* buf = nullptr;
  ASSERT_CUDA(cudaMalloc(&buf, bytes));
  ASSERT_CUDA(cudaMemcpy(buf, h.data(), bytes, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cuda::LaunchL2FlushRead(buf, bytes, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint32_t> back(h.size());
  ASSERT_CUDA(cudaMemcpy(back.data(), buf, bytes, cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, h);
  EXPECT_EQ(cuda::LaunchL2FlushRead(buf, 0, nullptr), cudaSuccess);
  EXPECT_EQ(cuda::LaunchL2FlushRead(buf, 15, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchL2FlushRead(static_cast<char*>(buf) + 8, 16, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LaunchL2FlushRead(nullptr, 16, nullptr), cudaErrorInvalidValue);
  cudaFree(buf);
}

}  // namespace
}  // namespace glm
