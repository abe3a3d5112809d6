"""Reporter: plain log lines off a terminal, one live display on a terminal, and the lab's
overall display (step k of n) holding each step's own progress."""

from __future__ import annotations

import io

from cnnlab.progress import Reporter
from cnnlab.tasks import lab


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_carry_the_step_and_track_reports_its_total():
    err = io.StringIO()
    reporter = Reporter(err=err, out=io.StringIO(), interval=0.0)
    with reporter.overall("lab", 3) as display:
        step = display.step(2, "evaluate")
        step.log("scoring")
        assert list(step.track(range(4), description="photos", unit="photo")) == [0, 1, 2, 3]
    lines = err.getvalue().splitlines()
    assert lines[0] == "[lab 2/3 evaluate] scoring"
    assert all(line.startswith("[lab 2/3 evaluate] photos: ") for line in lines[1:])
    assert lines[-1].startswith("[lab 2/3 evaluate] photos: 4 photo in ")


def test_quiet_overall_prints_nothing():
    err = io.StringIO()
    reporter = Reporter(quiet=True, err=err, out=io.StringIO())
    with reporter.overall("lab", 2) as display:
        step = display.step(1, "concepts")
        step.log("hidden")
        assert list(step.track([1, 2])) == [1, 2]
    assert err.getvalue() == ""


def test_terminal_shows_the_overall_bar_and_the_step_bar_in_one_display():
    err = FakeTerminal()
    reporter = Reporter(err=err, out=io.StringIO())
    assert reporter.interactive
    with reporter.overall("lab", 2) as display:
        step = display.step(2, "train")
        assert step.live is not None and step.live is display.bar
        for _ in step.track(range(3), description="epochs"):
            # While the step's bar runs it sits in the same display as the overall one.
            assert len(display.bar.tasks) == 2
        assert len(display.bar.tasks) == 1  # the step's bar is gone when its work is done
        step.log("done in 1 s")
    text = err.getvalue()
    assert "lab 2/2: train" in text and "[lab 2/2 train] done in 1 s" in text


def test_lab_steps_log_through_the_overall_display(tmp_path):
    err = io.StringIO()
    reporter = Reporter(err=err, out=io.StringIO())
    config = lab.LabConfig(only=("concepts", "alexnet-groups"), report=False)
    lab.run(config, lab.open_lab_dir(tmp_path / "lab"), reporter)
    lines = err.getvalue().splitlines()
    assert any(line.startswith("[lab 1/2 concepts] ") for line in lines)
    assert any(line.startswith("[lab 2/2 alexnet-groups] done in ") for line in lines)


def test_an_overall_inside_a_lab_step_shares_its_display_and_prefixes_both():
    err = FakeTerminal()
    reporter = Reporter(err=err, out=io.StringIO())
    with reporter.overall("lab", 2) as display:
        step = display.step(2, "train")
        with step.overall("train", 3, [40.0, 40.0, 40.0]) as inner:
            run = inner.step(2, "fast-cifar-seed1")
            # One display: the lab's bar and the train step's overall bar (no second live
            # display, which rich refuses), then the run's own bar under them.
            assert run.live is display.bar and len(display.bar.tasks) == 2
            for _ in run.track(range(2), description="epoch 1"):
                assert len(display.bar.tasks) == 3
            run.log("done")
        assert len(display.bar.tasks) == 1
    assert "[lab 2/2 train] [train 2/3 fast-cifar-seed1] done" in err.getvalue()
    plain = io.StringIO()
    outer = Reporter(err=plain, out=io.StringIO())
    with outer.overall("lab", 1) as display, display.step(1, "train").overall("train", 2) as inner:
        inner.step(1, "simple-cnn-seed0").log("x")
    assert plain.getvalue() == "[lab 1/1 train] [train 1/2 simple-cnn-seed0] x\n"
