"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP's own reader unpickles ``.metadata`` with ``pickle.load`` and its planner loads the
non-tensor items of the ``.distcp`` files (optimizer settings, numbers) with
``torch.load(weights_only=False)``: a tampered file would run code, and a manifest only
detects what someone who cannot also rewrite it changed. Here ``.metadata`` goes through
an unpickler that builds only DCP's metadata classes and a few plain torch/stdlib types,
and non-tensor items load with ``weights_only=True``; anything else is a
:class:`~recis.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from recis.errors import CheckpointError

# what a DCP .metadata file holds besides DCP's own classes (measured on torch 2.13's saves)
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)  # torch.float32 and the like are pickled by name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")


class SafeReader(dcp.FileSystemReader):
    """A :class:`torch.distributed.checkpoint.FileSystemReader` whose ``.metadata`` is
    read by a restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as err:  # a foreign or tampered file: say which, run nothing
            raise CheckpointError(
                f"{path}: not a DCP metadata file recis can read: {err}"
            ) from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: holds {type(metadata).__name__}, not DCP Metadata")
        # older files have no storage_meta (the attribute itself may be missing)
        meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        meta.load_id = self.load_id
        metadata.storage_meta = meta
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor items loaded by ``weights_only=True``
    (plain numbers, strings, lists, dicts, tuples: what optimizer settings are)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            item = torch.load(value, weights_only=True)
        except Exception as err:
            fqn = read_item.dest_index.fqn
            raise CheckpointError(f"item {fqn}: not a plain value: {err}".splitlines()[0]) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], item)
        else:
            self.state_dict[read_item.dest_index.fqn] = item
