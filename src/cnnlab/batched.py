"""k small CNNs of one architecture trained as one batched model: each kernel does k nets' work.

    nets = BatchedNets.from_models([make_net(seed) for seed in seeds],
                                   lambda m: recipes.make_optimizer(recipe, m),
                                   lr_schedule=recipes.lr_lambda(recipe.schedule, total_steps))
    for epoch in range(epochs):
        for x, y in stack_batches([batches_of(seed)(epoch) for seed in seeds]):
            losses = nets.step(x, y)        # x [k, B, C, H, W], y [k, B] -> losses [k]
    trained = nets.unstack()                # k ordinary nn.Modules, evaluated and saved as today

Why: the experiments' nets (plain-cnn with 16-128 channels, plain/ResNet-20/56 at 8-16-32) are
far too small to keep a CPU's cores busy: per-operation overhead and tiny channel counts leave
oneDNN at a fifth of its fp32 peak (issue 25). Training the seeds of one setting together
multiplies every kernel's work by k at about the same overhead.

Two ways to batch, the same numbers (tests/test_batched.py checks both against one-at-a-time
training); BENCHMARKS.md "batched training" measures them:

- "grouped" (the default, the faster here): one ordinary module in which every conv becomes a
  grouped conv (groups = k: net j's channels are the j-th block of k * C), every BatchNorm one
  over k * C channels (so its batch statistics and running statistics are per net and per
  channel, as the separate nets' are), every Linear a batched matmul, the option-A shortcut pads
  each net's block. Channel-agnostic layers (ReLU, pooling, flatten, the nets' own forward with
  its additions) run as they are. The input [k, B, C, H, W] enters as [B, k * C, H, W]
  (channels-last, the layout oneDNN's grouped convs are fastest in).
- "vmap": `torch.func.functional_call` of the one architecture under `torch.vmap` over the
  stacked parameters, buffers and inputs (the `stack_module_state` recipe); BatchNorm in
  training mode updates its stacked running statistics in place, per net.

Each net keeps its own seed: its own initialisation (the modules given), its own batches (the
caller stacks each seed's own order and augmentation), and its own optimiser state. The
optimiser is built over the batched module's parameters, which keep the template's names and
owning module types (so `recipes.make_optimizer`'s BatchNorm-bias group still finds them); an
elementwise optimiser (SGD with momentum and weight decay, Adam, AdamW) then updates every
element with its own state, so one optimiser over the stacked tensors is exactly k optimisers.
The loss is the sum of the k nets' mean losses: net j's gradient is that of its own loss.
Not supported, as they would couple the nets: a global gradient-norm clip, dropout (one RNG
stream), and layers not listed in `_AGNOSTIC` / `_CONTAINERS` (a clear error says so).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models.resnet_cifar import BasicBlock, CifarResNet, PadShortcut

METHODS = ("grouped", "vmap")
PRECISIONS = ("fp32", "bf16")

# Layers that act on each channel (or each element) alone: k nets' channels side by side pass
# through them unchanged. Exact types only: a subclass may override forward.
_AGNOSTIC = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten)
# Containers whose forward is known to be channel-agnostic (ReLUs, additions, pooling, flatten).
_CONTAINERS = (nn.Sequential, CifarResNet, BasicBlock)


class GroupedLinear(nn.Module):
    """k Linear layers side by side: [B, k * in] -> [B, k * out], net j's block by its own
    weight [out, in] (stored stacked as [k, out, in])."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.k = len(layers)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        bias = [m.bias for m in layers]
        self.bias = (nn.Parameter(torch.stack([b.detach() for b in bias]))
                     if bias[0] is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xs = x.reshape(b, self.k, -1).transpose(0, 1)  # [k, B, in]
        out = torch.bmm(xs, self.weight.transpose(1, 2))  # [k, B, out]
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        return out.transpose(0, 1).reshape(b, -1)


class GroupedPad(nn.Module):
    """Option-A shortcut of k nets: each net's channel block subsampled and zero-padded."""

    def __init__(self, k: int, pad: PadShortcut):
        super().__init__()
        self.k, self.extra, self.stride = k, pad.extra, pad.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if not self.extra:
            return x
        b, kc, h, w = x.shape
        x = F.pad(x.reshape(b, self.k, kc // self.k, h, w), (0, 0, 0, 0, 0, self.extra))
        return x.reshape(b, -1, h, w)


def _conv(layers: list[nn.Conv2d]) -> nn.Conv2d:
    m, k = layers[0], len(layers)
    out = nn.Conv2d(k * m.in_channels, k * m.out_channels, m.kernel_size, stride=m.stride,
                    padding=m.padding, dilation=m.dilation, groups=k * m.groups,
                    bias=m.bias is not None, padding_mode=m.padding_mode,
                    device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in layers]))
        if m.bias is not None:
            out.bias.copy_(torch.cat([c.bias for c in layers]))
    return out


def _batch_norm(layers: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    m, k = layers[0], len(layers)
    out = nn.BatchNorm2d(k * m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                         track_running_stats=m.track_running_stats,
                         device=m.running_mean.device if m.running_mean is not None else None,
                         dtype=m.running_mean.dtype if m.running_mean is not None else None)
    with torch.no_grad():
        for name, t in [*out.named_parameters(recurse=False), *out.named_buffers(recurse=False)]:
            parts = [getattr(b, name) for b in layers]
            if t.ndim == 0:  # num_batches_tracked: one counter, the same for nets stepped alike
                if len({int(p) for p in parts}) > 1:
                    raise CnnlabError("the nets have taken different numbers of BatchNorm steps")
                t.copy_(parts[0])
            else:
                t.copy_(torch.cat(parts))
    return out


_CONVERTERS: dict[type, Callable[[list[Any]], nn.Module]] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batch_norm,
    nn.Linear: GroupedLinear,
    PadShortcut: lambda layers: GroupedPad(len(layers), layers[0]),
}


def _check_same(models: list[nn.Module]) -> None:
    if not models:
        raise CnnlabError("BatchedNets needs at least one model")
    first = models[0]
    shapes = {n: t.shape for n, t in first.state_dict().items()}
    for i, m in enumerate(models[1:], start=1):
        # repr shows every layer's hyper-parameters (kernel, stride, pooling kind, shortcuts).
        if type(m) is not type(first) or repr(m) != repr(first) or shapes != {
                n: t.shape for n, t in m.state_dict().items()}:
            raise CnnlabError(f"model {i} is not the same architecture as model 0: batched "
                              "training needs k copies of one net")
    for name, m in first.named_modules():
        kind = type(m)
        if kind in _CONVERTERS or kind in _AGNOSTIC:
            continue
        if kind not in _CONTAINERS:
            known = sorted(t.__name__ for t in (*_CONVERTERS, *_AGNOSTIC, *_CONTAINERS))
            raise CnnlabError(f"cannot batch layer {name or 'model'} ({kind.__name__}): batched "
                              f"training knows {', '.join(known)}")
        if any(True for _ in m.parameters(recurse=False)) or any(
                True for _ in m.buffers(recurse=False)):
            raise CnnlabError(f"cannot batch {name or 'model'}: a container with its own tensors")


def grouped_module(models: list[nn.Module]) -> nn.Module:
    """One module computing all k nets: input [B, k * C, H, W] -> output [B, k * classes]."""
    _check_same(models)
    net = copy.deepcopy(models[0])
    for name, m in list(net.named_modules()):
        convert = _CONVERTERS.get(type(m))
        if convert is None:
            continue
        layer = convert([other.get_submodule(name) for other in models])
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent), attr, layer)
    return net


