"""The one Jinja environment every report renders with, and the escaping rules it enforces.

Everything a user names (file names, folder names, labels, CSV cells, model names) is untrusted:
a photo may legally be called `<img src=x onerror=alert(1)>.jpg`. So:

- **HTML**: autoescape is on for every template, whatever its name. (`select_autoescape(["html"])`
  matched names ending in `.html` only; the templates are `*.html.j2`, so it escaped nothing.)
- **Markdown** (templates named `*.md.j2`): every value printed is passed through
  `markdown_text`, which escapes what Markdown and GitHub-flavoured tables would read as syntax
  (`|`, backticks, `[`/`]`, `*`, `_`, ...), writes `<`, `>` and `&` as entities (no renderer
  turns an entity into a tag) and shows control characters (a newline in a file name) as their
  visible Unicode symbols, so that a name can never end a table row or open a link.
- **Markup that cnnlab's own code builds** (a data URI, a pre-rendered fragment) passes unescaped
  only when wrapped in `trusted(...)`: the one place that marks text safe. Jinja's `|safe` filter
  is removed from the environment, so a template cannot mark a user's string safe by accident.

Templates live in `report/templates/`; `base.html.j2` holds the shared CSS and page layout that
every command's HTML report extends (`{% extends "base.html.j2" %}`, blocks `title`, `content`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"

# Characters that CommonMark / GitHub-flavoured Markdown may read as syntax in running text or a
# table cell. CommonMark lets any ASCII punctuation be backslash-escaped; `<`, `>` and `&` are
# written as entities instead, because some renderers (Python-Markdown) do not honour `\<`.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~#!$])")
# `_` opens or closes emphasis only at a word boundary; between two letters or digits
# ("n01440764_tench") it is inert in CommonMark and GFM, and is left alone for readability.
_MD_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
# C0 control characters and DEL -> Unicode "Control Pictures" (U+2400..U+2421): a newline in a file
# name shows as "␊" and cannot start a new Markdown line (which would end a table row).
_CONTROL = {c: 0x2400 + c for c in range(0x20)} | {0x7F: 0x2421}


class Trusted(Markup):
    """Markup built by cnnlab's own code, never from user text: see `trusted`."""


def trusted(text: str) -> Trusted:
    """Mark markup that cnnlab's own code built as safe to insert unescaped, in HTML and Markdown.

    The only way to do so: never call it on anything a user named.
    """
    return Trusted(text)


def markdown_text(value: Any) -> str:
    """A value as inert Markdown text: shows exactly as written, never as syntax or markup."""
    if isinstance(value, Trusted):
        return value
    if isinstance(value, Markup):  # HTML-escaped by a Jinja filter: back to the plain text
        value = value.unescape()
    text = str(value).translate(_CONTROL)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_UNDERSCORE.sub(r"\\_", text)


def _finalize(context, value: Any) -> Any:
    """Jinja's last step before output: Markdown templates escape every value for Markdown (the
    result is marked safe, so autoescape does not HTML-escape it a second time)."""
    if context.name and context.name.endswith(".md.j2"):
        return Markup(markdown_text(value))
    return value


def environment():
    """The Jinja environment of every report (autoescape always on; see the module docstring)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        finalize=pass_context(_finalize),
        undefined=StrictUndefined,  # a misspelt variable is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # Code-built markup goes through `trusted`, in Python, and nothing else: a template cannot
    # mark a user's string safe (`|safe` is then an error when the template compiles).
    del env.filters["safe"]
    return env


def render(template: str, **context: Any) -> str:
    """Render one template of report/templates with the shared environment."""
    return environment().get_template(template).render(**context)
