"""The query rewriter: a small causal LM (a local HF directory, or a scratch Llama with a BPE
tokenizer trained with ``tokenizers``), trained with trl's SFTTrainer then GRPOTrainer, and
sampled with HF ``generate`` (``num_return_sequences``; nothing here generates by hand).

Prompt ``"query: {q}\\nrewrite:"``, completion ``" {rewrite}"`` (the rewrite is read back up to
its first line break, :func:`~recis.retrieval_rl.synth_rewards.clean_rewrite`). Each stage
reads a saved model directory and writes another (``run_dir/rewriter/{scratch,sft,grpo}``):
trl is always given a directory, as in :mod:`recis.llm.stages`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recis.llm.config import ScratchModelConfig
from recis.llm.model import build_scratch, load_model, load_tokenizer
from recis.retrieval_rl.synth_config import RewriterGRPO, RewriterSFT
from recis.retrieval_rl.synth_rewards import RewriteReward, trl_reward


def prompt(query: str) -> str:
    return f"query: {query}\nrewrite:"


def build_rewriter(cfg: ScratchModelConfig, pairs: Sequence[tuple[str, str]], out: Path) -> Path:
    """A scratch rewriter whose tokenizer is trained on the prompts and rewrites of ``pairs``."""
    texts = [prompt(q) + " " + r for q, r in pairs]
    return build_scratch(cfg, texts, out)


def _args(max_steps: int, batch: int, lr: float, seed: int, out: Path, device: str) -> dict:
    """The trainer arguments both stages share (no checkpoints: a stage is rerun whole)."""
    from recis.llm.stages import common_trl_args  # imports trl: the llm extra

    log_every = max(1, max_steps // 10)
    common = common_trl_args(out / "trainer", max_steps, batch, lr, seed, device, log_every)
    return {**common, "save_strategy": "no"}


def run_sft(
    init: Path, pairs: Sequence[tuple[str, str]], cfg: RewriterSFT, out: Path, device: str
) -> list[dict[str, Any]]:
    """trl SFT on (query, rewrite) pairs, loss on the completion only; the model goes to
    ``out/model``; returns trl's log history (``loss`` every ``max_steps // 10`` steps)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": prompt(q), "completion": " " + r} for q, r in pairs]
    args = SFTConfig(
        **_args(cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.seed, out, device),
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=str(init),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(init),
    )
    from recis.llm.stages import train_and_save

    return train_and_save(trainer, out / "model")


def run_grpo(
    init: Path,
    queries: Sequence[str],
    rewards: Sequence[RewriteReward],
    weights: Sequence[float],
    cfg: RewriterGRPO,
    max_chars: int,
    out: Path,
    device: str,
) -> list[dict[str, Any]]:
    """trl GRPO on the rewrite rewards (one group = one query's ``num_generations`` rewrites);
    the model goes to ``out/model``; returns trl's log history (each reward's mean logged as
    ``rewards/<name>/mean``)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        **_args(cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.seed, out, device),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        reward_weights=list(weights),
    )
    funcs: list[Any] = [trl_reward(r, max_chars) for r in rewards]  # trl's list type is invariant
    trainer = GRPOTrainer(
        model=str(init),
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": prompt(q), "query": q} for q in queries]),
        processing_class=load_tokenizer(init),
    )
    from recis.llm.stages import train_and_save

    return train_and_save(trainer, out / "model")


def rewrite(
    model_dir: Path,
    queries: Sequence[str],
    n: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    device: str,
) -> list[list[str]]:
    """``n`` sampled completions per query (raw text; see ``clean_rewrite``)."""
    from recis.llm.stages import sample

    model = load_model(model_dir, device)
    tok = load_tokenizer(model_dir)
    prompts = [prompt(q) for q in queries]
    return sample(model, tok, prompts, n, max_new_tokens, temperature, batch_size)


def model_version(model_dir: Path) -> str:
    """The first 12 hex digits of a sha256 over the directory's config and weight files."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.suffix in (".json", ".safetensors", ".bin") and path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]