def stacked_module(models: list[nn.Module]) -> nn.Module:
    """The template's module tree with every parameter and buffer replaced by the k nets'
    stacked along a new first dimension: a holder for the optimiser and `functional_call`
    under vmap (it cannot run forward itself)."""
    _check_same(models)
    net = copy.deepcopy(models[0])
    for name, m in net.named_modules():
        others = [o.get_submodule(name) for o in models]
        for p in list(m._parameters):
            if m._parameters[p] is not None:
                m._parameters[p] = nn.Parameter(torch.stack([o._parameters[p].detach()
                                                             for o in others]))
        for b in list(m._buffers):
            if m._buffers[b] is not None:
                m._buffers[b] = torch.stack([o._buffers[b] for o in others])
    return net


def _slice(t: torch.Tensor, shape: torch.Size, k: int, j: int) -> torch.Tensor:
    """Net j's part of a batched tensor whose single-net shape is `shape`."""
    if t.ndim == len(shape) + 1:  # stacked: [k, ...]
        return t[j]
    if t.ndim and t.shape[0] == k * shape[0]:  # side by side in dim 0: [k * C, ...]
        return t.chunk(k)[j]
    return t  # shared (a BatchNorm step counter)


class BatchedNets:
    """k nets of one architecture trained in lockstep as one model (module docstring)."""

    def __init__(self, models: list[nn.Module], make_optimizer: Callable[[nn.Module], Any],
                 *, lr_schedule: Callable[[int], float] | None = None, method: str = "grouped",
                 channels_last: bool = True, precision: str = "fp32",
                 label_smoothing: float = 0.0):
        if method not in METHODS:
            raise CnnlabError(f"batching method must be one of {', '.join(METHODS)}, "
                              f"not {method!r}")
        if precision not in PRECISIONS:
            raise CnnlabError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"not {precision!r}")
        self.k, self.method, self.precision = len(models), method, precision
        self.channels_last = channels_last and method == "grouped"
        self.label_smoothing = label_smoothing
        self.lr_schedule = lr_schedule
        self.template = copy.deepcopy(models[0]) if models else None
        if method == "grouped":
            self.net = grouped_module(models)
            if self.channels_last:
                self.net = self.net.to(memory_format=torch.channels_last)
        else:
            self.net = stacked_module(models)
            self._base = copy.deepcopy(models[0]).to("meta")  # the architecture, no storage
        self.net.train()
        self.optimizer = make_optimizer(self.net)
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.steps = 0
        self.last_correct: torch.Tensor | None = None  # [k] top-1 hits of the last step

    @classmethod
    def from_models(cls, models: Iterable[nn.Module], make_optimizer: Callable[[nn.Module], Any],
                    **options: Any) -> BatchedNets:
        """k nets (each built and initialised under its own seed) as one batched model;
        `make_optimizer(module)` builds the optimiser over the batched module's parameters;
        options: lr_schedule (a factor of the step, as engine.fit), method ("grouped" or
        "vmap"), channels_last, precision ("fp32" or "bf16"), label_smoothing."""
        return cls(list(models), make_optimizer, **options)

    def train(self, mode: bool = True) -> BatchedNets:
        self.net.train(mode)
        if self.method == "vmap":
            self._base.train(mode)
        return self

    def eval(self) -> BatchedNets:
        return self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [k, B, classes] of images [k, B, C, H, W] (net j sees x[j])."""
        if x.ndim < 2 or x.shape[0] != self.k:
            raise CnnlabError(f"batched input must be [k={self.k}, B, ...], not "
                              f"{list(x.shape)}")
        k, b = x.shape[:2]
        if self.method == "vmap":
            params = dict(self.net.named_parameters())
            buffers = dict(self.net.named_buffers())

            def one(p, bufs, xi):
                return torch.func.functional_call(self._base, (p, bufs), (xi,))

            return torch.vmap(one)(params, buffers, x)
        if self.channels_last and x.ndim == 5:
            # [k, B, C, H, W] -> memory [B, H, W, k, C]: channels-last [B, k * C, H, W] in one copy.
            x = x.permute(1, 3, 4, 0, 2).contiguous()
            x = x.view(b, *x.shape[1:3], -1).permute(0, 3, 1, 2)
        else:
            x = x.transpose(0, 1).reshape(b, -1, *x.shape[3:])
        out = self.net(x)
        return out.view(b, k, -1).transpose(0, 1)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step of every net on its own batch: x [k, B, ...], y [k, B] (class
        indices). Returns the k nets' mean losses [k] (detached, fp32)."""
        if y.shape[:1] != (self.k,) or y.shape[:2] != x.shape[:2]:
            raise CnnlabError(f"labels {list(y.shape)} do not match images {list(x.shape)}")
        if self.lr_schedule is not None:  # as engine.fit: factor of step, before the step
            factor = self.lr_schedule(self.steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        autocast = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
                    if self.precision == "bf16" else contextlib.nullcontext())
        with autocast:
            logits = self(x)
        k, b = y.shape
        # The loss in fp32 at least (bf16 logits as engine.fit; float64 nets stay float64).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        losses = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1),
                                 reduction="none", label_smoothing=self.label_smoothing)
        losses = losses.view(k, b).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # net j's gradient: that of its own mean loss
        self.optimizer.step()
        self.steps += 1
        self.last_correct = (logits.detach().argmax(-1) == y).sum(1)
        return losses.detach()

    def unstack(self) -> list[nn.Module]:
        """The k nets as ordinary modules of the template's class (copies: training further
        does not change them), in the order given, in training mode as the batch is."""
        state = self.net.state_dict()
        shapes = {n: t.shape for n, t in self.template.state_dict().items()}
        nets = []
        for j in range(self.k):
            m = copy.deepcopy(self.template)
            m.load_state_dict({n: _slice(state[n], shapes[n], self.k, j) for n in shapes})
            nets.append(m.train(self.net.training))
        return nets


def stack_batches(iterators: Iterable[Iterable[tuple[torch.Tensor, torch.Tensor]]]
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each net's own (x, y) batches, zipped into batched ones: x [k, B, ...], y [k, B].
    Stops with the shortest (every seed's epoch has the same number of batches)."""
    for pairs in zip(*iterators, strict=False):
        yield torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
