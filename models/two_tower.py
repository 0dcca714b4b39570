"""Dual-tower retrieval (Yi et al., RecSys'19 recipe) with hashed-id and LLM/text towers.

``u(q) = normalize(MLP_q([ids_q ; text_q]))``, ``v(i) = normalize(MLP_i([ids_i ; text_i]))``
with pooled id embeddings and a text tower (:class:`~recis.models.text_towers.LLMTower`
from transformers, or a hashed n-gram bag), shared by both sides.

Training (:meth:`TwoTower.loss`): in-batch softmax over the positive rows (``label > 0.5``):
``logits[a, j] = <u_a, v_j> / tau - log p_j`` with ``p_j`` the streaming frequency estimate
of item ``j`` (:class:`FrequencyEstimator`), duplicates of the row's own item masked, plus
optional extra negatives drawn from a reservoir of past item embeddings (sampled in
proportion to frequency, so the same ``log p`` correction applies). ``forward`` returns the
per-row score ``<u, v> / tau`` (eval AUC over positive and random rows).

Evaluation: with ``retrieval_eval`` set, the trainer's eval ranks the whole corpus for each
eval row (:meth:`TwoTower.retrieval_corpus`, scored by
:func:`recis.train.evaluation.retrieval_metrics`): the corpus is every item of the training
interactions, and each user's items there are excluded from their ranking.
:func:`build_index` encodes a corpus, :func:`exact_topk` is exact top-K by chunked matmul,
:func:`evaluate_retrieval` gives Recall@K and NDCG@K against given relevant lists.
Shapes: ``B`` batch, ``P`` positive rows, ``D`` output dim, ``N`` corpus, ``Q`` queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass as plain_dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.errors import ConfigError
from recis.features import Schema, SparseFeature
from recis.io import make_reader
from recis.io.batch import Batch
from recis.metrics import RetrievalCorpus

from .layers import MLP, SequenceEmbedding, model_embedding, select_features, text_or_list_ids
from .retrieval_layers import (
    FrequencyEstimator,
    in_batch_softmax_loss,
    recency_pools,
)
from .text_towers import HashedBagTower, LLMTower, LLMTowerConfig


@dataclass(config=STRICT)
class TowerConfig:
    """One side: pooled id features, behaviour sequences and an optional text feature.

    ``sequence``: list-of-ids features stored oldest first (e.g. a user's previous items,
    with ``max_len`` and ``truncate: last`` in the schema), pooled by
    :class:`RecencyAttentionPool` instead of a plain mean, so recent items can weigh more.
    """

    sparse: list[str] = Field(default_factory=list)
    sequence: list[str] = Field(default_factory=list)
    text: str | None = None
    max_len: int = Field(default=32, gt=0)
    mlp: list[int] = Field(default_factory=lambda: [64])

    def features(self) -> list[str]:
        """Every feature this side reads: pooled ids, sequences, then its text (if any)."""
        return [*self.sparse, *self.sequence, *filter(None, [self.text])]


@dataclass(config=STRICT)
class RetrievalEvalConfig:
    """Full-corpus evaluation (docs/evaluation.md): each eval row is a query whose item is
    the one relevant item.

    ``seen``: the training interactions (file, folder, glob or list, read with the run's
    schema): every item in them is a corpus item, encoded from its rows' item features,
    and each user's items there are excluded from that user's ranking (``exclude_seen``).
    ``user``: the user key, a column in ``data.schema.extras`` or a one-id ``int`` sparse
    feature, present in the eval rows and in ``seen``. ``format``: of the ``seen`` files.
    """

    seen: str | list[str]
    user: str
    exclude_seen: bool = True
    ks: list[int] = Field(default_factory=lambda: [10, 50])
    batch_size: int = Field(default=8192, gt=0)
    format: str = "parquet"


@dataclass(config=STRICT)
class TwoTowerConfig(ModelConfig):
    name: str = "two_tower"
    query: TowerConfig = Field(default_factory=TowerConfig)
    item: TowerConfig = Field(default_factory=TowerConfig)
    item_id: str = "item_id"  # the feature whose id names an item (frequency, dedupe, index)
    dim: int = Field(default=32, gt=0)
    llm: LLMTowerConfig | None = None  # None: hashed n-gram bag text tower
    text_vocab: int = Field(default=1 << 15, gt=0)
    text_dim: int = Field(default=32, gt=0)
    temperature: float = Field(default=0.05, gt=0)
    logq: bool = True
    freq_buckets: int = Field(default=1 << 16, gt=0)
    freq_alpha: float = Field(default=0.05, gt=0, le=1)
    extra_negatives: int = Field(default=0, ge=0)
    reservoir: int = Field(default=4096, gt=0)
    retrieval_eval: RetrievalEvalConfig | None = None

    def towers(self) -> dict[str, TowerConfig]:
        """``{"query": ..., "item": ...}``: each side's features, by side name."""
        return {"query": self.query, "item": self.item}


