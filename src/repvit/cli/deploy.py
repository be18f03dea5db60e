"""``repvit export`` (runtime artifacts, or a timm Hub folder with ``--format timm``), ``repvit push-to-hub``
and ``repvit quantize-eval``."""

from __future__ import annotations

import json

from rich.table import Table

from ..data import EVAL_CROP_PCT
from ..export import export, format_quantize_eval, quantize_eval
from ..train.pretrained import push_to_hub, save_pretrained
from ..utils import UserError, param, split_list
from .common import add_parser, console

__all__ = ["add_commands"]


def add_commands(commands) -> None:
    p = add_parser(commands, "export", "export the deployed (reparameterized) model and check parity")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", nargs="+", default=["onnx", "executorch", "coreml"],
                   help="onnx, executorch, coreml, litert (tflite), ncnn, openvino (several allowed; "
                        "default onnx executorch coreml); or timm alone: a Hugging Face Hub folder that plain "
                        "timm loads (training structure; see repvit push-to-hub)")
    p.add_argument("--weights", default=None, metavar="SRC",
                   help="checkpoint path, URL, registered name or hf-hub:ORG/REPO[:FILE]")
    p.add_argument("--img-size", type=int, default=None,
                   help="default 224; --format timm: the run's recipe, else 224")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default exports/; --format timm: exports/MODEL-timm/)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--image-input", action="store_true",
                   help="Core ML: take an RGB image (0..255) with the normalisation built in")
    p.add_argument("--coreml-precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--int8", action="store_true",
                   help="post-training int8 quantization (executorch: PT2E/XNNPACK, onnx: ORT static QDQ)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration images for --int8: an ImageFolder root (its train/ split) or 'digits'")
    p.add_argument("--calib-images", type=int, default=512, help="how many calibration images (default 512)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="--int8 calibration images (--format timm: the evaluation crop in its config): resize to "
                        "img-size / crop-pct, then center-crop (default 0.875; timm: the run's recipe, else 0.875)")
    p.add_argument("--latency", action="append", default=None, metavar="SETTING=MS",
                   help="--format timm: a measured latency for the model card (repeatable), e.g. "
                        "\"Pixel 8, ExecuTorch XNNPACK=1.9\"")
    p.add_argument("--metric", action="append", default=None, metavar="NAME=VALUE",
                   help="--format timm: a metric for the model card (repeatable; a run's checkpoint brings its own)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_export, runtime_defaults={name: p.get_default(name) for name in _RUNTIME_OPTIONS})

    p = add_parser(commands, "push-to-hub", "upload a repvit export --format timm folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="DIR", help="the folder repvit export --format timm wrote")
    p.add_argument("repo", metavar="REPO", help="the Hub repository, ORG/NAME (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, metavar="BRANCH", help="upload to this branch (created when missing)")
    p.add_argument("--commit-message", default=None, metavar="TEXT")
    p.set_defaults(func=cmd_push_to_hub)

    p = add_parser(commands, "quantize-eval", "top-1 of fp32 vs int8 on a val set, per runtime")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--weights", required=True, metavar="SRC",
                   help="checkpoint path, URL, registered name or hf-hub:ORG/REPO[:FILE]")
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
    if "timm" in [f.lower() for f in split_list(args.format)]:
        return _export_timm(args)
    for option in ("latency", "metric"):
        if getattr(args, option) is not None:
            raise UserError(f"{param(option)} applies to --format timm (the model card)")
    results = export(args.model, args.format, weights=args.weights, img_size=args.img_size or 224, batch=args.batch,
                     out_dir=args.out or "exports", dynamic_batch=args.dynamic_batch, image_input=args.image_input,
                     coreml_precision=args.coreml_precision, int8=args.int8, calib=args.calib,
                     calib_images=args.calib_images,
                     crop_pct=EVAL_CROP_PCT if args.crop_pct is None else args.crop_pct)
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


#: Runtime-export options: set with --format timm, they would be silently ignored.
_RUNTIME_OPTIONS = ("batch", "dynamic_batch", "image_input", "coreml_precision", "int8", "calib", "calib_images")


def _export_timm(args) -> int:
    others = [f for f in split_list(args.format) if f.lower() != "timm"]
    if others:
        raise UserError(f"{param('format')} timm writes a Hub folder and runs alone; export {', '.join(others)} "
                        "with another repvit export")
    changed = [name for name, default in args.runtime_defaults.items() if getattr(args, name) != default]
    if changed:
        raise UserError(f"{param(changed[0])} applies to runtime formats, not to {param('format')} timm")
    out = save_pretrained(args.model, args.out or f"exports/{args.model}-timm", weights=args.weights,
                          img_size=args.img_size, crop_pct=args.crop_pct,
                          latency=_pairs(args.latency, "latency", "SETTING=MS"),
                          metrics=_pairs(args.metric, "metric", "NAME=VALUE"))
    if args.json:
        print(json.dumps({"format": "timm", "status": "ok", "path": str(out)}, indent=2))
    else:
        console().print(f"wrote {out}: reloaded with timm, same logits. Load it with "
                        f"timm.create_model(\"local-dir:{out}\", pretrained=True); upload it with "
                        f"repvit push-to-hub {out} ORG/NAME", soft_wrap=True, markup=False, highlight=False)
    return 0


def _pairs(items: list[str] | None, option: str, form: str) -> dict | None:
    """``["KEY=NUMBER", ...]`` as a dict (the last ``=`` splits: a key may contain one)."""
    if items is None:
        return None
    pairs = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key.strip() or number is None:
            raise UserError(f"{param(option)} {item!r}: expected {form}, with a number after the =")
        pairs[key.strip()] = number
    return pairs


def cmd_push_to_hub(args) -> int:
    url = push_to_hub(args.folder, args.repo, private=args.private, revision=args.revision,
                      commit_message=args.commit_message)
    print(url)
    return 0


def cmd_quantize_eval(args) -> int:
    report = quantize_eval(args.model, args.data, weights=args.weights, formats=args.formats,
                           img_size=args.img_size, crop_pct=args.crop_pct, calib_images=args.calib_images,
                           val_images=args.val_images, out_dir=args.out)
    print(json.dumps(report, indent=2) if args.json else format_quantize_eval(report))
    return 0
