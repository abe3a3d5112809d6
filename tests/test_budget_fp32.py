"""`cnnlab train --budget` on a CPU without bf16 (issue 25 item 2): progressive resizing trains
at the sizes it states, the calibration chooses among the shapes by injected timings on each
kind of CPU, and a prediction that rests on the other kind's curve says so."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cnnlab import budget, hardware
from cnnlab.data.cifar import CifarData
from cnnlab.data.progressive import progressive, side_at
from cnnlab.errors import CnnlabError
from cnnlab.progress import Reporter
from cnnlab.report.train import budget_lines
from cnnlab.runs import RunDir
from cnnlab.tasks.train import TrainConfig, train_one
from cnnlab.tasks.train import calibration as train_calibration

SIZES = ((0.0, 16), (0.5, 24), (0.75, 32))


def test_side_at_follows_the_fractions_of_the_steps():
    # 8 steps: 0-3 at 16 px (from 0), 4-5 at 24 (from 0.5 x 8 = 4), 6-7 at 32 (from 6).
    assert [side_at(SIZES, s, 8) for s in range(8)] == [16] * 4 + [24] * 2 + [32] * 2
    # 4 steps: 0-1 at 16, 2 at 24 (from 2), 3 at 32 (from 3). 3 steps: 0.75 x 3 = 2.25 is
    # never reached, but the last step is always at the last size, the one tested.
    assert [side_at(SIZES, s, 4) for s in range(4)] == [16, 16, 24, 32]
    assert [side_at(SIZES, s, 3) for s in range(3)] == [16, 16, 32]
    assert side_at(((0.0, 20),), 0, 1) == 20
    with pytest.raises(CnnlabError):
        budget.Shape(name="bad", widths=(8, 8, 8), batch_size=8, lr=0.1, curve=((1.0, 50.0),),
                     sizes=((0.5, 16), (0.25, 32)))


def test_progressive_batches_shrink_each_step_and_keep_the_labels():
    x = torch.rand(12, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.arange(12)

    def batches(epoch):
        for i in range(0, 12, 3):
            yield x[i : i + 3], y[i : i + 3]

    # 4 steps an epoch, 8 in all: epoch 0 at 16 px, epoch 1 at 24 then 32.
    got = [(b.shape[-1], tuple(lab.tolist())) for e in (0, 1)
           for b, lab in progressive(batches, SIZES, 4, 8)(e)]
    assert [s for s, _ in got] == [16, 16, 16, 16, 24, 24, 32, 32]
    assert [lab for _, lab in got[:4]] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)]
    # Shrinking a constant image keeps it constant (antialiased averaging, no ringing), and
    # a full-size step is the batch itself.
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(progressive(lambda e: [(flat, y[:1])], ((0.0, 16),), 1, 1)(0)
                          .__next__()[0], torch.full((1, 3, 16, 16), 0.25))
    full = next(iter(progressive(batches, ((0.0, 32),), 4, 8)(0)))[0]
    assert full.data_ptr() == x.data_ptr()


def _tiny_data(n_train=128, n_test=40) -> CifarData:
    g = torch.Generator().manual_seed(0)
    return CifarData(
        train_x=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_y=torch.arange(n_train) % 10,
        test_x=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_y=torch.arange(n_test) % 10, classes=tuple("abcdefghij"),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="synthetic", key="")


def test_progressive_resizing_trains_at_the_stated_sizes(tmp_path, monkeypatch):
    """A real `train_one` of fast-cifar with a progressive shape: 128 images at batch 16 is 8
    steps in one epoch, so the model's training forward passes see 16 px for steps 0-3, 24 px
    for 4-5 and 32 px for 6-7; evaluation (and the test) at the data's 32 px."""
    monkeypatch.setenv("CNNLAB_PRECISION", "fp32")
    shape = budget.Shape(name="tiny-resize", widths=(8, 8, 8), batch_size=16, lr=0.1,
                         curve=((1.0, 50.0),), sizes=SIZES)
    seen = []

    def at_start(model):
        model.register_forward_pre_hook(
            lambda m, args: seen.append((m.training, tuple(args[0].shape))))

    config = TrainConfig(data="synthetic", epochs=1, report=False,
                         recipe_overrides=(("whiten_images", 64), ("tta", "none")))
    r = train_one(config, _tiny_data(), "fast-cifar", 0, RunDir(tmp_path), Reporter(quiet=True),
                  torch.device("cpu"), at_start=at_start, shape=shape)
    assert r["steps"] == 8 and r["batch_size"] == 16
    train = [s for training, s in seen if training]
    assert [s[-1] for s in train] == [16] * 4 + [24] * 2 + [32] * 2
    assert all(s[:2] == (16, 3) for s in train)
    assert {s[-1] for training, s in seen if not training} == {32}


