#!/usr/bin/env bash
# Set up and run every check: ruff, mypy, and the whole test suite (unit, fake-backend,
# and integration tests against the real embedded llama.cpp backend, which the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh local,dev
echo "== ruff" >&2
.venv/bin/ruff check proxy optimizer prompts drpo tests bench
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
status=0
DRPO_REQUIRE_INTEGRATION="${DRPO_REQUIRE_INTEGRATION:-1}" .venv/bin/pytest --durations=10 "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$status"