def check_towers(config: TwoTowerConfig, schema: Schema) -> None:
    """Each tower's features are in the schema (sequences with ``max_len``), the item id is
    an item feature, and the retrieval evaluation's user key exists; else a ConfigError."""
    sparse = {f.name: f for f in schema.sparse}
    for side, tower in config.towers().items():
        for name in [*tower.sparse, *tower.sequence]:
            if name not in sparse:
                raise ConfigError(f"model.{side}: no sparse feature {name!r} in the schema")
        for name in tower.sequence:
            if sparse[name].max_len is None:
                raise ConfigError(
                    f"model.{side}.sequence: feature {name!r} needs max_len in data.schema"
                )
        # a text is a raw-text feature (data.schema.text) or a list-of-ids sparse feature
        if tower.text and tower.text not in sparse | {t.name: t for t in schema.text}:
            raise ConfigError(
                f"model.{side}.text: no text or sparse feature {tower.text!r} in the schema"
            )
    if config.item_id not in config.item.sparse:
        raise ConfigError(f"model.item_id: {config.item_id!r} is not in model.item.sparse")
    ev = config.retrieval_eval
    if ev is not None and ev.user not in sparse and ev.user not in schema.extras:
        raise ConfigError(
            f"model.retrieval_eval.user: {ev.user!r} is neither in data.schema.extras "
            "nor a sparse feature"
        )


def sequence_embedding(
    config: TwoTowerConfig, feats: list[SparseFeature], device: torch.device, template: bool
) -> SequenceEmbedding:
    """Per-position rows of one side's sequence features ``feats``, from the model's tables."""
    return SequenceEmbedding(
        config.tables, feats, device, config.sparse_optimizer, config.embedding, template=template
    )


