#!/usr/bin/env python3
"""tools/glm-bench/nsys_kernels.py on a hand-made cuda_gpu_trace CSV: kernels grouped by name and
grid (the same kernel at two grids is two groups), mean durations, the gap after the previous
operation on the same stream (another stream's work and host pauses over 1 ms do not count),
memory operations not listed, the busy share of the timeline, and a clear error for a file that is not such a trace."""
import os
import subprocess
import sys
import tempfile

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "glm-bench",
                    "nsys_kernels.py")
HEADER = ('"Start (ns)","Duration (ns)","CorrId","GrdX","GrdY","GrdZ","BlkX","BlkY","BlkZ",'
          '"Reg/Trd","StcSMem (MB)","DymSMem (MB)","Bytes (MB)","Throughput (MB/s)","SrcMemKd",'
          '"DstMemKd","Device","Ctx","GreenCtx","Strm","Name"')
NORM = '"void glm::cuda::(anonymous namespace)::AddRmsNormVecKernel<__nv_bfloat16, 2>(__nv_bfloat16 *)"'
GEMM = '"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64"'


def row(start, dur, grid, stream, name):
    g = grid.split("x") if grid else ["", "", ""]
    return ",".join([str(start), str(dur), "1", *g, "256", "1", "1", "40", "0", "0", "", "", "", "",
                     '"H100"', "1", "", str(stream), name])


def run(text):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run([sys.executable, TOOL, f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)


def main():
    lines = ["Generating SQLite file...", HEADER,
             row(1000, 500, "", 7, '"[CUDA memcpy Host-to-Device]"'),
             row(2000, 10000, "36x1x1", 7, GEMM),         # gap 0.5 us after the copy
             row(14000, 3000, "256x1x1", 7, NORM),        # gap 2 us
             row(15000, 4000, "132x1x1", 9, GEMM),        # another stream: no gap yet
             row(19000, 10000, "36x1x1", 7, GEMM),        # gap 2 us (stream 7 ended at 17000)
             row(31000, 3000, "256x1x1", 7, NORM),        # gap 2 us
             row(5000000, 6000, "8192x1x1", 7, NORM)]     # after a 5 ms host pause: no gap
    res = run("\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    # 36.5 us of operations over 39 us: 1.0-34.0 us, then 5000-5006 us (the 5 ms pause left out).
    assert out[0].startswith("timeline: ") and "over 0.039 ms: busy 93.6%, idle 0.003 ms" in out[0], out[0]
    out = out[1:]
    assert out[0].split()[0] == "kernel", out
    body = {(l.split()[0], l.split()[-5]): l.split() for l in out[1:]}
    gemm = body[("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "36x1x1")]
    assert gemm[-4:-1] == ["2", "10.00", "1.25"], gemm
    norm = body[("AddRmsNormVecKernel<__nv_bfloat16,", "256x1x1")]
    assert norm[-4:-1] == ["2", "3.00", "2.00"], norm
    big = body[("AddRmsNormVecKernel<__nv_bfloat16,", "8192x1x1")]
    assert big[-4:-1] == ["1", "6.00", "-"], big
    other = body[("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "132x1x1")]
    assert other[-4:-1] == ["1", "4.00", "-"], other
    assert not any("memcpy" in l for l in out), out
    assert len(out) == 5, out

    bad = run("not a trace\n")
    assert bad.returncode != 0 and "no cuda_gpu_trace header" in bad.stderr, (bad.returncode, bad.stderr)
    print("nsys_kernels_test: ok")


if __name__ == "__main__":
    main()
