#!/usr/bin/env bash
# Lint (scripts/lint.sh), then run the test suite (CPU, no network) in .venv (or $VENV), setting it
# up first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint.sh
export HF_HUB_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
# one pytest-xdist worker per core (at most 4: each Axolotl run a test starts holds 1-3 GB);
# much of the suite is single-threaded (imports, `axolotl train` subprocesses); TEST_WORKERS=0: none
workers=${TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
exec "${VENV:-.venv}/bin/python" -m pytest -p no:cacheprovider -n "$workers" --dist worksteal "$@"
