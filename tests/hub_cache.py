"""Writes files into a Hugging Face Hub cache folder, so that ``hf_hub_download`` finds them offline.

The layout is the one ``huggingface_hub`` itself writes (see its ``file_download.py``)::

    <cache_dir>/models--ORG--NAME/refs/<revision>          holds the commit hash
    <cache_dir>/models--ORG--NAME/blobs/<sha256>            the file content
    <cache_dir>/models--ORG--NAME/snapshots/<commit>/FILE  a relative symlink to the blob

Point the library at it with ``offline_hub(monkeypatch, cache_dir)``: ``huggingface_hub`` reads
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` once, at import time, so
setting the environment variables in a test that runs after the import would have no effect.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

__all__ = ["offline_hub", "populate_hf_cache"]

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def populate_hf_cache(
    cache_dir,
    repo_id: str,
    files: dict[str, bytes | Path],
    *,
    repo_type: str = "model",
    revision: str = "main",
) -> Path:
    """Write ``files`` (name in the repo -> content or a local file to copy) as one snapshot of
    ``repo_id`` in the hub cache at ``cache_dir``; returns the snapshot folder.

    ``revision`` is a branch or tag (a ``refs/`` file then points at a made-up commit) or a
    40-hex commit hash (the snapshot is stored under it, with no ref). Calling it again for the same
    repo and revision adds files to the same snapshot.
    """
    repo_folder = Path(cache_dir) / "--".join([f"{repo_type}s", *repo_id.split("/")])
    ref_file = repo_folder / "refs" / revision
    if _COMMIT_HASH.fullmatch(revision):
        commit = revision
    elif ref_file.is_file():
        commit = ref_file.read_text().strip()
    else:  # any fixed 40-hex string works; derive it so reruns land in the same snapshot
        commit = hashlib.sha1(f"{repo_type}/{repo_id}@{revision}".encode()).hexdigest()
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)  # no trailing newline: huggingface_hub reads it verbatim
    snapshot = repo_folder / "snapshots" / commit
    for name, content in files.items():
        data = Path(content).read_bytes() if isinstance(content, (str, Path)) else bytes(content)
        blob = repo_folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = snapshot.joinpath(*name.split("/"))
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.exists() or pointer.is_symlink():
            pointer.unlink()
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, pointer)
    return snapshot


def offline_hub(monkeypatch, cache_dir) -> Path:
    """Make ``huggingface_hub`` use ``cache_dir`` and never touch the network, for one test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # Also for subprocesses started by the test, which import huggingface_hub afresh.
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return Path(cache_dir)
