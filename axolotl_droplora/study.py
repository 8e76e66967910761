"""Replication study: LoRA vs DropLoRA (p, mask modes, r) vs DoRA / PiSSA / MiLoRA, several seeds.

    run_study(base_model, out_dir, "cpu")   -> out_dir/report.md and out_dir/study.png

Every arm fine-tunes the same base model on the demo's arithmetic task (demo.py) with TRL's
SFTTrainer and a PEFT LoraConfig, DropLoRA and MiLoRA through `DropLoRACallback` (the same
rank-dropout and init code the Axolotl plugin installs), then answers held-out questions
greedily (scored with the papers' GSM8K scorer) and, in the configs with `n_loss`, scores the
held-out answer loss (answer_loss.py) on more questions: one run is study_run.py. Each (arm,
seed) writes runs/<arm>/seed<k>/result.json when it finishes, so an interrupted study resumes
where it stopped. This module holds the arms, the configs, the loop and the first study's report.

Two kinds of config:
- `cpu` / `gpu` (the first study): accuracy only; the report (write_report below) gives mean ±
  std over seeds and each arm's paired difference from LoRA in standard errors.
- the regime configs (`under-*`, `over-*`): held-out answer loss as the primary metric, accuracy
  beside it, 95% intervals and minimum detectable differences (study_stats.py), per-epoch loss
  curves when `epochs` is set, and the mechanism analyses (mechanism.py) of `mechanism_arms`;
  report by study_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from pathlib import Path

from .demo import make_demo
from .evaluate import refuse_other_run
from .mechanism import DEFAULT_FRACTIONS
from .plots import bars_and_curves

LOG = logging.getLogger(__name__)

# Short prompt: on 2 CPU cores a training step costs about its token count, and the papers'
# 45-token preamble would double it. The answer format keeps "The answer is: N" for the scorer.
PROMPT = "Question: {instruction}\nAnswer:"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the DropLoRA paper's

# arm -> how it differs from plain LoRA at the config's r: LoraConfig keys, DropLoRACallback's
# (rank_dropout, mask_mode, milora), "r" and "lora_dropout" (override the config's), "galore"
# (full fine-tuning of the target modules with the GaLore optimizer, no adapter) and "vs": the
# arm it is paired with in the report (default LoRA), so each comparison changes one thing.
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
    # the regime configs' arms: SVD inits with and without rank dropout (the DropLoRA paper's
    # open question), PiSSA also without input dropout (which perturbs its principal components)
    "pissa-droplora-p0.3": {"init_lora_weights": "pissa_niter_4", "rank_dropout": 0.3, "vs": "pissa"},
    "pissa-ld0": {"init_lora_weights": "pissa_niter_4", "lora_dropout": 0.0},
    "pissa-ld0-droplora-p0.3": {"init_lora_weights": "pissa_niter_4", "lora_dropout": 0.0, "rank_dropout": 0.3,
                                "vs": "pissa-ld0"},
    "milora-droplora-p0.3": {"milora": True, "rank_dropout": 0.3, "vs": "milora"},
    # the r × p grid; r = 16 (the configs' r) is lora / droplora-p0.3 / droplora-p0.5
    **{f"lora-r{r}": {"r": r} for r in (4, 64)},
    **{f"droplora-p{p}-r{r}": {"r": r, "rank_dropout": p, "vs": f"lora-r{r}"} for r in (4, 64) for p in (0.3, 0.5)},
    # GaLore: full-rank updates of the target modules from gradients projected on a rank-r subspace
    # that is recomputed every update_proj_gap steps (a "dynamic subspace" without rank masks)
    "galore": {"galore": {"update_proj_gap": 6, "scale": 0.25, "proj_type": "std"}},
}
LEGACY_ARMS = ("lora", "droplora-p0.1", "droplora-p0.3", "droplora-p0.5", "droplora-p0.3-sequence",
               "droplora-p0.3-batch", "dora", "pissa", "milora")  # the first study's, in its report's order
UNDER_ARMS = ("lora", "droplora-p0.1", "droplora-p0.3", "droplora-p0.5", "pissa-ld0", "pissa-ld0-droplora-p0.3",
              "pissa", "pissa-droplora-p0.3", "milora", "milora-droplora-p0.3", "galore")
OVER_ARMS = ("lora", "droplora-p0.1", "droplora-p0.3", "droplora-p0.5", "lora-r4", "droplora-p0.3-r4",
             "droplora-p0.5-r4", "lora-r64", "droplora-p0.3-r64", "droplora-p0.5-r64")


def reference_arm(arm: str) -> str:
    """The arm `arm` is compared with: the same run without the one thing it adds."""
    return ARMS[arm].get("vs", "lora")


def is_svd_init(arm: str) -> bool:
    spec = ARMS[arm]
    return bool(spec.get("milora")) or str(spec.get("init_lora_weights", "")).startswith("pissa")


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
    # the regime configs' settings; each default is the first study's behaviour
    epochs: int = 0  # > 0: train this many epochs (steps unused), held-out loss after each
    lr_scheduler: str = "linear"  # transformers' lr_scheduler_type, after warmup (a tenth of the steps)
    n_accuracy: int = 0  # held-out questions answered greedily (0: all n_heldout)
    n_loss: int = 0  # held-out questions whose answer loss is scored (0: none, the first study)
    n_curve: int = 0  # the per-epoch curve's questions, the first of the n_loss (0: all n_loss)
    lora_dropout: float = 0.05  # the MiLoRA paper's for every method (its Table 8); arms may override
    arms: tuple[str, ...] = ()  # the arms run when none are named (empty: LEGACY_ARMS)
    mechanism_arms: tuple[str, ...] = ()  # arms whose adapters get the mechanism analyses
    n_prune: int = 200  # held-out questions of the channel-removal curve
    prune_draws: int = 3
    prune_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    left_out: str = ""  # the arms the issue names that this config does not run, and why (the report says it)

    def __post_init__(self):
        for key in ("arms", "mechanism_arms"):
            unknown = [arm for arm in getattr(self, key) if arm not in ARMS]
            if unknown:
                raise ValueError(f"StudyConfig {key}: unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
        unfit = [arm for arm in self.mechanism_arms if is_svd_init(arm) or "galore" in ARMS[arm] or "use_dora" in ARMS[arm]]
        if unfit:
            raise ValueError(f"StudyConfig mechanism_arms: {', '.join(unfit)} do not train ΔW = s·B·A from B0 = 0 "
                             f"(SVD init, DoRA or GaLore), so the spectra and channel removal would not be about "
                             f"what they learned; leave them out")
        if self.n_loss > self.n_heldout or self.n_accuracy > self.n_heldout:
            raise ValueError(f"StudyConfig: n_loss ({self.n_loss}) and n_accuracy ({self.n_accuracy}) must not "
                             f"exceed n_heldout ({self.n_heldout}); raise n_heldout")
        if self.epochs and not self.n_loss:
            raise ValueError("StudyConfig: epochs is set but n_loss is 0: the per-epoch curve needs n_loss > 0")
        if self.n_curve > self.n_loss:
            raise ValueError(f"StudyConfig: n_curve ({self.n_curve}) must not exceed n_loss ({self.n_loss}): the "
                             f"curve's last epoch is the final scoring's first n_curve questions")

    @property
    def default_arms(self) -> list[str]:
        return list(self.arms or LEGACY_ARMS)

    @property
    def total_steps(self) -> int:
        return -(-self.n_train // self.batch_size) * self.epochs if self.epochs else self.steps


_FIRST_STUDY_FIELDS = ("steps", "batch_size", "r", "learning_rate", "n_train", "n_heldout", "seeds", "bf16",
                       "max_new_tokens", "eval_batch_size")


def study_settings(cfg: StudyConfig, base_model: str) -> dict:
    """What study.json keeps: the base model and every setting, less the later fields still at
    their defaults, so a folder of the first study (reports/study-cpu) still resumes."""
    defaults = {f.name: f.default for f in dataclasses.fields(StudyConfig)}
    settings = {"base_model": base_model}
    for key, value in dataclasses.asdict(cfg).items():
        if key in _FIRST_STUDY_FIELDS or value != defaults[key]:
            settings[key] = list(value) if isinstance(value, tuple) else value
    return settings


def config_from_settings(settings: dict) -> StudyConfig:
    """The StudyConfig a study.json was written for."""
    tuples = {f.name for f in dataclasses.fields(StudyConfig) if "tuple" in str(f.type)}
    return StudyConfig(**{k: tuple(v) if k in tuples else v for k, v in settings.items() if k != "base_model"})


CONFIGS = {
    # 27 min 42 s on 2 CPU cores (measured; its report is reports/study-cpu/)
    "cpu": StudyConfig(steps=18, batch_size=8, r=16, learning_rate=1e-3, n_train=400,
                       n_heldout=100, seeds=(0, 1, 2), bf16=False),
    # sized by estimate for one H100/H200 in about 10 minutes; not yet run on a GPU
    "gpu": StudyConfig(steps=150, batch_size=32, r=32, learning_rate=5e-4, n_train=4000,
                       n_heldout=500, seeds=(0, 1, 2), bf16=True, eval_batch_size=250),
    # The regime configs below fit the 90 minutes in total on 2 CPU cores (SmolLM2-135M,
    # 2-core AMD EPYC, measured): a run costs 2.5-3 s per training step plus a fixed ~140 s of
    # scoring (the answer loss of 1000 questions, greedy answers to 300), and in the overfitting
    # regime another ~80 s for the per-epoch curve and ~50 s for the mechanism analyses (since those
    # runs, epoch 0, the last epoch and the unchanged adapter's loss reuse other scorings: ~30 s
    # less). That holds
    # 3 seeds of 7 arms: the two regimes' LoRA vs DropLoRA p = 0.3, p = 0.5 and the MiLoRA question
    # where they are cheapest (under-trained). The other arms (p = 0.1, the r × p grid, PiSSA ±
    # DropLoRA, GaLore) are in the GPU configs; any of them runs on CPU with --arms.
    # Under-trained regime: the first study's training (18 steps of batch 8 from 400 questions).
    "under-cpu": StudyConfig(steps=18, batch_size=8, r=16, learning_rate=1e-3, n_train=400, n_heldout=1000,
                             seeds=(0, 1, 2), bf16=False, n_accuracy=300, n_loss=1000,
                             arms=("lora", "droplora-p0.3", "droplora-p0.5", "milora", "milora-droplora-p0.3"),
                             left_out="p = 0.1, PiSSA ± DropLoRA (lora_dropout 0 and 0.05) and GaLore: the 90-minute "
                                      "CPU budget of the two regime reports held 21 runs (83 min measured). A GaLore "
                                      "run costs about what a LoRA run does here (177 s, 65 s of it training; seed 0, "
                                      "measured), so its 3 seeds (~9 min) would have passed the budget. under-gpu "
                                      "runs them all."),
    # Overfitting regime: 32 questions seen 8 times at a constant learning rate, held-out loss after
    # each epoch on 100 questions (the final one on 1000). Calibrated on LoRA alone (seed 0, 64
    # questions): 8 epochs with linear decay had their minimum after epoch 2 and rose by +0.05
    # nats by epoch 8; 4 epochs at a constant rate rose by only +0.004 after their minimum (epoch 2).
    # Halving the questions keeps the 32 steps of the latter and doubles how often each is seen.
    # The report checks the rise with an interval over the seeds.
    "over-cpu": StudyConfig(steps=0, batch_size=8, r=16, learning_rate=1e-3, n_train=32, n_heldout=1000,
                            seeds=(0, 1, 2), bf16=False, epochs=8, lr_scheduler="constant_with_warmup",
                            n_accuracy=300, n_loss=1000, n_curve=100,
                            arms=("lora", "droplora-p0.3"),
                            mechanism_arms=("lora", "droplora-p0.3"), n_prune=100, prune_draws=2,
                            prune_fractions=(0.25, 0.5),
                            left_out="p = 0.1 and 0.5 and the r × p grid (r = 4 and 64): the 90-minute CPU budget of "
                                     "the two regime reports held 21 runs (83 min measured), and a run here costs "
                                     "about 6 min; p = 0.5 ran in under-cpu, where a run costs 3. over-gpu runs "
                                     "them all."),
}
# the same regimes sized for one GPU by estimate, with every arm (bigger sets, more seeds); not yet run
CONFIGS["under-gpu"] = dataclasses.replace(CONFIGS["under-cpu"], steps=150, batch_size=32, n_train=4000,
                                           n_heldout=2000, n_accuracy=1000, n_loss=2000, bf16=True, seeds=(0, 1, 2, 3, 4),
                                           eval_batch_size=250, arms=UNDER_ARMS, mechanism_arms=("lora", "droplora-p0.3"),
                                           n_prune=500, prune_draws=3, prune_fractions=DEFAULT_FRACTIONS, left_out="")
# Overfitting: seeds, not questions (reports/study-over-cpu: a seed sd of 0.02-0.04 against a question
# standard error of 0.004 at 1000 questions; 13 seeds would detect half of LoRA's rise there)
CONFIGS["over-gpu"] = dataclasses.replace(CONFIGS["over-cpu"], n_train=128, batch_size=16, n_heldout=1000,
                                          n_accuracy=1000, n_loss=1000, n_curve=500, seeds=tuple(range(13)),
                                          bf16=True, eval_batch_size=250, arms=OVER_ARMS,
                                          mechanism_arms=("lora", "droplora-p0.3", "lora-r64", "droplora-p0.3-r64"),
                                          n_prune=500, prune_draws=3, prune_fractions=DEFAULT_FRACTIONS, left_out="")


def run_study(base_model: str | Path, out_dir: str | Path, config: str | StudyConfig = "cpu",
              arms: list[str] | None = None) -> str:
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
            raise ValueError(f"arm(s) {', '.join(missing)} must be run too: the report compares "
                             f"{', '.join(a for a in arms if reference_arm(a) in missing)} with them")
    from .study_run import cross_seed, load, loss_before_training, require_galore, starts_at_base, train_and_score

    if any("galore" in ARMS[arm] for arm in arms):
        require_galore()
    out_dir = Path(out_dir)
    settings = study_settings(cfg, str(Path(base_model).resolve()))
    refuse_other_run(out_dir, settings, info_name="study.json", evidence="runs")
    make_demo(out_dir / "task", base_model, n_train=cfg.n_train, n_heldout=cfg.n_heldout)
    (out_dir / "study.json").write_text(json.dumps(settings, indent=1))
    if cfg.n_loss:  # what the report is made from is committed; models and scratch are not
        (out_dir / ".gitignore").write_text("task/\nadapters/\nruns/*/seed*/eval/\nruns/*/seed*/trainer/\n")

    todo = [(arm, seed) for arm in arms for seed in cfg.seeds if not _result_file(out_dir, arm, seed).is_file()]
    if todo:
        base, tokenizer, train_data, heldout = load(base_model, out_dir / "task", cfg)
        base_loss = (loss_before_training(base, tokenizer, heldout, cfg)
                     if cfg.epochs and any(starts_at_base(arm) for arm, _ in todo) else None)
        for arm, seed in tqdm(todo, desc="study runs", unit="run"):
            result = train_and_score(base, tokenizer, train_data, heldout, arm, seed, cfg, out_dir, base_loss)
            loss = f", held-out answer loss {result['heldout_loss']:.4f}" if "heldout_loss" in result else ""
            tqdm.write(f"{arm} seed {seed}: held-out accuracy {result['accuracy']:.1f}%{loss} "
                       f"(train {result['train_s']:.0f} s)")
    for arm in cfg.mechanism_arms:
        if arm in arms:
            cross_seed(out_dir, arm, cfg)
    return write_any_report(out_dir, arms, cfg, settings["base_model"])


def write_any_report(out_dir: Path, arms: list[str], cfg: StudyConfig, base_model: str) -> str:
    """The first study's report for its configs, the regime report for the others."""
    if cfg.n_loss:
        from .study_report import write_regime_report

        return write_regime_report(out_dir, arms, cfg, base_model)
    return write_report(out_dir, arms, cfg, base_model)


def regenerate_report(out_dir: str | Path, arms: list[str] | None = None) -> str:
    """report.md and figures again from the committed study.json and runs/ (no model, no training)."""
    out_dir = Path(out_dir)
    if not (out_dir / "study.json").is_file():
        raise ValueError(f"{out_dir / 'study.json'} is missing: not a study folder")
    settings = json.loads((out_dir / "study.json").read_text())
    cfg = config_from_settings(settings)
    arms = list(arms or cfg.default_arms)
    missing = [f"{arm}/seed{s}" for arm in arms for s in cfg.seeds if not _result_file(out_dir, arm, s).is_file()]
    if missing:
        raise ValueError(f"{out_dir}/runs lacks {', '.join(missing)}: run the study to finish them, "
                         f"or name the finished arms with --arms")
    return write_any_report(out_dir, arms, cfg, settings["base_model"])


def _result_file(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / "runs" / arm / f"seed{seed}" / "result.json"


def _adapter_dir(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / "adapters" / arm / f"seed{seed}"


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

