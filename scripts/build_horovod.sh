#!/usr/bin/env bash
# Build Horovod 0.28.1 (the last release) against the venv's torch 2.13 and install it.
#
# Why a local build: PyPI only ships the sdist, and as released it asks CMake for C++14
# while torch 2.13's headers need C++17 (see /work/shared/STACK-NOTES.md). We patch the
# two CMakeLists.txt files, build with Gloo only (no MPI, no TF/MXNet), and cache the
# wheel outside the checkout so a second `make install` (or a second checkout on the
# same machine) installs it in seconds instead of rebuilding for ~6 minutes.
#
# Usage: scripts/build_horovod.sh [path/to/venv/bin/python]
# Env:   RECIS_WHEEL_CACHE (default ~/.cache/recis/wheels), HOROVOD_BUILD_JOBS (default nproc),
#        RECIS_CONSTRAINTS (the variant's constraints, default requirements/cpu.txt)
set -euo pipefail

PY=${1:-.venv/bin/python}
VERSION=0.28.1
CACHE=${RECIS_WHEEL_CACHE:-$HOME/.cache/recis/wheels}
PIP=("$PY" -m pip --disable-pip-version-check)

mkdir -p "$CACHE"

installed=$("$PY" -c "import importlib.metadata as m; print(m.version('horovod'))" 2>/dev/null || true)
if [[ "$installed" == "$VERSION" ]] && "$PY" -c "import horovod.torch" 2>/dev/null; then
    echo "horovod $VERSION already installed"
    exit 0
fi

shopt -s nullglob
wheels=("$CACHE"/horovod-"$VERSION"-*.whl)
shopt -u nullglob

if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "building horovod $VERSION (cached afterwards in $CACHE; takes ~6 min on 2 cores)"
    command -v cmake >/dev/null || { echo "error: cmake is needed to build horovod" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "${PIP[@]}" download -q --no-binary :all: --no-deps -d "$work" "horovod==$VERSION"
    tar -xzf "$work"/horovod-"$VERSION".tar.gz -C "$work"
    src="$work/horovod-$VERSION"
    # torch >= 2.1 headers require C++17; horovod 0.28.1 pins C++14.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
        "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" \
        || { echo "error: C++ standard patch did not apply" >&2; exit 1; }
    # The build imports torch from the venv, so no build isolation; it needs these tools.
    "${PIP[@]}" install -q "setuptools>=75" wheel packaging psutil pyyaml cloudpickle cffi \
        -c requirements/stack.txt
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
        HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
        MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/dist" "$src"
    # Copy then rename so a concurrent install never sees a half-written wheel.
    whl=$(ls "$work"/dist/horovod-"$VERSION"-*.whl)
    cp "$whl" "$CACHE/.$(basename "$whl").tmp"
    mv "$CACHE/.$(basename "$whl").tmp" "$CACHE/$(basename "$whl")"
    wheels=("$CACHE/$(basename "$whl")")
fi

echo "installing ${wheels[0]}"
# Horovod's runtime deps are pinned in requirements/stack.txt; torch stays pinned too.
"${PIP[@]}" install -q "${wheels[0]}" -c "${RECIS_CONSTRAINTS:-requirements/cpu.txt}" -c requirements/stack.txt
"$PY" -c "import horovod, horovod.torch; print('horovod', horovod.__version__, 'with torch: ok')"
