"""The Python API (`import cnnlab`): the command line's options and defaults, the same run
directories and numbers as the command line, one-line errors, results that render safely."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab
from cnnlab.cli import build_parser, main
from cnnlab.errors import CnnlabError

# Each command (and charrnn's subcommands) -> its API function. `cnnlab models` is
# cnnlab.list_models: `cnnlab.models` is the model package.
API = {
    "models": cnnlab.list_models, "params": cnnlab.params, "evaluate": cnnlab.evaluate,
    "finetune": cnnlab.finetune, "predict": cnnlab.predict, "explain": cnnlab.explain,
    "train": cnnlab.train, "sweep": cnnlab.sweep, "experiment": cnnlab.experiment,
    "charrnn train": cnnlab.charrnn.train, "charrnn complete": cnnlab.charrnn.complete,
    "charrnn sample": cnnlab.charrnn.sample, "lab": cnnlab.lab,
}
# Destinations that exist on the command line only: how to print (--json) and the process a
# sweep starts for itself (--worker, --worker-index). Every other flag is an API keyword.
CLI_ONLY = {"help", "json", "worker", "worker_index"}
# Keywords that exist in the API only, with the reason: a flag could not say it.
API_ONLY = {
    # A function called with each photo's record as soon as it is classified: the command
    # line passes its printer, so that results stream out as before; a flag cannot be a function.
    "predict": {"on_record"},
}


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every leaf command: charrnn's train/complete/sample, not charrnn."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                yield from (_commands(sub, f"{prefix}{name} ") if inner
                            else [(f"{prefix}{name}", sub)])


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> its first action: where two flags share a dest (--augment / --no-augment),
    argparse takes the default of the first."""
    options: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if (not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
                and a.dest not in CLI_ONLY):
            options.setdefault(a.dest, a)
    return options


def _same_default(cli, api) -> bool:
    if cli is argparse.SUPPRESS:  # flag absent when not given: the config's default, i.e. None
        return api is None or api is False
    if isinstance(cli, list | tuple) and isinstance(api, list | tuple):
        return list(cli) == list(api)
    return cli == api and type(cli) is type(api)


def test_every_command_has_an_api_function():
    assert sorted(name for name, _ in _commands(build_parser())) == sorted(API)


@pytest.mark.parametrize("command", sorted(API))
def test_api_keywords_are_the_cli_options_with_the_same_defaults(command):
    """A new flag that the API lacks (or a default that differs) fails here, by name."""
    parser = dict(_commands(build_parser()))[command]
    options = _options(parser)
    params = inspect.signature(API[command]).parameters
    missing = sorted(set(options) - set(params))
    assert not missing, f"cnnlab {command}: flags missing from the API: {missing}"
    extra = sorted(set(params) - set(options) - API_ONLY.get(command, set()))
    assert not extra, f"API keywords of {command} with no flag: {extra}"
    for dest, action in options.items():
        default = params[dest].default
        # A required positional is required in the API too (argparse marks a nargs="*"
        # positional required, though it may be empty).
        if action.required and action.nargs != "*":
            assert default is inspect.Parameter.empty, f"{command} {dest}"
            continue
        assert _same_default(action.default, default), (
            f"cnnlab {command}: {dest} defaults to {action.default!r} on the command line, "
            f"{default!r} in the API")


def test_every_api_function_documents_itself():
    for name, fn in API.items():
        doc = inspect.getdoc(fn) or ""
        assert "Returns" in doc and len(doc.splitlines()) >= 4, name


