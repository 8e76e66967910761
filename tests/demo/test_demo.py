"""The embedded demo task and model (axolotl_droplora/demo/task.py)."""

from __future__ import annotations

import json

import yaml

from axolotl_droplora.demo.task import arithmetic_problems, make_demo


def test_problems_are_distinct_with_correct_unique_answers():
    problems = arithmetic_problems(300, seed=0)
    assert len({p["instruction"] for p in problems}) == 300
    for p in problems:
        a, op, b = p["instruction"].removeprefix("What is ").removesuffix("?").split()
        expected = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
        assert p["answer"] == str(expected) and p["output"].endswith(f"The answer is: {expected}")


def test_make_demo_writes_disjoint_splits_and_a_recipe_and_is_idempotent(tmp_path):
    recipe = make_demo(tmp_path)
    weights = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    assert make_demo(tmp_path) == recipe
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == weights  # not rebuilt
    train, heldout = (
        [json.loads(line)["instruction"] for line in (tmp_path / "data" / f"{split}.jsonl").open()]
        for split in ("train", "heldout")
    )
    assert len(train) == 400 and len(heldout) == 40 and not set(train) & set(heldout)
    config = yaml.safe_load(recipe.read_text())
    assert config["adapter"] == "droplora" and config["plugins"] == ["axolotl_droplora.DropLoRAPlugin"]
    assert config["base_model"] == str(tmp_path / "model")
    heldout_file = json.loads((tmp_path / "heldout" / "gsm8k" / "test.json").read_text())
    assert [r["instruction"] for r in heldout_file] == heldout


def test_the_training_prompt_is_the_math_evaluation_prompt(tmp_path):
    from axolotl_droplora.eval.evaluate import prompt_for
    from axolotl_droplora.eval.prompts import MATH_PROMPT
    from axolotl_droplora.eval.scorers import gsm8k_correct

    config = yaml.safe_load(make_demo(tmp_path, base_model=tmp_path).read_text())
    assert config["base_model"] == str(tmp_path) and not (tmp_path / "model").exists()
    record = json.loads((tmp_path / "data" / "train.jsonl").read_text().splitlines()[0])
    train_prompt = config["datasets"][0]["type"]["no_input_format"].format(instruction=record["instruction"])
    assert train_prompt == prompt_for("gsm8k", record) + "\n" == MATH_PROMPT.format(instruction=record["instruction"]) + "\n"
    assert gsm8k_correct(record["output"], record["answer"])
