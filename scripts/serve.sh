#!/usr/bin/env bash
# Set up and run the proxy on the embedded default backend (SmolLM2-135M-Instruct via llama.cpp).
# Extra arguments go to `drpo serve`, e.g. `bash scripts/serve.sh --port 9000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh local
exec .venv/bin/drpo serve "$@"
