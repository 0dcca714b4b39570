"""The stage runners: SFT, DPO and the GRPO family on trl, each from a saved model directory to
another (``run_dir/stages/<name>/model``), resumable from trl's checkpoints
(``run_dir/stages/<name>/trainer/checkpoint-N``).

- SFT (TaoSR1 stage 1): prompt -> completion (level and rule rationale), loss on the
  completion only.
- DPO (TaoSR1 stage 2): ``samples`` completions per pool example from the start model
  (HF ``generate``), pairs of a right and a wrong final level; where no sample is right the
  ground-truth completion is the chosen one (our reading: keeps the hard examples).
- GRPO family: :class:`recis.llm.grpo.RelevanceGRPOTrainer` with the stage's reward functions
  and group rules (see recis.llm.rl_data for the pool each recipe trains on).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recis.llm.advantages import GroupRules
from recis.llm.config import (
    AGRLStage,
    DPOStage,
    DyKnowStage,
    GRPOStage,
    LoraSettings,
    SFTStage,
    SHEStage,
    TrainerArgs,
)
from recis.llm.grpo import RelevanceGRPOTrainer
from recis.llm.model import load_model, load_tokenizer
from recis.llm.rewards import RewardFn, StepReward, label_reward, rule_reward
from recis.llm.task import Example, RelevanceTask


@dataclass
class StageRun:
    """Where one stage reads and writes.

    Args:
        task: prompts and parsing.
        init: the saved model directory the stage starts from.
        out_dir: ``run_dir/stages/<name>``.
        device: ``cpu`` / ``cuda`` / ``cuda:N``.
        resume: continue from the newest trl checkpoint in ``out_dir/trainer`` if any.
        lora: train LoRA adapters (saved merged) instead of all weights.
        dtype: the dtype trl loads the model in (``model.dtype``).
    """

    task: RelevanceTask
    init: Path
    out_dir: Path
    device: str = "cpu"
    resume: bool = False
    lora: LoraSettings | None = None
    dtype: str = "float32"

    def peft_config(self) -> Any:
        """The peft LoraConfig of ``lora`` (None: all weights train)."""
        if self.lora is None:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora.r,
            lora_alpha=self.lora.alpha,
            lora_dropout=self.lora.dropout,
            target_modules=self.lora.target_modules,
            task_type="CAUSAL_LM",
        )

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"

    @property
    def trainer_dir(self) -> Path:
        return self.out_dir / "trainer"

    def checkpoint(self) -> str | None:
        """The newest trl checkpoint to resume from (None: start fresh)."""
        if not self.resume or not self.trainer_dir.is_dir():
            return None
        found = sorted(
            self.trainer_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
        )
        return str(found[-1]) if found else None


def common_trl_args(
    output_dir: Path, max_steps: int, batch: int, lr: float, seed: int, device: str, log_every: int
) -> dict[str, Any]:
    """The TrainingArguments every trl run of recis shares (bf16 off: trl turns it on even on
    CPU; a constant learning rate; one log line per logging step instead of bars)."""
    return {
        "output_dir": str(output_dir),
        "max_steps": max_steps,
        "per_device_train_batch_size": batch,
        "learning_rate": lr,
        "logging_steps": log_every,
        "bf16": False,
        "use_cpu": device == "cpu",
        "report_to": [],
        "disable_tqdm": True,
        "seed": seed,
        "lr_scheduler_type": "constant",
    }


def trl_args(stage: TrainerArgs, run: StageRun) -> dict[str, Any]:
    """The TrainingArguments every stage shares: the common ones, checkpoints every
    ``save_steps`` (resumable), the run's dtype."""
    return {
        **common_trl_args(
            run.trainer_dir,
            stage.max_steps,
            stage.batch_size,
            stage.learning_rate,
            stage.seed,
            run.device,
            stage.logging_steps,
        ),
        "save_strategy": "steps" if stage.save_steps else "no",
        "save_steps": stage.save_steps or 500,
        "gradient_checkpointing": False,
        "model_init_kwargs": {"dtype": run.dtype},
    }


def train_and_save(
    trainer: Any, model_dir: Path, resume: str | None = None, merge_lora: bool = False
) -> list[dict[str, Any]]:
    """Train (from checkpoint ``resume``), save the model and its tokenizer to ``model_dir``
    (``merge_lora``: the adapters merged in, so that the next stage starts from a plain
    model); trl's log history. transformers prints each log dict on stdout: it goes to
    stderr, so stdout keeps the results."""
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train(resume_from_checkpoint=resume)
    if merge_lora:
        trainer.model.merge_and_unload().save_pretrained(str(model_dir))
    else:
        trainer.save_model(str(model_dir))
    trainer.processing_class.save_pretrained(str(model_dir))
    return list(trainer.state.log_history)


def _train(trainer: Any, run: StageRun) -> list[dict[str, Any]]:
    return train_and_save(trainer, run.model_dir, run.checkpoint(), run.lora is not None)


def sft_rows(task: RelevanceTask, examples: Sequence[Example]) -> list[dict[str, str]]:
    """prompt/completion rows; an example with a context chunk is shown once without it and
    once with it (its rationale records the context-usage decision)."""
    rows = []
    for e in examples:
        rows.append(
            {"prompt": task.prompt_text(e, False), "completion": task.completion(e, None, False)}
        )
        if e.context:
            rows.append({"prompt": task.prompt_text(e), "completion": task.completion(e)})
    return rows


