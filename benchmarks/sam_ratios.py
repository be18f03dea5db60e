"""RepViT-SAM's performance targets, measured as ratios within one run per thread count.

Runs ``repvit sam bench`` once per thread count (each in a fresh process: ExecuTorch's threadpool is
sized once per process), then ``repvit sam export --int8``'s check of the int8 encoder's masks, and
prints every target of the RepViT-SAM issue with its measured ratio:

- fused / unfused encoder: >= 1.3x faster in eager PyTorch, never slower on any runtime;
- fused encoder on ExecuTorch/XNNPACK >= 5x faster than SAM ViT-B's at the same thread count;
- int8 encoder >= 2x faster than fp32 on XNNPACK, mask IoU against fp32 >= 0.9 on generated images;
- decoder per prompt <= 5 % of the encoder's time on every runtime.

Usage:  .venv/bin/python benchmarks/sam_ratios.py [--threads 1 2] [--img-size 1024] [--out benchmarks/results]
Writes sam_bench_<T>t.json per thread count, sam_bench.md (the README's table) and sam_bench.png there.
All models have random weights (latency does not depend on them); the int8 mask IoU therefore
measures quantization error on a random network, not on the released weights (pass --weights
repvit_sam to measure those where they can be downloaded).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from repvit.sam.export import export_sam_encoder_int8
from repvit.tools import BenchReport
from repvit.tools.plots import plot_sam_latency
from repvit.tools.sam_bench import sam_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--runtimes", default="eager,onnxruntime,executorch")
    parser.add_argument("--models", default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weights", default=None, help="RepViT-SAM weights for the int8 mask check (default: random)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--reuse", action="store_true", help="use the JSON files already in --out (no new timing)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    reports = []
    for threads in args.threads:
        path = out / f"sam_bench_{threads}t.json"
        if not (args.reuse and path.is_file()):
            subprocess.run([sys.executable, "-m", "repvit", "sam", "bench", "--threads", str(threads), "--img-size",
                            str(args.img_size), "--runtimes", args.runtimes, "--models", args.models, "--rounds",
                            str(args.rounds), "--json", str(path), "--quiet"] + (["--int8"] if threads == 1 else []),
                           check=True)
        reports.append(BenchReport.from_json(path))
    (out / "sam_bench.md").write_text(sam_markdown(reports))
    plot_sam_latency(reports, out / "sam_bench.png")

    int8_check = out / "sam_int8_check.json"
    if not (args.reuse and int8_check.is_file()):
        with tempfile.TemporaryDirectory() as tmp:  # the int8 program itself is not a result to keep
            check = export_sam_encoder_int8(args.weights, tmp, args.img_size)
        check.pop("path")
        int8_check.write_text(json.dumps(check, indent=2))
    check = json.loads(int8_check.read_text())

    env = reports[0].env
    print(f"machine: {env['cpu']} ({env['cpu_count']} cores); input {args.img_size} px; random weights; "
          f"versions {env['versions']}")
    verdicts = []

    def target(name: str, value: float | None, ok: bool | None, text: str) -> None:
        verdict = "n/a" if value is None else ("met" if ok else "NOT met")
        verdicts.append(verdict)
        print(f"  [{verdict:7s}] {name}: {text}")

    for report in reports:
        ratios = report.env["ratios"]
        print(f"\n{report.env['threads']} thread(s):")
        fused = ratios["fused_speedup"]
        target("fused/unfused eager >= 1.3x", fused.get("eager"), fused.get("eager", 0) >= 1.3,
               f"{fused.get('eager', float('nan')):.2f}x")
        target("fused never slower on any runtime", fused or None, all(x >= 1.0 for x in fused.values()),
               ", ".join(f"{rt} {x:.2f}x" for rt, x in fused.items()))
        vit_b = ratios["speedup_over"].get("sam_vit_b", {}).get("executorch")
        target("ExecuTorch: >= 5x faster than SAM ViT-B", vit_b, (vit_b or 0) >= 5, f"{vit_b or float('nan'):.2f}x")
        for peer, by_runtime in ratios["speedup_over"].items():
            print(f"      {peer} / RepViT-SAM latency: " + ", ".join(f"{rt} {x:.2f}" for rt, x in by_runtime.items()))
        int8 = ratios["int8_speedup"].get("executorch")
        if int8 is not None:
            target("int8 >= 2x faster than fp32 on XNNPACK", int8, int8 >= 2, f"{int8:.2f}x")
        shares = ratios["decoder_share_pct"]
        target("decoder per prompt <= 5% of the encoder", shares or None, all(x <= 5 for x in shares.values()),
               ", ".join(f"{rt} {x:.1f}%" for rt, x in shares.items()))
    print()
    target("int8 masks: IoU against fp32 >= 0.9", check["mask_iou_mean"], check["mask_iou_mean"] >= 0.9,
           f"mean {check['mask_iou_mean']:.3f} (min {check['mask_iou_min']:.3f}) over {check['prompts']} prompts on "
           f"{check['images']} generated images; embedding relative error {check['embedding_rel_error']:.3f}")
    check_ms = reports[0].env.get("mobilesam_check")
    if check_ms:
        print(f"MobileSAM from timm's TinyViT: {check_ms['params_m_with_unused_head']}M params (with the unused "
              f"ImageNet head), {check_ms['gmacs']} GMACs; published 6.07M / 38.8: "
              f"{'reproduced' if check_ms['reproduced'] else 'DIFFERS'}")
    print(f"\ntable: {out / 'sam_bench.md'}; plot: {out / 'sam_bench.png'}; "
          f"{verdicts.count('met')} met, {verdicts.count('NOT met')} not met")


if __name__ == "__main__":
    main()
