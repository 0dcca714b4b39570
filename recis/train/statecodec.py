"""Checkpoint state without pickle: tensors to safetensors, everything else to tagged JSON.

A trainer's state is a tree of dicts, lists and tuples whose leaves are tensors,
numbers, strings, numpy arrays and RNG states. :func:`encode` walks it, takes every
tensor out (into a flat ``{key: tensor}`` dict for safetensors) and leaves a reference in
its place, and turns what JSON cannot say into tagged objects:

====================  ================================================
value                 JSON
====================  ================================================
tensor                ``{"__tensor__": "model/top.0.weight"}``
tuple / torch.Size    ``{"__tuple__": [...]}`` / ``{"__size__": [...]}``
dict, non-str keys    ``{"__dict__": [[key, value], ...]}``
numpy array           ``{"__ndarray__": [dtype, shape, base64 bytes]}``
numpy scalar          ``{"__npscalar__": [dtype, base64 bytes]}``
nan / inf             ``{"__float__": "nan"}``
bytes                 ``{"__bytes__": base64}``
torch dtype / device  ``{"__dtype__": "float32"}`` / ``{"__device__": "cpu"}``
====================  ================================================

:func:`decode` is its inverse and accepts nothing else: no code runs on load, and a
value of any other kind is refused at save time with its place in the tree.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from recis.errors import CheckpointError, RecisError

_TAGS = (
    "__tensor__",
    "__tuple__",
    "__size__",
    "__dict__",
    "__ndarray__",
    "__npscalar__",
    "__float__",
    "__bytes__",
    "__dtype__",
    "__device__",
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """``value`` as JSON-serializable data; its tensors go into ``tensors`` under keys
    starting with ``where`` (the value's place in the tree, also named in errors)."""
    if isinstance(value, torch.Tensor):
        if value.is_sparse or value.layout != torch.strided:
            raise CheckpointError(f"{where}: a {value.layout} tensor cannot be checkpointed")
        key = where
        while key in tensors:
            key += "_"
        tensors[key] = value
        return {"__tensor__": key}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"__float__": repr(float(value))}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"{where}: a numpy array of Python objects cannot be stored")
        a = np.ascontiguousarray(value)
        return {"__ndarray__": [a.dtype.str, list(a.shape), _b64(a.tobytes())]}
    if isinstance(value, np.generic):
        if value.dtype.hasobject:
            raise CheckpointError(f"{where}: a numpy object scalar cannot be stored")
        return {"__npscalar__": [value.dtype.str, _b64(value.tobytes())]}
    if isinstance(value, bytes):
        return {"__bytes__": _b64(value)}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, dict):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
        if plain:
            return {k: encode(v, tensors, f"{where}/{k}") for k, v in value.items()}
        return {
            "__dict__": [
                [encode(k, tensors, f"{where}/<key>"), encode(v, tensors, f"{where}/{k}")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    raise CheckpointError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be checkpointed "
        "(tensors, numbers, strings, lists, tuples, dicts and numpy arrays can)"
    )


@contextmanager
def reading_errors(
    message: Callable[[Exception], str], errors: tuple[type[Exception], ...]
) -> Iterator[None]:
    """Inside: an exception of one of ``errors`` (stored values that are not what the reader
    expects) becomes a :class:`CheckpointError` with the one line ``message(err)``; recis's
    own errors pass through unchanged."""
    try:
        yield
    except RecisError:
        raise
    except errors as err:
        raise CheckpointError(message(err)) from None


def decode(value: Any, tensor: Callable[[str], torch.Tensor], source: str) -> Any:
    """The inverse of :func:`encode`; ``tensor(key)`` gives a stored tensor. Anything not
    written by :func:`encode` is a :class:`CheckpointError` naming ``source`` (the file)."""
    if value is None or isinstance(value, bool | str | int | float):
        return value
    if isinstance(value, list):
        return [decode(v, tensor, source) for v in value]
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: unexpected {type(value).__name__} in checkpoint state")
    tag = next((k for k in value if k.startswith("__")), None)
    if tag is None:
        return {k: decode(v, tensor, source) for k, v in value.items()}
    if len(value) != 1 or tag not in _TAGS:
        raise CheckpointError(f"{source}: unknown entry {tag!r} in checkpoint state")
    # RuntimeError: torch's constructors (``torch.device("bogus")``) refuse a bad name so
    with reading_errors(
        lambda err: f"{source}: malformed {tag} entry in checkpoint state: {err}",
        (TypeError, ValueError, KeyError, IndexError, RuntimeError),
    ):
        return _decode_tagged(tag, value[tag], tensor, source)


def _decode_tagged(tag: str, body: Any, tensor: Callable[[str], torch.Tensor], source: str) -> Any:
    if tag == "__tensor__":
        if not isinstance(body, str):
            raise TypeError("tensor key is not a string")
        return tensor(body)
    if tag == "__tuple__":
        return tuple(decode(v, tensor, source) for v in body)
    if tag == "__size__":
        return torch.Size([int(v) for v in body])
    if tag == "__dict__":
        return {_hashable(decode(k, tensor, source)): decode(v, tensor, source) for k, v in body}
    if tag == "__ndarray__":
        dtype, shape, data = body
        dt = _plain_dtype(dtype)
        return np.frombuffer(base64.b64decode(data, validate=True), dtype=dt).reshape(shape).copy()
    if tag == "__npscalar__":
        dtype, data = body
        return np.frombuffer(base64.b64decode(data, validate=True), dtype=_plain_dtype(dtype))[0]
    if tag == "__float__":
        if body not in ("nan", "inf", "-inf"):
            raise ValueError(f"not a float: {body!r}")
        return float(body)
    if tag == "__bytes__":
        return base64.b64decode(body, validate=True)
    if tag == "__dtype__":
        named = getattr(torch, str(body), None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"not a torch dtype: {body!r}")
        return named
    return torch.device(str(body))  # __device__


def _plain_dtype(name: Any) -> np.dtype:
    dt = np.dtype(str(name))
    if dt.hasobject:
        raise ValueError("object dtype")
    return dt


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict):
        raise TypeError(f"unhashable dict key {key!r}")
    return key
