"""`--resume RUN`, the same for every command that can continue a run.

A resumed run keeps the settings it was started with (its config.json): a flag that would change
them is refused by name, never silently ignored. Each command declares the few flags that may
change on resume (more epochs, a new time limit, more trials) where it adds the option:

    def add_parser(sub):
        p = sub.add_parser("train", ...)
        ...                                          # every other argument first
        add_resume_option(p, allowed=("time_limit", "threads"), help="continue ...")

    def run(args):
        if args.resume:
            config = resume_config(args, train.TrainConfig, "train")

Flags that only say how to print (`-q`) are always allowed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

C = TypeVar("C")

# Destinations that never change a run: how much to print, and --resume itself.
ALWAYS_ALLOWED = frozenset({"quiet", "resume", "help"})


@dataclass(frozen=True)
class ResumeRules:
    """What `add_resume_option` learnt from the parser, for `resume_config` to check."""

    allowed: tuple[str, ...]  # destinations that may change on resume
    per_invocation: tuple[str, ...]  # settings of one invocation: not inherited from the run
    flags: dict[str, str]  # destination -> the flag as the user types it ("-m/--model")
    defaults: dict[str, Any]  # destination -> its value when the flag is not given


def add_resume_option(parser: argparse.ArgumentParser, *, allowed: Sequence[str] = (),
                      per_invocation: Sequence[str] = (), help: str = "continue this run",
                      metavar: str = "RUN") -> None:
    """Add `--resume`; call it after every other argument of `parser`, so that each one is
    known by the name the user typed.

    `allowed`: the destinations (config fields of the same name) that may be given with
    --resume and replace the run's own values. `per_invocation`: settings that hold for one
    invocation only (a time limit of this session): a resume does not inherit them from
    config.json but takes the flag's value, or None (none) when it is not given."""
    flags: dict[str, list[str]] = {}
    defaults: dict[str, Any] = {}
    # argparse has no public list of a parser's arguments; `_actions` is the stable, documented-
    # by-use way that argparse's own help formatter and every shell-completion tool read.
    for action in parser._actions:
        names = action.option_strings or [action.metavar or action.dest.upper()]
        flags.setdefault(action.dest, []).extend(names)
        defaults.setdefault(action.dest, action.default)
    unknown = sorted(set(allowed) - set(flags))
    if unknown:  # a programming error in the command, not the user's
        raise ValueError(f"add_resume_option: {parser.prog} has no argument {unknown[0]!r}")
    shown = ", ".join("/".join(flags[d]) for d in allowed)
    parser.add_argument("--resume", metavar=metavar,
                        help=help + (f"; only {shown} may be given with it" if shown else
                                     "; no other setting may be given with it"))
    parser.set_defaults(resume_rules=ResumeRules(
        allowed=tuple(allowed), per_invocation=tuple(per_invocation),
        flags={d: "/".join(dict.fromkeys(n)) for d, n in flags.items()}, defaults=defaults))


def given_flags(args: argparse.Namespace) -> list[str]:
    """Destinations of the flags the user gave (a value other than the flag's default)."""
    rules: ResumeRules = args.resume_rules
    return [d for d, default in rules.defaults.items()
            if getattr(args, d, argparse.SUPPRESS) is not argparse.SUPPRESS
            and getattr(args, d) != default]


def refuse_changes(args: argparse.Namespace) -> list[str]:
    """With --resume: a one-line CnnlabError naming, as the user typed them, the flags given
    that this command does not allow on resume; else the destinations of the flags given.

    The commands that go through the API call this before it, so the refusal names flags
    (`--epochs`) where the API's own names keywords (`epochs=`)."""
    from cnnlab.errors import CnnlabError

    rules: ResumeRules = args.resume_rules
    given = given_flags(args)
    refused = [d for d in given if d not in rules.allowed and d not in ALWAYS_ALLOWED]
    if refused:
        names = ", ".join(rules.flags[d] for d in refused)
        only = ", ".join(rules.flags[d] for d in rules.allowed)
        raise CnnlabError(
            f"--resume continues {args.resume} with the settings it was started with; "
            f"{names} cannot be given with it "
            + (f"(only {only} can)" if only else "(no other flag can)"))
    return given


def resume_config(args: argparse.Namespace, cls: type[C], command: str) -> C:
    """The config of the run `args.resume` (its config.json) with the flags this command allows
    on resume applied; any other flag given is a one-line CnnlabError naming it.

    A missing, unreadable or malformed config.json, or another command's run, is a one-line
    CnnlabError too (`config.from_run`)."""
    from cnnlab.config import from_run

    rules: ResumeRules = args.resume_rules
    given = refuse_changes(args)
    changes = {d: None for d in rules.per_invocation}
    changes.update({d: getattr(args, d) for d in given if d in rules.allowed})
    return from_run(cls, args.resume, command, changes)
