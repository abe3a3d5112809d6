"""The verdicts on the lab's claims, by the rule of `analysis/stats.py`: what comes before any
statistics (`_gate`: not tested, too short, one seed), one function per claim (`CLAIMS`: its
contrasts, status and sentence), "too short to decide" where a setting was still learning, and
the residual study's gradient verdict."""

from __future__ import annotations

from typing import Any

from cnnlab.analysis import stats
from cnnlab.tasks.experiment.designs import TRAIN_EVAL
from cnnlab.tasks.experiment.learning import (
    AT_CHANCE,
    DOUBLING_SEEDS,
    GRAD_FLOOR,
    LEARNING,
    PLATEAUED,
    UNKNOWN,
    log10_norm,
)


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {r["setting"][key]: r for r in rows}


def _pct(r: dict[str, Any], which: str = "test") -> str:
    m = r[f"{which}_mean"]
    return "-" if m is None else f"{m:.1f}%"


def verdict(name: str, rows: list[dict[str, Any]], quick: bool = False,
            excluded: list[str] | None = None, looks: int = 1) -> stats.Verdict:
    """The lab's claim against these rows, by the rule of `analysis/stats.py` (`stats.decide`
    on the claim's comparisons, named in advance below); `looks`: the verdicts this run has
    had on fewer seeds (rule 6: each level divided by it)."""
    excluded = list(excluded or [])
    gate = _gate(name, rows, quick)
    if gate is not None:
        return stats.Verdict(gate[0], gate[1], excluded=excluded, looks=looks)
    claim = CLAIMS[name](rows)
    if claim is None:
        return stats.Verdict(stats.NO_VERDICT, "the settings the claim compares did not all "
                             "finish with two or more seeds.", excluded=excluded, looks=looks)
    spec, samples, words = claim
    v = stats.decide(spec, samples, looks=looks)
    sentence = words(v) if v.status != stats.NO_VERDICT else v.sentence
    status = v.status
    if name == "residual":
        return _residual_plateaus(rows, spec, v, sentence, excluded, looks)
    # A setting is still learning when most of its seeds are: one seed just over the plateau
    # rule (a heuristic, PLATEAU_SHARE) does not veto what the others show; every such trial
    # is still marked in the table.
    learning = [r["label"] for r in rows
                if r["label"] in spec.settings and 2 * r["still_learning"] > r["seeds"]]
    if learning and status not in (stats.UNDECIDED, stats.NO_VERDICT):
        sentence = (f"{', '.join(learning)} had not stopped learning at the end of "
                    f"{'its' if len(learning) == 1 else 'their'} runs (marked in the table), so "
                    f"the comparison may still change; the intervals would read \u201c{status}"
                    f"\u201d: {sentence}")
        status = stats.TOO_SHORT
    return stats.Verdict(status, sentence, v.intervals, excluded, looks=v.looks, rule=v.rule,
                         p_values=v.p_values)


