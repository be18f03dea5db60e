"""``repvit sam predict`` and ``repvit sam auto``: RepViT-SAM on an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ..export import check_formats
from ..sam import SAM_WEIGHTS, create_sam
from ..sam.distill import SamDistillRecipe, distill_sam
from ..sam.export import DECODER_FORMATS, check_slots, export_sam_decoder, export_sam_encoder, export_sam_encoder_int8
from ..sam.predict import Prompt, auto_sam, parse_box, parse_point, predict_sam
from ..tools import BenchReport
from ..tools.plots import plot_sam_latency, require_plots
from ..tools.report import fmt
from ..tools.sam_app import MAX_PIXELS, RUNTIMES, launch_app
from ..tools.sam_bench import SAM_MODELS, run_sam_bench, sam_markdown, sam_ratios
from ..utils import UserError, param
from .common import add_device_argument, add_recipe_arguments, console, is_main_process, recipe_from_args

__all__ = ["add_commands"]

_EPILOG = """examples:
  repvit sam predict photo.jpg --point 420,310                 the object under a click
  repvit sam predict photo.jpg --point 420,310 --point 500,120,0 --multimask   a click, a background click
  repvit sam predict photo.jpg --box 100,80,640,500             the object in a box
  repvit sam auto photo.jpg --out masks/                        every object
  repvit sam bench --threads 1 --json sam1.json                encoder and decoder latency beside the peers
  repvit sam export --format onnx executorch litert coreml --int8 --out exports/
                                          the fused encoder and the prompt decoder, parity-checked in each runtime
  repvit sam distill --images sa1b/ --teacher vit_h --init repvit_m2_3.dist_450e    distil your own encoder
  torchrun --nproc_per_node 8 -m repvit sam distill --images sa1b/ --teacher vit_h   ... on 8 GPUs