def test_import_cnnlab_loads_neither_torch_nor_pandas():
    code = ("import sys, cnnlab; cnnlab.train; cnnlab.charrnn.sample; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_params_api_writes_what_the_cli_writes(tmp_path, capsys):
    assert main(["params", "alexnet-paper", "--groups", "2", "--out", str(tmp_path / "cli"),
                 "-q"]) == 0
    r = cnnlab.params(["alexnet-paper"], groups=2, out=tmp_path / "api", quiet=True)
    assert r.run_dir == tmp_path / "api"
    assert _results(tmp_path / "api") == _results(tmp_path / "cli") == r.results
    assert r.models[0]["total_params"] == 60_965_224  # results.json keys are attributes
    table = r.table
    assert table.loc[table["layer"] == "conv2", "params"].item() == 307_456  # numbers, not text
    assert (json.loads((tmp_path / "api" / "config.json").read_text())
            == json.loads((tmp_path / "cli" / "config.json").read_text()))


def test_train_api_equals_cli(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    cifar = shared_data("cifar10", "cifar10-jpg.zip")
    flags = ["--limit-per-class", "5", "--epochs", "1", "--recipe", "lab", "-m", "simple-cnn",
             "--threads", "1", "--no-report"]
    assert main(["train", str(cifar), *flags, "--out", str(tmp_path / "cli"), "-q"]) == 0
    printed = capsys.readouterr().out
    r = cnnlab.train(cifar, models="simple-cnn", limit_per_class=5, epochs=1, recipe="lab",
                     threads=1, report=False, out=tmp_path / "api", quiet=True)
    def numbers(d):  # everything but how long it took (and where)
        if isinstance(d, dict):
            return {k: numbers(v) for k, v in d.items()
                    if k != "run_dir" and not k.endswith(("seconds", "per_second"))}
        if isinstance(d, list):
            return [numbers(v) for v in d]
        return d

    assert numbers(r.results) == numbers(_results(tmp_path / "cli"))
    assert list(r.table["model"]) == ["simple-cnn"]
    row = r.table.iloc[0]
    assert f"{row['test_accuracy_mean']:.2f}%" in printed  # the CLI prints the same row


def _numbers(d):
    """results.json without how long it took, or where: what the same call must repeat."""
    if isinstance(d, dict):
        return {k: _numbers(v) for k, v in d.items()
                if k != "run_dir" and not k.endswith(("seconds", "per_second"))}
    if isinstance(d, list):
        return [_numbers(v) for v in d]
    return d


def test_evaluate_api_equals_cli(shared_data, tmp_path, capsys):
    photos = shared_data("imagenet-samples")
    flags = ["-m", "efficientnet_lite0", "--limit", "4", "--workers", "0", "--no-explain",
             "--no-report"]
    assert main(["evaluate", str(photos), *flags, "--out", str(tmp_path / "cli"), "-q"]) == 0
    printed = capsys.readouterr().out
    r = cnnlab.evaluate(photos, models="efficientnet_lite0", limit=4, workers=0,
                        explain=False, report=False, out=tmp_path / "api", quiet=True)
    cli = _results(tmp_path / "cli")
    assert r.run_dir == tmp_path / "api"
    assert _numbers(_results(r.run_dir)) == _numbers(cli)
    assert [m["top1_error"] for m in cli["models"]] == list(r.table["top1_error"])
    row = r.rows[0]
    assert row["model"] == "efficientnet_lite0" and row["scored"] == 4
    line = next(line for line in printed.splitlines() if line.startswith("efficientnet_lite0"))
    assert f"{row['params']:,}" in line and f"{row['top5_error']:.1f}%" in line
    assert f"run directory: {tmp_path / 'cli'}" in printed


def test_charrnn_api_equals_cli(tmp_path, capsys):
    words = ["hello", "green", "start"]
    assert main(["charrnn", "train", "--words", *words, "--epochs", "20", "--out",
                 str(tmp_path / "cli"), "-q"]) == 0
    r = cnnlab.charrnn.train(words=words, epochs=20, out=tmp_path / "api", quiet=True)
    cli = _results(tmp_path / "cli")
    for key in ("train_loss", "val_loss", "steps", "parameters", "completions"):
        assert r.results[key] == cli[key], key
    assert r.table["loss"].iloc[-1] == "uniform ln|V|"
    c = cnnlab.charrnn.complete(r.run_dir, ["h", "g"])
    capsys.readouterr()
    assert main(["charrnn", "complete", str(tmp_path / "cli"), "h", "g"]) == 0
    printed = capsys.readouterr().out
    for row in c.rows:
        assert row["completion"] in printed and f"{row['probability']:.4f}" in printed


@pytest.mark.parametrize("call, argv", [
    (lambda out: cnnlab.params("resnt18", out=out), ["params", "resnt18"]),
    (lambda out: cnnlab.train(None, out=out), ["train"]),
    (lambda out: cnnlab.experiment([], out=out), ["experiment"]),
    (lambda out: cnnlab.charrnn.complete(out, ["h"], max_length=0),
     ["charrnn", "complete", "RUN", "h", "--max-length", "0"]),
])
def test_api_errors_are_the_cli_lines(call, argv, tmp_path, capsys):
    with pytest.raises(CnnlabError) as exc:
        call(tmp_path / "run")
    message = str(exc.value)
    assert "\n" not in message
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "cli")] if argv[0] in ("params", "train")
                else argv) == 2
    assert capsys.readouterr().err.strip() == f"cnnlab {argv[0]}: error: {message}"
    assert not (tmp_path / "run").exists()  # a refused run leaves no directory


