"""Object detection and instance segmentation: torchvision's Mask R-CNN (or Faster R-CNN,
RetinaNet) on a RepViT + FPN backbone, COCO-format data, COCO AP from pycocotools.

The paper's setup (MMDetection 2.28, Mask R-CNN R50-FPN config with a RepViT backbone): FPN with
256 channels on the four stage outputs plus a max-pooled fifth level; AdamW lr 2e-4, weight decay
0.05; 12 epochs ("1x"), learning rate x0.1 after epochs 8 and 11; linear warm-up over 500
iterations; images resized to 1333x800, horizontal flip; 8 GPUs x 2 images; backbone BatchNorm
statistics frozen.

Data layout (COCO's own): ``ROOT/annotations/instances_{train,val}2017.json`` and
``ROOT/{train,val}2017/<file_name>``; other paths with --train-ann/--train-images/--val-ann/--val-images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.transforms import functional as TF
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import DatasetError, image_files, load_image
from ..factory import create_model
from ..train import option
from ..train.process import all_gather_objects, sample_generator
from ..utils import resolve_device
from .loop import DenseRecipe, read_dense_checkpoint, restore_dense_model, train_dense

__all__ = ["DetectRecipe", "RepViTFPN", "CocoDataset", "DetectionTask", "build_detector", "train_detector",
           "load_detector", "predict_detections", "coco_evaluate"]

log = logging.getLogger(__name__)


@dataclass
class DetectRecipe(DenseRecipe):
    detector: str = option("mask_rcnn", "torchvision detector on the RepViT + FPN backbone", "model",
                           ("mask_rcnn", "faster_rcnn", "retinanet"))
    fpn_channels: int = option(256, "FPN width", "model", check=">0")
    epochs: int = option(12, "training epochs (12 = the 1x schedule)", "schedule", check=">0")
    lr_steps: tuple[float, float] = option((8, 11), "epochs after which the learning rate drops", "schedule")
    lr_gamma: float = option(0.1, "learning-rate factor at each drop", "schedule", check="0..1")
    warmup_iters: int = option(500, "linear warm-up iterations", "schedule", check=">=0")
    min_size: int = option(800, "shorter image side after resizing", "data", check=">0")
    max_size: int = option(1333, "longer image side at most", "data", check=">0")
    flip: float = option(0.5, "horizontal flip probability", "data", check="0..1")
    train_ann: str | None = option(None, "training annotations (default DATA/annotations/instances_train2017.json)", "data")
    train_images: str | None = option(None, "training images (default DATA/train2017)", "data")
    val_ann: str | None = option(None, "validation annotations (default DATA/annotations/instances_val2017.json)", "data")
    val_images: str | None = option(None, "validation images (default DATA/val2017)", "data")
    rpn_proposals: int = option(2000, "region proposals kept per image in training (half at test time)", "model",
                                check=">0")
    roi_samples: int = option(512, "proposals sampled per image for the box head's loss", "model", check=">0")
    score_thresh: float = option(0.05, "keep detections above this score", "model", check="0..1")
    detections_per_image: int = option(100, "at most this many detections per image", "model", check=">0")
    output: str = option("runs/detect", "folder for checkpoints, recipe.yaml and metrics.jsonl", "output")

    def paths(self) -> dict[str, Path]:
        root = Path(self.data) if self.data else Path(".")
        return {"train_ann": Path(self.train_ann or root / "annotations" / "instances_train2017.json"),
                "train_images": Path(self.train_images or root / "train2017"),
                "val_ann": Path(self.val_ann or root / "annotations" / "instances_val2017.json"),
                "val_images": Path(self.val_images or root / "val2017")}


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class RepViTFPN(nn.Module):
    """RepViT stage outputs (strides 4-32) -> torchvision FPN, as a torchvision detection backbone."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks=None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(recipe: DetectRecipe, num_classes: int) -> nn.Module:
    """``num_classes`` object classes (background is added)."""
    body = create_model(recipe.model, features_only=True, weights=recipe.weights)
    common = dict(min_size=recipe.min_size, max_size=recipe.max_size)
    if recipe.detector == "retinanet":
        backbone = RepViTFPN(body, recipe.fpn_channels, LastLevelP6P7(recipe.fpn_channels, recipe.fpn_channels))
        sizes = (16, 32, 64, 128, 256, 512)  # strides 4..128
        anchors = AnchorGenerator(tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes),
                                  ((0.5, 1.0, 2.0),) * len(sizes))
        return RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, score_thresh=recipe.score_thresh,
                         detections_per_img=recipe.detections_per_image, **common)
    backbone = RepViTFPN(body, recipe.fpn_channels, LastLevelMaxPool())
    kind = MaskRCNN if recipe.detector == "mask_rcnn" else FasterRCNN
    return kind(backbone, num_classes + 1, box_score_thresh=recipe.score_thresh,
                box_detections_per_img=recipe.detections_per_image, rpn_pre_nms_top_n_train=recipe.rpn_proposals,
                rpn_post_nms_top_n_train=recipe.rpn_proposals, rpn_pre_nms_top_n_test=recipe.rpn_proposals // 2,
                rpn_post_nms_top_n_test=recipe.rpn_proposals // 2, box_batch_size_per_image=recipe.roi_samples,
                **common)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _read_coco(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: no such annotation file (COCO format json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: expected a COCO json object with 'images', 'annotations' and 'categories' lists")
    return data


def _segmentation_problem(segmentation, image: dict) -> str | None:
    """Why a COCO segmentation cannot become a mask (None when it can)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty segmentation (Mask R-CNN needs one per object; use the faster_rcnn detector)"
        for polygon in segmentation:
            if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
                    or not all(isinstance(v, (int, float)) for v in polygon)):
                return "a polygon must be a flat list of at least 3 x, y pairs"
        return None
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if "counts" not in segmentation or size != [image.get("height"), image.get("width")]:
            return f"RLE needs 'counts' and size [height, width] = {[image.get('height'), image.get('width')]}"
        return None
    return "no segmentation (Mask R-CNN needs one per object; use the faster_rcnn detector)"


def _checked_box(ann_file: Path, ann: dict, xywh: tuple, image: dict) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, width, height]`` box as ``(x0, y0, x1, y1)`` clipped to its image; a box that is
    not finite, has a negative side or lies outside its image (by more than a pixel) is an error."""
    x, y, w, h = xywh
    where = f"{ann_file}: annotation {ann.get('id', '?')} (image {ann.get('image_id')}): bbox {ann['bbox']}"
    if not all(math.isfinite(v) for v in xywh):
        raise DatasetError(f"{where} is not finite (NaN or infinity); fix or remove the annotation")
    if w < 0 or h < 0:
        raise DatasetError(f"{where} has a negative width or height (COCO boxes are [x, y, width, height])")
    width, height = image.get("width"), image.get("height")
    if not width or not height:
        return x, y, x + w, y + h
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise DatasetError(f"{where} lies outside its {width}x{height} image (COCO boxes are [x, y, width, height] "
                           "in pixels)")
    return max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))


