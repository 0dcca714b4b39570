"""DeepBoW (KDD'24, arXiv 2407.09395): query-product relevance through sparse bags of words.

Query and product are each encoded (one shared text encoder) into a sparse bag of
``(term, weight)`` pairs over a term space of ``V`` hashed n-gram ids:

* **term-weighting bag**: the terms present in the text, weighted by an attention score
  normalized over the text (softmax over positions; repeated terms add up);
* **synonym-expansion bag**: ``log(1 + relu(W h + b))`` over the whole vocabulary from the
  attention-pooled text state ``h``, keeping the top ``expansion_k`` terms (terms that may
  not appear in the text);
* the bag is their sum, cut to the ``bag_size`` largest weights (the sparsity budget).

Relevance ``s = sum_{t in Q and P} w_q(t) w_p(t)`` (only shared terms contribute), calibrated
as ``logit = a s + b``. Training: BCE against the graded label scaled to ``[0, 1]`` plus
``sparsity_weight`` x FLOPS regularizer ``sum_t (mean_batch w(t))^2`` on both sides.

Our reading of the paper (inferred): one merged bag per text; expansion from the pooled
state rather than max-pooled per position (cheaper on CPU); product bags are exported by
:meth:`DeepBoW.encode_products` for an inverted index and scored by :func:`score_bags`.
Shapes: ``B`` batch, ``T`` tokens, ``d`` width, ``V`` term space, ``K`` bag size.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from safetensors.numpy import load_file, save_file
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.errors import ConfigError
from recis.features import Schema
from recis.io.batch import Batch

from .layers import attention_pool, masked_softmax
from .relevance_head import RelevanceHead
from .text_towers import LLMTower, LLMTowerConfig, text_input


@dataclass(config=STRICT)
class DeepBoWConfig(ModelConfig):
    name: str = "deepbow"
    # text features (raw strings, see docs/text.md) or list-of-ids features (hashed n-grams)
    query_text: str = "query_tokens"
    product_text: str = "product_tokens"
    product_id: str | None = "product_id"  # id feature used by encode_products
    max_len: int = Field(default=128, gt=0)  # tokens per text (positions of the encoder)
    vocab: int = Field(default=8192, gt=0)  # term space: token id mod vocab
    dim: int = Field(default=32, gt=0)
    layers: int = Field(default=1, ge=0)
    heads: int = Field(default=2, gt=0)
    llm: LLMTowerConfig | None = None  # an LLM encoder instead of the small transformer
    expansion_k: int = Field(default=16, ge=0)
    bag_size: int = Field(default=32, gt=0)
    sparsity_weight: float = Field(default=1e-3, ge=0)
    # side inputs of the calibration (models/relevance_head.py; our addition, see
    # docs/models/deepbow.md): the schema's dense features (e.g. the lexical match signals of
    # recis.io.lexical) through an MLP of dense_hidden units (0: linear), and a learned
    # query-independent prior over the product's terms
    dense_inputs: bool = True
    dense_hidden: int = Field(default=16, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    product_prior: bool = False
    # the prior's parameter multiplier: each term is in few batches, so with Adam its
    # effective step is prior_scale x lr (a per-parameter learning rate without a second group)
    prior_scale: float = Field(default=10.0, gt=0)
    # the product terms' weights in the prior: uniform (1 / T) or the bag's attention weights
    prior_weights: Literal["uniform", "bag"] = "uniform"


class TextEncoder(nn.Module):
    """Token ids ``[B, T]`` + mask -> states ``[B, T, d]``: small transformer or an LLM."""

    def __init__(self, config: DeepBoWConfig, device: torch.device) -> None:
        super().__init__()
        self.vocab = config.vocab
        self.llm = LLMTower(config.llm, device) if config.llm is not None else None
        if self.llm is not None:
            self.out_dim = self.llm.out_dim
            return
        d = config.dim
        self.embedding = nn.Embedding(config.vocab, d, device=device)
        self.position = nn.Embedding(config.max_len, d, device=device)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True, device=device
        )
        self.encoder = (
            nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
            if config.layers
            else None
        )
        self.out_dim = d

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.llm is not None:
            return self.llm.hidden(ids, mask)
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding(torch.remainder(ids, self.vocab)) + self.position(pos)[None]
        if self.encoder is not None:
            # an empty text (null title) masks every key: attention would give NaN in eval,
            # so its first position stays visible; its states are zeroed below anyway
            keys = mask.clone()
            keys[:, 0] |= ~mask.any(1)
            x = self.encoder(x, src_key_padding_mask=~keys)
        return x * mask.unsqueeze(-1)


def _text(batch: Batch, name: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B, T]`` and mask of a text: ``batch.text[name]`` or a list-of-ids feature."""
    return text_input(batch, name, max_len)


