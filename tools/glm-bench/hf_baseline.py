#!/usr/bin/env python3
"""HF transformers baseline for glm-bench: the same checkpoint and the same workload.

glm-bench --baseline hf writes the workload it ran (--workload FILE, JSON): the TTFT prompt, the
bs1 decode prompt and step count, and the offline requests (prompts, output length, concurrency,
sampler). This script replays it with transformers and prints and writes JSON:
  ttft_ms                  one forward over the TTFT prompt to the first greedy token (median of 3)
  bs1_decode_tok_s         greedy decode with the KV cache after the decode prompt
  offline_generated_tok_s  the offline requests through model.generate in batches of
                           `concurrency` (static batching: the way transformers serves a batch),
                           exactly output_len new tokens each (min_new_tokens, as the Engine's
                           ignore_eos), the same sampler parameters
  offline_peak_memory_bytes, the device and versions.
Without --workload it makes random prompts of --prompt-len / 128 tokens and skips the offline
part. Needs torch and transformers (the GPU machine has both).
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--attn", default="eager", help="attn_implementation: eager, sdpa")
    ap.add_argument("--workload", default="", help="glm-bench's workload JSON")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-safe": torch.float16,
             "fp32": torch.float32}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn)
    model.to(device).eval()
    vocab = model.config.vocab_size

    if args.workload:
        with open(args.workload) as f:
            work = json.load(f)
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (max(args.prompt_len, 128),), generator=g).tolist()
        work = {"ttft_prompt": ids[:args.prompt_len], "decode_prompt": ids[:128],
                "decode_steps": args.decode_steps}

    def ids_tensor(rows):
        return torch.tensor(rows, dtype=torch.long, device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def last_logits(input_ids, **kw):
        # Only the last position's logits, as glm-bench's TTFT step computes (a [1, 2048, V]
        # LM head would add a few ms to transformers' figure).
        try:
            return model(input_ids, logits_to_keep=1, **kw)
        except TypeError:
            return model(input_ids, **kw)

    res = {}
    with torch.inference_mode():
        prompt = ids_tensor([work["ttft_prompt"]])
        model(prompt[:, :16])  # warm-up
        sync()
        ttfts = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = last_logits(prompt, use_cache=True)
            out.logits[:, -1].argmax(-1).item()
            sync()
            ttfts.append(time.perf_counter() - t0)
        ttfts.sort()
        res["ttft_ms"] = ttfts[len(ttfts) // 2] * 1e3
        res["ttft_prompt_len"] = prompt.shape[1]
        del out

        ctx = ids_tensor([work["decode_prompt"]])
        steps = min(int(work["decode_steps"]), 32)
        out = last_logits(ctx, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        tok.item()
        sync()
        res["bs1_decode_tok_s"] = steps / (time.perf_counter() - t0)
        res["bs1_decode_steps"] = steps
        del out, past

        off = work.get("offline")
        if off:
            try:
                res.update(offline(model, off, ids_tensor, sync, device))
            except Exception as e:  # e.g. out of memory at this batch size: say so, keep the rest
                res["offline_error"] = f"{type(e).__name__}: {e}"[:500]

    res.update({
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
    })
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def offline(model, off, ids_tensor, sync, device):
    """The offline requests through model.generate, `concurrency` prompts a batch."""
    import torch

    prompts = off["prompts"]
    out_len = int(off["output_len"])
    batch = max(1, int(off["concurrency"]))
    temperature = float(off.get("temperature", 0.0))
    kw = dict(max_new_tokens=out_len, min_new_tokens=out_len, use_cache=True,
              repetition_penalty=float(off.get("repetition_penalty", 1.0)),
              pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0)
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_k=int(off.get("top_k", 0)),
                  top_p=float(off.get("top_p", 1.0)))
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    # A short warm-up batch (kernel loads, cuBLAS handles), outside the clock.
    model.generate(ids_tensor(prompts[:1]), max_new_tokens=2, min_new_tokens=2, do_sample=False,
                   pad_token_id=kw["pad_token_id"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    generated = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        rows = prompts[i:i + batch]
        width = max(len(r) for r in rows)
        # Left padding, as transformers generates for decoder-only models (the Engine's prompts
        # are all one length, so there is none in the default workload).
        ids = ids_tensor([[kw["pad_token_id"]] * (width - len(r)) + r for r in rows])
        mask = ids_tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        seqs = model.generate(ids, attention_mask=mask, **kw)
        generated += (seqs.shape[1] - width) * seqs.shape[0]
    sync()
    wall = time.perf_counter() - t0
    res = {"offline_requests": len(prompts), "offline_output_len": out_len, "offline_batch": batch,
           "offline_wall_s": wall, "offline_generated_tokens": generated,
           "offline_generated_tok_s": generated / wall}
    if device == "cuda":
        res["offline_peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return res


if __name__ == "__main__":
    sys.exit(main())
