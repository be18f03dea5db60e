"""int8 vs fp32, measured side by side in one run (issue: edge deployment beyond fp32).

1. Latency: RepViT-M0.9 (deployed, 224x224, batch 1) in fp32 and int8 on ExecuTorch/XNNPACK and
   ONNX Runtime, interleaved in one process. Target: ExecuTorch int8 >= 2.0x faster than fp32 at
   1 thread.
2. Accuracy: the digits quickstart model (RepViT-M0.9 trained from scratch with the ``digits``
   recipe, or ``--weights``), calibrated on 512 train images, top-1 of fp32 and int8 on the 359
   held-out val images in each runtime. Target: <= 1.0 point top-1 loss.
3. Quantization-aware fine-tuning of the same model (``repvit train --qat``, 2 epochs, lr 1e-4):
   top-1 of its int8 ExecuTorch program, beside post-training quantization's.

Usage:  .venv/bin/python benchmarks/int8_ratios.py [--threads 1] [--weights CKPT] [--json out.json]
Latency is measured first: ExecuTorch's threadpool is fixed once a program is loaded in a process.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from repvit.data import make_digits_image_folder
from repvit.export import format_quantize_eval, quantize_eval
from repvit.tools import run_bench
from repvit.train import load_recipe, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="repvit_m0_9")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--weights", help="a digits checkpoint of --model (default: train one, ~1 min on 2 cores)")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()

    # 1. latency, calibrated on real (digits) images upscaled to 224
    report = run_bench(args.model, ["executorch", "onnxruntime"], int8=True, calib="digits", calib_images=64,
                       threads=args.threads, rounds=args.rounds, iters=args.iters, warmup=20, progress=False)
    env = report.env
    print(f"machine: {env['cpu']} ({env['cpu_count']} cores), {args.threads} thread(s), batch 1, 224x224, "
          f"{args.rounds}x{args.iters} interleaved runs per runtime; versions {env['versions']}")
    print(f"\n1. latency of {args.model}, fp32 / int8 (int8 calibration: {env['int8_calibration']})")
    speedups = {}
    for runtime in ("executorch", "onnxruntime"):
        fp32, int8 = report.row(args.model, runtime), report.row(args.model, f"{runtime}_int8")
        if fp32["status"] != "ok" or int8["status"] != "ok":
            print(f"   {runtime:12s} not measured: {fp32['reason'] or int8['reason']}")
            continue
        speedups[runtime] = fp32["median_ms"] / int8["median_ms"]
        print(f"   {runtime:12s} {fp32['median_ms']:7.2f} ms / {int8['median_ms']:7.2f} ms = {speedups[runtime]:.2f}x "
              f"(spread {fp32['spread_pct']:.0f}% / {int8['spread_pct']:.0f}%)")
    if "executorch" in speedups:
        verdict = "meets" if speedups["executorch"] >= 2.0 else "MISSES"
        print(f"   target ExecuTorch int8 >= 2.0x fp32: {verdict}")

    # 2. accuracy on held-out digits
    with tempfile.TemporaryDirectory() as tmp:
        data = make_digits_image_folder(Path(tempfile.gettempdir()) / "repvit-digits")
        weights, train_seconds = args.weights, None
        if weights is None:
            start = time.perf_counter()
            recipe = load_recipe("digits", model=args.model, data=str(data), output=tmp)
            weights = train(recipe).deployed_best
            train_seconds = time.perf_counter() - start
        accuracy = quantize_eval(args.model, data, weights=weights, img_size=32, crop_pct=1.0,
                                 calib_images=args.calib_images)
        qat_recipe = load_recipe("digits", model=args.model, data=str(data), output=str(Path(tmp) / "qat"),
                                 finetune=str(weights), qat=True, epochs=2, warmup_epochs=0, lr=1e-4)
        start = time.perf_counter()
        train(qat_recipe)
        qat = {**json.loads((Path(tmp) / "qat" / "int8.json").read_text()), "seconds": time.perf_counter() - start}
    print(f"\n2. top-1 on the digits val split (model trained "
          f"{'here in %.0f s' % train_seconds if train_seconds else 'from ' + str(args.weights)})")
    print(format_quantize_eval(accuracy))
    rows = {(r["runtime"], r["precision"]): r for r in accuracy["rows"] if r["status"] == "ok"}
    for runtime in ("executorch", "onnxruntime"):
        if (runtime, "fp32") in rows and (runtime, "int8") in rows:
            loss = rows[(runtime, "fp32")]["top1"] - rows[(runtime, "int8")]["top1"]
            print(f"   {runtime:12s} int8 top-1 loss {loss:+.2f} points: {'meets' if loss <= 1.0 else 'MISSES'} <= 1.0")
    fp32 = rows.get(("executorch", "fp32"))
    ptq = rows.get(("executorch", "int8"))
    print(f"\n3. ExecuTorch int8 top-1 on the digits val split: fp32 {fp32['top1']:.2f}, post-training "
          f"quantization {ptq['top1']:.2f}, quantization-aware fine-tuning (2 epochs, {qat['seconds']:.0f} s) "
          f"{qat['top1']:.2f}" if fp32 and ptq else "\n3. (ExecuTorch unavailable)")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": {"env": env, "rows": report.rows}, "speedups": speedups,
                                               "accuracy": accuracy, "qat": qat}, indent=2))


if __name__ == "__main__":
    main()