def score_bags(
    q_terms: torch.Tensor, q_weights: torch.Tensor, p_terms: torch.Tensor, p_weights: torch.Tensor
) -> torch.Tensor:
    """``sum_{t shared} w_q(t) w_p(t)`` row by row from sparse bags ``[B, K]`` (weight 0 = empty)."""
    match = q_terms[:, :, None] == p_terms[:, None, :]  # [B, Kq, Kp]
    return (match * q_weights[:, :, None] * p_weights[:, None, :]).sum((1, 2))


class DeepBoW(nn.Module):
    """DeepBoW relevance model; ``forward`` -> ``{task: a s + b [B]}``.

    Args:
        config: encoder, term space and sparsity budget.
        schema: must hold the two text features; tasks are the label names (graded
            labels scaled to ``[0, 1]`` train as soft BCE targets).
        device: where parameters live.

    Example::

        model = DeepBoW(DeepBoWConfig(), schema, "cpu")
        terms, weights = model.bag(ids, mask)  # [B, K] each
    """

    config_class = DeepBoWConfig

    def __init__(
        self,
        config: DeepBoWConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        # template_tables: no hashed tables here (the zoo's one constructor signature)
        super().__init__()
        self.config = config
        self.tasks = [label.name for label in schema.labels]
        # the text features' specs, so that explain() re-tokenizes texts as the reader did
        self.text_features = {
            f.name: f for f in schema.text if f.name in (config.query_text, config.product_text)
        }
        self.encoder = TextEncoder(config, device)
        d = self.encoder.out_dim
        self.term_score = nn.Linear(d, 1, device=device)
        self.pool_score = nn.Linear(d, 1, device=device)
        self.expand = nn.Linear(d, config.vocab, device=device) if config.expansion_k else None
        self.head = relevance_head(config, schema, len(self.tasks), device)
        # prior of each term when it is in the product bag, per task: zero until trained
        self.prior = (
            nn.Parameter(torch.zeros(config.vocab, len(self.tasks), device=device))
            if config.product_prior
            else None
        )
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def dense_bag(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The bag as a dense ``[B, V]`` vector with at most ``bag_size`` non-zeros per row."""
        cfg = self.config
        h = self.encoder(ids, mask)  # [B, T, d]
        terms = torch.remainder(ids, cfg.vocab)
        w = masked_softmax(self.term_score(h).squeeze(-1), mask)  # [B, T], sums to 1
        bag = torch.zeros(ids.shape[0], cfg.vocab, device=h.device, dtype=h.dtype)
        bag = bag.scatter_add(1, terms, w)
        if self.expand is not None:
            pooled = attention_pool(h, mask, self.pool_score)  # [B, d]
            exp = torch.log1p(F.relu(self.expand(pooled)))  # [B, V]
            top, idx = exp.topk(min(cfg.expansion_k, cfg.vocab), dim=1)
            bag = bag + torch.zeros_like(bag).scatter(1, idx, top)
        top, idx = bag.topk(min(cfg.bag_size, cfg.vocab), dim=1)
        return torch.zeros_like(bag).scatter(1, idx, top)

    def bag(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse bag: terms ``[B, K]`` and weights ``[B, K]`` (``K = bag_size``, unused = 0)."""
        weights, terms = self.dense_bag(ids, mask).topk(
            min(self.config.bag_size, self.config.vocab), 1
        )
        return terms, weights

    def term_bag(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The term-weighting bag in token order: terms ``[B, T]`` (id mod ``V``) and weights
        ``[B, T]`` (0 at padding; a repeated term's weights add up when scored)."""
        h = self.encoder(ids, mask)  # [B, T, d]
        return torch.remainder(ids, self.config.vocab), masked_softmax(
            self.term_score(h).squeeze(-1), mask
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        q_in = _text(batch, cfg.query_text, cfg.max_len)
        p_in = _text(batch, cfg.product_text, cfg.max_len)
        logits = self.score_texts(q_in, p_in, batch.dense)
        return {t: logits[:, i] for i, t in enumerate(self.tasks)}

    def score_texts(
        self,
        q_in: tuple[torch.Tensor, torch.Tensor],
        p_in: tuple[torch.Tensor, torch.Tensor],
        dense: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, N]`` of query and product texts (each token ids ``[B, T]`` and mask)
        and the dense features ``[B, Dd]`` (read when ``dense_inputs``): what ``forward``
        computes, in tensors only (recis.export exports it as one graph)."""
        cfg = self.config
        if self.expand is None and max(q_in[0].shape[1], p_in[0].shape[1]) <= cfg.bag_size:
            # no expansion and no cut to bag_size: the bags are the texts' own terms, scored
            # pairwise [B, Tq, Tp] instead of through [B, V] vectors (same sums, V/T times less)
            (qt, qw), (pt, pw) = self.term_bag(*q_in), self.term_bag(*p_in)
            s = score_bags(qt, qw, pt, pw)
            prior = self._prior(*p_in, (pt, pw))
            bags: tuple = ((qt, qw), (pt, pw))
        else:
            q, p = self.dense_bag(*q_in), self.dense_bag(*p_in)
            s = (q * p).sum(-1)  # only shared terms are non-zero in both
            prior = self._prior(*p_in, p)
            bags = (q, p)
        if self.training:
            self._last = bags
        return self.head(s, dense if cfg.dense_inputs else None, prior)

    def _prior(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        bag: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor | None:
        """``[B, N]``: ``prior_scale * sum_t w(t) U[t]`` over the product's terms, ``w`` uniform
        over its tokens (``1 / T``) or the bag's weights (a dense ``[B, V]`` or a pairwise bag)."""
        if self.prior is None:
            return None
        if self.config.prior_weights == "uniform":
            weights = mask.float() / mask.sum(1, keepdim=True).clamp_min(1)
            bag = (torch.remainder(ids, self.config.vocab), weights)
        if isinstance(bag, torch.Tensor):
            return self.config.prior_scale * bag @ self.prior
        terms, weights = bag
        return self.config.prior_scale * (weights.unsqueeze(-1) * self.prior[terms]).sum(1)

    def _flops(self, bag: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``sum_t (mean_batch |w(t)|)^2`` of a dense ``[B, V]`` bag or a pairwise
        ``(terms, weights)`` one."""
        if isinstance(bag, torch.Tensor):
            return bag.abs().mean(0).pow(2).sum()
        terms, weights = bag
        per_term = weights.new_zeros(self.config.vocab).index_add(
            0, terms.flatten(), weights.abs().flatten()
        )
        return (per_term / terms.shape[0]).pow(2).sum()

    @property
    def scale(self) -> torch.Tensor:
        """Calibration slopes ``a`` ``[N]`` (one per task)."""
        return self.head.scale

    @property
    def bias(self) -> torch.Tensor:
        """Calibration offsets ``b`` ``[N]``."""
        return self.head.bias

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Soft-label BCE per task plus the FLOPS sparsity penalty (added to the first task)."""
        out = {
            t: F.binary_cross_entropy_with_logits(outputs[t].float(), batch.labels[t].clamp(0, 1))
            for t in self.tasks
        }
        if self._last is not None and self.config.sparsity_weight:
            q, p = self._last
            flops = self._flops(q) + self._flops(p)
            out[self.tasks[0]] = out[self.tasks[0]] + self.config.sparsity_weight * flops
        self._last = None
        return out

    def calibrate(self, s: torch.Tensor) -> torch.Tensor:
        """Raw bag score ``[B]`` -> the first task's logit ``a s + b`` (without the dense
        inputs and the prior: the logit itself when the model has neither)."""
        return self.scale[0] * s + self.bias[0]

    @torch.no_grad()
    def encode_products(
        self,
        batches: Iterable[Batch],
        path: str | Path,
        format: Literal["parquet", "safetensors"] = "parquet",
    ) -> Path:
        """Export the product bags of ``batches`` (rows with the product text and id).

        parquet: ``product_id`` int64, ``terms`` list<int64>, ``weights`` list<float32>;
        safetensors: ``product_id [N]``, ``indptr [N+1]``, ``terms [nnz]``, ``weights [nnz]``.
        Zero weights are dropped. Returns ``path``.
        """
        self.eval()
        cfg = self.config
        ids, terms, weights = [], [], []
        for batch in batches:
            t, w = self.bag(*_text(batch, cfg.product_text, cfg.max_len))
            if cfg.product_id and cfg.product_id in batch.sparse.keys():
                ids.append(batch.sparse[cfg.product_id].values().cpu().numpy())
            else:
                start = sum(len(x) for x in ids)
                ids.append(np.arange(start, start + t.shape[0]))
            for row_t, row_w in zip(t.cpu().numpy(), w.float().cpu().numpy()):
                keep = row_w > 0
                terms.append(row_t[keep].astype(np.int64))
                weights.append(row_w[keep].astype(np.float32))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pid = np.concatenate(ids).astype(np.int64)
        if format == "parquet":
            table = pa.table(
                {
                    "product_id": pid,
                    "terms": pa.array([x.tolist() for x in terms], pa.list_(pa.int64())),
                    "weights": pa.array([x.tolist() for x in weights], pa.list_(pa.float32())),
                }
            )
            pq.write_table(table, path, write_page_checksum=True)
        elif format == "safetensors":
            lengths = np.array([len(x) for x in terms], dtype=np.int64)
            save_file(
                {
                    "product_id": pid,
                    "indptr": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    "terms": np.concatenate(terms) if terms else np.zeros(0, np.int64),
                    "weights": np.concatenate(weights) if weights else np.zeros(0, np.float32),
                },
                str(path),
            )
        else:
            raise ConfigError(f"encode_products.format: {format!r} is not parquet or safetensors")
        return path

    def _tokens(self, name: str, text: str) -> list[tuple[int, str]]:
        """``(id, piece)`` of one text, tokenized as the reader tokenizes feature ``name``
        (a list-of-ids feature: the synthetic data's hashed word 1-2-grams)."""
        feature = self.text_features.get(name)
        if feature is None:
            from recis.io.tokenizers import hashed_ngrams, ngrams

            return list(zip(hashed_ngrams([text])[0].tolist(), ngrams(text)))
        from recis.io.tokenizers import tokenizer_for

        pairs = tokenizer_for(feature).pieces(text)
        return pairs[-feature.max_length :] if feature.truncate == "last" else pairs

    @torch.no_grad()
    def explain(
        self, query: str, product: str, vocabulary: dict[int, str] | None = None
    ) -> list[dict[str, float | str | int]]:
        """The shared terms of ``query`` and ``product`` and their contributions, largest first.

        The texts are re-tokenized with the query / product feature's tokenizer, pieces
        kept, so each entry names its term: ``term`` (the word, n-gram or subword; for an
        expansion term absent from both texts, its name in ``vocabulary`` (see
        :func:`recis.io.tokenizers.piece_names`), else ``#id``), ``term_id`` (id mod
        ``vocab``), ``in_query`` / ``in_product`` (1 if a piece of that text has the id,
        else 0: an expansion term), ``query_weight``, ``product_weight``, ``contribution``
        (their product; the contributions sum to the raw score ``s``).
        """
        self.eval()
        cfg = self.config
        names: dict[int, str] = {}
        present: list[set[int]] = []
        bags = []
        device = self.scale.device
        for name, text in ((cfg.query_text, query), (cfg.product_text, product)):
            pairs = self._tokens(name, text)[: cfg.max_len]
            for i, piece in pairs:
                names.setdefault(int(i % cfg.vocab), piece)
            present.append({int(i % cfg.vocab) for i, _ in pairs})
            ids = torch.tensor([i for i, _ in pairs] or [0], dtype=torch.int64, device=device)
            mask = torch.tensor([True] * len(pairs) or [False], device=device)
            bags.append(self.dense_bag(ids.reshape(1, -1), mask.reshape(1, -1))[0])
        q, p = bags
        shared = torch.nonzero((q > 0) & (p > 0)).flatten().tolist()
        rows = [
            {
                "term": names.get(t) or (vocabulary or {}).get(t, f"#{t}"),
                "term_id": t,
                "in_query": int(t in present[0]),
                "in_product": int(t in present[1]),
                "query_weight": float(q[t]),
                "product_weight": float(p[t]),
                "contribution": float(q[t] * p[t]),
            }
            for t in shared
        ]
        return sorted(rows, key=lambda r: -float(r["contribution"]))

    @torch.no_grad()
    def explain_prior(self, product: str) -> list[dict[str, float | str | int]]:
        """The product prior's terms of ``product`` (``product_prior``), largest first.

        Each entry: ``term`` (the piece), ``term_id`` (id mod ``vocab``), ``weight`` (its
        ``w(t)``: ``1/T`` or its bag weight, repeats added) and per task ``prior/<task>``,
        ``prior_scale * w(t) * U[t, task]``; per task they sum to the prior added to the
        logit. Sorted by the first task's value, largest first. Empty without a prior.
        """
        if self.prior is None:
            return []
        self.eval()
        cfg = self.config
        pairs = self._tokens(cfg.product_text, product)[: cfg.max_len]
        if not pairs:
            return []
        device = self.prior.device
        ids = torch.tensor([[i for i, _ in pairs]], dtype=torch.int64, device=device)
        mask = torch.ones_like(ids, dtype=torch.bool)
        if cfg.prior_weights == "uniform":
            terms, weights = torch.remainder(ids, cfg.vocab), mask.float() / ids.shape[1]
        else:
            terms, weights = self.term_bag(ids, mask)
        per_term: dict[int, float] = {}
        names: dict[int, str] = {}
        for t, w, (_, piece) in zip(terms[0].tolist(), weights[0].tolist(), pairs):
            per_term[t] = per_term.get(t, 0.0) + w
            names.setdefault(t, piece)
        rows: list[dict[str, float | str | int]] = [
            {
                "term": names[t],
                "term_id": t,
                "weight": w,
                **{
                    f"prior/{task}": cfg.prior_scale * w * float(self.prior[t, k])
                    for k, task in enumerate(self.tasks)
                },
            }
            for t, w in per_term.items()
        ]
        first = f"prior/{self.tasks[0]}"
        return sorted(rows, key=lambda r: -float(r[first]))


def load_bags(path: str | Path) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Read exported product bags: ``(product_id [N], terms per product, weights per product)``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        t = load_file(str(path))
        ptr = t["indptr"]
        terms = [t["terms"][ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]
        weights = [t["weights"][ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]
        return t["product_id"], terms, weights
    table = pq.read_table(path)
    terms = [np.asarray(x, np.int64) for x in table.column("terms").to_pylist()]
    weights = [np.asarray(x, np.float32) for x in table.column("weights").to_pylist()]
    return table.column("product_id").to_numpy(), terms, weights


def score_exported(
    q_terms: np.ndarray, q_weights: np.ndarray, p_terms: np.ndarray, p_weights: np.ndarray
) -> float:
    """Raw score of one query bag against one exported product bag (an inverted-index merge)."""
    common, qi, pi = np.intersect1d(q_terms, p_terms, return_indices=True)
    return float((q_weights[qi].astype(np.float64) * p_weights[pi]).sum()) if len(common) else 0.0


def relevance_head(
    config: DeepBoWConfig, schema: Schema, tasks: int, device: torch.device
) -> RelevanceHead:
    """The calibration head, reading the schema's dense features when ``dense_inputs``."""
    dense_dim = schema.dense_dim if config.dense_inputs else 0
    return RelevanceHead(tasks, dense_dim, config.dense_hidden, config.dropout, device)


__all__ = [
    "DeepBoW",
    "DeepBoWConfig",
    "load_bags",
    "score_bags",
    "score_exported",
]
