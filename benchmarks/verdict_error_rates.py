"""The verdict rule's error rates by simulation (issue 26, item 4): `analysis/stats.py`'s rule
on simulated experiments of every lab claim's shape, with normal seed-to-seed noise.

    python benchmarks/verdict_error_rates.py              # 4,000 experiments per cell, ~10 s
    python benchmarks/verdict_error_rates.py --n 20000    # tighter Monte-Carlo error

Prints four Markdown tables (BENCHMARKS.md, "Verdict error rates"):
1. false verdicts with no true effect (every setting's mean equal): % "held" / % "did not hold"
   per claim shape, spread pattern and seed count (3, 5, 8);
2. the rules the lab used before (each part at 95% with no adjustment, the best setting by its
   mean, a comparison of means) on the same simulated experiments;
3. power: with every part of the claim true by 2 spreads (2 x the smallest setting's std; a
   guard part 0), the share "held";
4. optional stopping: 3 seeds, then 2 more when undecided, the second look at ALPHA / looks or
   not.
The claim shapes and the simulation are those of tests/test_verdict_error_rates.py, which
asserts the first table's promise (<= 2.5% of each kind, up to Monte-Carlo error).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
from cnnlab.analysis import stats  # noqa: E402
from cnnlab.analysis.binomial import wilson  # noqa: E402
from test_verdict_error_rates import SHAPES, means_for, spread_patterns  # noqa: E402

SEEDS = (3, 5, 8)
HALF = stats.ALPHA / 2


def patterns(settings: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The test's spread patterns and one extreme: a setting 10x as noisy as the rest."""
    k = len(settings)
    return {**spread_patterns(settings),
            "last 10x": {s: 10.0 if i == k - 1 else 1.0 for i, s in enumerate(settings)}}


def draw(claim, means, sigma, seeds, n, rng):
    return {s: means[s] + sigma[s] * rng.standard_normal((n, seeds)) for s in claim.settings}


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}"


# ------------------------------------------------------------- the rules before issue 26


def _one_sided(samples, weights, direction=stats.GREATER):
    names = [s for s, w in weights.items() if w != 0]
    est, var, df, _, _ = stats._welch([samples[s] for s in names], [weights[s] for s in names])
    return stats._p_values(est, var, df, direction)


def old_rule(name: str, claim, samples) -> np.ndarray:
    """What tasks/experiment.py decided before: 95% intervals, no adjustment, pooling's best
    by mean; returns status codes."""
    held, bad = stats.CODE_HELD, stats.CODE_NOT_HELD
    if name.startswith("pooling"):  # best 2x2 and best 4x4 by their means, then Welch
        two = np.stack([samples["2x2 max"], samples["2x2 avg"]])
        four = np.stack([samples["4x4 max"], samples["4x4 avg"]])
        n = two.shape[1]
        b2 = two[two.mean(axis=2).argmax(axis=0), np.arange(n)]
        b4 = four[four.mean(axis=2).argmax(axis=0), np.arange(n)]
        up, down = _one_sided({"a": b2, "b": b4}, {"a": 1.0, "b": -1.0})
        return np.where(up <= HALF, held, np.where(down <= HALF, bad, 0))
    parts = [_one_sided(samples, c.weights) for c in claim.comparisons]
    ups = np.stack([p[0] <= HALF for p in parts])
    downs = np.stack([p[1] <= HALF for p in parts])
    if claim.combine == stats.ANY:  # filters: held when either part is above at 95%
        return np.where(ups.any(axis=0), held, np.where(downs.all(axis=0), bad, 0))
    shown = np.stack([u for u, c in zip(ups, claim.comparisons, strict=True) if not c.guard])
    return np.where(downs.any(axis=0), bad, np.where(shown.all(axis=0), held, 0))


def by_means(claim, samples) -> np.ndarray:
    est = np.stack([sum(w * samples[s].mean(axis=1) for s, w in c.weights.items())
                    for c in claim.comparisons if not c.guard])
    agree = (est > 0).all(axis=0) if claim.combine == stats.ALL else (est > 0).any(axis=0)
    return np.where(agree, stats.CODE_HELD, stats.CODE_NOT_HELD)


# ------------------------------------------------------------------------------- tables


