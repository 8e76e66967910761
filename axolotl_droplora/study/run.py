"""One run of the replication study: train an (arm, seed), score it, analyse it, save result.json.

    train_and_score(base, tokenizer, train_data, heldout, arm, seed, cfg, out_dir) -> the result dict

TRL's SFTTrainer with the arm's LoraConfig (or, for GaLore, no adapter and transformers' GaLore
optimizer), DropLoRA and MiLoRA through DropLoRACallback; then greedy answers (accuracy), the
held-out answer loss, the per-epoch loss curve in the epoch configs, and the mechanism
analyses for the config's mechanism arms. The result file is written last, atomically: a run
counts as done only once it exists.
"""

from __future__ import annotations

import copy
import gc
import json
import platform
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback

from ..demo.task import make_demo
from ..eval.evaluate import Generator, evaluate, refuse_other_run
from ..recipes.paper import TARGET_MODULES
from .arms import (
    ARMS,
    CONFIGS,
    PROMPT,
    StudyConfig,
    adapter_dir,
    is_svd_init,
    reference_arm,
    result_file,
    study_settings,
)
from .report import write_any_report


def load(base_model, task_dir: Path, cfg: StudyConfig):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if torch.cuda.is_available():
        base = base.to("cuda")
    records = [json.loads(line) for line in (task_dir / "data" / "train.jsonl").read_text().splitlines()]
    train_data = Dataset.from_list(
        [{"prompt": PROMPT.format(instruction=r["instruction"]), "completion": " " + r["output"]} for r in records]
    )
    heldout = json.loads((task_dir / "heldout" / "gsm8k" / "test.json").read_text())
    return base, tokenizer, train_data, heldout


def heldout_pairs(heldout: list[dict], n: int) -> tuple[list[str], list[str]]:
    """(prompts, answers) of the first n held-out questions, as training presents them."""
    return (
        [PROMPT.format(instruction=r["instruction"]) for r in heldout[:n]],
        [" " + r["output"] for r in heldout[:n]],
    )


def loss_before_training(base, tokenizer, heldout, cfg: StudyConfig) -> float:
    """The per-epoch curve's epoch 0: the base model's answer loss on the curve's questions,
    shared by every run that starts from the base model's function (see starts_at_base)."""
    from ..eval.answer_loss import answer_nll

    return statistics.fmean(
        answer_nll(base, tokenizer, *heldout_pairs(heldout, cfg.n_curve or cfg.n_loss), cfg.eval_batch_size)
    )


def starts_at_base(arm: str) -> bool:
    """Whether the arm's model before training computes exactly what the base model does: B0 = 0
    adds exact zeros and GaLore starts from the base weights, while the SVD inits (W − B·A + B·A)
    and DoRA (W / ‖W‖ · m) only round back to it."""
    return not is_svd_init(arm) and not ARMS[arm].get("use_dora")


