"""The two stages: InfoNCE (the starting model) and Retrieval-GRPO (:mod:`.grpo`).

Checkpoints are recis checkpoint folders (:func:`recis.train.checkpoint.save_checkpoint`:
atomic, manifest-verified): ``model`` (the encoder's weights), ``optimizer``, and in the meta
the step, the stage and the sampler's RNG state, so a resumed run draws the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recis.errors import CheckpointError
from recis.retrieval_rl.config import GRPOConfig, InfoNCEConfig
from recis.retrieval_rl.data import RetrievalData
from recis.retrieval_rl.encoder import TextDualEncoder
from recis.retrieval_rl.grpo import (
    clipped_loss,
    group_advantages,
    group_items,
    infonce_loss,
    policy_logprobs,
)
from recis.retrieval_rl.index import RefreshingIndex, make_index
from recis.retrieval_rl.rewards import WeightedReward
from recis.train.checkpoint import load_checkpoint, save_checkpoint


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with string keys (the checkpoint tree is JSON)."""
    sd = opt.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    opt.load_state_dict(
        {"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["groups"]}
    )


def save(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """``model``'s weights, ``opt``'s state and ``extra`` parts (e.g. RNG states) at ``path``."""
    state = {"model": model.state_dict(), "optimizer": _optimizer_state(opt), **(extra or {})}
    save_checkpoint(path, state, meta)


def load(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore the weights (and the optimizer); returns the meta."""
    return load_parts(path, model, opt)[1]


def load_parts(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`load`, returning the whole state (with any ``extra`` parts) and the meta."""
    state, meta = load_checkpoint(path, next(model.parameters()).device)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the encoder config: {err}") from None
    if opt is not None:
        _load_optimizer(opt, state["optimizer"])
    return state, meta


class PairSampler:
    """Batches of training positives (query row, pool row), drawn with a seeded RNG."""

    def __init__(self, data: RetrievalData, batch_size: int, seed: int) -> None:
        self.q, self.i = data.train_queries, data.train_items
        self.batch_size = min(batch_size, len(self.q))
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        pick = self.rng.choice(len(self.q), self.batch_size, replace=False)
        return torch.from_numpy(self.q[pick]), torch.from_numpy(self.i[pick])


def train_infonce(
    model: TextDualEncoder,
    data: RetrievalData,
    cfg: InfoNCEConfig,
    seed: int,
    log: Callable[[dict[str, float]], None] | None = None,
) -> torch.optim.Optimizer:
    """``cfg.steps`` in-batch softmax steps on the training positives."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PairSampler(data, cfg.batch_size, seed)
    for step in range(cfg.steps):
        q, i = sampler.next()
        loss = infonce_loss(model, q, i, cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None:
            log({"step": step + 1, "infonce": float(loss.detach())})
    return opt


class RetrievalGRPOTrainer:
    """Retrieval-GRPO steps on a dual encoder, anchored to a frozen copy of its start.

    Each :meth:`step`: encode the batch's queries, retrieve their top-``k`` items from the
    pool (:class:`~recis.retrieval_rl.index.RefreshingIndex`, rebuilt every
    ``index.refresh_every`` steps), reward them, and take ``updates_per_batch`` optimizer
    steps on ``clipped GRPO loss + infonce_weight * InfoNCE`` (the InfoNCE term on the
    batch's logged positives).

    Args:
        model: the policy (trained in place).
        reference: the starting model (frozen; the KL anchor).
        reward: the weighted reward components.
        cfg: GRPO settings; ``nce_temperature`` the InfoNCE stage's temperature.
    """

    def __init__(
        self,
        model: TextDualEncoder,
        reference: TextDualEncoder,
        reward: WeightedReward,
        cfg: GRPOConfig,
        nce_temperature: float,
    ) -> None:
        self.model, self.reference, self.reward, self.cfg = model, reference, reward, cfg
        self.nce_temperature = nce_temperature
        for p in reference.parameters():
            p.requires_grad_(False)
        ic = cfg.index
        self.index = RefreshingIndex(
            make_index(ic.kind, ic.chunk, ic.nlist, ic.nprobe, ic.threads),
            model.encode_pool,
            ic.refresh_every,
        )
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.step_count = 0
        self.search_seconds = 0.0

    def retrieve(self, queries: torch.Tensor) -> torch.Tensor:
        """``queries [B]`` -> pool rows ``[B, K]`` of the current (index-snapshot) top-K."""
        t0 = time.perf_counter()
        with torch.no_grad():
            u = self.model.encode_queries(queries)
            _, rows = self.index.search(u, self.cfg.k)
        self.search_seconds += time.perf_counter() - t0
        return rows

    def step(self, queries: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
        """One batch: ``queries, positives [B]`` (query rows and their logged pool rows)."""
        self.model.train()
        rows = self.retrieve(queries)
        rewards, logs = self.reward(queries, rows)
        adv = group_advantages(rewards)
        cfg = self.cfg
        with torch.no_grad():
            ref_lp = policy_logprobs(
                self.reference.encode_queries(queries),
                group_items(self.reference, rows),
                cfg.policy_temperature,
            )
        old_lp: torch.Tensor | None = None
        for _ in range(cfg.updates_per_batch):
            lp = policy_logprobs(
                self.model.encode_queries(queries),
                group_items(self.model, rows),
                cfg.policy_temperature,
            )
            if old_lp is None:
                old_lp = lp.detach()  # the policy that the group was drawn under
            loss, parts = clipped_loss(lp, old_lp, adv, cfg.clip, ref_lp, cfg.beta)
            if cfg.infonce_weight > 0:
                nce = infonce_loss(self.model, queries, positives, self.nce_temperature)
                loss = loss + cfg.infonce_weight * nce
                parts["infonce"] = float(nce.detach())
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.step_count += 1
        return {"step": float(self.step_count), "loss": float(loss.detach()), **parts, **logs}

    def save(self, path: Path, sampler: PairSampler) -> None:
        meta = {
            "stage": "grpo",
            "step": self.step_count,
            "index_calls": self.index.calls,
            "rng": sampler.rng.bit_generator.state,
        }
        save(path, self.model, self.opt, meta)

    def restore(self, path: Path, sampler: PairSampler) -> None:
        meta = load(path, self.model, self.opt)
        self.step_count = int(meta["step"])
        self.index.calls = int(meta["index_calls"])
        # the first search after a resume rebuilds the index from the restored model
        self.index.calls -= self.index.calls % self.index.refresh_every
        sampler.rng.bit_generator.state = meta["rng"]
