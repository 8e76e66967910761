"""Paper-parity evaluation: generate answers, score them as the papers did, compare runs.

    evaluate(model, data_dir, task, out_dir)   -> out_dir/results.json (+ predictions.jsonl)
    compare(run_dirs, out_dir)                 -> out_dir/comparison.md and comparison.png

Data layout (the papers' test files): `data_dir/<set>/test.json` (a JSON list) or `test.jsonl`.
Commonsense sets are LLM-Adapters' (`instruction`, `input`, `output`, `answer`); `gsm8k` and
`math` records hold the question in `instruction` (or `query` / `question` / `problem`) and the
label in `answer`; `humaneval` records have `task_id`, `prompt`; `mbpp` records `task_id`,
`text` (or `prompt`) and `test_list`.

Generation is greedy and batched, with left padding, and appends each finished batch to
predictions.jsonl before the next starts: an interrupted run resumes where it stopped and
redoes nothing. Scoring (`scoring="paper"` or `"corrected"`, see scorers.py) runs on those
generations, so rescoring a finished run in the other mode generates nothing.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from .plots import grouped_bars
from .prompts import ALPACA, MATH_PROMPT
from .scorers import (
    COMMONSENSE_PATTERNS,
    ScoringError,
    check_mode,
    commonsense_answer,
    extract_code,
    gsm8k_equal,
    gsm8k_label,
    gsm8k_number,
    math_answer,
    math_equivalent,
)

TASK_SETS = {
    "commonsense": list(COMMONSENSE_PATTERNS),
    "math": ["gsm8k", "math"],
    "code": ["humaneval", "mbpp"],
}
QUESTION_FIELDS = ("instruction", "query", "question", "problem", "text", "prompt")


class EvalDataError(ValueError):
    """A test file that is missing or malformed; the message names the file and the record."""


def read_records(path: Path) -> list:
    """The records of a JSON list (`.json`) or of a JSON Lines file (any other suffix).

    Raises:
        json.JSONDecodeError: the file is not valid JSON / JSON Lines.
    """
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_set(data_dir: Path, set_name: str) -> list[dict]:
    for name in ("test.json", "test.jsonl"):
        path = Path(data_dir) / set_name / name
        if path.is_file():
            break
    else:
        raise EvalDataError(
            f"no test file for {set_name!r}: expected {Path(data_dir) / set_name}/test.json or test.jsonl"
        )
    try:
        records = read_records(path)
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(records, list) or not records:
        raise EvalDataError(f"{path} must hold a non-empty list of records")
    needed = {"humaneval": ("task_id", "prompt"), "mbpp": ("task_id", "test_list")}.get(set_name, ("answer",))
    for index, record in enumerate(records):
        missing = [key for key in needed if not isinstance(record, dict) or key not in record]
        if not missing and not any(key in record for key in QUESTION_FIELDS):
            missing = ["instruction"]
        if missing:
            raise EvalDataError(f"{path}, record {index}: missing {', '.join(missing)}")
        if set_name == "gsm8k":
            try:
                gsm8k_label(record["answer"])
            except ScoringError as err:
                raise EvalDataError(f"{path}, record {index}: {err}") from None
    return records


def prompt_for(set_name: str, record: dict, math_prompt: str = MATH_PROMPT) -> str:
    question = next(record[key] for key in QUESTION_FIELDS if key in record)
    if set_name in ("gsm8k", "math"):
        return math_prompt.format(instruction=question)
    if set_name == "humaneval":
        question = f"Complete the following python code:\n{record['prompt']}"
    elif set_name == "mbpp":
        question = f"{question}\nYour code should pass these tests:\n" + "\n".join(record["test_list"])
    elif record.get("input"):
        return ALPACA.replace("{instruction}\n\n", "{instruction}\n\n### Input:\n{input}\n\n").format(
            instruction=question, input=record["input"]
        )
    return ALPACA.format(instruction=question)


def score(set_name: str, record: dict, generation: str, scoring: str = "paper") -> dict:
    """The extracted prediction and, where the set has labels here, whether it is correct.

    Never raises for any generation: where the reference code would raise (and abort its run),
    the example is wrong, with the reason in `error`."""
    code = set_name in ("humaneval", "mbpp")
    check_mode(scoring)  # a wrong mode is the caller's error, not the example's
    try:
        if code:
            return {"prediction": extract_code(generation, scoring)}  # scored by an executor
        if set_name in COMMONSENSE_PATTERNS:
            predicted = commonsense_answer(set_name, generation, scoring)
            return {"prediction": predicted, "correct": predicted == record["answer"]}
        if set_name == "gsm8k":
            predicted = gsm8k_number(generation, scoring)
            return {
                "prediction": _json_number(predicted),
                "correct": gsm8k_equal(predicted, gsm8k_label(record["answer"]), scoring),
            }
        if set_name == "math":
            predicted = math_answer(generation)
            return {
                "prediction": predicted,
                "correct": predicted is not None and math_equivalent(predicted, str(record["answer"]), scoring),
            }
    except Exception as err:  # noqa: BLE001 - one odd generation must not stop a whole run
        reason = str(err) if isinstance(err, ScoringError) else f"{type(err).__name__}: {err}"
        return {"prediction": "" if code else None, **({} if code else {"correct": False}), "error": reason}
    raise ValueError(f"unknown set {set_name!r}")


def _json_number(value):
    """A GSM8K prediction for results.json: an int, else a float (or "a/b" beyond float range)."""
    if value is None or isinstance(value, int):
        return value
    if value.denominator == 1:
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return str(value)


class Generator:
    """Greedy batched generation with transformers (or vLLM), from a merged model or base + adapter."""

    def __init__(self, model_path: str, adapter: str | None = None, use_vllm: bool = False, max_new_tokens: int = 256):
        self.max_new_tokens = max_new_tokens
        if use_vllm:
            try:
                from vllm import LLM, SamplingParams
            except ImportError:
                raise EvalDataError("--vllm was asked for, but vllm is not installed: pip install vllm") from None
            from vllm.lora.request import LoRARequest

            self.llm = LLM(model=model_path, enable_lora=adapter is not None)
            self.params = SamplingParams(temperature=0, max_tokens=max_new_tokens)
            self.lora = LoRARequest("adapter", 1, adapter) if adapter else None
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self._use_transformers(model, AutoTokenizer.from_pretrained(model_path))

    @classmethod
    def from_model(cls, model, tokenizer, max_new_tokens: int = 256) -> Generator:
        """Generate with a model already in memory (e.g. just trained), in eval mode."""
        self = cls.__new__(cls)
        self.max_new_tokens = max_new_tokens
        self._use_transformers(model, tokenizer)
        return self

    def _use_transformers(self, model, tokenizer) -> None:
        self.llm, self.model = None, model.eval()
        self.tokenizer = copy.copy(tokenizer)  # left padding for generation; the caller's is untouched
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def __call__(self, prompts: list[str]) -> list[str]:
        if self.llm is not None:
            outputs = self.llm.generate(prompts, self.params, lora_request=self.lora)
            return [output.outputs[0].text for output in outputs]
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id
            )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate(
    generate,
    data_dir: str | Path,
    sets: list[str],
    out_dir: str | Path,
    batch_size: int = 8,
    limit: int | None = None,
    execute: bool = False,
    run_info: dict | None = None,
    math_prompt: str = MATH_PROMPT,
    scoring: str = "paper",
) -> dict:
    """Generate (resuming), score, and write results.json; returns the results.

    `scoring`: "paper" (the papers' evaluation code, quirks included) or "corrected"; recorded
    in results.json. It is not part of `run_info`: generations are the same in both modes.

    `run_info` (model, adapter, settings) is kept in out_dir/run.json: resuming into a folder
    whose predictions came from another model or other settings is refused, not mixed in.
    `math_prompt`: the template for gsm8k/math questions, for a model trained on another one."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    check_mode(scoring)
    data = {name: load_set(Path(data_dir), name)[:limit] for name in sets}  # all errors before any work
    if run_info is not None:
        refuse_other_run(out_dir, run_info)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_info is not None:
        (out_dir / "run.json").write_text(json.dumps(run_info, indent=1))
    log = out_dir / "predictions.jsonl"
    done = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: its batch is generated again
            done[row["set"], row["index"]] = row["generation"]
    todo = [(name, i) for name, records in data.items() for i in range(len(records)) if (name, i) not in done]
    with open(log, "a") as sink, tqdm(total=len(todo), desc="generating", unit="example") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            generations = generate([prompt_for(name, data[name][i], math_prompt) for name, i in batch])
            for (name, i), generation in zip(batch, generations):
                done[name, i] = generation
                sink.write(json.dumps({"set": name, "index": i, "generation": generation}) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            progress.update(len(batch))

    results = {"scoring": scoring, "sets": {}, "examples": []}
    for name, records in data.items():
        scored = [
            dict(set=name, index=i, generation=done[name, i], **score(name, r, done[name, i], scoring))
            for i, r in enumerate(records)
        ]
        results["examples"].extend(scored)
        if name in ("humaneval", "mbpp"):
            _write_code_jsonl(out_dir / f"{name}_samples.jsonl", records, scored)
            if execute:
                results["sets"][name] = {"pass@1": pass_rate(name, records, scored), "n": len(records)}
            else:
                results["sets"][name] = {"n": len(records), "samples": f"{name}_samples.jsonl"}
        else:
            results["sets"][name] = {
                "accuracy": 100 * sum(s["correct"] for s in scored) / len(scored),
                "n": len(records),
            }
    scores = [s.get("accuracy", s.get("pass@1")) for s in results["sets"].values()]
    if scores and None not in scores:
        results["average"] = sum(scores) / len(scores)
    scratch = out_dir / "results.json.partial"
    scratch.write_text(json.dumps(results, indent=1))
    scratch.replace(out_dir / "results.json")  # a complete file or none
    return results


def refuse_other_run(
    out_dir: Path, run_info: dict, info_name: str = "run.json", evidence: str = "predictions.jsonl"
) -> None:
    """Raise EvalDataError when `out_dir` holds results (`evidence`) of a run whose settings,
    kept in `info_name`, differ from `run_info`: resuming must never mix two runs."""
    previous = Path(out_dir) / info_name
    if (Path(out_dir) / evidence).exists() and previous.is_file():
        before = json.loads(previous.read_text())
        if before != run_info:
            changed = sorted(k for k in set(before) | set(run_info) if before.get(k) != run_info.get(k))
            raise EvalDataError(
                f"{out_dir} holds results of another run ({', '.join(changed)} differ): "
                f"use a new --out, or delete {out_dir} to start over"
            )


def run_signature(model: str, adapter: str | None, max_new_tokens: int) -> dict:
    """What makes generations comparable: the model, the adapter's exact weights, the settings."""
    import hashlib

    weights = Path(adapter or "", "adapter_model.safetensors")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if adapter and weights.is_file() else None
    return {
        "model": str(Path(model).resolve()) if Path(model).exists() else model,
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        "adapter_sha256": digest,
        "max_new_tokens": max_new_tokens,
    }


def _write_code_jsonl(path: Path, records: list[dict], scored: list[dict]) -> None:
    with open(path, "w") as sink:
        for record, row in zip(records, scored):
            sink.write(json.dumps({"task_id": record["task_id"], "completion": row["prediction"]}) + "\n")


def pass_rate(set_name: str, records: list[dict], scored: list[dict], timeout_s: float = 10.0) -> float:
    """pass@1 in percent: each program runs in its own Python subprocess, killed after timeout_s."""
    import subprocess
    import sys

    passed = 0
    for record, row in zip(records, scored):
        if set_name == "humaneval":
            program = f"{record['prompt']}\n{row['prediction']}\n{record['test']}\ncheck({record['entry_point']})\n"
        else:
            program = row["prediction"] + "\n" + "\n".join(record["test_list"]) + "\n"
        try:
            run = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=timeout_s)
            passed += run.returncode == 0
        except subprocess.TimeoutExpired:
            pass
    return 100 * passed / len(records)


def compare(run_dirs: list[str | Path], out_dir: str | Path, paper: dict | None = None) -> str:
    """A Markdown table (runs × sets, then the average, as in the papers' tables) and a PNG
    bar chart of the same numbers. `paper`: {row label: {set: number}} added as extra rows.
    A `scoring` column gives each run's scoring mode ("paper" or "corrected"; "unrecorded" for
    results.json written before modes existed), so rows scored differently are not mixed up."""
    rows, modes = {}, {}
    for run in map(Path, run_dirs):
        results_file = run / "results.json"
        if not results_file.is_file():
            raise EvalDataError(f"{results_file} not found: run `axolotl droplora eval` for {run} first")
        results = json.loads(results_file.read_text())
        rows[run.name] = {name: s.get("accuracy", s.get("pass@1")) for name, s in results["sets"].items()}
        modes[run.name] = results.get("scoring", "unrecorded")
    for label, numbers in (paper or {}).items():
        rows[f"{label} (paper)"] = dict(numbers)
        modes[f"{label} (paper)"] = "published"
    sets = list(dict.fromkeys(name for numbers in rows.values() for name in numbers))
    lines = ["| run | scoring | " + " | ".join(sets) + " | Avg. |", "|---" * (len(sets) + 3) + "|"]
    for label, numbers in rows.items():
        values = [numbers.get(name) for name in sets]
        known = [v for v in values if v is not None]
        average = f"{sum(known) / len(known):.2f}" if known and len(known) == len(values) else "—"
        lines.append(
            f"| {label} | {modes[label]} | "
            + " | ".join("—" if v is None else f"{v:.2f}" for v in values)
            + f" | {average} |"
        )
    table = "\n".join(lines) + "\n"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(table)

    grouped_bars(
        out_dir / "comparison.png",
        sets,
        {label: [numbers.get(n) or 0 for n in sets] for label, numbers in rows.items()},
        "accuracy / pass@1 (%)",
    )
    return table
