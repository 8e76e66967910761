"""The embedded demo task and model (axolotl_droplora/demo.py)."""

from __future__ import annotations

import json

import yaml

from axolotl_droplora.demo import arithmetic_problems, make_demo


def test_problems_are_distinct_with_correct_unique_answers():
    problems = arithmetic_problems(300, seed=0)
    assert len({p["instruction"] for p in problems}) == 300
    for p in problems:
        a, op, b = p["instruction"].removeprefix("What is ").removesuffix("?").split()
        expected = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
        assert p["answer"] == str(expected) and p["output"].endswith(f"The answer is {expected}.")


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
