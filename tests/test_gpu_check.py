"""scripts/gpu-check.sh and scripts/gpu_check.py: on CPU, the dry run; the runner itself
with checks that fail, pass, time out or lack a package; and the bench options the GPU run uses."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "scripts")
)  # the GPU runner lives beside bench/ and examples/
from gpu_check import NOT_RUN, Check, Workspace, default_checks, run_checks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NAMES = [
    "bench-rank-dropout",
    "bench-milora-init",
    "recipe-zero2",
    "qlora-droplora",
    "recipe-milora-zero2",
    "vllm-adapters",
    "recipe-zero2-offload",
    "study-gpu",
]


def run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", **env},
    )


def test_dry_run_says_no_cuda_lists_every_command_prepares_and_marks_all_not_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = run(
        ["bash", "scripts/gpu-check.sh", "--dry-run", "--out", str(out), "--work", str(work), "--base-shape", "tiny"],
        PYTHON=PY,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no CUDA device: torch" in done.stdout
    checks = default_checks(work, out, base_shape="tiny")
    assert [check.name for check in checks] == NAMES
    for check in checks:
        assert f"[{check.name}]" in done.stdout
        for step in check.steps:
            assert "$ " + " ".join(step) in done.stdout, (check.name, step)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry run" and summary["reason"].startswith("no CUDA device")
    assert [c["name"] for c in summary["checks"]] == NAMES
    assert {c["status"] for c in summary["checks"]} == {NOT_RUN}
    assert summary["preparation_failed"] is False
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("# GPU check: dry run")
    for name in NAMES:
        assert f"| {name} | {NOT_RUN} |" in markdown

    # what the preparation wrote is what the GPU run will use: recipes Axolotl accepts, on the
    # random base, with the paper's DeepSpeed files, and helper scripts that compile
    prepared = {c["name"]: c["prepared"] for c in summary["checks"]}
    assert "validated by Axolotl" in prepared["recipe-zero2"], prepared["recipe-zero2"]
    recipe = yaml.safe_load((work / "recipe-zero2.yml").read_text())
    assert recipe["base_model"] == str(work / "base") and recipe["max_steps"] == 20
    assert recipe["deepspeed"] == str(ROOT / "examples" / "deepspeed" / "zero2.json")
    assert recipe["adapter"] == "droplora" and recipe["droplora_rank_dropout"] == 0.3
    assert recipe["datasets"][0]["path"] == str(work / "data" / "metamath.jsonl")
    offload = yaml.safe_load((work / "recipe-zero2-offload.yml").read_text())
    assert offload["deepspeed"].endswith("zero2_offload.json")
    qlora = yaml.safe_load((work / "qlora-droplora.yml").read_text())
    assert (qlora["adapter"], qlora["load_in_4bit"], "deepspeed" in qlora) == ("qlora", True, False)
    milora = yaml.safe_load((work / "recipe-milora-zero2.yml").read_text())
    assert milora["peft_init_lora_weights"] == "milora"
    base = json.loads((work / "base" / "config.json").read_text())
    assert base["num_hidden_layers"] == 2 and base["architectures"] == ["LlamaForCausalLM"]
    first = json.loads((work / "data" / "metamath.jsonl").read_text().splitlines()[0])
    assert set(first) == {"query", "response"}
    for script in ("peft_matches_merged.py", "vllm_adapters.py"):
        py_compile.compile(str(work / "scripts" / script), doraise=True)


def test_without_cuda_the_module_dry_runs_by_itself_and_only_selects(tmp_path):
    out = tmp_path / "out"
    done = run(
        [
            PY,
            "scripts/gpu_check.py",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--only",
            "study-gpu,bench-milora-init",
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("no CUDA device:")
    assert "[bench-milora-init]" in done.stdout and "[study-gpu]" in done.stdout
    assert "[recipe-zero2]" not in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [(c["name"], c["status"]) for c in summary["checks"]] == [
        ("bench-milora-init", NOT_RUN),
        ("study-gpu", NOT_RUN),
    ]  # the list's order, not --only's


def test_only_with_an_unknown_name_says_which_names_exist(tmp_path):
    done = run([PY, "scripts/gpu_check.py", "--out", str(tmp_path), "--only", "bench-milora"])
    assert done.returncode == 2
    assert "--only: unknown check(s) bench-milora; known: bench-rank-dropout, bench-milora-init" in done.stderr


def test_the_training_checks_steps_run_on_cpu_without_deepspeed_and_bf16(tmp_path):
    """What the ZeRO-2 checks run after `accelerate launch`: the paper recipe on the random base,
    `merge-lora`, and the vanilla-PEFT script, here with the launcher, DeepSpeed and bf16 that
    need a GPU swapped for what a CPU has."""
    space = Workspace(tmp_path / "work", base_shape="tiny")
    check = Check(
        "cpu-recipe",
        "the recipe-zero2 steps on CPU",
        space.train_merge_peft("cpu-recipe", [PY, "-m", "axolotl.cli.train"]),
        expect=(
            f"DropLoRA: rank dropout p=0.3 mask_mode=element rescale=True on {space.lora_layers()} LoRA layers",
            "vanilla PEFT vs merged: max |logit diff|",
        ),
        prepare=lambda: [
            space.recipe(
                "cpu-recipe",
                "math-llama2_7b-droplora",
                4,
                None,
                bf16=False,
                gradient_checkpointing=False,
                learning_rate=2e-3,
            ),
            space.script("PEFT_MATCHES_MERGED"),
        ],
        cwd=space.work,
    )
    summary = run_checks([check], tmp_path / "out", dry_run=False, echo=lambda line: None)
    result = summary["checks"][0]
    assert result.status == "passed", (result.failed_command, result.notes, result.stderr_tail)
    assert (space.output("cpu-recipe") / "merged").is_dir()


def test_a_failing_check_is_recorded_and_the_others_still_run(tmp_path):
    checks = [
        Check(
            "fails",
            "exits 1",
            [[PY, "-c", "import sys; print('partial'); sys.exit('boom')"], [PY, "-c", "print('never reached')"]],
        ),
        Check("passes", "prints ok", [[PY, "-c", "print('ok')"], [PY, "-c", "print('twice')"]], expect=("ok",)),
        Check("slow", "sleeps", [[PY, "-c", "import time; time.sleep(30)"]], timeout=2),
        Check("missing", "needs a package", [[PY, "-c", "print(1)"]], needs=("no_such_module_here",)),
        Check("silent", "lacks a log line", [[PY, "-c", "print('hello')"]], expect=("needle",)),
    ]
    summary = run_checks(checks, tmp_path / "out", dry_run=False, echo=lambda line: None)
    on_disk = {c["name"]: c for c in json.loads((tmp_path / "out" / "summary.json").read_text())["checks"]}
    assert {name: c["status"] for name, c in on_disk.items()} == {
        "fails": "failed (exit 1)",
        "passes": "passed",
        "slow": "timed out after 2 s",
        "missing": "skipped (not installed: no_such_module_here)",
        "silent": "failed (expected output missing)",
    }
    assert on_disk["fails"]["rc"] == 1 and "boom" in on_disk["fails"]["stderr_tail"]
    assert on_disk["fails"]["stdout_tail"] == "partial\n"  # the second command never ran
    assert on_disk["fails"]["failed_command"].endswith("sys.exit('\"'\"'boom'\"'\"')'")
    assert on_disk["passes"]["stdout_tail"] == "ok\ntwice\n" and on_disk["passes"]["rc"] == 0
    assert 2 <= on_disk["slow"]["wall_s"] < 20
    assert on_disk["silent"]["notes"] == ["missing from the output: 'needle'"]
    assert (tmp_path / "out" / "logs" / "fails.log").read_text().startswith("$ ")
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| fails | failed (exit 1) |" in markdown and "boom" in markdown
    assert summary["mode"] == "run"


def test_checks_past_the_budget_are_not_started(tmp_path):
    checks = [
        Check("first", "", [[PY, "-c", "import time; time.sleep(1.5)"]]),
        Check("second", "", [[PY, "-c", "print('ran')"]]),
    ]
    summary = run_checks(checks, tmp_path, dry_run=False, budget=61, echo=lambda line: None)
    assert [r.status for r in summary["checks"]] == ["passed", "not run (time budget of 61 s spent)"]


def test_a_check_may_not_ask_for_more_than_ten_minutes():
    with pytest.raises(ValueError, match="check 'long': timeout 601 s must be in 1..600"):
        Check("long", "", [["true"]], timeout=601)


def test_bench_rank_dropout_takes_device_and_dtype_and_keeps_its_table():
    done = run([PY, "bench/bench_rank_dropout.py", "--sizes", "tiny", "--reps", "1", "--dtype", "bfloat16"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cpu (" in done.stdout and "bfloat16" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tiny (hidden 64"))
    time_ratio, memory_ratio = float(row.split("|")[4]), float(row.split("|")[7])
    assert time_ratio > 0 and 0.9 < memory_ratio < 1.2
    refused = run([PY, "bench/bench_rank_dropout.py", "--device", "cuda", "--sizes", "7b-slice"])
    assert (
        refused.returncode == 2 and "--device cuda: torch" in refused.stderr and "sees no CUDA device" in refused.stderr
    )
    unknown = run([PY, "bench/bench_rank_dropout.py", "--sizes", "huge"])
    assert (
        unknown.returncode == 2 and "--sizes: unknown huge; choose from tiny, wide, smollm2, 7b-slice" in unknown.stderr
    )


def test_bench_milora_init_still_compares_on_cpu_and_refuses_a_missing_gpu():
    done = run(
        [PY, "bench/bench_milora_init.py", "--hidden", "64", "--intermediate", "128", "--layers", "1", "--rank", "4"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cpu" in done.stdout and "speed-up (authors / ours):" in done.stdout
    assert done.stdout.count("reconstruction ≤") == 2
    refused = run([PY, "bench/bench_milora_init.py", "--device", "cuda"])
    assert refused.returncode == 2 and "sees no CUDA device" in refused.stderr
