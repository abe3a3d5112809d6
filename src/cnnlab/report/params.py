"""Terminal tables for `cnnlab params`, rendered from its results dict (nothing else)."""

from __future__ import annotations

from typing import Any

from cnnlab.progress import Reporter


def shape(dims: list[int] | None) -> str:
    return "x".join(map(str, dims)) if dims else ""


def si(n: float) -> str:
    """1135256096 -> '1.135 G' (decimal prefixes, as MAC counts are usually quoted)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3f} {prefix}"
    return f"{n:.0f}"


def kernel(layer: dict[str, Any]) -> str:
    """'11x11 s4' (stride shown when it is not 1; one number when equal in every dimension)."""
    if not layer["kernel"]:
        return ""
    stride = layer["stride"] or []
    if not stride or all(s == 1 for s in stride):
        return shape(layer["kernel"])
    s = str(stride[0]) if len(set(stride)) == 1 else shape(stride)
    return f"{shape(layer['kernel'])} s{s}"


def count(n: int) -> str:
    """Thousands separators; '-' for zero, so layers without parameters read as such."""
    return f"{n:,}" if n else "-"


def render_model(m: dict[str, Any], reporter: Reporter) -> None:
    rows = [
        (
            layer["name"],
            layer["type"],
            shape(layer["output_shape"]),
            kernel(layer),
            count(layer["weights"]),
            count(layer["biases"]),
            count(layer["params"]),
            count(layer["macs"]),
        )
        for layer in m["layers"]
    ]
    if m["macs_outside_layers"]:
        rows.append(("(outside layers)", "functional ops", "", "", "", "", "",
                     f"{m['macs_outside_layers']:,}"))
    reporter.table(
        ["layer", "type", "output", "kernel", "weights", "biases", "params", "MACs"],
        rows,
        title=f"{m['label']}  (input {shape(m['input_shape'])})",
        right_align=["weights", "biases", "params", "MACs"],
    )
    reporter.result(
        f"total {m['total_params']:,} parameters ({m['trainable_params']:,} trainable, "
        f"{m['frozen_params']:,} frozen); {si(m['macs'])}MACs = {si(m['flops'])}FLOPs per input"
    )
    reporter.result()


def render_summary(models: list[dict[str, Any]], reporter: Reporter) -> None:
    reporter.table(
        ["model", "depth", "block", "blocks per stage", "params", "MACs", "input"],
        [
            (
                m["label"],
                m["summary"]["depth"],
                m["summary"]["block"],
                "-".join(map(str, m["summary"]["stages"])) or "-",
                f"{m['total_params']:,}",
                si(m["macs"]),
                shape(m["input_shape"]),
            )
            for m in models
        ],
        right_align=["depth", "params", "MACs"],
    )


def render_comparison(title: str, comparison: dict[str, Any], reporter: Reporter) -> None:
    rows = [
        (
            c["kind"],
            c["meaning"],
            f"{c['weights']:,}",
            f"{c['biases']:,}",
            f"{c['params']:,}",
            f"{c['params_vs_conv']:,.1f}x",
            si(c["macs"]),
        )
        for c in comparison["connectivity"]
    ]
    reporter.table(
        ["layer type", "connectivity", "weights", "biases", "params", "vs conv", "MACs"],
        rows,
        title=title,
        right_align=["weights", "biases", "params", "vs conv", "MACs"],
    )
    reporter.result()


def render_sharing(m: dict[str, Any], reporter: Reporter) -> None:
    rows = []
    totals = [0, 0, 0]
    for s in m["sharing"]:
        conv, local, dense = (c["params"] for c in s["connectivity"])
        totals = [totals[0] + conv, totals[1] + local, totals[2] + dense]
        g = s["geometry"]
        rows.append(
            (
                s["name"],
                f"{shape(s['input_shape'])} -> {shape(s['output_shape'])}",
                f"k{g['kernel']} s{g['stride']} p{g['padding']}"
                + (f" g{g['groups']}" if g["groups"] > 1 else ""),
                f"{conv:,}",
                f"{local:,}",
                f"{dense:,}",
                f"{local / conv:,.0f}x",
                f"{dense / conv:,.0f}x",
            )
        )
    if rows:
        rows.append(
            ("total", "", "", f"{totals[0]:,}", f"{totals[1]:,}", f"{totals[2]:,}",
             f"{totals[1] / totals[0]:,.0f}x", f"{totals[2] / totals[0]:,.0f}x")
        )
    reporter.table(
        ["layer", "input -> output", "geometry", "conv", "locally-connected", "dense",
         "local/conv", "dense/conv"],
        rows,
        title=f"{m['label']}: parameters of each conv layer with and without sharing and locality",
        right_align=["conv", "locally-connected", "dense", "local/conv", "dense/conv"],
    )
    reporter.result()


def render_shift(demo: dict[str, Any], reporter: Reporter) -> None:
    dy, dx = demo["shift"]
    reporter.table(
        ["layer type", "difference after shifting back", "largest difference",
         "difference without shifting back"],
        [(r["kind"], f"{r['difference']:.2e}", f"{r['max_difference']:.2e}",
          f"{r['unaligned']:.2f}") for r in demo["layers"]],
        title=f"shift the photo {dy} px down and {dx} px right: whose maps shift with it? "
        f"({demo['size']}x{demo['size']} grey, {demo['kernel']}x{demo['kernel']} windows, "
        f"{demo['margin']} px border left out; differences relative to the maps' mean size)",
        right_align=["difference after shifting back", "largest difference",
                     "difference without shifting back"],
    )
    reporter.result()


def render(result: dict[str, Any], summary: bool, reporter: Reporter) -> None:
    models = result["models"]
    if summary and models:
        render_summary(models, reporter)
    for m in models:
        if not summary:
            render_model(m, reporter)
        if "sharing" in m:
            render_sharing(m, reporter)
    if "layer" in result:
        layer = result["layer"]
        render_comparison(
            f"{layer['spec']}: output {shape(layer['output_shape'])}", layer, reporter
        )
    if "shift_demo" in result:
        render_shift(result["shift_demo"], reporter)
    reporter.result(f"({result['convention']})")


def table_rows(result: dict[str, Any], summary: bool) -> list[dict[str, Any]]:
    """The run's main table as records with numbers (the API's DataFrame), from the same
    results the tables above print: one row per model with --summary or several models, else
    the one model's layers; without models, the --layer comparison or the shift demo."""
    models = result["models"]
    if models and (summary or len(models) > 1):
        return [{"model": m["label"], "depth": m["summary"]["depth"],
                 "block": m["summary"]["block"],
                 "blocks per stage": "-".join(map(str, m["summary"]["stages"])) or None,
                 "params": m["total_params"], "trainable": m["trainable_params"],
                 "MACs": m["macs"], "input": shape(m["input_shape"])} for m in models]
    if models:
        return [{"layer": r["name"], "type": r["type"], "output": shape(r["output_shape"]),
                 "kernel": kernel(r) or None, "weights": r["weights"], "biases": r["biases"],
                 "params": r["params"], "MACs": r["macs"]} for r in models[0]["layers"]]
    if "layer" in result:
        return [{"layer type": c["kind"], "connectivity": c["meaning"], "weights": c["weights"],
                 "biases": c["biases"], "params": c["params"], "vs conv": c["params_vs_conv"],
                 "MACs": c["macs"]} for c in result["layer"]["connectivity"]]
    if "shift_demo" in result:
        return [{"layer type": r["kind"], "difference after shifting back": r["difference"],
                 "largest difference": r["max_difference"],
                 "difference without shifting back": r["unaligned"]}
                for r in result["shift_demo"]["layers"]]
    return []
