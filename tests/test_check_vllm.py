"""A vLLM run (reports/vllm-cpu, made by scripts/check-vllm.sh) and what our cards say.

The run needs its own 3.5 GB venv, so the suite reads the committed one; CI makes a fresh run and
runs these tests again on it (CHECK_VLLM_REPORT). They hold the record to the code that users
run: the report is exactly what the script renders from its results (no hand edits), vLLM equals
PEFT wherever it serves, and `serving_facts`, which writes the model cards and `check-adapter`'s
vLLM lines, predicts what vLLM did with each adapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the committed run; CI points this at the run it has just made (.ci/run)
REPORT = Path(os.environ.get("CHECK_VLLM_REPORT") or ROOT / "reports" / "vllm-cpu")


def check_vllm():
    """scripts/check_vllm.py as a module (it imports only the standard library at the top)."""
    spec = importlib.util.spec_from_file_location("check_vllm", ROOT / "scripts" / "check_vllm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((REPORT / "results.json").read_text())


def served(results: dict) -> dict:
    """Every vLLM request of the run by its label: its tokens, or its error."""
    return {label: entry for s in results["sessions"].values() for label, entry in s["requests"].items()}


def test_compare_finds_the_first_divergence_and_counts_equal_prompts():
    compare = check_vllm().compare
    reference = {
        "outputs": [
            {"tokens": [1, 2, 3], "top2": [[[1, 5.0], [9, 4.0]], [[2, 3.0], [8, 2.5]], [[3, 1.0], [7, 0.5]]]},
            {"tokens": [4, 5, 6], "top2": [[[4, 2.0], [9, 1.0]], [[5, 9.0], [6, 8.75]], [[6, 1.0], [7, 0.5]]]},
        ]
    }
    same = compare(reference, {"outputs": [{"tokens": [1, 2, 3]}, {"tokens": [4, 5, 6]}]}, ["p", "q"])
    assert same["all_equal"] and same["prompts_equal"] == 2 and same["tokens_compared"] == 6
    assert same["first_divergence"] is None

    diverged = compare(reference, {"outputs": [{"tokens": [1, 2, 3]}, {"tokens": [4, 6, 6]}]}, ["p", "q"])
    assert not diverged["all_equal"] and diverged["prompts_equal"] == 1
    assert diverged["tokens_compared"] == 3 + 2  # up to and including the first differing token
    first = diverged["first_divergence"]
    assert (first["prompt"], first["position"], first["peft_token"], first["vllm_token"]) == ("q", 1, 5, 6)
    assert first["peft_top2_gap"] == pytest.approx(0.25)

    shorter = compare(reference, {"outputs": [{"tokens": [1, 2]}, {"tokens": [4, 5, 6]}]}, ["p", "q"])
    assert shorter["first_divergence"]["position"] == 2 and shorter["first_divergence"]["vllm_token"] is None


def test_the_committed_report_is_what_the_script_renders_from_its_results(results):
    assert (REPORT / "report.md").read_text() == check_vllm().render(results)


def test_the_committed_run_is_one_end_to_end_run_of_every_prompt(results):
    assert results["peft_reference_prompts"] == len(results["prompts"]) == 8
    for name, session in results["sessions"].items():
        assert "wall_seconds" in session and "session_timeout" not in session, name  # none reused, none hung


def test_in_the_committed_run_vllm_equals_peft_token_for_token_wherever_it_serves(results):
    comparisons = results["comparisons"]
    equal = {label for label, c in comparisons.items() if c["status"] == "equal"}
    assert {
        "base",
        "a-droplora",
        "b-milora-droplora",
        "d-pissa-residual-init-true",
        "residual-base",
        "base-after-refusal",
        "a-droplora-after-refusal",
    } <= equal
    for label in ("base", "a-droplora", "b-milora-droplora", "d-pissa-residual-init-true"):
        assert comparisons[label]["prompts_equal"] == 8, label
    # the adapters were applied: PEFT's generations with them differ from the base model's
    for label in ("a-droplora", "b-milora-droplora", "d-pissa-residual"):
        assert results["adapter_effect_prompts_changed_vs_base"][label] > 0, label
    assert not [label for label, c in comparisons.items() if c["status"] == "diverged"]


def test_the_cards_serving_facts_predict_what_vllm_did_with_each_adapter(results):
    from axolotl_droplora.model_card import VLLM_LORA_RANKS, serving_facts

    requests = served(results)
    adapters = results["adapters"]
    cases = {  # adapter: the requests that served it as saved
        "a-droplora": ["a-droplora"],
        "b-milora-droplora": ["b-milora-droplora"],
        "c-dora-droplora": ["c-dora-droplora", "c-dora-droplora-again"],
        "d-pissa-residual": ["d-pissa-residual", "d-pissa-as-saved-on-original", "d-pissa-as-saved-again"],
    }
    for name, labels in cases.items():
        refusals = serving_facts(adapters[name]["adapter_config"]).refusals
        for label in labels:
            assert ("error" in requests[label]) == bool(refusals), (label, refusals, requests[label].get("error"))
    assert "does not yet support DoRA" in requests["c-dora-droplora"]["error"]["message"]
    assert "init_lora_weights='pissa'" in requests["d-pissa-residual"]["error"]["message"]

    # relabelled inits: vLLM serves eva (only sets the starting A, B) and refuses olora, as the card says
    config = adapters["a-droplora"]["adapter_config"]
    for init, label in (("eva", "a-droplora-as-eva"), ("olora", "a-droplora-as-olora")):
        refused = bool(serving_facts({**config, "init_lora_weights": init}).refusals)
        assert ("error" in requests[label]) == refused, label

    # ranks: the card's --max-lora-rank for the rank-2r MiLoRA save is what vLLM needed
    b = adapters["b-milora-droplora"]["adapter_config"]
    assert serving_facts(b).max_lora_rank == b["r"] == 32
    assert "error" not in requests["b-milora-droplora"]  # served with max_lora_rank 32
    assert requests["b-milora-droplora-rank-too-small"]["error"]["message"] == (
        "LoRA rank 32 is greater than max_lora_rank 16."
    )
    # the values vLLM allows, from its own error for --max-lora-rank 24
    message = results["sessions"]["rank-not-allowed"]["engine_error"]["message"]
    allowed = re.search(r"Input should be ([\d, ]+) or (\d+)", message)
    assert tuple(int(x) for x in allowed.group(1).split(", ")) + (int(allowed.group(2)),) == VLLM_LORA_RANKS


def test_every_adapter_card_in_the_committed_run_says_what_vllm_did(results):
    for name, adapter in results["adapters"].items():
        card = adapter["card_vllm_section"]
        refused = "error" in served(results)[name if name != "d-pissa-residual" else "d-pissa-residual"]
        assert ("vLLM refuses it as it is" in card) == refused, name
        assert ("vllm serve" in card) == (not refused), name
        said = adapter["check_adapter"]["stdout"]
        assert adapter["check_adapter"]["returncode"] == 0, name
        assert ("plain PEFT LoRA" in said) == (name in ("a-droplora", "b-milora-droplora")), name


def test_the_check_fails_on_a_divergence_a_hang_or_a_card_that_disagrees_with_vllm(results):
    failures = check_vllm().failures
    assert failures(results) == []  # the run passed: its report says so in "Verdict"
    assert "**Passed:**" in (REPORT / "report.md").read_text()

    diverged = json.loads(json.dumps(results))
    diverged["comparisons"]["b-milora-droplora"]["status"] = "diverged"
    assert failures(diverged) == [
        "b-milora-droplora: diverged, not equal to PEFT ((b) MiLoRA + DropLoRA saved for the original base (rank 32))"
    ]

    hung = json.loads(json.dumps(results))
    hung["sessions"]["original-base"]["session_timeout"] = "no answer within 900 s during request 'c-dora-droplora'"
    assert failures(hung)[0].startswith("session original-base: no answer within 900 s")

    card_wrong = json.loads(json.dumps(results))
    card_wrong["adapters"]["c-dora-droplora"]["card_summary_line"]["vllm_refusals"] = []
    assert failures(card_wrong) == [
        "c-dora-droplora: the card says vLLM serves it, but vLLM refused it: vLLM does not yet support DoRA."
    ]