def train_and_score(
    base,
    tokenizer,
    train_data,
    heldout,
    arm: str,
    seed: int,
    cfg: StudyConfig,
    out_dir: Path,
    base_loss: float | None = None,
) -> dict:
    """base_loss: loss_before_training's value, reused as epoch 0 of the curve where the arm starts at base."""
    from peft import LoraConfig
    from transformers import PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from ..eval.answer_loss import answer_nll
    from ..trainer_callback import DropLoRACallback

    lora_kwargs = dict(ARMS[arm])
    rank_dropout = lora_kwargs.pop("rank_dropout", None)
    mask_mode = lora_kwargs.pop("mask_mode", "element")
    milora = lora_kwargs.pop("milora", False)
    r = lora_kwargs.pop("r", cfg.r)
    lora_dropout = lora_kwargs.pop("lora_dropout", cfg.lora_dropout)
    galore = lora_kwargs.pop("galore", None)
    lora_kwargs.pop("vs", None)
    run_dir = result_file(out_dir, arm, seed).parent
    length = dict(num_train_epochs=cfg.epochs) if cfg.epochs else dict(max_steps=cfg.steps)
    callbacks = [DropLoRACallback(rank_dropout, mask_mode, milora=milora)] if rank_dropout or milora else []
    curve = None
    if cfg.epochs:
        prompts, answers = heldout_pairs(heldout, cfg.n_curve or cfg.n_loss)
        curve = HeldoutLossPerEpoch(
            lambda model: statistics.fmean(answer_nll(model, tokenizer, prompts, answers, cfg.eval_batch_size)),
            before=base_loss if starts_at_base(arm) else None,
        )
        callbacks.append(curve)
    model = copy.deepcopy(base)
    extra = {}
    if galore:
        extra = _galore_setup(model, {"rank": r, **galore})
    set_seed(seed)  # before the LoRA init too, which happens inside SFTTrainer's __init__
    trainer = SFTTrainer(
        model,
        args=SFTConfig(
            output_dir=str(run_dir / "trainer"),
            seed=seed,
            **length,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=max(1, cfg.total_steps // 10),
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            bf16=cfg.bf16,
            disable_tqdm=True,
            **extra,
        ),
        train_dataset=train_data,
        processing_class=tokenizer,
        peft_config=None
        if galore
        else LoraConfig(
            r=r,
            lora_alpha=r if is_svd_init(arm) else 2 * r,
            lora_dropout=lora_dropout,
            target_modules=TARGET_MODULES,
            **lora_kwargs,
        ),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the losses go to the report, not the terminal
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    if curve is not None:
        train_s -= curve.seconds  # the curve's scoring is not training
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    optimizer = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer))  # unwrap accelerate's
    optimizer = f"{optimizer.__module__}.{optimizer.__name__}"

    start = time.perf_counter()
    scored = evaluate(
        Generator.from_model(trainer.model, tokenizer, cfg.max_new_tokens),
        out_dir / "task" / "heldout",
        ["gsm8k"],
        run_dir / "eval",
        batch_size=cfg.eval_batch_size,
        math_prompt=PROMPT,
        limit=cfg.n_accuracy or None,
    )
    result = {
        "arm": arm,
        "seed": seed,
        "accuracy": scored["sets"]["gsm8k"]["accuracy"],
        "losses": losses,
        "train_s": train_s,
        "eval_s": time.perf_counter() - start,
        "machine": machine(),
    }
    # per question; the first n_curve / n_prune are also the curve's last epoch and the unchanged adapter's loss
    final_losses = []
    if cfg.n_loss:
        result["optimizer"] = optimizer
        start = time.perf_counter()
        final_losses = answer_nll(trainer.model, tokenizer, *heldout_pairs(heldout, cfg.n_loss), cfg.eval_batch_size)
        result["heldout_loss"] = statistics.fmean(final_losses)
        result["loss_s"] = time.perf_counter() - start
    if curve is not None:
        curve.values.append(statistics.fmean(final_losses[: cfg.n_curve or cfg.n_loss]))
        result["loss_curve"], result["curve_s"] = curve.values, curve.seconds
    if arm in cfg.mechanism_arms:
        unchanged = statistics.fmean(final_losses[: cfg.n_prune]) if cfg.n_prune <= len(final_losses) else None
        result["mechanism"] = _mechanism(
            trainer.model, tokenizer, heldout, cfg, seed, adapter_dir(out_dir, arm, seed), unchanged
        )
    del trainer, model
    gc.collect()
    done = result_file(out_dir, arm, seed)
    scratch = done.with_suffix(".partial")
    scratch.write_text(json.dumps(result, indent=1))
    scratch.replace(done)  # the run counts as done only once this exists
    return result


