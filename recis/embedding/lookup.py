"""LookupModule: what every embedding module of recis answers (pooled and sequence lookups,
and the optional ahead stage of the training pipeline)."""

from __future__ import annotations

from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.errors import EmbeddingError


class LookupModule(nn.Module):
    """An embedding module whose ``lookup(kjt)`` gives the pooled KeyedTensor (or None)
    and the sequence JaggedTensors; ``forward`` and ``forward_sequences`` read one each."""

    def lookup(self, kjt: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        raise NotImplementedError

    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` can start anything (the sharded hashed engine)."""
        return False

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        """Start moving ``kjt``'s ids towards where they are looked up, before its
        :meth:`lookup` (the next step's batch, during this step); False: nothing to do."""
        return False

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        """Pooled embeddings ``[B, sum of D]``, one key per pooled feature."""
        kt, _ = self.lookup(kjt)
        if kt is None:
            raise EmbeddingError("no pooled tables: use forward_sequences or lookup")
        return kt

    def forward_sequences(self, kjt: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        """``{feature: JaggedTensor}`` of per-id embeddings for pooling ``none`` tables."""
        return self.lookup(kjt)[1]
