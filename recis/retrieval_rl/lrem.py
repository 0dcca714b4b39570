"""LREM (arXiv 2510.14321): a causal-LM query tower that reasons, then embeds.

For a query the LM first writes a short reasoning (at most ``N`` tokens, ``model.generate``,
greedy at inference, sampled in the RL stage); the query embedding is the LM's last hidden
state at an end token appended after the reasoning, projected to the item tower's dim and
unit-normalised. Items keep the dual encoder's item tower (:mod:`.encoder`), so the pool
index is the one the two-tower model already has. Sequence layout::

    [bos] query tokens (<= max_query_tokens) separator | reasoning (<= N) | eos -> h -> proj

*(Our reading)* of the papers' summary, which gives neither the prompt nor the embedding
position: the embedding slot is the tokenizer's eos after the reasoning (the same token ends
the reasoning when the LM stops early), and the SFT reasoning targets are **the item title's
tokens absent from the query** (:func:`reasoning_targets`: keywords the query does not say,
in title order, at most ``N``) - the papers write the chains with an LLM, which we do not have.

Shapes: ``B`` sequences, ``T`` reasoning tokens + the end token, ``H`` LM hidden size, ``D``
the item tower's dim.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recis.errors import ConfigError, DataError
from recis.retrieval_rl.encoder import TextDualEncoder


def pad_batch(seqs: Sequence[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ``(ids [B, L], attention mask [B, L])``, padded on the left or right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        lo = width - len(s) if left else 0
        ids[b, lo : lo + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, lo : lo + len(s)] = 1
    return ids, mask


def reasoning_targets(query: list[int], item: list[int], n: int) -> list[int]:
    """*(Our reading)* the SFT reasoning for a (query, item) pair: the item's tokens that the
    query lacks, first occurrences in item order, at most ``n``."""
    seen = set(query)
    out: list[int] = []
    for t in item if n > 0 else []:
        if t not in seen:
            seen.add(t)
            out.append(t)
            if len(out) == n:
                break
    return out


class ReasonEmbedTower(nn.Module):
    """A causal LM (HF ``AutoModelForCausalLM``) + a projection: text -> reasoning -> ``[B, D]``.

    Args:
        lm: the causal LM (trained in place); ``tokenizer``: its tokenizer (needs an eos).
        dim: the item tower's output dim ``D``.
        max_query_tokens, max_reasoning_tokens: query truncation and ``N``.
        separator: text between the query and the reasoning.

    Example::

        tower = ReasonEmbedTower(lm, tok, 64, 32, 8, " =>")
        prompts = tower.prompt_ids(["red shoes"])
        reasoning, stopped = tower.reason(prompts)       # greedy, <= 8 tokens each
        emb, logp, mask = tower(prompts, reasoning, stopped)  # [1, 64], [1, T], [1, T]
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        dim: int,
        max_query_tokens: int,
        max_reasoning_tokens: int,
        separator: str,
    ) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None:
            raise ConfigError("lm.model_path: the tokenizer has no eos token (the embedding slot)")
        self.lm, self.tokenizer = lm, tokenizer
        self.dim, self.max_query_tokens, self.n = dim, max_query_tokens, max_reasoning_tokens
        self.separator = separator
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos)
        bos = tokenizer.bos_token_id
        self.head = [] if bos is None else [int(bos)]
        self.sep = list(tokenizer.encode(separator, add_special_tokens=False))
        device = next(lm.parameters()).device
        self.proj = nn.Linear(lm.config.hidden_size, dim, device=device)

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Plain token ids of ``texts`` (no special tokens)."""
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def prompt_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """``[bos] query[:max_query_tokens] separator`` per text."""
        return [self.head + t[: self.max_query_tokens] + self.sep for t in self.tokens(texts)]

    @torch.no_grad()
    def reason(
        self,
        prompts: Sequence[list[int]],
        sample: bool = False,
        num: int = 1,
        temperature: float = 1.0,
    ) -> tuple[list[list[int]], list[bool]]:
        """``num`` reasonings per prompt (``model.generate``; greedy unless ``sample``: then
        plain sampling at ``temperature``, no top-k/top-p, so the log-probs the RL stage
        scores are the sampling policy's). Returns ``B * num`` token lists (prompt ``b``'s are
        ``b * num .. b * num + num - 1``), cut before the end token, and whether each stopped
        by itself (wrote the end token within ``N``)."""
        if self.n == 0:  # the direct embedding: nothing to write
            return [[] for _ in range(len(prompts) * num)], [False] * (len(prompts) * num)
        ids, mask = pad_batch(prompts, self.pad, left=True)
        kwargs: dict[str, Any] = {"do_sample": False}
        if sample:
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        out = self.lm.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=self.n,
            num_return_sequences=num,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
            **kwargs,
        )
        reasoning, stopped = [], []
        for row in out[:, ids.shape[1] :].tolist():
            cut = next((j for j, t in enumerate(row) if t in (self.eos, self.pad)), None)
            reasoning.append(row if cut is None else row[:cut])
            stopped.append(cut is not None and row[cut] == self.eos)
        return reasoning, stopped

    def forward(
        self,
        prompts: Sequence[list[int]],
        reasoning: Sequence[list[int]],
        stopped: Sequence[bool] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LM pass over ``prompt + reasoning + [eos]``.

        Returns ``emb [B, D]`` (unit; the projected last hidden state at the eos),
        ``logp [B, T]`` (log-probs of each reasoning token and of the eos given what precedes)
        and ``mask [B, T]`` (real tokens; the eos only where ``stopped``, default all: an eos
        the LM did not write is the embedding slot, not an action).
        """
        seqs = [list(p) + list(r) + [self.eos] for p, r in zip(prompts, reasoning)]
        ids, attn = pad_batch(seqs, self.pad, left=False)
        ids, attn = ids.to(self.device), attn.to(self.device)
        out = self.lm(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        rows = torch.arange(len(seqs), device=self.device)
        last = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
        emb = F.normalize(self.proj(out.hidden_states[-1][rows, last].float()), dim=-1)
        width = max(len(r) for r in reasoning) + 1
        start = torch.tensor([len(p) for p in prompts], device=self.device)
        steps = torch.arange(width, device=self.device)
        lengths = torch.tensor([len(r) + 1 for r in reasoning], device=self.device)
        mask = steps[None, :] < lengths[:, None]
        if stopped is not None:  # drop the eos of sequences cut at N
            cut = ~torch.tensor(list(stopped), device=self.device)
            mask &= ~(cut[:, None] & (steps[None, :] == lengths[:, None] - 1))
        # padded steps read position 1 (any real one; masked out)
        pos = torch.where(steps[None, :] < lengths[:, None], start[:, None] + steps[None, :], 1)
        logits = out.logits.float().gather(
            1, (pos - 1)[..., None].expand(-1, -1, out.logits.shape[-1])
        )
        logp = F.log_softmax(logits, dim=-1).gather(2, ids.gather(1, pos)[..., None])[..., 0]
        return emb, logp, mask

    def frozen_copy(self) -> ReasonEmbedTower:
        """A copy without gradient (the RL stage's KL reference); shares the tokenizer."""
        lm = copy.deepcopy(self.lm)
        ref = ReasonEmbedTower(
            lm, self.tokenizer, self.dim, self.max_query_tokens, self.n, self.separator
        )
        ref.load_state_dict(self.state_dict())
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref


class LREMEncoder(nn.Module):
    """Queries the router marks hard through LREM, the others through the plain query tower;
    items through the dual encoder's item tower.

    Args:
        tower: the LREM query tower; ``base``: the InfoNCE dual encoder (its item tower
            encodes the pool; its query tower serves easy queries).
        queries: the query table's texts (tokenized once); ``hard [Qn]``: the router's marks.
    """

    def __init__(
        self,
        tower: ReasonEmbedTower,
        base: TextDualEncoder,
        queries: Sequence[str],
        hard: np.ndarray,
    ) -> None:
        super().__init__()
        if len(hard) != len(queries):
            raise DataError(f"router: {len(hard)} hard marks for {len(queries)} queries")
        self.tower, self.base = tower, base
        self.prompts = tower.prompt_ids(queries)
        self.hard = np.asarray(hard, dtype=bool)

    def encode_queries(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [B]`` -> ``[B, D]`` (greedy reasoning for the hard rows)."""
        out = self.base.encode_queries(rows)
        r = rows.cpu().numpy()
        hard = np.flatnonzero(self.hard[r])
        if len(hard):
            prompts = [self.prompts[q] for q in r[hard].tolist()]
            reasoning, stopped = self.tower.reason(prompts)
            emb = self.tower(prompts, reasoning, stopped)[0].to(out.dtype)
            out = out.index_put((torch.from_numpy(hard).to(out.device),), emb)
        return out

    def reasoning_text(self, rows: torch.Tensor) -> list[str]:
        """The greedy reasoning of each query row, decoded (for reading)."""
        got, _ = self.tower.reason([self.prompts[q] for q in rows.tolist()])
        return [self.tower.tokenizer.decode(r) for r in got]

    def encode_items(self, rows: torch.Tensor) -> torch.Tensor:
        return self.base.encode_items(rows)

    def encode_pool(self) -> torch.Tensor:
        return self.base.encode_pool()
