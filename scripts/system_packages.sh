#!/usr/bin/env bash
# Debian packages the test suite runs for real, installed only when their command is missing:
# chromium (the dashboard tests drive it headless through Playwright, which never downloads a
# browser), redis-server (the shared registry's tests start their own) and promtool (Debian's
# prometheus package checks deploy/prometheus and the Grafana dashboard's queries).
set -euo pipefail
declare -A package_of=(
  [chromium]="chromium chromium-driver fonts-liberation"
  [redis-server]="redis-server"
  [promtool]="prometheus"
)
missing=()
for command in "${!package_of[@]}"; do
  if ! command -v "$command" >/dev/null 2>&1; then
    read -r -a packages <<<"${package_of[$command]}"
    missing+=("${packages[@]}")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "installing Debian packages for the tests: ${missing[*]}" >&2
sudo_if_needed=()
if [ "$(id -u)" -ne 0 ]; then sudo_if_needed=(sudo); fi
"${sudo_if_needed[@]}" apt-get update -qq
"${sudo_if_needed[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
