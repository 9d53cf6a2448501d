// glm-bench: speed of the engine on one device.
//
//   glm-bench --mode=engine --synthetic=glm4-9b-0414 --backend=cuda --precision=bf16
//             --num-requests=256 --input-len=512 --output-len=256 --concurrency=256
//             [--baseline=hf] [--json=FILE]
//
// Engine mode reports, for one checkpoint (a --model DIR, or a random one of a real shape written
// on the spot): bs1 decode tok/s, time to first token of a 2,048-token prompt, offline throughput
// of N requests through the real Engine (continuous batching), the percent of the HBM roofline
// (bytes a bs1 decode step must read / the device-to-device copy bandwidth measured in this run),
// and device memory by kind with the peak. --baseline=hf runs transformers on the same checkpoint
// and the same prompts (tools/glm-bench/hf_baseline.py: the TTFT prompt, the bs1 decode, and the
// offline requests through model.generate in batches of --concurrency with the same sampler) and
// prints every figure as a ratio.
// --mode=cluster runs the cluster load generator (tools/glm-bench-cluster): router overhead
// against calling a worker directly, in one run.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "services/core/flags.h"
#include "services/core/status_macros.h"
#include "tools/glm-mkmodel/random_checkpoint.h"
#include "worker/backend/backend.h"
#include "worker/engine/engine.h"
#include "worker/model/safetensors.h"
#if defined(GLM_HAVE_CUDA)
#include "worker/backend/cuda/cuda_backend.h"
#endif
#if defined(GLM_HAVE_CUPTI)
#include "tools/glm-bench/kernel_trace.h"
#endif

ABSL_FLAG(std::string, mode, "engine", "engine (this binary's own benchmark) or cluster");
ABSL_FLAG(std::string, model, "", "checkpoint directory (HF layout)");
ABSL_FLAG(std::string, synthetic, "",
          "write a random checkpoint of this shape and benchmark it: glm4-9b-0414, glm-4-9b-chat, "
          "glm4-32b-0414, tiny");
ABSL_FLAG(std::string, synthetic_dir, "",
          "where --synthetic writes (default: a fresh temp dir, removed at exit); reused if it "
          "already holds a checkpoint");
ABSL_FLAG(std::string, backend, "", "cpu or cuda (default: cuda when built with it and a GPU is there)");
ABSL_FLAG(std::string, precision, "bf16", "fp32, bf16, fp16, fp16-safe");
ABSL_FLAG(int32_t, device, 0, "CUDA device");
ABSL_FLAG(double, gpu_memory_utilization, 0.90, "fraction of GPU memory for weights + activations + KV");
ABSL_FLAG(int32_t, kv_cache_mb, 1024, "CPU backend: KV cache size");
ABSL_FLAG(int32_t, prompt_len, 2048, "TTFT prompt length");
ABSL_FLAG(int32_t, decode_steps, 128, "bs1 decode steps timed");
ABSL_FLAG(int32_t, decode_context, 128, "prompt length before the timed bs1 decode");
ABSL_FLAG(int32_t, num_requests, 256, "offline throughput: requests");
ABSL_FLAG(int32_t, input_len, 512, "offline throughput: prompt tokens per request");
ABSL_FLAG(int32_t, output_len, 256, "offline throughput: generated tokens per request");
ABSL_FLAG(int32_t, concurrency, 256, "offline throughput: running requests at most");
ABSL_FLAG(int32_t, max_batched_tokens, 8192, "offline throughput: token budget per engine step");
ABSL_FLAG(std::string, scheduling, "mixed",
          "offline throughput: the Engine's scheduling policy, \"mixed\" or \"prefill-first\" "
          "(worker/engine/scheduler.h)");
ABSL_FLAG(bool, skip_throughput, false, "skip the offline-throughput part");
ABSL_FLAG(int32_t, shared_prefix_len, 0,
          "offline throughput: the first N prompt tokens are the same in every request (a shared "
          "system prompt); the rest stay random");
ABSL_FLAG(bool, prefix_caching, false,
          "offline throughput: the engine's automatic prefix caching (glm-worker's default)");