def run_sft(stage: SFTStage, run: StageRun, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Supervised fine-tuning (completion-only loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trl_args(stage, run), completion_only_loss=True)
    ds = Dataset.from_list(sft_rows(run.task, examples))
    tok = load_tokenizer(run.init)
    trainer = SFTTrainer(
        model=str(run.init),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=run.peft_config(),
    )
    return _train(trainer, run)


@torch.no_grad()
def sample(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[list[str]]:
    """``n`` sampled completions per prompt (HF ``generate``)."""
    side, tok.padding_side = tok.padding_side, "left"
    out: list[list[str]] = []
    device = next(model.parameters()).device
    model.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                num_return_sequences=n,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(texts[j : j + n] for j in range(0, len(texts), n))
    finally:
        tok.padding_side = side
    return out


def preference_pairs(
    task: RelevanceTask, examples: Sequence[Example], samples: Sequence[Sequence[str]], seed: int
) -> list[dict[str, str]]:
    """pass@N -> DPO pairs: chosen a right sample (the ground truth when none is right),
    rejected a wrong one; an example whose samples are all right gives no pair."""
    rng = random.Random(seed)
    rows = []
    for e, outs in zip(examples, samples):
        right = [o for o in outs if task.parse_level(o) == e.label]
        wrong = [o for o in outs if task.parse_level(o) != e.label]
        if not wrong:
            continue
        chosen = rng.choice(right) if right else task.completion(e)
        rows.append(
            {"prompt": task.prompt_text(e), "chosen": chosen, "rejected": rng.choice(wrong)}
        )
    return rows


def run_dpo(stage: DPOStage, run: StageRun, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Offline pass@N sampling from the start model, then DPO on the pairs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pool = list(examples)[: stage.pool]
    tok = load_tokenizer(run.init)
    model = load_model(run.init, run.device)
    torch.manual_seed(stage.seed)
    prompts = [run.task.prompt_text(e) for e in pool]
    outs = sample(
        model, tok, prompts, stage.samples, stage.max_completion_length, stage.temperature
    )
    del model
    rows = preference_pairs(run.task, pool, outs, stage.seed)
    passed = sum(any(run.task.parse_level(o) == e.label for o in s) for e, s in zip(pool, outs))
    info = {"dpo/pairs": len(rows), "dpo/pass_at_n": passed / max(len(pool), 1)}
    if not rows:  # every sample right: nothing to prefer, the start model passes through
        shutil.copytree(run.init, run.model_dir, dirs_exist_ok=True)
        return [info]
    args = DPOConfig(**trl_args(stage, run), beta=stage.beta)
    trainer = DPOTrainer(
        model=str(run.init),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=run.peft_config(),
    )
    return [info, *_train(trainer, run)]


def grpo_rows(task: RelevanceTask, examples: Sequence[Example]) -> list[dict[str, Any]]:
    """GRPO rows: prompt (without context), prompt_context (with it), label, gold completion,
    rule rationale (``steps``) and a query id (``uid``)."""
    return [
        {
            "prompt": task.prompt_text(e, False),
            "prompt_context": task.prompt_text(e, True),
            "label": e.label,
            "gold": task.completion(e, None, False),
            "steps": task.rationale(e, False).text(),
            "uid": i,
        }
        for i, e in enumerate(examples)
    ]


def run_grpo(
    stage: GRPOStage,
    run: StageRun,
    examples: Sequence[Example],
    step_reward: StepReward | None = None,
) -> list[dict[str, Any]]:
    """GRPO / AGRL / SHE / DyKnow-RAG on ``examples`` (already the stage's pool, in order)."""
    from datasets import Dataset
    from trl import GRPOConfig

    task = run.task
    funcs: list[RewardFn | StepReward] = [label_reward(task)]
    weights = [1.0]
    if isinstance(stage, AGRLStage):
        funcs.append(rule_reward(task))
        weights = [stage.label_weight, stage.rule_weight]
    elif isinstance(stage, SHEStage):
        assert step_reward is not None, "SHE needs its step reward model"
        funcs.append(step_reward)
        weights = [stage.label_weight, stage.step_weight]
    rules = GroupRules(
        group=stage.num_generations,
        dynamic_sampling=stage.dynamic_sampling,
        downweight=stage.downweight,
        dual_context=isinstance(stage, DyKnowStage),
        alpha=stage.alpha if isinstance(stage, DyKnowStage) else 1.0,
        min_scale=stage.min_scale if isinstance(stage, DyKnowStage) else 0.0,
        replay_below=stage.replay_below if isinstance(stage, AGRLStage) else None,
    )
    args = GRPOConfig(
        **trl_args(stage, run),
        num_generations=stage.num_generations,
        max_completion_length=stage.max_completion_length,
        temperature=stage.temperature,
        beta=stage.beta,
        reward_weights=weights,
        loss_type="dapo",
        shuffle_dataset=not isinstance(stage, SHEStage),  # SHE: the curriculum order holds
    )
    trainer = RelevanceGRPOTrainer(
        model=str(run.init),
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list(grpo_rows(task, examples)),
        processing_class=load_tokenizer(run.init),
        rules=rules,
        task=task,
        peft_config=run.peft_config(),
    )
    return _train(trainer, run)
