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


def _overall_row(display) -> str:
    """The overall bar's line as the terminal shows it."""
    from rich.console import Console

    out = io.StringIO()
    task = next(t for t in display.bar.tasks if t.id == display.task)
    Console(file=out, width=200).print(display.bar.make_tasks_table([task]))
    return out.getvalue()


def test_the_overall_eta_comes_from_the_finished_steps_however_long_they_took():
    """Steps of minutes: the time left is the finished steps' seconds per unit of estimated
    work times the work left, less what the running step has done; a step kept from an earlier
    run (it ends at once) is not counted as speed."""
    clock = [0.0]
    reporter = Reporter(err=FakeTerminal(), out=io.StringIO())
    reporter.err_console.get_time = lambda: clock[0]  # the display's clock
    with reporter.overall("train", 3, [100.0, 100.0, 200.0]) as display:
        display.step(1, "a")
        assert "-:--:--" in _overall_row(display)  # nothing finished: no guess
        clock[0] = 300.0  # the first step took 3 s per unit of work
        display.step(2, "b")
        assert "0:15:00" in _overall_row(display)  # 300 units left x 3 s
        clock[0] = 400.0
        assert "0:13:20" in _overall_row(display)  # less the 100 s step b has run
    with reporter.overall("train", 3, [100.0, 100.0, 200.0]) as display:
        clock[0] = 1000.0
        display.step(1, "a")
        clock[0] = 1000.5  # a finished earlier, kept
        display.step(2, "b")
        clock[0] = 1100.5  # b: 1 s per unit
        display.step(3, "c")
        assert "0:03:20" in _overall_row(display)  # 200 units x 1 s, not x 0.5 s