weights: a path, an https:// URL, hf-hub:ORG/REPO:FILE (a Space: hf-hub:spaces/ORG/NAME:FILE) or repvit_sam (the release, downloaded once; needs pip install 'repvit-toolkit[sam]')
"""


def add_commands(commands) -> None:
    actions = commands.add_parser("sam", help="RepViT-SAM: segment anything with a RepViT encoder",
                                  epilog=_EPILOG).add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("predict", help="masks for point and box prompts: PNGs, an overlay and JSON (RLE)",
                           epilog=_EPILOG)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="a point prompt in image pixels; LABEL 1 foreground (default) or 0 background; repeatable")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1", help="a box prompt (top-left, bottom-right corners)")
    p.add_argument("--multimask", action="store_true", help="three candidate masks, best first (default: one)")
    _common(p)
    p.set_defaults(func=cmd_sam_predict)
    p = actions.add_parser("auto", help="every object in the image (SAM's automatic mask generator)", epilog=_EPILOG)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--points-per-side", type=int, default=32, help="the grid of point prompts (default: 32 x 32)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="keep masks whose predicted IoU is above this")
    p.add_argument("--stability-thresh", type=float, default=0.95,
                   help="keep masks whose stability score is above this")
    _common(p)
    p.set_defaults(func=cmd_sam_auto)
    p = actions.add_parser("export", help="the fused image encoder and the prompt decoder in each runtime, "
                           "checked against PyTorch", epilog=_EPILOG)
    p.add_argument("--format", nargs="+", default=["onnx", "executorch"],
                   help="onnx, executorch, coreml, litert (encoder and decoder), ncnn, openvino (encoder only)")
    p.add_argument("--decoder", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also export the prompt decoder (formats {', '.join(DECODER_FORMATS)}; default: yes)")
    p.add_argument("--decoder-points", type=int, default=5, metavar="N",
                   help="point slots of the fixed-shape LiteRT decoder, at least 5 (default 5); unused ones are "
                        "padded with label -1, which changes its masks slightly: see repvit_sam_decoder.json")
    p.add_argument("--int8", action="store_true",
                   help="also the int8 encoder for ExecuTorch/XNNPACK, with its mask IoU against fp32")
    p.add_argument("--calib", nargs="+", default=None, metavar="IMAGES",
                   help="with --int8: calibration images (files or folders; default: generated shape images)")
    p.add_argument("--calib-images", type=int, default=None, help="with --int8: how many calibration images (default 8)")
    p.add_argument("--weights", default="repvit_sam", metavar="SRC",
                   help=f"checkpoint path, URL, hf-hub:ORG/REPO:FILE or {', '.join(SAM_WEIGHTS)} (default)")
    p.add_argument("--out", default="exports", metavar="DIR")
    p.add_argument("--img-size", type=int, default=1024, help="the encoder's square input (1024 as released)")
    p.set_defaults(func=cmd_sam_export)
    p = actions.add_parser("bench", help="encoder and per-prompt decoder latency beside SAM ViT-B, MobileSAM, "
                           "EfficientViT-SAM and SAM 2.1 (random weights)", epilog=_EPILOG)
    p.add_argument("--models", default="all", help=f"comma-separated: {', '.join(SAM_MODELS)} (default: all)")
    p.add_argument("--runtimes", default="eager,onnxruntime,executorch",
                   help="comma-separated: eager, onnxruntime, executorch, litert, ncnn, openvino (default "
                        "eager,onnxruntime,executorch)")
    p.add_argument("--int8", action="store_true", help="add RepViT-SAM's int8 encoder (ExecuTorch and ONNX Runtime)")
    p.add_argument("--decoder", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the prompt decoder per prompt (default: yes)")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1; ExecuTorch's "
                   "threadpool is set once per process, so run each thread count as its own command)")
    p.add_argument("--img-size", type=int, default=1024, help="input of the 1024-px encoders (smaller: a quick check)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all encoders (then over the "
                   "decoder's runtimes, 20 prompts each per round)")
    p.add_argument("--iters", type=int, default=1, help="timed runs per model per round")
    p.add_argument("--json", metavar="PATH", help="write the environment, every row and the ratios as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table (add --also for more thread counts)")
    p.add_argument("--plot", metavar="PNG", help="bar chart of the latencies (add --also for more thread counts)")
    p.add_argument("--also", nargs="+", default=[], metavar="JSON",
                   help="earlier --json results (e.g. another thread count) to put beside this one in the table/plot")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sam_bench)
    _add_distill(actions)
    _add_app(actions)


def _add_distill(actions) -> None:
    p = actions.add_parser("distill", help="distil RepViT-SAM's encoder from a SAM ViT encoder (MobileSAM's method; "
                           "torchrun for several GPUs)", epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(p, SamDistillRecipe, "recipe file (YAML)")
    aliases = p.add_argument_group("short names")
    aliases.add_argument("--images", dest="data", default=argparse.SUPPRESS, metavar="DIR", help="same as --data")
    aliases.add_argument("--init", dest="weights", default=argparse.SUPPRESS, metavar="SRC", help="same as --weights")
    p.set_defaults(func=cmd_sam_distill)


def cmd_sam_distill(args) -> int:
    result = distill_sam(recipe_from_args(args, SamDistillRecipe, "sam-distill"))
    if is_main_process():
        best = result["best"]
        print(f"best teacher agreement {best.get('teacher_mIoU', 0):.2f} mIoU (points {best.get('point_mIoU', 0):.2f}, "
              f"boxes {best.get('box_mIoU', 0):.2f}), embedding MSE {best.get('embedding_mse', float('nan')):.4g} at "
              f"iteration {best.get('iter', 0)}")
        products = result["products"]
        if products:
            print(f"RepViT-SAM: {products['official']} (official layout), {products['fused']} (fused); "
                  f"run folder {result['output']}")
        else:
            print(f"stopped at iteration {result['iter']} of {result['total']}: continue with `repvit sam distill "
                  f"--resume {result['output']}/checkpoint-last.pth`")
    return 0


def _common(p) -> None:
    p.add_argument("--weights", default="repvit_sam", metavar="SRC",
                   help=f"checkpoint path, URL, hf-hub:ORG/REPO:FILE or {', '.join(SAM_WEIGHTS)} (default)")
    p.add_argument("--out", default="runs/sam", metavar="DIR")
    p.add_argument("--img-size", type=int, default=1024, help="the encoder's square input (1024 as released)")
    add_device_argument(p)


def cmd_sam_predict(args) -> int:
    points = [parse_point(text) for text in args.point]
    prompt = Prompt([(x, y) for x, y, _ in points], [label for _, _, label in points],
                    parse_box(args.box) if args.box else None)
    result = predict_sam(args.image, prompt, args.out, args.weights, args.multimask, args.device, args.img_size)
    _report(result)
    return 0


def cmd_sam_auto(args) -> int:
    result = auto_sam(args.image, args.out, args.weights, args.device, args.img_size, args.points_per_side,
                      args.pred_iou_thresh, args.stability_thresh)
    _report(result)
    return 0


def cmd_sam_export(args) -> int:
    formats = check_formats(args.format)
    if args.decoder:
        check_slots(args.decoder_points, formats)  # before any export work
    if (args.calib or args.calib_images is not None) and not args.int8:
        raise UserError(f"{param('calib')} and {param('calib_images')} calibrate the int8 encoder: add {param('int8')}")
    sam = create_sam(args.weights, img_size=args.img_size)  # read once, for the encoder and the decoder
    results = export_sam_encoder(args.weights, formats, args.out, args.img_size, sam=sam)
    for r in results:
        print(f"encoder {r.format}: {r.status}  {r.path or ''}  {r.parity}  {r.detail}")
    print(f"how to feed it: {args.out}/repvit_sam_encoder.json")
    ok = all(r.ok for r in results)
    if args.decoder:
        info = export_sam_decoder(args.weights, args.out, args.img_size, sam=sam, formats=formats,
                                  slots=args.decoder_points)
        for fmt, entry in info["files"].items():
            print(f"decoder {fmt}: {entry['status']}  {entry['path'] or ''}  {entry['parity']}  {entry['detail']}")
            ok &= entry["status"] in ("ok", "skipped")
        print(f"how to feed it: {args.out}/repvit_sam_decoder.json")
    if args.int8:
        count = {} if args.calib_images is None else {"calib_images": args.calib_images}
        check = export_sam_encoder_int8(args.weights, args.out, args.img_size, sam=sam, calib=args.calib, **count)
        print(f"encoder executorch int8: {check['path']}  {check['detail']}; against fp32 on {check['images']} "
              f"generated images: mask IoU {check['mask_iou_mean']:.3f} (min {check['mask_iou_min']:.3f}) over "
              f"{check['prompts']} prompts, embedding relative error {check['embedding_rel_error']:.3f}")
    return 0 if ok else 1



def _report(result: dict) -> None:
    for mask in result["masks"][:20]:
        print(f"{mask['file']}: score {mask['score']:.3f}, area {mask['area']} px, box {mask['box_xyxy']}")
    if len(result["masks"]) > 20:
        print(f"... {len(result['masks']) - 20} more")
    print(f"{len(result['masks'])} mask(s); overlay {result['overlay']}; masks and RLE in {result['json']}")


def cmd_sam_bench(args) -> int:
    if args.plot:
        require_plots()
    report = run_sam_bench(args.models, args.runtimes, threads=args.threads, img_size=args.img_size,
                           warmup=args.warmup, rounds=args.rounds, iters=args.iters, int8=args.int8,
                           decoder=args.decoder, progress=not args.quiet)
    ratios = sam_ratios(report)
    report.env["ratios"] = ratios
    if args.json:
        report.to_json(args.json)
    env = report.env
    table = Table(title=f"RepViT-SAM and SAM encoders: {env['cpu']} ({env['cpu_count']} cores), batch 1, "
                        f"{env['threads']} thread(s), random weights; paper numbers are Core ML on Apple devices")
    for column in ("model", "runtime", "input px", "median ms", "p90 ms", "params M", "GMACs",
                   "paper iPhone 12 ms", "paper M1 Pro ms", "parity", "status"):
        table.add_column(column, justify="left" if column in ("model", "runtime", "status") else "right")
    for r in report.rows:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        parity = r.get("parity_rel_diff") if r.get("parity_rel_diff") is not None else r.get("parity_max_abs_diff")
        table.add_row(r["model"], r["runtime"], str(r["img_size"]), fmt(r["median_ms"], ".1f"), fmt(r["p90_ms"], ".1f"),
                      fmt(r["params_m"]), fmt(r["gmacs"], ".2f"), fmt(r.get("published_iphone12_ms"), ".1f"),
                      fmt(r.get("published_m1pro_ms"), ".1f"), fmt(parity, ".0e"), status)
    console().print(table)
    for runtime, x in ratios["fused_speedup"].items():
        print(f"fused encoder vs unfused on {runtime}: {x:.2f}x as fast")
    for peer, by_runtime in ratios["speedup_over"].items():
        print(f"{peer} / RepViT-SAM latency (> 1: ours is faster): "
              + ", ".join(f"{x:.2f} on {rt}" for rt, x in by_runtime.items()))
    for runtime, x in ratios["int8_speedup"].items():
        print(f"int8 encoder vs fp32 on {runtime}: {x:.2f}x as fast")
    for runtime, pct in ratios["decoder_share_pct"].items():
        print(f"decoder per prompt on {runtime}: {pct:.1f}% of the encoder's time")
    if "mobilesam_check" in env:
        check = env["mobilesam_check"]
        print(f"MobileSAM from timm's TinyViT: {check['params_m_with_unused_head']}M params with the unused head, "
              f"{check['gmacs']} GMACs (published 6.07M, 38.8): {'reproduced' if check['reproduced'] else 'DIFFERS'}")
    reports = [report] + [BenchReport.from_json(path) for path in args.also]
    if args.markdown:
        Path(args.markdown).write_text(sam_markdown(reports))
    if args.plot:
        print(f"plot: {plot_sam_latency(reports, args.plot)}")
    return 0


_APP_EPILOG = """examples:
  repvit sam app                                       http://127.0.0.1:7860, eager PyTorch, the released weights
  repvit sam app --runtime onnxruntime --export-dir sam_onnx/    exported once, reused on the next launch
  repvit sam app --weights my_sam.safetensors --port 8080
