"""A relevance LLM (``kind: relevance_llm``) exported for serving: its one-pass scoring head.

``recis eval`` reads each pair's serving prefix (:meth:`RelevanceTask.serving_prefix`) once
and turns the next-token probabilities of the ``L`` level tokens into a graded score
(:mod:`recis.llm.scoring`). The version keeps exactly what that needs:

- ``llm/``: the model's decoder without its vocabulary projection (``base_model``: the
  transformer up to the last hidden state) and the tokenizer, as an HF directory that
  ``transformers.AutoModel`` loads;
- ``head.safetensors``: the ``L`` rows of the LM head for the level tokens (``weight [L, H]``,
  and ``bias [L]`` when the head has one), so serving computes ``L`` logits per pair, not the
  vocabulary's ``V``;
- with a retriever in the run's config (DyKnow-RAG), its corpus (``retriever/corpus.parquet``):
  a row without a context gets the chunk ``recis eval`` gives it.

Export checks on a probe prompt that the head reproduces the model's own level logits (a
model that rescales or soft-caps its logits after the head is refused: the sliced head would
not equal it). The version scores JSON rows with the training data's columns (query, title,
attributes, optional context) as ``recis eval`` does: the same prompt, the same cumulative
score (fp32: equal within 1e-5), plus each level's probability ``p_<name>``.

Shapes: ``B`` rows, ``T`` prefix tokens, ``H`` hidden size, ``L`` levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file, save_file

from recis.config import load_yaml
from recis.errors import CheckpointError, ConfigError, DataError
from recis.llm.command import model_dir
from recis.llm.config import (
    LevelsConfig,
    PromptConfig,
    RelevanceLLMConfig,
    build_llm_config,
    is_relevance_llm,
)
from recis.llm.example import Example
from recis.llm.model import load_model, load_tokenizer
from recis.llm.retrieval import BM25Retriever
from recis.llm.scoring import cumulative_score, level_token_ids, prefix_level_probs
from recis.llm.task import RelevanceTask

from .manifest import read_manifest
from .scoring import RowScoring

LLM_DIR = "llm"
HEAD = "head.safetensors"
CORPUS = "retriever/corpus.parquet"
TASK = "relevance"  # the score's name in /score answers
TASKS = [{"name": TASK, "loss": "levels"}]
_PROBE = Example("probe query", "probe item title", 0, {}, "")


def is_llm_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a relevance-LLM run (its ``config.yaml`` says so)."""
    config = run_dir / "config.yaml"
    return config.is_file() and is_relevance_llm(load_yaml(config))


def pick_stage(cfg: RelevanceLLMConfig, checkpoint: str | None) -> Path:
    """The model to export: ``checkpoint`` (a stage name or an HF model directory), else the
    last stage of the config that saved a model."""
    if checkpoint is not None:
        return model_dir(cfg, checkpoint)
    for stage in reversed(cfg.stages):
        path = Path(cfg.run_dir) / "stages" / str(stage.name) / "model"
        if (path / "config.json").is_file():
            return path
    raise CheckpointError(f"{cfg.run_dir}: no stage has saved a model (stages/<name>/model)")


