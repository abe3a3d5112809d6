"""`cnnlab charrnn`: character-level RNN / GRU / LSTM — learn words and complete them, or
learn running text and write more of it."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import HelpFormatter, add_output_options, add_quiet
from cnnlab.cli.resume import add_resume_option, resume_config

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
        allowed=("epochs", "time_limit", "threads"),
        per_invocation=("time_limit",),
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
    p.set_defaults(run=run_complete, default_temperature=0.0)


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
    p.set_defaults(run=run_sample, default_temperature=1.0)


# --------------------------------------------------------------------------------------------- run

TRAIN_KEYS = [
    "words",
    "words_file",
    "text",
    "lines",
    "encoding",
    "val_fraction",
    "val_max_words",
    "split_seed",
    "cell",
    "layers",
    "hidden",
    "embedding",
    "one_hot",
    "dropout",
    "epochs",
    "lr",
    "batch_size",
    "seq_len",
    "clip",
    "weight_decay",
    "schedule",
    "time_limit",
    "save_interval",
    "eval_every",
    "log_every",
    "seed",
    "threads",
]


def run_train(args: argparse.Namespace) -> int:
    from cnnlab.config import resolve
    from cnnlab.dist import open_run
    from cnnlab.progress import Reporter
    from cnnlab.tasks import charrnn, run_task

    reporter = Reporter(quiet=getattr(args, "quiet", False))
    if getattr(args, "resume", None):
        cfg = resume_config(args, charrnn.TrainConfig, "charrnn")
        run_dir = open_run("charrnn", None, resume=args.resume)
        results = charrnn.run(cfg, run_dir, reporter, resume=True)
    else:
        values = {k: getattr(args, k) for k in TRAIN_KEYS if hasattr(args, k)}
        cfg = resolve(charrnn.TrainConfig, values, getattr(args, "config", None))
        run_dir = open_run("charrnn", getattr(args, "out", None))
        results = run_task(charrnn.run, cfg, run_dir, reporter)
    _print_results(reporter, results)
    return 0


def _print_results(reporter, r: dict) -> None:
    reporter.result(f"run: {r['run_dir']}")
    reporter.result(
        f"{r['steps']} steps ({r['epochs']:.2f} epochs) in {r['train_seconds']:.1f} s; "
        f"{r['parameters']:,} parameters; |V| = {r['vocab_size']}"
    )
    rows = []
    if r.get("train_loss") is not None:
        rows.append(["train (last steps)", f"{r['train_loss']:.4f}", ""])
    if r.get("val_loss") is not None:
        rows.append(["validation", f"{r['val_loss']:.4f}", f"{r['val_bpc']:.4f}"])
    if r.get("bigram_val_loss") is not None:
        rows.append(
            [
                "bigram baseline (validation)",
                f"{r['bigram_val_loss']:.4f}",
                f"{r['bigram_val_bpc']:.4f}",
            ]
        )
    rows.append(["uniform ln|V|", f"{r['uniform_loss']:.4f}", ""])
    reporter.table(["loss", "nats/char", "bits/char"], rows, right_align=["nats/char", "bits/char"])
    if r.get("completions"):
        reporter.table(
            ["prefix", "completion", "probability"],
            [[p, c, f"{pr:.3f}"] for p, (c, pr) in r["completions"].items()],
            right_align=["probability"],
        )


def _sampling(args):
    from cnnlab.models.char_rnn import Sampling

    t = args.default_temperature if args.temperature is None else args.temperature
    return Sampling(temperature=t, top_k=args.top_k, seed=args.seed)


def run_complete(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.models.char_rnn import complete
    from cnnlab.progress import Reporter
    from cnnlab.tasks.charrnn import load_checkpoint

    if args.max_length < 1:
        raise CnnlabError("--max-length must be at least 1")
    how = _sampling(args)
    model, vocab, _ = load_checkpoint(args.checkpoint)
    comps = complete(model, vocab, list(args.prefixes), how, max_length=args.max_length)
    Reporter(quiet=args.quiet).table(
        ["prefix", "completion", "probability"],
        [
            [
                c.prefix,
                c.completion + ("" if c.ended else " …(--max-length)"),
                f"{c.probability:.4f}",
            ]
            for c in comps
        ],
        right_align=["probability"],
    )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from cnnlab.errors import CnnlabError
    from cnnlab.models.char_rnn import complete, sample_text
    from cnnlab.progress import Reporter
    from cnnlab.tasks.charrnn import load_checkpoint

    how = _sampling(args)
    model, vocab, _ = load_checkpoint(args.checkpoint)
    reporter = Reporter(quiet=args.quiet)
    if vocab.boundary:
        if args.num < 1:
            raise CnnlabError("--num must be at least 1")
        from dataclasses import replace

        for i in range(args.num):
            # One generator stream per word, derived from --seed: word i is the same whatever --num.
            c = complete(model, vocab, [args.prompt], replace(how, seed=how.seed * 100_003 + i))[0]
            reporter.result(c.completion)
        return 0
    reporter.result(sample_text(model, vocab, args.prompt, args.length, how))
    return 0
