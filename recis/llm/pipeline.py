"""A relevance-LLM run: the base model, then each stage in order, evaluated after each.

Layout of ``run_dir``::

    config.yaml             the validated config
    base/                   the scratch model and tokenizer (``model.scratch``)
    stages/<name>/trainer/  trl's output (checkpoint-N: what a resume continues from)
    stages/<name>/model/    the stage's model (the next stage starts from it)
    stages/<name>/eval.json the stage's metrics on data.eval
    plots/relevance_llm.png loss and reward curves per stage, eval AUC per stage
    metrics.jsonl, tb/      the run log (recis.train.runlog): train records per logging step
                            (loss, reward, reward std, kept groups, ...) and eval records per stage

Eval metrics (recis.llm.scoring): ``auc`` of the one-pass serving score against
``label >= relevant_from``, ``accuracy`` and ``acc_level_k``; with context chunks also the
same ``no_context_*`` metrics with the chunk left out.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import TypeAdapter

from recis.errors import CheckpointError, OutputError
from recis.llm import pools
from recis.llm.config import (
    DPOStage,
    DyKnowStage,
    RelevanceLLMConfig,
    SFTStage,
    SHEStage,
)
from recis.llm.model import build_scratch, load_model, load_tokenizer
from recis.llm.plots import plot_llm_run
from recis.llm.retrieval import ChunkRetriever, attach_context, context_retriever
from recis.llm.rewards import StepReward
from recis.llm.scoring import level_probs, level_token_ids, relevance_metrics
from recis.llm.stages import StageRun, run_dpo, run_grpo, run_sft, sample, sft_rows
from recis.llm.step_rm import train_step_rm
from recis.llm.task import Example, RelevanceTask, load_examples
from recis.train.runlog import RunLogger

OUTPUTS = ("config.yaml", "base", "stages", "metrics.jsonl", "tb")


def check_run_dir(cfg: RelevanceLLMConfig, resume: bool, overwrite: bool) -> list[str]:
    """The :data:`OUTPUTS` a previous run left in ``run_dir``; refused (OutputError) unless the
    run resumes or overwrites."""
    run_dir = Path(cfg.run_dir)
    used = [n for n in OUTPUTS if (run_dir / n).exists()]
    if used and not (resume or overwrite):
        raise OutputError(
            f"{run_dir}: holds a run ({', '.join(used)}); pass --resume or --overwrite"
        )
    return used


def prepare_dir(cfg: RelevanceLLMConfig, resume: bool, overwrite: bool) -> Path:
    """The run directory: a previous run there is refused unless resumed or overwritten
    (``overwrite`` removes only the :data:`OUTPUTS`); writes ``config.yaml``."""
    run_dir = Path(cfg.run_dir)
    used = check_run_dir(cfg, resume, overwrite)
    if overwrite:
        for n in used:
            p = run_dir / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump = TypeAdapter(RelevanceLLMConfig).dump_python(cfg, mode="json")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dump, sort_keys=False))
    except OSError as err:
        raise OutputError(f"{run_dir}: cannot write: {err.strerror}") from None
    return run_dir


def base_model(
    cfg: RelevanceLLMConfig, run_dir: Path, task: RelevanceTask, train: Sequence[Example]
) -> Path:
    """The model every first stage starts from (built from scratch once, or ``model.path``)."""
    if cfg.model.path is not None:
        if not (Path(cfg.model.path) / "config.json").is_file():
            raise CheckpointError(f"model.path: {cfg.model.path} holds no HF model (config.json)")
        return Path(cfg.model.path)
    out = run_dir / "base"
    if not (out / "config.json").is_file():
        assert cfg.model.scratch is not None
        texts = [r["prompt"] + r["completion"] for r in sft_rows(task, train)]
        build_scratch(cfg.model.scratch, [*texts, *task.levels.names], out)
    return out


def evaluate_model(
    model_dir: Path, task: RelevanceTask, examples: Sequence[Example], device: str, batch: int
) -> dict[str, Any]:
    """Serving-score metrics of a saved model on ``examples`` (and without their chunks)."""
    model, tok = load_model(model_dir, device), load_tokenizer(model_dir)
    level_token_ids(tok, task.levels.names)
    metrics: dict[str, Any] = relevance_metrics(
        level_probs(model, tok, task, examples, batch), examples, task
    )
    if any(e.context for e in examples):
        bare = level_probs(model, tok, task, examples, batch, with_context=False)
        metrics.update(
            {f"no_context_{k}": v for k, v in relevance_metrics(bare, examples, task).items()}
        )
    return metrics


def _numbers(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class Pipeline:
    """One run of ``cfg`` (see the module docstring)."""

    def __init__(
        self,
        cfg: RelevanceLLMConfig,
        resume: bool = False,
        overwrite: bool = False,
        retriever: ChunkRetriever | None = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        check_run_dir(cfg, resume, overwrite)  # before reading data; nothing written yet
        self.task = RelevanceTask(cfg.prompt, cfg.levels)
        self.train = load_examples(cfg.data.train, cfg.data, cfg.levels, cfg.data.max_train)
        ev = cfg.data.eval
        self.eval = load_examples(ev, cfg.data, cfg.levels, cfg.data.max_eval) if ev else []
        retriever = context_retriever(cfg, retriever)
        if retriever is not None:
            self.train = attach_context(retriever, self.train)
            self.eval = attach_context(retriever, self.eval)
        self.run_dir = prepare_dir(cfg, resume, overwrite)  # the data read: now write
        self.logger = RunLogger(self.run_dir, tensorboard=cfg.tensorboard)

    def run(self) -> dict[str, dict[str, Any]]:
        """Train and evaluate every stage; returns each stage's eval metrics (and seconds)."""
        base = base_model(self.cfg, self.run_dir, self.task, self.train)
        level_token_ids(load_tokenizer(base), self.task.levels.names)
        done: dict[str, Path] = {"base": base}
        results: dict[str, dict[str, Any]] = {}
        prev, offset = "base", 0
        try:
            for stage in self.cfg.stages:
                assert stage.name is not None
                run = StageRun(
                    self.task,
                    done[stage.init or prev],
                    self.run_dir / "stages" / stage.name,
                    self.cfg.device,
                    self.resume,
                    self.cfg.model.lora,
                    self.cfg.model.dtype,
                )
                results[stage.name] = self._stage(stage, run, offset)
                offset += stage.max_steps
                done[stage.name] = run.model_dir
                prev = stage.name
        finally:
            self.logger.close()
        plot_llm_run(self.run_dir)
        return results

    def _stage(self, stage: Any, run: StageRun, offset: int) -> dict[str, Any]:
        """Train one stage (skipped when its model is saved and the run resumes), evaluate it."""
        eval_path = run.out_dir / "eval.json"
        if self.resume and (run.model_dir / "config.json").is_file() and eval_path.is_file():
            return json.loads(eval_path.read_text())
        start, cpu = time.perf_counter(), time.process_time()
        history = self._train(stage, run)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        for h in history:
            rec = _numbers(h)  # "part": a record of a stage's helper (SHE's step reward model)
            rec.update(step=offset + int(h.get("step", 0)), split="train", stage=stage.name)
            if "part" in h:
                rec["part"] = h["part"]
            self.logger.log(rec)
            self.logger.scalars(rec)
        metrics: dict[str, Any] = {"seconds": seconds, "cpu_seconds": cpu, "steps": stage.max_steps}
        if self.eval:
            metrics.update(
                evaluate_model(
                    run.model_dir, self.task, self.eval, self.cfg.device, self.cfg.eval_batch_size
                )
            )
        rec = {"step": offset + stage.max_steps, "split": "eval", "stage": stage.name, **metrics}
        self.logger.log(rec)
        self.logger.scalars(rec)
        self.logger.flush(sync=True)
        eval_path.write_text(json.dumps(metrics, indent=1))
        return metrics

    def _train(self, stage: Any, run: StageRun) -> list[dict[str, Any]]:
        if isinstance(stage, SFTStage):
            return run_sft(stage, run, self.train)
        if isinstance(stage, DPOStage):
            return run_dpo(stage, run, self.train)
        if isinstance(stage, DyKnowStage):
            probs = self._start_probs(run, self.train[: 4 * (stage.pool or len(self.train))])
            return run_grpo(
                stage, run, pools.by_uncertainty(self.train[: len(probs)], probs, stage.pool)
            )
        if isinstance(stage, SHEStage):
            keep = pools.diversified(self.train, stage.max_per_title, self.task.num_levels)
            kept = [self.train[i] for i in keep]
            probs = self._start_probs(run, kept, with_ctx=False)
            pool = pools.curriculum(kept, probs, stage.curriculum_stages, stage.pool, stage.seed)
            scorer, rm_history = train_step_rm(
                self.task,
                pool,
                run.init,
                run.out_dir / "step_rm",
                stage.reward_model_steps,
                stage.batch_size,
                stage.learning_rate * 10,
                self.cfg.device,
                stage.seed,
            )
            reward = StepReward(self.task, scorer, stage.verifier_weight)
            rm = [{**_numbers(h), "part": "step_rm"} for h in rm_history if "loss" in h]
            return rm + run_grpo(stage, run, pool, reward)
        pool = pools.first(self.train, stage.pool)
        if stage.prefilter:
            model, tok = load_model(run.init, self.cfg.device), load_tokenizer(run.init)
            prompts = [self.task.prompt_text(e, False) for e in pool]
            outs = sample(model, tok, prompts, stage.prefilter, stage.max_completion_length)
            pool = pools.mixed(pool, outs, self.task) or pool  # none mixed: keep them all
        return run_grpo(stage, run, pool)

    def _start_probs(
        self, run: StageRun, examples: Sequence[Example], with_ctx: bool = False
    ) -> torch.Tensor:
        """The start model's level distributions ``[N, L]`` (pool selection)."""
        model, tok = load_model(run.init, self.cfg.device), load_tokenizer(run.init)
        return level_probs(model, tok, self.task, examples, self.cfg.eval_batch_size, with_ctx)


def train(
    cfg: RelevanceLLMConfig,
    resume: bool = False,
    overwrite: bool = False,
    retriever: ChunkRetriever | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every stage of ``cfg`` (DyKnow-RAG's chunks from ``retriever``, else the BM25 of
    ``cfg.retriever``); returns each stage's eval metrics."""
    return Pipeline(cfg, resume, overwrite, retriever).run()