def _residual_plateaus(rows: list[dict[str, Any]], spec: stats.Claim, v: stats.Verdict,
                       sentence: str, excluded: list[str], looks: int) -> stats.Verdict:
    """The residual claim is about training error at the plateau (He et al.'s Fig. 6), so each
    of its decisions stands only where the nets it rests on passed the doubling test
    (learning.doubling_test, per setting over >= 3 seeds); `_valid_parts` says which. A net
    without the test (fewer seeds, no curves) gives no verdict. When the intervals give no
    verdict (zero spread: the seeds of a net stuck at chance often all read exactly chance) and
    some net is not at its plateau, "too short" comes first, since more steps, not more seeds,
    is then what the run needs. Undecided stays undecided: overlapping intervals of nets that
    had all plateaued is the answer, not a cut-short run."""
    compared = [r for r in rows if r["label"] in spec.settings]
    checks = {r["label"]: r.get("plateau") or {"status": UNKNOWN} for r in compared}
    unknown = [k for k, p in checks.items() if p["status"] == UNKNOWN]
    short = [f"{k} {p['status']}" for k, p in checks.items()
             if p["status"] in (LEARNING, AT_CHANCE)]
    status = v.status
    if unknown and status != stats.NO_VERDICT:
        status, sentence = stats.NO_VERDICT, (
            f"the plateau check (training error at S and 2S steps, {DOUBLING_SEEDS} or more "
            f"seeds) could not be made for {', '.join(unknown)}; the intervals would read "
            f"\u201c{v.status}\u201d: {sentence}")
    elif short and status == stats.NO_VERDICT:
        status, sentence = stats.TOO_SHORT, (
            f"{'; '.join(short)} by the doubling test (its training error at the last step "
            "against at half the steps, over its seeds), so the comparison is not yet the "
            f"plateau's; the intervals would read \u201c{v.status}\u201d: {sentence}")
    elif short:
        plateaued = {k: p["status"] == PLATEAUED for k, p in checks.items()}
        status, notes = _valid_parts(spec, v, looks, plateaued, checks)
        why = "; ".join(notes) or "no decision of the intervals needs its plateau"
        plateau = (f"{'; '.join(short)} by the doubling test (its training error at the last "
                   "step against at half the steps, over its seeds). At a constant rate a net "
                   "still learning can only end lower, so a higher error of a plateaued net "
                   "stands and a lower error of a net not at its plateau does not: "
                   f"{why}" + ("" if status == v.status else
                               f"; the intervals alone would read \u201c{v.status}\u201d"))
        # a decision leads with its intervals; "too short" with the nets that made it so
        sentence = (f"{plateau}. {sentence[:1].upper()}{sentence[1:]}"
                    if status == stats.TOO_SHORT else
                    f"{sentence} Plateaus: {plateau}.")
    return stats.Verdict(status, sentence, v.intervals, excluded, looks=v.looks, rule=v.rule,
                         p_values=v.p_values)


def _net(label: str) -> str:
    """'plain56' -> 'plain-56', 'resnet20' -> 'ResNet-20' (other labels as they are)."""
    for prefix, name in (("plain", "plain-"), ("resnet", "ResNet-")):
        if label.startswith(prefix) and label[len(prefix):].isdigit():
            return name + label[len(prefix):]
    return label