@dataclass
class LLMRun:
    """A relevance-LLM run's model to serve: the causal LM of one stage, its tokenizer, the
    level tokens' ids and their rows of the LM head (checked against the model's logits)."""

    cfg: RelevanceLLMConfig
    source: Path  # the stage's model directory
    model: Any
    tokenizer: Any
    ids: list[int]
    head: dict[str, torch.Tensor]  # weight [L, H] (and bias [L])

    @classmethod
    def load(
        cls, run_dir: Path, checkpoint: str | None = None, device: str | None = None
    ) -> LLMRun:
        """``checkpoint``: a stage name or model directory (default: the last trained stage);
        the model on ``device`` (default: the run's configured device)."""
        cfg = build_llm_config(load_yaml(run_dir / "config.yaml"))
        cfg.run_dir = str(run_dir)  # the folder given, wherever the run was trained
        source = pick_stage(cfg, checkpoint)
        model = load_model(source, device or cfg.device).eval()
        tokenizer = load_tokenizer(source)
        ids = level_token_ids(tokenizer, cfg.levels.names)
        out = model.get_output_embeddings()
        if not isinstance(out, torch.nn.Linear):
            raise ConfigError(f"{source}: the model's output head is not a linear layer")
        head = {"weight": out.weight.detach()[ids].float().contiguous()}
        if out.bias is not None:
            head["bias"] = out.bias.detach()[ids].float().contiguous()
        task = RelevanceTask(cfg.prompt, cfg.levels)
        check_head(model, HeadScorer(model.base_model, head), tokenizer, task, ids, source)
        return cls(cfg, source, model, tokenizer, ids, head)

    def spec(self) -> dict[str, Any]:
        """The manifest's ``relevance_llm`` entry (the retriever's corpus file not included)."""
        cfg = self.cfg
        return {
            "stage": self.source.parent.name if self.source.name == "model" else str(self.source),
            "model_dir": LLM_DIR,
            "head": HEAD,
            "level_token_ids": self.ids,
            "prompt": TypeAdapter(PromptConfig).dump_python(cfg.prompt, mode="json"),
            "levels": TypeAdapter(LevelsConfig).dump_python(cfg.levels, mode="json"),
            "columns": {
                "query": cfg.data.query,
                "title": cfg.data.title,
                "attributes": list(cfg.data.attributes),
                "context": cfg.data.context,
            },
            "retriever": None,
        }

    def retriever(self) -> BM25Retriever | None:
        """The BM25 chunk source ``recis eval`` uses (a retriever and no context column)."""
        cfg = self.cfg
        if cfg.retriever is None or cfg.data.context is not None:
            return None
        if cfg.retriever.kind != "bm25":
            raise ConfigError(
                f"retriever.kind: {cfg.retriever.kind}: an exported relevance LLM carries a BM25 "
                "retriever only; serve rows with a context column (data.context) instead"
            )
        return BM25Retriever.from_config(cfg.retriever)


def write_relevance_llm(
    folder: Path, run_dir: Path, fmt: str, checkpoint: str | None
) -> dict[str, Any]:
    """Write the head, the decoder and (with a retriever) its corpus into ``folder``; the
    manifest's model-specific entries."""
    if fmt != "export":
        raise ConfigError(
            f"--format: {fmt!r}: a relevance-LLM version is an HF decoder directory and its "
            "scoring head, served by transformers (use --format export, the default)"
        )
    run = LLMRun.load(run_dir, checkpoint, "cpu")  # the files a CPU server loads
    run.model.base_model.save_pretrained(folder / LLM_DIR, safe_serialization=True)
    run.tokenizer.save_pretrained(folder / LLM_DIR)
    save_file(run.head, str(folder / HEAD))
    spec = run.spec()
    retriever = run.retriever()
    if retriever is not None:
        (folder / CORPUS).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": retriever.corpus}), folder / CORPUS)
        r = run.cfg.retriever
        assert r is not None  # (a retriever exists only with its config)
        spec["retriever"] = {"corpus": CORPUS, "k1": r.k1, "b": r.b}
    return {"model": "relevance_llm", "tasks": TASKS, "relevance_llm": spec}


