"""The studies' reports: report.md and PNG figures from the runs' result.json files only.

    write_any_report(out_dir, arms, cfg, base_model)   the first study's or the regime study's
    regenerate_report(out_dir)                         again from a committed study folder

The regime study (`write_regime_report`):
Every arm is compared with its reference arm (arms.reference_arm: LoRA, or the same variant
without rank dropout), paired by seed, on the held-out answer loss (primary) and on greedy
accuracy, with 95% t-intervals and minimum detectable differences (stats.py). Then, as the
runs allow: the per-epoch loss curves and the overfitting check, the r × p grid, the mechanism
analyses, and the paper's claims one by one, each with what was found or "not run in this report".
The first study (`write_report`): accuracy per arm, and each arm's paired difference from LoRA in
standard errors (stats.py's `verdict`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..eval.plots import bars_and_curves, line_panels
from ..recipes.paper import TARGET_MODULES
from .arms import ARMS, StudyConfig, config_from_settings, is_svd_init, reference_arm, result_file
from .stats import beyond_noise, describe, nested_subset_sd, paired_difference, seeds_needed, verdict

LOSS = "nats/token"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _grid_cell(arm: str, cfg) -> tuple[int, float] | None:
    """(r, p) of an arm that differs from LoRA only by r and / or rank dropout p."""
    spec = ARMS[arm]
    if set(spec) - {"r", "rank_dropout", "vs"}:
        return None
    return spec.get("r", cfg.r), spec.get("rank_dropout", 0.0)


def rise(curve: list[float]) -> float:
    """How far a held-out loss curve ends above its minimum (0 when the last point is the minimum)."""
    return curve[-1] - min(curve)


def overfitting_check(lora_runs: list[dict]) -> tuple[int, object, bool]:
    """(epoch where LoRA's mean held-out curve is lowest, the paired change from there to the last
    epoch or None when the minimum is the last epoch, whether its 95% interval lies above 0)."""
    curves = [r["loss_curve"] for r in lora_runs]
    mean = [statistics.fmean(v) for v in zip(*curves)]
    best = min(range(len(mean)), key=mean.__getitem__)
    if best == len(mean) - 1:
        return best, None, False
    d = paired_difference([c[best] for c in curves], [c[-1] for c in curves])
    return best, d, d.low is not None and d.low > 0


def write_regime_report(out_dir: Path, arms: list[str], cfg, base_model: str) -> str:

    out_dir = Path(out_dir)
    runs = {arm: [json.loads(result_file(out_dir, arm, s).read_text()) for s in cfg.seeds] for arm in arms}
    loss = {arm: [r["heldout_loss"] for r in rs] for arm, rs in runs.items()}
    accuracy = {arm: [r["accuracy"] for r in rs] for arm, rs in runs.items()}
    machine = "; ".join(sorted({r["machine"] for rs in runs.values() for r in rs}))
    total_s = sum(
        r["train_s"] + r["eval_s"] + r.get("loss_s", 0) + r.get("curve_s", 0) + r.get("mechanism", {}).get("seconds", 0)
        for rs in runs.values()
        for r in rs
    )
    regime = "overfitting" if cfg.epochs else "under-trained"
    length = (
        f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} over {cfg.n_train} training questions "
        f"({cfg.total_steps} steps of batch "
        f"{cfg.batch_size})"
        if cfg.epochs
        else f"{cfg.steps} steps of batch {cfg.batch_size} from {cfg.n_train} training questions"
    )
    lines = [
        f"# Replication study, {regime} regime: does DropLoRA beat LoRA?",
        "",
        f"Base model `{Path(base_model).name}`; task: the demo's arithmetic questions. {length}, lr "
        f"{cfg.learning_rate}, r={cfg.r} unless the arm says otherwise, on {', '.join(TARGET_MODULES)}, "
        f"lora_alpha=2r (r for PiSSA and MiLoRA), lora_dropout {cfg.lora_dropout} unless the arm says "
        f"otherwise, seeds {list(cfg.seeds)}, {'bf16' if cfg.bf16 else 'float32'}. Held-out answer loss "
        f"(teacher-forced mean NLL of the answer tokens and EOS per question, averaged over questions) on "
        f"{cfg.n_loss} held-out questions; greedy accuracy (GSM8K scorer) on the first "
        f"{cfg.n_accuracy or cfg.n_heldout}. Machine: {machine}; {total_s / 60:.1f} min of training, "
        f"scoring and analyses in all.",
        "",
        "| arm | compared with | answer loss | accuracy (%) | loss per seed | train s/run |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        (lm, ls), (am, asd) = _mean_sd(loss[arm]), _mean_sd(accuracy[arm])
        vs = reference_arm(arm) if arm != reference_arm(arm) else "—"
        lines.append(
            f"| {arm} | {vs} | {lm:.4f} ± {ls:.4f} | {am:.1f} ± {asd:.1f} | "
            f"{', '.join(f'{v:.4f}' for v in loss[arm])} | "
            f"{statistics.fmean(r['train_s'] for r in runs[arm]):.0f} |"
        )
    lines += ["", f"Mean ± sample standard deviation over seeds; answer loss in {LOSS} (lower is better).", ""]

    pairs = [(arm, reference_arm(arm)) for arm in arms if reference_arm(arm) != arm and reference_arm(arm) in runs]
    differences = {
        arm: (paired_difference(loss[ref], loss[arm]), paired_difference(accuracy[ref], accuracy[arm]))
        for arm, ref in pairs
    }
    if pairs:
        lines += ["## Differences, paired by seed", ""]
        for arm, ref in pairs:
            d_loss, d_acc = differences[arm]
            lines.append(
                f"- answer loss: {describe(arm, ref, d_loss, LOSS, lower_is_better=True, digits=4)}; "
                f"accuracy: {_short(d_acc, 'points', digits=1)}."
            )
        mdd_loss = [d.mdd for d, _ in differences.values() if d.mdd is not None]
        mdd_acc = [d.mdd for _, d in differences.values() if d.mdd is not None]
        lines += [
            "",
            "95% intervals: Student t over the seeds' paired differences; smallest detectable difference: "
            "(t₀.₉₇₅ + t₀.₈₀, n−1 degrees of freedom) × sd of the differences / √n, a two-sided paired "
            "t-test's at α = 0.05 and 80% power (axolotl_droplora/study/stats.py).",
        ]
        if mdd_loss and mdd_acc:
            lines += [
                "",
                f"**Which claims each metric supports.** The answer loss (median smallest detectable "
                f"difference here {statistics.median(mdd_loss):.4f} {LOSS}) says whether an arm fits the "
                f"held-out answers better: the regularisation and overfitting claims, and the r and p trends. "
                f"Accuracy (median smallest detectable difference {statistics.median(mdd_acc):.1f} points) is "
                f"the papers' own score, so only it can confirm or refute their table gains, and only "
                f"gains above that size; a loss gain without an accuracy gain is not the papers' claim.",
            ]
        lines.append("")

    figures = []
    if cfg.epochs:
        lines += _curves_section(runs, arms, cfg, out_dir, {arm: d_loss for arm, (d_loss, _) in differences.items()})
        figures.append(("held-out answer loss per epoch", "curves.png"))
    grid = {arm: _grid_cell(arm, cfg) for arm in arms if _grid_cell(arm, cfg) is not None}
    if len({r for r, _ in grid.values()}) > 1:
        lines += _grid_section(grid, loss, out_dir)
        figures.append(("the r × p grid", "grid.png"))
    mechanism_arms = [arm for arm in arms if all("mechanism" in r for r in runs[arm])]
    if mechanism_arms:
        lines += _mechanism_section(mechanism_arms, runs, cfg, out_dir)
        figures += [("spectra of ΔW", "spectra.png"), ("loss with rank channels removed", "pruning.png")]
    lines += _claims_section(arms, runs, loss, accuracy, differences, cfg, mechanism_arms)
    lines += [f"![{title}]({name})" for title, name in figures] + [""]
    report = "\n".join(lines)
    (out_dir / "report.md").write_text(report)
    return report


def _short(d, unit: str, digits: int) -> str:
    value = f"{d.mean:+.{digits}f}" + (f" {unit}" if unit else "")
    if d.n < 2:
        return f"{value} (one seed)"
    return f"{value} [{d.low:+.{digits}f}, {d.high:+.{digits}f}], smallest detectable {d.mdd:.{digits}f}"


def _curves_section(runs, arms, cfg, out_dir: Path, loss_differences: dict) -> list[str]:
    lines = [
        "## Held-out answer loss per epoch",
        "",
        f"On the first {cfg.n_curve or cfg.n_loss} held-out questions, before training (epoch 0) and after "
        f"each epoch; mean over seeds. *rise*: last epoch minus the curve's minimum, per seed.",
        "",
        "| arm | " + " | ".join(f"ep {e}" for e in range(cfg.epochs + 1)) + " | rise |",
        "|---|" + "---|" * (cfg.epochs + 2),
    ]
    mean_curves = {}
    for arm in arms:
        curves = [r["loss_curve"] for r in runs[arm]]
        mean_curves[arm] = [statistics.fmean(v) for v in zip(*curves)]
        rises = [rise(c) for c in curves]
        lines.append(
            f"| {arm} | " + " | ".join(f"{v:.4f}" for v in mean_curves[arm]) + f" | {statistics.fmean(rises):.4f} |"
        )
    lines.append("")
    if "lora" in runs:
        best, d, shown = overfitting_check(runs["lora"])
        if d is None:
            lines += [
                "**Overfitting check: not shown.** LoRA's mean held-out loss is lowest after the last epoch: "
                "this run did not reach the overfitting regime. Raise `epochs` or `learning_rate`, or lower "
                "`n_train`, and run again into a new folder.",
                "",
            ]
        else:
            lines += [
                f"**Overfitting check: {'shown' if shown else 'not shown'}.** LoRA's mean held-out loss is "
                f"lowest after epoch {best}; from there to the last epoch it changes by "
                f"{_short(d, LOSS, 4)} (95% interval over seeds"
                f"{'' if shown else '; it must lie above 0 for this to be the overfitting regime'}).",
                "",
            ]
            if shown:
                lines += _noise_lines(runs, arms, cfg, loss_differences, d.mean / 2)
    by_r = [arm for arm in arms if "r" not in ARMS[arm]]
    others = [arm for arm in arms if "r" in ARMS[arm]]
    panels = [
        {
            "title": "held-out answer loss per epoch" + (" (r of the config)" if others else ""),
            "xlabel": "epoch",
            "ylabel": f"answer loss ({LOSS})",
            "series": {},
        }
    ]
    if others:
        panels.append({"title": "other r", "xlabel": "epoch", "ylabel": f"answer loss ({LOSS})", "series": {}})
    for arm in arms:
        curves = [r["loss_curve"] for r in runs[arm]]
        errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*curves)]
        panels[0 if arm in by_r else 1]["series"][arm] = (list(range(len(mean_curves[arm]))), mean_curves[arm], errors)
    line_panels(out_dir / "curves.png", panels)
    return lines


def _noise_lines(runs, arms, cfg, loss_differences: dict, target: float) -> list[str]:
    """Where the noise of the final answer loss comes from (seeds or questions), and the seeds that
    would detect `target` (half of LoRA's rise) in each comparison's paired differences."""
    n_curve = cfg.n_curve or cfg.n_loss
    if len(cfg.seeds) < 2 or n_curve >= cfg.n_loss:
        return []
    seed_sds = [statistics.stdev(r["heldout_loss"] for r in runs[arm]) for arm in arms]
    all_runs = [r for arm in arms for r in runs[arm]]
    question_se = (
        nested_subset_sd(
            [r["loss_curve"][-1] for r in all_runs], [r["heldout_loss"] for r in all_runs], n_curve, cfg.n_loss
        )
        / cfg.n_loss**0.5
    )
    needs = [
        f"{arm} − {reference_arm(arm)} (sd of the paired differences {d.sd:.4f}): "
        + (f"{n} seeds" if (n := seeds_needed(d.sd, target)) else "more than 1000 seeds")
        for arm, d in loss_differences.items()
    ]
    return [
        f"**Seeds, not questions, set these intervals.** An arm's final answer loss varies from seed to seed "
        f"with sd {min(seed_sds):.4f}–{max(seed_sds):.4f}; the question-sampling standard error of one "
        f"{cfg.n_loss}-question mean is about {question_se:.4f} (from each run's first {n_curve} questions against "
        f"all {cfg.n_loss}: their difference has variance σ²(1/{n_curve} − 1/{cfg.n_loss})). So more questions "
        f"cannot narrow these intervals much; more seeds can. To detect half of LoRA's rise ({target:.4f} {LOSS}) "
        f"at 80% power: " + ("; ".join(needs) if needs else "no comparison run") + ".",
        "",
    ]


def _grid_section(grid: dict, loss: dict, out_dir: Path) -> list[str]:
    ranks = sorted({r for r, _ in grid.values()})
    ps = sorted({p for _, p in grid.values()})
    cell = {rp: arm for arm, rp in grid.items()}
    lines = [
        "## The r × p grid (answer loss; difference from p = 0 at the same r, 95% interval)",
        "",
        "| r | " + " | ".join(f"p = {p:g}" for p in ps) + " |",
        "|---|" + "---|" * len(ps),
    ]
    series = {}
    for r in ranks:
        row, xs, ys, errors = [], [], [], []
        for p in ps:
            arm = cell.get((r, p))
            if arm is None:
                row.append("not run")
                continue
            mean, sd = _mean_sd(loss[arm])
            text = f"{mean:.4f}"
            base = cell.get((r, 0.0))
            if p and base is not None:
                d = paired_difference(loss[base], loss[arm])
                text += f" ({d.mean:+.4f}" + (f" [{d.low:+.4f}, {d.high:+.4f}])" if d.low is not None else ")")
            row.append(text)
            xs.append(p), ys.append(mean), errors.append(sd)
        lines.append(f"| {r} | " + " | ".join(row) + " |")
        series[f"r = {r}"] = (xs, ys, errors)
    lines.append("")
    line_panels(
        out_dir / "grid.png",
        [
            {
                "title": "held-out answer loss over the r × p grid (mean ± sd over seeds)",
                "xlabel": "rank dropout p",
                "ylabel": f"answer loss ({LOSS})",
                "series": series,
            }
        ],
    )
    return lines


def _removal_increase(result: dict) -> list[float]:
    """Per fraction: mean over draws of the loss with channels removed, minus the full adapter's."""
    pruning = result["mechanism"]["pruning"]
    return [statistics.fmean(point["losses"]) - pruning["full"] for point in pruning["curve"]]


def removal_lowers_loss(runs: dict, arms: list[str]) -> bool:
    """Whether removing rank channels lowered the held-out loss in every run, at every share: the
    adapters are past their best fit, so the removal test measures shrinkage, not an ensemble."""
    return all(v < 0 for arm in arms for r in runs[arm] for v in _removal_increase(r))


def _mechanism_section(arms: list[str], runs: dict, cfg, out_dir: Path) -> list[str]:
    fractions = [p["fraction"] for p in runs[arms[0]][0]["mechanism"]["pruning"]["curve"]]
    lines = [
        "## Mechanism: spectra, rank channels removed at inference, similarity across seeds",
        "",
        "| arm | r | effective rank of ΔW (mean over layers) | φ across seeds, top 1 / r/2 / r | "
        + " | ".join(f"loss rise, {f:.0%} removed" for f in fractions)
        + " |",
        "|---|---|---|---|" + "---|" * len(fractions),
    ]
    spectra, pruning = {}, {}
    for arm in arms:
        summaries = [r["mechanism"]["spectra"] for r in runs[arm]]
        cross = out_dir / "runs" / arm / "cross_seed.json"
        phi = (
            " / ".join(f"{v:.3f}" for v in json.loads(cross.read_text())["phi"].values())
            if cross.is_file()
            else "not run"
        )
        increases = [_removal_increase(r) for r in runs[arm]]
        pruning[arm] = [statistics.fmean(v) for v in zip(*increases)]
        spectra[arm] = [statistics.fmean(v) for v in zip(*(s["normalised_spectrum"] for s in summaries))]
        lines.append(
            f"| {arm} | {summaries[0]['r']} | {statistics.fmean(s['effective_rank_mean'] for s in summaries):.2f} "
            f"| {phi} | " + " | ".join(f"{v:+.4f}" for v in pruning[arm]) + " |"
        )
    lines += [
        "",
        "Effective rank: exp of the entropy of ΔW's normalised singular values (1 … r). φ: subspace "
        "similarity of the top-k left singular vectors of ΔW between seeds (1 = the same subspace; a random "
        "pair gives about k/d). Loss rise: held-out answer loss with that share of every layer's rank channels "
        f"zeroed at random ({cfg.prune_draws} draws, {cfg.n_prune} questions, no rescaling) minus the full "
        "adapter's; mean over seeds.",
        "",
    ]
    paired = [a for a in arms if "rank_dropout" in ARMS[a] and reference_arm(a) in arms]
    for a in paired:
        ranks = {
            arm: [r["mechanism"]["spectra"]["effective_rank_mean"] for r in runs[arm]] for arm in (a, reference_arm(a))
        }
        d = paired_difference(ranks[reference_arm(a)], ranks[a])
        lines.append(
            f"- effective rank, {a} − {reference_arm(a)}: {_short(d, '', 2)} "
            f"(paired by seed; r = {runs[a][0]['mechanism']['spectra']['r']})."
        )
    if paired:
        lines.append("")
    if removal_lowers_loss(runs, arms):
        lines += [
            "Removing rank channels *lowered* the held-out loss of every arm: these adapters are past their "
            "best held-out fit, so any shrinking of ΔW towards the base helps, and the channel-removal test "
            "measures that shrinkage as much as robustness to losing channels (the implicit-ensemble reading "
            "needs adapters at or before their best fit).",
            "",
        ]
    line_panels(
        out_dir / "spectra.png",
        [
            {
                "title": "singular values of ΔW / σ₁, mean over layers and seeds",
                "xlabel": "index",
                "ylabel": "σᵢ / σ₁",
                "series": {a: (list(range(1, len(s) + 1)), s, None) for a, s in spectra.items()},
            }
        ],
    )
    line_panels(
        out_dir / "pruning.png",
        [
            {
                "title": "rank channels removed at inference",
                "xlabel": "share of rank channels removed",
                "ylabel": f"loss rise ({LOSS})",
                "series": {a: ([0.0] + fractions, [0.0] + v, None) for a, v in pruning.items()},
            }
        ],
    )
    return lines


def _claims_section(arms, runs, loss, accuracy, differences, cfg, mechanism_arms) -> list[str]:
    def found(arm: str) -> str:
        d_loss, d_acc = differences[arm]
        return f"{arm} − {reference_arm(arm)}: loss {_short(d_loss, LOSS, 4)}, accuracy {_short(d_acc, 'points', 1)}"

    def compared(wanted: list[str]) -> list[str]:
        return [arm for arm in wanted if arm in differences]

    not_run = "not run in this report"
    lines = ["## The paper's claims, one by one", ""]
    plain = compared(
        [a for a in arms if _grid_cell(a, cfg) == (cfg.r, ARMS[a].get("rank_dropout")) and "rank_dropout" in ARMS[a]]
    )
    lines.append(
        "- **DropLoRA beats LoRA (Tables 1–4):** "
        + ("; ".join(found(a) for a in plain) if plain else not_run)
        + ". A gain counts only where the accuracy interval lies above 0."
    )
    best = [a for a in ("droplora-p0.1", "droplora-p0.3", "droplora-p0.5") if a in loss]
    if "droplora-p0.3" in loss and len(best) > 1:
        vs = [paired_difference(loss[o], loss["droplora-p0.3"]) for o in best if o != "droplora-p0.3"]
        shown = all(d.high is not None and d.high < 0 for d in vs)
        lines.append(
            "- **p = 0.3 is best:** "
            + "; ".join(
                f"p0.3 − {o.removeprefix('droplora-')}: {_short(d, LOSS, 4)}"
                for o, d in zip([o for o in best if o != "droplora-p0.3"], vs)
            )
            + f" — {'shown' if shown else 'not shown'} on the loss."
        )
    else:
        lines.append(f"- **p = 0.3 is best:** {not_run}.")
    grid = {arm: _grid_cell(arm, cfg) for arm in arms if _grid_cell(arm, cfg)}
    trend = [a for a in compared(list(grid)) if grid[a][1] == 0.3]
    lines.append(
        "- **r trend (no gain at small r, the summary's r = 8; gains at larger r):** "
        + (
            "; ".join(f"r = {grid[a][0]}: {found(a)}" for a in sorted(trend, key=lambda a: grid[a][0]))
            if len({grid[a][0] for a in trend}) > 1
            else not_run + " (needs the r × p grid)"
        )
        + "."
    )
    high_p = compared([a for a in grid if grid[a][1] >= 0.5])
    lines.append(
        "- **A loss at p ≥ 0.5 on math:** " + ("; ".join(found(a) for a in high_p) if high_p else not_run) + "."
    )
    drop = [a for a in arms if "rank_dropout" in ARMS[a] and reference_arm(a) in runs]
    if drop:
        ratio = statistics.fmean(r["eval_s"] for a in drop for r in runs[a]) / statistics.fmean(
            r["eval_s"] for a in {reference_arm(a) for a in drop} for r in runs[a]
        )
        lines.append(
            f"- **No inference cost:** by construction, rank dropout is off in eval mode and the saved adapter "
            f"is a plain PEFT LoRA (tests/method/test_rank_dropout.py, tests/test_trainer_callback.py); "
            f"measured here, greedy "
            f"scoring took {ratio:.2f}× the time of the arms they are compared with (same machine, not a "
            f"controlled benchmark)."
        )
    else:
        lines.append(f"- **No inference cost:** {not_run}.")
    svd = compared([a for a in arms if is_svd_init(a) and "rank_dropout" in ARMS[a]])
    lines.append(
        "- **Rank dropout on SVD inits (PiSSA, MiLoRA; the paper's open question):** "
        + ("; ".join(found(a) for a in svd) if svd else not_run)
        + "."
    )
    if "pissa-ld0" in loss and "pissa" in loss:
        d = paired_difference(loss["pissa-ld0"], loss["pissa"])
        lines.append(f"- **PiSSA with lora_dropout 0.05 vs 0:** pissa − pissa-ld0: loss {_short(d, LOSS, 4)}.")
    if cfg.epochs:
        over = compared([a for a in arms if "rank_dropout" in ARMS[a]])
        rises = [
            (
                a,
                paired_difference(
                    [rise(r["loss_curve"]) for r in runs[reference_arm(a)]], [rise(r["loss_curve"]) for r in runs[a]]
                ),
            )
            for a in over
        ]
        caveat = (
            ""
            if "lora" in runs and overfitting_check(runs["lora"])[2]
            else ("untested here, as the overfitting check above is not shown (LoRA did not overfit); for the record: ")
        )
        lines.append(
            "- **Regularisation: DropLoRA overfits less (smaller rise of the held-out loss):** "
            + caveat
            + (
                "; ".join(f"{a} − {reference_arm(a)} rise: {_short(d, LOSS, 4)}" for a, d in rises)
                if rises
                else not_run
            )
            + "."
        )
    else:
        lines.append(
            "- **Regularisation: DropLoRA overfits less:** not tested in this regime (the overfitting "
            "regime's report tests it)."
        )
    ensemble = [a for a in mechanism_arms if "rank_dropout" in ARMS[a] and reference_arm(a) in mechanism_arms]
    if ensemble:
        parts = []
        for a in ensemble:
            d = paired_difference(
                [_removal_increase(r)[-1] for r in runs[reference_arm(a)]], [_removal_increase(r)[-1] for r in runs[a]]
            )
            parts.append(f"{a} − {reference_arm(a)}, loss rise with the largest share removed: {_short(d, LOSS, 4)}")
        shrinkage = removal_lowers_loss(runs, mechanism_arms)
        lines.append(
            "- **Implicit ensemble (degrades less when rank channels are removed):** "
            + "; ".join(parts)
            + "."
            + (
                " Untestable here as posed: removal lowered every adapter's loss (see the mechanism section)."
                if shrinkage
                else ""
            )
        )
    else:
        lines.append(f"- **Implicit ensemble:** {not_run}.")
    galore = [a for a in arms if "galore" in ARMS[a]]
    lines.append(
        "- **GaLore (dynamic subspace without rank masks):** "
        + (
            "; ".join(found(a) for a in compared(galore))
            if galore
            else "not run in this report (under-gpu has a galore arm; it needs galore-torch)"
        )
        + "."
    )
    if cfg.left_out:
        lines += ["", f"**Left out of this config:** {cfg.left_out}"]
    lines += [
        "",
        "**What this cannot say.** A 135M-parameter model on synthetic arithmetic, trained for minutes on a "
        "CPU, is not the paper's 7B models on commonsense, math and code benchmarks: an effect absent here may "
        "appear at scale, and one found here need not transfer. Differences smaller than the smallest detectable "
        "difference above may exist unseen.",
        "",
    ]
    return lines


def write_any_report(out_dir: Path, arms: list[str], cfg: StudyConfig, base_model: str) -> str:
    """The first study's report for its configs, the regime report for the others."""
    if cfg.n_loss:
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
    missing = [f"{arm}/seed{s}" for arm in arms for s in cfg.seeds if not result_file(out_dir, arm, s).is_file()]
    if missing:
        raise ValueError(
            f"{out_dir}/runs lacks {', '.join(missing)}: run the study to finish them, "
            f"or name the finished arms with --arms"
        )
    return write_any_report(out_dir, arms, cfg, settings["base_model"])


def write_report(out_dir: Path, arms: list[str], cfg: StudyConfig, base_model: str) -> str:
    """report.md and study.png from the finished runs' result.json files."""
    results = {arm: [json.loads(result_file(out_dir, arm, s).read_text()) for s in cfg.seeds] for arm in arms}
    accuracy = {arm: [r["accuracy"] for r in runs] for arm, runs in results.items()}
    means = {arm: statistics.fmean(accs) for arm, accs in accuracy.items()}
    stds = {arm: statistics.stdev(accs) if len(accs) > 1 else 0.0 for arm, accs in accuracy.items()}
    mean_curves = {
        arm: [statistics.fmean(step) for step in zip(*(r["losses"] for r in runs))] for arm, runs in results.items()
    }
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
        lines.append(
            f"| {arm} | {means[arm]:.1f} ± {stds[arm]:.1f} | {', '.join(f'{a:.0f}' for a in accuracy[arm])} "
            f"| {final:.3f} | {statistics.fmean(r['train_s'] for r in runs):.0f} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds; final loss: the mean of the last 5 logged training losses.",
        "",
    ]
    if "lora" in accuracy:
        droplora_arms = [arm for arm in arms if arm.startswith("droplora")]
        lines += ["## Did DropLoRA beat LoRA?", ""]
        lines += [f"- {verdict(arm, accuracy['lora'], accuracy[arm])}." for arm in arms if arm != "lora"]
        winners = [arm for arm in droplora_arms if beyond_noise(accuracy["lora"], accuracy[arm])]
        outcome = (
            f"DropLoRA ({', '.join(winners)}) beat LoRA beyond seed noise"
            if winners
            else "no DropLoRA arm beat LoRA beyond seed noise"
        )
        lines += [
            "",
            f"**In short:** {outcome} at this scale (beyond noise: a mean difference of more "
            f"than 2 standard errors, paired by seed, {len(cfg.seeds)} seeds each).",
            "",
        ]
    lines += ["![held-out accuracy and training loss](study.png)", ""]
    report = "\n".join(lines)
    bars_and_curves(
        out_dir / "study.png",
        arms,
        [means[a] for a in arms],
        [stds[a] for a in arms],
        "held-out accuracy (%), mean ± std",
        mean_curves,
        "training loss (mean over seeds)",
    )
    (out_dir / "report.md").write_text(report)
    return report
