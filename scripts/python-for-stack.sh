#!/usr/bin/env bash
# Print the Python interpreter for an Axolotl stack: `0.21` (the current Axolotl, which needs
# Python >= 3.12), `0.19` (Python 3.11), or `auto` (0.21 where a Python 3.12 is found, else 0.19).
# Looks on PATH, then in pyenv's versions. The Axolotl version follows from the interpreter
# (pyproject's `axolotl` extra), so choosing the Python chooses the stack.
set -euo pipefail
stack=${1:-auto}

find_python() {  # find_python 3.12: such an interpreter that runs, or nothing
  local minor=$1 root candidate
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  # a pyenv shim is on PATH even where it refuses to run, hence the --version check
  for candidate in "$(command -v "python$minor" 2>/dev/null)" \
      $(ls -d "$root"/versions/"$minor".*/bin/"python$minor" 2>/dev/null | sort -rV); do
    if [ -n "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

case "$stack" in
  0.21) find_python 3.12 || { echo "stack 0.21 (Axolotl 0.21.0) needs Python 3.12, and none was found on PATH or in pyenv" >&2; exit 1; } ;;
  0.19) find_python 3.11 || { echo "stack 0.19 (Axolotl 0.19.0) needs Python 3.11, and none was found on PATH or in pyenv" >&2; exit 1; } ;;
  auto) find_python 3.12 || find_python 3.11 || { echo "neither Python 3.12 nor 3.11 found: set PYTHON=/path/to/python" >&2; exit 1; } ;;
  *) echo "AXOLOTL_STACK must be 0.21, 0.19 or auto, got '$stack'" >&2; exit 1 ;;
esac