needs pip install 'repvit-toolkit[app]'; the page is served to this machine only unless --host says otherwise
"""


def _add_app(actions) -> None:
    p = actions.add_parser("app", help="click-to-segment in the browser (Gradio): points, boxes, segment everything, "
                           "mask downloads", epilog=_APP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="repvit_sam", metavar="SRC",
                   help=f"checkpoint path, URL, hf-hub:ORG/REPO:FILE or {', '.join(SAM_WEIGHTS)} (default)")
    p.add_argument("--runtime", default="eager", choices=list(RUNTIMES),
                   help="where the encoder and decoder run (default eager: PyTorch; the others are exported first)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: the whole network)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--img-size", type=int, default=1024, help="the encoder's square input (1024 as released)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse larger images (default {MAX_PIXELS / 1e6:g} megapixels)")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="with --runtime onnxruntime or executorch: where the models are exported, and reused by the "
                        "next launch with the same weights (default: a temporary folder)")
    p.add_argument("--points-per-side", type=int, default=16,
                   help="segment everything: the grid of point prompts (default 16 x 16)")
    p.set_defaults(func=cmd_sam_app)


def cmd_sam_app(args) -> int:
    launch_app(args.weights, args.runtime, host=args.host, port=args.port, img_size=args.img_size,
               max_pixels=args.max_pixels, export_dir=args.export_dir, points_per_side=args.points_per_side)
    return 0
