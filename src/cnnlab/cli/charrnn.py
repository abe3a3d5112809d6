"""`cnnlab charrnn`: character-level RNN / GRU / LSTM — learn words and complete them, or
learn running text and write more of it."""

from __future__ import annotations

import argparse

from cnnlab.api.charrnn import TRAIN_KEYS, TRAIN_RESUME
from cnnlab.cli.common import HelpFormatter, add_output_options, add_quiet
from cnnlab.cli.resume import add_resume_option, refuse_changes

DESCRIPTION = """\
Character-level RNN / GRU / LSTM.

Word mode (the classic lab, words of any length):
  cnnlab charrnn train --words hello green start --out runs/lab
  cnnlab charrnn complete runs/lab h g s e t

The lab exactly (one-hot input, nn.RNN with 12 hidden units, Adam 0.01, 100 epochs):
  cnnlab charrnn train --words hello green start --one-hot --cell rnn --hidden 12 \\
      --lr 0.01 --epochs 100

Names, makemore style (one word per line, 10%% / at most 1000 words held out):
  cnnlab charrnn train --words-file ../shared/data/text/names.txt --epochs 10
  cnnlab charrnn sample RUN --num 10 --temperature 1

Running text (90/10 split, truncated BPTT):
  cnnlab charrnn train --text ../shared/data/text/tinyshakespeare.txt --cell lstm
  cnnlab charrnn sample RUN --prompt "ROMEO:" --length 500 --temperature 0.8
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "charrnn",
        help="character RNN/GRU/LSTM: learn words and complete them, or write text",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    cmds = p.add_subparsers(dest="charrnn_command", metavar="SUBCOMMAND", required=True)
    _add_train(cmds)
    _add_complete(cmds)
    _add_sample(cmds)


def _add_train(cmds) -> None:
    # SUPPRESS: a flag the user did not give is absent, so TrainConfig's defaults (and a
    # --config file) apply; defaults are stated in the help texts instead.
    p = cmds.add_parser(
        "train",
        help="train on words or running text",
        formatter_class=HelpFormatter,
        argument_default=argparse.SUPPRESS,
        description="Train a character model; the run directory gets config.json, "
        "metrics.jsonl, results.json, loss_curve.png and the checkpoint "
        "(last.json naming checkpoints/last-N.*). Defaults marked 'mode' differ: "
        "words: 100 epochs, lr 0.01, batch 32, 1×64; text: 10 epochs, lr 0.002, batch 64, 2×256.",
    )
    data = p.add_argument_group("data (exactly one of --words, --words-file, --text)")
    data.add_argument("--words", nargs="+", metavar="WORD", help="the words to learn")
    data.add_argument("--words-file", metavar="FILE", help="words, one per line (e.g. names.txt)")
    data.add_argument("--text", metavar="FILE", help="running text (e.g. tinyshakespeare.txt)")
    data.add_argument("--lines", action="store_true", help="read --text as one word per line")
    data.add_argument("--encoding", help="text encoding of the files (default: utf-8)")
    data.add_argument(
        "--val-fraction",
        type=float,
        help="held-out share (default: 0.1; words: at most --val-max-words)",
    )
    data.add_argument(
        "--val-max-words",
        type=int,
        help="cap on held-out words (default: 1000; makemore's test split is min(1000, 10%%))",
    )
    data.add_argument(
        "--split-seed", type=int, help="seed of the word split (default: 3407, makemore's)"
    )
    model = p.add_argument_group("model")
    model.add_argument("--cell", choices=["rnn", "gru", "lstm"], help="(default: gru)")
    model.add_argument("--layers", type=int, help="recurrent layers (default: mode)")
    model.add_argument("--hidden", type=int, help="hidden units per layer (default: mode)")
    model.add_argument("--embedding", type=int, help="learned embedding width (default: 32)")
    model.add_argument(
        "--one-hot",
        action="store_true",
        help="one-hot input instead of a learned embedding (the lab)",
    )
    model.add_argument(
        "--dropout", type=float, help="between layers and before the read-out (default: 0)"
    )
    opt = p.add_argument_group("training (Adam)")
    opt.add_argument("--epochs", type=int, help="passes over the training data (default: mode)")
    opt.add_argument("--lr", type=float, help="learning rate (default: mode)")
    opt.add_argument(
        "--batch-size", type=int, help="words per batch / text streams (default: mode)"
    )
    opt.add_argument("--seq-len", type=int, help="text: characters per BPTT window (default: 128)")
    opt.add_argument("--clip", type=float, help="global gradient-norm clip, 0 = off (default: 5)")
    opt.add_argument("--weight-decay", type=float, help="Adam weight decay (default: 0)")
    opt.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        help="cosine: lr decays to lr/10 over the planned steps (default: constant)",
    )
    opt.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop cleanly after this much training (resumable)",
    )
    opt.add_argument(
        "--save-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between checkpoints, taken at the next validation; 0 = every validation "
        "(default: 60; a crash loses at most this much training, --resume continues)",
    )
    opt.add_argument(
        "--eval-every", type=int, help="steps between validations, 0 = every epoch (default: 0)"
    )
    opt.add_argument("--log-every", type=int, help="steps between metrics lines (default: 10)")
    opt.add_argument("--seed", type=int, help="initialisation / batch-order seed (default: 0)")
    opt.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--config", metavar="YAML", help="settings file; flags override it")
    add_output_options(p)
    # --time-limit is this session's training time: a resume does not inherit the last one.
    add_resume_option(
        p,
        allowed=TRAIN_RESUME.allowed,
        per_invocation=TRAIN_RESUME.per_invocation,
        metavar="RUN_DIR",
        help="continue this run (its data and model) up to --epochs",
    )
    p.set_defaults(run=run_train)


def _add_generation(p) -> None:
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (argmax); otherwise sample from softmax(logits / T)",
    )
    p.add_argument("--top-k", type=int, help="sample only among the k likeliest characters")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    add_quiet(p)


def _add_complete(cmds) -> None:
    p = cmds.add_parser(
        "complete",
        help="complete word prefixes (word-mode checkpoints)",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="run directory of charrnn train"
    )
    p.add_argument("prefixes", nargs="+", metavar="PREFIX")
    p.add_argument("--max-length", type=int, default=30, help="longest completion, in characters")
    _add_generation(p)
    p.set_defaults(run=run_complete)


def _add_sample(cmds) -> None:
    p = cmds.add_parser(
        "sample", help="write text (or words) from a checkpoint", formatter_class=HelpFormatter
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="run directory of charrnn train"
    )
    p.add_argument("--prompt", default="", help="text to start from")
    p.add_argument("--length", type=int, default=500, help="characters to generate (text)")
    p.add_argument("--num", type=int, default=10, help="words to generate (word models)")
    _add_generation(p)
    p.set_defaults(run=run_sample)


# --------------------------------------------------------------------------------------------- run


def run_train(args: argparse.Namespace) -> int:
    from cnnlab.api import charrnn
    from cnnlab.progress import Reporter

    quiet = getattr(args, "quiet", False)
    if getattr(args, "resume", None):
        refuse_changes(args)
    # Flags not given are absent (SUPPRESS): the API's None, the config's default.
    values = {k: getattr(args, k) for k in TRAIN_KEYS if hasattr(args, k)}
    result = charrnn.train(config=getattr(args, "config", None), out=getattr(args, "out", None),
                           quiet=quiet, resume=getattr(args, "resume", None), **values)
    _print_results(Reporter(quiet=quiet), result.results, result.rows)
    return 0


def _print_results(reporter, r: dict, losses: list[dict]) -> None:
    reporter.result(f"run: {r['run_dir']}")
    reporter.result(
        f"{r['steps']} steps ({r['epochs']:.2f} epochs) in {r['train_seconds']:.1f} s; "
        f"{r['parameters']:,} parameters; |V| = {r['vocab_size']}"
    )
    reporter.table(
        ["loss", "nats/char", "bits/char"],
        [[x["loss"], f"{x['nats/char']:.4f}",
          "" if x["bits/char"] is None else f"{x['bits/char']:.4f}"] for x in losses],
        right_align=["nats/char", "bits/char"],
    )
    if r.get("completions"):
        reporter.table(
            ["prefix", "completion", "probability"],
            [[p, c, f"{pr:.3f}"] for p, (c, pr) in r["completions"].items()],
            right_align=["probability"],
        )


def run_complete(args: argparse.Namespace) -> int:
    from cnnlab.api import charrnn
    from cnnlab.progress import Reporter

    result = charrnn.complete(args.checkpoint, args.prefixes, max_length=args.max_length,
                              temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                              quiet=args.quiet)
    Reporter(quiet=args.quiet).table(
        ["prefix", "completion", "probability"],
        [
            [
                c["prefix"],
                c["completion"] + ("" if c["ended"] else " …(--max-length)"),
                f"{c['probability']:.4f}",
            ]
            for c in result.rows
        ],
        right_align=["probability"],
    )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from cnnlab.api import charrnn
    from cnnlab.progress import Reporter

    result = charrnn.sample(args.checkpoint, prompt=args.prompt, length=args.length,
                            num=args.num, temperature=args.temperature, top_k=args.top_k,
                            seed=args.seed, quiet=args.quiet)
    reporter = Reporter(quiet=args.quiet)
    if "words" in result.results:
        for word in result.results["words"]:
            reporter.result(word)
    else:
        reporter.result(result.results["text"])
    return 0
