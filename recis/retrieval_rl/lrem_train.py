"""LREM's two stages on the LM query tower (:class:`~recis.retrieval_rl.lrem.ReasonEmbedTower`).

* :class:`LREMSFTTrainer` - stage 1: teacher-forced reasoning targets
  (:func:`~recis.retrieval_rl.lrem.reasoning_targets`), loss
  ``sft_weight * NLL(target tokens + end token) + infonce_weight * InfoNCE``, the InfoNCE of the
  embedding after the target reasoning against the item tower's vectors of the positives (in
  batch; other rows' copies of the same item masked). The InfoNCE gradient reaches the LM
  (its token embeddings included) through the last hidden state.
* :class:`LREMRLTrainer` - stage 2: per query ``G`` sampled reasonings (one GRPO group), each
  embedded and searched in the pool index; reward = reciprocal rank of the first training
  positive in the top ``k`` (0 when none) or recall@k; group-normalised advantages and the
  clipped loss with a k3 KL to the stage-1 tower over the reasoning tokens' log-probs -
  :func:`recis.retrieval_rl.grpo.group_advantages` and :func:`~recis.retrieval_rl.grpo.clipped_loss`,
  the Retrieval-GRPO math, shared. Each token is one action with its sequence's advantage and
  the mean is over the batch's tokens *(our reading; the paper's normalisation is not in the
  summary)*. The InfoNCE term (``infonce_weight``) keeps training the embedding on the sampled
  reasonings.

The item tower is frozen in both stages *(our choice)*: the pool index is built once, and the
plain query tower that serves easy queries stays in the same space as the items.

Checkpoints (:func:`recis.retrieval_rl.trainer.save`): the tower's weights (LM + projection),
the optimizer, the sampler's and torch's RNG states; a resumed stage draws the same batches and
samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recis.models.two_tower import in_batch_softmax_loss
from recis.retrieval_rl.data import RetrievalData
from recis.retrieval_rl.grpo import clipped_loss, group_advantages
from recis.retrieval_rl.index import make_index
from recis.retrieval_rl.lrem import LREMEncoder, ReasonEmbedTower, reasoning_targets
from recis.retrieval_rl.lrem_config import LREMRLConfig, SFTConfig
from recis.retrieval_rl.trainer import PairSampler, load_parts, save


def _nce(emb: torch.Tensor, item_vecs: torch.Tensor, items: torch.Tensor, t: float) -> torch.Tensor:
    """In-batch softmax of ``emb [B, D]`` against ``item_vecs [B, D]`` (rows of ``items [B]``)."""
    mask = items[:, None] == items[None, :]
    mask.fill_diagonal_(False)
    return in_batch_softmax_loss(emb, item_vecs, t, mask=mask.to(emb.device))


def reasoning_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group: int,
    clip: float,
    logp_ref: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO over reasonings: ``logp, logp_old, logp_ref, mask [S, T]`` token log-probs of
    ``S = Q * group`` sequences (query-major), ``rewards [S]``. Advantages are normalised
    within each query's group (:func:`~recis.retrieval_rl.grpo.group_advantages`); every
    real token is one action carrying its sequence's advantage
    (:func:`~recis.retrieval_rl.grpo.clipped_loss` over the ``[M]`` masked tokens)."""
    if not bool(mask.any()):  # no action (N = 0, the direct embedding): no policy term
        return logp.sum() * 0.0, {"policy": 0.0, "kl": 0.0, "clipped": 0.0}
    adv = group_advantages(rewards.view(-1, group)).view(-1)
    ref = None if logp_ref is None else logp_ref[mask]
    tok_adv = adv[:, None].expand_as(logp)[mask]
    return clipped_loss(logp[mask], logp_old[mask], tok_adv, clip, ref, beta)


class _Stage:
    """A stage's optimizer, sampler, step count and resumable checkpoints."""

    name = "stage"

    def __init__(self, model: LREMEncoder, data: RetrievalData, batch: int, lr: float, seed: int):
        self.model, self.data = model, data
        for p in model.base.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(model.tower.parameters(), lr=lr)
        self.sampler = PairSampler(data, batch, seed)
        self.step_count = 0

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.base.encode_items(items)

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step_count += 1

    def save(self, path: Path) -> None:
        meta = {"stage": self.name, "step": self.step_count}
        rng = {"sampler": self.sampler.rng.bit_generator.state}
        save(path, self.model.tower, self.opt, {**meta, "rng": rng}, {"torch_rng": _rng_state()})

    def restore(self, path: Path) -> None:
        state, meta = load_parts(path, self.model.tower, self.opt)
        self.step_count = int(meta["step"])
        self.sampler.rng.bit_generator.state = meta["rng"]["sampler"]
        torch.set_rng_state(state["torch_rng"]["cpu"].to(torch.uint8))
        if torch.cuda.is_available() and "cuda" in state["torch_rng"]:
            torch.cuda.set_rng_state(state["torch_rng"]["cuda"].to(torch.uint8))


