#!/usr/bin/env python3
"""glm-bench (engine mode) end to end on the CPU backend with a tiny random checkpoint.

  glm_bench_test.py GLM_BENCH WORK_DIR

Checks: every figure the engine mode promises is in its JSON and plausible (the offline run
generated what it was asked, no request failed, its steps add up); bad flags exit non-zero
with a message that names the flag; --baseline hf either replays the same workload through
transformers (where torch and transformers import: ratios for bs1, TTFT and offline
throughput) or, where they do not, records the missing baseline and keeps our own figures.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(bench, args, env=None):
    p = subprocess.run([bench] + args, capture_output=True, text=True, timeout=240, env=env)
    return p.returncode, p.stdout + p.stderr


def main():
    bench, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = os.path.join(work, "tiny")
    n, in_len, out_len, conc = 6, 24, 10, 4
    common = ["--synthetic", "tiny", "--synthetic-dir", model, "--backend", "cpu",
              "--prompt_len", "48", "--decode_steps", "6", "--decode_context", "16",
              "--num_requests", str(n), "--input_len", str(in_len), "--output_len", str(out_len),
              "--concurrency", str(conc)]

    # 1. Every figure, greedy.
    out_json = os.path.join(work, "greedy.json")
    rc, log = run(bench, common + ["--json", out_json])
    check(rc == 0, f"greedy run exits 0 (rc {rc}):\n{log}")
    j = json.load(open(out_json))
    check(j.get("status") == "ok", f"status ok: {j.get('status')}")
    check(j.get("backend") == "cpu" and j.get("precision") == "bf16", "backend and precision recorded")
    check(j.get("ttft_ms", 0) > 0 and j.get("ttft_prompt_len") == 48, "TTFT of the 48-token prompt")
    check(j.get("bs1_decode_tok_s", 0) > 0, "bs1 decode tok/s")
    check(j.get("bs1_bytes_per_step", 0) > 0, "bytes a bs1 step reads")
    bo = j.get("backend_offline", {})
    check(bo.get("requests") == conc and bo.get("generated_tok_s", 0) > 0 and bo.get("decode_step_ms", 0) > 0,
          f"backend-alone offline run: {bo}")
    t = j.get("throughput", {})
    check(t.get("requests") == n and t.get("input_len") == in_len and t.get("output_len") == out_len,
          f"offline workload recorded: {t}")
    check(t.get("failed") == 0 and t.get("preemptions") == 0, f"no failed request: {t}")
    # Every request generated exactly out_len tokens (ignore_eos): generated / wall.
    if t.get("wall_s", 0) > 0:
        generated = t["generated_tok_s"] * t["wall_s"]
        check(abs(generated - n * out_len) < 0.5, f"generated {generated:.1f} tokens, want {n * out_len}")
        total = t["total_tok_s"] * t["wall_s"]
        check(abs(total - n * (in_len + out_len)) < 0.5, f"total {total:.1f} tokens")
    st = t.get("step_times", {})
    check(st.get("prefill_steps", 0) >= 1, f"steps with prefill tokens: {st}")
    check(st.get("prefill_steps", 0) + st.get("full_decode_steps", 0) + st.get("other_decode_steps", 0)
          == t.get("steps"), f"step kinds add up to the Engine's steps: {st} vs {t.get('steps')}")
    check("offline:" in log and "generated tok/s" in log, "the report line of the offline run")
    check(t.get("scheduling") == "mixed" and "mixed scheduling" in log, f"the default policy: {t}")

    # 1b. The prefill-first policy: the same tokens, said so.
    out_json = os.path.join(work, "prefill_first.json")
    rc, log = run(bench, common + ["--scheduling", "prefill-first", "--json", out_json])
    check(rc == 0, f"prefill-first run exits 0 (rc {rc}):\n{log}")
    t = json.load(open(out_json)).get("throughput", {})
    check(t.get("scheduling") == "prefill-first" and t.get("failed") == 0 and t.get("wall_s", 0) > 0 and
          abs(t.get("generated_tok_s", 0) * t.get("wall_s", 0) - n * out_len) < 0.5,
          f"prefill-first offline run: {t}")
    check("prefill-first scheduling" in log, "the policy in the report")

    # 1c. A shared system prompt with prefix caching: the requests admitted after the first wave
    # take its blocks from the cache (16 tokens, one block), and compute only the rest.
    out_json = os.path.join(work, "prefix.json")
    rc, log = run(bench, common + ["--shared_prefix_len", "16", "--prefix_caching", "--json", out_json])
    check(rc == 0, f"prefix-caching run exits 0 (rc {rc}):\n{log}")
    t = json.load(open(out_json)).get("throughput", {})
    hits = t.get("prefix_hit_tokens", 0)
    check(t.get("prefix_caching") is True and t.get("shared_prefix_len") == 16 and t.get("failed") == 0,
          f"prefix-caching offline run: {t}")
    check(hits == 16 * (n - conc), f"the {n - conc} requests admitted later each found 16 tokens: {hits}")
    check(t.get("prompt_tokens_computed") == n * in_len - hits, f"only the rest computed: {t}")
    check(t.get("mean_ttft_ms", 0) > 0, f"mean time to first token: {t}")
    check("16 shared leading tokens, prefix caching on" in log, "the prefix line of the report")
    t = json.load(open(os.path.join(work, "greedy.json"))).get("throughput", {})
    check(t.get("prefix_hit_tokens") == 0 and t.get("prompt_tokens_computed") == n * in_len,
          f"off by default: every prompt token computed: {t}")

    # 2. A sampler: the offline run takes it (and says so).
    out_json = os.path.join(work, "sample.json")
    rc, log = run(bench, common + ["--temperature", "0.8", "--top_k", "20", "--top_p", "0.9",
                                   "--repetition_penalty", "1.1", "--json", out_json])
    check(rc == 0, f"sampling run exits 0 (rc {rc}):\n{log}")
    t = json.load(open(out_json)).get("throughput", {})
    check(t.get("temperature") == 0.8 and t.get("top_k") == 20 and t.get("failed") == 0,
          f"sampled offline run: {t}")
    check("temperature 0.8, top-k 20, top-p 0.9, repetition penalty 1.1" in log, "the sampler in the report")

    # 3. Bad flags: a clear error, non-zero exit.
    rc, log = run(bench, common + ["--scheduling", "fifo"])
    check(rc != 0 and "unknown scheduling policy" in log, f"--scheduling fifo refused: rc {rc}: {log[-300:]}")
    rc, log = run(bench, common + ["--shared_prefix_len", str(in_len + 1)])
    check(rc != 0 and "--shared_prefix_len" in log, f"a prefix longer than the prompt refused: {log[-300:]}")
    rc, log = run(bench, common + ["--precision", "fp8"])
    check(rc != 0 and "--precision" in log, f"--precision fp8 refused: rc {rc}: {log[-300:]}")
    rc, log = run(bench, ["--model", model, "--synthetic", "tiny", "--backend", "cpu"])
    check(rc != 0 and "exactly one of --model" in log, f"--model with --synthetic refused: {log[-300:]}")
    rc, log = run(bench, ["--model", model, "--backend", "tpu"])
    check(rc != 0 and "--backend=tpu" in log, f"an unknown backend refused: {log[-300:]}")
    rc, log = run(bench, ["--model", model, "--backend", "cpu", "--baseline", "vllm"])
    check(rc != 0 and "--baseline=vllm" in log, f"an unknown baseline refused: {log[-300:]}")
    rc, log = run(bench, ["--model", model, "--backend", "cpu", "--baseline", "hf", "--hf_attn", "fast"])
    check(rc != 0 and "--hf_attn=fast" in log, f"an unknown attention refused: {log[-300:]}")

    # 4. --baseline hf.
    out_json = os.path.join(work, "hf.json")
    tmp = os.path.join(work, "tmp")
    os.makedirs(tmp)
    rc, log = run(bench, common + ["--baseline", "hf", "--json", out_json], dict(os.environ, TMPDIR=tmp))
    check(rc == 0, f"--baseline hf run exits 0 (rc {rc}):\n{log}")
    j = json.load(open(out_json))
    check(j.get("status") == "ok" and j.get("bs1_decode_tok_s", 0) > 0, "our figures stand with a baseline")
    has_hf = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    if has_hf:
        r = j.get("ratio_vs_hf", {})
        check(all(r.get(k, 0) > 0 for k in ("bs1_decode", "ttft", "offline_throughput")),
              f"ratios for bs1, TTFT and offline throughput: {r} {j.get('hf')}")
        hf = j.get("hf", {})
        check(hf.get("offline_requests") == n and hf.get("offline_generated_tokens") == n * out_len,
              f"transformers replayed the same offline requests: {hf}")
        check(hf.get("ttft_prompt_len") == 48, f"transformers' TTFT prompt is ours: {hf}")
    else:
        print("torch/transformers not importable here: the baseline's absence is what is checked")
        check("error" in j.get("hf", {}) and "ratio_vs_hf" not in j, f"a missing baseline recorded: {j.get('hf')}")
    left = [e for e in os.listdir(tmp) if e.startswith("glm-bench-")]  # (torch keeps caches there)
    check(left == [], f"the baseline's workload files are removed: {left}")

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