def test_resume_refuses_a_setting_by_keyword(tmp_path):
    with pytest.raises(CnnlabError, match=r"epochs= cannot be given with it \(only "
                                          r"time_limit=, threads= can\)"):
        cnnlab.train(resume=tmp_path, epochs=3)


def test_repr_html_escapes_every_name(tmp_path):
    from cnnlab.results import Result

    hostile = "<script>alert(1)</script>"
    figure = tmp_path / f"{hostile.replace('/', '')}.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    r = Result(command="evaluate", results={"models": []},
               rows=[{"model": hostile, hostile: 1.5}], run_dir=tmp_path,
               figures=[figure], title=hostile)
    html = r._repr_html_()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "data:image/png;base64," in html  # the figure is embedded, not linked


def test_repr_html_of_a_real_run_shows_its_table(tmp_path):
    r = cnnlab.params(["resnet18", "resnet34"], out=tmp_path / "r", quiet=True)
    html = r._repr_html_()
    assert "<table" in html and "resnet34" in html and "11689512" in html
    assert list(r.table["model"]) == ["resnet18", "resnet34"]


def test_progress_is_live_in_a_notebook_with_widgets(monkeypatch):
    """In Jupyter (rich's console says so) with ipywidgets, progress is rich's live display;
    without ipywidgets, the log lines."""
    import io

    from cnnlab import progress

    reporter = progress.Reporter(err=io.StringIO(), out=io.StringIO())
    assert not reporter.interactive
    monkeypatch.setattr(reporter.err_console, "is_jupyter", True)
    monkeypatch.setattr(progress, "_has_widgets", lambda: True)
    assert reporter.interactive
    monkeypatch.setattr(progress, "_has_widgets", lambda: False)
    assert not reporter.interactive


# ------------------------------------------------- every command line is a caller of the API

def _fake(command: str, results: dict, rows: list[dict], run_dir: Path | None = None):
    from cnnlab.results import Result

    return Result(command=command, results=results, rows=rows, run_dir=run_dir)


def _spy(monkeypatch, name: str, result):
    """Replace cnnlab.api.<name> by a fake that records its arguments and returns `result`."""
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(cnnlab.api, name, fake)
    return calls


def test_evaluate_cli_prints_what_the_api_returns(monkeypatch, tmp_path, capsys):
    """The command line parses, calls cnnlab.evaluate and prints its rows: nothing of its own."""
    row = {"model": "made-up-net", "params": 1234567, "top1_error": 12.5, "top5_error": 2.5,
           "images_per_second": None, "scored": 8, "unreadable": 0}
    calls = _spy(monkeypatch, "evaluate", _fake(
        "evaluate", {"n_labelled": 8, "skipped": [], "run_dir": str(tmp_path)}, [row],
        tmp_path))
    assert main(["evaluate", "photos", "-m", "a", "-m", "b", "--weights", "a=w.pth",
                 "--limit", "3", "--no-explain", "--out", "o", "-q"]) == 0
    (args, kwargs), = calls
    assert args == ("photos",) and kwargs["models"] == ["a", "b"]
    assert kwargs["weights"] == ["a=w.pth"] and kwargs["limit"] == 3
    assert kwargs["explain"] is False and kwargs["out"] == "o" and kwargs["quiet"] is True
    out = capsys.readouterr().out
    assert "made-up-net" in out and "1,234,567" in out and "12.5%" in out
    assert f"run directory: {tmp_path}" in out