class HeldoutLossPerEpoch(TrainerCallback):
    """The held-out answer loss before training (epoch 0) and after each epoch but the last, in
    `values`: the caller appends the last from the final scoring, which covers these questions.
    `before`: epoch 0 when the caller has it already (the base model's loss)."""

    def __init__(self, score, before: float | None = None):
        self.score, self.values, self.seconds = score, [] if before is None else [before], 0.0

    def _record(self, model) -> None:
        start = time.perf_counter()
        self.values.append(self.score(model))
        self.seconds += time.perf_counter() - start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.values:
            self._record(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if state.global_step < state.max_steps:
            self._record(model)


def _mechanism(
    model, tokenizer, heldout, cfg: StudyConfig, seed: int, adapter_dir: Path, unchanged: float | None = None
) -> dict:
    """Spectra of ΔW and the channel-removal curve of a just-trained adapter; the adapter is kept
    (adapter_dir) for the similarity across seeds. unchanged: its loss on the n_prune questions, if known."""
    from ..analysis.mechanism import model_factors, pruning_curve, spectra, summarise_spectra

    start = time.perf_counter()
    layer_spectra = spectra(model_factors(model))
    pruning = pruning_curve(
        model,
        tokenizer,
        *heldout_pairs(heldout, cfg.n_prune),
        cfg.prune_fractions,
        cfg.prune_draws,
        seed,
        cfg.eval_batch_size,
        full=unchanged,
    )
    model.save_pretrained(adapter_dir)
    return {
        "spectra": summarise_spectra(layer_spectra),
        "effective_rank": {name: round(s["effective_rank"], 4) for name, s in layer_spectra.items()},
        "pruning": pruning,
        "seconds": time.perf_counter() - start,
    }


def cross_seed(out_dir: Path, arm: str, cfg: StudyConfig) -> None:
    """runs/<arm>/cross_seed.json: similarity of the ΔW subspaces of the arm's seeds, once all are done."""
    from ..analysis.mechanism import adapter_factors, cross_seed_similarity

    target = out_dir / "runs" / arm / "cross_seed.json"
    adapters = [adapter_dir(out_dir, arm, seed) for seed in cfg.seeds]
    if target.is_file() or len(adapters) < 2 or not all((a / "adapter_config.json").is_file() for a in adapters):
        return
    similarity = cross_seed_similarity([adapter_factors(a) for a in adapters])
    target.write_text(json.dumps({"seeds": list(cfg.seeds), "phi": similarity}, indent=1))


def require_galore() -> None:
    try:
        import galore_torch  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError(
            "the galore arm needs the galore-torch package, not installed: pip install galore-torch "
            "(or leave the arm out with --arms)"
        ) from None


def _galore_setup(model, galore: dict) -> dict:
    """Full fine-tuning of the target modules' weights (the rest frozen) with transformers' GaLore
    optimizer: the TrainingArguments it needs."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(f".{module}." in name for module in TARGET_MODULES))
    return {
        "optim": "galore_adamw",
        "optim_target_modules": [rf".*\.{m}$" for m in TARGET_MODULES],
        "optim_args": ",".join(f"{k}={v}" for k, v in galore.items()),
    }


def machine() -> str:
    """What a run ran on, recorded with its result so a report rewritten elsewhere stays true."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def run_study(
    base_model: str | Path, out_dir: str | Path, config: str | StudyConfig = "cpu", arms: list[str] | None = None
) -> str:
    """Train and score every (arm, seed) not done yet, then write report.md and the figures."""
    from tqdm.auto import tqdm

    cfg = CONFIGS[config] if isinstance(config, str) else config
    arms = list(arms or cfg.default_arms)
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    if cfg.n_loss:  # each comparison needs its reference arm
        missing = sorted({reference_arm(arm) for arm in arms} - set(arms))
        if missing:
            raise ValueError(
                f"arm(s) {', '.join(missing)} must be run too: the report compares "
                f"{', '.join(a for a in arms if reference_arm(a) in missing)} with them"
            )
    if any("galore" in ARMS[arm] for arm in arms):
        require_galore()
    out_dir = Path(out_dir)
    settings = study_settings(cfg, str(Path(base_model).resolve()))
    refuse_other_run(out_dir, settings, info_name="study.json", evidence="runs")
    make_demo(out_dir / "task", base_model, n_train=cfg.n_train, n_heldout=cfg.n_heldout)
    (out_dir / "study.json").write_text(json.dumps(settings, indent=1))
    if cfg.n_loss:  # what the report is made from is committed; models and scratch are not
        (out_dir / ".gitignore").write_text("task/\nadapters/\nruns/*/seed*/eval/\nruns/*/seed*/trainer/\n")

    todo = [(arm, seed) for arm in arms for seed in cfg.seeds if not result_file(out_dir, arm, seed).is_file()]
    if todo:
        base, tokenizer, train_data, heldout = load(base_model, out_dir / "task", cfg)
        base_loss = (
            loss_before_training(base, tokenizer, heldout, cfg)
            if cfg.epochs and any(starts_at_base(arm) for arm, _ in todo)
            else None
        )
        for arm, seed in tqdm(todo, desc="study runs", unit="run"):
            result = train_and_score(base, tokenizer, train_data, heldout, arm, seed, cfg, out_dir, base_loss)
            loss = f", held-out answer loss {result['heldout_loss']:.4f}" if "heldout_loss" in result else ""
            tqdm.write(
                f"{arm} seed {seed}: held-out accuracy {result['accuracy']:.1f}%{loss} "
                f"(train {result['train_s']:.0f} s)"
            )
    for arm in cfg.mechanism_arms:
        if arm in arms:
            cross_seed(out_dir, arm, cfg)
    return write_any_report(out_dir, arms, cfg, settings["base_model"])
