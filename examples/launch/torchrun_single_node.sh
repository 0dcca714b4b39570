#!/usr/bin/env bash
# One machine, N processes: embedding tables sharded over them, dense params data-parallel.
#   examples/launch/torchrun_single_node.sh [CONFIG] [--set key=value ...]
# Env: NPROC (processes, default 2), OMP_NUM_THREADS (threads per process, default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-examples/dlrm_synthetic.yaml}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/torchrun --standalone --nproc-per-node "${NPROC:-2}" \
    -m recis.cli train "$CONFIG" --launcher torchrun "$@"
