"""Checkpoint files: the one atomic writer and the one safe reader (``weights_only``) of torch files."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..utils import UserError, first_line

__all__ = ["CheckpointError", "atomic_write", "atomic_save", "load_torch_file", "read_safetensors", "sha256_of"]


class CheckpointError(UserError):
    """A checkpoint that cannot be found, read, downloaded or loaded into the requested model."""


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary path)``, then rename the result onto ``path``: a crash mid-write leaves
    the previous file intact, and a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_UNREADABLE = "not a readable checkpoint (truncated or corrupt file?)"


def _short_reason(err: Exception) -> str:
    """The informative sentence of a (often multi-paragraph) loader error."""
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
    return first_line(detail.group(1) if detail else err, limit=None).split(". ")[0][:200] or type(err).__name__


def load_torch_file(path, *, label: str | None = None) -> object:
    """``torch.load`` with ``weights_only`` (tensors and plain containers; official checkpoints'
    pickled ``argparse.Namespace`` of arguments is allowed too), as a :class:`CheckpointError`
    when the file is missing, unreadable or holds other Python objects. Errors start with ``label``
    (default: the path)."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: no such checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad header, EOF, ...: all mean "not a readable file"
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if isinstance(err, pickle.UnpicklingError) and unsafe:
            raise CheckpointError(
                f"{label}: holds Python objects other than tensors ({unsafe.group(1)}), which are not "
                "loaded for safety; re-save just its state dict"
            ) from None
        raise CheckpointError(f"{label}: {_UNREADABLE}: {_short_reason(err)}") from None


def read_safetensors(path) -> tuple[dict, dict]:
    """The tensors and the string metadata of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # truncated file, bad header: "not a readable file"
        raise CheckpointError(f"{path}: {_UNREADABLE}: {_short_reason(err)}") from None