class TwoTower(nn.Module):
    """Query and item towers; ``forward`` -> ``{task: <u, v> / tau [B]}``.

    Args:
        config: towers, text tower, loss options.
        schema: the sparse features named by the towers; tasks are the label names.
        device: where parameters live.

    Example::

        model = TwoTower(TwoTowerConfig(tables=[...], query=..., item=...), schema, "cpu")
        u = model.encode_queries(batch)  # [B, D], unit norm
    """

    config_class = TwoTowerConfig
    # buffers (register_buffer): the reservoir of positive items, ``[R, D]`` vectors and
    # ``[R]`` ids, and ``[]`` how many positives it has seen
    bank: torch.Tensor
    bank_ids: torch.Tensor
    seen: torch.Tensor

    def __init__(
        self,
        config: TwoTowerConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        self.tasks = [label.name for label in schema.labels]
        check_towers(config, schema)
        sparse = {f.name: f for f in schema.sparse}
        self.query_features = config.query.features()
        self.item_features = config.item.features()
        # one collection per tower: each side is encoded from its own features alone
        self.embedding = nn.ModuleDict(
            {
                side: model_embedding(
                    config, [sparse[n] for n in tower.sparse], device, template_tables
                )
                for side, tower in config.towers().items()
                if tower.sparse
            }
        )
        dims = {t.name: t.dim for t in config.tables}
        # behaviour sequences: per-position rows, pooled by recency-aware attention
        self.sequences, self.pools = nn.ModuleDict(), nn.ModuleDict()
        for side, tower in config.towers().items():
            if tower.sequence:
                feats = [sparse[n] for n in tower.sequence]
                self.sequences[side] = sequence_embedding(config, feats, device, template_tables)
                self.pools.update(recency_pools(feats, dims, device))
        self.text: LLMTower | HashedBagTower | None = None  # one text tower, both sides
        if config.query.text or config.item.text:
            self.text = (
                LLMTower(config.llm, device)
                if config.llm is not None
                else HashedBagTower(config.text_vocab, config.text_dim, device)
            )
        text_dim = self.text.out_dim if self.text is not None else 0
        # each side's input width: its pooled id and sequence rows, plus the text tower's
        width = {
            side: sum(dims[sparse[n].table_name] for n in [*t.sparse, *t.sequence])
            + (text_dim if t.text else 0)
            for side, t in config.towers().items()
        }
        self.query_mlp, self.item_mlp = (
            MLP(width[side], [*t.mlp, config.dim], last_activation=False, device=device)
            for side, t in config.towers().items()
        )
        self.freq = FrequencyEstimator(config.freq_buckets, config.freq_alpha).to(device)
        self.register_buffer("bank", torch.zeros(config.reservoir, config.dim, device=device))
        self.register_buffer("bank_ids", torch.full((config.reservoir,), -1, device=device))
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64, device=device))
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _encode(self, batch: Batch, side: str) -> torch.Tensor:
        tower = self.config.towers()[side]
        mlp = self.query_mlp if side == "query" else self.item_mlp
        parts = []
        if tower.sparse:
            emb = self.embedding[side](select_features(batch.sparse, tower.sparse)).to_dict()
            parts += [emb[n] for n in tower.sparse]
        if tower.sequence:
            seqs = self.sequences[side](batch.sparse)
            parts += [self.pools[n](*seqs[n]) for n in tower.sequence]
        if tower.text:
            ids, mask = text_or_list_ids(batch, tower.text, tower.max_len)
            assert self.text is not None  # built when either tower names a text feature
            parts.append(self.text(ids, mask))
        return F.normalize(mlp(torch.cat(parts, dim=-1)), dim=-1)

    def encode_queries(self, batch: Batch) -> torch.Tensor:
        """``[B, D]`` unit-norm query embeddings (only query features are read)."""
        return self._encode(batch, "query")

    def encode_items(self, batch: Batch) -> torch.Tensor:
        """``[B, D]`` unit-norm item embeddings (only item features are read)."""
        return self._encode(batch, "item")

    def item_ids(self, batch: Batch) -> torch.Tensor:
        """``[B]`` the id of each row's item."""
        return batch.sparse[self.config.item_id].values()

    def user_keys(self, batch: Batch) -> torch.Tensor:
        """``[B]`` the user key of each row (``retrieval_eval.user``: an extra or a one-id feature)."""
        ev = self.config.retrieval_eval
        if ev is None:
            raise ConfigError("model.retrieval_eval: not set, rows have no user key")
        if ev.user in batch.extras:
            return batch.extras[ev.user].reshape(-1)
        jt = batch.sparse[ev.user]
        if not bool((jt.lengths() == 1).all()):
            raise ConfigError(f"model.retrieval_eval.user: {ev.user!r} must have one id per row")
        return jt.values()

    @torch.no_grad()
    def retrieval_corpus(self) -> RetrievalCorpus | None:
        """Encode the corpus (every item of ``retrieval_eval.seen``) and index seen items.

        An item's vector comes from its last row in the files. None without ``retrieval_eval``.
        """
        ev = self.config.retrieval_eval
        if ev is None:
            return None
        was_training = self.training
        self.eval()
        names = {*self.item_features, ev.user}
        schema = Schema(
            sparse=[f for f in self.schema.sparse if f.name in names],
            text=[t for t in self.schema.text if t.name in names],
            extras=[ev.user] if ev.user in self.schema.extras else [],
        )
        reader = make_reader(
            ev.seen, schema, batch_size=ev.batch_size, format=ev.format, prefetch=0
        )
        device = next(self.parameters()).device
        ids, users, vecs = [], [], []
        for batch in reader:
            batch = batch.to(device)
            ids.append(self.item_ids(batch).cpu().numpy())
            users.append(self.user_keys(batch).cpu().numpy())
            vecs.append(self.encode_items(batch).float().cpu())
        self.train(was_training)
        if not ids:
            raise ConfigError(f"model.retrieval_eval.seen: no rows in {ev.seen!r}")
        item, user, emb = np.concatenate(ids), np.concatenate(users), torch.cat(vecs)
        # the last row of each item (np.unique keeps the first: look at the reversed arrays)
        uniq, first_rev = np.unique(item[::-1], return_index=True)
        corpus = RetrievalCorpus(
            ids=uniq,
            embeddings=emb[torch.from_numpy(len(item) - 1 - first_rev)],
            users=np.empty(0, dtype=np.int64),
            seen_offsets=np.zeros(1, dtype=np.int64),
            seen_items=np.empty(0, dtype=np.int64),
            ks=tuple(ev.ks),
        )
        if ev.exclude_seen:
            pairs = np.unique(np.stack([user, corpus.columns(item)], axis=1), axis=0)
            corpus.users, starts = np.unique(pairs[:, 0], return_index=True)
            corpus.seen_offsets = np.append(starts, len(pairs)).astype(np.int64)
            corpus.seen_items = pairs[:, 1]
        return corpus

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        u, v = self.encode_queries(batch), self.encode_items(batch)
        if self.training:  # kept for loss(): the embeddings are not part of the task logits
            self._last = (u, v, self.item_ids(batch))
        score = (u * v).sum(-1) / self.config.temperature  # [B]
        return {t: score for t in self.tasks}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """In-batch softmax with logQ correction over the positive rows, one value per task."""
        if self._last is None:
            raise RuntimeError("TwoTower.loss needs a forward pass in training mode first")
        u, v, ids = self._last
        self._last = None
        task = self.tasks[0]
        pos = batch.labels[task] > 0.5
        u, v, ids = u[pos], v[pos], ids[pos]
        self.freq.update(ids)
        cand_v, cand_ids = v, ids
        k = self.config.extra_negatives
        filled = int(min(self.seen.item(), self.config.reservoir))
        if k and filled:
            pick = torch.randint(filled, (k,), device=v.device)
            cand_v = torch.cat([v, self.bank[pick]])
            cand_ids = torch.cat([ids, self.bank_ids[pick]])
        log_q = self.freq.log_prob(cand_ids) if self.config.logq else None
        # another copy of a row's own item is not a negative
        mask = ids[:, None] == cand_ids[None, :]
        mask[torch.arange(len(ids)), torch.arange(len(ids))] = False
        loss = in_batch_softmax_loss(u, cand_v, self.config.temperature, log_q, mask)
        if k:
            self._remember(v.detach(), ids)
        return {t: loss for t in self.tasks}

    @torch.no_grad()
    def _remember(self, v: torch.Tensor, ids: torch.Tensor) -> None:
        """Reservoir sampling (Algorithm R) over the stream of positive items."""
        for row in range(v.shape[0]):
            n = int(self.seen.item())
            slot = n if n < self.config.reservoir else int(torch.randint(n + 1, ()).item())
            if slot < self.config.reservoir:
                self.bank[slot] = v[row]
                self.bank_ids[slot] = ids[row]
            self.seen += 1


