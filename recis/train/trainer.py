"""The training loop: train, evaluate, log, checkpoint."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from tqdm import tqdm

from recis import metrics
from recis.config import OptimizerConfig, SparseOptimizerConfig, TrainConfig
from recis.io.batch import Batch

from .checkpoint import save_checkpoint

_SPARSE_MODULES = (EmbeddingBagCollection, EmbeddingCollection)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse, dense): parameters of embedding collections vs everything else."""
    sparse_ids = set()
    sparse = []
    for module in model.modules():
        if isinstance(module, _SPARSE_MODULES):
            for p in module.parameters():
                if id(p) not in sparse_ids:
                    sparse_ids.add(id(p))
                    sparse.append(p)
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    return sparse, dense


def dense_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    kinds = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
    }
    return kinds[cfg.name](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def sparse_optimizer(
    params: list[nn.Parameter], cfg: SparseOptimizerConfig
) -> torch.optim.Optimizer:
    if cfg.name in ("adagrad", "rowwise_adagrad"):
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


class Trainer:
    """Trains a model whose ``forward(batch)`` returns ``{task: logits [B]}``.

    Each task's loss is binary cross-entropy against ``batch.labels[task]``;
    the objective is their sum.

    Args:
        model: the model (already on ``device``).
        train_data: an iterable of :class:`~recis.io.Batch`, re-iterated each epoch.
        eval_data: an iterable of batches for evaluation, or None.
        config: training options.
        run_dir: where metrics.jsonl and checkpoints go (None: write nothing).
        device: where batches are moved.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Iterable[Batch],
        eval_data: Iterable[Batch] | None,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.eval_data = eval_data
        self.config = config
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = callbacks or []
        sparse, dense = split_parameters(model)
        self.optimizers = [dense_optimizer(dense, config.dense_optimizer)]
        if sparse:
            self.optimizers.append(sparse_optimizer(sparse, config.sparse_optimizer))
        self.step = 0

    def _log(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(record)
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def loss(self, logits: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        # models whose objective is not per-row BCE (in-batch softmax, regularizers) define it
        model_loss = getattr(self.model, "loss", None)
        if callable(model_loss):
            return model_loss(logits, batch)
        return {
            t: F.binary_cross_entropy_with_logits(logits[t].float(), batch.labels[t])
            for t in logits
        }

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        losses = self.loss(self.model(batch), batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"step {self.step}: loss is {total.item()}")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers:
            opt.step()
        self.step += 1
        return {"loss": total.item(), **{f"loss/{t}": v.item() for t, v in losses.items()}}

    def fit(self) -> dict[str, float]:
        cfg = self.config
        bar = tqdm(
            total=cfg.max_steps,
            disable=not cfg.progress,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
        samples, t0, ema = 0, time.perf_counter(), None
        done = False
        for epoch in range(cfg.epochs):
            for batch in self.train_data:
                out = self.train_step(batch)
                samples += batch.batch_size
                ema = out["loss"] if ema is None else 0.98 * ema + 0.02 * out["loss"]
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch, loss=f"{ema:.4f}", samples_s=f"{rate:,.0f}", refresh=False
                )
                if self.step % cfg.log_every == 0:
                    self._log({"step": self.step, "split": "train", "samples_per_s": rate, **out})
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    done = True
                    break
            if done:
                break
        bar.close()
        result = self.evaluate() if self.eval_data is not None else {}
        self.save("final")
        return result

    @torch.no_grad()
    def predict(self, data: Iterable[Batch]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Probabilities and labels per task over ``data``."""
        self.model.eval()
        probs: dict[str, list[np.ndarray]] = {}
        labels: dict[str, list[np.ndarray]] = {}
        for batch in data:
            batch = batch.to(self.device)
            for t, logit in self.model(batch).items():
                probs.setdefault(t, []).append(torch.sigmoid(logit.float()).cpu().numpy())
                labels.setdefault(t, []).append(batch.labels[t].cpu().numpy())
        return (
            {t: np.concatenate(v) for t, v in probs.items()},
            {t: np.concatenate(v) for t, v in labels.items()},
        )

    def evaluate(self) -> dict[str, float]:
        assert self.eval_data is not None
        probs, labels = self.predict(self.eval_data)
        result: dict[str, float] = {}
        for t in probs:
            result[f"{t}/auc"] = metrics.auc(probs[t], labels[t])
            result[f"{t}/logloss"] = metrics.logloss(probs[t], labels[t])
        self._log({"step": self.step, "split": "eval", **result})
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        self.step = state["step"]

    def save(self, name: str) -> Path | None:
        if self.run_dir is None:
            return None
        meta = {"step": self.step, "time": time.time()}
        return save_checkpoint(self.run_dir / "checkpoints" / name, self.state_dict(), meta)