ABSL_FLAG(double, temperature, 0.0, "offline throughput: sampling temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "offline throughput: top-k (0 = off)");
ABSL_FLAG(double, top_p, 1.0, "offline throughput: top-p (1 = off)");
ABSL_FLAG(double, repetition_penalty, 1.0, "offline throughput: repetition penalty (1 = off)");
ABSL_FLAG(int32_t, logprobs, 0,
          "offline throughput: every request asks for its tokens' logprobs and this many most "
          "likely tokens a position (0 = off, at most 20)");
ABSL_FLAG(bool, profile, false, "CUDA: log a per-phase time breakdown (GLM_CUDA_PROFILE) of bs1 decode, "
          "the TTFT step, the second offline-throughput prefill step and two of its decode steps");
ABSL_FLAG(std::string, baseline, "",
          "hf: also run transformers (python3 + torch) on the same checkpoint and prompts");
ABSL_FLAG(std::string, hf_attn, "eager",
          "--baseline hf: transformers' attn_implementation (eager, sdpa, flash_attention_2)");
ABSL_FLAG(std::string, json, "", "write every figure to this JSON file");
ABSL_FLAG(std::string, kernel_trace, "",
          "CUDA: write the GPU timeline (CUPTI: every kernel, CUDA-graph nodes one by one, and copy) of "
          "the backend-alone run's second prefill step and eight of its decode steps to this CSV "
          "(nsys cuda_gpu_trace columns; read it with tools/glm-bench/nsys_kernels.py). The backend-alone "
          "figures then carry CUPTI's overhead; the Engine's run comes after CUPTI is stopped");

namespace glm {
namespace {

// The offline run's sampler, as the report names it: "greedy" or its parameters.
std::string SamplingLabel() {
  const double t = absl::GetFlag(FLAGS_temperature);
  const double penalty = absl::GetFlag(FLAGS_repetition_penalty);
  std::string label = t > 0 ? absl::StrFormat("temperature %g", t) : std::string("greedy");
  if (t > 0 && absl::GetFlag(FLAGS_top_k) > 0) absl::StrAppendFormat(&label, ", top-k %d", absl::GetFlag(FLAGS_top_k));
  if (t > 0 && absl::GetFlag(FLAGS_top_p) < 1) absl::StrAppendFormat(&label, ", top-p %g", absl::GetFlag(FLAGS_top_p));
  if (penalty != 1) absl::StrAppendFormat(&label, ", repetition penalty %g", penalty);
  if (absl::GetFlag(FLAGS_logprobs) > 0) absl::StrAppendFormat(&label, ", logprobs %d", absl::GetFlag(FLAGS_logprobs));
  return label;
}

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Mean of the non-negative entries (negative: not measured); 0 when there are none.
double MeanOf(const std::vector<double>& values) {
  double sum = 0;
  int count = 0;
  for (double v : values) {
    if (v < 0) continue;
    sum += v;
    ++count;
  }
  return count > 0 ? sum / count : 0.0;
}

absl::StatusOr<std::string> PrepareCheckpoint(bool* remove_after) {
  *remove_after = false;
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string preset = absl::GetFlag(FLAGS_synthetic);
  if (!model.empty() == !preset.empty()) {
    return absl::InvalidArgumentError("give exactly one of --model DIR and --synthetic SHAPE");
  }
  if (!model.empty()) return model;
  const Architecture arch = preset == "glm-4-9b-chat" ? Architecture::kGlm : Architecture::kGlm4;
  ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(preset, arch));
  std::string dir = absl::GetFlag(FLAGS_synthetic_dir);
  if (dir.empty()) {
    dir = (std::filesystem::temp_directory_path() /
           absl::StrFormat("glm-bench-%s-%d", preset, static_cast<int>(::getpid())))
              .string();
    *remove_after = true;
  }
  if (std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    std::fprintf(stderr, "glm-bench: reusing the checkpoint in %s\n", dir.c_str());
    return dir;
  }
  RandomCheckpointSpec spec;
  spec.config = config;
  spec.dtype = DType::kBF16;
  spec.seed = 1;
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(WriteRandomCheckpoint(spec, dir));
  std::fprintf(stderr, "glm-bench: wrote a random %s checkpoint (%.1f GB) to %s in %.1f s\n",
               preset.c_str(), config.NumParameters() * 2e-9, dir.c_str(), Seconds(t0, Clock::now()));
  return dir;
}

std::unique_ptr<Backend> MakeBackend(const std::string& name) {
#if defined(GLM_HAVE_CUDA)
  if (name == "cuda") return MakeCudaBackend();
#endif
  if (name == "cpu") return MakeCpuBackend();
  return nullptr;
}

// One sequence's step through the backend directly (no scheduler): `n` tokens after `cached`.
StepBatch SingleSequenceStep(const std::vector<int32_t>& tokens, int cached, int n,
                             const std::vector<int32_t>& blocks) {
  StepBatch b;
  SequenceStep s;
  s.seq_id = 1;
  s.num_tokens = n;
  s.context_len = cached + n;
  s.block_table = blocks;
  s.wants_logits = true;
  for (int i = 0; i < n; ++i) {
    b.token_ids.push_back(tokens[cached + i]);
    b.positions.push_back(cached + i);
  }
  b.seqs.push_back(s);
  return b;
}

struct Figures {
  nlohmann::json j;
};

// A shell word for `s` (single-quoted).
std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A number of the baseline's JSON, or -1 when it is missing or not a positive number.
double PositiveNumber(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number()) return -1;
  const double v = j[key].get<double>();
  return v > 0 ? v : -1;
}

// --baseline hf: tools/glm-bench/hf_baseline.py on the same checkpoint and workload (the prompts
// this run used, written to a temp file), its figures and ours as ratios.
absl::Status RunHfBaseline(const std::string& dir, Precision precision, const nlohmann::json& workload,
                           double bs1_tps, double ttft_s, Figures* fig) {
  const std::filesystem::path script = std::filesystem::path(__FILE__).parent_path() / "hf_baseline.py";
  const std::filesystem::path tmp =
      std::filesystem::temp_directory_path() / absl::StrFormat("glm-bench-hf-%d", static_cast<int>(::getpid()));
  std::filesystem::create_directories(tmp);
  struct RemoveTmp {
    std::filesystem::path p;
    ~RemoveTmp() {
      std::error_code ec;
      std::filesystem::remove_all(p, ec);
    }
  } remove_tmp{tmp};
  const std::string prompts = (tmp / "workload.json").string(), out = (tmp / "hf_baseline.json").string();
  if (!(std::ofstream(prompts) << workload.dump())) {
    return absl::InternalError("--baseline hf: cannot write " + prompts);
  }
  const std::string cmd = absl::StrFormat(
      "python3 %s --model %s --dtype %s --attn %s --workload %s --json %s", ShellQuote(script.string()),
      ShellQuote(dir), PrecisionName(precision), absl::GetFlag(FLAGS_hf_attn), ShellQuote(prompts),
      ShellQuote(out));
  std::fprintf(stderr, "glm-bench: %s\n", cmd.c_str());
  if (std::system(cmd.c_str()) != 0) {
    fig->j["hf"] = {{"error", "hf_baseline.py failed (see stderr)"}};
    return absl::OkStatus();  // our own figures stand; the JSON says the baseline is missing
  }
  std::ifstream f(out);
  nlohmann::json hf = nlohmann::json::parse(f, nullptr, false);
  if (hf.is_discarded() || !hf.is_object()) {
    fig->j["hf"] = {{"error", "hf_baseline.py wrote no JSON object to " + out}};
    return absl::OkStatus();
  }
  fig->j["hf"] = hf;
  nlohmann::json ratio = nlohmann::json::object();
  std::printf("vs HF transformers (%s attention, same checkpoint and prompts):\n",
              absl::GetFlag(FLAGS_hf_attn).c_str());
  if (const double theirs = PositiveNumber(hf, "bs1_decode_tok_s"); theirs > 0) {
    ratio["bs1_decode"] = bs1_tps / theirs;
    std::printf("  bs1 decode: %.1f vs %.1f tok/s (%.1fx)\n", bs1_tps, theirs, bs1_tps / theirs);
  }
  if (const double theirs = PositiveNumber(hf, "ttft_ms"); theirs > 0) {
    ratio["ttft"] = theirs / (ttft_s * 1e3);
    std::printf("  TTFT: %.1f vs %.1f ms (%.1fx)\n", ttft_s * 1e3, theirs, theirs / (ttft_s * 1e3));
  }
  const double theirs_offline = PositiveNumber(hf, "offline_generated_tok_s");
  if (theirs_offline > 0 && workload.contains("offline")) {
    const double ours = workload["offline"]["generated_tok_s"].get<double>();
    const double theirs = theirs_offline;
    ratio["offline_throughput"] = ours / theirs;
    std::printf("  offline (Engine vs model.generate in batches of %d): %.0f vs %.0f generated tok/s "
                "(%.1fx)\n",
                workload["offline"]["concurrency"].get<int>(), ours, theirs, ours / theirs);
  } else if (hf.contains("offline_error")) {
    std::printf("  offline: transformers failed: %s\n", hf["offline_error"].dump().c_str());
  }
  fig->j["ratio_vs_hf"] = ratio;
  return absl::OkStatus();
}

absl::Status RunEngineMode(Figures* fig) {
  const std::string baseline = absl::GetFlag(FLAGS_baseline), hf_attn = absl::GetFlag(FLAGS_hf_attn);
  if (!baseline.empty() && baseline != "hf") {
    return absl::InvalidArgumentError("--baseline=" + baseline + ": the one baseline is hf (HF transformers)");
  }
  if (hf_attn != "eager" && hf_attn != "sdpa" && hf_attn != "flash_attention_2") {
    return absl::InvalidArgumentError("--hf_attn=" + hf_attn + ": use eager, sdpa or flash_attention_2");
  }
  const int shared_len = absl::GetFlag(FLAGS_shared_prefix_len);
  if (shared_len < 0 || shared_len > absl::GetFlag(FLAGS_input_len)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--shared_prefix_len=%d: use 0 to --input_len (%d)", shared_len, absl::GetFlag(FLAGS_input_len)));
  }
  if (absl::GetFlag(FLAGS_logprobs) < 0 || absl::GetFlag(FLAGS_logprobs) > kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrFormat("--logprobs=%d: use 0 (off) to %d",
                                                      absl::GetFlag(FLAGS_logprobs), kMaxLogprobs));
  }
  // The kernel trace starts before the first CUDA call; its windows open around the traced steps.
  const std::string trace_path = absl::GetFlag(FLAGS_kernel_trace);
  if (!trace_path.empty() && absl::GetFlag(FLAGS_skip_throughput)) {
    return absl::InvalidArgumentError(
        "--kernel_trace traces the backend-alone offline run, which --skip_throughput leaves out");
  }
#if defined(GLM_HAVE_CUPTI)
  std::unique_ptr<bench::KernelTrace> trace;
  if (!trace_path.empty()) {
    ASSIGN_OR_RETURN(trace, bench::KernelTrace::Start());
  }
  auto trace_window = [&trace](bool open) {
    if (trace) open ? trace->Open() : trace->Close();
  };
#else
  if (!trace_path.empty()) {
    return absl::InvalidArgumentError("--kernel_trace: this glm-bench was built without CUDA's CUPTI");
  }
  auto trace_window = [](bool) {};
#endif
  bool remove_after = false;
  ASSIGN_OR_RETURN(std::string dir, PrepareCheckpoint(&remove_after));
  struct Cleanup {
    std::string dir;
    bool on;
    ~Cleanup() { if (on) std::filesystem::remove_all(dir); }
  } cleanup{dir, remove_after};

  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  std::string backend_name = absl::GetFlag(FLAGS_backend);
#if defined(GLM_HAVE_CUDA)
  if (backend_name.empty()) backend_name = CudaDeviceCount() > 0 ? "cuda" : "cpu";
#else
  if (backend_name.empty()) backend_name = "cpu";
#endif
  std::unique_ptr<Backend> backend = MakeBackend(backend_name);
  if (!backend) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--backend=%s is not available in this build (cpu%s)", backend_name,
#if defined(GLM_HAVE_CUDA)
        ", cuda"
#else
        "; rebuild with CUDA for cuda"
#endif
        ));
  }
  Precision precision;
  if (!ParsePrecision(absl::GetFlag(FLAGS_precision), &precision)) {
    return absl::InvalidArgumentError("--precision: use fp32, bf16, fp16 or fp16-safe");
  }
  const int prompt_len = absl::GetFlag(FLAGS_prompt_len);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const int max_batched = std::max(absl::GetFlag(FLAGS_max_batched_tokens), prompt_len);
  LoadOptions lo;
  lo.precision = precision;
  lo.device = absl::GetFlag(FLAGS_device);
  lo.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  lo.max_num_tokens = max_batched;
  lo.max_num_seqs = concurrency;
  fig->j["model_dir"] = dir;
  fig->j["synthetic"] = absl::GetFlag(FLAGS_synthetic);
  fig->j["backend"] = backend_name;
  fig->j["precision"] = PrecisionName(precision);
