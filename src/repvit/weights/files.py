"""Checkpoint files: the one atomic writer and the one safe reader (``weights_only``) of torch files."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..utils import UserError, first_line

__all__ = ["CheckpointError", "DiskFullError", "WriteError", "atomic_write", "atomic_save", "append_text",
           "load_torch_file", "read_safetensors", "sha256_of", "TEMPORARY_NAME"]

#: The names :func:`atomic_write` gives its temporary files (``<name>.<8 hex digits>.tmp``).
TEMPORARY_NAME = re.compile(r".+\.[0-9a-f]{8}\.tmp")


class CheckpointError(UserError):
    """A checkpoint that cannot be found, read, downloaded or loaded into the requested model."""


class WriteError(UserError):
    """A file that could not be written (no permission, a missing drive, ...)."""


class DiskFullError(WriteError):
    """A file that could not be written because its device is full."""


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary path)``, then rename the result onto ``path``: a crash mid-write leaves
    the previous file intact, and a reader never sees half a file. The temporary file has a unique
    name (two writers never share one) and is removed whatever happens; a full disk or another
    write failure is a one-line :class:`WriteError`. The file gets the usual mode (0666 less the
    umask), whatever the writer chose."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with contextlib.suppress(OSError):  # some network file systems have no modes
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except Exception as err:
        if not _about_the_file(err, tmp):
            raise  # a bug in the writer: to see in full
        raise _write_error(path, tmp, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def append_text(path, text: str) -> None:
    """Append ``text`` to a file; a failure (a full disk) is a one-line :class:`WriteError`."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as err:
        raise _write_error(Path(path), Path(path), err, appending=True) from None


def _process_umask() -> int:
    """The umask, read once (changing it to read it is not thread-safe later on)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()
_SPACE_MESSAGE = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b")
_FILE_MESSAGE = re.compile(r"PytorchStreamWriter|file write failed|cannot be opened|unexpected pos|Parent directory")


def _about_the_file(err: BaseException, tmp: Path) -> bool:
    """Whether a writer's exception is about the file (torch's writer reports a full disk as a
    RuntimeError, safetensors with its own type), not a bug in what is written."""
    if isinstance(err, OSError) or _SPACE_MESSAGE.search(str(err)):
        return True
    return isinstance(err, RuntimeError) and bool(_FILE_MESSAGE.search(str(err)) or _out_of_space(err, tmp))


def _out_of_space(err: BaseException, tmp: Path) -> bool:
    """Whether a failed write ran out of space (asked before its partial file is removed)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if _SPACE_MESSAGE.search(str(err)):
        return True
    try:  # torch's writer says only "unexpected pos": look at the disk
        return tmp.exists() and shutil.disk_usage(tmp.parent).free < 1 << 20
    except OSError:
        return False


def _write_error(path: Path, tmp: Path, err: BaseException, appending: bool = False) -> WriteError:
    kept = f"; the previous {path.name} is kept" if path.exists() and not appending else ""
    if _out_of_space(err, tmp):
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free"
        except OSError:
            free = "no space"
        return DiskFullError(f"{path}: not written: the disk is full ({free} in {path.parent}){kept}")
    return WriteError(f"{path}: not written ({first_line(err)}){kept}")


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


def load_torch_file(path, *, label: str | None = None, mmap: bool = False) -> object:
    """``torch.load`` with ``weights_only`` (tensors and plain containers; official checkpoints'
    pickled ``argparse.Namespace`` of arguments is allowed too), as a :class:`CheckpointError`
    when the file is missing, unreadable or holds other Python objects. Errors start with ``label``
    (default: the path). ``mmap``: tensors stay on disk until read (large files read in parts)."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: no such checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, bad header, EOF, ...: all mean "not a readable file"
        blocked = re.search(r"unsupported GLOBAL (\S+) whose module \S+ is blocked", str(err))
        if isinstance(err, pickle.UnpicklingError) and blocked:  # os.system, subprocess, ...: never data
            raise CheckpointError(
                f"{label}: asks to run code ({blocked.group(1)}) while loading: not a checkpoint; it was not "
                "loaded (only tensors and plain containers are), and a file like this should not be trusted"
            ) from None
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
