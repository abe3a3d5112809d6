"""Class-activation maps in the reports that list mistakes: `evaluate`, `finetune`,
`predict --explain` and the lab.

Each report must show, for every photo a model got wrong, the map of the class it predicted and
of the true class: counted against predictions.csv (the photos whose top-1 class is not the
true one), and gone with --no-explain. The reports stay self-contained (every image a data: URI
in report.html) and open in headless Chromium without an error, and file names that are markup
(`<img src=x onerror=...>.jpg`, quotes, ampersands) stay text. Small inputs keep this fast: a
few photos through EfficientNet-Lite0 (its real weights ship as a pip package), and timm's tiny
`test_efficientnet` for the finetune runs.
"""

from __future__ import annotations

import csv
import html.parser
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main

PWNED = "PWNED"
# Legal file names that try to inject markup; noise pictures (never a tench to Lite0).
HOSTILE = [
    f"<img src=x onerror=document.title='{PWNED}'>.jpg",
    "a&b\"'<i>x.jpg",
    f"\"><svg onload=document.title='{PWNED}'>.jpg",
]
TENCH = "n01440764_tench.JPEG"  # the one photo Lite0 gets right (test_explain.py)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


def cam_images(page: str) -> dict[str, list[str]]:
    """report.html's map images by side ("predicted", "true"): their alt texts."""
    out: dict[str, list[str]] = {"predicted": [], "true": []}
    for tag, attrs in parse(page).tags:
        if tag == "img" and "map of" in attrs.get("alt", ""):
            assert attrs["src"].startswith("data:image/jpeg;base64,")
            out["predicted" if attrs["alt"].endswith("(predicted)") else "true"].append(
                attrs["alt"])
    return out


def assert_inert_and_self_contained(page: str) -> None:
    tags = parse(page)
    assert not {t for t, _ in tags.tags} & {"script", "svg", "a"}
    assert not any(k.startswith("on") for _, attrs in tags.tags for k in attrs)
    assert all(attrs["src"].startswith("data:image/") for t, attrs in tags.tags if t == "img")
    text = "".join(tags.text)
    for name in HOSTILE:
        assert name in text  # shown exactly, as text


def open_in_chromium(path: Path, title: str) -> None:
    from browser import open_page

    page = open_page(path, evaluate={
        "images": "[...document.images].map(i => i.complete && i.naturalWidth > 0)",
        "injected": "document.querySelectorAll('script, svg, [onerror], [onload]').length",
    })
    assert page.title == title and PWNED not in page.title
    assert page.console_errors == [] and page.external_requests == []
    assert page.values["injected"] == 0
    assert page.values["images"] and all(page.values["images"])  # every map decodes
    for name in HOSTILE:
        assert name in page.text


def wrong_photos(run: Path, top1_column: str = "class_index", truth: str = "true_index"
                 ) -> set[str]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r["file"] for r in rows if r["rank"] == "1" and r[top1_column] != r[truth]}


# ------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from conftest import data_path

    root = tmp_path_factory.mktemp("photos") / "lab photos"
    (root / "tench").mkdir(parents=True)
    shutil.copy(data_path("imagenet-samples", TENCH), root / "tench" / "tench.jpg")
    rng = np.random.default_rng(0)
    for name in HOSTILE:
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(
            root / "tench" / name, "JPEG")
    return root


@pytest.fixture(scope="module")
def evaluated(photos, tmp_path_factory):
    """The same photos evaluated with maps (the default) and with --no-explain."""
    base = tmp_path_factory.mktemp("evaluate")
    runs = {}
    for name, flags in (("explain", []), ("plain", ["--no-explain"])):
        runs[name] = base / name
        assert main(["evaluate", str(photos), "-m", "efficientnet_lite0", "--workers", "0",
                     "--out", str(runs[name]), "-q", *flags]) == 0
    return runs


