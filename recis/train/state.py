"""Random-number-generator states, captured and restored for exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA, when initialized) generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state_json() -> dict[str, Any]:
    """:func:`rng_state` as JSON-serializable data (no pickle: tagged JSON of
    :mod:`recis.train.statecodec`, torch states as uint8 arrays)."""
    from .statecodec import encode

    state = rng_state()
    state["torch"] = state["torch"].numpy()
    if "cuda" in state:
        state["cuda"] = [s.numpy() for s in state["cuda"]]
    return encode(state, {}, "rng")


def set_rng_state_json(data: Any, source: str) -> None:
    """Restore the states written by :func:`rng_state_json`; malformed data is a
    CheckpointError naming ``source``."""
    from recis.errors import CheckpointError

    from .statecodec import decode

    def no_tensor(key: str) -> torch.Tensor:
        raise CheckpointError(f"{source}: unexpected tensor {key!r} in an RNG state")

    state = decode(data, no_tensor, source)
    try:
        state["torch"] = torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8))
        if "cuda" in state:
            state["cuda"] = [torch.from_numpy(np.asarray(s, dtype=np.uint8)) for s in state["cuda"]]
        set_rng_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: not a valid RNG state: {err}") from None