class HeadScorer:
    """Encoded prefixes -> ``[B, L]`` level logits: the decoder's last hidden state at the
    last position times the sliced head."""

    def __init__(self, decoder: Any, head: dict[str, torch.Tensor]) -> None:
        self.decoder = decoder
        self.weight = head["weight"]  # [L, H]
        self.bias = head.get("bias")  # [L] or None

    def __call__(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.decoder(**enc).last_hidden_state[:, -1, :].float()  # [B, H]
        logits = hidden @ self.weight.T
        return logits if self.bias is None else logits + self.bias


@torch.no_grad()
def check_head(
    model: Any, scorer: HeadScorer, tokenizer: Any, task: RelevanceTask, ids: list[int], src: Path
) -> None:
    """Refuse a model whose logits are not its head's output (scaling, soft-capping)."""
    enc = tokenizer([task.serving_prefix(_PROBE)], return_tensors="pt")
    enc = {k: v.to(scorer.weight.device) for k, v in enc.items()}
    full = model(**enc).logits[:, -1, :].float()[:, ids]
    sliced = scorer(dict(enc))
    if not torch.allclose(full, sliced, atol=1e-4, rtol=1e-4):
        diff = (full - sliced).abs().max().item()
        raise ConfigError(
            f"{src}: the model's logits differ from its output head's ({diff:.3g}): "
            "a post-head transform (logit scale or soft-cap) cannot be exported as a head"
        )


@dataclass
class PairBatch:
    """Validated request rows as relevance examples."""

    examples: list[Example]

    @property
    def batch_size(self) -> int:
        return len(self.examples)


class RelevanceLLMModel(RowScoring[PairBatch]):
    """One loaded relevance-LLM version: rows with the query, title, attribute and (optional)
    context columns -> ``{"relevance": score, "p_<level>": probability}``. A published
    version scores on the CPU; :meth:`from_run` on the run's configured device."""

    batch_rows = 32  # prefixes per forward

    def __init__(self, version_dir: str | Path) -> None:
        path = Path(version_dir)
        manifest = read_manifest(path)
        spec = manifest["relevance_llm"]
        from transformers import AutoModel

        llm = path / spec["model_dir"]
        tokenizer = load_tokenizer(llm)
        try:
            decoder = AutoModel.from_pretrained(str(llm), dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{llm}: cannot load the decoder: {err}") from None
        retriever = None
        if spec["retriever"] is not None:
            r = spec["retriever"]
            texts = pq.read_table(path / r["corpus"]).column("text").to_pylist()
            retriever = BM25Retriever(texts, r["k1"], r["b"])
        scorer = HeadScorer(decoder.eval(), load_file(str(path / spec["head"])))
        self._ready(path, manifest, tokenizer, scorer, retriever)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str | None = None) -> RelevanceLLMModel:
        """The same scorer straight from a relevance-LLM run directory (a stage's model in
        memory on the run's ``device``, nothing written): what its export would serve."""
        run = LLMRun.load(Path(run_dir), checkpoint)
        manifest = {"tasks": TASKS, "relevance_llm": run.spec()}
        model = cls.__new__(cls)
        scorer = HeadScorer(run.model.base_model, run.head)
        model._ready(run.source, manifest, run.tokenizer, scorer, run.retriever())
        return model

    def _ready(
        self,
        path: Path,
        manifest: dict[str, Any],
        tokenizer: Any,
        scorer: HeadScorer,
        retriever: BM25Retriever | None,
    ) -> None:
        self.path, self.version, self.manifest = path, path.name, manifest
        self.tasks: list[dict[str, str]] = manifest["tasks"]
        spec = manifest["relevance_llm"]
        self.columns = spec["columns"]
        prompt = TypeAdapter(PromptConfig).validate_python(spec["prompt"])
        self.task = RelevanceTask(prompt, TypeAdapter(LevelsConfig).validate_python(spec["levels"]))
        self.tokenizer, self.scorer, self.retriever = tokenizer, scorer, retriever

    def pair_columns(self) -> tuple[str, str, str]:
        """The query and title columns and the graded score's name."""
        return self.columns["query"], self.columns["title"], TASK

    def rows_batch(self, rows: list[dict[str, Any]]) -> PairBatch:
        """Rows -> examples; a missing or non-text query or title, or a non-text attribute
        or context, is a DataError naming the column and row."""
        c = self.columns
        out = []
        for i, row in enumerate(rows):
            query, title = (_text(row, c[k], i, required=True) for k in ("query", "title"))
            attrs = {a: _text(row, a, i) for a in c["attributes"]}
            context = _text(row, c["context"], i) if c["context"] else ""
            out.append(Example(query, title, 0, attrs, context))
        return PairBatch(out)

    def merge(self, batches: list[PairBatch]) -> PairBatch:
        return PairBatch([e for b in batches for e in b.examples])

    @torch.no_grad()
    def score_batch(self, batch: PairBatch) -> dict[str, np.ndarray]:
        """``{"relevance": [B], "p_<level>": [B] ...}``, as ``recis eval`` scores the rows."""
        examples = batch.examples
        if self.retriever is not None:  # (rows carry no context column then)
            examples = self.retriever.with_context(examples)
        texts = [self.task.serving_prefix(e) for e in examples]
        names = self.task.levels.names
        device = self.scorer.weight.device
        probs = prefix_level_probs(
            self.scorer, self.tokenizer, texts, self.batch_rows, device, len(names)
        )
        out = {TASK: cumulative_score(probs, self.task.prompt.quantile).numpy()}
        for k, name in enumerate(names):
            out[f"p_{name}"] = np.ascontiguousarray(probs[:, k].numpy())
        return out


def _text(row: dict[str, Any], column: str, i: int, required: bool = False) -> str:
    """A text value of a request row ('' for a missing optional one)."""
    value = row.get(column)
    if value is None:
        if required:
            raise DataError("missing text value", column=column, row=i)
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"expected text, got {type(value).__name__}", column=column, row=i)
    return str(value)
