"""``repvit export`` and ``repvit quantize-eval``."""

from __future__ import annotations

import json

from rich.table import Table

from ..export import export, format_quantize_eval, quantize_eval
from .common import add_parser, console

__all__ = ["add_commands"]


def add_commands(commands) -> None:
    p = add_parser(commands, "export", "export the deployed (reparameterized) model and check parity")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", nargs="+", default=["onnx", "executorch", "coreml"],
                   help="onnx, executorch, coreml, litert (tflite), ncnn, openvino (several allowed; "
                        "default onnx executorch coreml)")
    p.add_argument("--weights", default=None, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="exports", metavar="DIR", help="output folder (default exports/)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--image-input", action="store_true",
                   help="Core ML: take an RGB image (0..255) with the normalisation built in")
    p.add_argument("--coreml-precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--int8", action="store_true",
                   help="post-training int8 quantization (executorch: PT2E/XNNPACK, onnx: ORT static QDQ)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration images for --int8: an ImageFolder root (its train/ split) or 'digits'")
    p.add_argument("--calib-images", type=int, default=512, help="how many calibration images (default 512)")
    p.add_argument("--crop-pct", type=float, default=0.875,
                   help="--int8 calibration images: resize to img-size / crop-pct, then center-crop")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_export)

    p = add_parser(commands, "quantize-eval", "top-1 of fp32 vs int8 on a val set, per runtime")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--weights", required=True, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="ImageFolder root with train/ (calibration) and val/ (top-1), or 'digits'")
    p.add_argument("--formats", nargs="+", default=["executorch", "onnx"],
                   help="executorch, onnx (several allowed, or comma-separated; default both)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="resize to img-size / crop-pct, then center-crop")
    p.add_argument("--calib-images", type=int, default=512, help="calibration images from train/ (default 512)")
    p.add_argument("--val-images", type=int, default=None, help="evaluate on a fixed random subset of val/ (default all)")
    p.add_argument("--out", default=None, metavar="DIR", help="keep the fp32 and int8 artifacts here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize_eval)


def cmd_export(args) -> int:
    results = export(args.model, args.format, weights=args.weights, img_size=args.img_size, batch=args.batch,
                     out_dir=args.out, dynamic_batch=args.dynamic_batch, image_input=args.image_input,
                     coreml_precision=args.coreml_precision, int8=args.int8, calib=args.calib,
                     calib_images=args.calib_images, crop_pct=args.crop_pct)
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        table = Table(title=f"{args.model}: reparameterized, exported, reloaded and compared with PyTorch")
        for column in ("format", "status", "file", "size MB", "export s", "parity", "detail"):
            table.add_column(column, justify="right" if column in ("size MB", "export s") else "left")
        for r in results:
            table.add_row(r.format, r.status, r.path or "-", "-" if r.size_mb is None else f"{r.size_mb:.1f}",
                          "-" if r.export_seconds is None else f"{r.export_seconds:.1f}", r.parity, r.detail)
        console().print(table)
    return 0 if all(r.ok for r in results) else 1


def cmd_quantize_eval(args) -> int:
    report = quantize_eval(args.model, args.data, weights=args.weights, formats=args.formats,
                           img_size=args.img_size, crop_pct=args.crop_pct, calib_images=args.calib_images,
                           val_images=args.val_images, out_dir=args.out)
    print(json.dumps(report, indent=2) if args.json else format_quantize_eval(report))
    return 0
