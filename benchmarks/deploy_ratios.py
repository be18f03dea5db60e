"""Deployment ratios measured side by side in one run (issue: export and latency benchmark).

1. Our deployed RepViT-M0.9 vs timm's deployed repvit_m0_9 on each runtime (target: ratio <= 1.00
   within noise: the two compute the same function, ours must not be slower).
2. ExecuTorch/XNNPACK vs eager PyTorch for RepViT-M0.9 (target: several times faster).
3. Achieved GMAC/s of RepViT-M0.9 on XNNPACK against this machine's single-thread fp32 matmul rate,
   measured in the same run with torch, numpy and XNNPACK's own GEMM.

Usage:  .venv/bin/python benchmarks/deploy_ratios.py [--threads 1] [--rounds 20] [--iters 10] [--json out.json]
Latencies on shared machines move by tens of percent between runs; only the ratios within one run
are meaningful, which is why everything here is measured interleaved in a single process.
"""

import argparse
import json

from repvit.tools import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", help="also write the raw report here")
    args = parser.parse_args()

    runtimes = ["eager", "onnxruntime", "executorch"]
    report = run_bench("repvit_m0_9,timm:repvit_m0_9", runtimes, threads=args.threads, rounds=args.rounds,
                       iters=args.iters, warmup=20, peak=args.threads == 1, progress=False)
    if args.json:
        report.to_json(args.json)
    env = report.env
    print(f"machine: {env['cpu']} ({env['cpu_count']} cores), {args.threads} thread(s), batch 1, 224x224, "
          f"{args.rounds}x{args.iters} interleaved runs per model; versions {env['versions']}")
    print("\n1. ours / timm (median latency ratio, <= 1.00 means ours is not slower)")
    for runtime in runtimes:
        ours, theirs = report.row("repvit_m0_9", runtime), report.row("timm:repvit_m0_9", runtime)
        if ours["status"] != "ok" or theirs["status"] != "ok":
            print(f"   {runtime:12s} not measured: {ours['reason'] or theirs['reason']}")
            continue
        print(f"   {runtime:12s} {ours['median_ms']:7.2f} ms / {theirs['median_ms']:7.2f} ms = "
              f"{ours['median_ms'] / theirs['median_ms']:.3f}   (spread {ours['spread_pct']:.0f}% / {theirs['spread_pct']:.0f}%)")
    eager, xnn = report.row("repvit_m0_9", "eager"), report.row("repvit_m0_9", "executorch")
    if eager["status"] == xnn["status"] == "ok":
        print(f"\n2. ExecuTorch/XNNPACK speed-up over eager PyTorch (RepViT-M0.9): "
              f"{eager['median_ms']:.2f} / {xnn['median_ms']:.2f} ms = {eager['median_ms'] / xnn['median_ms']:.2f}x")
        ort = report.row("repvit_m0_9", "onnxruntime")
        if ort["status"] == "ok":
            print(f"   ONNX Runtime speed-up over eager: {eager['median_ms'] / ort['median_ms']:.2f}x")
        if "matmul_gflops_1thread" in env:
            gmacs = xnn["gmacs_per_s"]
            print(f"\n3. RepViT-M0.9 on XNNPACK: {xnn['gmacs']:.3f} GMACs in {xnn['median_ms']:.2f} ms = {gmacs:.0f} GMAC/s "
                  f"= {2 * gmacs:.0f} GFLOP/s")
            for lib, rate in env["matmul_gflops_1thread"].items():
                print(f"   vs single-thread fp32 1024^3 matmul, {lib:7s} {rate:6.0f} GFLOP/s: {200 * gmacs / rate:5.1f}%")
    print("\nraw:", json.dumps({r["model"] + "/" + r["runtime"]: round(r["median_ms"] or 0, 3) for r in report.rows}))


if __name__ == "__main__":
    main()
