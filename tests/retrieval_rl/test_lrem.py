"""LREM (reason-then-embed): a tiny LM tower's generation and embedding, its gradient through
InfoNCE, the RL loss against a hand computation, the router's rules, resume, and ``recis
train`` / ``recis eval`` on a ``kind: lrem`` config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.llm.config import ScratchModelConfig
from recis.llm.model import build_scratch, load_model, load_tokenizer
from recis.retrieval_rl.config import IndexConfig
from recis.retrieval_rl.data import RetrievalData
from recis.retrieval_rl.encoder import TextDualEncoder, TokenizedTexts
from recis.retrieval_rl.lrem import LREMEncoder, ReasonEmbedTower, reasoning_targets
from recis.retrieval_rl.lrem_config import LREMRLConfig, RouterConfig, SFTConfig
from recis.retrieval_rl.lrem_router import hard_queries, lexical_overlap
from recis.retrieval_rl.lrem_train import LREMRLTrainer, LREMSFTTrainer, reasoning_loss

TOPICS = ["apple", "bread", "chair", "drum", "eagle", "flute", "grape", "house"]
COLORS = ["red", "blue", "green", "gold"]
N = 4  # reasoning tokens at most


def _texts() -> tuple[list[str], list[str]]:
    items = [f"{t} {c} {k}" for t in TOPICS for c in COLORS for k in ("big", "small")]
    queries = [f"{c} {t}" for t in TOPICS for c in COLORS]
    return queries, items


def _data(queries: list[str], items: list[str]) -> RetrievalData:
    """Query ``q`` (``color topic``) -> the ``big`` item of its color and topic."""
    q = np.arange(len(queries), dtype=np.int64)
    i = np.array([items.index(f"{x.split()[1]} {x.split()[0]} big") for x in queries])
    return RetrievalData(
        queries=queries,
        items=items,
        train_queries=q,
        train_items=i,
        labelled=([], [], np.zeros(0, np.int64)),
        positives=[np.array([v]) for v in i],
        query_count=np.ones(len(queries), np.int64),
        eval_queries=q,
        eval_relevant=[np.array([v]) for v in i],
        quality=None,
    )


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    queries, items = _texts()
    cfg = ScratchModelConfig(hidden_size=32, layers=2, heads=2, vocab_size=200, max_positions=64)
    out = tmp_path_factory.mktemp("lm")
    return build_scratch(cfg, [q + " =>" for q in queries] + items, out)


def _model(lm_dir: Path, seed: int = 0) -> tuple[LREMEncoder, RetrievalData]:
    queries, items = _texts()
    torch.manual_seed(seed)
    base = TextDualEncoder(
        TokenizedTexts.build(queries, 256), TokenizedTexts.build(items, 256), 256, 16, 16
    )
    tower = ReasonEmbedTower(load_model(lm_dir), load_tokenizer(lm_dir), 16, 16, N, " =>")
    return LREMEncoder(tower, base, queries, np.ones(len(queries), bool)), _data(queries, items)


def test_tiny_lrem_generates_at_most_n_tokens_then_embeds(lm_dir: Path) -> None:
    model, _ = _model(lm_dir)
    tower = model.tower
    prompts = model.prompts[:5]
    greedy, stopped = tower.reason(prompts)
    assert len(greedy) == 5 and all(len(r) <= N for r in greedy)
    assert all(tower.eos not in r for r in greedy)
    assert all(len(r) < N for r, s in zip(greedy, stopped) if s)  # stopped: wrote the eos
    torch.manual_seed(0)
    sampled, _ = tower.reason(prompts, sample=True, num=3)
    assert len(sampled) == 15 and all(len(r) <= N for r in sampled)
    assert len({tuple(r) for r in sampled}) > 1  # sampling, not three copies of greedy
    with torch.no_grad():
        emb, logp, mask = tower(prompts, greedy, stopped)
        assert emb.shape == (5, 16)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
        assert mask.sum(1).tolist() == [len(r) + int(s) for r, s in zip(greedy, stopped)]
        # right padding changes nothing: each row alone gives the same embedding and log-probs
        for b in range(5):
            e1, lp1, m1 = tower(prompts[b : b + 1], greedy[b : b + 1], stopped[b : b + 1])
            torch.testing.assert_close(e1[0], emb[b], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(lp1[0][m1[0]], logp[b][mask[b]], atol=1e-5, rtol=1e-4)
        # the router: easy rows use the plain query tower, hard rows LREM
        model.hard[:] = [True, False, True, False, False] + [False] * (len(model.hard) - 5)
        rows = torch.arange(5)
        mixed = model.encode_queries(rows)
        torch.testing.assert_close(mixed[[1, 3, 4]], model.base.encode_queries(rows)[[1, 3, 4]])
        torch.testing.assert_close(mixed[[0, 2]], emb[[0, 2]], atol=1e-5, rtol=1e-4)


def test_reasoning_targets_are_item_tokens_absent_from_the_query() -> None:
    assert reasoning_targets([1, 2, 3], [2, 5, 1, 6, 5, 7, 8], 3) == [5, 6, 7]
    assert reasoning_targets([1, 2], [1, 2], 4) == []
    assert reasoning_targets([1], [2, 3], 0) == []


def test_embedding_gets_gradient_through_infonce(lm_dir: Path) -> None:
    model, data = _model(lm_dir)
    cfg = SFTConfig(batch_size=8, lr=1e-2, sft_weight=0.0, infonce_weight=1.0)
    trainer = LREMSFTTrainer(model, data, cfg, seed=0)
    emb_table = model.tower.lm.get_input_embeddings().weight
    before = emb_table.detach().clone()
    logs = [trainer.step() for _ in range(3)]
    assert emb_table.grad is not None and float(emb_table.grad.abs().sum()) > 0
    assert not torch.equal(before, emb_table.detach())  # the LM's embedding moved
    assert all(p.grad is None for p in model.base.parameters())  # the item tower is frozen
    assert all(math.isfinite(x["infonce"]) for x in logs)


def test_sft_teaches_the_reasoning_targets(lm_dir: Path) -> None:
    model, data = _model(lm_dir)
    trainer = LREMSFTTrainer(model, data, SFTConfig(batch_size=8, lr=3e-2), seed=0)
    logs = [trainer.step() for _ in range(10)]
    first, last = np.mean([x["sft_nll"] for x in logs[:3]]), logs[-1]["sft_nll"]
    assert last < 0.5 * first, (first, last)


def test_rl_loss_equals_a_hand_computation() -> None:
    # two queries x two reasonings; rewards -> advantages (r - mean) / (std + eps)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-1.0, -1.0], [-3.0, 0.0]])
    old = torch.tensor([[-1.5, -2.0], [-0.4, 0.0], [-1.0, -1.0], [-3.0, 0.0]])
    ref = torch.tensor([[-1.0, -1.5], [-0.5, 0.0], [-2.0, -1.0], [-3.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    loss, parts = reasoning_loss(logp, old, mask, rewards, 2, clip=0.2, logp_ref=ref, beta=0.1)
    a = 1.0 / (1.0 + 1e-6)  # group 1: mean 0.5, std 0.5; group 2: all equal -> 0
    # tokens (seq, advantage, logp, old, ref)
    toks = [(a, -1.0, -1.5, -1.0), (a, -2.0, -2.0, -1.5), (-a, -0.5, -0.4, -0.5)]
    toks += [(0.0, -1.0, -1.0, -2.0), (0.0, -1.0, -1.0, -1.0), (0.0, -3.0, -3.0, -3.0)]
    sur, kl = [], []
    for adv, lp, lo, lr in toks:
        rho = math.exp(lp - lo)
        sur.append(min(rho * adv, min(max(rho, 0.8), 1.2) * adv))
        d = lr - lp
        kl.append(math.exp(d) - d - 1)
    want = -sum(sur) / 6 + 0.1 * sum(kl) / 6
    assert float(loss) == pytest.approx(want, rel=1e-5)  # float32
    assert parts["clipped"] == pytest.approx(1 / 6)  # exp(0.5) > 1.2


def test_rl_step_makes_the_rewarded_reasoning_likelier(lm_dir: Path) -> None:
    model, _ = _model(lm_dir)
    tower = model.tower
    prompt = model.prompts[0]
    a, b = tower.tokens(["green apple"])[0], tower.tokens(["house drum"])[0]
    groups = ([prompt, prompt], [a, b], [True, True])

    def seq_logp() -> torch.Tensor:
        logp, mask = tower(*groups)[1:]
        return (logp * mask).sum(1)

    before = seq_logp().detach()
    opt = torch.optim.SGD(tower.parameters(), lr=0.1)
    logp, mask = tower(*groups)[1:]
    loss, _ = reasoning_loss(logp, logp.detach(), mask, torch.tensor([1.0, 0.0]), 2, 0.2)
    loss.backward()
    opt.step()
    after = seq_logp().detach()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_rl_reward_is_the_reciprocal_rank_of_the_target(lm_dir: Path) -> None:
    model, data = _model(lm_dir)
    cfg = LREMRLConfig(batch_size=4, group_size=2, k=5, index=IndexConfig())
    trainer = LREMRLTrainer(model, model.tower.frozen_copy(), data, cfg, seed=0)
    pool = model.encode_pool()
    q = torch.tensor([0, 1, 2])
    target = torch.from_numpy(data.train_items[:3])
    emb = pool[target].clone()  # the target's own vector: rank 1 unless an exact tie beats it
    scores = emb @ pool.T
    rank = (scores > scores.gather(1, target[:, None])).sum(1) + 1
    want = torch.where(rank <= 5, 1.0 / rank.float(), torch.zeros(3))
    torch.testing.assert_close(trainer.rewards(emb, q), want)
    far = -pool[target]  # the target is the last item: outside any top 5
    assert trainer.rewards(far, q).tolist() == [0.0, 0.0, 0.0]
    trainer.cfg.reward = "recall"
    assert trainer.rewards(emb, q).tolist() == (rank <= 5).float().tolist()


def test_router_rules_on_hand_made_queries() -> None:
    items = ["red apple fruit", "wooden chair", "blue sky"]
    queries = ["red apple", "apple", "a very long query about chairs", "zzz"]
    count = np.array([3, 0, 1, 0])
    share = lexical_overlap(queries, items)
    # "red apple": every character is in "red apple fruit"; "zzz": no BM25 hit at all
    assert share[0] == 1.0 and share[3] == 0.0
    chars = set("a very long query about chairs") - {" "}
    assert share[2] == pytest.approx(len(chars & set("woodenchair")) / len(chars))
    rule = {
        "all": [True] * 4,
        "overlap": [False, False, True, True],
        "length": [False, False, True, False],
        "tail": [False, True, False, True],
    }
    for name, want in rule.items():
        cfg = RouterConfig(rule=name, overlap_below=0.5, min_length=10, tail_max_count=0)  # type: ignore[arg-type]  # each literal
        assert hard_queries(cfg, queries, items, count).tolist() == want, name
    only = hard_queries(RouterConfig(rule="all"), queries, items, count, rows=np.array([1, 2]))
    assert only.tolist() == [False, True, True, False]


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_stage_resumes_exactly(lm_dir: Path, tmp_path: Path, stage: str) -> None:
    def run(stop: int | None, resume: Path | None) -> dict[str, torch.Tensor]:
        model, data = _model(lm_dir)
        trainer: LREMSFTTrainer | LREMRLTrainer
        if stage == "sft":
            trainer = LREMSFTTrainer(model, data, SFTConfig(batch_size=8, lr=1e-2), seed=0)
        else:
            cfg = LREMRLConfig(batch_size=4, group_size=3, k=8, lr=1e-2)
            trainer = LREMRLTrainer(model, model.tower.frozen_copy(), data, cfg, seed=0)
        torch.manual_seed(7)
        if resume is not None:
            trainer.restore(resume)
        while trainer.step_count < 4:
            trainer.step()
            if trainer.step_count == stop:
                trainer.save(tmp_path / "checkpoint-2")
                torch.manual_seed(123)  # a resumed run must not depend on the process' RNG
                return {}
        return {k: v.clone() for k, v in model.tower.state_dict().items()}

    whole = run(None, None)
    run(2, None)
    resumed = run(None, tmp_path / "checkpoint-2")
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, msg=name)


def test_recis_train_and_eval_on_an_lrem_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recis.cli import main

    queries, items = _texts()
    rows = [
        (q, t, int(q.split()[1] in t and q.split()[0] in t), "dev" if j % 4 else "test")
        for j, q in enumerate(queries)
        for t in items[::3]
    ]
    q, t, label, split = zip(*rows)
    pq.write_table(
        pa.table({"query": q, "title": t, "label": label, "split": split}), tmp_path / "p.parquet"
    )
    cfg = tmp_path / "lrem.yaml"
    cfg.write_text(
        f"kind: lrem\nrun_dir: {tmp_path / 'run'}\n"
        f"data: {{path: {tmp_path / 'p.parquet'}, eval: test}}\n"
        "encoder: {buckets: 256, width: 16, dim: 16}\n"
        "infonce: {steps: 3, batch_size: 8}\n"
        "lm: {max_reasoning_tokens: 3, scratch: {hidden_size: 16, heads: 2, vocab_size: 150}}\n"
        "sft: {steps: 3, batch_size: 4, checkpoint_every: 2}\n"
        "rl: {steps: 2, batch_size: 4, group_size: 2, k: 5, checkpoint_every: 1}\n"
        "router: {rule: tail}\n"
        "eval: {ks: [5]}\n"
    )
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "infonce: " in out and "lrem_sft: " in out and "lrem_rl: " in out
    run = tmp_path / "run"
    for part in ("lm/base/config.json", "lrem_sft/checkpoint-2", "lrem_rl/checkpoint-2"):
        assert (run / part).exists(), part
    logged = (run / "log.jsonl").read_text().splitlines()
    assert len(logged) == 3 + 3 + 2 and '"stage": "lrem_rl"' in logged[-1]
    assert main(["eval", str(cfg), "--checkpoint", "lrem_rl"]) == 0
    again = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("lrem_rl: "))
    assert again.splitlines()[0] == line  # a saved stage evaluates as it did after training
    assert main(["train", str(cfg), "--resume", str(run)]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if x.startswith("lrem_rl")) == line
