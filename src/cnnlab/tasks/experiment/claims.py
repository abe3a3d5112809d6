"""The verdicts on the lab's claims, by the rule of `analysis/stats.py`: what comes before any
statistics (`_gate`: not tested, too short, one seed), one function per claim (`CLAIMS`: its
contrasts, status and sentence), "too short to decide" where a setting was still learning, and
the residual study's gradient verdict."""

from __future__ import annotations

from typing import Any

from cnnlab.analysis import stats
from cnnlab.tasks.experiment.designs import TRAIN_EVAL
from cnnlab.tasks.experiment.learning import GRAD_FLOOR, log10_norm


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {r["setting"][key]: r for r in rows}


def _pct(r: dict[str, Any], which: str = "test") -> str:
    m = r[f"{which}_mean"]
    return "-" if m is None else f"{m:.1f}%"


def verdict(name: str, rows: list[dict[str, Any]], quick: bool = False,
            excluded: list[str] | None = None) -> stats.Verdict:
    """The lab's claim against these rows, by the rule of `analysis/stats.py`."""
    excluded = list(excluded or [])
    gate = _gate(name, rows, quick)
    if gate is not None:
        return stats.Verdict(gate[0], gate[1], excluded=excluded)
    claim = CLAIMS[name](rows)
    if claim is None:
        return stats.Verdict(stats.NO_VERDICT, "the settings the claim compares did not all "
                             "finish with two or more seeds.", excluded=excluded)
    status, sentence, intervals, involved = claim
    # A setting is still learning when most of its seeds are: one seed just over the plateau
    # rule (a heuristic, PLATEAU_SHARE) does not veto what the others show; every such trial
    # is still marked in the table.
    learning = [r["label"] for r in rows
                if r["label"] in involved and 2 * r["still_learning"] > r["seeds"]]
    if learning and status != stats.UNDECIDED:
        sentence = (f"{', '.join(learning)} had not stopped learning at the end of "
                    f"{'its' if len(learning) == 1 else 'their'} runs (marked in the table), so "
                    f"the comparison may still change; the intervals would read \u201c{status}"
                    f"\u201d: {sentence}")
        status = stats.TOO_SHORT
    return stats.Verdict(status, sentence, intervals, excluded)


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


def _depth_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "depth")
    deeper = [d for d in by if d > 4]
    if 1 not in by or 4 not in by or not deeper:
        return None
    deep = max(deeper)
    a1, a4, ad = by[1]["test"], by[4]["test"], by[deep]["test"]
    gain = stats.difference(a4, a1)
    # per-layer gain 1->4 minus per-layer gain 4->deep: (a4-a1)/3 - (ad-a4)/(deep-4)
    w = 1 / (deep - 4)
    drop = stats.contrast([a1, a4, ad], [-1 / 3, 1 / 3 + w, -w])
    late = stats.contrast([a4, ad], [-w, w])
    status = stats.judge([gain, drop])
    sentence = (f"from 1 to 4 layers test accuracy changed {gain.text()}, i.e. "
                f"{gain.estimate / 3:+.2f} points per layer; from 4 to {deep} layers "
                f"{late.text(' points per layer', 2)}; the gain per layer fell by "
                f"{drop.text(' points', 2)}. Held when both the rise and the fall of the gain "
                "lie outside the noise.")
    return status, sentence, {"gain_1_to_4": gain, "gain_per_layer_drop": drop,
                              f"gain_per_layer_4_to_{deep}": late}, \
        [by[d]["label"] for d in (1, 4, deep)]


def _filters_claim(rows):
    by = _by([r for r in rows if r["seeds"] >= 2], "kernel")
    if 7 not in by or not {3, 5} & set(by):
        return None
    gaps = {k: stats.difference(by[k]["test"], by[7]["test"]) for k in (3, 5) if k in by}
    signs = [g.sign() for g in gaps.values()]
    if any(s > 0 for s in signs):
        status = stats.HELD
    elif all(s < 0 for s in signs):
        status = stats.NOT_HELD
    else:
        status = stats.UNDECIDED
    sentence = ("at an equal parameter budget, " + "; ".join(
        f"{k}x{k} minus 7x7: {g.text()}" for k, g in gaps.items())
        + " (held when 3x3 or 5x5 beats 7x7 outside the noise, did not hold when 7x7 beats "
        "both).")
    return status, sentence, {f"{k}x{k}_minus_7x7": g for k, g in gaps.items()}, \
        [r["label"] for r in by.values()]


def _pooling_claim(rows):
    ok = [r for r in rows if r["seeds"] >= 2]
    two = [r for r in ok if r["setting"]["pool"] == 2]
    four = [r for r in ok if r["setting"]["pool"] == 4]
    if not two or not four:
        return None
    b2 = max(two, key=lambda r: r["test_mean"])
    b4 = max(four, key=lambda r: r["test_mean"])
    gap = stats.difference(b2["test"], b4["test"])
    sentence = (f"on 32x32 inputs (small, so the claim expects 2x2) the best 2x2 pooling "
                f"({b2['label']}, {_pct(b2)}) minus the best 4x4 ({b4['label']}, {_pct(b4)}): "
                f"{gap.text()}. Large inputs, where the claim suggests 4x4, are not tested.")
    return stats.judge([gap]), sentence, {"best_2x2_minus_best_4x4": gap}, \
        [b2["label"], b4["label"]]


def _depth(r: dict[str, Any]) -> int:
    return int(r["setting"]["model"].removeprefix("plain").removeprefix("resnet"))


def _residual_claim(rows):
    by = {r["setting"]["model"]: r for r in rows if r["seeds"] >= 2}
    depths = sorted({_depth(r) for r in rows})
    lo, hi = depths[0], depths[-1]
    names = [f"plain{lo}", f"plain{hi}", f"resnet{lo}", f"resnet{hi}"]
    if any(n not in by or len(by[n]["train"]) < 2 for n in names):
        return None
    err = {n: [100 - a for a in by[n]["train"]] for n in names}
    degradation = stats.difference(err[f"plain{hi}"], err[f"plain{lo}"])
    shortcuts = stats.difference(err[f"plain{hi}"], err[f"resnet{hi}"])
    res_deeper = stats.difference(err[f"resnet{lo}"], err[f"resnet{hi}"])  # > 0: deeper better
    # Fig. 6's two panels: the deeper plain net trains worse (degradation) and the ResNet of
    # that depth trains better than it; the deeper ResNet must not train worse than the
    # shallower one (He et al.: it trains better; a tie does not refute it here).
    status = stats.judge([degradation, shortcuts])
    if status != stats.NOT_HELD and res_deeper.sign() < 0:
        status = stats.NOT_HELD
    sentence = (f"training error (on {TRAIN_EVAL:,} training images, without augmentation) of "
                f"plain-{hi} minus plain-{lo}: {degradation.text()} (degradation); plain-{hi} "
                f"minus ResNet-{hi}: {shortcuts.text()} (the shortcuts); ResNet-{lo} minus "
                f"ResNet-{hi}: {res_deeper.text()} (positive: the deeper ResNet trains better). "
                "Held when the deeper plain net trains worse, the ResNet of its depth better, "
                "and the deeper ResNet not worse than the shallower.")
    return status, sentence, {"degradation": degradation, "shortcuts": shortcuts,
                              "resnet_deeper_gain": res_deeper}, [by[n]["label"] for n in names]


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
