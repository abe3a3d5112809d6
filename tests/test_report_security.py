"""Reports show hostile file names as text: nothing a user names can run a script or break a table.

Real files with legal but hostile names (HTML tags with handlers, quotes and ampersands,
backticks, `|`, a newline, right-to-left and combining characters, a 255-byte name) go through
`cnnlab evaluate`, and the reports are opened the way a reader opens them: report.html in
headless Chromium, report.md rendered by a CommonMark + GFM-tables renderer (markdown-it-py,
raw HTML allowed, as GitHub-style viewers allow it) and that HTML opened in Chromium too. Each
handler would set `document.title` to PWNED; after load the title is still the report's own,
no injected element exists, no request leaves the page, and every name reads back as text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import open_page
from cnnlab.cli import main
from cnnlab.report.env import environment, markdown_text, trusted

PWNED = "PWNED"
HANDLER = f"document.title='{PWNED}'"
# Legal file names on Linux (no '/' and no NUL); each tries to inject something.
HOSTILE = [
    f"<img src=x onerror={HANDLER}>.jpg",
    f"<svg onload={HANDLER}>.jpg",
    f"<script>{HANDLER}<script>.jpg",
    "a&b\"'<script>.jpg",
    f"\"><img src=x onerror={HANDLER} x=\".jpg",  # breaks out of an attribute (alt="...")
    "`rm -rf ~` and ``code``.jpg",
    "col|umn|s.jpg",
    "first line\nsecond line.jpg",
    "[click](javascript:alert(1)) ![x](x).jpg",
    "*bold* _it_ ~~s~~ # $x$.jpg",
    "\u202eevil\u202cgpj.exe.jpg",  # right-to-left override
    "ca\u0301fe\u0301 Z\u0351\u0334a\u0360\u0347.jpg",  # combining characters
]
LONG = "é" * 125 + ".jpg"  # 250 + 4 = 254 bytes ...
LONG = "x" + LONG  # ... + 1 = 255 bytes, the ext4 / most file systems' limit per name
assert len(LONG.encode()) == 255
HOSTILE.append(LONG)
# Files that fail to decode land in the "skipped" table (names plus reasons), the others in the
# "wrong images" section (a noise picture is never a tench).
BROKEN = {HOSTILE[0], HOSTILE[3], HOSTILE[6], HOSTILE[7]}
HOSTILE_LABEL = f"<b onmouseover={HANDLER}>label|x"  # a class folder that matches no class


def _noise(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "photos \"'&<b>"  # the folder's own name is shown in the report's title
    (root / "tench").mkdir(parents=True)
    for n, name in enumerate(HOSTILE):
        path = root / "tench" / name
        if name in BROKEN:
            path.write_bytes(b"not a JPEG")
        else:
            _noise(path, n)
    (root / HOSTILE_LABEL).mkdir()
    _noise(root / HOSTILE_LABEL / "x.jpg", 99)
    out = base / "run"
    code = main(["evaluate", str(root), "-m", "efficientnet_lite0", "--skip-unknown",
                 "--workers", "0", "--out", str(out), "-q"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    return root, out, results


def expected_files(results) -> set[str]:
    return {f"tench/{n}" for n in HOSTILE}


def test_every_hostile_name_reaches_the_report(hostile_run):
    _, _, results = hostile_run
    skipped = {s["file"]: s["reason"] for s in results["skipped"]}
    assert {f"tench/{n}" for n in BROKEN} | {f"{HOSTILE_LABEL}/x.jpg"} == set(skipped)
    assert results["models"][0]["n_images"] == len(HOSTILE) - len(BROKEN)


def _dom_checks():
    return {
        "injected": "document.querySelectorAll('script, svg, [onerror], [onload], "
                    "[onmouseover], a').length",
        "names": "Array.from(document.querySelectorAll('code.name')).map(e => e.textContent)",
        "alts": "Array.from(document.querySelectorAll('img.thumb')).map(e => e.alt)",
        "maps": "Array.from(document.images).filter(e => !e.classList.contains('thumb'))"
                ".map(e => [e.alt, e.complete && e.naturalWidth > 0])",
        "rows": "Array.from(document.querySelectorAll('table')).map(t => "
                "Array.from(t.rows).map(r => r.cells.length))",
        "headings": "Array.from(document.querySelectorAll('h3')).map(e => e.textContent)",
        "bold": "Array.from(document.querySelectorAll('b.name')).map(e => e.textContent)",
        "skip_reasons": "Array.from(document.querySelectorAll('td.name')).map(e => e.textContent)",
    }


def _assert_inert(page, title: str) -> None:
    assert page.title == title  # no handler ran (each would set it to PWNED)
    assert PWNED not in page.title
    assert page.values["injected"] == 0
    assert page.console_errors == []
    assert page.external_requests == []


def test_html_report_runs_no_script_and_shows_names_as_text(hostile_run, chromium, tmp_path):
    _, out, results = hostile_run
    page = open_page(out / "report.html", screenshot=tmp_path / "report.png",
                     evaluate=_dom_checks())
    _assert_inert(page, f"cnnlab evaluate: {results['path']}")
    # Self-contained: the page itself, and thumbnails as data: URIs.
    assert [u for u in page.requests if not u.startswith("data:image/jpeg;base64,")] == [page.url]
    # Every name, exactly as on disk (newline, RTL override, combining marks), as text; each
    # broken file once in the skipped table, each scored one once in the wrong-images section.
    names = page.values["names"]
    assert names[0] == results["path"]
    assert sorted(names[1:]) == sorted(expected_files(results) | {f"{HOSTILE_LABEL}/x.jpg"})
    scored = {f"tench/{n}" for n in HOSTILE if n not in BROKEN}
    assert sorted(page.values["alts"]) == sorted(scored)  # thumbnails' alt text, not markup
    # Each scored photo is a mistake (noise is no tench): its two class-activation maps.
    maps = page.values["maps"]
    assert len(maps) == 2 * len(scored) and all(ok for _, ok in maps)
    assert sorted(alt for alt, _ in maps if alt.endswith("(true)")) == sorted(
        ["efficientnet_lite0: map of tench (true)"] * len(scored))
    assert f"label {HOSTILE_LABEL!r} matches no ImageNet class" in page.values["skip_reasons"]
    for row_lengths in page.values["rows"]:
        assert len(set(row_lengths)) == 1, row_lengths  # every row keeps its columns


def test_html_report_is_inert_without_its_content_security_policy(hostile_run, chromium,
                                                                   tmp_path):
    """The CSP is only a second line: escaping alone keeps every handler from running."""
    _, out, results = hostile_run
    html = (out / "report.html").read_text()
    csp = next(line for line in html.splitlines() if "Content-Security-Policy" in line)
    bare = tmp_path / "no-csp.html"
    bare.write_text(html.replace(csp, ""))
    page = open_page(bare, evaluate=_dom_checks())
    _assert_inert(page, f"cnnlab evaluate: {results['path']}")
    assert len(page.values["names"]) == 1 + len(HOSTILE) + 1


def _render_markdown(md: str) -> str:
    from markdown_it import MarkdownIt

    # CommonMark with raw HTML allowed (as GitHub and most viewers allow it) plus GFM tables.
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    return f"<!DOCTYPE html><html><head><title>md</title></head><body>{body}</body></html>"


def test_markdown_report_keeps_tables_and_shows_names_as_text(hostile_run, chromium, tmp_path):
    _, out, _ = hostile_run
    md = (out / "report.md").read_text()
    page_file = out / "report-md.html"  # beside report.md, so that thumbs/*.jpg resolve
    page_file.write_text(_render_markdown(md))
    page = open_page(page_file, screenshot=tmp_path / "report-md.png", evaluate=_dom_checks())
    _assert_inert(page, "md")
    thumbs = {p.as_uri() for p in (out / "thumbs").iterdir()}
    cams = {p.as_uri() for p in (out / "cams").iterdir()}  # cnnlab's own numbered files
    assert len(cams) == 2 * (len(HOSTILE) - len(BROKEN))
    # the page, its thumbnails and maps only
    assert set(page.requests) == {page.url} | thumbs | cams
    shown = {n.replace("\n", "\u240a") for n in HOSTILE if n not in BROKEN}  # newline: "␊"
    assert sorted(page.values["headings"]) == sorted(f"tench/{n}" for n in shown)
    # Every table: header, then rows with exactly as many cells (a '|' or a newline in a name
    # would add cells or end the row).
    tables = page.values["rows"]
    assert len(tables) == 2 + len(shown)  # models, skipped files, one per wrong image
    for row_lengths in tables:
        assert len(set(row_lengths)) == 1, row_lengths
    # The skipped table lists the broken names as text, in the file column.
    text = page.text
    for n in BROKEN:
        assert f"tench/{n}".replace("\n", "\u240a") in text


@pytest.mark.parametrize("name", [*HOSTILE, HOSTILE_LABEL, "a\\|b", "x\r\ny", "<!-- c -->"])
def test_markdown_text_renders_back_to_itself(name):
    """Escaped text renders (CommonMark) to exactly the text: nothing is read as syntax."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parseInline(
        markdown_text(name)
    )
    children = tokens[0].children
    assert [t.type for t in children] == ["text"] * len(children)
    shown = "".join(t.content for t in children)
    assert shown == name.replace("\n", "\u240a").replace("\r", "\u240d")