class CocoDataset(Dataset):
    """COCO-format instances, checked when opened: malformed json, annotations pointing at unknown
    images or categories, boxes that are not finite, negative or outside their image, and images
    missing on disk are one-line errors naming the file and the annotation. Boxes are clipped to
    their image (within a pixel); boxes under a pixel wide or high are dropped, with a count, as
    torchvision's references do."""

    def __init__(self, images_dir, ann_file, train: bool, masks: bool, flip: float = 0.5, seed: int = 0,
                 class_names: list[str] | None = None):
        self.images_dir, self.ann_file = Path(images_dir), Path(ann_file)
        data = _read_coco(self.ann_file)
        try:
            categories = sorted(data["categories"], key=lambda c: c["id"])
            self.cat_ids = [int(c["id"]) for c in categories]
            names = [str(c["name"]) for c in categories]
            images = {int(im["id"]): im for im in data["images"]}
            for im in images.values():
                im["file_name"]  # noqa: B018  (presence check)
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{self.ann_file}: malformed images/categories entry ({err!r} missing or invalid)") from None
        if class_names is not None and names != class_names:
            raise DatasetError(f"{self.ann_file}: categories {names} differ from the training set's {class_names}")
        self.class_names = names
        label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        per_image: dict[int, list] = {i: [] for i in images}
        degenerate = []
        for ann in data["annotations"]:
            try:
                image_id, cat = int(ann["image_id"]), int(ann["category_id"])
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as err:
                raise DatasetError(f"{self.ann_file}: malformed annotation {ann.get('id', '?')} ({err!r})") from None
            if image_id not in per_image:
                raise DatasetError(f"{self.ann_file}: annotation {ann.get('id')} refers to unknown image {image_id}")
            if cat not in label_of:
                raise DatasetError(f"{self.ann_file}: annotation {ann.get('id')} has category_id {cat}, not one of the "
                                   f"categories {self.cat_ids}")
            box = _checked_box(self.ann_file, ann, (x, y, w, h), images[image_id])
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not training targets (COCOeval still sees them)
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                degenerate.append(ann.get("id"))
                continue
            segmentation = ann.get("segmentation")
            if masks:
                problem = _segmentation_problem(segmentation, images[image_id])
                if problem:
                    raise DatasetError(f"{self.ann_file}: annotation {ann.get('id')} (image {image_id}): {problem}")
            per_image[image_id].append((label_of[cat], box, segmentation))
        missing = [im["file_name"] for im in images.values() if not (self.images_dir / im["file_name"]).is_file()]
        if missing:
            raise DatasetError(f"{self.images_dir / missing[0]}: image missing on disk ({len(missing)} of "
                               f"{len(images)} images in {self.ann_file.name} are missing)")
        if degenerate:
            log.warning("%s: dropped %d degenerate box(es) (under 1 px wide or high), e.g. annotation %s",
                        self.ann_file, len(degenerate), degenerate[0])
        ids = sorted(per_image)
        if train:  # images without objects teach nothing to these detectors (torchvision's references)
            ids = [i for i in ids if per_image[i]]
        if not ids:
            raise DatasetError(f"{self.ann_file}: no images with annotations")
        self.images, self.per_image, self.ids = images, per_image, ids
        self.train, self.masks, self.flip, self.seed, self.epoch = train, masks, flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        from pycocotools import mask as coco_mask

        image_id = self.ids[index]
        info = self.images[image_id]
        path = self.images_dir / info["file_name"]
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise DatasetError(f"{path}: not a readable image ({err})") from None
        w, h = image.size
        objects = self.per_image[image_id]
        boxes = torch.tensor([o[1] for o in objects], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": torch.tensor([o[0] for o in objects], dtype=torch.int64),
                  "image_id": image_id}
        if self.masks:
            masks = []
            for _, _, segmentation in objects:  # checked when the file was opened
                if isinstance(segmentation, list):  # polygons
                    rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, h, w))
                else:  # RLE, uncompressed (list counts) or compressed
                    rle = coco_mask.frPyObjects(segmentation, h, w) if isinstance(segmentation["counts"], list) \
                        else segmentation
                masks.append(torch.from_numpy(coco_mask.decode(rle)))
            target["masks"] = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        tensor = TF.to_tensor(image)  # 0..1; the detector normalises and resizes
        if self.train and float(torch.rand((), generator=sample_generator(self.seed, self.epoch, index))) < self.flip:
            tensor = tensor.flip(-1)
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return tensor, target


