#!/usr/bin/env bash
# One GPU-machine session for the CUDA backend: build the CUDA targets for the local GPU's arch,
# run the GPU tests, then glm-bench. Everything is logged under $OUT (the `run` tool's folder).
#   tools/glm-bench/device_run.sh [tests] [nccl] [bench-bf16] [bench-fp32] [bench-fp16safe]
#     [hf|hf-sdpa] (bf16 figures against transformers, eager or SDPA attention) [tools-test]
#     [ab-VAR[=VALUE][,VAR2=VALUE2]] (bf16 bs1 + throughput again with env VAR=VALUE, default 0:
#     an A/B of GLM_CUDA_* switches) [ab1-...] (the same, bs1 decode and TTFT only, with
#     the phase profile) [ncu-bs1] (Nsight Compute metrics of the bs1 decode GEMV and attention)
#     [ncu-256] (the same for the 256-wide decode attention) [ncu-elementwise] (and for the
#     prefill-sized norm, SiLU and rotary kernels) [ncu-prefill-attn] (the prefill attention of
#     the offline run's 8,192-token steps) [wgmma] (the own sm90a GEMM: its tests, timing
#     sweep and Nsight Compute) [kvread] (K/V cache read patterns, glm-kv-read-bench)
#     [nsys-256] (per-kernel durations and launch gaps inside the decode graphs: Nsight Systems,
#     or glm-bench --kernel_trace through CUPTI where nsys is missing)
#     [sample-FLAG=V[,FLAG=V]] (bf16 bs1 and offline throughput with glm-bench sampling flags,
#     e.g. sample-temperature=1,top_k=50)
set -u
OUT=${OUT:-/tmp/glm-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
source scripts/device-env.sh
# Build from a copy whose tests/ builds only gpu/ (and what it needs): folders other engineers
# are midway through must not stop this build. The copy and its build-dev/ persist while the
# machine stays warm; only files whose content changed are copied, so a later call rebuilds
# only what changed (a file deleted from the tree stays in the copy until the machine is cold).
src=/tmp/glm-src
mkdir -p "$src"
sync_file() {  # sync_file FROM TO: copy when the content differs
  cmp -s "$1" "$2" && return 0
  mkdir -p "$(dirname "$2")" && cp "$1" "$2"
}
find CMakeLists.txt cmake services worker tools tests proto -name node_modules -prune -o \
  -type f ! -path tests/CMakeLists.txt -print |
  while read -r f; do sync_file "$f" "$src/$f"; done
printf 'add_subdirectory(gpu)\nadd_subdirectory(golden)\nadd_subdirectory(unit/parallel)\n' >/tmp/glm-tests-cmake
sync_file /tmp/glm-tests-cmake "$src/tests/CMakeLists.txt"
cd "$src"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
t0=$(date +%s)
cmake -S . -B build-dev -G Ninja -DGLM_WITH_GRPC=OFF -DGLM_WITH_CUDA=ON -DGLM_CUDA_ARCHS="$arch" \
  -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
# GLM_DEV_TARGETS: a shorter build list for a call that runs only some of them.
targets=${GLM_DEV_TARGETS:-gpu_kernels_test gpu_gemm_lt_test gpu_gemm_wgmma_test gpu_backend_test gpu_engine_prefix_test gpu_tp_nccl_test glm-bench glm-kv-read-bench glm_nccl_communicator_tests}
ninja -C build-dev -j16 -k 0 $targets \
  >>"$OUT/build.log" 2>&1 ||
  grep -E "error|FAILED" "$OUT/build.log" | head -20
echo "build: $(( $(date +%s) - t0 )) s"
bench=build-dev/tools/glm-bench/glm-bench
# What every glm-bench run below benchmarks: the GLM-4-9B-0414 shape, random weights written
# once into /tmp/glm4-9b, on the CUDA backend ($synth unquoted: it is these words).
synth="--synthetic glm4-9b-0414 --synthetic-dir /tmp/glm4-9b --backend cuda"
# ab-/ab1- argument VAR[=VALUE][,VAR2=VALUE2...] (VALUE defaults to 0): $setting, the env
# assignments in $settings, and $tag, a file-name form of it.
parse_setting() {
  setting=$1
  [[ $setting == *=* ]] || setting="$setting=0"
  IFS=',' read -ra settings <<<"$setting"
  tag=$(echo "$setting" | tr -c 'A-Za-z0-9_\n' _)
}
# The Nsight Compute report lines the ncu-* targets print (each adds its own metrics), and the
# stall-reason lines with a nonzero value.
ncu_lines='^  [A-Za-z].*\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Block Size|Dynamic Shared|Warp Cycles Per Issued|Issued Warp|L2 Hit|L1/TEX Hit'
ncu_stalls='stalled_[a-z_]*_per_issue_active.ratio +[a-z]* +[0-9.]*[1-9]'
# ncu_small_bench FILE OUTPUT_LEN NCU_ARGS...: Nsight Compute (unlocked clocks, the common
# sections plus NCU_ARGS) on a short bench run, bs1 parts cut down, the offline-throughput run
# kept (256 x 512 prompt tokens, OUTPUT_LEN tokens out); output to FILE.
ncu_small_bench() {
  local file=$1 out_len=$2
  shift 2
  local ncu
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  timeout 300 "$ncu" --clock-control none "$@" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section WarpStateStats --section LaunchStats \
    $bench $synth \
    --precision bf16 --prompt_len 64 --decode_steps 4 --decode_context 16 --output_len "$out_len" \
    >"$file" 2>&1
}
for what in "$@"; do
  case "$what" in
    tests)
      for t in gpu_kernels_test gpu_gemm_lt_test gpu_gemm_wgmma_test gpu_backend_test gpu_engine_prefix_test gpu_tp_nccl_test; do
        [ -x build-dev/tests/gpu/$t ] || { echo "$t not built"; continue; }
        timeout 300 build-dev/tests/gpu/$t >"$OUT/$t.log" 2>&1
        rc=$?
        echo "$t: rc=$rc"; grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[.*\] .* steps|Failure|error|^wgmma-gemm" "$OUT/$t.log" | head -40
        echo "$t: rc=$rc $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/$t.log" | tr '\n' ' ')" >>"$OUT/summary.txt"
      done ;;
    nccl)
      # The real NCCL communicator with one rank (a one-GPU machine): every collective, abort.
      t=$(find build-dev -name glm_nccl_communicator_tests -type f | head -1)
      [ -n "$t" ] && timeout 120 "$t" >"$OUT/nccl.log" 2>&1; echo "nccl: rc=$?"
      grep -E "^\[  (PASSED|FAILED|SKIPPED|       OK) |Failure" "$OUT/nccl.log" | head -20 ;;
    bench-bf16)
      timeout 420 $bench $synth \
        --precision bf16 --profile --json "$OUT/bench_bf16.json" 2>&1 | tee "$OUT/bench_bf16.log" | grep -v "^$" ;;
    bench-fp32)
      timeout 300 $bench $synth \
        --precision fp32 --skip-throughput --json "$OUT/bench_fp32.json" 2>&1 | tee "$OUT/bench_fp32.log" ;;
    bench-fp16safe)
      # The V100 pool's fast mode, timed on this GPU: issue 5 asks for >= 85% of bf16's speed.
      timeout 300 $bench $synth \
        --precision fp16-safe --skip-throughput --json "$OUT/bench_fp16safe.json" 2>&1 | tee "$OUT/bench_fp16safe.log" ;;
    ab-*)
      parse_setting "${what#ab-}"
      echo "== A/B run with $setting"
      env "${settings[@]}" timeout 300 $bench $synth \
        --precision bf16 --json "$OUT/bench_ab_$tag.json" 2>&1 | tee "$OUT/bench_ab_$tag.log" | grep -v "^I " ;;
    sample-*)
      # The offline run with a sampler (the flags after "sample-", comma-separated).
      IFS=',' read -ra flags <<<"${what#sample-}"
      tag=$(echo "${what#sample-}" | tr -c 'A-Za-z0-9_\n' _)
      echo "== sampling run with ${flags[*]}"
      timeout 300 $bench $synth \
        --precision bf16 "${flags[@]/#/--}" --json "$OUT/bench_sample_$tag.json" 2>&1 |
        tee "$OUT/bench_sample_$tag.log" | grep -v "^I " ;;
    ab1-*)
      # bs1 decode and TTFT only (no throughput run) with env VAR=VALUE.
      parse_setting "${what#ab1-}"
      echo "== A/B bs1 run with $setting"
      env "${settings[@]}" timeout 200 $bench $synth \
        --precision bf16 --skip-throughput --profile 2>&1 |
        tee "$OUT/bench_ab1_$tag.log" | grep -v "^I " ;;
    ncu-bs1)
      # Nsight Compute on bs1 decode (one kernel per graph node, serialized: no PDL overlap): a few
      # launches each of the decode GEMV and the tensor-core attention after the prefill phase.
      ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      for k in GemvKernel AttentionMmaKernel; do
        timeout 240 "$ncu" --kernel-name "regex:$k" --launch-skip 400 --launch-count 4 \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
          --section WarpStateStats --section LaunchStats \
          $bench $synth \
          --precision bf16 --skip-throughput >"$OUT/ncu_$k.txt" 2>&1
        echo "ncu $k: rc=$?"
        grep -E "$ncu_lines|Stall" "$OUT/ncu_$k.txt" | head -80
      done ;;
    ncu-256)
      # The large-batch decode attention (2 warps, 3 stages: only the 256-wide decode steps of the
      # offline-throughput run launch it): two launches after the first two steps, with the
      # stall reasons.
      ncu_small_bench "$OUT/ncu_attn256.txt" 8 --kernel-name-base demangled \
        --kernel-name "regex:AttentionMmaKernel<.*\(int\)2, \(int\)1, \(int\)3(, \(bool\)[01])?>" --launch-skip 80 --launch-count 2 \
        --section SchedulerStats --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
      echo "ncu attention 256: rc=$?"
      grep -E "$ncu_lines|$ncu_stalls" "$OUT/ncu_attn256.txt" | head -80 ;;
    ncu-elementwise)
      # The prefill-sized (8192-token step) residual-add + RMSNorm, SiLU-and-multiply and rotary
      # kernels of the offline-throughput prefill.
      ncu_small_bench "$OUT/ncu_elementwise.txt" 4 \
        --kernel-name "regex:AddRmsNormVecKernel|SiluMulVecKernel|RotaryKvWriteVecKernel" \
        --launch-skip 1200 --launch-count 8 \
        --metrics "dram__bytes_read.sum,dram__bytes_write.sum,regex:smsp__average_warps_issue_stalled_(long_scoreboard|barrier|wait|lg_throttle|drain|membar|short_scoreboard)_per_issue_active\.ratio"
      echo "ncu elementwise: rc=$?"
      grep -E "^  [A-Za-z].*\(|Duration|DRAM Throughput|dram__bytes|Achieved Occupancy|Theoretical Occupancy|Registers Per|Grid Size|Block Size|Warp Cycles Per Issued|Issued Warp|L2 Hit|stalled_[a-z_]*_per_issue_active.ratio" "$OUT/ncu_elementwise.txt" | head -150 ;;
    ncu-prefill-attn)
      # The prefill attention (4 row warps of 16 rows, 64-key tiles, 2 stages) on the offline
      # run's 8,192-token steps of 512-token prompts (the bs1 TTFT prefills launch it ~200 times
      # first): pipe utilization, shared-memory bank conflicts and the stall reasons.
      ncu_small_bench "$OUT/ncu_prefill_attn.txt" 4 --kernel-name-base demangled \
        --kernel-name "regex:AttentionMmaKernel<.*\(int\)4, \(int\)4, \(int\)2(, \(bool\)0)?>" --launch-skip 300 --launch-count 2 \
        --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats \
        --metrics "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"
      echo "ncu prefill attention: rc=$?"
      grep -E "$ncu_lines|Executed Ipc|bank_conflicts|inst_executed.sum|hmma|Pipe|$ncu_stalls" "$OUT/ncu_prefill_attn.txt" | head -100 ;;
    nsys-256)
      # Nsight Systems on a short offline run (256 x 512 in, 32 out), kernels inside the CUDA
      # graphs traced one by one: every kernel's duration and the idle gap before it, grouped by
      # kernel and grid (tools/glm-bench/nsys_kernels.py), so the 256-wide decode step's kernels
      # are timed where they run, without GLM_CUDA_DEBUG_SKIP's stale-data confound.
      nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
      trace_run="$bench $synth \
        --precision bf16 --prompt_len 64 --decode_steps 4 --decode_context 16"
      if [ -z "$nsys" ]; then
        # No Nsight Systems: the same timeline through CUPTI (glm-bench --kernel_trace), of the
        # backend-alone run's second prefill step and eight decode steps at 256 (context ~640,
        # the run's mean), then the Engine's run of the same workload with CUPTI stopped.
        echo "nsys-256: no nsys on this machine; glm-bench --kernel_trace instead"
        timeout 300 $trace_run --kernel_trace /tmp/glm-trace.csv >"$OUT/nsys.log" 2>&1
        echo "kernel trace: rc=$?"
        python3 tools/glm-bench/nsys_kernels.py /tmp/glm-trace.csv --top 70 | tee "$OUT/nsys_kernels.txt"
        continue
      fi
      timeout 300 "$nsys" profile --trace cuda --cuda-graph-trace node --force-overwrite true \
        --output /tmp/glm-nsys $trace_run --output_len 32 >"$OUT/nsys.log" 2>&1
      echo "nsys-256: rc=$?"
      "$nsys" stats --report cuda_gpu_trace --format csv --output - /tmp/glm-nsys.nsys-rep \
        >/tmp/glm-nsys-trace.csv 2>>"$OUT/nsys.log"
      python3 tools/glm-bench/nsys_kernels.py /tmp/glm-nsys-trace.csv --top 60 | tee "$OUT/nsys_kernels.txt" ;;
    kvread)
      # Read patterns of the paged K/V cache at the 256-wide decode, without the attention's
      # math (glm-kv-read-bench): the cache layout and the copy pipeline against a plain stream.
      for ctx in 640 1024; do
        timeout 120 build-dev/tools/glm-bench/glm-kv-read-bench $ctx 2>&1 | tee "$OUT/kvread_$ctx.txt"
      done ;;
    wgmma)
      # The own sm90a decode GEMM: its tests and timing sweep against cuBLAS, the backend with it
      # against the cuBLAS path, then Nsight Compute on the M = 256 gate/up GEMM with x multicast
      # over 1 and 2 column tiles (plan BN 104, S 1).
      timeout 200 build-dev/tests/gpu/gpu_gemm_wgmma_test 2>&1 |
        tee "$OUT/wgmma_time.txt" | grep -E "^wgmma-gemm|^\[ +(OK|FAILED|PASSED)|Failure"
      timeout 120 build-dev/tests/gpu/gpu_backend_test --gtest_filter='*OwnDecodeGemm*' 2>&1 |
        tee "$OUT/wgmma_backend.txt" | grep -E "^\[own|^\[ +(OK|FAILED|PASSED)|Failure|Expected|Which is"
      # Nsight Compute only while multicast is still the slower (gate/up, BN 104, 1 split: G = 2
      # over 1.2x G = 1's time), or when WGMMA_NCU=1.
      sweep=$(grep -E "M=256 gate_up +best" "$OUT/wgmma_time.txt")
      t1=$(echo "$sweep" | grep -o " 104/1/1:[0-9.]*" | cut -d: -f2)
      t2=$(echo "$sweep" | grep -o " 104/1/2:[0-9.]*" | cut -d: -f2)
      if [ "${WGMMA_NCU:-0}" != 1 ] && [ -n "$t1" ] && [ -n "$t2" ] && awk "BEGIN{exit !($t2 <= 1.2 * $t1)}"; then
        echo "ncu wgmma: skipped (G=2 $t2 us, G=1 $t1 us)"
        continue
      fi
      ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      for g in ${WGMMA_NCU_G:-1 2}; do
        GLM_WGMMA_PROFILE=${WGMMA_NCU_SHAPE:-256,27392,4096,104,1},$g timeout 120 "$ncu" --clock-control none \
          --kernel-name regex:WgmmaGemmKernel --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
          --section SchedulerStats --section LaunchStats --section Occupancy \
          --metrics "lts__t_bytes.sum,smsp__inst_executed.sum,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
          build-dev/tests/gpu/gpu_gemm_wgmma_test --gtest_filter='*ProfilePlan*' >"$OUT/ncu_wgmma_g$g.txt" 2>&1
        echo "ncu wgmma G=$g: rc=$?"
        grep -E "$ncu_lines|lts__t_bytes|inst_executed.sum|Cluster|$ncu_stalls" "$OUT/ncu_wgmma_g$g.txt" | head -60
      done ;;
    hf|hf-sdpa)
      # Every bf16 figure, then transformers on the same checkpoint and workload (bs1, TTFT, the
      # 256 offline requests through model.generate): the ratios. hf-sdpa: its SDPA attention.
      attn=eager; [ "$what" = hf-sdpa ] && attn=sdpa
      timeout 540 $bench $synth \
        --precision bf16 --baseline hf --hf_attn $attn --json "$OUT/bench_$what.json" 2>&1 |
        tee "$OUT/bench_$what.log" | grep -v "^I " ;;
    tools-test)
      # glm-bench's own test (CPU backend, tiny model; here transformers imports, so the baseline
      # replay is checked for real).
      timeout 300 python3 tests/tools/glm_bench_test.py $bench /tmp/glm-bench-test >"$OUT/tools_test.log" 2>&1
      echo "tools-test: rc=$?"; tail -5 "$OUT/tools_test.log" ;;
  esac
done
[ -f "$OUT/summary.txt" ] && { echo "== test summary"; cat "$OUT/summary.txt"; }; true
