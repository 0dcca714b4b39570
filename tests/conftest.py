"""Shared fixtures: small synthetic datasets written as real parquet files."""

from __future__ import annotations

import os

import pytest
import torch

# run configs name their model, resolved through the classes recis.models registers with
# recis.config on import (recis.config sits below the models); tests load configs directly
import recis.models  # noqa: F401

# deterministic, 2-core friendly
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def small_ctr(tmp_path_factory):
    """A small synthetic CTR dataset: (path, info)."""
    from recis.synthetic import generate_ctr

    path = tmp_path_factory.mktemp("ctr")
    info = generate_ctr(path, num_train=20_000, num_eval=5_000, files=3, seed=7)
    return path, info
