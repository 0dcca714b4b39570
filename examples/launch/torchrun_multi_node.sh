#!/usr/bin/env bash
# Several machines: run this once per machine, same RDZV_ENDPOINT, its own NODE_RANK.
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=10.0.0.1:29400 examples/launch/torchrun_multi_node.sh CONFIG
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=10.0.0.1:29400 examples/launch/torchrun_multi_node.sh CONFIG
# RDZV_ENDPOINT is host:port on node 0, reachable from every node. With RDZV_BACKEND=static
# (default) NODE_RANK fixes each node's ranks; RDZV_BACKEND=c10d assigns them on arrival and
# allows MAX_RESTARTS > 0 to restart all workers from the last checkpoint when one fails
# (set distributed.checkpoint_every in the config).
# Env: NPROC (processes per node, default 1), RUN_ID, OMP_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${NNODES:?set NNODES}" "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0}"
CONFIG=${1:-examples/dlrm_synthetic.yaml}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
backend=${RDZV_BACKEND:-static}
args=(--nnodes "$NNODES" --nproc-per-node "${NPROC:-1}" --max-restarts "${MAX_RESTARTS:-0}"
      --rdzv-backend "$backend" --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RUN_ID:-recis}")
if [[ "$backend" == static ]]; then
    args+=(--node-rank "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}")
fi
exec .venv/bin/torchrun "${args[@]}" -m recis.cli train "$CONFIG" --launcher torchrun "$@"
