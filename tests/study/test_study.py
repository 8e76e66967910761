"""The replication study (axolotl_droplora/study/): report arithmetic, resuming, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from PIL import Image

from axolotl_droplora.study.arms import (
    CONFIGS,
    OVER_ARMS,
    UNDER_ARMS,
    StudyConfig,
    config_from_settings,
    study_settings,
)
from axolotl_droplora.study.report import regenerate_report, write_report
from axolotl_droplora.study.run import run_study
from axolotl_droplora.study.stats import (
    beyond_noise,
    describe,
    difference_from,
    nested_subset_sd,
    paired_difference,
    seeds_needed,
    verdict,
)


def test_difference_is_paired_by_seed_with_the_standard_error_of_the_mean_difference():
    delta, se = difference_from([40.0, 42.0, 44.0], [41.0, 44.0, 47.0])  # differences 1, 2, 3
    assert delta == pytest.approx(2.0)
    assert se == pytest.approx(1.0 / 3**0.5)  # stdev of the differences is 1, n = 3
    with pytest.raises(ValueError):
        difference_from([40.0, 42.0], [41.0, 44.0, 47.0])  # seeds must pair up


@pytest.mark.parametrize(
    ("other", "expected", "beyond"),
    [
        ([41.0, 44.0, 47.0], "beat LoRA by 2.0 points (3.5 standard errors: beyond seed noise)", True),
        ([43.0, 44.0, 44.0], "beat LoRA by 1.7 points (1.9 standard errors: within seed noise)", False),
        ([50.0, 52.0, 54.0], "beat LoRA by 10.0 points (the same difference on every seed: beyond seed noise)", True),
        ([30.0, 31.0, 32.0], "fell behind LoRA by 11.0 points (19.1 standard errors: beyond seed noise)", False),
        ([44.0, 42.0, 40.0], "tied with LoRA (0.0 standard errors: within seed noise)", False),
    ],
)
def test_verdict_says_direction_size_and_whether_it_is_beyond_seed_noise(other, expected, beyond):
    assert verdict("droplora-p0.3", [40.0, 42.0, 44.0], other) == f"droplora-p0.3 {expected}"
    assert beyond_noise([40.0, 42.0, 44.0], other) is beyond


def test_one_seed_gives_no_noise_estimate_and_no_claim():
    assert verdict("x", [40.0], [45.0]) == "x beat LoRA by 5.0 points (one seed: no noise estimate)"
    assert not beyond_noise([40.0], [45.0])


def test_report_table_verdicts_and_plot_come_from_the_runs_results(tmp_path):
    config = StudyConfig(
        steps=3, batch_size=2, r=4, learning_rate=1e-3, n_train=8, n_heldout=4, seeds=(0, 1, 2), bf16=False
    )
    accuracies = {"lora": [40, 42, 44], "droplora-p0.3": [42, 45, 48], "dora": [41, 42, 46]}
    for arm, values in accuracies.items():
        for seed, accuracy in zip(config.seeds, values):
            run = tmp_path / "runs" / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "result.json").write_text(
                json.dumps(
                    {
                        "accuracy": accuracy,
                        "losses": [2.0, 1.0, 0.5],
                        "train_s": 10.0,
                        "eval_s": 2.0,
                        "machine": "Some CPU, 2 threads",
                    }
                )
            )
    report = write_report(tmp_path, list(accuracies), config, "/models/SmolLM2")
    assert report == (tmp_path / "report.md").read_text()
    assert "| lora | 42.0 ± 2.0 | 40, 42, 44 | 1.167 | 10 |" in report
    assert "| droplora-p0.3 | 45.0 ± 3.0 | 42, 45, 48 |" in report
    assert "- droplora-p0.3 beat LoRA by 3.0 points (5.2 standard errors: beyond seed noise)." in report
    assert "- dora beat LoRA by 1.0 points (1.7 standard errors: within seed noise)." in report
    assert "**In short:** DropLoRA (droplora-p0.3) beat LoRA beyond seed noise" in report
    assert "Machine: Some CPU, 2 threads; 1.8 min of training and scoring" in report
    with Image.open(tmp_path / "study.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600


def test_report_says_so_when_no_droplora_arm_beats_lora(tmp_path):
    config = StudyConfig(
        steps=1, batch_size=2, r=4, learning_rate=1e-3, n_train=8, n_heldout=4, seeds=(0, 1), bf16=False
    )
    for arm, values in {"lora": [40, 44], "droplora-p0.5": [38, 45]}.items():
        for seed, accuracy in zip(config.seeds, values):
            (tmp_path / "runs" / arm / f"seed{seed}").mkdir(parents=True)
            (tmp_path / "runs" / arm / f"seed{seed}" / "result.json").write_text(
                json.dumps({"accuracy": accuracy, "losses": [1.0], "train_s": 1.0, "eval_s": 1.0, "machine": "m"})
            )
    report = write_report(tmp_path, ["lora", "droplora-p0.5"], config, "m")
    assert "**In short:** no DropLoRA arm beat LoRA beyond seed noise" in report
    assert "- droplora-p0.5 fell behind LoRA by 0.5 points (0.3 standard errors: within seed noise)." in report


def test_study_command_trains_every_arm_and_seed_then_resumes_without_retraining(tmp_path, demo_dir):
    command = [
        "axolotl",
        "droplora",
        "study",
        "--base-model",
        str(demo_dir / "model"),
        "--steps",
        "3",
        "--seeds",
        "2",
        "--arms",
        "lora,droplora-p0.3,pissa",
        "--out",
        str(tmp_path / "study"),
    ]
    ran = run_cli(command, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = tmp_path / "study"
    results = {path: json.loads(path.read_text()) for path in sorted(out.glob("runs/*/seed*/result.json"))}
    assert [(r["arm"], r["seed"]) for r in results.values()] == [
        ("droplora-p0.3", 0),
        ("droplora-p0.3", 1),
        ("lora", 0),
        ("lora", 1),
        ("pissa", 0),
        ("pissa", 1),
    ]
    assert all(len(r["losses"]) == 3 and 0 <= r["accuracy"] <= 100 for r in results.values())
    eval_dir = out / "runs" / "lora" / "seed0" / "eval"
    predictions = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 100  # the cpu config's held-out set, each answered
    report = (out / "report.md").read_text()
    assert ran.stdout.strip().endswith(report.strip().splitlines()[-1])
    for arm in ("lora", "droplora-p0.3", "pissa"):
        assert f"| {arm} | " in report
    assert "3 steps of batch 8" in report and "seeds [0, 1]" in report and "Did DropLoRA beat LoRA?" in report
    with Image.open(out / "study.png") as image:
        assert image.format == "PNG"

    finished = {path: path.stat().st_mtime_ns for path in results}
    again = run_cli(command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in results} == finished  # nothing retrained
    assert (out / "report.md").read_text() == report

    other = run_cli(command[:5] + ["--steps", "4"] + command[7:], cwd=tmp_path)
    assert other.returncode != 0
    assert "holds results of another run (steps differ)" in other.stderr


def test_study_command_names_unknown_arms_and_the_known_ones(tmp_path, demo_dir):
    ran = run_cli(
        [
            "axolotl",
            "droplora",
            "study",
            "--base-model",
            str(demo_dir / "model"),
            "--arms",
            "lora,droplora-p0.9",
            "--out",
            str(tmp_path / "s"),
        ],
        cwd=tmp_path,
    )
    assert ran.returncode != 0
    assert "unknown arm(s) droplora-p0.9; known: lora, droplora-p0.1" in ran.stderr
    assert not (tmp_path / "s").exists()


def test_committed_cpu_report_is_what_its_committed_runs_give(tmp_path):
    """docs/studies.md quotes reports/study-cpu/report.md: it must follow from the runs committed with it."""
    committed = Path(__file__).parents[2] / "reports" / "study-cpu"
    shutil.copytree(committed / "runs", tmp_path / "runs")
    shutil.copy(committed / "study.json", tmp_path / "study.json")
    settings = json.loads((committed / "study.json").read_text())
    config = StudyConfig(
        **{**{k: v for k, v in settings.items() if k != "base_model"}, "seeds": tuple(settings["seeds"])}
    )
    assert config == CONFIGS["cpu"]  # the report is the cpu config's, as docs/studies.md says
    report = regenerate_report(tmp_path)  # what `study --report-only --out reports/study-cpu` runs
    assert report == (committed / "report.md").read_text()
    assert "Machine: AMD EPYC, 2 threads; 27.0 min" in report


@pytest.mark.parametrize("config", ["under-cpu", "over-cpu"])
def test_committed_regime_reports_are_what_their_committed_runs_give(tmp_path, config):
    """docs/studies.md quotes reports/study-<config>/report.md: `study --report-only` must rewrite it, word
    for word, from the committed study.json and per-run results alone (no model, no adapters)."""
    committed = Path(__file__).parents[2] / "reports" / f"study-{config}"
    assert config_from_settings(json.loads((committed / "study.json").read_text())) == CONFIGS[config]
    shutil.copy(committed / "study.json", tmp_path / "study.json")
    for result in committed.glob("runs/**/*.json"):
        target = tmp_path / result.relative_to(committed)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result, target)
    ran = run_cli(
        [sys.executable, "-m", "axolotl_droplora", "study", "--report-only", "--out", str(tmp_path)], cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "report.md").read_text() == (committed / "report.md").read_text()
    for figure in ("curves.png", "spectra.png", "pruning.png") if config == "over-cpu" else ():
        with Image.open(tmp_path / figure) as image:
            assert image.format == "PNG"


# ---- the regime study: paired statistics, configs, the regime report, a tiny end-to-end run ----

# Student t quantiles from a printed table (two-sided 95%: 0.975; one-sided 80%: 0.80)
T_975 = {2: 4.303, 4: 2.776}
T_80 = {2: 1.061, 4: 0.941}


def test_paired_interval_and_minimum_detectable_difference_by_hand():
    d = paired_difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])  # differences 1, 2, 3: mean 2, sd 1
    se = 1 / 3**0.5
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(2.0), pytest.approx(1.0))
    assert d.low == pytest.approx(2 - T_975[2] * se, rel=1e-3) and d.high == pytest.approx(2 + T_975[2] * se, rel=1e-3)
    assert d.mdd == pytest.approx((T_975[2] + T_80[2]) * se, rel=1e-3)  # 3.097
    assert not d.excludes_zero  # [-0.48, 4.48]

    d = paired_difference([1.0] * 5, [1.1, 1.3, 1.2, 1.4, 1.0])  # mean 0.2, sd √0.025
    se = 0.025**0.5 / 5**0.5
    assert d.mean == pytest.approx(0.2) and d.sd == pytest.approx(0.025**0.5)
    assert (d.low, d.high) == (
        pytest.approx(0.2 - T_975[4] * se, abs=1e-3),
        pytest.approx(0.2 + T_975[4] * se, abs=1e-3),
    )
    assert d.low > 0 and d.excludes_zero  # [0.004, 0.396]
    assert d.mdd == pytest.approx((T_975[4] + T_80[4]) * se, rel=1e-3)  # 0.263
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])  # seeds must pair up


def test_seeds_needed_and_question_noise_by_hand():
    # (t.975 + t.80 at 4 dof) · 1 / √5 = (2.776 + 0.941) / 2.236 = 1.662; at 3 dof / √4: 2.080
    assert seeds_needed(1.0, 1.7) == 5 and seeds_needed(1.0, 1.6) == 6 and seeds_needed(1.0, 2.1) == 4
    assert seeds_needed(1.0, 1e-6) is None
    # Var(subset mean − full mean) = σ²(1/4 − 1/16) = σ² · 0.1875; mean square 0.0075 → σ = 0.2
    assert nested_subset_sd([1.1, 0.9, 1.05], [1.0, 1.0, 1.0], 4, 16) == pytest.approx(
        ((0.01 + 0.01 + 0.0025) / 3 / 0.1875) ** 0.5
    )
    with pytest.raises(ValueError, match="need 0 < n_subset < n_full"):
        nested_subset_sd([1.0], [1.0], 16, 16)


def test_describe_says_direction_interval_and_detectable_size():
    better = paired_difference([1.0] * 5, [0.9, 0.7, 0.8, 0.6, 1.0])  # loss fell by 0.2
    assert describe("droplora-p0.3", "lora", better, "nats/token", lower_is_better=True) == (
        "droplora-p0.3 − lora: -0.200 nats/token, 95% CI [-0.396, -0.004]: better than lora (the interval "
        "excludes 0); smallest difference these 5 seeds detect (80% power): 0.263 nats/token"
    )
    unclear = paired_difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert "no difference from pissa shown (the interval includes 0)" in describe(
        "x", "pissa", unclear, "points", False
    )
    assert (
        describe("x", "lora", paired_difference([1.0], [1.5]), "points", False)
        == "x − lora: +0.500 points (one seed: no interval)"
    )


def test_regime_configs_meet_the_issue_and_refuse_bad_settings():
    for name in ("under-cpu", "over-cpu", "under-gpu", "over-gpu"):
        cfg = CONFIGS[name]
        assert cfg.n_loss >= 1000 and cfg.n_accuracy >= 300, name
        assert config_from_settings(study_settings(cfg, "/m")) == cfg  # study.json round-trips
    assert CONFIGS["over-cpu"].epochs > 1 and CONFIGS["over-cpu"].n_train < CONFIGS["under-cpu"].n_train
    assert {"pissa-ld0-droplora-p0.3", "milora-droplora-p0.3", "pissa-droplora-p0.3"} <= set(UNDER_ARMS)
    assert {f"droplora-p0.5-r{r}" for r in (4, 64)} <= set(OVER_ARMS)
    # a folder of the first study keeps its study.json: new fields at their defaults are left out
    committed = json.loads((Path(__file__).parents[2] / "reports" / "study-cpu" / "study.json").read_text())
    assert study_settings(CONFIGS["cpu"], committed["base_model"]) == committed
    with pytest.raises(ValueError, match="mechanism_arms: unknown arm"):
        StudyConfig(1, 2, 4, 1e-3, 8, 8, (0,), False, n_loss=4, mechanism_arms=("lora-r5",))
    with pytest.raises(ValueError, match="mechanism_arms: pissa, galore do not train ΔW = s·B·A from B0 = 0"):
        StudyConfig(1, 2, 4, 1e-3, 8, 8, (0,), False, n_loss=4, mechanism_arms=("lora", "pissa", "galore"))
    with pytest.raises(ValueError, match=r"must not exceed n_heldout \(8\)"):
        StudyConfig(1, 2, 4, 1e-3, 8, 8, (0,), False, n_loss=1000)
    with pytest.raises(ValueError, match="the per-epoch curve needs n_loss > 0"):
        StudyConfig(1, 2, 4, 1e-3, 8, 8, (0,), False, epochs=3)
    with pytest.raises(ValueError, match=r"n_curve \(8\) must not exceed n_loss \(4\)"):
        StudyConfig(1, 2, 4, 1e-3, 8, 8, (0,), False, epochs=3, n_loss=4, n_curve=8)


def _fake_run(curve, accuracy, pruning=None, rank=None):
    result = {
        "accuracy": accuracy,
        "losses": [1.0],
        "heldout_loss": curve[-1],
        "loss_curve": curve,
        "train_s": 60.0,
        "eval_s": 10.0,
        "loss_s": 5.0,
        "curve_s": 5.0,
        "machine": "Some CPU, 2 threads",
    }
    if pruning is not None:
        result["mechanism"] = {
            "spectra": {
                "effective_rank_mean": rank,
                "effective_rank_min": rank,
                "effective_rank_max": rank,
                "r": 16,
                "normalised_spectrum": [1.0, 0.5, 0.25, 0.1],
            },
            "effective_rank": {},
            "seconds": 10.0,
            "pruning": {
                "full": curve[-1],
                "curve": [
                    {"fraction": 0.25, "losses": [curve[-1] + pruning / 2] * 2},
                    {"fraction": 0.5, "losses": [curve[-1] + pruning] * 2},
                ],
            },
        }
    return result


def _write_fake_over_study(root: Path) -> StudyConfig:
    config = StudyConfig(
        steps=0,
        batch_size=4,
        r=16,
        learning_rate=1e-3,
        n_train=8,
        n_heldout=20,
        seeds=(0, 1, 2),
        bf16=False,
        epochs=2,
        n_accuracy=10,
        n_loss=20,
        arms=("lora", "droplora-p0.3", "lora-r4", "droplora-p0.3-r4"),
        mechanism_arms=("lora", "droplora-p0.3"),
        prune_fractions=(0.25, 0.5),
    )
    # LoRA overfits: lowest after epoch 1, up again after epoch 2 (rises 0.2, 0.25, 0.15); DropLoRA barely rises
    runs = {
        "lora": [([2.0, 1.0, 1.2], 40, 0.4, 3.0), ([2.0, 1.1, 1.35], 42, 0.5, 3.1), ([2.0, 0.9, 1.05], 44, 0.3, 2.9)],
        "droplora-p0.3": [
            ([2.0, 1.0, 1.05], 41, 0.1, 3.5),
            ([2.0, 1.1, 1.1], 43, 0.2, 3.6),
            ([2.0, 0.9, 0.9], 44, 0.1, 3.4),
        ],
        "lora-r4": [
            ([2.0, 1.2, 1.3], 38, None, None),
            ([2.0, 1.2, 1.3], 39, None, None),
            ([2.0, 1.2, 1.4], 40, None, None),
        ],
        "droplora-p0.3-r4": [
            ([2.0, 1.3, 1.3], 38, None, None),
            ([2.0, 1.3, 1.4], 38, None, None),
            ([2.0, 1.3, 1.5], 41, None, None),
        ],
    }
    for arm, seeds in runs.items():
        for seed, (curve, accuracy, pruning, rank) in zip(config.seeds, seeds):
            (root / "runs" / arm / f"seed{seed}").mkdir(parents=True)
            (root / "runs" / arm / f"seed{seed}" / "result.json").write_text(
                json.dumps(_fake_run(curve, accuracy, pruning, rank))
            )
    (root / "runs" / "lora" / "cross_seed.json").write_text(
        json.dumps({"seeds": [0, 1, 2], "phi": {"k=1": 0.5, "k=8": 0.25, "k=16": 0.2}})
    )
    (root / "study.json").write_text(json.dumps(study_settings(config, "/models/SmolLM2")))
    return config


def test_regime_report_states_intervals_overfitting_grid_mechanism_and_every_claim(tmp_path):
    _write_fake_over_study(tmp_path)
    report = regenerate_report(tmp_path)
    assert report == (tmp_path / "report.md").read_text()
    assert "# Replication study, overfitting regime" in report
    assert "2 epochs over 8 training questions (4 steps of batch 4)" in report
    assert "| lora | — | 1.2000 ± 0.1500 | 42.0 ± 2.0 | 1.2000, 1.3500, 1.0500 | 60 |" in report
    # droplora − lora per seed: −0.15, −0.25, −0.15: mean −0.1833, sd 0.0577, half-width 4.303 · 0.0577/√3 = 0.1434
    assert "droplora-p0.3 − lora: -0.1833 nats/token, 95% CI [-0.3268, -0.0399]: better than lora" in report
    assert "| droplora-p0.3-r4 | lora-r4 |" in report and "droplora-p0.3-r4 − lora-r4: +0.0667 nats/token" in report
    # LoRA's mean curve is lowest after epoch 1; last − epoch 1 per seed: 0.2, 0.25, 0.15 (sd 0.05)
    assert "**Overfitting check: shown.** LoRA's mean held-out loss is lowest after epoch 1" in report
    assert "changes by +0.2000 nats/token [+0.0758, +0.3242]" in report
    assert "| 4 | 1.3333 | 1.4000 (+0.0667 [" in report and "| 16 | 1.2000 | 1.0167 (-0.1833 [" in report
    assert "| lora | 16 | 3.00 | 0.500 / 0.250 / 0.200 | +0.2000 | +0.4000 |" in report
    assert "| droplora-p0.3 | 16 | 3.50 | not run | +0.0667 | +0.1333 |" in report
    assert (
        "- effective rank, droplora-p0.3 − lora: +0.50 [+0.50, +0.50], smallest detectable 0.00 "
        "(paired by seed; r = 16)." in report
    )  # 3.5 − 3.0, 3.6 − 3.1, 3.4 − 2.9
    assert "Removing rank channels *lowered*" not in report and "Untestable here as posed" not in report
    for claim in (
        "DropLoRA beats LoRA (Tables 1–4):** droplora-p0.3 − lora",
        "**p = 0.3 is best:** not run in this report",
        "**r trend",
        "r = 4: droplora-p0.3-r4 − lora-r4",
        "**A loss at p ≥ 0.5 on math:** not run in this report",
        "**No inference cost:**",
        "**Rank dropout on SVD inits (PiSSA, MiLoRA; the paper's open question):** not run in this report",
        "**Regularisation: DropLoRA overfits less (smaller rise of the held-out loss):** droplora-p0.3 − lora rise",
        "**Implicit ensemble (degrades less when rank channels are removed):** droplora-p0.3 − lora",
        "**GaLore",
        "**What this cannot say.**",
    ):
        assert claim in report, claim
    for figure in ("curves.png", "grid.png", "spectra.png", "pruning.png"):
        assert f"]({figure})" in report
        with Image.open(tmp_path / figure) as image:
            assert image.format == "PNG" and image.size[0] >= 600


def test_regime_report_says_channel_removal_measures_shrinkage_when_it_lowers_the_loss(tmp_path):
    _write_fake_over_study(tmp_path)
    for result_file in tmp_path.glob("runs/*/seed*/result.json"):  # an overfit adapter: any removal helps
        result = json.loads(result_file.read_text())
        if "mechanism" in result:
            pruning = result["mechanism"]["pruning"]
            for point in pruning["curve"]:
                point["losses"] = [pruning["full"] - 0.05 * point["fraction"]] * 2
            result_file.write_text(json.dumps(result))
    report = regenerate_report(tmp_path)
    assert "| lora | 16 | 3.00 | 0.500 / 0.250 / 0.200 | -0.0125 | -0.0250 |" in report
    assert "Removing rank channels *lowered* the held-out loss of every arm" in report
    assert (
        "**Implicit ensemble (degrades less when rank channels are removed):** droplora-p0.3 − lora" in report
        and "Untestable here as posed: removal lowered every adapter's loss" in report
    )


def test_regime_report_says_seeds_not_questions_set_the_intervals_and_how_many_seeds_would_do(tmp_path):
    config = _write_fake_over_study(tmp_path)
    (tmp_path / "study.json").write_text(
        json.dumps(study_settings(dataclasses.replace(config, n_curve=5), "/models/SmolLM2"))
    )
    for result_file in tmp_path.glob("runs/*/seed*/result.json"):  # the curve scored the first 5 of the 20 questions
        result = json.loads(result_file.read_text())
        result_file.write_text(json.dumps({**result, "heldout_loss": result["loss_curve"][-1] + 0.03}))
    report = regenerate_report(tmp_path)
    # σ² = 0.03² / (1/5 − 1/20) = 0.006, so one 20-question mean has SE √0.006 / √20 = 0.0173; seed sd:
    # lora-r4 0.0577 … lora 0.15; paired sd 0.0577 in both comparisons, and (t.975 + t.80) · 0.0577 / √n
    # first drops below half of LoRA's rise (0.1) at n = 5 (3.717 · 0.0577 / √5 = 0.096; n = 4: 0.120)
    assert (
        "**Seeds, not questions, set these intervals.** An arm's final answer loss varies from seed to seed with "
        "sd 0.0577–0.1500; the question-sampling standard error of one 20-question mean is about 0.0173"
    ) in report
    assert "To detect half of LoRA's rise (0.1000 nats/token) at 80% power: " in report
    assert "droplora-p0.3-r4 − lora-r4 (sd of the paired differences 0.0577): 5 seeds." in report
    assert "droplora-p0.3 − lora (sd of the paired differences 0.0577): 5 seeds;" in report


def test_report_only_command_regenerates_without_a_model_and_names_missing_runs(tmp_path):
    _write_fake_over_study(tmp_path)
    ran = run_cli(
        [sys.executable, "-m", "axolotl_droplora", "study", "--report-only", "--out", str(tmp_path)], cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "Overfitting check: shown" in report and ran.stdout.strip().endswith(report.strip().splitlines()[-1])
    (tmp_path / "runs" / "lora-r4" / "seed2" / "result.json").unlink()
    ran = run_cli(
        [sys.executable, "-m", "axolotl_droplora", "study", "--report-only", "--out", str(tmp_path)], cwd=tmp_path
    )
    assert ran.returncode != 0 and "runs lacks lora-r4/seed2: run the study to finish them" in ran.stderr


def test_tiny_regime_study_trains_scores_curves_and_analyses_then_resumes(tmp_path, demo_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_droplora.eval.answer_loss import answer_nll
    from axolotl_droplora.study.run import heldout_pairs

    config = StudyConfig(
        steps=0,
        batch_size=4,
        r=4,
        learning_rate=2e-3,
        n_train=8,
        n_heldout=16,
        seeds=(0, 1),
        bf16=False,
        max_new_tokens=6,
        eval_batch_size=8,
        epochs=2,
        n_accuracy=4,
        n_loss=12,
        n_curve=6,
        arms=("lora", "droplora-p0.3"),
        mechanism_arms=("lora", "droplora-p0.3"),
        n_prune=4,
        prune_draws=2,
        prune_fractions=(0.25, 0.5),
    )
    out = tmp_path / "study"
    report = run_study(demo_dir / "model", out, config)
    files = sorted(out.glob("runs/*/seed*/result.json"))
    results = {(r["arm"], r["seed"]): r for r in (json.loads(f.read_text()) for f in files)}
    assert sorted(results) == [("droplora-p0.3", 0), ("droplora-p0.3", 1), ("lora", 0), ("lora", 1)]
    for result in results.values():
        assert len(result["loss_curve"]) == 3 and all(v > 0 for v in result["loss_curve"])  # epochs 0, 1, 2
        assert len(result["losses"]) == 4  # 2 epochs of 8 questions in batches of 4
        assert result["heldout_loss"] > 0 and 0 <= result["accuracy"] <= 100
        mechanism = result["mechanism"]
        assert 1 <= mechanism["spectra"]["effective_rank_mean"] <= 4
        assert [p["fraction"] for p in mechanism["pruning"]["curve"]] == [0.25, 0.5]
    assert len((out / "runs" / "lora" / "seed0" / "eval" / "predictions.jsonl").read_text().splitlines()) == 4
    assert set(json.loads((out / "runs" / "lora" / "cross_seed.json").read_text())["phi"]) == {"k=1", "k=2", "k=4"}
    # the recorded loss is the saved adapter's answer loss on the first n_loss held-out questions
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(demo_dir / "model", dtype=torch.float32),
        out / "adapters" / "droplora-p0.3" / "seed1",
    )
    heldout = json.loads((out / "task" / "heldout" / "gsm8k" / "test.json").read_text())
    again = answer_nll(model, tokenizer, *heldout_pairs(heldout, 12))
    run = results["droplora-p0.3", 1]
    assert sum(again) / len(again) == pytest.approx(run["heldout_loss"], rel=1e-4)
    # scored once, used thrice: the final scoring's first n_curve (6) and n_prune (4) questions are
    # the curve's last epoch and the unchanged adapter of the channel-removal curve
    assert run["loss_curve"][-1] == pytest.approx(sum(again[:6]) / 6, rel=1e-4)
    assert run["mechanism"]["pruning"]["full"] == pytest.approx(sum(again[:4]) / 4, rel=1e-4)
    # epoch 0 is the base model's loss, scored once for every run that starts at the base model
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model", dtype=torch.float32)
    before = answer_nll(base, tokenizer, *heldout_pairs(heldout, 6), 8)
    assert {r["loss_curve"][0] for r in results.values()} == {statistics.fmean(before)}
    assert "## Held-out answer loss per epoch" in report and "droplora-p0.3 − lora" in report
    assert (out / ".gitignore").read_text().startswith("task/\nadapters/")

    finished = {f: f.stat().st_mtime_ns for f in files}
    assert run_study(demo_dir / "model", out, config) == report  # nothing to train: the same report
    assert {f: f.stat().st_mtime_ns for f in files} == finished
    redo = out / "runs" / "lora" / "seed1" / "result.json"
    redo.unlink()
    run_study(demo_dir / "model", out, config)
    assert redo.is_file()  # only the missing run is trained again
    assert {f: f.stat().st_mtime_ns for f in files if f != redo} == {f: t for f, t in finished.items() if f != redo}


def test_galore_arm_is_refused_before_any_work_without_its_package(tmp_path, demo_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # as if not installed
    config = StudyConfig(
        steps=1,
        batch_size=2,
        r=4,
        learning_rate=1e-3,
        n_train=4,
        n_heldout=4,
        seeds=(0,),
        bf16=False,
        n_loss=4,
        arms=("lora", "galore"),
    )
    with pytest.raises(
        ValueError, match="galore arm needs the galore-torch package, not installed: pip install galore-torch"
    ):
        run_study(demo_dir / "model", tmp_path / "s", config)
    assert not (tmp_path / "s").exists()
    assert "galore" in CONFIGS["under-gpu"].arms


def test_galore_arm_trains_with_transformers_galore_optimizer(tmp_path, demo_dir):
    config = StudyConfig(
        steps=3,
        batch_size=4,
        r=4,
        learning_rate=1e-3,
        n_train=8,
        n_heldout=8,
        seeds=(0,),
        bf16=False,
        max_new_tokens=4,
        eval_batch_size=8,
        n_accuracy=2,
        n_loss=8,
        arms=("lora", "galore"),
    )
    report = run_study(demo_dir / "model", tmp_path / "s", config)
    result = json.loads((tmp_path / "s" / "runs" / "galore" / "seed0" / "result.json").read_text())
    assert (
        result["optimizer"] == "galore_torch.adamw.AdamW" and len(result["losses"]) == 3 and result["heldout_loss"] > 0
    )
    assert "galore − lora: " in report


def test_regime_report_says_when_lora_did_not_overfit_and_the_regularisation_claim_is_untested(tmp_path):
    _write_fake_over_study(tmp_path)
    for seed, curve in zip((0, 1, 2), ([2.0, 1.0, 0.9], [2.0, 1.1, 1.0], [2.0, 0.9, 0.85])):  # still falling
        path = tmp_path / "runs" / "lora" / f"seed{seed}" / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "loss_curve": curve, "heldout_loss": curve[-1]}))
    report = regenerate_report(tmp_path)
    assert "**Overfitting check: not shown.** LoRA's mean held-out loss is lowest after the last epoch" in report
    assert "Raise `epochs` or `learning_rate`, or lower `n_train`" in report
    assert (
        "**Regularisation: DropLoRA overfits less (smaller rise of the held-out loss):** untested here, as the "
        "overfitting check above is not shown"
    ) in report
