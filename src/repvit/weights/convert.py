"""Key conversion, pure functions on state dicts: official (THU-MIG/RepViT) and timm layouts to
this package's names and back, DDP/compile prefixes, and the legacy (v1) token mixer to the current form."""

from __future__ import annotations

import re

import torch

from .files import CheckpointError

__all__ = ["convert_state_dict", "to_official", "to_timm", "strip_wrappers", "legacy_to_current"]


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def strip_wrappers(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# Official flat layout: sub-key prefixes per kind of row -> our names. The first match wins.
_OFFICIAL_STEM = (("0.", "stem.conv1."), ("2.", "stem.conv2."))
_OFFICIAL_BLOCK = (
    ("token_mixer.0.conv.", "token_mixer.conv3x3."),
    ("token_mixer.0.conv1.", "token_mixer.conv1x1."),
    ("token_mixer.0.bn.", "token_mixer.bn."),
    ("token_mixer.0.", "token_mixer."),  # fused RepVGGDW
    ("token_mixer.1.", "se."),
    ("channel_mixer.m.0.", "channel_mixer.expand."),
    ("channel_mixer.m.2.", "channel_mixer.project."),
)
_OFFICIAL_DOWN = (
    ("token_mixer.0.", "spatial."),
    ("token_mixer.2.", "channel."),
    ("channel_mixer.m.0.", "ffn.expand."),
    ("channel_mixer.m.2.", "ffn.project."),
)
_OFFICIAL_HEAD = (
    ("classifier.classifier_dist.", "head.head_dist."),
    ("classifier.classifier.", "head.head."),
    ("classifier.", "head."),  # fused single head
)

# Segment renames for timm (keyed by the preceding segment; "*" = any) and for the official
# Conv2d_BN ("c") / BN_Linear ("l") sub-modules. They leave this package's own keys unchanged.
_SEGMENT_RENAMES = {
    ("token_mixer", "conv"): "conv3x3",
    ("token_mixer", "conv1"): "conv1x1",
    ("channel_mixer", "conv1"): "expand",
    ("channel_mixer", "conv2"): "project",
    ("ffn", "conv1"): "expand",
    ("ffn", "conv2"): "project",
    ("*", "spatial_downsample"): "spatial",
    ("*", "channel_downsample"): "channel",
    ("*", "c"): "conv",
    ("*", "l"): "linear",
}


def _rename_segments(key: str) -> str:
    parts = key.split(".")
    out = [parts[0]]
    for prev, seg in zip(parts, parts[1:]):
        out.append(_SEGMENT_RENAMES.get((prev, seg)) or _SEGMENT_RENAMES.get(("*", seg)) or seg)
    return ".".join(out)


def _apply_table(sub: str, table, key: str) -> str:
    for old, new in table:
        if sub.startswith(old):
            return new + sub[len(old):]
    raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")


_OFFICIAL_ROW = re.compile(r"features\.(\d+)\.(.+)")


def _convert_official(state: dict) -> dict:
    for key in state:
        if key.startswith("features.") and not _OFFICIAL_ROW.fullmatch(key):
            raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")
    rows = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    strided = {r for r in rows if any(k.startswith(f"features.{r}.token_mixer.2.") for k in state)}
    prefixes, stage, block = {0: ("stem", None)}, 0, 0
    for r in rows[1:]:
        if r + 1 in strided:  # the block the paper counts as part of the next downsampling layer
            prefixes[r] = (f"stages.{stage + 1}.downsample.pre_block.", _OFFICIAL_BLOCK)
        elif r in strided:
            stage, block = stage + 1, 0
            prefixes[r] = (f"stages.{stage}.downsample.", _OFFICIAL_DOWN)
        else:
            prefixes[r] = (f"stages.{stage}.blocks.{block}.", _OFFICIAL_BLOCK)
            block += 1
    out = {}
    for key, value in state.items():
        if key.startswith("features."):
            row, sub = _OFFICIAL_ROW.fullmatch(key).groups()
            prefix, table = prefixes[int(row)]
            new = _apply_table(sub, _OFFICIAL_STEM, key) if prefix == "stem" else prefix + _apply_table(sub, table, key)
        elif key.startswith("classifier."):
            new = _apply_table(key, _OFFICIAL_HEAD, key)
        else:
            raise CheckpointError(f"unrecognised key {key!r} in an official RepViT checkpoint")
        out[_rename_segments(new)] = value
    return out


def convert_state_dict(state: dict) -> tuple[dict, str]:
    """Rename an official, timm or repvit state dict to this package's keys.

    Returns ``(state_dict, format)`` with format ``"official"``, ``"timm"`` or ``"repvit"``.
    """
    state = strip_wrappers(dict(state))
    if any(k.startswith(("features.", "classifier.")) for k in state):
        return _convert_official(state), "official"
    # timm's features_only wrapper flattens "stages.N" into "stages_N".
    renamed = {_rename_segments(re.sub(r"^stages_(\d+)\.", r"stages.\1.", k)): v for k, v in state.items()}
    return renamed, ("repvit" if list(renamed) == list(state) else "timm")


_STAGE_ROW = re.compile(r"stages\.(\d+)\.(?:blocks\.(\d+)\.|downsample\.(pre_block\.)?)")
_OFFICIAL_SUBMODULE = {"conv": "c", "linear": "l"}  # the official Conv2d_BN's conv, BN_Linear's linear


def _invert_table(sub: str, table, key: str) -> str:
    """The official sub-key of ``sub`` (this package's names) for a row of the kind ``table`` maps."""
    matches = [(new, old) for old, new in table if sub.startswith(new)]
    if not matches:
        raise CheckpointError(f"{key!r} has no name in the official RepViT layout")
    new, old = max(matches, key=lambda match: len(match[0]))  # "token_mixer.bn." before "token_mixer."
    rest = sub[len(new):].split(".")
    rest[0] = _OFFICIAL_SUBMODULE.get(rest[0], rest[0]) if len(rest) > 1 else rest[0]
    return old + ".".join(rest)


def to_official(state: dict) -> dict:
    """A state dict in this package's names (``stem.``, ``stages.``, ``head.``; training or
    reparameterized structure) renamed to the official flat layout (``features.N.``,
    ``classifier.``): the inverse of :func:`convert_state_dict` on official checkpoints, checked by
    converting the result back."""
    stages: dict[int, dict] = {}
    for key in state:
        match = _STAGE_ROW.match(key)
        if match:
            stage = stages.setdefault(int(match.group(1)), {"blocks": 0, "downsample": False, "pre_block": False})
            if match.group(2) is not None:
                stage["blocks"] = max(stage["blocks"], int(match.group(2)) + 1)
            else:
                stage["downsample"] = True
                stage["pre_block"] |= match.group(3) is not None
    rows, row = {}, 1  # our prefix -> (official row, the row kind's table); row 0 is the stem
    for index in sorted(stages):
        stage = stages[index]
        if stage["pre_block"]:
            rows[f"stages.{index}.downsample.pre_block."], row = (row, _OFFICIAL_BLOCK), row + 1
        if stage["downsample"]:
            rows[f"stages.{index}.downsample."], row = (row, _OFFICIAL_DOWN), row + 1
        for block in range(stage["blocks"]):
            rows[f"stages.{index}.blocks.{block}."], row = (row, _OFFICIAL_BLOCK), row + 1
    renamed = []  # (official row, official key, our key), rows in the official order
    for key in state:
        if key.startswith("stem."):
            renamed.append((0, "features.0." + _invert_table(key, _OFFICIAL_STEM, key), key))
        elif key.startswith("head."):
            renamed.append((row, _invert_table(key, _OFFICIAL_HEAD, key), key))
        else:
            prefix = max((p for p in rows if key.startswith(p)), key=len, default=None)
            if prefix is None:
                raise CheckpointError(f"{key!r} has no name in the official RepViT layout")
            number, table = rows[prefix]
            renamed.append((number, f"features.{number}." + _invert_table(key[len(prefix):], table, key), key))
    renamed.sort(key=lambda item: item[0])  # stable: each row keeps its keys' order
    out = {official: state[ours] for _, official, ours in renamed}
    back, _ = convert_state_dict(out)
    for (_, official, ours), converted in zip(renamed, back):
        if ours != converted:
            raise CheckpointError(f"{ours!r}: its official name {official!r} does not convert back ({converted!r})")
    return out


# The segment renames read backwards: this package's segment (after ours of the preceding one) -> timm's.
_TIMM_SEGMENTS = {(prev, ours): theirs for (prev, theirs), ours in _SEGMENT_RENAMES.items()}


def to_timm(state: dict) -> dict:
    """A state dict in this package's names (training or reparameterized structure) renamed to
    timm's ``repvit_*`` layout (``stem.conv1.c``, ``token_mixer.conv``, ``head.head.l``, ...): the
    inverse of :func:`convert_state_dict` on timm checkpoints, checked by converting the result back.
    Whether timm's model of that name has exactly these tensors is the caller's check (the names
    alone cannot tell a variant)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        renamed = [parts[0]]
        for prev, seg in zip(parts, parts[1:]):
            renamed.append(_TIMM_SEGMENTS.get((prev, seg)) or _TIMM_SEGMENTS.get(("*", seg)) or seg)
        out[".".join(renamed)] = value
    if len(out) != len(state):
        raise CheckpointError("two tensors have the same timm name; expected a state dict in this package's names")
    back, _ = convert_state_dict(out)
    for ours, (theirs, converted) in zip(state, zip(out, back)):
        if ours != converted:  # not in this package's names (already timm's, official, wrapped, ...)
            raise CheckpointError(f"{ours!r}: its timm name {theirs!r} does not convert back ({converted!r}); "
                                  "expected a state dict in this package's names")
    return out


def legacy_to_current(state: dict, eps: float = 1e-5) -> dict:
    """Rewrite legacy (v1) token mixers as the current form, exactly equal in eval mode.

    The 1x1 branch's BatchNorm is folded into a biased 1x1 conv, and the BatchNorm after the sum
    becomes an identity (weight 1, bias 0, mean 0, var 1 - eps).
    """
    out = dict(state)
    for key in [k for k in state if k.endswith("token_mixer.conv1x1.conv.weight")]:
        p = key[: -len("conv1x1.conv.weight")]
        g, b = state[p + "conv1x1.bn.weight"], state[p + "conv1x1.bn.bias"]
        mean, var = state[p + "conv1x1.bn.running_mean"], state[p + "conv1x1.bn.running_var"]
        scale = g / torch.sqrt(var + eps)
        for name in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
            out.pop(p + "conv1x1." + name, None)
        out[p + "conv1x1.weight"] = state[key] * scale.reshape(-1, 1, 1, 1)
        out[p + "conv1x1.bias"] = b - mean * scale
        out[p + "bn.weight"] = torch.ones_like(g)
        out[p + "bn.bias"] = torch.zeros_like(g)
        out[p + "bn.running_mean"] = torch.zeros_like(g)
        out[p + "bn.running_var"] = torch.full_like(g, 1.0 - eps)
        out[p + "bn.num_batches_tracked"] = torch.tensor(0)
    return out