def _rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


class LREMSFTTrainer(_Stage):
    """Stage 1 on the training positives; :meth:`step` draws a batch and updates the tower."""

    name = "lrem_sft"

    def __init__(self, model: LREMEncoder, data: RetrievalData, cfg: SFTConfig, seed: int):
        super().__init__(model, data, cfg.batch_size, cfg.lr, seed)
        self.cfg = cfg
        tower = model.tower
        self.query_tokens = tower.tokens(data.queries)
        self.item_tokens = tower.tokens(data.items)

    def targets(self, queries: torch.Tensor, items: torch.Tensor) -> list[list[int]]:
        n = self.model.tower.n
        return [
            reasoning_targets(self.query_tokens[q], self.item_tokens[i], n)
            for q, i in zip(queries.tolist(), items.tolist())
        ]

    def step(self) -> dict[str, float]:
        self.model.tower.train()
        q, i = self.sampler.next()
        prompts = [self.model.prompts[r] for r in q.tolist()]
        emb, logp, mask = self.model.tower(prompts, self.targets(q, i))
        sft = -(logp * mask).sum() / mask.sum()
        nce = _nce(emb, self.item_vectors(i).to(emb.device), i, self.cfg.temperature)
        self.update(self.cfg.sft_weight * sft + self.cfg.infonce_weight * nce)
        return {
            "step": float(self.step_count),
            "sft_nll": float(sft.detach()),
            "infonce": float(nce.detach()),
        }


class LREMRLTrainer(_Stage):
    """Stage 2: GRPO over sampled reasonings, anchored to ``reference`` (the stage-1 tower)."""

    name = "lrem_rl"

    def __init__(
        self,
        model: LREMEncoder,
        reference: ReasonEmbedTower,
        data: RetrievalData,
        cfg: LREMRLConfig,
        seed: int,
    ) -> None:
        super().__init__(model, data, cfg.batch_size, cfg.lr, seed)
        self.cfg, self.reference = cfg, reference
        ic = cfg.index
        self.index = make_index(ic.kind, ic.chunk, ic.nlist, ic.nprobe, ic.threads)
        with torch.no_grad():  # the item tower is frozen: one build serves the whole stage
            self.index.build(model.encode_pool())

    def rewards(self, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``emb [S, D]`` of reasonings for query rows ``queries [S]`` -> ``[S]`` rewards."""
        k = self.cfg.k
        _, rows = self.index.search(emb.detach(), k)
        r = rows.cpu().numpy()
        hit = np.stack(
            [np.isin(r[s], self.data.positives[q]) for s, q in enumerate(queries.tolist())]
        )
        if self.cfg.reward == "recall":
            got = hit.any(axis=1).astype(np.float32)
        else:
            got = (hit / np.arange(1, r.shape[1] + 1)).max(axis=1).astype(np.float32)
        return torch.from_numpy(got).to(emb.device)

    def step(self) -> dict[str, float]:
        tower, cfg, g = self.model.tower, self.cfg, self.cfg.group_size
        tower.train()
        q, i = self.sampler.next()
        prompts = [self.model.prompts[r] for r in q.tolist()]
        reasoning, stopped = tower.reason(prompts, True, g, cfg.sample_temperature)
        grouped = [p for p in prompts for _ in range(g)]  # generate's order: prompt-major
        emb, logp, mask = tower(grouped, reasoning, stopped)
        reward = self.rewards(emb, q.repeat_interleave(g))
        with torch.no_grad():
            ref_lp = self.reference(grouped, reasoning, stopped)[1]
        # one update per group: the sampling policy is the current one (ratio 1, clip idle)
        loss, parts = reasoning_loss(
            logp, logp.detach(), mask, reward, g, cfg.clip, ref_lp, cfg.beta
        )
        if cfg.infonce_weight > 0:
            items = i.repeat_interleave(g)
            nce = _nce(emb, self.item_vectors(items).to(emb.device), items, cfg.temperature)
            loss = loss + cfg.infonce_weight * nce
            parts["infonce"] = float(nce.detach())
        self.update(loss)
        return {
            "step": float(self.step_count),
            "loss": float(loss.detach()),
            "reward": float(reward.mean()),
            "reasoning_tokens": float(np.mean([len(r) for r in reasoning])),
            **parts,
        }
