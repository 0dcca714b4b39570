"""A published version loaded as the model kind its manifest names."""

from __future__ import annotations

from pathlib import Path

from .manifest import read_manifest
from .model import ScoringVersion, ServingModel
from .relevance import RelevanceModel
from .relevance_llm import RelevanceLLMModel
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
