"""recis.export: a trained run -> a versioned, atomically published serving export.

``recis export RUN_DIR --out DIR``; the layout, manifest and publish rules are in
docs/serving.md. :func:`load_version` loads a version as the model kind it holds:
:class:`ServingModel` (DLRM: rows in the training schema -> scores per task),
:class:`RetrievalModel` (two-tower: query rows -> top-K items) or :class:`RelevanceModel`
(DeepBoW: raw query and title texts -> relevance) or :class:`RelevanceLLMModel` (a relevance
LLM's one-pass scoring head: query and item texts -> graded relevance).
"""

from .dense import FORMATS
from .exporter import ExportOptions, export_run
from .index import IndexOptions
from .loading import load_version
from .manifest import read_manifest
from .model import ScoringVersion, ServingModel
from .publish import is_ready, publish, read_latest, versions
from .relevance import RelevanceModel
from .relevance_llm import RelevanceLLMModel
from .retrieval import RetrievalModel

__all__ = [
    "FORMATS",
    "ExportOptions",
    "IndexOptions",
    "RelevanceLLMModel",
    "RelevanceModel",
    "RetrievalModel",
    "ScoringVersion",
    "ServingModel",
    "export_run",
    "is_ready",
    "load_version",
    "publish",
    "read_latest",
    "read_manifest",
    "versions",
]