def test_evaluate_report_shows_both_maps_of_every_mistake(evaluated):
    run = evaluated["explain"]
    wrong = wrong_photos(run)
    assert wrong == {f"tench/{n}" for n in HOSTILE}  # noise is never a tench; the tench is
    results = json.loads((run / "results.json").read_text())
    ex = results["explanations"]
    assert ex["method"] == "gradcam" and ex["models"][0]["layer"] == "bn2"
    assert {c["file"] for c in ex["cams"]} == wrong and len(ex["cams"]) == len(wrong)
    for c in ex["cams"]:
        assert c["true"]["class"] == "tench" and c["predicted"]["class"] != "tench"
        for side in ("predicted", "true"):
            with Image.open(run / c[side]["cam"]) as im:  # the model's 224 px crop, overlaid
                assert im.size == (224, 224) and im.format == "JPEG"
        # numbered files: a user's file name never names a file
        assert c["predicted"]["cam"].startswith("cams/0-")
    page = (run / "report.html").read_text()
    maps = cam_images(page)
    assert len(maps["predicted"]) == len(maps["true"]) == len(wrong)
    assert sorted(maps["true"]) == ["efficientnet_lite0: map of tench (true)"] * len(wrong)
    assert_inert_and_self_contained(page)
    md = (run / "report.md").read_text()
    for c in ex["cams"]:
        for side in ("predicted", "true"):
            assert f"]({c[side]['cam']})" in md


def test_no_explain_leaves_the_maps_out(evaluated):
    run = evaluated["plain"]
    results = json.loads((run / "results.json").read_text())
    assert results["explanations"] is None and not (run / "cams").exists()
    page = (run / "report.html").read_text()
    assert cam_images(page) == {"predicted": [], "true": []}
    assert "--no-explain" in page
    # The same mistakes are listed, with their thumbnails.
    assert wrong_photos(run) == wrong_photos(evaluated["explain"])
    assert page.count('class="thumb"') == len(HOSTILE)


def test_explain_limit_draws_the_first_mistakes_only(photos, tmp_path):
    out = tmp_path / "run"
    assert main(["evaluate", str(photos), "-m", "efficientnet_lite0", "--workers", "0",
                 "--explain-limit", "1", "--out", str(out), "-q"]) == 0
    ex = json.loads((out / "results.json").read_text())["explanations"]
    assert len(ex["cams"]) == 1 and ex["models"][0]["n_wrong"] == len(HOSTILE)
    assert len(cam_images((out / "report.html").read_text())["predicted"]) == 1


def test_evaluate_report_with_maps_opens_in_chromium(evaluated, chromium):
    results = json.loads((evaluated["explain"] / "results.json").read_text())
    open_in_chromium(evaluated["explain"] / "report.html", f"cnnlab evaluate: {results['path']}")


