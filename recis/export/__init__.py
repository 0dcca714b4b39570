"""recis.export: a trained run -> a versioned, atomically published serving export.

``recis export RUN_DIR --out DIR``; the layout, manifest and publish rules are in
docs/serving.md. :class:`ServingModel` loads a version and scores rows in the training schema.
"""

from .dense import FORMATS
from .exporter import ExportOptions, export_run, read_manifest
from .model import ServingModel
from .publish import is_ready, publish, read_latest, versions

__all__ = [
    "FORMATS",
    "ExportOptions",
    "ServingModel",
    "export_run",
    "is_ready",
    "publish",
    "read_latest",
    "read_manifest",
    "versions",
]