#if defined(GLM_HAVE_CUDA)
  double copy_bw = 0;
  if (backend_name == "cuda") {
    ASSIGN_OR_RETURN(GpuInfo gpu, ProbeGpu(lo.device));
    fig->j["device"] = {{"name", gpu.name}, {"compute_capability", gpu.ComputeCapability()},
                        {"sm_count", gpu.sm_count}, {"memory_total", gpu.memory_total},
                        {"driver", gpu.driver_version}, {"runtime", gpu.runtime_version},
                        {"nccl", gpu.nccl_version}};
    ASSIGN_OR_RETURN(copy_bw, MeasureCopyBandwidth(lo.device, 1LL << 30));
    fig->j["copy_bandwidth_GBps"] = copy_bw * 1e-9;
    std::printf("device: %s (sm%d%d, %d SMs), device copy %.0f GB/s (read + write)\n", gpu.name.c_str(),
                gpu.compute_major, gpu.compute_minor, gpu.sm_count, copy_bw * 1e-9);
  }
#endif
  auto t0 = Clock::now();
  RETURN_IF_ERROR(backend->Load(config, *ckpt, lo));
  fig->j["load_s"] = Seconds(t0, Clock::now());
  const int block_size = 16;

  // ---- bs1: TTFT and decode, straight through the backend ---------------------------------
  const int decode_ctx = absl::GetFlag(FLAGS_decode_context);
  const int decode_steps = absl::GetFlag(FLAGS_decode_steps);
  const int seq_len = std::max(prompt_len, decode_ctx + decode_steps) + 1;
  const int blocks = (seq_len + block_size - 1) / block_size;
  RETURN_IF_ERROR(backend->AllocateKvCache(blocks, block_size));
  std::vector<int32_t> table(blocks);
  for (int i = 0; i < blocks; ++i) table[i] = i;
  std::vector<int32_t> tokens(seq_len);
  uint64_t s = 12345;
  for (auto& t : tokens) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int32_t>((s >> 33) % config.vocab_size);
  }
  std::vector<int32_t> next;
  std::vector<uint8_t> finite;
  // What --baseline hf replays: the same prompts, decode length and offline requests.
  nlohmann::json hf_workload = {
      {"ttft_prompt", std::vector<int32_t>(tokens.begin(), tokens.begin() + prompt_len)},
      {"decode_prompt", std::vector<int32_t>(tokens.begin(), tokens.begin() + decode_ctx)},
      {"decode_steps", decode_steps}};
  // TTFT: the whole prompt in one step (the engine's chunk budget allows it), greedy token back.
  std::vector<double> ttfts;
  for (int rep = 0; rep < 4; ++rep) {
    StepBatch b = SingleSequenceStep(tokens, 0, prompt_len, table);
    t0 = Clock::now();
    RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
    if (rep > 0) ttfts.push_back(Seconds(t0, Clock::now()));  // the first run warms up
  }
  std::sort(ttfts.begin(), ttfts.end());
  const double ttft = ttfts[ttfts.size() / 2];
  fig->j["ttft_ms"] = ttft * 1e3;
  fig->j["ttft_prompt_len"] = prompt_len;
  std::printf("TTFT, %d-token prompt, bs1: %.1f ms\n", prompt_len, ttft * 1e3);

  {
    StepBatch b = SingleSequenceStep(tokens, 0, decode_ctx, table);
    RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
  }
  // Warm-up decode step (captures the bs1 graph), then the timed run.
  for (int warm = 0; warm < 2; ++warm) {
    StepBatch b = SingleSequenceStep(tokens, decode_ctx, 1, table);
    RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
  }
  t0 = Clock::now();
  for (int i = 0; i < decode_steps; ++i) {
    tokens[decode_ctx + i + 1] = next.empty() ? 0 : next[0];
    StepBatch b = SingleSequenceStep(tokens, decode_ctx + i, 1, table);
    RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
  }
  const double decode_s = Seconds(t0, Clock::now());
  if (absl::GetFlag(FLAGS_profile)) {  // per-phase breakdown of bs1 decode and of the TTFT step
    setenv("GLM_CUDA_PROFILE", "1", 1);
    for (int i = 0; i < 8; ++i) {
      StepBatch b = SingleSequenceStep(tokens, decode_ctx + decode_steps - 8 + i, 1, table);
      RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
    }
    unsetenv("GLM_CUDA_PROFILE");
    {
      StepBatch b = SingleSequenceStep(tokens, decode_ctx + decode_steps - 1, 1, table);
      RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));  // prints the decode profile
    }
    setenv("GLM_CUDA_PROFILE", "1", 1);
    {
      StepBatch b = SingleSequenceStep(tokens, 0, prompt_len, table);
      RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
    }
    unsetenv("GLM_CUDA_PROFILE");
    {
      StepBatch b = SingleSequenceStep(tokens, 0, 1, table);
      RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));  // prints the prefill profile
    }
  }
  const double bs1_tps = decode_steps / decode_s;
  fig->j["bs1_decode_tok_s"] = bs1_tps;
  std::printf("bs1 decode (context %d..%d): %.1f tok/s (%.2f ms/token)\n", decode_ctx,
              decode_ctx + decode_steps, bs1_tps, 1e3 * decode_s / decode_steps);

  // Roofline: every weight is read once per step except the embedding table (one row), plus the
  // KV cache of the average context.
  const MemoryReport mem0 = backend->Memory();
  const int64_t welem = mem0.weights > 0 ? mem0.weights / std::max<int64_t>(config.NumParameters(), 1) : 2;
  const int64_t embed_bytes = config.vocab_size * config.hidden_size * welem;
  const int64_t kv_per_token = backend->KvBytesPerBlock(block_size) / block_size;
  const double step_bytes = static_cast<double>(mem0.weights - embed_bytes + config.hidden_size * welem) +
                            static_cast<double>(kv_per_token) * (decode_ctx + decode_steps / 2.0);
  fig->j["bs1_bytes_per_step"] = step_bytes;