def test_evaluate_help_states_the_cost(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "--no-explain" in out and "s per mistake" in out


# ------------------------------------------------------------------------------- finetune


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Two finetune runs of timm's tiny test_efficientnet on coloured photos (the head solved by
    L-BFGS: seconds), with and without maps. Among the test photos, three are in red/ but show
    blue, green and blue noise, under hostile names: mistakes on purpose."""
    import timm
    import torch

    from cnnlab.progress import Reporter
    from cnnlab.runs import RunDir
    from cnnlab.tasks import finetune
    from test_finetune import COLOURS, make_photos

    base = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    weights = base / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    data = make_photos(base / "data")
    rng = np.random.default_rng(1)
    for name, colour in zip(HOSTILE, ("blue", "green", "blue"), strict=True):
        arr = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 40, (40, 48, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(data / "test" / "red" / name, "PNG")
    runs = {}
    for name, explain in (("explain", True), ("plain", False)):
        config = finetune.FinetuneConfig(data=str(data), backbone="timm/test_efficientnet",
                                         weights=str(weights), workers=0, explain=explain)
        runs[name] = base / name
        finetune.run(config, RunDir.create("finetune", runs[name]), Reporter(quiet=True))
    return runs, data


def test_finetune_report_shows_both_maps_of_every_misclassified_test_photo(finetuned):
    from cnnlab.analysis.cams import target_layer
    from cnnlab.models.predictor import load_predictor

    runs, _ = finetuned
    run = runs["explain"]
    wrong = wrong_photos(run, top1_column="class", truth="true_class")
    assert {f"test/red/{n}" for n in HOSTILE} <= wrong  # at least the planted mistakes
    ex = json.loads((run / "results.json").read_text())["explanations"]
    assert {c["file"] for c in ex["cams"]} == wrong and ex["n_wrong"] == len(wrong)
    # The run's own network, on the layer `cnnlab explain RUN` would choose.
    assert ex["layer"] == target_layer(load_predictor(str(run)))
    assert ex["layer"].startswith("body.")
    for c in ex["cams"]:
        assert c["true"]["class"] == "red" and c["predicted"]["class"] in ("blue", "green")
        assert (run / c["predicted"]["cam"]).is_file() and (run / c["true"]["cam"]).is_file()
    page = (run / "report.html").read_text()
    maps = cam_images(page)
    assert len(maps["predicted"]) == len(maps["true"]) == len(wrong)
    assert_inert_and_self_contained(page)


def test_finetune_without_maps(finetuned):
    runs, _ = finetuned
    run = runs["plain"]
    assert json.loads((run / "results.json").read_text())["explanations"] is None
    assert not (run / "cams").exists()
    page = (run / "report.html").read_text()
    assert cam_images(page) == {"predicted": [], "true": []} and "--no-explain" in page


def test_finetune_report_with_maps_opens_in_chromium(finetuned, chromium):
    runs, _ = finetuned
    open_in_chromium(runs["explain"] / "report.html",
                     "cnnlab finetune: timm/test_efficientnet, freeze")


def test_finetune_cli_has_no_explain(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--no-explain" in capsys.readouterr().out


# ---------------------------------------------------------------------- predict --explain


def test_predict_explain_writes_the_top_class_maps_and_a_report(finetuned, tmp_path, capsys,
                                                                chromium):
    runs, data = finetuned
    folder = data / "test" / "red"
    out = tmp_path / "seen"
    assert main(["predict", str(runs["explain"]), str(folder), "--explain", "--workers", "0",
                 "--json", "--out", str(out), "-q"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    photos = sorted(p for p in folder.iterdir())
    assert len(records) == len(photos)
    for r in records:
        assert Path(r["cam"]).is_file() and Path(r["cam"]).parent == out / "cams"
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "predict" and len(results["photos"]) == len(photos)
    for p in results["photos"]:
        assert p["top"][0]["cam"] and all(g["cam"] is None for g in p["top"][1:])
    page = (out / "report.html").read_text()
    imgs = [a for t, a in parse(page).tags if t == "img"]
    assert len(imgs) == len(photos)  # one map per photo: its top class
    assert_inert_and_self_contained(page)
    from browser import open_page

    shown = open_page(out / "report.html")
    assert shown.console_errors == [] and shown.external_requests == []


def test_predict_out_needs_explain(tmp_path, capsys):
    photo = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(photo)
    assert main(["predict", "efficientnet_lite0", str(photo), "--out", str(tmp_path / "o")]) == 2
    assert "give --explain with it" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ lab


def test_lab_evaluate_section_shows_a_handful_of_mistakes(evaluated, tmp_path):
    """The lab's evaluate section: the maps its evaluate step drew, a handful at most."""
    from cnnlab.report.lab import LAB_CAMS_SHOWN, Section, _evaluate
    from cnnlab.tasks.lab import EVAL_CAMS, LabConfig, plan_evaluate

    lab = tmp_path / "lab"
    shutil.copytree(evaluated["explain"], lab / "evaluate")
    results = json.loads((lab / "evaluate" / "results.json").read_text())
    s = Section("evaluate", "t", "done")
    _evaluate(s, results, lab, "evaluate")
    n = min(len(results["explanations"]["cams"]), LAB_CAMS_SHOWN)
    assert len(s.gallery) == 2 * n
    assert all(f.data_uri.startswith("data:image/jpeg;base64,") for f in s.gallery)
    assert any("true class tench" in f.caption for f in s.gallery)
    from conftest import DATA_ROOT

    plan = plan_evaluate(LabConfig(data_root=str(DATA_ROOT), quick=True))
    assert plan.config.explain and plan.config.explain_limit == EVAL_CAMS
    assert f"--explain-limit {EVAL_CAMS}" in plan.command


def test_lab_concepts_section_shows_filters_and_feature_maps(shared_data, tmp_path):
    root = shared_data("imagenet-samples").parent
    out = tmp_path / "lab"
    assert main(["lab", "--only", "concepts", "--data-root", str(root), "--out", str(out),
                 "-q"]) == 0
    features = json.loads((out / "concepts" / "features.json").read_text())
    assert features["filters"]["shape"][1] == 3  # the first convolution reads RGB
    sizes = [st["shape"][1] for st in features["maps"]["stages"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    md = (out / "report.md").read_text()
    assert "(concepts/filters.png)" in md and "(concepts/maps.png)" in md
    for st in features["maps"]["stages"]:
        assert f"| {st['shape'][1]} x {st['shape'][2]} |" in md
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 3  # shift demo, filters, maps
