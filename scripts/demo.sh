#!/usr/bin/env bash
# The main job: set up .venv, build the embedded demo model and task, fine-tune it with
# DropLoRA through Axolotl's CLI, merge the adapter, and check it is a plain PEFT LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
# Axolotl's telemetry hangs forever after training on machines without internet access.
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

axolotl droplora make-demo demo
axolotl train demo/droplora.yml
axolotl merge-lora demo/droplora.yml
axolotl droplora check-adapter demo/out --base demo/model
