"""HHFT: Hierarchical Heterogeneous Feature Transformer (Taobao, arXiv 2511.20235) for CTR.

From features to logits:

1. **Semantic feature partitioning.** The config groups features into blocks (user
   profile, item, context/query, behaviour sequence, ...). A block's pooled sparse
   embeddings and dense values are concatenated (``[B, D_blk]``) and projected by the
   block's own linear map to ``tokens`` tokens of width ``d`` (``[B, tokens, d]``). With
   ``dense_tokens: feature`` each dense value is a token of its own instead
   (:class:`FeatureTokens`, Hiformer's per-feature projection), in its block's group.
2. **Behaviour sequence.** A sequence block's per-position embeddings ``[B, L, Ds]``
   are pooled by target attention whose query is the candidate item's embeddings
   (the block's ``target`` features), padded positions masked; the pooled vector is
   then projected to tokens like any other block.
3. **Heterogeneous transformer encoder** (:class:`HeterogeneousLayer`): attention
   across all ``N`` tokens, with Q/K/V/output projections and FFNs specific to the
   block each token came from, so feature types are not mixed by shared weights. Every
   per-block or per-token projection is a :class:`GroupedLinear` (one ``nn.Linear`` per
   group), which structured pruning (``models/structure.py``) narrows by head and channel.
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
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from recis.config import STRICT, ModelConfig
from recis.embedding import build_embedding_collection
from recis.errors import ConfigError
from recis.features import Schema
from recis.io.batch import Batch

from .layers import MLP, SequenceEmbedding, dense_norm, masked_softmax, positions, select_features


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
    # how a block's dense values become tokens: "block" = concatenated with its ids into the
    # block's tokens; "feature" = one token per dense feature (FeatureTokens), in its block
    dense_tokens: Literal["block", "feature"] = "block"
    # append to each sequence block's pooled vector how much of the history matches the
    # candidate, log(1 + sum_l sigmoid(score_l)): softmax weights sum to 1 and lose it (DIN
    # keeps it with unnormalised weights); liked vs watched matches ~ the user's affinity
    sequence_mass: bool = False
    # in training, each row's block tokens are each replaced by zeros with this probability
    # before the encoder (task tokens never): a block's information must also be reachable
    # through the others (structured dropout over features, as token dropping in ViTs)
    token_dropout: float = Field(default=0.0, ge=0, lt=1)


class GroupedLinear(nn.Module):
    """One ``nn.Linear`` per group of tokens: token ``n`` goes through ``linears[groups[n]]``.

    Shapes: ``x [B, N, i] -> [B, N, o]``; with ``tokens`` (token indices), ``x`` holds only
    those tokens, ``[B, len(tokens), i]``, in that order. Plain ``nn.Linear`` modules, so a
    pruner can shrink each one (output rows by attention head, FFN hidden units).
    """

    index: torch.Tensor

    def __init__(self, groups: list[int], fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.groups = list(groups)
        linears = [nn.Linear(fan_in, fan_out) for _ in range(max(groups) + 1)]
        bound = 1.0 / math.sqrt(fan_in)
        for linear in linears:  # uniform weights, zero bias (the init before nn.Linear was used)
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
        self.linears = nn.ModuleList(linears)
        self.register_buffer("index", torch.tensor(self.groups), persistent=False)

    def forward(self, x: torch.Tensor, tokens: list[int] | None = None) -> torch.Tensor:
        # each token's weights gathered ([N, o, i]: a few thousand floats; index_select, 2-3x
        # faster than indexing here), then one batched matmul over the tokens, where a loop
        # over the groups made a matmul, a bias add and a copy per group (36 small calls per
        # heterogeneous layer, most of their time)
        index = self.index if tokens is None else self.index[tokens]
        linears = cast(list[nn.Linear], list(self.linears))
        w = torch.stack([lin.weight for lin in linears]).index_select(0, index)
        b = torch.stack([lin.bias for lin in linears]).index_select(0, index)
        return torch.baddbmm(b[:, None], x.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot product: ``q [B, Nq, H dh]``, ``k, v [B, N, H dh]`` ->
    ``[B, Nq, H dh]``."""
    b, nq, d = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

    out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, nq, d)


