"""Weight sources on the Hugging Face Hub (``hf-hub:ORG/REPO[@REVISION][:FILENAME]``), without the
network: every test serves the files from a Hub cache written by :mod:`hub_cache`, with
``huggingface_hub`` in offline mode, and registered names fall back to timm's copies there."""

import io
import urllib.error

import httpx
import pytest
import timm
import torch
from conftest import scale_of, settle_batchnorm
from hub_cache import offline_hub, populate_hf_cache
from huggingface_hub import constants
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save

import repvit
from repvit.sam import create_sam
from repvit.sam.model import official_sam_state
from repvit.weights import (
    CheckpointError,
    HubSource,
    cache_dir,
    download,
    get_weight_entry,
    parse_hub_source,
    resolve_source,
)

M09_REPO = "timm/repvit_m0_9.dist_450e_in1k"
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def timm_m09():
    """A timm ``repvit_m0_9`` with non-trivial weights, and its state dict as safetensors bytes (the
    format and key layout of timm's files on the Hub)."""
    torch.manual_seed(0)
    model = settle_batchnorm(timm.create_model("repvit_m0_9", pretrained=False, distillation=True))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return model, save(state)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hub cache, offline; the torch hub cache in the test's folder too."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return offline_hub(monkeypatch, tmp_path / "hf")


def _github_down(monkeypatch) -> list:
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


def _same_logits(ours, reference):
    with torch.no_grad():
        expected = reference.eval()(X)
        assert (ours(X) - expected).abs().max() <= 1e-4 * scale_of(expected)


# ----------------------------------------------------------------------------------------------
# hf-hub: sources
# ----------------------------------------------------------------------------------------------


def test_a_timm_file_on_the_hub_loads_with_timm_logits(hub, timm_m09):
    reference, data = timm_m09
    populate_hf_cache(hub, M09_REPO, {"model.safetensors": data})
    ours = repvit.create_model("repvit_m0_9", weights=f"hf-hub:{M09_REPO}")
    assert ours.distillation and not ours.training
    _same_logits(ours, reference)
    path = resolve_source(f"hf-hub:{M09_REPO}:model.safetensors")
    assert path.name == "model.safetensors"
    assert str(path).startswith(str(hub / "models--timm--repvit_m0_9.dist_450e_in1k"))


def test_a_space_file_loads_through_the_sam_loader(hub):
    sam = create_sam(img_size=64)
    buffer = io.BytesIO()
    torch.save(official_sam_state(sam), buffer)  # the layout of the released repvit_sam.pt
    populate_hf_cache(hub, "someone/repvit-sam-demo", {"repvit_sam.pt": buffer.getvalue()}, repo_type="space")
    loaded = create_sam("hf-hub:spaces/someone/repvit-sam-demo:repvit_sam.pt", img_size=64)
    expected = sam.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="repvit_sam.pt: repvit_sam.pt is not in the Hugging Face cache"):
        create_sam("hf-hub:someone/repvit-sam-demo:repvit_sam.pt", img_size=64)  # a model repo, not the Space


def test_default_file_is_safetensors_then_pytorch_model_bin(hub):
    populate_hf_cache(hub, "org/both", {"model.safetensors": b"st", "pytorch_model.bin": b"bin"})
    populate_hf_cache(hub, "org/bin-only", {"pytorch_model.bin": b"bin"})
    assert resolve_source("hf-hub:org/both").read_bytes() == b"st"
    assert resolve_source("hf-hub:org/bin-only").name == "pytorch_model.bin"
    assert resolve_source("hf-hub:org/both:pytorch_model.bin").read_bytes() == b"bin"


def test_revision_picks_the_snapshot(hub):
    populate_hf_cache(hub, "org/repo", {"w.pt": b"main"})
    populate_hf_cache(hub, "org/repo", {"w.pt": b"tagged"}, revision="v1.0")
    commit = "0123456789abcdef0123456789abcdef01234567"
    populate_hf_cache(hub, "org/repo", {"sub/w.pt": b"pinned"}, revision=commit)
    assert resolve_source("hf-hub:org/repo:w.pt").read_bytes() == b"main"
    assert resolve_source("hf-hub:org/repo@v1.0:w.pt").read_bytes() == b"tagged"
    assert resolve_source(f"hf-hub:org/repo@{commit}:sub/w.pt").read_bytes() == b"pinned"
    with pytest.raises(CheckpointError, match="sha256 of .* expected 00"):
        resolve_source("hf-hub:org/repo:w.pt", sha256="00")


