"""Replication study: LoRA vs DropLoRA (p, mask modes) vs DoRA / PiSSA / MiLoRA, several seeds.

    run_study(base_model, out_dir, "cpu")   -> out_dir/report.md and out_dir/study.png

Every arm fine-tunes the same base model on the demo's arithmetic task (demo.py) with TRL's
SFTTrainer and a PEFT LoraConfig, DropLoRA and MiLoRA through `DropLoRACallback` (the same
rank-dropout and init code the Axolotl plugin installs), then answers the held-out questions
greedily and is scored with the papers' GSM8K scorer. Each (arm, seed) writes
runs/<arm>/seed<k>/result.json when it finishes, so an interrupted study resumes where it stopped.

The report gives held-out accuracy mean ± sample std over seeds, the per-step training loss
(mean over seeds, in the plot), and for each DropLoRA arm its difference from LoRA in units of
the standard error of that difference (paired by seed): "beyond seed noise" means more than 2
standard errors.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import platform
import statistics
import time
from pathlib import Path

from .demo import make_demo
from .evaluate import Generator, evaluate, refuse_other_run
from .plots import bars_and_curves

LOG = logging.getLogger(__name__)

# Short prompt: on 2 CPU cores a training step costs about its token count, and the papers'
# 45-token preamble would double it. The answer format keeps "The answer is: N" for the scorer.
PROMPT = "Question: {instruction}\nAnswer:"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the DropLoRA paper's

# arm -> how it differs from plain LoRA (LoraConfig keys, or DropLoRACallback's)
ARMS = {
    "lora": {},
    "droplora-p0.1": {"rank_dropout": 0.1},
    "droplora-p0.3": {"rank_dropout": 0.3},
    "droplora-p0.5": {"rank_dropout": 0.5},
    "droplora-p0.3-sequence": {"rank_dropout": 0.3, "mask_mode": "sequence"},
    "droplora-p0.3-batch": {"rank_dropout": 0.3, "mask_mode": "batch"},
    "dora": {"use_dora": True},
    "pissa": {"init_lora_weights": "pissa_niter_4"},
    "milora": {"milora": True},
}
SVD_INITS = ("pissa", "milora")  # their papers use lora_alpha = r; the others use 2r


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    steps: int
    batch_size: int
    r: int
    learning_rate: float
    n_train: int
    n_heldout: int
    seeds: tuple[int, ...]
    bf16: bool
    max_new_tokens: int = 28  # the longest answer, "58 * 44 = 2552. The answer is: 2552", is 23 tokens
    eval_batch_size: int = 50


CONFIGS = {
    # 27 min 42 s on 2 CPU cores (measured; its report is reports/study-cpu/)
    "cpu": StudyConfig(steps=18, batch_size=8, r=16, learning_rate=1e-3, n_train=400,
                       n_heldout=100, seeds=(0, 1, 2), bf16=False),
    # sized by estimate for one H100/H200 in about 10 minutes; not yet run on a GPU
    "gpu": StudyConfig(steps=150, batch_size=32, r=32, learning_rate=5e-4, n_train=4000,
                       n_heldout=500, seeds=(0, 1, 2), bf16=True, eval_batch_size=250),
}


def run_study(base_model: str | Path, out_dir: str | Path, config: str | StudyConfig = "cpu",
              arms: list[str] | None = None) -> str:
    """Train and score every (arm, seed) not done yet, then write report.md and study.png."""
    from tqdm.auto import tqdm

    cfg = CONFIGS[config] if isinstance(config, str) else config
    arms = list(arms or ARMS)
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    out_dir = Path(out_dir)
    settings = {"base_model": str(Path(base_model).resolve()), **dataclasses.asdict(cfg)}
    settings["seeds"] = list(cfg.seeds)
    refuse_other_run(out_dir, settings, info_name="study.json", evidence="runs")
    make_demo(out_dir / "task", base_model, n_train=cfg.n_train, n_heldout=cfg.n_heldout)
    (out_dir / "study.json").write_text(json.dumps(settings, indent=1))

    todo = [(arm, seed) for arm in arms for seed in cfg.seeds if not _result_file(out_dir, arm, seed).is_file()]
    if todo:
        base, tokenizer, train_data = _load(base_model, out_dir / "task", cfg)
        for arm, seed in tqdm(todo, desc="study runs", unit="run"):
            result = _train_and_score(base, tokenizer, train_data, arm, seed, cfg, out_dir)
            tqdm.write(f"{arm} seed {seed}: held-out accuracy {result['accuracy']:.1f}% "
                       f"(train {result['train_s']:.0f} s)")
    return write_report(out_dir, arms, cfg, settings["base_model"])


def _result_file(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / "runs" / arm / f"seed{seed}" / "result.json"


def _load(base_model, task_dir: Path, cfg: StudyConfig):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if torch.cuda.is_available():
        base = base.to("cuda")
    records = [json.loads(line) for line in (task_dir / "data" / "train.jsonl").read_text().splitlines()]
    train_data = Dataset.from_list([{"prompt": PROMPT.format(instruction=r["instruction"]),
                                     "completion": " " + r["output"]} for r in records])
    return base, tokenizer, train_data


def _train_and_score(base, tokenizer, train_data, arm: str, seed: int, cfg: StudyConfig, out_dir: Path) -> dict:
    from peft import LoraConfig
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from .trainer_callback import DropLoRACallback

    lora_kwargs = dict(ARMS[arm])
    rank_dropout = lora_kwargs.pop("rank_dropout", None)
    mask_mode = lora_kwargs.pop("mask_mode", "element")
    milora = lora_kwargs.pop("milora", False)
    run_dir = _result_file(out_dir, arm, seed).parent
    set_seed(seed)  # before the LoRA init too, which happens inside SFTTrainer's __init__
    trainer = SFTTrainer(
        copy.deepcopy(base),
        args=SFTConfig(
            output_dir=str(run_dir / "trainer"), max_steps=cfg.steps, seed=seed,
            per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            lr_scheduler_type="linear", warmup_steps=max(1, cfg.steps // 10), logging_steps=1,
            save_strategy="no", report_to=[], bf16=cfg.bf16, disable_tqdm=True,
        ),
        train_dataset=train_data,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=cfg.r, lora_alpha=cfg.r if arm in SVD_INITS else 2 * cfg.r,
                               lora_dropout=0.05, target_modules=TARGET_MODULES, **lora_kwargs),
        callbacks=[DropLoRACallback(rank_dropout, mask_mode, milora=milora)] if rank_dropout or milora else [],
    )
    trainer.remove_callback(PrinterCallback)  # the losses go to the report, not the terminal
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    start = time.perf_counter()
    scored = evaluate(Generator.from_model(trainer.model, tokenizer, cfg.max_new_tokens), out_dir / "task" / "heldout",
                      ["gsm8k"], run_dir / "eval", batch_size=cfg.eval_batch_size, math_prompt=PROMPT)
    result = {"arm": arm, "seed": seed, "accuracy": scored["sets"]["gsm8k"]["accuracy"], "losses": losses,
              "train_s": train_s, "eval_s": time.perf_counter() - start, "machine": _machine()}
    del trainer
    gc.collect()
    done = _result_file(out_dir, arm, seed)
    scratch = done.with_suffix(".partial")
    scratch.write_text(json.dumps(result, indent=1))
    scratch.replace(done)  # the run counts as done only once this exists
    return result


def difference_from(reference: list[float], other: list[float]) -> tuple[float, float]:
    """(mean of other − reference over seeds, the standard error of that mean difference).

    Paired by seed: a seed fixes the data order (and, for the arms with random A, the init), and
    that moves every arm alike (README), so the noise that matters is that of the differences."""
    differences = [b - a for a, b in zip(reference, other, strict=True)]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return statistics.fmean(differences), spread / len(differences) ** 0.5


def beyond_noise(reference: list[float], other: list[float]) -> bool:
    """Whether `other` beats `reference` by more than 2 standard errors (≥ 2 seeds)."""
    delta, se = difference_from(reference, other)
    return len(reference) > 1 and delta > 2 * se


def verdict(label: str, reference: list[float], other: list[float]) -> str:
    """One sentence: how `label` compares with LoRA, and whether that is beyond seed noise."""
    delta, se = difference_from(reference, other)
    if len(reference) < 2:
        noise = "one seed: no noise estimate"
    elif se == 0:
        noise = "the same difference on every seed" + (": beyond seed noise" if delta else "")
    else:
        noise = f"{abs(delta) / se:.1f} standard errors: {'beyond' if abs(delta) > 2 * se else 'within'} seed noise"
    if delta == 0:
        return f"{label} tied with LoRA ({noise})"
    return f"{label} {'beat' if delta > 0 else 'fell behind'} LoRA by {abs(delta):.1f} points ({noise})"


def _machine() -> str:
    """What a run ran on, recorded with its result so a report rewritten elsewhere stays true."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def write_report(out_dir: Path, arms: list[str], cfg: StudyConfig, base_model: str) -> str:
    """report.md and study.png from the finished runs' result.json files."""
    results = {arm: [json.loads(_result_file(out_dir, arm, s).read_text()) for s in cfg.seeds] for arm in arms}
    accuracy = {arm: [r["accuracy"] for r in runs] for arm, runs in results.items()}
    means = {arm: statistics.fmean(accs) for arm, accs in accuracy.items()}
    stds = {arm: statistics.stdev(accs) if len(accs) > 1 else 0.0 for arm, accs in accuracy.items()}
    mean_curves = {arm: [statistics.fmean(step) for step in zip(*(r["losses"] for r in runs))]
                   for arm, runs in results.items()}
    machine = "; ".join(sorted({r["machine"] for runs in results.values() for r in runs}))
    total_s = sum(r["train_s"] + r["eval_s"] for runs in results.values() for r in runs)
    lines = [
        "# Replication study: LoRA vs DropLoRA vs DoRA / PiSSA / MiLoRA",
        "",
        f"Base model `{Path(base_model).name}`; task: the demo's arithmetic questions, {cfg.n_train} for "
        f"training, {cfg.n_heldout} held out (GSM8K scorer, greedy). {cfg.steps} steps of batch "
        f"{cfg.batch_size}, lr {cfg.learning_rate}, r={cfg.r} on {', '.join(TARGET_MODULES)}, "
        f"lora_alpha=2r (r for PiSSA and MiLoRA, as in their papers), seeds {list(cfg.seeds)}, "
        f"{'bf16' if cfg.bf16 else 'float32'}. Machine: {machine}; {total_s / 60:.1f} min of training and "
        f"scoring in all.",
        "",
        "| arm | held-out accuracy (%) | per seed | final loss | train s/run |",
        "|---|---|---|---|---|",
    ]
    for arm, runs in results.items():
        final = statistics.fmean(statistics.fmean(r["losses"][-5:]) for r in runs)
        lines.append(f"| {arm} | {means[arm]:.1f} ± {stds[arm]:.1f} | {', '.join(f'{a:.0f}' for a in accuracy[arm])} "
                     f"| {final:.3f} | {statistics.fmean(r['train_s'] for r in runs):.0f} |")
    lines += ["", "Mean ± sample standard deviation over seeds; final loss: the mean of the last 5 "
              "logged training losses.", ""]
    if "lora" in accuracy:
        droplora_arms = [arm for arm in arms if arm.startswith("droplora")]
        lines += ["## Did DropLoRA beat LoRA?", ""]
        lines += [f"- {verdict(arm, accuracy['lora'], accuracy[arm])}." for arm in arms if arm != "lora"]
        winners = [arm for arm in droplora_arms if beyond_noise(accuracy["lora"], accuracy[arm])]
        outcome = (f"DropLoRA ({', '.join(winners)}) beat LoRA beyond seed noise" if winners
                   else "no DropLoRA arm beat LoRA beyond seed noise")
        lines += ["", f"**In short:** {outcome} at this scale (beyond noise: a mean difference of more "
                  f"than 2 standard errors, paired by seed, {len(cfg.seeds)} seeds each).", ""]
    lines += ["![held-out accuracy and training loss](study.png)", ""]
    report = "\n".join(lines)
    bars_and_curves(out_dir / "study.png", arms, [means[a] for a in arms], [stds[a] for a in arms],
                    "held-out accuracy (%), mean ± std", mean_curves, "training loss (mean over seeds)")
    (out_dir / "report.md").write_text(report)
    return report