class HeterogeneousLayer(nn.Module):
    """Transformer layer whose Q/K/V/output projections and FFN depend on the token's block.

    Shapes: ``x [B, N, d] -> [B, N, d]``; ``groups[n]`` is the block of token ``n``.
    Projections ``q, k, v, o`` (``d -> d``, ``heads`` heads of ``d / heads``) and the FFN
    ``ffn_in`` (``d -> ffn_mult d``), ``ffn_out`` are :class:`GroupedLinear` (one
    ``nn.Linear`` per block). With all groups' weights equal, :meth:`attention` is standard
    multi-head attention.
    """

    def __init__(
        self, groups: list[int], d: int, heads: int, ffn_mult: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if d % heads:
            raise ConfigError(f"model.d_model: {d} is not divisible by num_heads {heads}")
        self.heads = heads
        self.q = GroupedLinear(groups, d, d)
        self.k = GroupedLinear(groups, d, d)
        self.v = GroupedLinear(groups, d, d)
        self.o = GroupedLinear(groups, d, d)
        self.ffn_in = GroupedLinear(groups, d, ffn_mult * d)
        self.ffn_out = GroupedLinear(groups, ffn_mult * d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention sub-layer alone (no norm, no residual): ``[B, N, d] -> [B, N, d]``."""
        return self.o(_attend(self.q(x), self.k(x), self.v(x), self.heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        h = torch.relu(self.ffn_in(self.norm2(x)))
        return x + self.drop(self.ffn_out(h))


class HiformerLayer(nn.Module):
    """Hiformer layer: per-token queries, composite keys/values over all tokens, per-token FFN.

    Keys and values come from ``concat(x) [B, N d]`` times one ``[N d, 2 N d]`` matrix
    (``kv``, an ``nn.Linear``), or, with ``rank``, times ``[N d, r] x [r, 2 N d]`` (the serving
    factorization). Per-token ``q``, ``o``, ``ffn_in``, ``ffn_out`` are :class:`GroupedLinear`
    with one group per token. ``forward(x, only=idx)`` computes the outputs of tokens ``idx``
    alone: ``[B, len(idx), d]`` (last-layer pruning; keys/values still see every token).

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
        tokens = list(range(n))
        self.q = GroupedLinear(tokens, d, d)
        self.o = GroupedLinear(tokens, d, d)
        self.ffn_in = GroupedLinear(tokens, d, ffn_mult * d)
        self.ffn_out = GroupedLinear(tokens, ffn_mult * d, d)
        self.kv: nn.Module
        if rank is None:
            self.kv = nn.Linear(n * d, 2 * n * d)
        else:
            self.kv = nn.Sequential(nn.Linear(n * d, rank, bias=False), nn.Linear(rank, 2 * n * d))
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, only: list[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        b = x.shape[0]
        h = self.norm1(x)
        # keys/values [B, N, d_attn]: d_attn = d unless heads were pruned (models/structure.py)
        kv = self.kv(h.reshape(b, self.n * self.d)).unflatten(1, (2 * self.n, -1))
        k, v = kv.chunk(2, 1)
        idx = None if only is None else [int(i) for i in only]
        if idx is not None:
            x, h = x[:, positions(idx)], h[:, positions(idx)]
        x = x + self.drop(self.o(_attend(self.q(h, idx), k, v, self.heads), idx))
        f = torch.relu(self.ffn_in(self.norm2(x), idx))
        return x + self.drop(self.ffn_out(f, idx))


class FeatureTokens(nn.Module):
    """One token per dense feature: ``x [B, F] -> x_f w_f + b_f`` ``[B, F, d]``.

    Each feature has its own ``w_f, b_f`` (``[F, d]``): Hiformer's heterogeneous per-feature
    projection, and the FT-Transformer numeric tokenizer. A block's dense values then reach
    attention one by one instead of as one linear mix inside the block token, so products of
    single statistics (a user's like rate and a movie's) are one attention score apart.
    """

    def __init__(self, num_features: int, d: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d)
        self.weight = nn.Parameter(torch.empty(num_features, d).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(num_features, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None] * self.weight + self.bias


class TargetAttention(nn.Module):
    """Pool a behaviour sequence by attention from the candidate item (DIN-style, scaled dot).

    Shapes: ``seq [B, L, Ds]``, ``mask [B, L]``, ``target [B, Dt]`` -> ``[B, Ds]``, or
    ``[B, Ds + 1]`` with ``mass``: the last column is ``log(1 + sum_l sigmoid(score_l))`` over
    the unpadded positions, a soft count of the history entries that match the target.
    Padded positions get zero weight, an empty sequence pools to zeros (mass 0).
    """

    def __init__(self, seq_dim: int, target_dim: int, mass: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(target_dim, seq_dim)
        self.k = nn.Linear(seq_dim, seq_dim)
        self.scale = 1.0 / math.sqrt(seq_dim)
        self.mass = mass

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = self.q(target)  # [B, Ds]; <q, W_k s_l + b_k> = <W_k^T q, s_l> + <q, b_k>: W_k maps
        # the B queries, not the B L history positions (the layer's largest matmul)
        scores = torch.einsum("bd,bld->bl", q @ self.k.weight, seq) + (q @ self.k.bias)[:, None]
        scores = scores * self.scale
        pooled = torch.einsum("bl,bld->bd", masked_softmax(scores, mask), seq)
        if not self.mass:
            return pooled
        soft_count = (torch.sigmoid(scores) * mask).sum(1, keepdim=True)  # [B, 1]
        return torch.cat([pooled, torch.log1p(soft_count)], dim=-1)


def check_blocks(config: HHFTConfig, schema: Schema) -> None:
    """Every name a block lists is a feature of the schema; a sequence block has targets."""
    if not config.blocks:
        raise ConfigError("model.blocks: at least one block is required")
    sparse = {f.name for f in schema.sparse}
    dense = {f.name for f in schema.dense}
    for i, blk in enumerate(config.blocks):
        for kind, names in (
            ("sparse", blk.sparse),
            ("target", blk.target),
            ("sequence", blk.sequence),
        ):
            for name in names:
                if name not in sparse:
                    raise ConfigError(f"model.blocks.{i}.{kind}: no sparse feature {name!r}")
        for name in blk.dense:
            if name not in dense:
                raise ConfigError(f"model.blocks.{i}.dense: no dense feature {name!r}")
        if blk.sequence and not blk.target:
            raise ConfigError(f"model.blocks.{i}.target: a sequence block needs target features")


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
        check_blocks(config, schema)
        self.config = config
        self.tasks = [label.name for label in schema.labels]
        self.num_tasks = len(self.tasks)
        self._build_embeddings(config, schema, device, template_tables)
        groups = self._build_block_tokens(config, schema)
        self._build_encoder(config, groups)
        self._build_outputs(config, schema.dense_dim)
        self.to(device)

    def _build_embeddings(
        self, config: HHFTConfig, schema: Schema, device: torch.device, template_tables: bool
    ) -> None:
        """Pooled tables for the blocks' id features, per-position tables for sequences."""
        sparse = {f.name: f for f in schema.sparse}
        pooled = [n for blk in config.blocks for n in blk.sparse + blk.target]
        self.seq_names = list(dict.fromkeys(n for blk in config.blocks for n in blk.sequence))
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

    def _build_block_tokens(self, config: HHFTConfig, schema: Schema) -> list[int]:
        """Each block's projection (and target attention, feature tokens); returns the block
        index of every token, task tokens last (one more block)."""
        dims = {t.name: t.dim for t in config.tables}
        table_of = {f.name: f.table_name for f in schema.sparse}
        starts = np.cumsum([0] + [f.dim for f in schema.dense])  # a feature's columns
        dense_cols = {
            f.name: list(range(starts[i], starts[i + 1])) for i, f in enumerate(schema.dense)
        }

        def width(names: list[str]) -> int:
            return sum(dims[table_of[n]] for n in names)

        d = config.d_model
        per_feature = config.dense_tokens == "feature"
        cols = [[c for n in b.dense for c in dense_cols[n]] for b in config.blocks]
        self.block_dense = [positions(c) for c in cols]
        self.target_attn = nn.ModuleDict()
        self.proj = nn.ModuleList()
        self.feature_tokens = nn.ModuleList()
        groups: list[int] = []
        for i, blk in enumerate(config.blocks):
            in_dim = width(blk.sparse) + (0 if per_feature else len(cols[i]))
            if blk.sequence:
                seq_dim = width(blk.sequence)
                self.target_attn[blk.name] = TargetAttention(
                    seq_dim, width(blk.target), config.sequence_mass
                )
                in_dim += seq_dim + int(config.sequence_mass)
            # a block of dense features only, tokenised feature by feature, has no block token
            self.proj.append(nn.Linear(in_dim, blk.tokens * d) if in_dim else nn.Identity())
            groups += [i] * (blk.tokens if in_dim else 0)
            if per_feature:
                self.feature_tokens.append(FeatureTokens(len(cols[i]), d))  # one per column
                groups += [i] * len(cols[i])
        self.task_tokens = nn.Parameter(torch.randn(self.num_tasks, d) * 0.02)
        groups += [len(config.blocks)] * self.num_tasks
        return groups

    def _build_encoder(self, config: HHFTConfig, groups: list[int]) -> None:
        """Heterogeneous layers over the tokens' blocks, then the Hiformer layers."""
        n, d = len(groups), config.d_model
        self.register_buffer("task_index", torch.arange(n - self.num_tasks, n), persistent=False)
        self.task_positions = list(range(n - self.num_tasks, n))
        self.hetero = nn.ModuleList(
            HeterogeneousLayer(groups, d, config.num_heads, config.ffn_mult, config.dropout)
            for _ in range(config.hetero_layers)
        )
        self.hiformer = nn.ModuleList(
            HiformerLayer(n, d, config.num_heads, config.ffn_mult, config.kv_rank, config.dropout)
            for _ in range(config.hiformer_layers)
        )

    def _build_outputs(self, config: HHFTConfig, num_dense: int) -> None:
        """Final norm, one MLP head per task, the dense norm and the wide dense term."""
        self.norm = nn.LayerNorm(config.d_model)
        self.heads = nn.ModuleList(
            MLP(
                config.d_model, [*config.head_mlp, 1], dropout=config.dropout, last_activation=False
            )
            for _ in self.tasks
        )
        self.dense_norm = dense_norm(num_dense, config.dense_norm)
        self.wide = (
            nn.Linear(num_dense, self.num_tasks) if config.wide_dense and num_dense else None
        )

    def embeddings(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Pooled embeddings ``{name: [B, D]}`` and sequences ``{name: ([B, L, D], [B, L])}``."""
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
        return emb, seqs

    def tokens(self, batch: Batch, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Block tokens then task tokens: ``[B, N, d]``; ``dense`` ``[B, Dd]`` replaces
        ``batch.dense`` (the normalised values, from :meth:`forward`)."""
        dense = batch.dense if dense is None else dense
        emb, seqs = self.embeddings(batch)
        b, d = batch.batch_size, self.config.d_model
        per_feature = self.config.dense_tokens == "feature"
        out = []
        for i, (blk, proj) in enumerate(zip(self.config.blocks, self.proj)):
            dense_idx = self.block_dense[i]
            parts = [emb[n] for n in blk.sparse]
            if dense_idx and not per_feature:
                parts.append(dense[:, dense_idx])
            if blk.sequence:
                values = [seqs[n][0] for n in blk.sequence]  # one: no copy of [B, L, Ds]
                seq = values[0] if len(values) == 1 else torch.cat(values, dim=-1)
                target = torch.cat([emb[n] for n in blk.target], dim=-1)  # [B, Dt]
                parts.append(self.target_attn[blk.name](seq, seqs[blk.sequence[0]][1], target))
            if parts:
                out.append(proj(torch.cat(parts, dim=-1)).reshape(b, blk.tokens, d))
            if per_feature:
                out.append(self.feature_tokens[i](dense[:, dense_idx]))  # [B, F_blk, d]
        out.append(self.task_tokens.expand(b, -1, -1))
        return torch.cat(out, dim=1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        dense = self.dense_norm(batch.dense)  # [B, Dd]
        x = self.tokens(batch, dense)  # [B, N, d]
        p = self.config.token_dropout
        if self.training and p > 0:
            n = x.shape[1] - self.num_tasks
            keep = (torch.rand(x.shape[0], n, 1, device=x.device) >= p).to(x.dtype)
            x = torch.cat([x[:, :n] * keep, x[:, n:]], dim=1)
        for layer in self.hetero:
            x = layer(x)
        for i, layer in enumerate(self.hiformer):
            last = i == len(self.hiformer) - 1
            x = layer(x, only=self.task_positions if last and self.config.prune_last else None)
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
