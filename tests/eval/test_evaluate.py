"""Paper-parity evaluation end to end (axolotl_droplora/eval/evaluate.py and its CLI)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_cli
from PIL import Image

from axolotl_droplora.eval.evaluate import Generator, compare, evaluate, pass_rate

COMMONSENSE = {
    "boolq": [
        {
            "instruction": "Is 7 plus 8 equal to 15? Answer format: true/false",
            "input": "",
            "output": "the correct answer is true",
            "answer": "true",
        }
    ]
    * 3,
    "piqa": [{"instruction": "Pick: solution1 or solution2", "input": "", "output": "", "answer": "solution1"}] * 2,
}
MATH = {
    "gsm8k": [{"query": "What is 12 plus 30?", "answer": "42"}, {"query": "What is 2 times 3?", "answer": "6"}],
    "math": [{"problem": "What is 1/2 of 1?", "answer": "\\frac{1}{2}"}],
}


def write_sets(root, sets):
    for name, records in sets.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "test.json").write_text(json.dumps(records))
    return root


def test_eval_command_writes_scores_and_predictions_for_a_trained_adapter(tmp_path, demo_dir):
    data = write_sets(tmp_path / "data", COMMONSENSE)
    ran = run_cli(
        [
            "axolotl",
            "droplora",
            "eval",
            str(demo_dir / "model"),
            "--task",
            "commonsense",
            "--sets",
            "boolq,piqa",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--scoring",
            "corrected",
        ],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["scoring"] == "corrected" and "scoring: corrected" in ran.stdout
    assert set(results["sets"]) == {"boolq", "piqa"} and results["sets"]["boolq"]["n"] == 3
    assert len(results["examples"]) == 5 and all("generation" in e and "correct" in e for e in results["examples"])
    assert 0 <= results["average"] <= 100
    assert "boolq: accuracy=" in ran.stdout and "average: " in ran.stdout


def test_an_interrupted_run_resumes_without_redoing_or_losing_anything(tmp_path, demo_dir):
    data = write_sets(tmp_path / "data", MATH)
    model = Generator(str(demo_dir / "model"), max_new_tokens=6)
    calls = []

    def crashing(prompts):
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C during the second batch
        calls.append(list(prompts))
        return model(prompts)

    with pytest.raises(KeyboardInterrupt):
        evaluate(crashing, data, ["gsm8k", "math"], tmp_path / "run", batch_size=2)
    first = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(first) == 2 and not (tmp_path / "run" / "results.json").exists()

    resumed = []
    results = evaluate(
        lambda prompts: resumed.extend(prompts) or model(prompts),
        data,
        ["gsm8k", "math"],
        tmp_path / "run",
        batch_size=2,
    )
    assert len(resumed) == 1 and "1/2 of 1" in resumed[0]  # only the unfinished example
    by_key = {(e["set"], e["index"]): e["generation"] for e in results["examples"]}
    assert all(by_key[row["set"], row["index"]] == row["generation"] for row in first)
    assert set(results["sets"]) == {"gsm8k", "math"} and len(results["examples"]) == 3


def test_code_sets_write_executor_jsonl_and_run_only_when_asked(tmp_path):
    records = [
        {
            "task_id": "HumanEval/0",
            "prompt": 'def add(a, b):\n    """Add."""\n',
            "test": "def check(f):\n    assert f(2, 3) == 5\n",
            "entry_point": "add",
        }
    ]
    write_sets(tmp_path / "data", {"humaneval": records})
    answer = lambda prompts: ["```python\ndef add(a, b):\n    return a + b\n```"] * len(prompts)  # noqa: E731
    results = evaluate(answer, tmp_path / "data", ["humaneval"], tmp_path / "run")
    assert results["sets"]["humaneval"] == {"n": 1, "samples": "humaneval_samples.jsonl"}
    sample = json.loads((tmp_path / "run" / "humaneval_samples.jsonl").read_text())
    assert sample == {
        "task_id": "HumanEval/0",
        "completion": "def add(a, b):\n    return a + b",
    }  # stripped, as DropLoRA
    results = evaluate(answer, tmp_path / "data", ["humaneval"], tmp_path / "run2", execute=True)
    assert results["sets"]["humaneval"]["pass@1"] == 100.0
    hangs = [{"prediction": "def add(a, b):\n    while True:\n        pass\n"}]
    wrong = [{"prediction": "def add(a, b):\n    return a - b\n"}]
    assert pass_rate("humaneval", records, hangs, timeout_s=1) == 0.0
    assert pass_rate("humaneval", records, wrong) == 0.0
    mbpp = [{"task_id": 1, "text": "Add two numbers.", "test_list": ["assert add(1, 1) == 2"]}]
    assert pass_rate("mbpp", mbpp, [{"prediction": "def add(a, b):\n    return a + b\n"}]) == 100.0


def test_compare_writes_a_paper_style_table_and_a_png(tmp_path):
    for run, (a, b), mode in (
        ("lora", (60.0, 70.0), "paper"),
        ("droplora", (62.0, 71.0), "corrected"),
        ("old", (1.0, 2.0), None),
    ):
        (tmp_path / run).mkdir()
        (tmp_path / run / "results.json").write_text(
            json.dumps(
                {
                    "sets": {"boolq": {"accuracy": a, "n": 10}, "piqa": {"accuracy": b, "n": 10}},
                    **({"scoring": mode} if mode else {}),
                }
            )
        )
    table = compare(
        [tmp_path / "lora", tmp_path / "droplora", tmp_path / "old"],
        tmp_path / "report",
        paper={"DropLoRA": {"boolq": 74.37, "piqa": 87.38}},
    )
    assert table.splitlines()[0] == "| run | scoring | boolq | piqa | Avg. |"
    assert "| lora | paper | 60.00 | 70.00 | 65.00 |" in table
    assert "| droplora | corrected | 62.00 | 71.00 | 66.50 |" in table
    assert "| old | unrecorded | 1.00 | 2.00 | 1.50 |" in table
    assert "| DropLoRA (paper) | published | 74.37 | 87.38 | 80.88 |" in table
    assert (tmp_path / "report" / "comparison.md").read_text() == table
    with Image.open(tmp_path / "report" / "comparison.png") as image:
        image.load()
        assert image.format == "PNG" and image.size == (600, 400)


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: None, ["--sets", "boolq"], "no test file for 'boolq'"),
        (
            lambda d: (d / "boolq").mkdir() or (d / "boolq" / "test.json").write_text("[{oops"),
            ["--sets", "boolq"],
            "test.json is not valid JSON",
        ),
        (
            lambda d: write_sets(d, {"boolq": [{"instruction": "q"}]}),
            ["--sets", "boolq"],
            "test.json, record 0: missing answer",
        ),
        (lambda d: None, ["--sets", "copa"], "unknown commonsense set(s) copa; known: boolq"),
    ],
)
def test_bad_inputs_fail_with_a_clear_message_before_loading_the_model(tmp_path, demo_dir, setup, args, message):
    (tmp_path / "data").mkdir()
    setup(tmp_path / "data")
    ran = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "eval",
            str(demo_dir / "model"),
            "--task",
            "commonsense",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
            *args,
        ],
        cwd=tmp_path,
    )
    assert ran.returncode != 0 and message in ran.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_compare_of_a_run_without_results_says_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    ran = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "compare",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "report"),
        ],
        cwd=tmp_path,
    )
    assert ran.returncode != 0 and "results.json not found: run `axolotl droplora eval`" in ran.stderr


def test_vllm_without_vllm_installed_says_how_to_get_it(tmp_path, demo_dir):
    import importlib.util

    if importlib.util.find_spec("vllm"):
        pytest.skip("vllm is installed here; this test covers a machine without it, like CI")
    write_sets(tmp_path / "data", {"boolq": COMMONSENSE["boolq"]})
    ran = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "eval",
            str(demo_dir / "model"),
            "--task",
            "commonsense",
            "--sets",
            "boolq",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
            "--vllm",
        ],
        cwd=tmp_path,
    )
    assert ran.returncode != 0 and "--vllm was asked for, but vllm is not installed: pip install vllm" in ran.stderr


def test_resuming_into_a_folder_of_another_model_is_refused(tmp_path):
    write_sets(tmp_path / "data", MATH)
    answer = lambda prompts: ["The answer is: 42"] * len(prompts)  # noqa: E731
    first = {"model": "a", "adapter": None, "adapter_sha256": None, "max_new_tokens": 8}
    evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run", run_info=first)
    with pytest.raises(ValueError, match="holds results of another run \\(adapter_sha256 differ\\)"):
        evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run", run_info={**first, "adapter_sha256": "x"})
    assert evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run", run_info=first)["sets"]["gsm8k"]["n"] == 2


def test_scoring_mode_is_recorded_and_odd_generations_are_wrong_with_a_reason(tmp_path):
    write_sets(tmp_path / "data", {"gsm8k": [{"query": "q", "answer": "#### 1,234"}] * 3})
    generations = iter(["The answer is: 1,234,567", "The answer is: -" + "9" * 400, "The answer is: 17.5"] * 2)
    answer = lambda prompts: [next(generations) for _ in prompts]  # noqa: E731
    paper = evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run")
    assert paper["scoring"] == "paper"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["scoring"] == "paper"
    first, huge, half = paper["examples"]
    assert first["prediction"] == 1234 and first["correct"] is True  # MetaMath reads one separator only
    assert huge["correct"] is False and huge["prediction"] is None
    assert "OverflowError" in huge["error"] and "error" not in first and half["prediction"] == 18
    corrected = evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run", scoring="corrected")
    assert corrected["scoring"] == "corrected" and [e["correct"] for e in corrected["examples"]] == [False] * 3
    assert corrected["examples"][0]["prediction"] == 1234567 and corrected["examples"][2]["prediction"] == 17.5
    with pytest.raises(ValueError, match="unknown scoring 'lenient'; use one of: paper, corrected"):
        evaluate(answer, tmp_path / "data", ["gsm8k"], tmp_path / "run", scoring="lenient")


def test_a_gsm8k_label_that_is_not_a_number_stops_before_generation(tmp_path):
    write_sets(tmp_path / "data", {"gsm8k": [{"query": "q", "answer": "forty-two"}]})
    with pytest.raises(ValueError, match="record 0: GSM8K label 'forty-two' is not a number"):
        evaluate(lambda prompts: pytest.fail("generated"), tmp_path / "data", ["gsm8k"], tmp_path / "run")
