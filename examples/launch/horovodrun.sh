#!/usr/bin/env bash
# Horovod over Gloo: one command on the first host starts every rank (ssh to the others;
# all hosts need the same checkout path and passwordless ssh).
#   HOSTS=node1:2,node2:2 examples/launch/horovodrun.sh CONFIG [--set key=value ...]
# HOSTS is host:slots,...; NP defaults to the sum of the slots. Horovod must be installed
# (`make install` builds it; see docs/distributed.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
HOSTS=${HOSTS:-localhost:2}
NP=${NP:-$(tr ',' '\n' <<<"$HOSTS" | awk -F: '{s += ($2 == "" ? 1 : $2)} END {print s}')}
CONFIG=${1:-examples/dlrm_synthetic.yaml}
shift || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PATH="$PWD/.venv/bin:$PATH"
exec horovodrun -np "$NP" -H "$HOSTS" --gloo \
    recis train "$CONFIG" --launcher horovod "$@"
