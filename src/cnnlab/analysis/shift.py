"""Local connectivity and weight sharing, shown: shift a photo, and see whose maps shift with it.

Three layers read the same grey photo (size x size pixels) and write `channels` maps of the same
size:
  convolution         k x k windows, one filter shared by every position;
  locally-connected   the same k x k windows, its own filter at every position
                      (models/layers.py LocallyConnected2d);
  dense               every output unit connected to every pixel.
The photo is then moved by (dy, dx) pixels, as a camera would move: a window of a larger image
taken `shift` pixels up and to the left, so no content wraps round. Each layer's maps of the moved
photo are shifted back by (dy, dx) and compared with its maps of the original, away from the
borders (where the moved photo shows new content and the padding differs). A convolution gives
the same maps, to float rounding: it is shift-equivariant because its weights are the same
everywhere. The locally-connected and dense layers give different maps: each position has its
own weights, so the same pattern at another place is weighed differently.

Weights are seeded random (PyTorch's default initialisation): equivariance is a property of the
architecture, not of trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnlab.models.layers import LocallyConnected2d
from cnnlab.runs import save_figure


@dataclass(frozen=True)
class ShiftSetup:
    size: int = 48  # pixels per side of the photo the layers read (dense: 2304 -> 4608 units)
    channels: int = 2  # output maps per layer
    kernel: int = 5  # window side, pixels; padding kernel // 2 keeps the size
    shift: tuple[int, int] = (3, 5)  # (down, right) pixels the photo moves
    seed: int = 0

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def margin(self) -> int:
        """Border left out of the comparison: the padding plus the largest shift."""
        return self.padding + max(abs(s) for s in self.shift)


def build_layers(setup: ShiftSetup) -> dict[str, nn.Module]:
    """The three layers, seeded; each maps (N, 1, size, size) to (N, channels, size, size)."""
    torch.manual_seed(setup.seed)
    s, c, k, p = setup.size, setup.channels, setup.kernel, setup.padding
    conv = nn.Conv2d(1, c, k, padding=p)
    local = LocallyConnected2d(1, c, (s, s), k, padding=p)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(s * s, c * s * s), nn.Unflatten(1, (c, s, s)))
    return {"convolution": conv, "locally-connected": local, "dense": dense}


def photo_pair(image: np.ndarray, setup: ShiftSetup) -> tuple[np.ndarray, np.ndarray]:
    """(original, moved) grey crops of `image` (H, W) float, each size x size; the moved one
    shows the scene `shift` pixels further down and right, i.e. moved[i, j] = original[i - dy,
    j - dx] wherever both exist."""
    dy, dx = setup.shift
    s = setup.size
    oy, ox = max(dy, 0), max(dx, 0)  # where the original window starts in `image`
    if image.shape[0] < s + abs(dy) or image.shape[1] < s + abs(dx):
        raise ValueError(f"image {image.shape} too small for {s} px plus a {setup.shift} shift")
    original = image[oy:oy + s, ox:ox + s]
    moved = image[oy - dy:oy - dy + s, ox - dx:ox - dx + s]
    return original, moved


def shift_back(maps: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Move maps (..., H, W) back by `shift`: out[i, j] = maps[i + dy, j + dx] (the rolled-in
    border is never compared)."""
    dy, dx = shift
    return torch.roll(maps, shifts=(-dy, -dx), dims=(-2, -1))


@dataclass(frozen=True)
class ShiftResult:
    kind: str
    difference: float  # mean |maps(moved) shifted back - maps(original)| / mean |maps(original)|
    max_difference: float  # the largest absolute difference, same region
    unaligned: float  # as `difference` without shifting back: how much the maps did move


def measure(layers: dict[str, nn.Module], original: np.ndarray, moved: np.ndarray,
            setup: ShiftSetup) -> tuple[list[ShiftResult], dict[str, torch.Tensor]]:
    """Each layer's equivariance numbers over the interior, and its maps for the figure:
    {kind: (3, channels, size, size) = original, moved shifted back, |difference|}."""
    x = torch.from_numpy(np.stack([original, moved])[:, None].astype(np.float32))
    m = setup.margin
    inner = (..., slice(m, setup.size - m), slice(m, setup.size - m))
    results, maps = [], {}
    with torch.no_grad():
        for kind, layer in layers.items():
            y, y_moved = layer(x)
            back = shift_back(y_moved, setup.shift)
            scale = y[inner].abs().mean().item()
            diff = (back - y)[inner].abs()
            results.append(ShiftResult(
                kind, diff.mean().item() / scale, diff.max().item(),
                (y_moved - y)[inner].abs().mean().item() / scale))
            maps[kind] = torch.stack([y, back, (back - y).abs()])
    return results, maps


def plot(original: np.ndarray, moved: np.ndarray, results: list[ShiftResult],
         maps: dict[str, torch.Tensor], setup: ShiftSetup, path) -> None:
    """One figure: the photo and its moved copy; per layer its first map of the original, of
    the moved photo shifted back, and their difference (interior framed)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(8, 2.4 * (len(maps) + 1)), dpi=100)
    rows = len(maps) + 1
    dy, dx = setup.shift
    for j, (img, title) in enumerate([(original, "photo"),
                                      (moved, f"moved {dy} px down, {dx} px right")]):
        ax = fig.add_subplot(rows, 3, j + 1)
        ax.imshow(img, cmap="gray")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    m, inner = setup.margin, setup.size - 2 * setup.margin
    for r, result in enumerate(results, start=1):
        y = maps[result.kind][:, 0]  # first channel
        lo, hi = y[:2].min().item(), y[:2].max().item()
        titles = [f"{result.kind}: maps of photo", "maps of moved photo, shifted back",
                  f"|difference|: {result.difference:.1e} of the maps"]
        for j in range(3):
            ax = fig.add_subplot(rows, 3, 3 * r + j + 1)
            ax.imshow(y[j].numpy(), cmap="viridis", vmin=0 if j == 2 else lo,
                      vmax=hi - lo if j == 2 else hi)
            ax.add_patch(Rectangle((m - 0.5, m - 0.5), inner, inner, fill=False, color="red",
                                   linewidth=0.8))
            ax.set_title(titles[j], fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"shift a photo: whose maps shift with it? ({setup.kernel}x{setup.kernel} "
                 "windows; red frame: compared region)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, format="png")


def shift_demo(image: np.ndarray, setup: ShiftSetup | None = None
               ) -> tuple[list[ShiftResult], dict[str, torch.Tensor], tuple[np.ndarray, ...]]:
    """The whole demonstration on a grey image (H, W) float in [0, 1], at least size + shift
    pixels per side: the numbers, the maps, and the (original, moved) photo pair."""
    setup = setup or ShiftSetup()
    original, moved = photo_pair(image, setup)
    results, maps = measure(build_layers(setup), original, moved, setup)
    return results, maps, (original, moved)
