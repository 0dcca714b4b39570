"""Each stage on trl runs a few steps on the rule-decidable set and moves the right way; one
resumes from its checkpoint. Tiny shapes: the whole file is meant to stay well under a minute
on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch

from recis.llm.config import (
    AGRLStage,
    DPOStage,
    DyKnowStage,
    GRPOStage,
    LoraSettings,
    SFTStage,
    SHEStage,
)
from recis.llm.model import load_model, load_tokenizer
from recis.llm.retrieval import BM25Retriever
from recis.llm.rewards import StepReward
from recis.llm.scoring import level_probs
from recis.llm.stages import StageRun, run_dpo, run_grpo, run_sft
from recis.llm.step_rm import train_step_rm


def p_right(model_dir, task, examples) -> float:
    """Mean probability of the right level (one forward pass per example)."""
    probs = level_probs(load_model(model_dir), load_tokenizer(model_dir), task, examples)
    return (
        probs[torch.arange(len(examples)), torch.tensor([e.label for e in examples])].mean().item()
    )


def losses(history, key="loss"):
    return [h[key] for h in history if key in h]


@pytest.fixture(scope="module")
def sft_bare(tiny, tmp_path_factory):
    """SFT on level-only completions: the start model of the RL tests."""
    out = tmp_path_factory.mktemp("sft_bare")
    stage = SFTStage(max_steps=16, batch_size=8, learning_rate=3e-3, logging_steps=4)
    history = run_sft(stage, StageRun(tiny.bare, tiny.base, out), tiny.examples)
    return out / "model", history


def test_sft_loss_falls_and_a_resume_continues_from_the_checkpoint(tiny, sft_bare, tmp_path):
    _, history = sft_bare
    loss = losses(history)
    assert loss[-1] < 0.6 * loss[0]
    # with the rule rationale: stop at a checkpoint after 2 steps, then resume to 4
    stage = SFTStage(max_steps=2, batch_size=4, learning_rate=1e-3, save_steps=2, logging_steps=1)
    run = StageRun(tiny.task, tiny.base, tmp_path / "sft")
    run_sft(stage, run, tiny.examples[:16])
    assert (run.trainer_dir / "checkpoint-2").is_dir()
    resumed = StageRun(tiny.task, tiny.base, tmp_path / "sft", resume=True)
    assert resumed.checkpoint() == str(run.trainer_dir / "checkpoint-2")
    stage.max_steps = 4
    history = run_sft(stage, resumed, tiny.examples[:16])
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's state, 3-4 trained now
    state = json.loads((run.trainer_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_grpo_raises_the_probability_of_the_right_level_across_a_resume(tiny, sft_bare, tmp_path):
    start, _ = sft_bare
    exs = tiny.examples[:8]
    before = p_right(start, tiny.bare, exs)
    stage = GRPOStage(
        max_steps=2,
        batch_size=16,
        num_generations=8,
        learning_rate=3e-3,
        max_completion_length=3,
        logging_steps=1,
        dynamic_sampling="drop",
        save_steps=2,
    )
    run_grpo(stage, StageRun(tiny.bare, start, tmp_path / "grpo"), exs)
    run = StageRun(tiny.bare, start, tmp_path / "grpo", resume=True)  # steps 3-4 from checkpoint-2
    assert run.checkpoint() == str(run.trainer_dir / "checkpoint-2")
    stage.max_steps = 4
    history = run_grpo(stage, run, exs)
    assert [h["step"] for h in history if "reward" in h and "train_runtime" not in h] == [
        1,
        2,
        3,
        4,
    ]
    assert p_right(run.model_dir, tiny.bare, exs) > before
    kept = [h["groups/kept"] for h in history if "groups/kept" in h]
    assert kept and all(0.0 <= k <= 1.0 for k in kept)


def test_dpo_prefers_the_right_level_across_a_resume(tiny, sft_bare, tmp_path):
    start, _ = sft_bare
    stage = DPOStage(
        max_steps=2,
        batch_size=4,
        learning_rate=3e-3,
        pool=8,
        samples=4,
        max_completion_length=3,
        logging_steps=1,
        save_steps=2,
    )
    run_dpo(stage, StageRun(tiny.bare, start, tmp_path / "dpo"), tiny.examples[:8])
    run = StageRun(tiny.bare, start, tmp_path / "dpo", resume=True)  # step 3 from checkpoint-2
    stage.max_steps = 3
    history = run_dpo(stage, run, tiny.examples[:8])
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    assert history[0]["dpo/pairs"] > 0
    loss = losses(history)
    assert loss[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert loss[-1] < loss[0]


def test_agrl_replays_the_ground_truth_into_low_accuracy_groups(tiny, tmp_path):
    stage = AGRLStage(
        max_steps=1,
        batch_size=8,
        num_generations=4,
        learning_rate=1e-3,
        max_completion_length=12,
        logging_steps=1,
        replay_below=1.0,
        save_steps=1,
    )
    run = StageRun(tiny.task, tiny.base, tmp_path / "agrl")  # a random model: every group fails
    run_grpo(stage, run, tiny.examples[:4])
    # resumed from checkpoint-1: step 2 replays again (the replay is not lost on a restart)
    run = StageRun(tiny.task, tiny.base, tmp_path / "agrl", resume=True)
    assert run.checkpoint() == str(run.trainer_dir / "checkpoint-1")
    stage.max_steps = 2
    history = run_grpo(stage, run, tiny.examples[:4])
    replays = [h for h in history if "agrl/replayed" in h]
    assert [h["step"] for h in replays] == [1, 2]
    for h in replays:
        assert h["agrl/replayed"] == pytest.approx(0.25)  # one slot per group of 4
        # the replayed gold completion earns full label and rule rewards
        assert h["rewards/label/mean"] >= 0.25 and h["rewards/rules/mean"] >= 0.25


def test_dyknow_runs_two_groups_per_query(tiny, sft_bare, tmp_path):
    start, _ = sft_bare
    exs = BM25Retriever.from_config_path(tiny.corpus_file).with_context(tiny.examples[:4])
    assert all(e.context for e in exs)
    stage = DyKnowStage(
        max_steps=1,
        batch_size=8,
        num_generations=4,
        learning_rate=1e-3,
        max_completion_length=3,
        logging_steps=1,
        save_steps=1,
    )
    run_grpo(stage, StageRun(tiny.bare, start, tmp_path / "dyknow"), exs)
    # the two-group trainer resumes from its checkpoint like the plain GRPO stage
    run = StageRun(tiny.bare, start, tmp_path / "dyknow", resume=True)
    assert run.checkpoint() == str(run.trainer_dir / "checkpoint-1")
    stage.max_steps = 2
    history = run_grpo(stage, run, exs)
    gaps = [h for h in history if "dyknow/gap" in h]
    assert [h["step"] for h in gaps] == [1, 2]  # step 1 from the checkpoint, step 2 now
    for h in gaps:
        assert h["dyknow/gap"] == pytest.approx(
            h["dyknow/acc_with_context"] - h["dyknow/acc_without_context"], abs=1e-6
        )


def test_she_step_reward_model_learns_right_from_wrong_steps(tiny, tmp_path):
    scorer, history = train_step_rm(
        tiny.task,
        tiny.examples[:16],
        tiny.base,
        tmp_path / "rm",
        steps=12,
        batch_size=8,
        learning_rate=3e-3,
        device="cpu",
    )
    loss = losses(history)
    assert len(loss) >= 2 and loss[-1] < loss[0]
    e = tiny.examples[0]
    prompt = tiny.task.prompt_text(e, False)
    right = tiny.task.rationale(e, False).steps[0]
    p = scorer([prompt], [f"{right[0]}={right[1]}"])
    assert 0.0 <= p[0] <= 1.0
    reward = StepReward(tiny.task, scorer, verifier_weight=1.0)  # the verifier alone
    gold = tiny.task.completion(e)
    bad = gold.replace(f"terms={right[1]}", "terms=bogus")
    r = reward([prompt] * 2, [gold, bad], [tiny.task.rationale(e, False).text()] * 2)
    assert r[0] == 1.0 and r[1] < 1.0
    stage = SHEStage(
        max_steps=1,
        batch_size=8,
        num_generations=4,
        learning_rate=1e-3,
        max_completion_length=12,
        logging_steps=1,
        save_steps=1,
    )
    run_grpo(stage, StageRun(tiny.task, tiny.base, tmp_path / "she"), tiny.examples[:4], reward)
    run = StageRun(tiny.task, tiny.base, tmp_path / "she", resume=True)
    assert run.checkpoint() == str(run.trainer_dir / "checkpoint-1")
    stage.max_steps = 2
    history = run_grpo(stage, run, tiny.examples[:4], reward)
    assert [h["step"] for h in history if "rewards/steps/mean" in h] == [1, 2]


def test_lora_trains_adapters_and_saves_a_merged_model(tiny, tmp_path):
    from safetensors.torch import load_file

    stage = SFTStage(max_steps=2, batch_size=4, learning_rate=1e-2, logging_steps=1)
    run = StageRun(tiny.bare, tiny.base, tmp_path / "lora", lora=LoraSettings(r=4))
    run_sft(stage, run, tiny.examples[:8])
    assert (run.model_dir / "config.json").is_file()
    assert not (run.model_dir / "adapter_config.json").exists()  # merged, a plain model
    before = load_file(tiny.base / "model.safetensors")
    after = load_file(run.model_dir / "model.safetensors")
    assert set(after) == set(before)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    # only adapted linear layers change (attention / MLP projections), never the embeddings
    assert moved and all("proj" in k for k in moved)
