"""recis: sparse-dense training for industrial recommendation and search models."""

import os as _os

# OpenMP threads waiting for work sleep instead of spinning, unless the user exported a
# policy. libgomp reads this once, when torch loads it: so it holds where recis is
# imported before torch (the CLI, workers torchrun starts, child processes). On a busy
# or shared machine a spinning thread takes the core its partner needs: a 2-thread
# row-wise step took 3.0-5.5 s spinning vs 0.32 s passive at load 14 (issue 23).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from recis.errors import ConfigError, DataError, RecisError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "RecisError", "__version__"]
