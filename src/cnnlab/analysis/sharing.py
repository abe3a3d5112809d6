"""Local connectivity and weight sharing, in numbers.

For one convolutional layer, compare the parameters (and MACs) of
  (a) the convolution itself        - local connectivity + weight sharing,
  (b) a locally-connected layer     - the same local windows, one filter per output position
                                      (and one bias per output unit, untied as in DeepFace / Keras),
  (c) a dense (fully-connected) layer from the whole input volume to the same output volume.
(b)/(a) is what sharing saves; (c)/(b) is what locality saves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnnlab.analysis.profile import ModelProfile, parse_shape
from cnnlab.errors import CnnlabError
from cnnlab.models.layers import conv_output_size


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def __post_init__(self) -> None:
        if min(self.in_channels, self.height, self.width, self.out_channels, self.kernel) <= 0:
            raise CnnlabError("layer sizes must be positive")
        if self.stride <= 0 or self.padding < 0 or self.groups <= 0:
            raise CnnlabError("stride and groups must be positive, padding non-negative")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise CnnlabError(
                f"groups={self.groups} must divide both {self.in_channels} input and "
                f"{self.out_channels} output channels"
            )
        if self.out_height <= 0 or self.out_width <= 0:
            raise CnnlabError(
                f"a {self.kernel}x{self.kernel} kernel does not fit a "
                f"{self.height}x{self.width} input with padding {self.padding}"
            )

    @property
    def out_height(self) -> int:
        return conv_output_size(self.height, self.kernel, self.stride, self.padding)

    @property
    def out_width(self) -> int:
        return conv_output_size(self.width, self.kernel, self.stride, self.padding)

    @property
    def output_units(self) -> int:
        return self.out_channels * self.out_height * self.out_width

    @property
    def input_units(self) -> int:
        return self.in_channels * self.height * self.width

    @property
    def fan_in(self) -> int:
        """Inputs one output unit sees: Cin/groups x k x k."""
        return self.in_channels // self.groups * self.kernel * self.kernel


@dataclass(frozen=True)
class Connectivity:
    kind: str  # "convolution", "locally-connected", "dense"
    meaning: str
    weights: int
    biases: int
    macs: int

    @property
    def params(self) -> int:
        return self.weights + self.biases


def compare(g: ConvGeometry) -> list[Connectivity]:
    positions = g.out_height * g.out_width
    conv_w = g.out_channels * g.fan_in
    local_macs = g.output_units * g.fan_in  # conv and locally-connected do the same arithmetic
    return [
        Connectivity("convolution", "local + shared", conv_w, g.out_channels, local_macs),
        Connectivity(
            "locally-connected", "local, not shared", conv_w * positions, g.output_units, local_macs
        ),
        Connectivity(
            "dense",
            "not local, not shared",
            g.input_units * g.output_units,
            g.output_units,
            g.input_units * g.output_units,
        ),
    ]


_SPEC = re.compile(
    r"^\s*(?:conv\s+)?(?P<shape>\d+\s*[x×]\s*\d+\s*[x×]\s*\d+)\s*->\s*(?P<cout>\d+)(?P<rest>.*)$",
    re.IGNORECASE,
)
_OPTION = re.compile(r"^(?P<key>k|s|p|g)(?P<value>\d+)$", re.IGNORECASE)
LAYER_SYNTAX = "conv CxHxW -> COUT kK [sS] [pP] [gG], e.g. 'conv 3x224x224 -> 96 k11 s4 p2'"


def parse_layer(spec: str) -> ConvGeometry:
    """'conv 3x224x224 -> 96 k11 s4 p2' -> ConvGeometry (k: kernel, s: stride, p: padding,
    g: groups; 'conv' is optional)."""
    m = _SPEC.match(spec)
    if not m:
        raise CnnlabError(f"bad layer {spec!r}: expected {LAYER_SYNTAX}")
    c, h, w = parse_shape(re.sub(r"\s+", "", m["shape"]))
    values = {"k": None, "s": 1, "p": 0, "g": 1}
    for token in m["rest"].split():
        opt = _OPTION.match(token)
        if not opt:
            raise CnnlabError(f"bad layer option {token!r} in {spec!r}: expected {LAYER_SYNTAX}")
        values[opt["key"].lower()] = int(opt["value"])
    if values["k"] is None:
        raise CnnlabError(f"layer {spec!r} needs a kernel size, e.g. k3")
    return ConvGeometry(c, h, w, int(m["cout"]), values["k"], values["s"], values["p"], values["g"])


@dataclass(frozen=True)
class LayerSharing:
    name: str
    geometry: ConvGeometry
    conv: Connectivity
    local: Connectivity
    dense: Connectivity


def model_sharing(profile: ModelProfile) -> list[LayerSharing]:
    """The comparison for every square-kernel 2-D convolution a model runs."""
    out = []
    for row in profile.layers:
        if row.type != "Conv2d" or len(row.input_shape) != 3 or row.kernel is None:
            continue
        kh, kw = row.kernel
        sh, sw = row.stride or (1, 1)
        ph, pw = row.padding or (0, 0)
        if kh != kw or sh != sw or ph != pw:
            continue  # the comparison above is for square kernels, strides and padding
        cin, h, w = row.input_shape
        cout = row.output_shape[0]
        g = ConvGeometry(cin, h, w, cout, kh, sh, ph, row.groups)
        conv, local, dense = compare(g)
        out.append(LayerSharing(row.name, g, conv, local, dense))
    return out
