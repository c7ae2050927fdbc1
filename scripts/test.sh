#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
# This is the README's test command and what CI runs (.ci/run calls it).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/ledger -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a real redis-server for the ledger tests, Chromium for the
# HTML report check. Installed only when missing.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "== installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python environment: one resolve of every extra, then a consistency check.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing crew-budget[dev]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip check

# The LiteLLM proxy gets its own environment: it needs mcp>=2.3 while crewai
# pins mcp<2, so the two cannot share one resolve. tests/litellm/test_proxy.py
# starts a real proxy process from it.
if [ ! -x .venv-proxy/bin/python ]; then
  echo "== creating .venv-proxy"
  "$PY" -m venv .venv-proxy
fi
echo "== installing the LiteLLM proxy environment"
.venv-proxy/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-proxy/bin/python -m pip install -q -r tests/litellm/proxy-requirements.txt
.venv-proxy/bin/python -m pip check
export CREW_BUDGET_PROXY_PYTHON="$PWD/.venv-proxy/bin/python"

# Offline everywhere: no price-map fetch, no tokenizer download, no telemetry.
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 OTEL_SDK_DISABLED=true \
  CREWAI_DISABLE_TELEMETRY=true CREWAI_DISABLE_TRACKING=true

echo "== ruff"
.venv/bin/ruff check src tests bench examples
echo "== mypy --strict src"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
