"""Paired statistics for the studies, the one place they are computed: an arm against LoRA, seed by seed.

A seed fixes the data order and (for randomly initialised A) the init, and that moves every arm
alike, so the noise that matters is that of the per-seed differences d_i = arm_i − LoRA_i:

- 95% confidence interval of the mean difference: d̄ ± t_{0.975, n−1} · s_d / √n (Student t
  over the n seeds; s_d the sample standard deviation of the d_i).
- Minimum detectable difference (MDD) for those seeds: the smallest true mean difference that a
  two-sided paired t-test at α = 0.05 would detect with 80% power, by the usual approximation
  MDD = (t_{1−α/2, n−1} + t_{power, n−1}) · s_d / √n (e.g. Zar, Biostatistical Analysis, §9.5),
  with the observed s_d standing in for the true one. A difference below it is one this study
  could have missed; it is not evidence of no effect.
"""

from __future__ import annotations

import dataclasses
import statistics

CONFIDENCE = 0.95
POWER = 0.8


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """mean of other − reference over n paired seeds, its 95% interval and the MDD (None below 2 seeds)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    mdd: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def paired_difference(
    reference: list[float], other: list[float], confidence: float = CONFIDENCE, power: float = POWER
) -> PairedDifference:
    """Per-seed differences other − reference, with the t-interval and the MDD (see the module doc)."""
    differences = [b - a for a, b in zip(reference, other, strict=True)]
    n = len(differences)
    if n == 0:
        raise ValueError("paired_difference needs at least one seed")
    mean = statistics.fmean(differences)
    if n < 2:
        return PairedDifference(n, mean, None, None, None, None)
    sd = statistics.stdev(differences)
    se = sd / n**0.5
    t_interval = t_quantile(1 - (1 - confidence) / 2, n - 1)
    half = t_interval * se
    mdd = (t_interval + t_quantile(power, n - 1)) * se
    return PairedDifference(n, mean, sd, mean - half, mean + half, mdd)


def seeds_needed(
    sd: float, difference: float, confidence: float = CONFIDENCE, power: float = POWER, most: int = 1000
) -> int | None:
    """The fewest seeds whose MDD (module doc) reaches `difference` when the paired differences
    have standard deviation `sd`; None if more than `most` would be needed."""
    for n in range(2, most + 1):
        if (t_quantile(1 - (1 - confidence) / 2, n - 1) + t_quantile(power, n - 1)) * sd / n**0.5 <= difference:
            return n
    return None


def nested_subset_sd(subset_means: list[float], full_means: list[float], n_subset: int, n_full: int) -> float:
    """Per-question standard deviation σ estimated from runs scored on n_full questions and on
    their first n_subset: for a random subset, Var(subset mean − full mean) = σ² (1/n_subset − 1/n_full)."""
    if not 0 < n_subset < n_full:
        raise ValueError(f"need 0 < n_subset < n_full, got {n_subset} and {n_full}")
    squares = statistics.fmean((a - b) ** 2 for a, b in zip(subset_means, full_means, strict=True))
    return (squares / (1 / n_subset - 1 / n_full)) ** 0.5


def describe(label: str, reference: str, d: PairedDifference, unit: str, lower_is_better: bool, digits: int = 3) -> str:
    """One sentence: label − reference with its interval, which way it points, and the MDD."""
    fmt = f"{{:+.{digits}f}}"
    if d.n < 2:
        return f"{label} − {reference}: {fmt.format(d.mean)} {unit} (one seed: no interval)"
    better = (d.mean < 0) == lower_is_better
    if d.excludes_zero:
        call = f"{'better' if better else 'worse'} than {reference} (the interval excludes 0)"
    else:
        call = f"no difference from {reference} shown (the interval includes 0)"
    return (
        f"{label} − {reference}: {fmt.format(d.mean)} {unit}, 95% CI [{fmt.format(d.low)}, {fmt.format(d.high)}]: "
        f"{call}; smallest difference these {d.n} seeds detect (80% power): {d.mdd:.{digits}f} {unit}"
    )


def difference_from(reference: list[float], other: list[float]) -> tuple[float, float]:
    """(mean of other − reference over seeds, the standard error of that mean difference): the
    first study's summary of `paired_difference` (0 for one seed, which has no spread)."""
    d = paired_difference(reference, other)
    return d.mean, (d.sd / d.n**0.5 if d.sd is not None else 0.0)


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
