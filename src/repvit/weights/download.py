"""Resolving a checkpoint source (path, URL or registered name) to a local file; downloads are
cached in the torch hub cache and can be checked against a sha256."""

from __future__ import annotations

import hashlib
import logging
import sys
import urllib.error
import urllib.parse
from pathlib import Path

import torch

from .files import CheckpointError, sha256_of
from .registry import WeightEntry, default_weights, get_weight_entry, registered_weights

__all__ = ["cache_dir", "resolve_source"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloaded checkpoints live: the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str, sha256: str | None, registered: bool = False) -> Path:
    filename = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    if not registered:  # different URLs often share a file name ("model.safetensors")
        filename = f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{filename}"
    target = cache_dir() / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s to %s", url, target)
        try:
            # Writes to a temporary file and renames it, so an interrupted download leaves nothing.
            torch.hub.download_url_to_file(url, str(target), progress=sys.stderr.isatty())
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise CheckpointError(
                f"could not download {url} ({reason}). If this machine is offline, download the file "
                f"on one that is online and pass its local path instead, or copy it to {target}"
            ) from None
    if sha256:
        actual = sha256_of(target)
        if actual != sha256.lower():
            target.unlink()
            raise CheckpointError(
                f"{url}: sha256 of the downloaded file is {actual}, expected {sha256}; the file was removed"
            )
    return target


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def resolve_source(source, sha256: str | None = None) -> Path:
    """A local path for ``source``: a path, an ``http(s)://`` URL (cached) or a registered name."""
    if isinstance(source, WeightEntry):
        source = source.name
    text = str(source)
    if text.startswith(("https://", "http://")):
        return _download(text, sha256)
    entry = registered_weights(text)
    if entry is not None:
        return _download(entry.url, sha256 or entry.sha256, registered=True)
    path = Path(text).expanduser()
    if path.is_file():
        if sha256 and sha256_of(path) != sha256.lower():
            raise CheckpointError(f"{path}: sha256 does not match the expected {sha256}")
        return path
    if path.exists():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file")
    if "/" not in text and "." in text and path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
        get_weight_entry(text)  # looks like "<arch>.<tag>": raises with the registered names
    raise CheckpointError(
        f"{text}: no such file. Expected a local checkpoint path, an https:// URL or a registered "
        f"weight name such as {default_weights('repvit_m0_9')} (see `repvit models`)"
    )
