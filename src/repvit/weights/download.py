"""Resolving a checkpoint source (path, URL, registered name or Hugging Face Hub file) to a local file.

URL downloads are cached in the torch hub cache and can be checked against a sha256. Hub sources
(``hf-hub:ORG/REPO[@REVISION][:FILENAME]``, a Space as ``hf-hub:spaces/ORG/NAME:FILENAME``) go
through ``huggingface_hub.hf_hub_download``, so its cache, token and ``HF_HUB_OFFLINE`` apply.
A registered name whose GitHub release cannot be downloaded falls back to timm's copy on the Hub.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import validate_repo_id

from ..utils import first_line
from .files import CheckpointError, sha256_of
from .registry import WeightEntry, default_weights, get_weight_entry, registered_weights

__all__ = ["cache_dir", "resolve_source", "is_remote", "is_network_error", "HubSource", "parse_hub_source", "HF_HUB_PREFIX",
           "HUB_DEFAULT_FILES"]

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
_HUB_PREFIXES = (HF_HUB_PREFIX, "hf_hub:")  # timm accepts both spellings
#: Tried in order when a Hub source names no file: what timm and transformers publish.
HUB_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_SYNTAX = "hf-hub:ORG/REPO[@REVISION][:FILENAME] or hf-hub:spaces/ORG/NAME:FILENAME"
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# The copy step of the offline hints: a cache folder made for the purpose, so nothing else is copied.
_SCRATCH_CACHE = "hf-cache"


def cache_dir() -> Path:
    """Where downloaded checkpoints live: the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class _Unavailable(Exception):
    """A source that could not be fetched. ``reason`` completes "<source>: "; ``offline`` says the
    file may exist but this machine could not reach it (so fetching it elsewhere helps)."""

    def __init__(self, reason: str, offline: bool = False):
        super().__init__(reason)
        self.reason, self.offline = reason, offline


# ----------------------------------------------------------------------------------------------
# URLs (torch hub cache)
# ----------------------------------------------------------------------------------------------


def _url_target(url: str, registered: bool) -> Path:
    filename = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    if not registered:  # different URLs often share a file name ("model.safetensors")
        filename = f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{filename}"
    return cache_dir() / filename


