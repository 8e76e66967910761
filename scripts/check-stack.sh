#!/usr/bin/env bash
# Install this package the way an Axolotl user does, into an environment that has only Axolotl,
# and check that nothing of theirs changes; then run the Axolotl-facing tests there.
#
#   bash scripts/check-stack.sh 0.19            # Axolotl 0.19.0 on Python 3.11: install check + tests
#   bash scripts/check-stack.sh 0.21 --no-tests # Axolotl 0.21.0 on Python 3.12: install check only
#
# The environment is .venv-axolotl-STACK/ (made anew each time): torch 2.13.0, then
# `axolotl[deepspeed]==VERSION` and pytest, as a user's would be; then the wheel built from this
# checkout, without extras. pip must add axolotl-droplora and change nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${1:?usage: check-stack.sh 0.19|0.21 [--no-tests]}
tests=${2:-}
case "$stack" in 0.19) axolotl=0.19.0 ;; 0.21) axolotl=0.21.0 ;; *) echo "stack must be 0.19 or 0.21" >&2; exit 1 ;; esac
python=$(bash scripts/python-for-stack.sh "$stack")
venv=.venv-axolotl-$stack
rm -rf "$venv" "$venv-dist"
"$python" -m venv "$venv"
pip=("$venv/bin/pip" install --disable-pip-version-check -c constraints.txt)
log=$venv/pip-install.log
echo "check-stack $stack: an Axolotl $axolotl environment in $venv ($("$python" --version))"
if ! "${pip[@]}" torch >"$log" 2>&1 || ! "${pip[@]}" "axolotl[deepspeed]==$axolotl" pytest pytest-xdist >>"$log" 2>&1; then
  tail -30 "$log"; echo "check-stack $stack: installing Axolotl failed; log in $log" >&2; exit 1
fi
"$venv/bin/pip" freeze --all | sort >"$venv/before.txt"

"$venv/bin/pip" wheel --disable-pip-version-check --no-deps -w "$venv-dist" . >>"$log" 2>&1
wheel=$(ls "$venv-dist"/axolotl_droplora-*.whl)
echo "check-stack $stack: pip install $wheel"
"$venv/bin/pip" install --disable-pip-version-check "$wheel" >>"$log" 2>&1
"$venv/bin/pip" freeze --all | sort >"$venv/after.txt"
removed=$(comm -23 "$venv/before.txt" "$venv/after.txt")
added=$(comm -13 "$venv/before.txt" "$venv/after.txt")
if [ -n "$removed" ] || [ "$(echo "$added" | grep -vc '^axolotl-droplora @ ')" != 0 ]; then
  echo "check-stack $stack: installing the wheel changed the user's environment:" >&2
  echo "$removed" | sed 's/^/  was: /' >&2; echo "$added" | sed 's/^/  now: /' >&2
  exit 1
fi
echo "check-stack $stack: pip added only axolotl-droplora; $(grep -ciE '^(axolotl|peft|transformers|trl|accelerate|torch)==' "$venv/before.txt") of axolotl, peft, transformers, trl, accelerate, torch unchanged:" \
  $(grep -iE '^(axolotl|peft|transformers|trl|accelerate|torch)==' "$venv/after.txt")

# the bare wheel imports and builds its plugin without the extras (none of them is installed)
"$venv/bin/python" -I - <<'EOF'  # -I: the installed wheel, not this checkout
import importlib.util
missing = [m for m in ("gguf", "matplotlib") if importlib.util.find_spec(m) is None]
import axolotl_droplora
from axolotl_droplora import DropLoRAPlugin
DropLoRAPlugin()
assert "site-packages" in axolotl_droplora.__file__, axolotl_droplora.__file__
print(f"check-stack: import axolotl_droplora and its plugin work; not installed: {', '.join(missing) or 'none'}")
EOF

if [ "$tests" != "--no-tests" ]; then
  export HF_HUB_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
  # the pytest command (not python -m pytest), so the tests import the installed wheel, not the checkout
  workers=${TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}  # as in test.sh
  "$venv/bin/pytest" -p no:cacheprovider -n "$workers" --dist worksteal tests/method/test_rank_dropout.py tests/test_args.py \
    tests/method/test_variants.py tests/method/test_conversion.py tests/method/test_milora.py tests/test_trainer_callback.py \
    tests/recipes/test_recipes.py tests/test_plugin.py tests/test_model_card.py tests/recipes/test_explain.py
fi
