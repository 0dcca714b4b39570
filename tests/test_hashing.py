"""Feature hashing: stable (pinned values and a scalar reference), salted, vectorized."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.ops.hashing import hash_int64, hash_strings, salt64

M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def _signed(x: int) -> int:
    return x - (1 << 64) if x >> 63 else x


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50), st.text(max_size=10))
def test_int_hash_matches_scalar_reference(ids: list[int], salt: str) -> None:
    got = hash_int64(np.array(ids, dtype=np.int64), salt).tolist()
    s = int(salt64(salt))
    assert got == [_signed(_splitmix64((i & M64) ^ s)) for i in ids]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=30), st.text(max_size=5))
def test_string_hash_matches_scalar_reference(values: list[str], salt: str) -> None:
    s = int(salt64(salt))
    want = [_signed(_splitmix64(_fnv1a(v.encode()) ^ s)) for v in values]
    assert hash_strings(values, salt).tolist() == want
    assert hash_strings(pa.array(values, pa.large_string()), salt).tolist() == want
    chunked = pa.chunked_array(
        [pa.array(values[:3], pa.string()), pa.array(values[3:], pa.string())]
    )
    assert hash_strings(chunked, salt).tolist() == want


def test_pinned_values_are_stable_across_processes() -> None:
    # fixed numbers: any change of the hash breaks every trained table
    assert hash_int64([0, 1, -1], "f").tolist() == [
        6103773935369494677,
        -633077906287211775,
        6276560238840605728,
    ]
    assert hash_strings(["", "a", "hello"], "f").tolist() == [
        -7552839616964809654,
        6683336883921275242,
        -7096372178036455216,
    ]
    code = "from recis.ops.hashing import hash_strings; print(hash_strings(['hello'], 'f')[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == -7096372178036455216


def test_salt_separates_features_and_int_hash_is_injective() -> None:
    ids = np.arange(-50_000, 50_000, dtype=np.int64)
    a, b = hash_int64(ids, "user"), hash_int64(ids, "item")
    assert len(np.unique(a)) == len(ids)
    assert not np.intersect1d(a, b).size
    assert not np.array_equal(hash_strings(["x"], "user"), hash_strings(["x"], "item"))
    assert salt64(None) == 0 and salt64(5) == 5


def test_nulls_dictionary_and_bad_dtype() -> None:
    arr = pa.array(["a", None, "b"]).dictionary_encode()
    assert hash_strings(arr, "s").tolist() == hash_strings(["a", "", "b"], "s").tolist()
    assert hash_strings([], "s").shape == (0,)
    with pytest.raises(TypeError, match="integer"):
        hash_int64(np.array([1.5]), "s")
