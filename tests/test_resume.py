"""`--resume RUN` is one helper for train, finetune, charrnn and sweep (`cli/resume.py`): a flag
that would change the run is refused by name, the few each command allows are applied, and a
missing, malformed or foreign config.json is one line, and so is a damaged file of train's own
on resume. Run directories are written by hand: no data set is needed, except by train's own
files (read after its data: 20 images of the shared CIFAR-10 copy)."""

from __future__ import annotations

import json

import pytest

from cnnlab.cli import build_parser, main
from cnnlab.runs import RunDir


def train_config():
    from cnnlab.tasks.train import TrainConfig

    return TrainConfig(data="cifar.zip", models=("simple-cnn",), time_limit=60.0)


def finetune_config():
    from cnnlab.tasks.finetune import FinetuneConfig

    return FinetuneConfig(data="photos", epochs=5, time_limit=60.0)


def charrnn_config():
    from cnnlab.tasks.charrnn import TrainConfig

    return TrainConfig(words=("hello", "green"), epochs=5, time_limit=60.0)


def sweep_config():
    from cnnlab.tasks.sweep import SweepConfig

    return SweepConfig(data="cifar.zip", space={"lr": [0.1, 0.2]}, trials=3)


# (command words, its config, a flag refused on resume, a flag allowed and the field it sets)
COMMANDS = {
    "train": (["train"], train_config, ["--epochs", "20"], ("--time-limit", "30", 30.0)),
    "finetune": (["finetune"], finetune_config, ["--lr", "0.1"], ("--epochs", "9", 9)),
    "charrnn": (["charrnn", "train"], charrnn_config, ["--hidden", "3"], ("--epochs", "9", 9)),
    "sweep": (["sweep"], sweep_config, ["--pruner", "none"], ("--trials", "40", 40)),
}


def saved_run(tmp_path, make_config):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save_config(make_config())
    return run.path


@pytest.mark.parametrize("name", COMMANDS)
def test_a_flag_that_would_change_the_run_is_refused_by_name(name, tmp_path, capsys):
    words, make, refused, _ = COMMANDS[name]
    run = saved_run(tmp_path, make)
    before = (run / "config.json").read_text()
    assert main([*words, "--resume", str(run), *refused]) == 2
    err = capsys.readouterr().err
    assert refused[0] in err and "cannot be given with it" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "config.json").read_text() == before  # nothing ran, nothing changed


def test_train_refuses_new_data_models_and_out_by_name(tmp_path, capsys):
    run = saved_run(tmp_path, train_config)
    for extra, named in ((["other.zip"], "DATA"), (["-m", "resnet20"], "-m/--model"),
                         (["--out", str(tmp_path / "x")], "--out"), (["--seeds", "3"], "--seeds")):
        assert main(["train", "--resume", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert named in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", COMMANDS)
def test_the_allowed_flags_are_applied_and_the_rest_kept(name, tmp_path):
    from cnnlab.cli.resume import resume_config

    words, make, _, (flag, value, expected) = COMMANDS[name]
    run = saved_run(tmp_path, make)
    field = flag.removeprefix("--").replace("-", "_")
    args = build_parser().parse_args([*words, "--resume", str(run), flag, value, "-q"])
    config = resume_config(args, type(make()), name)
    assert getattr(config, field) == expected
    again = resume_config(build_parser().parse_args([*words, "--resume", str(run)]),
                          type(make()), name)
    original = make()
    # A time limit is one session's (finetune, charrnn): not inherited; everything else is.
    per_session = {"time_limit"} if name in ("finetune", "charrnn") else set()
    for f in vars(original):
        if f in per_session:
            assert getattr(again, f) is None
        else:
            assert getattr(again, f) == getattr(original, f), f


def test_the_help_names_the_flags_allowed_on_resume(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps lines at hyphens otherwise
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "only --time-limit, --threads may be given with it" in out


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize(("content", "message"), [
    (None, "has no config.json"),
    ("{\"data\": ", "is not valid JSON"),
    ("[1, 2]", "holds no mapping of settings"),
    (json.dumps({"data": "x", "strategy_of_another_command": 1}), "not the config of a cnnlab"),
    ("{}", "not the config of a cnnlab"),
])
def test_a_missing_or_malformed_config_json_is_one_line(name, content, message, tmp_path,
                                                        capsys):
    words = COMMANDS[name][0]
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "config.json").write_text(content)
    assert main([*words, "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_another_commands_run_is_named_as_such(tmp_path, capsys):
    run = saved_run(tmp_path, finetune_config)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not the config of a cnnlab train run" in err and err.count("\n") == 1


def test_a_missing_run_directory_is_one_line(tmp_path, capsys):
    assert main(["sweep", "--resume", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the 20 images decoded once for every case


# (file in the run, its content, the line's words): damaged by a crash or a hand, or another's
GOOD_RESULTS = {"model": "simple-cnn", "seed": 1, "recipe": "lab-simple-cnn", "tta": "none",
                "test_accuracy": 0.1, "train_seconds": 1.0, "images_per_second": 9.0,
                "steps": 1, "batch_size": 32, "n_train": 20, "params": 1, "epochs": 1,
                "precision": "fp32"}
CALIBRATION = {"model": "fast-cifar", "chosen": "quarter", "seconds": 3.0, "step_seconds": 0.4}
DAMAGED = [
    ("simple-cnn-seed0/results.json", "", "is damaged: not valid JSON"),
    ("simple-cnn-seed0/results.json", "\udcff", "is damaged: not valid JSON"),
    ("simple-cnn-seed0/results.json", json.dumps(GOOD_RESULTS),
     "it holds simple-cnn seed 1, not simple-cnn seed 0"),
    ("simple-cnn-seed0/results.json", json.dumps({**GOOD_RESULTS, "seed": 0, "steps": "9"}),
     "no valid 'steps' ('9')"),
    ("calibration.json", '{"fast-cifar": {"chosen": ', "is damaged: not valid JSON"),
    ("calibration.json", json.dumps({"fast-cifar": {**CALIBRATION, "chosen": "half"}}),
     "model 'fast-cifar' chose the unknown shape 'half' (cnnlab has eighth, quarter-resize, "
     "quarter, full)"),
    ("calibration.json", json.dumps({"fast-cifar": {"chosen": "full"}}),
     "model 'fast-cifar' has no valid 'model'"),
    ("calibration.json", "[]", "it holds no mapping of models"),
]


@pytest.mark.parametrize(("name", "content", "message"), DAMAGED)
def test_a_damaged_file_of_a_train_run_is_one_line_on_resume(name, content, message, tmp_path,
                                                             small_cache, shared_data, capsys,
                                                             monkeypatch):
    from cnnlab.tasks.train import TrainConfig

    monkeypatch.setenv("CNNLAB_CACHE", str(small_cache))
    data = shared_data("cifar10", "cifar10-jpg.zip")
    models = ("fast-cifar",) if name == "calibration.json" else ("simple-cnn",)
    config = TrainConfig(data=str(data), models=models, limit_per_class=2, budget=1.0,
                         recipe="lab" if models == ("simple-cnn",) else "fast", report=False)
    run = saved_run(tmp_path, lambda: config)
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    assert main(["train", "--resume", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnlab train: error: {run / name} ") and message in err, err
    assert err.count("\n") == 1
