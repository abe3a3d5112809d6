"""Evaluation passes measure a copy of the model with BatchNorm folded into the convolution
before it (tasks/train/measure.py `fold_batchnorm`): the same logits as PyTorch's own eval-mode
forward within fp32 rounding, the model itself untouched, and no fold where it would change
the numbers (train mode, bf16 autocast)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import create_model
from cnnlab.tasks.train import measure


def _trained_plain_cnn(depth: int = 4) -> nn.Module:
    """A plain-cnn with BatchNorm statistics and affine parameters away from their init."""
    torch.manual_seed(0)
    model = create_model("plain-cnn", depth=depth, width=8).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_folded_copy_computes_the_same_logits_without_batchnorm():
    model = _trained_plain_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = measure.fold_batchnorm(model)
    assert folded is not model
    # Every BatchNorm after a conv is gone (the oracle below is the unfolded model).
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(64, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    # The model the run goes on training is left as it was.
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_accuracy_equals_the_unfolded_pass():
    model = _trained_plain_cnn(depth=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (600, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (600,), generator=g)
    mean, std = (0.5,) * 3, (0.25,) * 3
    acc, loss = measure.accuracy(model, x, y, mean, std, torch.device("cpu"))
    with torch.no_grad():  # PyTorch's own forward of the same normalised images, one batch
        logits = model(((x.float() / 255) - 0.5) / 0.25)
    assert acc == float((logits.argmax(1) == y).double().mean())
    assert abs(loss - float(nn.functional.cross_entropy(logits, y))) < 1e-5


def test_no_fold_where_it_would_change_the_numbers():
    model = _trained_plain_cnn()
    assert measure.fold_batchnorm(model.train()) is model  # batch statistics
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert measure.fold_batchnorm(model) is model  # bf16 rounds a folded weight otherwise
    # A ResNet (BN inside its blocks' own forward, maybe a stem in a Sequential): whatever
    # is folded, the same logits.
    resnet = create_model("resnet20", width=8).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(measure.fold_batchnorm(resnet)(x), resnet(x), rtol=1e-5,
                              atol=1e-5)