def null_table(n: int, rng) -> tuple[list[str], dict[str, float]]:
    lines = ["| claim shape | spreads | " + " | ".join(f"{k} seeds: held / did not hold"
                                                    for k in SEEDS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in SEEDS) + " |"]
    worst: dict[str, float] = {}  # the largest held + did not hold per kind of spreads
    for name, make in SHAPES.items():
        claim = make()
        zero = dict.fromkeys(claim.settings, 0.0)
        for pattern, sigma in patterns(claim.settings).items():
            cells = []
            for seeds in SEEDS:
                codes = stats.decide_many(claim, draw(claim, zero, sigma, seeds, n, rng))
                h = int((codes == stats.CODE_HELD).sum())
                r = int((codes == stats.CODE_NOT_HELD).sum())
                kind = {"equal": "equal", "last 10x": "10x"}.get(pattern, "up to 3x")
                worst[kind] = max(worst.get(kind, 0.0), (h + r) / n)
                cells.append(f"{pct(h, n)}% / {pct(r, n)}%")
            lines.append(f"| {name} | {pattern} | " + " | ".join(cells) + " |")
    return lines, worst


def old_table(n: int, rng) -> list[str]:
    lines = ["| claim shape | rule | 3 seeds: held / did not hold | 5 seeds |",
             "| --- | --- | ---: | ---: |"]
    for name, make in SHAPES.items():
        claim = make()
        zero = dict.fromkeys(claim.settings, 0.0)
        sigma = dict.fromkeys(claim.settings, 1.0)
        rules = [("this rule", lambda c, s: stats.decide_many(c, s))]
        if name != "one difference":
            rules.append(("before (95% each part, no adjustment"
                          + ("; best by mean)" if name.startswith("pooling") else ")"),
                          lambda c, s, name=name: old_rule(name, c, s)))
        rules.append(("a comparison of means", by_means))
        for label, rule in rules:
            cells = []
            for seeds in (3, 5):
                codes = rule(claim, draw(claim, zero, sigma, seeds, n, rng))
                cells.append(f"{pct(int((codes == stats.CODE_HELD).sum()), n)}% / "
                             f"{pct(int((codes == stats.CODE_NOT_HELD).sum()), n)}%")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


def power_table(n: int, rng) -> list[str]:
    lines = ["| claim shape | spreads | " + " | ".join(f"{k} seeds" for k in SEEDS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in SEEDS) + " |"]
    for name, make in SHAPES.items():
        claim = make()
        means = means_for(claim, {c.name: 0.0 if c.guard else 2.0 for c in claim.comparisons})
        for pattern, sigma in patterns(claim.settings).items():
            cells = []
            for seeds in SEEDS:
                codes = stats.decide_many(claim, draw(claim, means, sigma, seeds, n, rng))
                cells.append(f"{pct(int((codes == stats.CODE_HELD).sum()), n)}%")
            lines.append(f"| {name} | {pattern} | " + " | ".join(cells) + " |")
    return lines


def stopping_table(n: int, rng) -> list[str]:
    claim = SHAPES["one difference"]()
    five = {s: rng.standard_normal((n, 5)) for s in claim.settings}
    first = stats.decide_many(claim, {s: v[:, :3] for s, v in five.items()})
    lines = ["| second look at | false verdicts, either look |", "| --- | ---: |"]
    for looks, label in ((1, "ALPHA (no record of the first look)"),
                         (2, "ALPHA / 2 (looks=2)")):
        final = np.where(first == stats.CODE_UNDECIDED,
                         stats.decide_many(claim, five, looks), first)
        k = int(np.isin(final, (stats.CODE_HELD, stats.CODE_NOT_HELD)).sum())
        lines.append(f"| {label} | {pct(k, n)}% |")
    k = int(np.isin(first, (stats.CODE_HELD, stats.CODE_NOT_HELD)).sum())
    lines.append(f"| (the first look alone, 3 seeds) | {pct(k, n)}% |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=stats.TESTED_SIMULATIONS,
                   help="simulated experiments per cell")
    p.add_argument("--seed", type=int, default=26)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    start, cpu = time.perf_counter(), time.process_time()
    null, worst = null_table(args.n, rng)
    print(f"## 1. No true effect: false verdicts ({args.n:,} experiments per cell)\n")
    print("\n".join(null))
    print("\nlargest held + did not hold: " + ", ".join(
        f"spreads {k} {100 * v:.1f}% (Wilson 95% {100 * wilson(round(v * args.n), args.n)[0]:.1f}"
        f" to {100 * wilson(round(v * args.n), args.n)[1]:.1f}%)" for k, v in worst.items()) + "\n")
    print("## 2. The rules before, on the same kind of experiments (equal spreads)\n")
    print("\n".join(old_table(args.n, rng)))
    print("\n## 3. Power: every part true by 2 spreads, the share held\n")
    print("\n".join(power_table(args.n, rng)))
    print("\n## 4. Optional stopping: 3 seeds, then 5 when undecided (one difference)\n")
    print("\n".join(stopping_table(args.n, rng)))
    print(f"\n{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
