#!/usr/bin/env bash
# ruff (lint and format) and the import contracts (layers, method's imports, no cycle), all
# configured in pyproject.toml, in .venv (or $VENV). scripts/test.sh runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
"$venv/bin/ruff" check --quiet .
"$venv/bin/ruff" format --check --quiet .
"$venv/bin/lint-imports" --no-cache >/dev/null || "$venv/bin/lint-imports" --no-cache
echo "lint: ruff check, ruff format --check and lint-imports passed"
