"""Retrieval-GRPO on a toy task, its resume, and ``recis train`` on a retrieval_grpo config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.retrieval_rl.config import GRPOConfig, IndexConfig, RewardWeights
from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts
from recis.retrieval_rl.rewards import RelevanceReward, WeightedReward
from recis.retrieval_rl.trainer import PairSampler, RetrievalGRPOTrainer

TOPICS = "abcdefgh"


class _TopicJudge:
    """Relevant when the first characters (the topic) agree."""

    def score(self, queries: list[str], titles: list[str]) -> torch.Tensor:
        return torch.tensor([float(q[0] == t[0]) for q, t in zip(queries, titles)])


def _toy(seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    digits = np.array(list("0123456789"))
    items = [t + "".join(rng.choice(digits, 3)) for t in TOPICS for _ in range(8)]
    queries = [t + "".join(rng.choice(digits, 3)) for t in TOPICS for _ in range(4)]
    torch.manual_seed(seed)
    qt, it = TokenizedTexts.build(queries, 512), TokenizedTexts.build(items, 512)
    model = TextDualEncoder(qt, it, 512, 16, 16)
    ref = TextDualEncoder(qt, it, 512, 16, 16)
    ref.load_state_dict(model.state_dict())
    reward = WeightedReward([(RelevanceReward(_TopicJudge(), queries, items), 1.0)])
    cfg = GRPOConfig(
        batch_size=16,
        k=16,
        lr=0.1,
        policy_temperature=0.1,
        beta=0.0,
        infonce_weight=0.0,
        index=IndexConfig(refresh_every=2),
        rewards=RewardWeights(),
    )
    return queries, items, model, ref, reward, cfg


class _Data:
    def __init__(self, n: int) -> None:
        self.train_queries = np.arange(n, dtype=np.int64)
        self.train_items = np.arange(n, dtype=np.int64)


def _relevance_at_k(model: TextDualEncoder, queries: list[str], items: list[str], k: int) -> float:
    with torch.no_grad():
        s = model.encode_queries(torch.arange(len(queries))) @ model.encode_pool().T
    top = s.topk(k, dim=1).indices
    return float(
        np.mean([items[i][0] == queries[q][0] for q in range(len(queries)) for i in top[q]])
    )


def test_grpo_steps_raise_relevance_at_k() -> None:
    queries, items, model, ref, reward, cfg = _toy()
    before = _relevance_at_k(model, queries, items, 8)
    trainer = RetrievalGRPOTrainer(model, ref, reward, cfg, 0.05)
    sampler = PairSampler(_Data(len(queries)), cfg.batch_size, 0)  # type: ignore[arg-type]  # toy
    logs = [trainer.step(*sampler.next()) for _ in range(30)]
    after = _relevance_at_k(model, queries, items, 8)
    assert after > before + 0.3, (before, after)
    assert logs[-1]["reward_relevance"] > logs[0]["reward_relevance"]
    assert trainer.index.refreshes == 15


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path: Path) -> None:
    def run(stop: int | None, resume: Path | None) -> dict[str, torch.Tensor]:
        queries, _, model, ref, reward, cfg = _toy()
        cfg.beta, cfg.updates_per_batch = 0.1, 2  # the anchor and the clip both in play
        trainer = RetrievalGRPOTrainer(model, ref, reward, cfg, 0.05)
        sampler = PairSampler(_Data(len(queries)), cfg.batch_size, 0)  # type: ignore[arg-type]
        if resume is not None:
            trainer.restore(resume, sampler)
        while trainer.step_count < 6:
            trainer.step(*sampler.next())
            if trainer.step_count == stop:
                trainer.save(tmp_path / "checkpoint-4", sampler)
                return {}
        return {k: v.clone() for k, v in model.state_dict().items()}

    whole = run(None, None)
    run(4, None)
    resumed = run(None, tmp_path / "checkpoint-4")
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_recis_train_cli_on_a_retrieval_grpo_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recis.cli import main

    queries, items, *_ = _toy()
    rows = [
        (q, t, int(q[0] == t[0]), "dev" if i % 4 else "test")
        for i, q in enumerate(queries)
        for t in items[::4]
    ]
    q, t, label, split = zip(*rows)
    pq.write_table(
        pa.table({"query": q, "title": t, "label": label, "split": split}), tmp_path / "p.parquet"
    )
    cfg = tmp_path / "rrl.yaml"
    cfg.write_text(
        f"kind: retrieval_grpo\nrun_dir: {tmp_path / 'run'}\n"
        f"data: {{path: {tmp_path / 'p.parquet'}, eval: test}}\n"
        "encoder: {buckets: 512, width: 16, dim: 16}\n"
        "infonce: {steps: 5, batch_size: 16}\n"
        "grpo: {steps: 4, batch_size: 8, k: 4, checkpoint_every: 2, rewards: {exclusivity: 0.5}}\n"
        "eval: {ks: [5]}\n"
    )
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "infonce: queries 8.0000" in out and "grpo: " in out and "relevance@10" in out
    # every eval query is new (long-tail): the head part has no query, so no head figure
    assert "tail_recall@5" in out and "head_recall" not in out and "nan" not in out
    run = tmp_path / "run"
    assert (run / "infonce" / "model").is_dir() and (run / "grpo" / "checkpoint-4").is_dir()
    logged = (run / "log.jsonl").read_text().splitlines()
    assert len(logged) == 5 + 4 and "reward_exclusivity" in logged[-1]
    assert main(["train", str(cfg)]) != 0  # a used run directory is refused
    assert "not empty" in capsys.readouterr().err
    assert main(["train", str(cfg), "--resume", str(run)]) == 0
    trained = capsys.readouterr().out.splitlines()
    # recis eval re-evaluates a saved stage: the same line as the run's own evaluation
    assert main(["eval", str(cfg), "--checkpoint", "infonce"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == trained[0]
    assert main(["eval", str(cfg), "--checkpoint", "grpo"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == trained[1]
    assert main(["eval", str(cfg), "--checkpoint", "nope"]) == 2
    assert "--checkpoint: expected one of infonce, grpo" in capsys.readouterr().err
