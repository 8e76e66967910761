"""The replication study (axolotl_droplora/study.py): report arithmetic, resuming, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from axolotl_droplora.study import ARMS, CONFIGS, StudyConfig, beyond_noise, difference_from, verdict, write_report
from conftest import run_cli


def test_difference_is_paired_by_seed_with_the_standard_error_of_the_mean_difference():
    delta, se = difference_from([40.0, 42.0, 44.0], [41.0, 44.0, 47.0])  # differences 1, 2, 3
    assert delta == pytest.approx(2.0)
    assert se == pytest.approx(1.0 / 3 ** 0.5)  # stdev of the differences is 1, n = 3
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
    config = StudyConfig(steps=3, batch_size=2, r=4, learning_rate=1e-3, n_train=8, n_heldout=4,
                         seeds=(0, 1, 2), bf16=False)
    accuracies = {"lora": [40, 42, 44], "droplora-p0.3": [42, 45, 48], "dora": [41, 42, 46]}
    for arm, values in accuracies.items():
        for seed, accuracy in zip(config.seeds, values):
            run = tmp_path / "runs" / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "result.json").write_text(json.dumps(
                {"accuracy": accuracy, "losses": [2.0, 1.0, 0.5], "train_s": 10.0, "eval_s": 2.0,
                 "machine": "Some CPU, 2 threads"}))
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
    config = StudyConfig(steps=1, batch_size=2, r=4, learning_rate=1e-3, n_train=8, n_heldout=4,
                         seeds=(0, 1), bf16=False)
    for arm, values in {"lora": [40, 44], "droplora-p0.5": [38, 45]}.items():
        for seed, accuracy in zip(config.seeds, values):
            (tmp_path / "runs" / arm / f"seed{seed}").mkdir(parents=True)
            (tmp_path / "runs" / arm / f"seed{seed}" / "result.json").write_text(json.dumps(
                {"accuracy": accuracy, "losses": [1.0], "train_s": 1.0, "eval_s": 1.0, "machine": "m"}))
    report = write_report(tmp_path, ["lora", "droplora-p0.5"], config, "m")
    assert "**In short:** no DropLoRA arm beat LoRA beyond seed noise" in report
    assert "- droplora-p0.5 fell behind LoRA by 0.5 points (0.3 standard errors: within seed noise)." in report


def test_study_command_trains_every_arm_and_seed_then_resumes_without_retraining(tmp_path, demo_dir):
    command = ["axolotl", "droplora", "study", "--base-model", str(demo_dir / "model"), "--steps", "3",
               "--seeds", "2", "--arms", "lora,droplora-p0.3,pissa", "--out", str(tmp_path / "study")]
    ran = run_cli(command, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = tmp_path / "study"
    results = {path: json.loads(path.read_text()) for path in sorted(out.glob("runs/*/seed*/result.json"))}
    assert [(r["arm"], r["seed"]) for r in results.values()] == [
        ("droplora-p0.3", 0), ("droplora-p0.3", 1), ("lora", 0), ("lora", 1), ("pissa", 0), ("pissa", 1)]
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
    ran = run_cli(["axolotl", "droplora", "study", "--base-model", str(demo_dir / "model"),
                   "--arms", "lora,droplora-p0.9", "--out", str(tmp_path / "s")], cwd=tmp_path)
    assert ran.returncode != 0
    assert "unknown arm(s) droplora-p0.9; known: lora, droplora-p0.1" in ran.stderr
    assert not (tmp_path / "s").exists()


def test_committed_cpu_report_is_what_its_committed_runs_give(tmp_path):
    """README quotes reports/study-cpu/report.md: it must follow from the runs committed with it."""
    committed = Path(__file__).parents[1] / "reports" / "study-cpu"
    shutil.copytree(committed / "runs", tmp_path / "runs")
    settings = json.loads((committed / "study.json").read_text())
    config = StudyConfig(**{**{k: v for k, v in settings.items() if k != "base_model"},
                            "seeds": tuple(settings["seeds"])})
    assert config == CONFIGS["cpu"]  # the report is the cpu config's, as README says
    report = write_report(tmp_path, list(ARMS), config, settings["base_model"])
    assert report == (committed / "report.md").read_text()
    assert "Machine: AMD EPYC, 2 threads; 27.0 min" in report