# ----------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------


def coco_evaluate(ann_file: Path, detections: list[dict], iou_types: tuple[str, ...]) -> dict:
    """COCO AP (%) with pycocotools; an empty detection list scores 0, a size range without any
    ground-truth object is None."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    metrics = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its whole summary
        gt = COCO(str(ann_file))
        for iou_type in iou_types:
            if iou_type == "segm":  # with a bbox, loadRes would size-bin masks by their box area
                results = [{k: v for k, v in d.items() if k != "bbox"} for d in detections if "segmentation" in d]
            else:
                results = [{k: v for k, v in d.items() if k != "segmentation"} for d in detections]
            if not results:  # pycocotools cannot load an empty result list: nothing found scores 0
                areas = [a["area"] for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)]
                ranges = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, float("inf"))}
                metrics.update({f"{iou_type}_{n}": (0.0 if areas else None) if n not in ranges else
                                (0.0 if any(ranges[n][0] <= a < ranges[n][1] for a in areas) else None) for n in names})
                continue
            evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            # -1: no ground truth in that size range (e.g. no large objects): not a score
            metrics.update({f"{iou_type}_{n}": None if v < 0 else 100 * float(v)
                            for n, v in zip(names, evaluator.stats[:6])})
    return metrics


class DetectionTask:
    name, key_metric = "detect", "bbox_AP"

    def __init__(self, recipe: DetectRecipe):
        self.recipe = recipe
        self.masks = recipe.detector == "mask_rcnn"

    def build_model(self, recipe):
        return build_detector(recipe, len(self.class_names))

    def datasets(self, recipe):
        paths = recipe.paths()
        train = CocoDataset(paths["train_images"], paths["train_ann"], True, self.masks, recipe.flip, recipe.seed)
        val = CocoDataset(paths["val_images"], paths["val_ann"], False, self.masks, class_names=train.class_names)
        self.class_names, self.val = train.class_names, val
        return train, val, train.class_names

    def collate(self, batch):
        return tuple(zip(*batch))

    def loss(self, model, batch, device):
        images, targets = batch
        images = [i.to(device) for i in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        return sum(losses.values()), {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self, model, loader, ctx, recipe):
        from pycocotools import mask as coco_mask

        model.eval()
        detections = []
        for images, targets in loader:
            outputs = model([i.to(ctx.device) for i in images])
            for out, target in zip(outputs, targets):
                boxes = out["boxes"].cpu()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for k in range(len(boxes)):
                    if int(out["labels"][k]) == 0:  # never a target: only RetinaNet can emit it
                        continue
                    det = {"image_id": target["image_id"], "category_id": self.val.cat_ids[int(out["labels"][k]) - 1],
                           "bbox": [round(float(v), 2) for v in boxes[k]], "score": float(out["scores"][k])}
                    if "masks" in out:
                        binary = (out["masks"][k, 0] > 0.5).cpu().numpy().astype(np.uint8)
                        rle = coco_mask.encode(np.asfortranarray(binary))
                        rle["counts"] = rle["counts"].decode("ascii")
                        det["segmentation"] = rle
                    detections.append(det)
        gathered = [d for part in all_gather_objects(detections, ctx) for d in part]
        metrics = coco_evaluate(self.val.ann_file, gathered, ("bbox", "segm") if self.masks else ("bbox",)) \
            if ctx.is_main else None
        return all_gather_objects(metrics, ctx)[0]  # rank 0's result, everywhere

    def total_iters(self, recipe, iters_per_epoch):
        return recipe.epochs * iters_per_epoch

    def lr_factor(self, recipe, it, total, iters_per_epoch):
        factor = recipe.lr_gamma ** sum(it >= step * iters_per_epoch for step in recipe.lr_steps)
        if it < recipe.warmup_iters:
            factor *= recipe.warmup_ratio + (1 - recipe.warmup_ratio) * it / recipe.warmup_iters
        return factor


def train_detector(recipe: DetectRecipe) -> dict:
    recipe = recipe.validate()
    return train_dense(DetectionTask(recipe), recipe)


# ----------------------------------------------------------------------------------------------
# Loading, evaluating and predicting with trained detectors
# ----------------------------------------------------------------------------------------------


def load_detector(checkpoint, deploy: bool = True):
    """(model, recipe, class names) from a ``repvit detect train`` checkpoint; reparameterized
    unless ``deploy=False``."""
    state = read_dense_checkpoint(checkpoint, "detect")
    recipe = DetectRecipe.load(None, **{**state["recipe"], "weights": None, "resume": None})
    model = build_detector(recipe, len(state["class_names"]))
    return restore_dense_model(model, state, deploy), recipe, state["class_names"]


def predict_detections(checkpoint, images, out_dir, device: str = "cpu", score_thresh: float = 0.5) -> list[Path]:
    """Boxes (and masks) drawn onto each image, saved as PNGs in ``out_dir``."""
    model, _, names = load_detector(checkpoint)
    device = resolve_device(device)
    model.to(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in image_files(images):
        image = TF.to_tensor(load_image(path))
        with torch.no_grad():
            out = model([image.to(device)])[0]
        keep = (out["scores"].cpu() >= score_thresh) & (out["labels"].cpu() > 0)
        canvas = (image * 255).to(torch.uint8)
        if "masks" in out and keep.any():
            canvas = draw_segmentation_masks(canvas, out["masks"].cpu()[keep, 0] > 0.5, alpha=0.45)
        labels = [f"{names[int(c) - 1]} {s:.2f}" for c, s in zip(out["labels"].cpu()[keep], out["scores"].cpu()[keep])]
        canvas = draw_bounding_boxes(canvas, out["boxes"].cpu()[keep], labels=labels, colors="yellow", width=2)
        target = out_dir / f"{Path(path).stem}_detections.png"
        TF.to_pil_image(canvas).save(target)
        written.append(target)
    return written