@pytest.mark.parametrize("text, expected", [
    ("hf-hub:timm/repvit_m0_9.dist_450e_in1k", HubSource("timm/repvit_m0_9.dist_450e_in1k")),
    ("hf-hub:org/repo@v1.0", HubSource("org/repo", revision="v1.0")),
    ("hf-hub:org/repo@refs/pr/3:ckpt/best.pth", HubSource("org/repo", "ckpt/best.pth", "refs/pr/3")),
    ("hf-hub:org/repo:weights@2x.safetensors", HubSource("org/repo", "weights@2x.safetensors")),
    ("hf-hub:spaces/org/app:repvit_sam.pt", HubSource("org/app", "repvit_sam.pt", repo_type="space")),
    ("hf_hub:org/repo", HubSource("org/repo")),  # timm's older spelling
])
def test_parsing(text, expected):
    source = parse_hub_source(text)
    assert source == expected
    assert parse_hub_source(str(source)) == source
    assert source.candidates == ((source.filename,) if source.filename else ("model.safetensors", "pytorch_model.bin"))


@pytest.mark.parametrize("text, why", [
    ("hf-hub:repo", "not a repository id ORG/NAME"),
    ("hf-hub:a/b/c", "not a repository id ORG/NAME"),
    ("hf-hub:/b", "not a repository id ORG/NAME"),
    ("hf-hub:org/re po", "not a valid repository id"),
    ("hf-hub:org/repo@", "nothing after @"),
    ("hf-hub:org/repo:", "nothing after :"),
    ("hf-hub:org/repo:../secret", "not a file name inside the repository"),
])
def test_bad_syntax_is_one_line(text, why):
    with pytest.raises(CheckpointError) as err:
        resolve_source(text)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{text}: ") and why in message
    assert "hf-hub:ORG/REPO[@REVISION][:FILENAME]" in message


# ----------------------------------------------------------------------------------------------
# Failures say what to do
# ----------------------------------------------------------------------------------------------


def test_offline_and_not_cached_names_the_cache_and_the_command(hub):
    with pytest.raises(CheckpointError) as err:
        repvit.create_model("repvit_m0_9", weights=f"hf-hub:{M09_REPO}")
    message = str(err.value)
    folder = hub / "models--timm--repvit_m0_9.dist_450e_in1k"
    assert "\n" not in message and message.startswith(f"hf-hub:{M09_REPO}: model.safetensors is not in")
    assert f"`hf download {M09_REPO} model.safetensors --cache-dir hf-cache`" in message
    assert f"copy hf-cache/{folder.name} to {folder}" in message

    with pytest.raises(CheckpointError) as err:
        resolve_source("hf-hub:spaces/org/app@v2:sam.pt")
    assert "`hf download org/app sam.pt --repo-type space --revision v2 --cache-dir hf-cache`" in str(err.value)
    assert str(hub / "spaces--org--app") in str(err.value)


def test_hub_errors_are_one_line(hub, monkeypatch):
    def not_found(*args, **kwargs):
        response = httpx.Response(404, request=httpx.Request("HEAD", "https://huggingface.co/org/gone"))
        raise RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found for url ...", response=response)

    monkeypatch.setattr(download, "hf_hub_download", not_found)
    with pytest.raises(CheckpointError) as err:
        resolve_source("hf-hub:org/gone")
    message = str(err.value)
    assert "\n" not in message and message.startswith("hf-hub:org/gone: no such repository") and "HF_TOKEN" in message


# ----------------------------------------------------------------------------------------------
# Registered names: timm's copy on the Hub when the GitHub release cannot be downloaded
# ----------------------------------------------------------------------------------------------


def test_registered_names_have_timms_hub_copies():
    assert get_weight_entry("repvit_m0_9.dist_450e").hub_source == f"hf-hub:{M09_REPO}:model.safetensors"
    assert get_weight_entry("repvit_m2_3.dist_300e").hf_hub_id == "timm/repvit_m2_3.dist_300e_in1k"
    assert get_weight_entry("repvit_m3.dist_300e").hf_hub_id == "timm/repvit_m3.dist_in1k"
    assert get_weight_entry("repvit_m0_6.dist_300e").hub_source is None  # timm has no M0.6
    published = {timm.models.get_pretrained_cfg(n).hf_hub_id for n in timm.list_pretrained("repvit*")}
    assert {get_weight_entry(n).hf_hub_id for n in repvit.list_weights()} - {None} == published


def test_a_cached_hub_copy_is_used_without_the_network(hub, timm_m09, monkeypatch):
    reference, data = timm_m09
    populate_hf_cache(hub, M09_REPO, {"model.safetensors": data})
    calls = _github_down(monkeypatch)
    _same_logits(repvit.create_model("repvit_m0_9", weights="repvit_m0_9.dist_450e"), reference)
    assert calls == []  # a copy in either cache beats any download


