"""``repvit sam predict`` and ``repvit sam auto``: RepViT-SAM on an image."""

from __future__ import annotations

import argparse

from ..sam import SAM_WEIGHTS, create_sam
from ..sam.export import export_sam_decoder, export_sam_encoder
from ..sam.predict import Prompt, auto_sam, parse_box, parse_point, predict_sam
from .common import add_device_argument

__all__ = ["add_commands"]

_EPILOG = """examples:
  repvit sam predict photo.jpg --point 420,310                 the object under a click
  repvit sam predict photo.jpg --point 420,310 --point 500,120,0 --multimask   a click, a background click
  repvit sam predict photo.jpg --box 100,80,640,500             the object in a box
  repvit sam auto photo.jpg --out masks/                        every object
  repvit sam export --format onnx executorch --out exports/     the fused encoder, parity-checked in each runtime
weights: a path, an https:// URL or repvit_sam (the release, downloaded once; needs pip install 'repvit[sam]')
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
    p = actions.add_parser("export", help="the fused image encoder (each runtime) and the prompt decoder (ONNX), "
                           "checked against PyTorch", epilog=_EPILOG)
    p.add_argument("--format", nargs="+", default=["onnx", "executorch"], help="the encoder's formats")
    p.add_argument("--decoder", action=argparse.BooleanOptionalAction, default=True,
                   help="also export the prompt decoder to ONNX (default: yes)")
    p.add_argument("--weights", default="repvit_sam", metavar="SRC",
                   help=f"checkpoint path, URL or {', '.join(SAM_WEIGHTS)} (default)")
    p.add_argument("--out", default="exports", metavar="DIR")
    p.add_argument("--img-size", type=int, default=1024, help="the encoder's square input (1024 as released)")
    p.set_defaults(func=cmd_sam_export)


def _common(p) -> None:
    p.add_argument("--weights", default="repvit_sam", metavar="SRC",
                   help=f"checkpoint path, URL or {', '.join(SAM_WEIGHTS)} (default)")
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
    sam = create_sam(args.weights, img_size=args.img_size)  # read once, for the encoder and the decoder
    results = export_sam_encoder(args.weights, args.format, args.out, args.img_size, sam=sam)
    for r in results:
        print(f"encoder {r.format}: {r.status}  {r.path or ''}  {r.parity}  {r.detail}")
    print(f"how to feed it: {args.out}/repvit_sam_encoder.json")
    decoder_ok = True
    if args.decoder:
        info = export_sam_decoder(args.weights, args.out, args.img_size, sam=sam)
        worst = min(c["mask_iou"] for c in info["checks"].values())
        print(f"decoder onnx: {info['status']}  {info['file']}  (max abs diff "
              f"{max(c['max_abs_diff'] for c in info['checks'].values()):.1e}, mask IoU >= {worst:.4f} on "
              f"{len(info['checks'])} prompts)")
        print(f"how to feed it: {args.out}/repvit_sam_decoder.json")
        decoder_ok = info["status"] == "ok"
    return 0 if all(r.ok for r in results) and decoder_ok else 1


def _report(result: dict) -> None:
    for mask in result["masks"][:20]:
        print(f"{mask['file']}: score {mask['score']:.3f}, area {mask['area']} px, box {mask['box_xyxy']}")
    if len(result["masks"]) > 20:
        print(f"... {len(result['masks']) - 20} more")
    print(f"{len(result['masks'])} mask(s); overlay {result['overlay']}; masks and RLE in {result['json']}")
