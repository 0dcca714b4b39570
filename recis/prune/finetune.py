"""Recovery fine-tuning after pruning (issue 20, deliverable 5).

Two paths:

* a pruned **recis run** (:func:`finetune_run`): a few hundred steps of the run's own
  trainer on its own training data, from the pruned weights (``checkpoints/pruned``) to
  ``checkpoints/final`` of the same run directory, so ``recis eval`` and ``build_model``
  see the fine-tuned pruned model with the pruned shapes (``model.structure`` unchanged).
  The dense and sparse learning rates are the run's times ``lr_scale`` (default 0.1: the
  recipes' cosine schedules end at 0.1 of their rate, so the fine-tune continues where the
  training stopped), constant, no early stopping; one process.
* a pruned **transformers model** (:func:`finetune_hf`): LoRA adapters through ``peft`` on
  every linear map (``target_modules="all-linear"``, the narrowed projections included),
  merged back after training, so the result is a plain dense model of the pruned shapes
  (``recis.prune.hf.save_pruned`` writes it); or full fine-tuning (``lora_rank=None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recis.config import ScheduleConfig, TrainConfig, load_config
from recis.errors import ConfigError
from recis.train.runner import build

PRUNED = "pruned"  # checkpoint name of the pruned, not yet fine-tuned weights


@dataclass
class FinetuneOptions:
    """``steps`` optimizer steps at ``lr_scale`` times the run's learning rates."""

    steps: int
    lr_scale: float = 0.1

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"prune.finetune_steps: {self.steps} must be > 0")
        if not 0 < self.lr_scale <= 10:
            raise ConfigError(f"prune.finetune_lr_scale: {self.lr_scale} must be in (0, 10]")


def finetune_config(train: TrainConfig, options: FinetuneOptions) -> TrainConfig:
    """The run's training options for a short recovery fine-tune: ``steps`` steps, constant
    scaled learning rates, no early stopping, no evaluation or checkpoint before the end."""
    dense, sparse = train.dense_optimizer, train.sparse_optimizer
    return dataclasses.replace(
        train,
        max_steps=options.steps,
        epochs=10**6,  # max_steps ends it
        dense_optimizer=dataclasses.replace(dense, lr=dense.lr * options.lr_scale),
        sparse_optimizer=dataclasses.replace(sparse, lr=sparse.lr * options.lr_scale),
        schedule=ScheduleConfig(name="constant"),
        early_stopping=None,
        eval_every=None,
        eval_each_epoch=False,
        checkpoint_every=None,
        keep_last=1,
    )


def finetune_run(out: str | Path, options: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune the pruned run ``out`` (written by :func:`recis.prune.run.prune_run` with its
    weights in ``checkpoints/pruned``); writes ``checkpoints/final``, ``metrics.jsonl``.
    Returns the trainer's final evaluation on the run's ``data.eval`` (``{}`` without)."""
    out = Path(out)
    cfg = load_config(out / "config.yaml")
    cfg.train = finetune_config(cfg.train, options)
    trainer, _ = build(cfg)  # the run's reader, model (narrowed by model.structure), trainer
    trainer.load_weights(out / "checkpoints" / PRUNED)
    return trainer.fit()


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss of a ``transformers`` causal LM on its own input ids (padding, where
    the batch has an attention mask, left out)."""
    labels = batch["input_ids"]
    if "attention_mask" in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def finetune_hf(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    lora_rank: int | None = 8,
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] = causal_lm_loss,
) -> tuple[nn.Module, list[float]]:
    """Fine-tune a pruned ``transformers`` model for ``steps`` AdamW steps over ``batches``
    (cycled): LoRA of rank ``lora_rank`` (alpha = 2 rank) on every linear map, merged into
    the weights at the end, or all parameters when ``lora_rank`` is None.

    Returns the model (the same class and pruned shapes as ``model``, in eval mode) and the
    loss of every step ``[steps]``.
    """
    if steps <= 0 or not batches:
        raise ConfigError(f"finetune: needs steps > 0 ({steps}) and batches ({len(batches)})")
    tuned: Any = model
    if lora_rank is not None:
        import peft

        config = peft.LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", lora_dropout=0.0
        )
        tuned = peft.get_peft_model(model, config)
    params = [p for p in tuned.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tuned.train()
    losses = []
    for step in range(steps):
        value = loss(tuned, batches[step % len(batches)])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    if lora_rank is not None:
        tuned = tuned.merge_and_unload()  # LoRA folded into the weights: a plain model again
    return tuned.eval(), losses