def test_a_failed_github_download_falls_back_to_the_hub(hub, timm_m09, monkeypatch):
    reference, data = timm_m09
    populate_hf_cache(hub, M09_REPO, {"model.safetensors": data})
    calls = _github_down(monkeypatch)
    real = download.hf_hub_download
    hub_calls = []

    def not_cached_yet(*args, local_files_only=False, **kwargs):  # the Hub copy exists, only remotely
        hub_calls.append(local_files_only)
        if local_files_only:
            return real(*args, **kwargs, local_files_only=True, cache_dir=hub / "empty")
        return real(*args, **kwargs)

    monkeypatch.setattr(download, "hf_hub_download", not_cached_yet)
    _same_logits(repvit.create_model("repvit_m0_9", weights="repvit_m0_9.dist_450e"), reference)
    assert calls == [get_weight_entry("repvit_m0_9.dist_450e").url] and hub_calls[-1] is False


def test_registered_name_offline_names_both_caches_and_commands(hub, monkeypatch):
    _github_down(monkeypatch)
    entry = get_weight_entry("repvit_m1_1.dist_450e")
    with pytest.raises(CheckpointError) as err:
        repvit.create_model("repvit_m1_1", weights=entry.name)
    message = str(err.value)
    target = cache_dir() / "repvit_m1_1_distill_450e.pth"
    folder = hub / "models--timm--repvit_m1_1.dist_450e_in1k"
    assert "\n" not in message and message.startswith(f"{entry.name}: could not download {entry.url}")
    assert "offline" in message and f"`curl -L -o {target.name} {entry.url}`" in message and str(target) in message
    assert "`hf download timm/repvit_m1_1.dist_450e_in1k model.safetensors --cache-dir hf-cache`" in message
    assert f"copy hf-cache/{folder.name} to {folder}" in message


def test_a_checksum_pins_the_github_file(hub, timm_m09, monkeypatch):
    populate_hf_cache(hub, M09_REPO, {"model.safetensors": timm_m09[1]})
    _github_down(monkeypatch)
    with pytest.raises(CheckpointError, match="could not download .*offline"):
        resolve_source("repvit_m0_9.dist_450e", sha256="ab" * 32)


def test_the_offline_fixture_really_is_offline(hub):
    assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == str(hub)


def test_without_dns_a_hub_source_fails_at_once_and_a_cached_one_still_loads(hub, timm_m09, monkeypatch):
    """Not in offline mode, but the Hub's host does not resolve (a machine with no network):
    huggingface_hub would retry for ~25 s per file, so only the cache is asked."""
    import socket

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "no DNS")))
    real, asked = download.hf_hub_download, []

    def cache_only(*args, local_files_only=False, **kwargs):
        asked.append(local_files_only)
        return real(*args, local_files_only=True, **kwargs)

    monkeypatch.setattr(download, "hf_hub_download", cache_only)
    with pytest.raises(CheckpointError) as err:
        resolve_source(f"hf-hub:{M09_REPO}")
    message = str(err.value)
    assert "\n" not in message and "huggingface.co cannot be resolved (no network)" in message
    assert f"`hf download {M09_REPO} model.safetensors" in message and asked and all(asked)

    populate_hf_cache(hub, M09_REPO, {"model.safetensors": timm_m09[1]})
    _same_logits(repvit.create_model("repvit_m0_9", weights=f"hf-hub:{M09_REPO}"), timm_m09[0])


def test_a_run_checkpoint_on_the_hub(hub, tmp_path):
    """`detect val/predict` and `segment val/predict/export` take their --weights through the same resolver."""
    from repvit.train.checkpoint import read_run_checkpoint

    buffer = io.BytesIO()
    torch.save({"format": "repvit-detect", "epoch": 3}, buffer)
    populate_hf_cache(hub, "org/detector", {"checkpoint-best.pth": buffer.getvalue()})
    assert read_run_checkpoint("hf-hub:org/detector:checkpoint-best.pth", "detect")["epoch"] == 3
    with pytest.raises(CheckpointError, match="not a checkpoint of `repvit segment train`"):
        read_run_checkpoint("hf-hub:org/detector:checkpoint-best.pth", "segment")


def test_a_proxy_or_dropped_connection_is_one_line_with_the_fetch_hint(hub, monkeypatch):
    """huggingface_hub's HTTP client raises its own transport errors (not OSError)."""
    import httpx2

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(download, "_hub_host_resolves", lambda: True)

    def proxy_down(*args, **kwargs):
        raise httpx2.ProxyError("407 Proxy Authentication Required")

    monkeypatch.setattr(download, "hf_hub_download", proxy_down)
    with pytest.raises(CheckpointError) as err:
        resolve_source(f"hf-hub:{M09_REPO}")
    message = str(err.value)
    assert "\n" not in message and "could not download model.safetensors from the Hugging Face Hub (" in message
    assert "407 Proxy" in message and f"`hf download {M09_REPO} model.safetensors" in message
