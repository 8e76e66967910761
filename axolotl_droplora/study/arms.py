"""The studies' arms and configs: LoRA vs DropLoRA (p, mask modes, r) vs DoRA / PiSSA / MiLoRA.

    run_study(base_model, out_dir, "cpu")   (run.py) -> out_dir/report.md and out_dir/study.png

Every arm fine-tunes the same base model on the demo's arithmetic task (demo/task.py) with TRL's
SFTTrainer and a PEFT LoraConfig, DropLoRA and MiLoRA through `DropLoRACallback` (the same
rank-dropout and init code the Axolotl plugin installs), then answers held-out questions
greedily (scored with the papers' GSM8K scorer) and, in the configs with `n_loss`, scores the
held-out answer loss (eval/answer_loss.py) on more questions: one run is run.py's
`train_and_score`. Each (arm, seed) writes runs/<arm>/seed<k>/result.json when it finishes, so an
interrupted study resumes where it stopped.

Two kinds of config:
- `cpu` / `gpu` (the first study): accuracy only; its report (report.py's `write_report`) gives
  mean ± std over seeds and each arm's paired difference from LoRA in standard errors.
- the regime configs (`under-*`, `over-*`): held-out answer loss as the primary metric, accuracy
  beside it, 95% intervals and minimum detectable differences (stats.py), per-epoch loss curves
  when `epochs` is set, and the mechanism analyses (analysis/mechanism.py) of `mechanism_arms`;
  report by report.py's `write_regime_report`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..analysis.mechanism import DEFAULT_FRACTIONS
from ..method.lora_layers import is_svd_init as is_svd_init_value

LOG = logging.getLogger(__name__)

# Short prompt: on 2 CPU cores a training step costs about its token count, and the papers'
# 45-token preamble would double it. The answer format keeps "The answer is: N" for the scorer.
PROMPT = "Question: {instruction}\nAnswer:"

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
    "pissa-ld0-droplora-p0.3": {
        "init_lora_weights": "pissa_niter_4",
        "lora_dropout": 0.0,
        "rank_dropout": 0.3,
        "vs": "pissa-ld0",
    },
    "milora-droplora-p0.3": {"milora": True, "rank_dropout": 0.3, "vs": "milora"},
    # the r × p grid; r = 16 (the configs' r) is lora / droplora-p0.3 / droplora-p0.5
    **{f"lora-r{r}": {"r": r} for r in (4, 64)},
    **{f"droplora-p{p}-r{r}": {"r": r, "rank_dropout": p, "vs": f"lora-r{r}"} for r in (4, 64) for p in (0.3, 0.5)},
    # GaLore: full-rank updates of the target modules from gradients projected on a rank-r subspace
    # that is recomputed every update_proj_gap steps (a "dynamic subspace" without rank masks)
    "galore": {"galore": {"update_proj_gap": 6, "scale": 0.25, "proj_type": "std"}},
}
LEGACY_ARMS = (
    "lora",
    "droplora-p0.1",
    "droplora-p0.3",
    "droplora-p0.5",
    "droplora-p0.3-sequence",
    "droplora-p0.3-batch",
    "dora",
    "pissa",
    "milora",
)  # the first study's, in its report's order
UNDER_ARMS = (
    "lora",
    "droplora-p0.1",
    "droplora-p0.3",
    "droplora-p0.5",
    "pissa-ld0",
    "pissa-ld0-droplora-p0.3",
    "pissa",
    "pissa-droplora-p0.3",
    "milora",
    "milora-droplora-p0.3",
    "galore",
)
OVER_ARMS = (
    "lora",
    "droplora-p0.1",
    "droplora-p0.3",
    "droplora-p0.5",
    "lora-r4",
    "droplora-p0.3-r4",
    "droplora-p0.5-r4",
    "lora-r64",
    "droplora-p0.3-r64",
    "droplora-p0.5-r64",
)


def reference_arm(arm: str) -> str:
    """The arm `arm` is compared with: the same run without the one thing it adds."""
    return ARMS[arm].get("vs", "lora")


def is_svd_init(arm: str) -> bool:
    spec = ARMS[arm]
    return bool(spec.get("milora")) or is_svd_init_value(spec.get("init_lora_weights"))


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
        unfit = [
            arm for arm in self.mechanism_arms if is_svd_init(arm) or "galore" in ARMS[arm] or "use_dora" in ARMS[arm]
        ]
        if unfit:
            raise ValueError(
                f"StudyConfig mechanism_arms: {', '.join(unfit)} do not train ΔW = s·B·A from B0 = 0 "
                f"(SVD init, DoRA or GaLore), so the spectra and channel removal would not be about "
                f"what they learned; leave them out"
            )
        if self.n_loss > self.n_heldout or self.n_accuracy > self.n_heldout:
            raise ValueError(
                f"StudyConfig: n_loss ({self.n_loss}) and n_accuracy ({self.n_accuracy}) must not "
                f"exceed n_heldout ({self.n_heldout}); raise n_heldout"
            )
        if self.epochs and not self.n_loss:
            raise ValueError("StudyConfig: epochs is set but n_loss is 0: the per-epoch curve needs n_loss > 0")
        if self.n_curve > self.n_loss:
            raise ValueError(
                f"StudyConfig: n_curve ({self.n_curve}) must not exceed n_loss ({self.n_loss}): the "
                f"curve's last epoch is the final scoring's first n_curve questions"
            )

    @property
    def default_arms(self) -> list[str]:
        return list(self.arms or LEGACY_ARMS)

    @property
    def total_steps(self) -> int:
        return -(-self.n_train // self.batch_size) * self.epochs if self.epochs else self.steps


_FIRST_STUDY_FIELDS = (
    "steps",
    "batch_size",
    "r",
    "learning_rate",
    "n_train",
    "n_heldout",
    "seeds",
    "bf16",
    "max_new_tokens",
    "eval_batch_size",
)


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
    "cpu": StudyConfig(
        steps=18, batch_size=8, r=16, learning_rate=1e-3, n_train=400, n_heldout=100, seeds=(0, 1, 2), bf16=False
    ),
    # sized by estimate for one H100/H200 in about 10 minutes; not yet run on a GPU
    "gpu": StudyConfig(
        steps=150,
        batch_size=32,
        r=32,
        learning_rate=5e-4,
        n_train=4000,
        n_heldout=500,
        seeds=(0, 1, 2),
        bf16=True,
        eval_batch_size=250,
    ),
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
    "under-cpu": StudyConfig(
        steps=18,
        batch_size=8,
        r=16,
        learning_rate=1e-3,
        n_train=400,
        n_heldout=1000,
        seeds=(0, 1, 2),
        bf16=False,
        n_accuracy=300,
        n_loss=1000,
        arms=("lora", "droplora-p0.3", "droplora-p0.5", "milora", "milora-droplora-p0.3"),
        left_out="p = 0.1, PiSSA ± DropLoRA (lora_dropout 0 and 0.05) and GaLore: the 90-minute "
        "CPU budget of the two regime reports held 21 runs (83 min measured). A GaLore "
        "run costs about what a LoRA run does here (177 s, 65 s of it training; seed 0, "
        "measured), so its 3 seeds (~9 min) would have passed the budget. under-gpu "
        "runs them all.",
    ),
    # Overfitting regime: 32 questions seen 8 times at a constant learning rate, held-out loss after
    # each epoch on 100 questions (the final one on 1000). Calibrated on LoRA alone (seed 0, 64
    # questions): 8 epochs with linear decay had their minimum after epoch 2 and rose by +0.05
    # nats by epoch 8; 4 epochs at a constant rate rose by only +0.004 after their minimum (epoch 2).
    # Halving the questions keeps the 32 steps of the latter and doubles how often each is seen.
    # The report checks the rise with an interval over the seeds.
    "over-cpu": StudyConfig(
        steps=0,
        batch_size=8,
        r=16,
        learning_rate=1e-3,
        n_train=32,
        n_heldout=1000,
        seeds=(0, 1, 2),
        bf16=False,
        epochs=8,
        lr_scheduler="constant_with_warmup",
        n_accuracy=300,
        n_loss=1000,
        n_curve=100,
        arms=("lora", "droplora-p0.3"),
        mechanism_arms=("lora", "droplora-p0.3"),
        n_prune=100,
        prune_draws=2,
        prune_fractions=(0.25, 0.5),
        left_out="p = 0.1 and 0.5 and the r × p grid (r = 4 and 64): the 90-minute CPU budget of "
        "the two regime reports held 21 runs (83 min measured), and a run here costs "
        "about 6 min; p = 0.5 ran in under-cpu, where a run costs 3. over-gpu runs "
        "them all.",
    ),
}
# the same regimes sized for one GPU by estimate, with every arm (bigger sets, more seeds); not yet run
CONFIGS["under-gpu"] = dataclasses.replace(
    CONFIGS["under-cpu"],
    steps=150,
    batch_size=32,
    n_train=4000,
    n_heldout=2000,
    n_accuracy=1000,
    n_loss=2000,
    bf16=True,
    seeds=(0, 1, 2, 3, 4),
    eval_batch_size=250,
    arms=UNDER_ARMS,
    mechanism_arms=("lora", "droplora-p0.3"),
    n_prune=500,
    prune_draws=3,
    prune_fractions=DEFAULT_FRACTIONS,
    left_out="",
)
# Overfitting: seeds, not questions (reports/study-over-cpu: a seed sd of 0.02-0.04 against a question
# standard error of 0.004 at 1000 questions; 13 seeds would detect half of LoRA's rise there)
CONFIGS["over-gpu"] = dataclasses.replace(
    CONFIGS["over-cpu"],
    n_train=128,
    batch_size=16,
    n_heldout=1000,
    n_accuracy=1000,
    n_loss=1000,
    n_curve=500,
    seeds=tuple(range(13)),
    bf16=True,
    eval_batch_size=250,
    arms=OVER_ARMS,
    mechanism_arms=("lora", "droplora-p0.3", "lora-r64", "droplora-p0.3-r64"),
    n_prune=500,
    prune_draws=3,
    prune_fractions=DEFAULT_FRACTIONS,
    left_out="",
)


def result_file(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / "runs" / arm / f"seed{seed}" / "result.json"


def adapter_dir(out_dir: Path, arm: str, seed: int) -> Path:
    return out_dir / "adapters" / arm / f"seed{seed}"
