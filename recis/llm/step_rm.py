"""TaoSR-SHE's generative step reward model, trained in recis on labelled steps.

Labelled steps (our reading; the paper's annotation is not public): for each example and each
rule step, the step with the value its rule gives is labelled right (``1``) and the same step
with another value of its domain labelled wrong (``0``). The reward model is a causal LM (a
copy of the stage's start model) fine-tuned with trl's SFTTrainer to write that label after
``<prompt>\\nstep: name=value\\nright=``; it scores a step by the probability of ``1`` against
``0`` at that position (one forward pass, no generation). The rule checker is the offline
verifier it is blended with (recis.llm.rewards.StepReward).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from recis.llm.rationale import TERM_BUCKETS
from recis.llm.task import Example, RelevanceTask

DOMAINS = {"terms": TERM_BUCKETS, "context": ("used", "ignored")}
ATTRIBUTE_DOMAIN = ("yes", "no", "na")
RIGHT, WRONG = "1", "0"


def step_prompt(prompt: str, step: str) -> str:
    return f"{prompt}\nstep: {step}\nright="


def labelled_steps(
    task: RelevanceTask, examples: Sequence[Example], seed: int = 0
) -> list[dict[str, str]]:
    """SFT rows ``{prompt, completion}``: every rule step right, and once wrong."""
    rng = random.Random(seed)
    rows = []
    for e in examples:
        prompt = task.prompt_text(e, False)
        for name, value in task.rationale(e, False).steps:
            domain = DOMAINS.get(name, ATTRIBUTE_DOMAIN)
            wrong = rng.choice([v for v in domain if v != value])
            rows.append({"prompt": step_prompt(prompt, f"{name}={value}"), "completion": RIGHT})
            rows.append({"prompt": step_prompt(prompt, f"{name}={wrong}"), "completion": WRONG})
    return rows


class GenerativeStepScorer:
    """P(step right) from a trained step reward model (a recis.llm.rewards.StepScorer).

    Args:
        model, tokenizer: the reward model.
        batch_size: prompts per forward pass.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        self.ids = [tokenizer.encode(t, add_special_tokens=False)[0] for t in (WRONG, RIGHT)]

    @torch.no_grad()
    def __call__(self, prompts: list[str], steps: list[str]) -> list[float]:
        texts = [step_prompt(p, s) for p, s in zip(prompts, steps)]
        side, self.tok.padding_side = self.tok.padding_side, "left"
        device = next(self.model.parameters()).device
        out: list[float] = []
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[i : i + self.batch_size], return_tensors="pt", padding=True)
                logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits[:, -1]
                out.extend(torch.softmax(logits[:, self.ids].float(), 1)[:, 1].tolist())
        finally:
            self.tok.padding_side = side
        return out


def train_step_rm(
    task: RelevanceTask,
    examples: Sequence[Example],
    init: Path,
    out_dir: Path,
    steps: int,
    batch_size: int,
    learning_rate: float,
    device: str,
    seed: int = 0,
) -> tuple[GenerativeStepScorer, list[dict[str, Any]]]:
    """Fine-tune a copy of ``init`` on labelled steps (saved under ``out_dir``); returns its
    scorer and trl's log history (also in ``out_dir/history.json``). An already trained one in
    ``out_dir/model`` is loaded instead (resume)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from recis.llm.model import load_model, load_tokenizer

    model_dir = out_dir / "model"
    if not (model_dir / "config.json").is_file():
        args = SFTConfig(
            output_dir=str(out_dir / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            bf16=False,
            use_cpu=device == "cpu",
            report_to=[],
            gradient_checkpointing=False,
            disable_tqdm=True,
            save_strategy="no",
            seed=seed,
            completion_only_loss=True,
            logging_steps=max(1, steps // 4),
        )
        ds = Dataset.from_list(labelled_steps(task, examples, seed))
        tok = load_tokenizer(init)
        trainer = SFTTrainer(model=str(init), args=args, train_dataset=ds, processing_class=tok)
        with contextlib.redirect_stdout(sys.stderr):  # transformers prints log dicts
            trainer.train()
        trainer.save_model(str(model_dir))
        tok.save_pretrained(str(model_dir))
        (out_dir / "history.json").write_text(json.dumps(trainer.state.log_history))
    history_file = out_dir / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    return GenerativeStepScorer(load_model(model_dir, device), load_tokenizer(model_dir)), history