def test_one_environment_escapes_every_template_whatever_its_name():
    from jinja2 import DictLoader, TemplateAssertionError

    env = environment()
    env.loader = DictLoader({"a.html.j2": "{{ v }}", "a.md.j2": "{{ v }}", "a.j2": "{{ v }}"})
    hostile = "<script>x</script>|[a](b)"
    as_html = "&lt;script&gt;x&lt;/script&gt;|[a](b)"
    # The suffix picks HTML or Markdown escaping, never whether to escape.
    assert env.get_template("a.html.j2").render(v=hostile) == as_html
    assert env.get_template("a.j2").render(v=hostile) == as_html
    assert env.from_string("{{ v }}").render(v=hostile) == as_html
    assert env.get_template("a.md.j2").render(v=hostile) == markdown_text(hostile)
    assert markdown_text(hostile) == "&lt;script&gt;x&lt;/script&gt;\\|\\[a\\](b)"
    # Markup that the code builds passes through trusted(), in both; |safe does not exist.
    assert env.get_template("a.html.j2").render(v=trusted("<b>ok</b>")) == "<b>ok</b>"
    assert env.get_template("a.md.j2").render(v=trusted("**ok**")) == "**ok**"
    with pytest.raises(TemplateAssertionError, match="safe"):
        env.from_string("{{ v | safe }}")
