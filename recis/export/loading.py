"""A published version loaded as the model kind its manifest names."""

from __future__ import annotations

from pathlib import Path

from recis.errors import CheckpointError

from .manifest import MANIFEST, read_manifest
from .model import ScoringVersion, ServingModel
from .publish import is_ready, read_latest
from .relevance import RelevanceModel
from .relevance_llm import RelevanceLLMModel, is_llm_run
from .retrieval import RetrievalModel


def load_version(version_dir: str | Path) -> ScoringVersion:
    """A :class:`~recis.export.retrieval.RetrievalModel` for a two-tower version (it has an
    item index), a :class:`~recis.export.relevance.RelevanceModel` for DeepBoW, a
    :class:`~recis.export.relevance_llm.RelevanceLLMModel` for a relevance LLM, else a
    :class:`~recis.export.model.ServingModel` (DLRM)."""
    manifest = read_manifest(Path(version_dir), check_files=False)
    if "towers" in manifest:
        return RetrievalModel(version_dir)
    if "relevance_llm" in manifest:
        return RelevanceLLMModel(version_dir)
    if "relevance" in manifest:
        return RelevanceModel(version_dir)
    return ServingModel(version_dir)


def load_published(path: str | Path) -> ScoringVersion:
    """A version folder (it holds ``manifest.json``), or the READY version an export folder's
    ``latest`` names, loaded as :func:`load_version` does; or a relevance-LLM run directory,
    scored in memory as its export would be (:meth:`RelevanceLLMModel.from_run`)."""
    p = Path(path)
    if is_llm_run(p):
        return RelevanceLLMModel.from_run(p)
    if (p / MANIFEST).is_file():
        return load_version(p)
    name = read_latest(p)
    if name is None or not is_ready(p / name):
        raise CheckpointError(f"{p}: neither an export version nor a folder with a READY latest")
    return load_version(p / name)