def _valid_parts(spec: stats.Claim, v: stats.Verdict, looks: int,
                 plateaued: dict[str, bool],
                 checks: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """Which of the intervals' decisions stand when some nets had not plateaued; returns the
    claim's status and one note per part that lost its decision.

    Assumption (He et al.'s constant-rate stretch, the residual recipe's): a net still
    learning by the doubling test has a plateau error at or below its current training error
    (at a constant rate the training error only falls further), and a net at chance may still
    start, so it counts as not plateaued too. Each part reads "error(A) - error(B) > 0" (A the
    settings weighted +, B those weighted -). So "shown" (A trains worse) stands when every A
    had plateaued, whatever B's state (B's plateau is no higher than its error now); "refuted"
    (A trains better) stands when every B had plateaued; an interval across zero is
    "undecided" only when both had. A part whose decision does not stand is too short, and the
    claim is recombined as stats.decide combines it (ALL with a guard): held when every
    required part is shown and stands and the guard is not refuted where it stands; did not
    hold when some part is refuted where it stands; too short while a part lost its decision;
    undecided otherwise. So "did not hold" here implies stats' "did not hold", and "held"
    implies every required part shown at its own one-sided level (intersection-union, whose
    size does not depend on the guard): the error rates simulated for stats.decide
    (TESTED_FALSE_VERDICT_RATE) stay bounds of these verdicts."""
    lv = stats.levels(spec, looks)
    held, refuted, lost, notes = True, False, False, []
    for c in spec.comparisons:
        p = v.p_values.get(c.name) or {}
        shown = p.get("for") is not None and p["for"] <= lv.shown
        against = p.get("against") is not None and p["against"] <= lv.refuted
        need = [s for s, w in c.weights.items() if (w > 0 if shown else w < 0 if against
                                                     else w != 0)]
        blocked = [s for s in need if not plateaued.get(s, False)]
        what = ("shown" if shown else "refuted" if against else "undecided")
        if blocked:
            lost = True
            who = ", ".join(f"{_net(s)} {checks[s]['status']}" for s in blocked)
            notes.append(f"{'the guard ' if c.guard else ''}{c.name} "
                         f"{'not tested' if c.guard else 'too short'}: {who} "
                         f"(the intervals read {what})")
        refuted = refuted or (against and not blocked)
        held = held and (c.guard or (shown and not blocked))
    if refuted:
        return stats.NOT_HELD, notes
    if held:
        return stats.HELD, notes
    if lost:
        return stats.TOO_SHORT, notes
    return v.status, notes


def _gate(name: str, rows: list[dict[str, Any]], quick: bool) -> tuple[str, str] | None:
    """A status that comes before any statistics: the grid cannot refute the claim (not
    tested), --quick (too short), fewer than two seeds (no verdict)."""
    if name == "filters" and not any(r["setting"]["kernel"] not in (3, 5) for r in rows):
        return (stats.NOT_TESTED, "every kernel run is 3x3 or 5x5, so nothing here could "
                "refute \u201cusually 3x3 or 5x5\u201d (the full grid adds 7x7).")
    if name == "depth":
        depths = {r["setting"]["depth"] for r in rows}
        if not {1, 4} <= depths or not any(d > 4 for d in depths):
            return (stats.NOT_TESTED, "the claim is about 1 to 4 layers against deeper nets; "
                    f"depths run: {', '.join(map(str, sorted(depths)))}.")
    if name == "pooling" and len({r["setting"]["pool"] for r in rows}) < 2:
        return (stats.NOT_TESTED, "only one pooling size was run.")
    if name == "residual" and len({_depth(r) for r in rows}) < 2:
        return (stats.NOT_TESTED, "one depth only: degradation needs a shallower and a deeper "
                "net.")
    if quick:
        return (stats.TOO_SHORT, "--quick trains each net for seconds on a few images; the "
                "table shows the plumbing, not an answer.")
    if max((r["seeds"] for r in rows), default=0) < 2:
        return (stats.NO_VERDICT, "one seed per setting gives no interval, so no verdict.")
    return None


# Each claim: (its stats.Claim, the per-seed samples by setting label, a function from the
# decided Verdict to the sentence). The comparisons follow the claim's words, fixed before any
# result is seen; which settings exist decides only which comparisons can be made.


def _text(v: stats.Verdict, name: str, unit: str = " points", digits: int = 1) -> str:
    iv = v.intervals.get(name)
    return "no interval" if iv is None else iv.text(unit, digits)


def _depth_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "depth")
    deeper = [d for d in by if d > 4]
    if 1 not in by or 4 not in by or not deeper:
        return None
    deep = max(deeper)
    d1, d4, dd = by[1]["label"], by[4]["label"], by[deep]["label"]
    # per-layer gain 1->4 minus per-layer gain 4->deep: (a4-a1)/3 - (ad-a4)/(deep-4)
    w = 1 / (deep - 4)
    spec = stats.Claim("depth", (
        stats.Comparison.diff("gain_1_to_4", d4, d1),
        stats.Comparison("gain_per_layer_drop", {d1: -1 / 3, d4: 1 / 3 + w, dd: -w})),
        combine=stats.ALL)
    late = stats.contrast([by[4]["test"], by[deep]["test"]], [-w, w])

    def words(v: stats.Verdict) -> str:
        # the per-layer gain beyond 4 layers: reported beside the verdict, not a part of it
        # (the claim is the rise and the fall)
        if late is not None:
            v.intervals[f"gain_per_layer_4_to_{deep}"] = late
        gain = v.intervals["gain_1_to_4"]
        return (f"from 1 to 4 layers test accuracy changed {gain.text()}, i.e. "
                f"{gain.estimate / 3:+.2f} points per layer; from 4 to {deep} layers "
                f"{late.text(' points per layer', 2) if late else 'no interval'}; the gain per "
                f"layer fell by {_text(v, 'gain_per_layer_drop', ' points', 2)}. Held when both "
                f"the rise and the fall of the gain lie outside the noise ({v.rule}).")

    samples = {r["label"]: r["test"] for r in (by[1], by[4], by[deep])}
    return spec, samples, words


