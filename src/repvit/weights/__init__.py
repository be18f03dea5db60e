"""Weights: the registry of release checkpoints, reading any supported checkpoint, saving ours.

Official (THU-MIG/RepViT), timm and repvit checkpoints load without editing keys; all key renaming
lives in :mod:`.convert`. A checkpoint that does not fit the model is an error naming the first
mismatching tensor and the variant the checkpoint looks like. :mod:`.files` holds the one atomic
writer and the one safe reader of torch files, which every checkpoint of the package goes through.
"""

from .checkpoint import Checkpoint, read_checkpoint, read_state_dict
from .convert import convert_state_dict, to_official, to_timm
from .download import HubSource, cache_dir, parse_hub_source, resolve_source
from .files import CheckpointError, DiskFullError, WriteError, atomic_save, atomic_write, load_torch_file
from .load import first_mismatch, load_weights, save_weights
from .registry import WeightEntry, default_weights, get_weight_entry, list_weights

__all__ = ["CheckpointError", "WeightEntry", "Checkpoint", "list_weights", "get_weight_entry", "default_weights",
           "read_checkpoint", "read_state_dict", "convert_state_dict", "to_official", "to_timm", "load_weights", "save_weights", "cache_dir",
           "resolve_source", "atomic_write", "atomic_save", "load_torch_file", "first_mismatch", "DiskFullError",
           "WriteError", "HubSource", "parse_hub_source"]