@plain_dataclass
class ItemIndex:
    """The encoded corpus: ``ids [N]`` and unit-norm ``embeddings [N, D]``."""

    ids: torch.Tensor
    embeddings: torch.Tensor


@torch.no_grad()
def build_index(model: TwoTower, item_batches: Iterable[Batch]) -> ItemIndex:
    """Encode every item of ``item_batches`` (batches holding the item features)."""
    model.eval()
    device = next(model.parameters()).device
    ids, embs = [], []
    for batch in item_batches:
        batch = batch.to(device)
        ids.append(model.item_ids(batch))
        embs.append(model.encode_items(batch))
    return ItemIndex(torch.cat(ids), torch.cat(embs))


@torch.no_grad()
def exact_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner products: ``queries [Q, D]``, ``items [N, D]`` -> scores, rows ``[Q, k]``.

    The corpus is scanned in chunks of ``chunk`` rows; each chunk's top-k is merged with
    the running top-k, so memory is ``Q x (k + chunk)``.
    """
    k = min(k, items.shape[0])
    best_s = torch.full((queries.shape[0], 0), float("-inf"), device=queries.device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, items.shape[0], chunk):
        s = queries @ items[start : start + chunk].T  # [Q, c]
        top_s, top_i = s.topk(min(k, s.shape[1]), dim=1)
        cat_s = torch.cat([best_s, top_s], dim=1)
        cat_i = torch.cat([best_i, top_i + start], dim=1)
        best_s, sel = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
        best_i = cat_i.gather(1, sel)
    return best_s, best_i


def recall_ndcg(
    retrieved: np.ndarray, relevant: list[np.ndarray], ks: Iterable[int]
) -> dict[str, float]:
    """Mean Recall@K (``|top-K & R| / |R|``) and binary NDCG@K over queries.

    ``retrieved [Q, K_max]`` item ids in rank order; ``relevant[q]`` the relevant ids.
    """
    out: dict[str, float] = {}
    discount = 1.0 / np.log2(np.arange(2, retrieved.shape[1] + 2))
    for k in ks:
        rec, ndcg = [], []
        for row, rel in zip(retrieved[:, :k], relevant):
            hit = np.isin(row, rel)
            rec.append(hit.sum() / max(len(rel), 1))
            ideal = discount[: min(k, len(rel))].sum()
            ndcg.append((hit * discount[: len(row)]).sum() / ideal if ideal else 0.0)
        out[f"recall@{k}"] = float(np.mean(rec))
        out[f"ndcg@{k}"] = float(np.mean(ndcg))
    return out


@torch.no_grad()
def evaluate_retrieval(
    model: TwoTower,
    query_batches: Iterable[Batch],
    index: ItemIndex,
    relevant: list[np.ndarray],
    ks: Iterable[int] = (50,),
) -> dict[str, float]:
    """Recall@K and NDCG@K of exact top-K retrieval; ``relevant`` follows the query order."""
    model.eval()
    ks = list(ks)
    device = index.embeddings.device
    found = []
    for batch in query_batches:
        u = model.encode_queries(batch.to(device))
        _, rows = exact_topk(u, index.embeddings, max(ks))
        found.append(index.ids[rows].cpu().numpy())
    return recall_ndcg(np.concatenate(found), relevant, ks)


def read_relevant(path: str | Path, column: str = "relevant") -> list[np.ndarray]:
    """The relevant item ids per query, from a list<int64> column of a parquet file."""
    col = pq.read_table(path, columns=[column]).column(column).to_pylist()
    return [np.asarray(r, dtype=np.int64) for r in col]