def _filters_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "kernel")
    if 7 not in by or not {3, 5} & set(by):
        return None
    # "filters are usually 3x3 or 5x5": either beating 7x7 shows it (ANY, Holm over the two);
    # it is refuted only when 7x7 beats both.
    kernels = [k for k in (3, 5) if k in by]
    spec = stats.Claim("filters", tuple(
        stats.Comparison.diff(f"{k}x{k}_minus_7x7", by[k]["label"], by[7]["label"])
        for k in kernels), combine=stats.ANY)
    samples = {by[k]["label"]: by[k]["test"] for k in (*kernels, 7)}

    def words(v: stats.Verdict) -> str:
        return ("at an equal parameter budget, " + "; ".join(
            f"{k}x{k} minus 7x7: {_text(v, f'{k}x{k}_minus_7x7')}" for k in kernels)
            + f" (held when 3x3 or 5x5 beats 7x7 outside the noise, Holm-adjusted for the two "
            f"chances; did not hold when 7x7 beats both; {v.rule}).")

    return spec, samples, words


def _pooling_claim(rows):
    ok = [r for r in rows if r["seeds"] >= 2]
    two = [r for r in ok if r["setting"]["pool"] == 2]
    four = [r for r in ok if r["setting"]["pool"] == 4]
    if not two or not four:
        return None
    # "pooling is usually 2x2 (4x4 for large inputs)", on small inputs: 2x2 pooling, averaged
    # over the kinds run, against 4x4 likewise. The contrast is fixed by the grid, never by
    # which setting came out best (the winner's curse).
    weights = {r["label"]: 1 / len(two) for r in two} | {r["label"]: -1 / len(four)
                                                         for r in four}
    spec = stats.Claim("pooling", (stats.Comparison("2x2_minus_4x4", weights),))
    samples = {r["label"]: r["test"] for r in (*two, *four)}

    def listed(group: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['label']} {_pct(r)}" for r in group)

    def words(v: stats.Verdict) -> str:
        return (f"on 32x32 inputs (small, so the claim expects 2x2) the mean of the 2x2 "
                f"settings ({listed(two)}) minus the mean of the 4x4 ones ({listed(four)}): "
                f"{_text(v, '2x2_minus_4x4')}. Large inputs, where the claim suggests 4x4, "
                f"are not tested ({v.rule}).")

    return spec, samples, words


def _depth(r: dict[str, Any]) -> int:
    return int(r["setting"]["model"].removeprefix("plain").removeprefix("resnet"))


