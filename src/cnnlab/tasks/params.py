"""`cnnlab params`: per-layer parameters and MACs, family summaries, weight sharing in numbers.

The result is one JSON-able dict with a stable, documented schema (README, "JSON schema"):

    {"schema": "cnnlab.params/1", "convention": "...",
     "models": [{"name", "options", "input_shape", "total_params", "trainable_params",
                 "frozen_params", "macs", "flops", "summary": {"depth", "block", "stages"},
                 "layers": [{"name", "type", "output_shape", "kernel", "stride", "weights",
                             "biases", "params", "macs"}],
                 "sharing": [...] (with --sharing)}],
     "layer": {...} (with --layer),
     "shift_demo": {"image", "size", "kernel", "channels", "shift", "margin", "figure",
                    "layers": [{"kind", "difference", "max_difference", "unaligned"}]}
                   (with --demo IMAGE; analysis/shift.py)}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.analysis.family import summarize
from cnnlab.analysis.profile import ModelProfile, parse_shape, profile_model, rows_at_depth
from cnnlab.analysis.sharing import Connectivity, ConvGeometry, compare, model_sharing, parse_layer
from cnnlab.errors import CnnlabError
from cnnlab.models.meta import build_on_meta
from cnnlab.models.registry import create_model, get_spec
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir

SCHEMA = "cnnlab.params/1"
CONVENTION = (
    "params = weights + biases; MACs = multiply-accumulates of one forward pass for one input "
    "(conv, linear and attention arithmetic; bias adds, norms, activations and pooling not "
    "counted); FLOPs = 2 x MACs"
)


@dataclass(frozen=True)
class ParamsConfig:
    models: tuple[str, ...] = ()
    input: str | None = None  # "CxHxW"; default: each model's own input size
    depth: int | None = None  # group rows by module path depth; None: every layer
    summary: bool = False  # one row per model instead of per-layer tables
    sharing: bool = False  # conv vs locally-connected vs dense for every conv layer
    layer: str | None = None  # a single layer to compare, e.g. "conv 3x224x224 -> 96 k11 s4 p2"
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. {"groups": 2}
    demo: str | None = None  # a photo for the shift demonstration (analysis/shift.py)

    def __post_init__(self) -> None:
        if not self.models and self.layer is None and self.demo is None:
            raise CnnlabError("give at least one MODEL, --layer SPEC or --demo IMAGE")
        if self.depth is not None and self.depth < 0:
            raise CnnlabError("--depth must be 0 or more")
        if self.input is not None:
            parse_shape(self.input)  # validates early, with one clear line


def _connectivity_json(c: Connectivity, base: Connectivity) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "meaning": c.meaning,
        "weights": c.weights,
        "biases": c.biases,
        "params": c.params,
        "macs": c.macs,
        "params_vs_conv": c.params / base.params,
    }


def layer_comparison(g: ConvGeometry) -> dict[str, Any]:
    conv, local, dense = compare(g)
    return {
        "geometry": asdict(g),
        "input_shape": [g.in_channels, g.height, g.width],
        "output_shape": [g.out_channels, g.out_height, g.out_width],
        "connectivity": [_connectivity_json(c, conv) for c in (conv, local, dense)],
    }


def _model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    spec = get_spec(name)
    return {k: v for k, v in options.items() if k in spec.options}


def inspect_model(name: str, config: ParamsConfig) -> dict[str, Any]:
    spec = get_spec(name)
    options = _model_options(name, config.options)
    model = build_on_meta(lambda: create_model(name, **options))
    shape = parse_shape(config.input) if config.input else spec.default_input
    label = spec.name + "".join(f" {k}={v}" for k, v in sorted(options.items()))
    profile: ModelProfile = profile_model(model, shape, name=label)
    family = summarize(model)
    macs = profile.total_macs
    result: dict[str, Any] = {
        "name": spec.name,
        "label": label,
        "source": spec.source,
        "options": options,
        "input_shape": list(shape),
        "total_params": profile.total_params,
        "trainable_params": profile.trainable_params,
        "frozen_params": profile.frozen_params,
        "macs": macs,
        "flops": 2 * macs,
        "macs_outside_layers": profile.unattributed_macs,
        "summary": {"depth": family.depth, "block": family.block, "stages": list(family.stages)},
        "layers": [
            {
                "name": r.name,
                "type": r.type,
                "output_shape": list(r.output_shape),
                "kernel": list(r.kernel) if r.kernel else None,
                "stride": list(r.stride) if r.stride else None,
                "weights": r.weights,
                "biases": r.biases,
                "params": r.params,
                "macs": r.macs,
            }
            for r in rows_at_depth(profile, config.depth)
        ],
    }
    if config.sharing:
        result["sharing"] = [
            {"name": s.name, **layer_comparison(s.geometry)} for s in model_sharing(profile)
        ]
    return result


def run_params(config: ParamsConfig) -> dict[str, Any]:
    """Everything `cnnlab params` reports, as one JSON-able dict (schema in the module doc)."""
    unused = set(config.options) - {
        k for name in config.models for k in get_spec(name).options
    }
    if unused:
        raise CnnlabError(
            f"option(s) {', '.join(sorted(unused))} apply to none of {', '.join(config.models)}"
        )
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "convention": CONVENTION,
        "models": [inspect_model(name, config) for name in config.models],
    }
    if config.layer is not None:
        result["layer"] = {"spec": config.layer, **layer_comparison(parse_layer(config.layer))}
    return result


def shift_demonstration(image: str, figure: Path) -> dict[str, Any]:
    """Conv vs locally-connected vs dense on a photo and its shifted copy (analysis/shift.py):
    the numbers, and the figure written to `figure`."""
    import numpy as np

    from cnnlab.analysis.shift import ShiftSetup, plot, shift_demo
    from cnnlab.data.decode import BadImage, load_pixels
    from cnnlab.data.preprocess import Preprocess

    setup = ShiftSetup()
    side = setup.size + max(abs(s) for s in setup.shift)
    grey_scale = Preprocess(side, side, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    try:
        pixels = load_pixels(Path(image).expanduser(), grey_scale)
    except BadImage as exc:
        raise CnnlabError(f"--demo {image}: {exc}") from None
    # ITU-R BT.601 luma: one grey channel keeps the dense layer at 2304 x 4608 weights.
    grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    results, maps, (original, moved) = shift_demo(grey, setup)
    plot(original, moved, results, maps, setup, figure)
    return {
        "image": image, "size": setup.size, "kernel": setup.kernel, "channels": setup.channels,
        "shift": list(setup.shift), "margin": setup.margin, "figure": figure.name,
        "layers": [asdict(r) for r in results],
    }


def run(config: ParamsConfig, run_dir: RunDir, reporter: Reporter | None = None) -> dict[str, Any]:
    """The task signature: profile the models and save config, environment and results."""
    result = run_params(config)
    if config.demo is not None:
        result["shift_demo"] = shift_demonstration(config.demo, run_dir.file("shift_demo.png"))
    run_dir.save_config(config)
    run_dir.save_environment()
    run_dir.save_results(result)
    return result
