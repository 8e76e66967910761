#!/usr/bin/env bash
# Run the test suite (CPU, no network) in .venv (or $VENV), setting it up first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
exec "${VENV:-.venv}/bin/python" -m pytest -p no:cacheprovider "$@"