def _residual_claim(rows):
    by = {r["setting"]["model"]: r for r in rows if r["seeds"] >= 2}
    depths = sorted({_depth(r) for r in rows})
    lo, hi = depths[0], depths[-1]
    names = [f"plain{lo}", f"plain{hi}", f"resnet{lo}", f"resnet{hi}"]
    if any(n not in by or len(by[n]["train"]) < 2 for n in names):
        return None
    # Training error, in points. Fig. 6's two panels: the deeper plain net trains worse
    # (degradation) and the ResNet of that depth trains better than it (the shortcuts); both
    # must be shown (ALL). The deeper ResNet must not train worse than the shallower one (He et
    # al.: it trains better; a tie does not refute it here): a guard, refuted, never required.
    label = {n: by[n]["label"] for n in names}
    spec = stats.Claim("residual", (
        stats.Comparison.diff("degradation", label[f"plain{hi}"], label[f"plain{lo}"]),
        stats.Comparison.diff("shortcuts", label[f"plain{hi}"], label[f"resnet{hi}"]),
        stats.Comparison.diff("resnet_deeper_gain", label[f"resnet{lo}"], label[f"resnet{hi}"],
                              guard=True)), combine=stats.ALL)
    samples = {label[n]: [100 - a for a in by[n]["train"]] for n in names}

    def words(v: stats.Verdict) -> str:
        return (f"training error (on {TRAIN_EVAL:,} training images, without augmentation) of "
                f"plain-{hi} minus plain-{lo}: {_text(v, 'degradation')} (degradation); "
                f"plain-{hi} minus ResNet-{hi}: {_text(v, 'shortcuts')} (the shortcuts); "
                f"ResNet-{lo} minus ResNet-{hi}: {_text(v, 'resnet_deeper_gain')} (positive: "
                "the deeper ResNet trains better). Held when the deeper plain net trains worse "
                "and the ResNet of its depth better, outside the noise, and the deeper ResNet "
                f"is not shown to train worse than the shallower ({v.rule}).")

    return spec, samples, words


CLAIMS = {"depth": _depth_claim, "filters": _filters_claim, "pooling": _pooling_claim,
          "residual": _residual_claim}


def _times(log10_ratio: float) -> str:
    """10 ** log10_ratio as '3.16x'. Past float's range (a norm at GRAD_FLOOR and a wide
    interval can put a bound at 10^400) as '1e+400x' rather than an OverflowError."""
    if abs(log10_ratio) > 300:
        return f"1e{log10_ratio:+.0f}x"
    return f"{10 ** log10_ratio:.3g}x"


def gradient_verdict(rows: list[dict[str, Any]]) -> stats.Verdict:
    """"The derivative going to zero", over every seed: the smallest per-layer gradient norm
    after the first epoch, plain against ResNet at the deepest depth, compared on a log10
    scale (norms spread over orders of magnitude); held when the plain net's is lower outside
    the noise."""
    depths = sorted({_depth(r) for r in rows})
    hi = depths[-1] if depths else None
    by = {r["setting"]["model"]: r for r in rows}
    plain, res = by.get(f"plain{hi}"), by.get(f"resnet{hi}")

    def lows(r) -> list[float]:
        return [log10_norm(min(g)) for g in (r or {}).get("grad_epoch1") or [] if g]

    p, q = lows(plain), lows(res)
    if len(p) < 2 or len(q) < 2:
        return stats.Verdict(stats.NO_VERDICT, "the gradient norms need two or more seeds of "
                             f"plain-{hi} and ResNet-{hi}.")
    floor = log10_norm(0.0)
    if all(x == floor for x in p):
        # Every seed of the plain net lost a layer's gradient entirely (read at the float32
        # floor): a bound known exactly, not a spread of zero in an estimate, so ResNet's
        # seeds alone carry the noise (a one-sample interval above the floor) rather than
        # Welch's "no verdict at zero spread" (stats rule 5), which would say nothing exactly
        # where the vanishing is total.
        gap = stats.mean_interval([x - floor for x in q])
    else:
        gap = stats.difference(q, p)  # log10(ResNet's smallest) - log10(plain's smallest)
    init = [g[0] / max(g[-1], GRAD_FLOOR) for g in plain.get("grad_init") or [] if g]
    sentence = (f"after the first epoch the smallest per-layer gradient norm of ResNet-{hi} is "
                f"{_times(gap.estimate)} plain-{hi}'s (95% CI {_times(gap.low)} to "
                f"{_times(gap.high)} over {len(p)} seeds; held when above 1x outside the "
                "noise)")
    if init:
        sentence += (f"; at initialisation plain-{hi}'s first conv gets {min(init):.3g}x to "
                     f"{max(init):.3g}x its last conv's gradient")
    return stats.Verdict(stats.judge([gap]), sentence + ".", {"log10_resnet_over_plain": gap})