#if defined(GLM_HAVE_CUDA)
  if (copy_bw > 0) {
    const double roofline = copy_bw / step_bytes;  // copy bw counts read + write: the HBM rate
    fig->j["bs1_roofline_tok_s"] = roofline;
    fig->j["bs1_roofline_percent"] = 100.0 * bs1_tps / roofline;
    std::printf("HBM roofline: %.2f GB per step / %.0f GB/s = %.1f tok/s; measured = %.1f%% of it\n",
                step_bytes * 1e-9, copy_bw * 1e-9, roofline, 100.0 * bs1_tps / roofline);
  }
#endif

  // ---- offline throughput of the backend alone --------------------------------------------
  // The same workload as the engine run below, scheduled here in the simplest way (all prompts
  // prefilled in packed chunks, then every sequence decoded together with on-device greedy
  // sampling): what the backend can do when the host side takes no time.
  if (!absl::GetFlag(FLAGS_skip_throughput)) {
    const int n = std::min(absl::GetFlag(FLAGS_num_requests), concurrency);
    const int in_len = absl::GetFlag(FLAGS_input_len), out_len = absl::GetFlag(FLAGS_output_len);
    const int per_seq_blocks = (in_len + out_len + block_size - 1) / block_size;
    const int64_t fit = backend->KvBlocksThatFit(block_size);
    const int64_t need = int64_t{n} * per_seq_blocks;
    if (fit == 0 || fit >= need) {
      RETURN_IF_ERROR(backend->AllocateKvCache(static_cast<int32_t>(need), block_size));
      // What a worker does at start-up (Engine::Create): first-use costs of the decode batch
      // sizes (graph capture, GEMM tuning) paid before the clock starts.
      t0 = Clock::now();
      RETURN_IF_ERROR(backend->WarmUp(concurrency));
      const double warmup_s = Seconds(t0, Clock::now());
      fig->j["warmup_s"] = warmup_s;
      std::printf("warm-up (decode graphs and GEMM tuning for up to %d sequences): %.2f s\n",
                  concurrency, warmup_s);
      std::vector<std::vector<int32_t>> seq_tokens(n), seq_blocks(n);
      for (int r = 0; r < n; ++r) {
        for (int b = 0; b < per_seq_blocks; ++b) seq_blocks[r].push_back(r * per_seq_blocks + b);
        seq_tokens[r].resize(in_len);
        for (auto& t : seq_tokens[r]) {
          s = s * 6364136223846793005ull + 1442695040888963407ull;
          t = static_cast<int32_t>((s >> 33) % config.vocab_size);
        }
      }
      t0 = Clock::now();
      int64_t generated = 0;
      // Prefill: whole prompts packed into steps of at most max_batched tokens.
      for (int r = 0, prefill_step = 0; r < n; ++prefill_step) {
        StepBatch b;
        std::vector<int> rows;
        while (r < n && b.num_tokens() + in_len <= std::max(max_batched, in_len) &&
               static_cast<int>(b.seqs.size()) < concurrency) {
          SequenceStep st;
          st.seq_id = r;
          st.token_offset = b.num_tokens();
          st.num_tokens = in_len;
          st.context_len = in_len;
          st.block_table = seq_blocks[r];
          st.wants_logits = true;
          for (int i = 0; i < in_len; ++i) {
            b.token_ids.push_back(seq_tokens[r][i]);
            b.positions.push_back(i);
          }
          b.seqs.push_back(std::move(st));
          rows.push_back(r++);
        }
        // The second step, or the first when it takes every prompt (the first pays first-use
        // costs: cuBLAS kernel loads, tuning).
        const bool profile_step =
            absl::GetFlag(FLAGS_profile) && (prefill_step == 1 || (prefill_step == 0 && r == n));
        if (profile_step) setenv("GLM_CUDA_PROFILE", "1", 1);
        if (prefill_step == 1) trace_window(true);
        RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
        if (prefill_step == 1) trace_window(false);
        if (profile_step) unsetenv("GLM_CUDA_PROFILE");
        for (size_t i = 0; i < rows.size(); ++i) seq_tokens[rows[i]].push_back(next[i]);
        generated += static_cast<int64_t>(rows.size());
      }
      const double prefill_s = Seconds(t0, Clock::now());
      for (int step = 1; step < out_len; ++step) {
        StepBatch b;
        for (int r = 0; r < n; ++r) b.AddDecode(r, seq_tokens[r].back(), in_len + step - 1, seq_blocks[r]);
        const bool profile_step = absl::GetFlag(FLAGS_profile) && step >= out_len / 2 && step < out_len / 2 + 2;
        if (profile_step) setenv("GLM_CUDA_PROFILE", "1", 1);
        if (step == out_len / 2) trace_window(true);  // eight steps, host time between them included
        RETURN_IF_ERROR(backend->ForwardGreedy(b, &next, &finite));
        if (step == out_len / 2 + 7 || step == out_len - 1) trace_window(false);
        if (profile_step) unsetenv("GLM_CUDA_PROFILE");
        for (int r = 0; r < n; ++r) seq_tokens[r].push_back(next[r]);
        generated += n;
      }
      const double wall = Seconds(t0, Clock::now());
      fig->j["backend_offline"] = {{"requests", n}, {"input_len", in_len}, {"output_len", out_len},
                                   {"wall_s", wall}, {"prefill_s", prefill_s},
                                   {"generated_tok_s", generated / wall},
                                   {"decode_step_ms", 1e3 * (wall - prefill_s) / std::max(out_len - 1, 1)}};
      std::printf("backend alone: %d x (%d in, %d out): %.2f s (prefill %.2f s, decode step %.2f ms), "
                  "%.0f generated tok/s\n", n, in_len, out_len, wall, prefill_s,
                  1e3 * (wall - prefill_s) / std::max(out_len - 1, 1), generated / wall);
#if defined(GLM_HAVE_CUPTI)
      if (trace) {  // written, and CUPTI stopped, before the Engine's run
        ASSIGN_OR_RETURN(int64_t ops, trace->Write(trace_path));
        trace.reset();
        std::printf("kernel trace: %lld GPU operations of the backend-alone run in %s\n",
                    static_cast<long long>(ops), trace_path.c_str());
      }
#endif
    } else {
      std::printf("backend alone: skipped, %lld KV blocks needed, %lld fit\n",
                  static_cast<long long>(need), static_cast<long long>(fit));
      if (!trace_path.empty()) {
        return absl::ResourceExhaustedError(
            "--kernel_trace: the backend-alone run it traces did not fit the GPU's KV memory");
      }
    }
  }

  // ---- offline throughput through the real Engine -----------------------------------------
  if (!absl::GetFlag(FLAGS_skip_throughput)) {
    EngineOptions eo;
    eo.block_size = block_size;
    eo.max_num_seqs = concurrency;
    eo.max_num_batched_tokens = max_batched;
    ASSIGN_OR_RETURN(eo.scheduling, ParseSchedulingPolicy(absl::GetFlag(FLAGS_scheduling)));
    eo.enable_prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
    eo.worker_name = "glm-bench";
    // Where the Engine's wall time goes, step by step (the observer runs at the end of each
    // step, so the time between two calls is one step, host work included): steps with prefill
    // tokens, decode-only steps of the full concurrency, and the other decode-only steps.
    struct StepTimes {
      Clock::time_point last;
      int prefill_steps = 0, full_steps = 0, other_steps = 0;
      double prefill_s = 0, full_s = 0, other_s = 0;
    } steps_seen;
    eo.step_observer = [&steps_seen, concurrency](const StepInfo& info) {
      const Clock::time_point now = Clock::now();
      const double dt = Seconds(steps_seen.last, now);
      steps_seen.last = now;
      if (info.num_batched_tokens > info.batch_size) {
        ++steps_seen.prefill_steps;
        steps_seen.prefill_s += dt;
      } else if (info.batch_size == concurrency) {
        ++steps_seen.full_steps;
        steps_seen.full_s += dt;
      } else {
        ++steps_seen.other_steps;
        steps_seen.other_s += dt;
      }
    };
    const int64_t fit = backend->KvBlocksThatFit(block_size);
    if (fit > 0) {
      eo.num_kv_blocks = static_cast<int32_t>(fit);
    } else {
      eo.kv_cache_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_kv_cache_mb)) << 20;
    }
    ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(eo, std::move(backend), nullptr));
    const int n = absl::GetFlag(FLAGS_num_requests);
    const int in_len = absl::GetFlag(FLAGS_input_len), out_len = absl::GetFlag(FLAGS_output_len);
    int64_t generated = 0, failed = 0;
    std::vector<double> first_token_s(n, -1);
    // The prompts, kept for --baseline hf only (a copy each; the JSON is built after the clock).
    const bool keep_prompts = absl::GetFlag(FLAGS_baseline) == "hf";
    std::vector<std::vector<int32_t>> offline_prompts;
    t0 = Clock::now();
    steps_seen.last = t0;
    std::vector<int32_t> shared_prefix;  // request 0's first shared_len tokens, in every prompt
    for (int r = 0; r < n; ++r) {
      GenerationRequest req;
      req.request_id = absl::StrFormat("bench-%d", r);
      req.prompt_token_ids.resize(in_len);
      for (auto& t : req.prompt_token_ids) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t = static_cast<int32_t>((s >> 33) % config.vocab_size);
      }
      if (r == 0) shared_prefix.assign(req.prompt_token_ids.begin(), req.prompt_token_ids.begin() + shared_len);
      std::copy(shared_prefix.begin(), shared_prefix.end(), req.prompt_token_ids.begin());
      req.max_new_tokens = out_len;
      req.ignore_eos = true;
      req.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
      req.sampling.top_k = absl::GetFlag(FLAGS_top_k);
      req.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
      req.sampling.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty));
      req.sampling.seed = static_cast<uint64_t>(r);
      req.logprobs = absl::GetFlag(FLAGS_logprobs);
      if (keep_prompts) offline_prompts.push_back(req.prompt_token_ids);
      RETURN_IF_ERROR(engine->Submit(req, [&, r](const TokenEvent& ev) {
        if (ev.token_id >= 0) {
          ++generated;
          if (first_token_s[r] < 0) first_token_s[r] = Seconds(t0, Clock::now());
        }
        if (ev.finished && ev.finish_reason == FinishReason::kError) ++failed;
      }));
    }
    RETURN_IF_ERROR(engine->RunUntilIdle());
    const double wall = Seconds(t0, Clock::now());
    const EngineStats st = engine->Stats();
    if (keep_prompts) {
      hf_workload["offline"] = {{"prompts", offline_prompts}, {"output_len", out_len},
                                {"concurrency", concurrency},
                                {"temperature", absl::GetFlag(FLAGS_temperature)},
                                {"top_k", absl::GetFlag(FLAGS_top_k)}, {"top_p", absl::GetFlag(FLAGS_top_p)},
                                {"repetition_penalty", absl::GetFlag(FLAGS_repetition_penalty)},
                                {"generated_tok_s", generated / wall}};
    }
    fig->j["throughput"] = {{"requests", n}, {"input_len", in_len}, {"output_len", out_len},
                            {"temperature", absl::GetFlag(FLAGS_temperature)},
                            {"top_k", absl::GetFlag(FLAGS_top_k)}, {"top_p", absl::GetFlag(FLAGS_top_p)},
                            {"repetition_penalty", absl::GetFlag(FLAGS_repetition_penalty)},
                            {"logprobs", absl::GetFlag(FLAGS_logprobs)},
                            {"concurrency", concurrency},
                            {"scheduling", SchedulingPolicyName(eo.scheduling)}, {"wall_s", wall},
                            {"generated_tok_s", generated / wall},
                            {"total_tok_s", (generated + int64_t{n} * in_len) / wall},
                            {"failed", failed}, {"steps", st.steps}, {"preemptions", st.preemptions},
                            {"kv_blocks", st.kv_blocks_total}, {"shared_prefix_len", shared_len},
                            {"prefix_caching", eo.enable_prefix_caching},
                            {"prefix_hit_tokens", st.prefix_hit_tokens},
                            {"prompt_tokens_computed", st.prompt_tokens},
                            {"mean_ttft_ms", 1e3 * MeanOf(first_token_s)}};
    std::printf("offline: %d requests x (%d in, %d out), concurrency %d, %s, %s scheduling: %.1f s, "
                "%.0f generated tok/s (%.0f total tok/s), %lld steps, %lld preemptions, %lld failed\n",
                n, in_len, out_len, concurrency, SamplingLabel().c_str(),
                SchedulingPolicyName(eo.scheduling), wall, generated / wall,
                (generated + int64_t{n} * in_len) / wall, static_cast<long long>(st.steps),
                static_cast<long long>(st.preemptions), static_cast<long long>(failed));
    std::printf("offline prompts: %d shared leading tokens, prefix caching %s: %lld of %lld prompt "
                "tokens computed, mean time to first token %.1f ms\n",
                shared_len, eo.enable_prefix_caching ? "on" : "off",
                static_cast<long long>(st.prompt_tokens), static_cast<long long>(int64_t{n} * in_len),
                1e3 * MeanOf(first_token_s));
    fig->j["throughput"]["step_times"] = {
        {"prefill_steps", steps_seen.prefill_steps}, {"prefill_s", steps_seen.prefill_s},
        {"full_decode_steps", steps_seen.full_steps}, {"full_decode_s", steps_seen.full_s},
        {"other_decode_steps", steps_seen.other_steps}, {"other_decode_s", steps_seen.other_s}};
    std::printf("offline steps: %d with prefill tokens %.2f s, %d decode-only at %d sequences %.2f s "
                "(%.2f ms a step), %d other decode-only %.2f s\n",
                steps_seen.prefill_steps, steps_seen.prefill_s, steps_seen.full_steps, concurrency,
                steps_seen.full_s, 1e3 * steps_seen.full_s / std::max(steps_seen.full_steps, 1),
                steps_seen.other_steps, steps_seen.other_s);
    backend.reset();
    const MemoryReport mem = engine->backend()->Memory();
    fig->j["memory"] = {{"weights", mem.weights}, {"kv_cache", mem.kv_cache},
                        {"activations", mem.activations}, {"free", mem.free}, {"total", mem.total},
                        {"peak", mem.peak}};
    if (mem.total > 0) {
      std::printf("GPU memory: weights %.2f GiB, KV %.2f GiB, activations %.2f GiB, free %.2f GiB, "
                  "peak %.2f GiB = weights + KV + %.1f%%\n",
                  mem.weights / 1073741824.0, mem.kv_cache / 1073741824.0,
                  mem.activations / 1073741824.0, mem.free / 1073741824.0, mem.peak / 1073741824.0,
                  100.0 * (mem.peak - mem.weights - mem.kv_cache) / (mem.weights + mem.kv_cache));
    }
  }

  // ---- transformers baseline ----------------------------------------------------------------
  if (absl::GetFlag(FLAGS_baseline) == "hf") {
    backend.reset();  // the device memory goes back before torch loads (the engine's went with it)
    RETURN_IF_ERROR(RunHfBaseline(dir, precision, hf_workload, bs1_tps, ttft, fig));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace glm

// --mode=cluster is the cluster load generator, a separate binary (it needs gRPC, this one must
// build without it): hand the command line over to it when it was built next to us.
void ExecClusterModeIfAsked(int argc, char** argv) {
  bool cluster = false;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--mode=cluster" || arg == "--mode_cluster") {
      cluster = true;
      continue;
    }
    if ((arg == "--mode") && i + 1 < argc && std::string_view(argv[i + 1]) == "cluster") {
      cluster = true;
      ++i;
      continue;
    }
    args.push_back(argv[i]);
  }
  if (!cluster) return;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string bench_dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : "";
  bench_dir = bench_dir.substr(0, bench_dir.rfind('/'));
  const std::string cluster_bin = bench_dir + "/../glm-bench-cluster/glm-bench-cluster";
  args[0] = const_cast<char*>(cluster_bin.c_str());
  args.push_back(nullptr);
  execv(cluster_bin.c_str(), args.data());
  std::fprintf(stderr,
               "glm-bench: --mode=cluster needs glm-bench-cluster (built with -DGLM_WITH_GRPC=ON) "
               "at %s\n",
               cluster_bin.c_str());
  std::exit(2);
}

int main(int argc, char** argv) {
  ExecClusterModeIfAsked(argc, argv);
  glm::ParseFlags(argc, argv,
                  "glm-bench [--mode=engine] (--model DIR | --synthetic SHAPE) [--backend cpu|cuda] "
                  "[--precision bf16] [--baseline hf] [--json FILE]");
  const std::string mode = absl::GetFlag(FLAGS_mode);
  glm::Figures fig;
  fig.j["mode"] = mode;
  absl::Status status;
  if (mode == "engine") {
    status = glm::RunEngineMode(&fig);
  } else {
    status = absl::InvalidArgumentError(absl::StrFormat(
        "--mode=%s is not built into this glm-bench: use --mode=engine", mode));
  }
  const std::string json = absl::GetFlag(FLAGS_json);
  if (!json.empty()) {
    fig.j["status"] = status.ok() ? "ok" : std::string(status.message());
    std::ofstream(json) << fig.j.dump(2) << "\n";
  }
  if (!status.ok()) {
    std::fprintf(stderr, "glm-bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
