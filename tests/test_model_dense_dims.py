"""A dense feature of ``dim`` k (a ``list<float>`` of k values: a pretrained vector) is k
columns of ``Batch.dense``: every CTR model reads all of them (they counted one per feature
and stopped on such a schema: ``running_mean should contain 2 elements not 4``)."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import TableConfig
from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io.batch import Batch
from recis.models import DLRM, HHFT, DeepFM, DLRMConfig, HHFTConfig
from recis.models.deepfm import DeepFMConfig
from recis.models.hhft import BlockConfig

B = 16
SCHEMA = Schema(
    dense=[DenseFeature(name="a"), DenseFeature(name="vec", dim=3)],
    sparse=[SparseFeature(name="item")],
    labels=[LabelSpec(name="click")],
)
TABLES = [TableConfig(name="item", dim=4, capacity=32)]


def _models() -> dict:
    blocks = [BlockConfig(name="x", sparse=["item"], dense=["a", "vec"])]
    return {
        "dlrm": lambda: DLRM(
            DLRMConfig(
                tables=TABLES, bottom_mlp=[8, 4], top_mlp=[8], dense_norm=True, wide_dense=True
            ),
            SCHEMA,
            torch.device("cpu"),
        ),
        "deepfm": lambda: DeepFM(
            DeepFMConfig(tables=TABLES, dnn=[8], dense_norm=True), SCHEMA, torch.device("cpu")
        ),
        "hhft": lambda: HHFT(
            HHFTConfig(tables=TABLES, blocks=blocks, d_model=8, dense_norm=True, wide_dense=True),
            SCHEMA,
            torch.device("cpu"),
        ),
        "hhft_feature_tokens": lambda: HHFT(
            HHFTConfig(tables=TABLES, blocks=blocks, d_model=8, dense_tokens="feature"),
            SCHEMA,
            torch.device("cpu"),
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_every_column_of_a_vector_feature_reaches_the_logit(name: str) -> None:
    torch.manual_seed(0)
    model = _models()[name]().eval()
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=torch.arange(B) % 7, lengths=torch.ones(B, dtype=torch.int64)
    )
    dense = torch.randn(B, SCHEMA.dense_dim)  # [B, 4]: a, then vec's three values

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(Batch(sparse=kjt, dense=x, labels={"click": torch.zeros(B)}))["click"]

    base = logits(dense)
    assert base.shape == (B,)
    for col in range(SCHEMA.dense_dim):
        moved = dense.clone()
        moved[:, col] += 1.0
        assert not torch.allclose(logits(moved), base), f"column {col} is not read"
