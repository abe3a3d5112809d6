"""Head surgery, freezing, BatchNorm handling, gradual stages, the feature cache, augmentation.

Oracles: the original network itself (the body must output exactly what its old classifier
read), torchvision's RandomResizedCrop (same crop for the same random draws), and recomputation
(the cache must return what the body computes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.augment import Augment, TrainImages, augment, crop_box
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.models.features import FeatureCache, compute_features, feature_key
from cnnlab.models.registry import get_spec
from cnnlab.models.transfer import TransferModel, gradual_phases
from cnnlab.progress import Reporter

SMALL = Preprocess(40, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _fc_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize(
    ("name", "classifier"),
    [("resnet18", lambda m: m.fc), ("mobilenet_v3_small", lambda m: m.classifier[3]),
     ("alexnet", lambda m: m.classifier[6]), ("timm/test_efficientnet", lambda m: m.classifier)],
)
def test_body_outputs_what_the_old_classifier_read(name, classifier):
    torch.manual_seed(0)
    model = get_spec(name).builder().eval()
    size = 64 if name != "alexnet" else 96
    x = torch.randn(2, 3, size, size)
    expected = _fc_input(model, classifier(model), x)
    old_head = classifier(model)
    net = TransferModel.from_pretrained(model, num_classes=4).eval()
    with torch.no_grad():
        assert torch.allclose(net.body(x), expected, atol=1e-6)
        assert net(x).shape == (2, 4)
    assert net.width == old_head.in_features
    # The new head starts at zero: every class equally likely.
    assert torch.equal(net.head.weight, torch.zeros(4, net.width))


def test_squeezenet_head_is_refused():
    with pytest.raises(CnnlabError, match="no final 1000-way linear layer"):
        TransferModel.from_pretrained(get_spec("squeezenet1_1").builder(), 3)


def test_one_class_is_refused():
    with pytest.raises(CnnlabError, match="at least 2 classes"):
        TransferModel.from_pretrained(get_spec("resnet18").builder(), 1)


def _net(strategy: str, bn: str = "frozen") -> TransferModel:
    torch.manual_seed(0)
    net = TransferModel.from_pretrained(get_spec("timm/test_efficientnet").builder(), 3)
    return net.set_strategy(strategy, bn)


def _step(net: TransferModel, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(net.param_groups(lr, lr, 0.0), lr=lr)
    net.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def test_freeze_trains_the_head_only_and_keeps_the_body_in_eval_mode():
    net = _net("freeze")
    before = {k: v.clone() for k, v in net.body.state_dict().items()}
    net.head.weight.data.normal_()  # so that gradients reach the head's input side too
    _step(net)
    assert not net.body.training and net.head.training
    assert all(torch.equal(before[k], v) for k, v in net.body.state_dict().items())  # + BN stats
    n_trained = sum(p.numel() for g in net.param_groups(1, 1, 0) for p in g["params"])
    assert n_trained == 3 * (net.width + 1)


def test_finetune_bn_frozen_keeps_imagenet_statistics_but_trains_scale_and_shift():
    net = _net("finetune", bn="frozen")
    net.head.weight.data.normal_()
    bn = next(m for m in net.body.modules() if isinstance(m, nn.BatchNorm2d))
    mean, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    _step(net)
    assert not bn.training and torch.equal(bn.running_mean, mean)
    assert not torch.equal(bn.weight.detach(), weight)


def test_finetune_bn_train_updates_running_statistics():
    net = _net("finetune", bn="train")
    bn = next(m for m in net.body.modules() if isinstance(m, nn.BatchNorm2d))
    mean = bn.running_mean.clone()
    _step(net)
    assert bn.training and not torch.equal(bn.running_mean, mean)


def test_param_groups_give_the_body_its_own_rate_and_no_decay_on_norms():
    net = _net("finetune")
    groups = net.param_groups(lr=1e-3, body_lr=1e-4, weight_decay=0.05)
    body = {id(p) for p in net.body.parameters()}
    for g in groups:
        in_body = {id(p) in body for p in g["params"]}
        assert len(in_body) == 1
        assert g["lr"] == (1e-4 if in_body.pop() else 1e-3)
        assert g["weight_decay"] == (0.05 if g["params"][0].ndim >= 2 else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_gradual_unfreezes_from_the_top():
    net = _net("gradual")
    assert not any(p.requires_grad for p in net.body.parameters())
    top = net.stages[-1]
    net.unfreeze(1)
    trainable = {n for n, p in net.body.named_parameters() if p.requires_grad}
    assert trainable == set(top)
    net.train()
    stem = net.body.get_submodule(net.stages[0][0].rpartition(".")[0])
    assert not stem.training  # frozen stages run in eval mode (no dropout / drop-path)
    net.unfreeze(len(net.stages))
    assert all(p.requires_grad for p in net.body.parameters())


@pytest.mark.parametrize(
    ("stages", "epochs", "expected"),
    [(5, 8, [0, 0, 2, 2, 3, 3, 5, 5]), (5, 2, [0, 5]), (1, 4, [0, 0, 1, 1]),
     (9, 3, [0, 4, 9])],
)
def test_gradual_phases(stages, epochs, expected):
    assert gradual_phases(stages, epochs) == expected


# ------------------------------------------------------------------------------------ features


def _photos(folder, n: int = 5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_feature_cache_returns_what_the_body_computes_and_skips_the_body_on_a_rerun(tmp_path):
    paths = _photos(tmp_path / "img")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    paths.append(tmp_path / "img" / "broken.png")
    net = _net("freeze")
    cache = FeatureCache(feature_key("x", "w", SMALL, True), root=tmp_path / "cache")
    first = compute_features(net.body, paths, SMALL, cache, Reporter(quiet=True), workers=0)
    assert first.computed == 6 and list(first.bad) == [paths[-1]]
    from cnnlab.data.decode import load_image

    with torch.no_grad():
        oracle = net.body.eval()(torch.stack([load_image(p, SMALL) for p in paths[:-1]]))
    assert torch.allclose(first.rows, oracle, atol=1e-5)

    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the body ran although every photo is cached")

    again = compute_features(Exploding(), paths, SMALL, cache, Reporter(quiet=True), workers=0)
    assert again.computed == 0 and torch.equal(again.rows, first.rows)
    assert again.bad == first.bad  # the broken file is remembered, not decoded again

    # A renamed photo is found by its contents; an edited one is computed again.
    paths[0].rename(tmp_path / "img" / "renamed.png")
    Image.new("RGB", (30, 30), (9, 9, 9)).save(paths[1])
    moved = [tmp_path / "img" / "renamed.png", *paths[1:5]]
    third = compute_features(net.body, moved, SMALL, cache, Reporter(quiet=True), workers=0)
    assert third.computed == 1
    assert torch.equal(third.rows[0], first.rows[0])


def test_feature_key_changes_with_weights_and_preprocessing():
    base = feature_key("m", "abc", SMALL, True)
    assert base == feature_key("m", "abc", SMALL, True)
    other = Preprocess(40, 32, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert len({base, feature_key("m", "abd", SMALL, True), feature_key("m", "abc", other, True),
                feature_key("m", "abc", SMALL, False), feature_key("n", "abc", SMALL, True)}) == 5


# ------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("seed", range(5))
def test_crop_box_draws_as_torchvision_does(seed):
    from torchvision.transforms import RandomResizedCrop

    img = Image.new("RGB", (341, 256))
    torch.manual_seed(seed)
    expected = RandomResizedCrop.get_params(img, [0.25, 1.0], [3 / 4, 4 / 3])
    got = crop_box(341, 256, (0.25, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
    assert got == expected


def test_augment_matches_torchvision_resized_crop():
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    g = torch.Generator().manual_seed(3)
    out = augment(img, SMALL, Augment(flip=0.0), g)
    top, left, h, w = crop_box(70, 50, (0.25, 1.0), (3 / 4, 4 / 3),
                               torch.Generator().manual_seed(3))
    ref = TF.resized_crop(img, top, left, h, w, [32, 32], antialias=True)
    ref = TF.normalize(TF.to_tensor(ref), SMALL.mean, SMALL.std)
    assert torch.allclose(out, ref, atol=1e-6)


def test_train_images_are_reproducible_per_seed_and_epoch(tmp_path):
    paths = _photos(tmp_path, 2)
    ds = TrainImages(paths, [0, 1], SMALL, Augment(), seed=0)
    a = ds[0][0]
    assert torch.equal(a, TrainImages(paths, [0, 1], SMALL, Augment(), seed=0)[0][0])
    ds.epoch = 1
    assert not torch.equal(a, ds[0][0])
    plain = TrainImages(paths, [0, 1], SMALL, None)
    from cnnlab.data.decode import load_image

    assert torch.equal(plain[1][0], load_image(paths[1], SMALL)) and plain[1][1] == 1