def test_finetune_cli_prints_what_the_api_returns(monkeypatch, tmp_path, capsys):
    row = {"strategy": "freeze", "epochs": 30, "selected_epoch": 30, "train_accuracy": 99.0,
           "val_accuracy": 60.0, "top1_error": 20.833, "top1_interval": {"low": 9.2, "high": 40.5},
           "head_fit": "lbfgs", "cv_accuracy": 77.7, "top_k": 3, "topk_error": None,
           "seconds": 1.25, "n_test": 24}
    calls = _spy(monkeypatch, "finetune", _fake(
        "finetune", {"backbone": "made-up-net", "run_dir": str(tmp_path)}, [row], tmp_path))
    assert main(["finetune", "photos", "-m", "made-up-net", "--split", "0.5,0.25,0.25",
                 "--no-explain", "-q"]) == 0
    (args, kwargs), = calls
    assert args == ("photos",) and kwargs["backbone"] == "made-up-net"
    assert kwargs["split"] == (0.5, 0.25, 0.25) and kwargs["explain"] is False
    assert kwargs["resume"] is None and kwargs["epochs"] is None
    out = capsys.readouterr().out
    assert "L-BFGS" in out and "77.7% (CV)" in out and "20.8% (9.2-40.5)" in out
    assert "backbone made-up-net" in out and f"run directory: {tmp_path}" in out
    # --resume: a flag that may not change is refused by its flag name, before the API runs.
    assert main(["finetune", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--lr cannot be given with it" in capsys.readouterr().err and len(calls) == 1
    assert main(["finetune", "--resume", str(tmp_path), "--epochs", "40", "-q"]) == 0
    assert calls[1][1]["resume"] == str(tmp_path) and calls[1][1]["epochs"] == 40


def test_predict_cli_prints_each_record_as_the_api_classifies_it(monkeypatch, capsys):
    """cnnlab predict is cnnlab.predict with a printer as on_record: a photo's line is out
    before the next batch is classified (here, before the task fails on the second)."""
    from cnnlab.tasks import predict as task

    def batches(config, reporter):
        yield {"file": "a.jpg", "top": [{"class": "made-up class", "probability": 0.75,
                                         "index": 3}]}
        raise KeyboardInterrupt  # the next batch never comes

    monkeypatch.setattr(task, "predict", batches)
    calls = []
    real = cnnlab.api.predict
    monkeypatch.setattr(cnnlab.api, "predict", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert main(["predict", "some-model", "a.jpg", "-q"]) == 130
    assert capsys.readouterr().out == "a.jpg  made-up class 75.0%\n"
    assert len(calls) == 1 and callable(calls[0]["on_record"])


def test_predict_api_records_are_the_cli_json_lines(shared_data, capsys):
    photos = [shared_data("imagenet-samples", name) for name in
              ("n01440764_tench.JPEG", "n01494475_hammerhead.JPEG")]
    seen = []
    r = cnnlab.predict("efficientnet_lite0", photos, top_k=2, workers=0, quiet=True,
                       on_record=seen.append)
    assert main(["predict", "efficientnet_lite0", *map(str, photos), "--top-k", "2",
                 "--workers", "0", "--json", "-q"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert seen == r.records
    for a, b in zip(r.records, printed, strict=True):
        assert a["file"] == b["file"] and [g["class"] for g in a["top"]] == [
            g["class"] for g in b["top"]]
        assert [g["probability"] for g in a["top"]] == pytest.approx(
            [g["probability"] for g in b["top"]], abs=1e-6)
    assert list(r.table["class"]) == [p["top"][0]["class"] for p in printed]


def test_explain_cli_prints_what_the_api_returns(monkeypatch, tmp_path, capsys):
    results = {"photos": [{"file": "a.jpg", "top": []}], "skipped": [], "method_name": "Made-CAM",
               "model": "made-up-net", "layer": "bn9", "layer_shape": [8, 2, 2],
               "seconds_per_photo": 0.5, "filters": None, "maps": None}
    rows = [{"file": "a.jpg", "rank": 1, "class": "made-up class", "probability": 0.625,
             "cam": "cams/0000-1.png"}]
    calls = _spy(monkeypatch, "explain", _fake("explain", results, rows, tmp_path))
    assert main(["explain", "a.jpg", "b/", "-m", "made-up-net", "--top-k", "1", "--out", "o",
                 "-q"]) == 0
    (args, kwargs), = calls
    assert args == (["a.jpg", "b/"],) and kwargs["model"] == "made-up-net"
    assert kwargs["top_k"] == 1 and kwargs["out"] == "o" and kwargs["method"] == "gradcam"
    out = capsys.readouterr().out
    assert "Made-CAM on made-up-net layer bn9 (8x2x2 maps)" in out
    assert f"  1. made-up class 62.5%  {tmp_path / 'cams/0000-1.png'}" in out
    assert f"run directory: {tmp_path}" in out
