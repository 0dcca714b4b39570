#!/usr/bin/env bash
# Install the pinned stack of one variant (cpu, cu126, cu128) into a venv, or one extra.
#
# Usage: scripts/install_stack.sh PYTHON VARIANT            # torch, fbgemm, torchrec, the stack
#        scripts/install_stack.sh PYTHON VARIANT extra NAME # requirements/extra-NAME.txt
# Env:   TORCH_INDEX  where the variant's torch/fbgemm wheels live when the configured pip
#                     sources do not have them (default https://download.pytorch.org/whl/VARIANT)
#        PIP_ARGS     more options for every pip install (e.g. "--isolated --index-url URL")
#
# Why: PyPI's plain torch 2.13.0 is a CUDA build. Each variant's constraints file pins torch
# (and the CUDA fbgemm) with its local label (+cpu, +cu128, ...), which only the variant's
# own wheel satisfies: if no source has it, pip finds nothing and this script stops with one
# line saying which wheel and how to fix, instead of pulling GBs of the wrong build.
set -euo pipefail

PY=${1:?usage: install_stack.sh PYTHON VARIANT [extra NAME]}
VARIANT=${2:-cpu}
cd "$(dirname "$0")/.."
CONS=requirements/$VARIANT.txt
# every pip call here is an install; PIP_ARGS are install options (general ones work there too)
# shellcheck disable=SC2206  # PIP_ARGS is a list of options on purpose
PIP_INSTALL=("$PY" -m pip --disable-pip-version-check install ${PIP_ARGS:-})

die() { echo "error: $*" >&2; exit 1; }

[[ -f $CONS ]] || die "unknown variant '$VARIANT' (known: $(cd requirements && ls cpu.txt cu*.txt | sed 's/\.txt//' | xargs)); set CUDA= for CPU or CUDA=cu126|cu128"

if [[ ${3:-} == extra ]]; then
    name=${4:?extra NAME}
    req=requirements/extra-$name.txt
    [[ -f $req ]] || die "unknown extra '$name' (known: $(cd requirements && ls extra-*.txt | sed 's/extra-//; s/\.txt//' | xargs))"
    # under the variant's constraints and the stack's pins: torch, fbgemm, transformers stay
    "${PIP_INSTALL[@]}" -q -r "$req" -c "$CONS" -c requirements/stack.txt
    exit 0
fi

torch_pin=$(grep -E '^torch==' "$CONS")
fbgemm_pin=$(grep -E '^fbgemm-gpu(-cpu)?==' "$CONS")
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/$VARIANT}

if [[ $VARIANT == cpu ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    echo "note: this machine has an NVIDIA GPU; installing the CPU variant (make install CUDA=cu128 for CUDA)"
fi

"${PIP_INSTALL[@]}" -q "setuptools>=75" wheel

# 1. torch + fbgemm of the variant: from the configured pip sources if they have it (a local
#    wheelhouse, a company mirror), else from the variant's PyTorch index.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# (no -c of the variant here: pip reports a pinned wheel that no source has as a "conflict"
# between the request and its constraint; the pins are the request itself)
install_torch() { "${PIP_INSTALL[@]}" -q "$@" "$torch_pin" "$fbgemm_pin" -c requirements/stack.txt >"$log" 2>&1; }
not_found() { grep -qE "No matching distribution found for (torch|fbgemm-gpu(-cpu)?)==" "$log"; }
where=()  # the extra source torch came from, kept for the stack (whose packages need torch)
if ! install_torch; then
    not_found || { cat "$log" >&2; die "pip failed installing $torch_pin $fbgemm_pin (output above)"; }
    echo "$torch_pin is not on the configured pip sources; trying $TORCH_INDEX"
    if [[ -d $TORCH_INDEX ]]; then where=(--find-links "$TORCH_INDEX"); else where=(--extra-index-url "$TORCH_INDEX"); fi
    if ! install_torch "${where[@]}"; then
        not_found || { cat "$log" >&2; die "pip failed installing $torch_pin $fbgemm_pin from $TORCH_INDEX (output above)"; }
        missing=$(grep -oE "No matching distribution found for [^ ]+" "$log" | head -1 | awk '{print $NF}')
        die "no $missing wheel for $("$PY" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]} {sysconfig.get_platform()}")') on the configured pip sources or $TORCH_INDEX; set TORCH_INDEX to an index or wheel folder that has it (make install TORCH_INDEX=...), or pick another variant (CUDA=cu126|cu128, or CUDA= for CPU)"
    fi
fi

# 2. the rest of the stack, under the variant's pins (torchrec's real needs are in it)
"${PIP_INSTALL[@]}" -q "${where[@]}" -r requirements/stack.txt -c "$CONS"
# 3. torchrec without its metadata's CUDA fbgemm-gpu, after the stack: an install with
#    dependencies after it would report "torchrec requires fbgemm-gpu, which is not installed"
"${PIP_INSTALL[@]}" -q --no-deps "$(grep -E '^torchrec==' "$CONS")"
# 4. recis itself, editable, without dependencies (they are all above)
"${PIP_INSTALL[@]}" -q --no-deps --no-build-isolation -e .
"$PY" -c "import torch, fbgemm_gpu, torchrec; print('recis stack ($VARIANT): torch', torch.__version__, '| fbgemm', fbgemm_gpu.__version__, '| torchrec', torchrec.__version__)"
