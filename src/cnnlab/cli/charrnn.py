"""`cnnlab charrnn` (placeholder until its issue lands)."""

from __future__ import annotations

from cnnlab.errors import CnnlabError


def add_parser(sub) -> None:
    p = sub.add_parser("charrnn", help="(not implemented yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise CnnlabError("not implemented yet")