def test_cpu_kind_and_the_other_kinds_note():
    assert train_calibration.cpu_kind(frozenset({"avx2", "avx512f"})) == "fp32-only"
    assert train_calibration.cpu_kind(frozenset({"avx512f", "amx_bf16"})) == "bf16-capable"
    assert budget.QUARTER.curve_precision == "bf16"
    # A bf16 curve predicting an fp32 run: noted, naming both kinds; its own kind: no note.
    note = budget.other_kind_note(budget.QUARTER, "fp32")
    assert note and "measured in bf16" in note and "trains in fp32" in note
    assert budget.other_kind_note(budget.QUARTER, "bf16") is None
    fp32_shape = budget.Shape(name="x", widths=(8, 8, 8), batch_size=8, lr=0.1,
                              curve=((1.0, 50.0),), curve_precision="fp32")
    assert budget.other_kind_note(fp32_shape, "fp32") is None
    assert "measured in fp32" in budget.other_kind_note(fp32_shape, "bf16")
    with pytest.raises(CnnlabError, match="curve_precision"):
        budget.Shape(name="x", widths=(8, 8, 8), batch_size=8, lr=0.1, curve=((1.0, 50.0),),
                     curve_precision="fp16")


def _budget_results(note):
    cand = {"shape": "quarter", "expected_accuracy": 64.4, "epochs": 0.69}
    return {"budget_minutes": 0.95, "runs": [{"budget_seconds": 50.0}],
            "models": [{"model": "fast-cifar", "steps": 67, "epochs_trained": 0.69,
                        "test_accuracy_mean": None}],
            "calibration": [{"model": "fast-cifar", "chosen": "quarter", "seconds": 3.0,
                             "candidates": [cand], "twice_the_budget": [cand],
                             "curve_note": note}]}


def test_the_report_says_when_a_prediction_rests_on_the_other_kinds_curve():
    note = budget.other_kind_note(budget.QUARTER, "fp32")
    assert f"Note: {note}." in budget_lines(_budget_results(note))
    assert not any(line.startswith("Note:") for line in budget_lines(_budget_results(None)))
    # calibration.json written before this change has no note: nothing is said.
    old = _budget_results(None)
    del old["calibration"][0]["curve_note"]
    assert not any(line.startswith("Note:") for line in budget_lines(old))


def _calibrate(monkeypatch, flags, timings, minutes):
    """The real `_calibrate` on a machine with CPU `flags`, each shape's seconds per step
    injected (by its widths), CIFAR-10's sizes of data; returns its calibration.json record."""
    monkeypatch.delenv("CNNLAB_PRECISION", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda *a, **k: frozenset(flags))
    # At 32 px throughout a shape is known by its widths; quarter-resize is the one timed at
    # its sizes (sized_seconds_per_step).
    by_widths = {s.widths: s.name for s in budget.SHAPES if not s.sizes}

    def step_seconds(recipe, *args, **kwargs):
        return timings[by_widths[dict(recipe.model_options)["widths"]]]

    monkeypatch.setattr(train_calibration, "build", lambda *a, **k: (None, None, None))
    monkeypatch.setattr(train_calibration, "seconds_per_step", step_seconds)
    monkeypatch.setattr(train_calibration, "sized_seconds_per_step",
                        lambda *a, **k: timings["quarter-resize"])
    data = SimpleNamespace(train_y=torch.zeros(50_000), test_y=torch.zeros(10_000), val_y=None)
    config = TrainConfig(data="d", budget=minutes)
    return train_calibration._calibrate(config, data, "fast-cifar", torch.device("cpu"),
                                        Reporter(quiet=True))


MACS = {"eighth": 6_840_352, "quarter-resize": 9_659_264, "quarter": 19_887_392,
        "full": 65_431_840}  # per average training image (build.macs_of, sizes weighted)


def _choose(seconds, timings):
    calls = []

    def time_step(shape):
        calls.append(shape.name)
        return timings[shape.name]

    chosen, cands = budget.choose_shape(seconds, time_step, MACS, n_train=50_000,
                                        test_images=0, eval_images=0, eval_every=1,
                                        tta="flip-translate", test_curve=False)
    return chosen, {c.shape: c for c in cands}, calls


# Seconds per step, injected. fp32-only 2-core CPU: the quarter 0.55 s (issue 25's Xeon without
# bf16: 67 steps in a 0.95-minute share), eighth and quarter-resize ~0.47x of it (BENCHMARKS.md,
# one-thread CPU time per image), full ~6x. bf16 CPU (one AMX core, test_train_budget.py):
# quarter 0.43 s, full 1.7 s; the small shapes gain less from AMX (small channel counts), 0.30 s.
FP32_CPU = {"eighth": 0.26, "quarter-resize": 0.26, "quarter": 0.55, "full": 3.3}
BF16_CPU = {"eighth": 0.30, "quarter-resize": 0.30, "quarter": 0.43, "full": 1.7}


