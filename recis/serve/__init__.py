"""recis.serve: an HTTP server over published exports (:mod:`recis.export`); docs/serving.md."""

from .app import ModelHolder, create_app, serve

__all__ = ["ModelHolder", "create_app", "serve"]