def _fetch_url(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    try:
        # Writes to a temporary file and renames it, so an interrupted download leaves nothing.
        torch.hub.download_url_to_file(url, str(target), progress=sys.stderr.isatty())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise _Unavailable(f"could not download {url} ({getattr(err, 'reason', None) or err})", offline=True) from None


def _check_sha256(target: Path, source: str, sha256: str | None, downloaded: bool = False) -> Path:
    """``target`` when its sha256 is the expected one (or none is expected); a downloaded file that
    does not match is removed, so the next attempt downloads it again."""
    if sha256:
        actual = sha256_of(target)
        if actual != sha256.lower():
            if downloaded:
                target.unlink()
            what = "the downloaded file" if downloaded else str(target)
            removed = "; the file was removed" if downloaded else ""
            raise CheckpointError(f"{source}: sha256 of {what} is {actual}, expected {sha256}{removed}")
    return target


def _download(url: str, sha256: str | None, registered: bool = False) -> Path:
    target = _url_target(url, registered)
    if not target.exists():
        try:
            _fetch_url(url, target)
        except _Unavailable as err:
            raise CheckpointError(
                f"{err.reason}. If this machine is offline, download the file on one that is online and pass "
                f"its local path instead, or copy it to {target}"
            ) from None
    return _check_sha256(target, url, sha256, downloaded=True)


# ----------------------------------------------------------------------------------------------
# Hugging Face Hub (huggingface_hub's cache)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """A file on the Hugging Face Hub; ``str()`` gives it back as ``hf-hub:...``."""

    repo_id: str  # "ORG/NAME"
    filename: str | None = None  # None: the first of HUB_DEFAULT_FILES the repo has
    revision: str | None = None  # branch, tag or commit; None: the default branch
    repo_type: str = "model"  # "model", "dataset" or "space"

    def __str__(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        revision = f"@{self.revision}" if self.revision else ""
        filename = f":{self.filename}" if self.filename else ""
        return f"{HF_HUB_PREFIX}{kind}{self.repo_id}{revision}{filename}"

    @property
    def candidates(self) -> tuple[str, ...]:
        return (self.filename,) if self.filename else HUB_DEFAULT_FILES

    def cache_folder(self) -> Path:
        """This repository's folder in the Hub cache (``$HF_HUB_CACHE``, read when called)."""
        return Path(hf_constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo_id, repo_type=self.repo_type)

    def fetch_hint(self) -> str:
        """What to run on a machine that is online, and what to copy back here, to fill this cache."""
        options = "" if self.repo_type == "model" else f" --repo-type {self.repo_type}"
        options += f" --revision {self.revision}" if self.revision else ""
        folder = self.cache_folder()
        return (f"run `hf download {self.repo_id} {self.candidates[0]}{options} --cache-dir {_SCRATCH_CACHE}` "
                f"and copy {_SCRATCH_CACHE}/{folder.name} to {folder}")


def parse_hub_source(text: str) -> HubSource:
    """``hf-hub:ORG/REPO[@REVISION][:FILENAME]`` (also ``spaces/``/``datasets/`` before ORG) as a
    :class:`HubSource`; anything else is a one-line :class:`CheckpointError`."""
    text = str(text)
    prefix = next((p for p in _HUB_PREFIXES if text.startswith(p)), None)

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{text}: {why}; expected {_HUB_SYNTAX}, e.g. hf-hub:timm/repvit_m0_9.dist_450e_in1k")

    if prefix is None:
        raise bad(f"does not start with {HF_HUB_PREFIX}")
    # The repo part has no ":", so the first ":" starts the file name (which may contain "@").
    repo, has_file, filename = text[len(prefix):].partition(":")
    repo, has_revision, revision = repo.partition("@")
    parts = repo.split("/")
    repo_type = "model"
    if len(parts) == 3 and parts[0] in _REPO_TYPES:
        repo_type, parts = _REPO_TYPES[parts[0]], parts[1:]
    if len(parts) != 2 or not all(parts):
        raise bad(f"{repo!r} is not a repository id ORG/NAME")
    try:
        validate_repo_id("/".join(parts))
    except HFValidationError as err:
        raise bad(f"{repo!r} is not a valid repository id ({first_line(err, limit=120)})") from None
    if has_revision and not revision:
        raise bad("nothing after @ (the revision)")
    if has_file and not filename:
        raise bad("nothing after : (the file name)")
    if filename.startswith("/") or ".." in filename.split("/"):
        raise bad(f"{filename!r} is not a file name inside the repository")
    return HubSource("/".join(parts), filename or None, revision or None, repo_type)


def _hub_host_resolves() -> bool:
    """Whether the Hub's host name resolves. huggingface_hub retries an unreachable host for ~25 s
    per file; a machine without DNS is offline, and says so at once."""
    host = urllib.parse.urlparse(hf_constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def is_network_error(err: BaseException) -> bool:
    """A failure to reach a server: the OS's, or one of the HTTP client's own transport errors (which
    huggingface_hub's client, httpx or httpx2 by version, does not derive from OSError)."""
    if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return any(cls.__module__.split(".")[0] in ("httpx", "httpx2", "requests") and cls.__name__ in
               ("TransportError", "ConnectionError", "Timeout") for cls in type(err).__mro__)


def _hub_file(source: HubSource, local_only: bool = False) -> Path:
    """The local path of ``source``'s file, downloaded into the Hub cache when needed."""
    missing: list[str] = []
    cache_miss = None
    # No DNS means no network: answer from the cache at once, instead of huggingface_hub's retries.
    if not local_only and not hf_constants.HF_HUB_OFFLINE and not _hub_host_resolves():
        try:
            return _hub_file(source, local_only=True)
        except _Unavailable:
            host = urllib.parse.urlparse(hf_constants.ENDPOINT).hostname
            raise _Unavailable(f"not in the Hugging Face cache, and {host} cannot be resolved (no network)",
                               offline=True) from None
    for name in source.candidates:
        try:
            return Path(hf_hub_download(source.repo_id, name, repo_type=source.repo_type, revision=source.revision,
                                        local_files_only=local_only))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            cache_miss = cache_miss or name  # offline: another default file may still be cached
        except EntryNotFoundError:  # on the Hub, not in the repository
            missing.append(name)
        except RepositoryNotFoundError:  # also gated and private repositories seen without a token
            raise _Unavailable("no such repository on the Hugging Face Hub, or it is private or gated (log in with "
                               "`hf auth login` or set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise _Unavailable(f"no revision {source.revision!r} in {source.repo_id}") from None
        except Exception as err:  # HTTP errors (HfHubHTTPError), a full disk, a proxy, a dropped connection
            if not (isinstance(err, (OSError, ValueError)) or is_network_error(err)):
                raise
            raise _Unavailable(f"could not download {name} from the Hugging Face Hub ({first_line(err)})",
                               offline=is_network_error(err)) from None
    if cache_miss is not None:
        raise _Unavailable(f"{cache_miss} is not in the Hugging Face cache and the Hub is unreachable "
                           "or HF_HUB_OFFLINE=1 is set", offline=True)
    if source.filename:
        raise _Unavailable(f"no file {source.filename} in {source.repo_id}")
    raise _Unavailable(f"{source.repo_id} has none of {', '.join(missing)}; name the file as "
                       f"{HubSource(source.repo_id, 'FILENAME', source.revision, source.repo_type)}")


def _resolve_hub(text: str) -> Path:
    source = parse_hub_source(text)
    try:
        return _hub_file(source)
    except _Unavailable as err:
        hint = f"; on a machine that is online {source.fetch_hint()}" if err.offline else ""
        raise CheckpointError(f"{source}: {err.reason}{hint}") from None


def _resolve_registered(entry: WeightEntry, sha256: str | None) -> Path:
    """The GitHub release file, else timm's copy on the Hub. A copy already in either cache wins over
    any download, so a machine that has one never waits on the network."""
    sha256 = sha256 or entry.sha256
    target = _url_target(entry.url, registered=True)
    # A checksum pins the GitHub file: the Hub copy (another format) could not match it.
    if target.exists() or entry.hub_source is None or sha256:
        return _download(entry.url, sha256, registered=True)
    hub = parse_hub_source(entry.hub_source)
    try:
        return _hub_file(hub, local_only=True)
    except _Unavailable:
        pass
    try:
        _fetch_url(entry.url, target)
        return target
    except _Unavailable as err:
        github = err
    log.warning("%s; trying %s", github.reason, hub)
    try:
        return _hub_file(hub)
    except _Unavailable as err:
        hub_error = err
    fetch = f"run `curl -L -o {target.name} {entry.url}` and copy the file to {target}"
    if hub_error.offline:
        fetch = f"either {fetch}, or {hub.fetch_hint()}"
    raise CheckpointError(f"{entry.name}: {github.reason}, nor {hub} ({hub_error.reason}); if this machine is "
                          f"offline, on one that is online {fetch}, or pass its local path instead")


# ----------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")


def is_remote(source) -> bool:
    """Whether ``source`` names a download (a URL or a Hub file) rather than a local path or a name."""
    return str(source).startswith(("https://", "http://", *_HUB_PREFIXES))


def resolve_source(source, sha256: str | None = None) -> Path:
    """A local path for ``source``: a path, an ``http(s)://`` URL (cached), a registered name, or a
    Hugging Face Hub file ``hf-hub:ORG/REPO[@REVISION][:FILENAME]`` (``hf-hub:spaces/ORG/NAME:FILE``
    for a Space; without FILENAME, ``model.safetensors``, else ``pytorch_model.bin``)."""
    if isinstance(source, WeightEntry):
        source = source.name
    text = str(source)
    if text.startswith(("https://", "http://")):
        return _download(text, sha256)
    if text.startswith(_HUB_PREFIXES):
        return _check_sha256(_resolve_hub(text), text, sha256)
    entry = registered_weights(text)
    if entry is not None:
        return _resolve_registered(entry, sha256)
    path = Path(text).expanduser()
    if path.is_file():
        return _check_sha256(path, text, sha256)
    if path.exists():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file")
    if "/" not in text and "." in text and path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
        get_weight_entry(text)  # looks like "<arch>.<tag>": raises with the registered names
    raise CheckpointError(
        f"{text}: no such file. Expected a local checkpoint path, an https:// URL or a registered weight name "
        f"such as {default_weights('repvit_m0_9')} (see `repvit models`), or a Hugging Face Hub file "
        f"{HF_HUB_PREFIX}ORG/REPO[@REVISION][:FILENAME]"
    )
