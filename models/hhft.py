"""HHFT: Hierarchical Heterogeneous Feature Transformer (Taobao, arXiv 2511.20235) for CTR.

From features to logits:

1. **Semantic feature partitioning.** The config groups features into blocks (user
   profile, item, context/query, behaviour sequence, ...). A block's pooled sparse
   embeddings and dense values are concatenated (``[B, D_blk]``) and projected by the
   block's own linear map to ``tokens`` tokens of width ``d`` (``[B, tokens, d]``).
2. **Behaviour sequence.** A sequence block's per-position embeddings ``[B, L, Ds]``
   are pooled by target attention whose query is the candidate item's embeddings
   (the block's ``target`` features), padded positions masked; the pooled vector is
   then projected to tokens like any other block.
3. **Heterogeneous transformer encoder** (:class:`HeterogeneousLayer`): attention
   across all ``N`` tokens, with Q/K/V/output projections and FFNs specific to the
   block each token came from, so feature types are not mixed by shared weights.
4. **Hiformer** (Gui et al. 2023, arXiv 2311.05884, :class:`HiformerLayer`): per-token
   queries; keys and values from one composite projection of the concatenation of all
   tokens (``[B, N d] x [N d, N d]``, optionally factorized through rank ``r``);
   per-token FFN. The last layer only computes the task tokens (pruning).
5. One learned task token per task; each task's head is an MLP on its task token.

Our reading (the paper's text is not public here): block token = block-specific linear
map of the concatenated block embeddings; pre-LayerNorm residual layers; one extra
"block" of weights for the task tokens. Shapes: ``B`` batch, ``N`` tokens, ``d`` model
width, ``H`` heads, ``L`` sequence length, ``T`` tasks.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.embedding import build_embedding_collection
from recis.errors import ConfigError
from recis.features import Schema
from recis.io.batch import Batch

from .layers import MLP, SequenceEmbedding, dense_norm, masked_softmax, select_features


@dataclass(config=STRICT)
class BlockConfig:
    """One semantic block of features.

    ``sparse``/``dense`` name pooled id features and dense features of the schema;
    ``sequence`` names list-of-ids features aligned by position (tables with
    ``pooling: none``) pooled by target attention over ``target`` (pooled id features
    describing the candidate item).
    """

    name: str
    sparse: list[str] = Field(default_factory=list)
    dense: list[str] = Field(default_factory=list)
    sequence: list[str] = Field(default_factory=list)
    target: list[str] = Field(default_factory=list)
    tokens: int = Field(default=1, gt=0)


@dataclass(config=STRICT)
class HHFTConfig(ModelConfig):
    name: str = "hhft"
    blocks: list[BlockConfig] = Field(default_factory=list)
    d_model: int = Field(default=32, gt=0)
    num_heads: int = Field(default=2, gt=0)
    hetero_layers: int = Field(default=1, ge=0)
    hiformer_layers: int = Field(default=1, ge=0)
    ffn_mult: int = Field(default=2, gt=0)
    # rank of the composite key/value projection; None = full (unfactorized)
    kv_rank: int | None = Field(default=None, gt=0)
    prune_last: bool = True
    head_mlp: list[int] = Field(default_factory=lambda: [64])
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # a linear term over all dense inputs added to every task's logit (as DeepFM's
    # first-order dense term): dense features that are already good logits reach the output
    # directly, not only through their block's token and the encoder
    wide_dense: bool = False
    # batch normalisation of the dense inputs before they enter their blocks and the wide
    # term: counts, rates and ratings arrive on different scales and off-centre
    dense_norm: bool = False


def _grouped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Token-wise linear map: ``x [B, N, i]``, ``weight [N, i, o]``, ``bias [N, o]`` -> ``[B, N, o]``."""
    return torch.einsum("bni,nio->bno", x, weight) + bias


