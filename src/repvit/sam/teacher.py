"""Distillation teachers (SAM's ViT image encoders) and the on-disk cache of their embeddings.

RepViT-SAM is distilled as MobileSAM was: the student encoder learns to reproduce the image
embedding of a SAM ViT encoder; the prompt encoder and mask decoder are the teacher's, unchanged.
The teacher is by far the slowest part (ViT-H: ~3 TFLOPs per 1024 px image), and its output does
not change between epochs or runs, so every image's embedding is computed once and kept:

- in shards of ``shard_size`` images (fp16, ``torch.save``; read back memory-mapped, a row at a
  time), written atomically, so a killed build keeps what it finished and the next one (or a
  resumed run) computes only the missing shards;
- in a folder keyed by the teacher (kind and a SHA-256 of its weights) and the input size, and
  shards named by their images (name, size, modification time; images in name order): later runs
  on the same images reuse them; an edited image recomputes its shard, an added one its shard and
  the shards after it (an image whose name sorts last: only its own);
- under torchrun, the main process plans (images, missing shards), each process computes its share
  and all wait on the files (not on a collective, whose timeout a long build would exceed).

Images are prepared exactly as SAM's predictor does (:func:`sam_input`: longest side resized to
the input size, normalised, zero-padded to a square), for the teacher and the student alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data import image_files, load_image
from ..utils import UserError, param
from ..weights import CheckpointError, atomic_save, atomic_write, load_torch_file, resolve_source
from ..weights.convert import strip_wrappers
from ..weights.files import sha256_of
from .model import PATCH, assemble_sam, sam_input

__all__ = ["TEACHERS", "TEACHER_WEIGHTS", "build_teacher", "random_teacher", "read_teacher_state", "TeacherCache", "teacher_cache", "default_cache_dir", "list_images", "teacher_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViTConfig:
    """An ``ImageEncoderViT`` configuration (segment_anything's ``build_sam_vit_*``)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14


#: SAM's ViT image encoders, and ``vit_tiny``: the same class at two blocks of width 64 (a teacher
#: for tests and quick experiments, with weights the user saved; it is nobody's release).
TEACHERS = {
    "vit_h": ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": ViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_tiny": ViTConfig(64, 2, 2, (1,), window_size=4),
}
#: Meta's released SAM checkpoints (downloaded when asked, into the torch hub cache).
TEACHER_WEIGHTS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
_CACHE_FORMAT = 1
_DECODER = "decoder.pt"  # the teacher's prompt encoder and mask decoder, beside its embeddings


def _check_kind(kind: str) -> ViTConfig:
    if kind not in TEACHERS:
        raise UserError(f"{param('teacher')} {kind!r}: expected one of {', '.join(TEACHERS)}")
    return TEACHERS[kind]


def _teacher_model(kind: str, img_size: int) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    config = _check_kind(kind)
    encoder = ImageEncoderViT(img_size=img_size, patch_size=PATCH, embed_dim=config.embed_dim, depth=config.depth,
                              num_heads=config.num_heads, mlp_ratio=4, out_chans=256, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                              global_attn_indexes=config.global_attn_indexes, window_size=config.window_size)
    return assemble_sam(encoder, img_size)


def random_teacher(kind: str = "vit_tiny", img_size: int = 1024, seed: int = 0) -> nn.Module:
    """A teacher SAM with random weights (fixed ``seed``), for tests and the distillation benchmark."""
    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        return _teacher_model(kind, img_size).eval()


def teacher_file(kind: str, weights=None) -> Path:
    """The local file of a teacher's weights (downloaded when a URL, by default Meta's release)."""
    _check_kind(kind)
    if weights is None:
        if kind not in TEACHER_WEIGHTS:
            raise UserError(f"{param('teacher_weights')} is required for {param('teacher')} {kind} (it has no release)")
        weights = TEACHER_WEIGHTS[kind]
    return resolve_source(weights)


def read_teacher_state(kind: str, weights=None) -> tuple[dict, Path]:
    """``(state dict, file)`` of a SAM checkpoint (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``): a path, an https:// URL, or by default Meta's release for ``kind``."""
    path = teacher_file(kind, weights)
    state = load_torch_file(path, label=f"{param('teacher_weights')} {path}")
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise CheckpointError(f"{param('teacher_weights')} {path}: not a SAM checkpoint (no image_encoder.* weights)")
    return strip_wrappers(state), path


def _fit_positions(state: dict, expected: dict) -> dict:
    """A checkpoint's absolute and relative position tables resized to this input size (SAM is
    released at 1024 px; a smaller ``img_size`` needs a smaller grid): bicubic for the 2-D
    embedding, linear for the global-attention blocks' relative positions."""
    out = dict(state)
    for key, target in expected.items():
        value = state.get(key)
        if value is None or value.shape == target.shape:
            continue
        if key.endswith("pos_embed") and value.dim() == 4:  # (1, H, W, C)
            resized = F.interpolate(value.permute(0, 3, 1, 2).float(), size=target.shape[1:3], mode="bicubic",
                                    align_corners=False)
            out[key] = resized.permute(0, 2, 3, 1).to(value.dtype)
        elif ".rel_pos_" in key and value.dim() == 2:  # (2 * size - 1, head_dim)
            resized = F.interpolate(value.T[None].float(), size=target.shape[0], mode="linear", align_corners=False)
            out[key] = resized[0].T.to(value.dtype)
    return out


def _checked_state(kind: str, state: dict, img_size: int, path) -> dict:
    """``state`` with its position tables fitted to ``img_size``, or a one-line error when it is not
    the weights of a ``kind`` teacher (checked against shapes alone: no model is built)."""
    with torch.device("meta"):
        expected = _teacher_model(kind, img_size).state_dict()
    state = _fit_positions(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (missing and f"missing {missing[0]}") or (unexpected and f"unexpected {unexpected[0]}") or \
            f"{wrong[0]}: {tuple(state[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)}"
        width = state.get("image_encoder.patch_embed.proj.weight")
        like = [k for k, c in TEACHERS.items() if width is not None and width.shape[0] == c.embed_dim and k != kind]
        hint = f"; its width is {like[0]}'s" if like else ""
        raise CheckpointError(f"{param('teacher_weights')} {path}: not SAM {kind} weights ({first}){hint}")
    return state


def build_teacher(kind: str, weights=None, img_size: int = 1024) -> nn.Module:
    """The teacher SAM (``segment_anything.modeling.Sam``, eval mode) of ``kind`` with ``weights``
    (see :func:`read_teacher_state`), at the square input ``img_size``."""
    state, path = read_teacher_state(kind, weights)
    sam = _teacher_model(kind, img_size)
    sam.load_state_dict(_checked_state(kind, state, img_size, path))
    return sam.eval()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/repvit/sam-teacher`` (``~/.cache/...`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repvit" / "sam-teacher"


class TeacherCache:
    """The teacher embeddings of a list of images, in shards (see the module docstring)."""

    def __init__(self, folder: Path, files: list[Path], shard_size: int, shard_names: list[str] | None = None):
        self.folder, self.files, self.shard_size = Path(folder), list(files), shard_size
        names = shard_names or [f"shard-{self._digest(i)}.pt" for i in range(self.shards)]
        self.shard_paths = [self.folder / name for name in names]
        self._open: dict[int, dict] = {}  # shards read so far (memory-mapped: rows are read on use)

    @property
    def shards(self) -> int:
        return -(-len(self.files) // self.shard_size)

    def members(self, shard: int) -> list[Path]:
        return self.files[shard * self.shard_size:(shard + 1) * self.shard_size]

    def _digest(self, shard: int) -> str:
        stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in self.members(shard)]
        return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]

    def missing(self) -> list[int]:
        return [i for i, path in enumerate(self.shard_paths) if not path.is_file()]

    def __len__(self) -> int:
        return len(self.files)

    def _shard(self, shard: int) -> dict:
        if shard not in self._open:
            if len(self._open) >= 4:  # a DataLoader worker reads shards roughly in turn: keep a few
                self._open.pop(next(iter(self._open)))
            self._open[shard] = load_torch_file(self.shard_paths[shard], mmap=True)
        return self._open[shard]

    def embedding(self, index: int) -> torch.Tensor:
        """The teacher's embedding of image ``index`` (256, S/16, S/16), fp16."""
        return self._shard(index // self.shard_size)["embeddings"][index % self.shard_size]

    def size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` inside the padded input."""
        h, w = self._shard(index // self.shard_size)["sizes"][index % self.shard_size].tolist()
        return int(h), int(w)

    def decoder_state(self) -> dict:
        """The teacher's prompt encoder and mask decoder weights."""
        return load_torch_file(self.folder / _DECODER)

    def __getstate__(self):  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_open": {}}


def teacher_cache(images, kind: str, weights=None, img_size: int = 1024, cache_dir=None, shard_size: int = 64,
                  batch_size: int = 4, device: torch.device | str = "cpu") -> TeacherCache:
    """The teacher embeddings of ``images`` (folders or image files), computed where missing.

    Under torchrun (a process group initialised) the main process reads the teacher, lists the
    images and the missing shards, and tells the others; each computes every ``world_size``-th
    missing shard, then all wait until every shard is on disk. Returns the cache, ready to read.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    plan, state = [None], None
    if rank == 0:
        files, path = list_images(images), teacher_file(kind, weights)
        key = {"format": _CACHE_FORMAT, "teacher": kind, "weights_sha256": sha256_of(path), "img_size": img_size}
        folder = Path(cache_dir or default_cache_dir()).resolve() / f"{kind}-{img_size}px-{_key_digest(key)}"
        cache = TeacherCache(folder, files, shard_size)
        if cache.missing() or not (folder / _DECODER).is_file():  # a complete cache needs no teacher read
            state = _checked_state(kind, read_teacher_state(kind, path)[0], img_size, path)
            folder.mkdir(parents=True, exist_ok=True)
        if not (folder / _DECODER).is_file():
            atomic_write(folder / "cache.json", lambda tmp: tmp.write_text(json.dumps({**key, "weights": str(path)})))
            atomic_save({k: v for k, v in state.items() if not k.startswith("image_encoder.")}, folder / _DECODER)
        plan = [(folder, files, [p.name for p in cache.shard_paths], cache.missing(), path)]
        log.info("teacher embeddings (%s, %d px) in %s: %d of %d shards cached, %d to compute%s", kind, img_size,
                 folder, cache.shards - len(plan[0][3]), cache.shards, len(plan[0][3]),
                 f" ({world} processes)" if world > 1 and plan[0][3] else "")
    if world > 1:  # one plan for all: the same images, shards and shares, whatever each process sees
        dist.broadcast_object_list(plan, src=0)
    folder, files, names, missing, path = plan[0]
    cache = TeacherCache(folder, files, shard_size, names)
    if not (folder / _DECODER).is_file():
        raise UserError(f"{param('teacher_cache')} {folder}: this process does not see the main process's files; "
                        "give a folder every process shares")
    mine = missing[rank::world]
    if mine:
        if state is None:
            state = _checked_state(kind, read_teacher_state(kind, path)[0], img_size, path)
        _compute_shards(cache, mine, kind, state, img_size, batch_size, torch.device(device))
    del state
    _wait_for(cache, [cache.shard_paths[i] for i in missing])
    return cache


def list_images(images) -> list[Path]:
    """The image files of ``images`` (folders or files; a folder's own images, sorted), or a one-line
    error naming the missing path."""
    paths = [Path(p) for p in (images if isinstance(images, (list, tuple)) else [images])]
    for p in paths:
        if not p.exists():
            raise UserError(f"{param('data')} {p}: no such folder or image")
    if not paths:
        raise UserError(f"{param('data')}: no images given")
    return image_files(paths)


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@torch.no_grad()
def _compute_shards(cache: TeacherCache, shards: list[int], kind: str, state: dict, img_size: int,
                    batch_size: int, device: torch.device) -> None:
    teacher = _teacher_model(kind, img_size)
    teacher.load_state_dict(state)  # checked and fitted by _checked_state
    encoder = teacher.image_encoder.eval().to(device)
    for done, shard in enumerate(shards, 1):
        embeddings, sizes = [], []
        members = cache.members(shard)
        for start in range(0, len(members), batch_size):
            batch = [sam_input(np.asarray(load_image(f)), img_size) for f in members[start:start + batch_size]]
            embeddings.append(encoder(torch.stack([x for x, _ in batch]).to(device)).half().cpu())
            sizes += [hw for _, hw in batch]
        atomic_save({"format": _CACHE_FORMAT, "files": [f.name for f in members], "sizes": torch.tensor(sizes),
                     "embeddings": torch.cat(embeddings)}, cache.shard_paths[shard])
        log.info("teacher embeddings: shard %d of %d done (%d image(s))", done, len(shards), len(members))


def _wait_for(cache: TeacherCache, paths: list[Path], poll_s: float = 1.0) -> None:
    """Until every path exists (the other processes' shards); says every minute what it waits for."""
    last_said = time.monotonic()
    while True:
        absent = [p for p in paths if not p.is_file()]
        if not absent:
            return
        if time.monotonic() - last_said > 60:
            log.info("waiting for %d teacher shard(s) other processes compute (%s)", len(absent), cache.folder)
            last_said = time.monotonic()
        time.sleep(poll_s)