def test_calibration_chooses_among_the_fp32_shapes_by_each_kinds_timings():
    e15, r15 = budget.EIGHTH.curve[-1], budget.QUARTER_RESIZE.curve[-1]
    assert e15[0] == r15[0] == 1.5
    # 0.95 minutes, 90% planned: 51.3 s. fp32 CPU: eighth and quarter-resize floor(51.3 / 0.26)
    # = 197 steps x 512 = 2.02 epochs, past their last point (1.5): its value, 69.95% and
    # 71.39% (quarter-resize is timed: its bound's flat 71.39% beats 69.95%). The quarter is
    # timed (its bound, 0.26 / 512 x 19.89 / 6.84 x 0.5 x 512 = 0.378 s, 135 steps, 1.38 epochs,
    # 74.9%, could win) and gets floor(51.3 / 0.55) = 93 steps, 0.952 epochs: 61.96 + 10.99 x
    # 0.352 / 0.6 = 68.41%. full's bound (2.49 s, 20 steps, 0.41 epochs, ~30%) cannot win.
    chosen, cands, calls = _choose(57, FP32_CPU)
    assert calls == ["eighth", "quarter-resize", "quarter"]
    assert cands["eighth"].steps == cands["quarter-resize"].steps == 197
    assert cands["quarter"].steps == 93
    assert cands["quarter"].expected_accuracy == pytest.approx(68.41, abs=0.01)
    assert cands["eighth"].expected_accuracy == pytest.approx(e15[1])
    assert cands["quarter-resize"].expected_accuracy == pytest.approx(r15[1])
    assert not cands["full"].timed
    assert chosen.name == "quarter-resize"
    # bf16 CPU, same minutes: the small shapes get floor(51.3 / 0.30) = 171 steps (1.75
    # epochs: their 1.5 values again), the quarter floor(51.3 / 0.43) = 119 steps, 1.219
    # epochs: 72.95 + 2.09 x 0.019 / 0.2 = 73.14%, more than 71.39%: the quarter wins.
    chosen, cands, _ = _choose(57, BF16_CPU)
    assert cands["quarter"].steps == 119
    assert cands["quarter"].expected_accuracy == pytest.approx(73.14, abs=0.01)
    assert chosen.name == "quarter"
    # fp32 CPU, 4.7 minutes (the lab's fp32 time): 253.8 s. The quarter floor(253.8 / 0.55) =
    # 461 steps, 4.72 epochs: 82.57 + 3.42 x 1.72 / 3 = 84.53%, past the small shapes' flat
    # 1.5-epoch values; full's bound (2.49 s: 102 steps, 2.09 epochs, 80.7%) cannot beat it.
    chosen, cands, _ = _choose(282, FP32_CPU)
    assert cands["quarter"].steps == 461
    assert cands["quarter"].expected_accuracy == pytest.approx(84.53, abs=0.01)
    assert chosen.name == "quarter" and not cands["full"].timed


def test_the_calibration_records_the_cpu_kind_and_notes_the_other_kinds_curve(monkeypatch):
    # fp32-only CPU, 0.95 minutes: an fp32-measured shape is chosen, its own kind: no note.
    rec = _calibrate(monkeypatch, {"avx2", "avx512f"}, FP32_CPU, 0.95)
    assert (rec["precision"], rec["cpu_kind"]) == ("fp32", "fp32-only")
    assert rec["chosen"] == "quarter-resize" and rec["curve_precision"] == "fp32"
    assert rec["curve_note"] is None
    assert {c["shape"]: c["curve_precision"] for c in rec["candidates"]} == {
        "eighth": "fp32", "quarter-resize": "fp32", "quarter": "bf16", "full": "bf16"}
    # fp32-only CPU, 5 minutes: the quarter, whose curve is bf16's: the note says so.
    rec = _calibrate(monkeypatch, {"avx2", "avx512f"}, FP32_CPU, 5)
    assert rec["chosen"] == "quarter" and rec["curve_precision"] == "bf16"
    assert rec["curve_note"] == budget.other_kind_note(budget.QUARTER, "fp32")
    # An AMX CPU (auto: bf16), 0.95 minutes: with the evaluation passes paid for (unlike the
    # pure choice above) quarter-resize wins there too, on the fp32 curve: noted.
    amx = {"avx512f", "avx512_bf16", "amx_bf16"}
    rec = _calibrate(monkeypatch, amx, BF16_CPU, 0.95)
    assert (rec["precision"], rec["cpu_kind"]) == ("bf16", "bf16-capable")
    assert rec["chosen"] == "quarter-resize"
    assert rec["curve_note"] == budget.other_kind_note(budget.QUARTER_RESIZE, "bf16")
    # The same CPU, 5 minutes: the quarter, on its own kind's curve: no note.
    rec = _calibrate(monkeypatch, amx, BF16_CPU, 5)
    assert rec["chosen"] == "quarter" and rec["curve_note"] is None