def _init_grouped(groups: int, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    bound = 1.0 / math.sqrt(fan_in)
    w = nn.Parameter(torch.empty(groups, fan_in, fan_out).uniform_(-bound, bound))
    return w, nn.Parameter(torch.zeros(groups, fan_out))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot product: ``q [B, Nq, d]``, ``k, v [B, N, d]`` -> ``[B, Nq, d]``."""
    b, nq, d = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

    out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, nq, d)


class HeterogeneousLayer(nn.Module):
    """Transformer layer whose Q/K/V/output projections and FFN depend on the token's block.

    Shapes: ``x [B, N, d] -> [B, N, d]``; ``groups[n]`` is the block of token ``n``.
    With all groups' weights equal, :meth:`attention` is standard multi-head attention.
    """

    def __init__(
        self, groups: list[int], d: int, heads: int, ffn_mult: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if d % heads:
            raise ConfigError(f"model.d_model: {d} is not divisible by num_heads {heads}")
        g = max(groups) + 1
        self.heads = heads
        self.register_buffer("groups", torch.tensor(groups), persistent=False)
        self.wq, self.bq = _init_grouped(g, d, d)
        self.wk, self.bk = _init_grouped(g, d, d)
        self.wv, self.bv = _init_grouped(g, d, d)
        self.wo, self.bo = _init_grouped(g, d, d)
        self.w1, self.b1 = _init_grouped(g, d, ffn_mult * d)
        self.w2, self.b2 = _init_grouped(g, ffn_mult * d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention sub-layer alone (no norm, no residual): ``[B, N, d] -> [B, N, d]``."""
        g = self.groups
        q = _grouped(x, self.wq[g], self.bq[g])
        k = _grouped(x, self.wk[g], self.bk[g])
        v = _grouped(x, self.wv[g], self.bv[g])
        return _grouped(_attend(q, k, v, self.heads), self.wo[g], self.bo[g])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        x = x + self.drop(self.attention(self.norm1(x)))
        h = torch.relu(_grouped(self.norm2(x), self.w1[g], self.b1[g]))
        return x + self.drop(_grouped(h, self.w2[g], self.b2[g]))


class HiformerLayer(nn.Module):
    """Hiformer layer: per-token queries, composite keys/values over all tokens, per-token FFN.

    Keys and values come from ``concat(x) [B, N d]`` times one ``[N d, 2 N d]`` matrix,
    or, with ``rank``, times ``[N d, r] x [r, 2 N d]`` (the serving factorization).
    ``forward(x, only=idx)`` computes the outputs of tokens ``idx`` alone: ``[B, len(idx), d]``
    (last-layer pruning; keys/values still see every token).

    Shapes: ``x [B, N, d] -> [B, N, d]``.
    """

    def __init__(
        self,
        num_tokens: int,
        d: int,
        heads: int,
        ffn_mult: int,
        rank: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d % heads:
            raise ConfigError(f"model.d_model: {d} is not divisible by num_heads {heads}")
        n = num_tokens
        self.heads, self.n, self.d = heads, n, d
        self.wq, self.bq = _init_grouped(n, d, d)
        self.wo, self.bo = _init_grouped(n, d, d)
        self.w1, self.b1 = _init_grouped(n, d, ffn_mult * d)
        self.w2, self.b2 = _init_grouped(n, ffn_mult * d, d)
        if rank is None:
            self.kv = nn.Linear(n * d, 2 * n * d)
        else:
            self.kv = nn.Sequential(nn.Linear(n * d, rank, bias=False), nn.Linear(rank, 2 * n * d))
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        h = self.norm1(x)
        k, v = self.kv(h.reshape(b, self.n * self.d)).reshape(b, 2 * self.n, self.d).chunk(2, 1)
        idx = only if only is not None else torch.arange(self.n, device=x.device)
        x, h = x[:, idx], h[:, idx]
        q = _grouped(h, self.wq[idx], self.bq[idx])
        x = x + self.drop(_grouped(_attend(q, k, v, self.heads), self.wo[idx], self.bo[idx]))
        f = torch.relu(_grouped(self.norm2(x), self.w1[idx], self.b1[idx]))
        return x + self.drop(_grouped(f, self.w2[idx], self.b2[idx]))


class TargetAttention(nn.Module):
    """Pool a behaviour sequence by attention from the candidate item (DIN-style, scaled dot).

    Shapes: ``seq [B, L, Ds]``, ``mask [B, L]``, ``target [B, Dt]`` -> ``[B, Ds]``;
    padded positions get zero weight, an empty sequence pools to zeros.
    """

    def __init__(self, seq_dim: int, target_dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(target_dim, seq_dim)
        self.k = nn.Linear(seq_dim, seq_dim)
        self.scale = 1.0 / math.sqrt(seq_dim)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bd,bld->bl", self.q(target), self.k(seq)) * self.scale
        return torch.einsum("bl,bld->bd", masked_softmax(scores, mask), seq)


class HHFT(nn.Module):
    """HHFT CTR model: block tokens -> heterogeneous encoder -> Hiformer -> per-task heads.

    Args:
        config: blocks and layer sizes.
        schema: features and labels; tasks are the label names.
        device: where parameters live.

    Example::

        model = HHFT(HHFTConfig(tables=[...], blocks=[...]), schema, torch.device("cpu"))
        logits = model(batch)  # {"click": [B]}
    """

    config_class = HHFTConfig

    def __init__(
        self,
        config: HHFTConfig,
        schema: Schema,
        device: torch.device,
        template_tables: bool = False,
    ) -> None:
        super().__init__()
        if not config.blocks:
            raise ConfigError("model.blocks: at least one block is required")
        self.config = config
        self.tasks = [label.name for label in schema.labels]
        sparse = {f.name: f for f in schema.sparse}
        dense_index = {f.name: i for i, f in enumerate(schema.dense)}
        dims = {t.name: t.dim for t in config.tables}
        pooled, seq = [], []
        for i, blk in enumerate(config.blocks):
            for kind, names in (("sparse", blk.sparse + blk.target), ("sequence", blk.sequence)):
                for name in names:
                    if name not in sparse:
                        raise ConfigError(f"model.blocks.{i}.{kind}: no sparse feature {name!r}")
                    (seq if kind == "sequence" else pooled).append(name)
            for name in blk.dense:
                if name not in dense_index:
                    raise ConfigError(f"model.blocks.{i}.dense: no dense feature {name!r}")
            if blk.sequence and not blk.target:
                raise ConfigError(
                    f"model.blocks.{i}.target: a sequence block needs target features"
                )
        self.seq_names = list(dict.fromkeys(seq))
        # a pooled feature on a table that a sequence also uses (the candidate item and the
        # items of the history) is looked up in the sequence tables: one embedding per item,
        # so target attention compares candidate and history in the same space (DIN)
        seq_tables = {sparse[n].table_name for n in self.seq_names}
        names = list(dict.fromkeys(pooled))
        self.shared_names = [n for n in names if sparse[n].table_name in seq_tables]
        self.pooled_names = [n for n in names if n not in self.shared_names]
        self.pooled = (
            build_embedding_collection(
                config.tables,
                [sparse[n] for n in self.pooled_names],
                device,
                config.sparse_optimizer,
                engine=config.embedding,
                template=template_tables,
            )
            if self.pooled_names
            else None
        )
        self.sequence = (
            SequenceEmbedding(
                config.tables,
                [sparse[n] for n in self.seq_names + self.shared_names],
                device,
                config.sparse_optimizer,
                engine=config.embedding,
                template=template_tables,
            )
            if self.seq_names
            else None
        )
        pooling = {t.name: t.pooling for t in config.tables}
        self.shared_mean = {
            n: pooling.get(sparse[n].table_name) == "mean" for n in self.shared_names
        }

        def width(name: str) -> int:
            return dims[sparse[name].table_name]

        d = config.d_model
        self.block_dense = [[dense_index[n] for n in blk.dense] for blk in config.blocks]
        self.target_attn = nn.ModuleDict()
        self.proj = nn.ModuleList()
        groups: list[int] = []
        for i, blk in enumerate(config.blocks):
            in_dim = sum(width(n) for n in blk.sparse) + len(blk.dense)
            if blk.sequence:
                seq_dim = sum(width(n) for n in blk.sequence)
                self.target_attn[blk.name] = TargetAttention(
                    seq_dim, sum(width(n) for n in blk.target)
                )
                in_dim += seq_dim
            self.proj.append(nn.Linear(in_dim, blk.tokens * d))
            groups += [i] * blk.tokens
        self.num_tasks = len(self.tasks)
        self.task_tokens = nn.Parameter(torch.randn(self.num_tasks, d) * 0.02)
        groups += [len(config.blocks)] * self.num_tasks
        n = len(groups)
        self.register_buffer("task_index", torch.arange(n - self.num_tasks, n), persistent=False)
        self.hetero = nn.ModuleList(
            HeterogeneousLayer(groups, d, config.num_heads, config.ffn_mult, config.dropout)
            for _ in range(config.hetero_layers)
        )
        self.hiformer = nn.ModuleList(
            HiformerLayer(n, d, config.num_heads, config.ffn_mult, config.kv_rank, config.dropout)
            for _ in range(config.hiformer_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(
            MLP(d, [*config.head_mlp, 1], dropout=config.dropout, last_activation=False)
            for _ in self.tasks
        )
        num_dense = len(schema.dense)
        self.dense_norm = dense_norm(num_dense, config.dense_norm)
        self.wide = (
            nn.Linear(num_dense, self.num_tasks) if config.wide_dense and num_dense else None
        )
        self.to(device)

    def tokens(self, batch: Batch, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Block tokens then task tokens: ``[B, N, d]``; ``dense`` ``[B, Dd]`` replaces
        ``batch.dense`` (the normalised values, from :meth:`forward`)."""
        dense = batch.dense if dense is None else dense
        emb = {}
        if self.pooled is not None:
            emb = self.pooled(select_features(batch.sparse, self.pooled_names)).to_dict()
        seqs = self.sequence(batch.sparse) if self.sequence is not None else {}
        for name in self.shared_names:  # pooled from the per-position rows (padding is 0)
            values, mask = seqs[name]  # [B, L, D], [B, L]
            pooled = values.sum(1)
            if self.shared_mean[name]:
                pooled = pooled / mask.sum(1, keepdim=True).clamp(min=1)
            emb[name] = pooled
        b, d = batch.batch_size, self.config.d_model
        out = []
        for blk, proj, dense_idx in zip(self.config.blocks, self.proj, self.block_dense):
            parts = [emb[n] for n in blk.sparse]
            if dense_idx:
                parts.append(dense[:, dense_idx])
            if blk.sequence:
                seq = torch.cat([seqs[n][0] for n in blk.sequence], dim=-1)  # [B, L, Ds]
                target = torch.cat([emb[n] for n in blk.target], dim=-1)  # [B, Dt]
                parts.append(self.target_attn[blk.name](seq, seqs[blk.sequence[0]][1], target))
            out.append(proj(torch.cat(parts, dim=-1)).reshape(b, blk.tokens, d))
        out.append(self.task_tokens.expand(b, -1, -1))
        return torch.cat(out, dim=1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        dense = self.dense_norm(batch.dense)  # [B, Dd]
        x = self.tokens(batch, dense)  # [B, N, d]
        for layer in self.hetero:
            x = layer(x)
        for i, layer in enumerate(self.hiformer):
            last = i == len(self.hiformer) - 1
            x = layer(x, only=self.task_index if last and self.config.prune_last else None)
        if x.shape[1] != self.num_tasks:
            x = x[:, -self.num_tasks :]
        x = self.norm(x)  # [B, T, d]
        logits = {
            t: head(x[:, i]).squeeze(-1) for i, (t, head) in enumerate(zip(self.tasks, self.heads))
        }
        if self.wide is not None:
            wide = self.wide(dense)  # [B, T]
            logits = {t: v + wide[:, i] for i, (t, v) in enumerate(logits.items())}
        return logits
