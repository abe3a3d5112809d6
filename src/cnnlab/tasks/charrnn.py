"""`cnnlab charrnn`: train a character RNN on words or running text; complete and sample.

    cfg = TrainConfig(words=("hello", "green", "start"))
    results = train(cfg, out="runs/lab")                  # checkpoint + metrics in the run dir
    model, vocab, info = load_checkpoint("runs/lab")
    complete(model, vocab, ["h", "g", "s"], Sampling())   # -> hello, green, start

Training is one loop over optimisation steps for both kinds of data:
  words  an epoch is the training words in a (seed, epoch)-shuffled order, in padded batches;
         the loss is the mean cross-entropy over every predicted character incl. the end token.
  text   an epoch is the training text cut into `batch_size` streams read in `seq_len` windows,
         the hidden state carried from window to window and detached at the edge (truncated
         BPTT); each epoch shifts the window grid by a (seed, epoch)-random offset.
Gradients are clipped to a global norm (`clip`). Every epoch has the same number of steps
(text: `data.text.text_layout` reserves room for the largest shift).

The loop is the engine's (`engine.fit` in step mode): schedule, clipping, NaN guard, time
limit, metrics, checkpoints and exact resume are its; this module gives it the batches, a step
loss that carries the hidden state, and the validation. The checkpoint is the engine's `last`
(one atomic unit, `cnnlab.checkpoints`):
  last.json                          model config, vocabulary, training config ("kind":
                                     "charrnn"), step / epoch; written last, names the two below
  checkpoints/last-<n>.safetensors   the weights
  checkpoints/last-<n>.state.pt      optimizer, RNG state, carried hidden state, the losses of the
                                     metrics window not yet logged (loaded with weights_only=True)
It is written every `save_interval` seconds (at a validation point) and at the end, so a
`kill -9` loses at most that much training. `--resume` restores all of it — the batch order
follows from (seed, epoch) — and cuts metrics.jsonl back to the checkpoint's step (the lines
after it are logged again, a torn last line dropped): the resumed run's weights and metrics
are those of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from cnnlab import checkpoints
from cnnlab.data import text as textdata
from cnnlab.data.text import IGNORE, Vocab
from cnnlab.errors import CnnlabError
from cnnlab.hardware import resolve_precision
from cnnlab.models.char_rnn import CELLS, CharRNN, CharRNNConfig, Hidden, detach
from cnnlab.progress import Reporter
from cnnlab.runs import RunDir

# Defaults that differ between the two kinds of data. Words: the lab (3 words, 100 epochs of
# one batch) must train in seconds; text: a 2-layer model with tBPTT, sized for a CPU.
# Word models are tiny: intra-op threads buy nothing and, on a shared CPU, cost up to 20× in
# spinning (measured: 100 lab steps 0.27 s on 1 thread, 5.4 s on 2 with the other core busy).
WORD_DEFAULTS = {
    "epochs": 100,
    "lr": 0.01,
    "batch_size": 32,
    "hidden": 64,
    "layers": 1,
    "threads": 1,
}
TEXT_DEFAULTS = {"epochs": 10, "lr": 0.002, "batch_size": 64, "hidden": 256, "layers": 2}
SAVE_INTERVAL = 60.0  # default seconds between checkpoints during training (plus one at the end)
MAX_SHOWN_COMPLETIONS = 20  # word lists up to this size get their first letters completed


@dataclass(frozen=True)
class TrainConfig:
    """Everything a `charrnn train` run depends on. None = the default for the kind of data."""

    # data: exactly one of words / words_file / text
    words: tuple[str, ...] | None = None
    words_file: str | None = None
    text: str | None = None
    lines: bool = False  # read --text as one word per line (names.txt, makemore style)
    encoding: str = "utf-8"
    val_fraction: float = 0.1  # held-out share: words (makemore: 10%) and text (90/10 split)
    val_max_words: int = 1000  # makemore's cap on its test split: min(1000, 10% of words)
    split_seed: int = 3407  # makemore's default seed, which fixes its split
    # model
    cell: str = "gru"
    layers: int | None = None
    hidden: int | None = None
    embedding: int = 32
    one_hot: bool = False
    dropout: float = 0.0
    # optimisation (Adam)
    epochs: int | None = None
    lr: float | None = None  # Adam learning rate
    batch_size: int | None = None  # words per batch, or text streams
    seq_len: int = 128  # text: characters per truncated-BPTT window
    clip: float = 5.0  # global gradient-norm clip (char-rnn's 5); 0 = off
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "cosine": lr decays to lr/10 over the planned steps
    time_limit: float | None = None  # seconds of training in this invocation, then stop cleanly
    # Seconds between checkpoints, taken at the next validation (end of epoch / eval_every);
    # 0 = at every one. A crash (kill -9) loses at most this much training; --resume continues.
    save_interval: float = SAVE_INTERVAL
    eval_every: int = 0  # steps between validations (0 = at the end of every epoch)
    log_every: int = 10  # steps between training-loss lines in metrics.jsonl
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None = torch's default)

    def __post_init__(self) -> None:
        given = [n for n in ("words", "words_file", "text") if getattr(self, n) is not None]
        if len(given) != 1:
            raise CnnlabError("give exactly one of --words, --words-file, --text")
        if self.words is not None:
            object.__setattr__(self, "words", tuple(self.words))
        if self.lines and self.text is None:
            raise CnnlabError("--lines applies to --text only")
        defaults = WORD_DEFAULTS if self.mode == "words" else TEXT_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.cell not in CELLS:
            raise CnnlabError(f"unknown --cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.schedule not in ("constant", "cosine"):
            raise CnnlabError(f"unknown --schedule {self.schedule!r}; choose constant or cosine")
        for name in ("epochs", "batch_size", "seq_len", "layers", "hidden", "embedding"):
            if getattr(self, name) < 1:
                raise CnnlabError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise CnnlabError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise CnnlabError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise CnnlabError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.clip < 0 or self.weight_decay < 0 or self.eval_every < 0:
            raise CnnlabError("--clip, --weight-decay and --eval-every must be >= 0")
        if self.log_every < 1:
            raise CnnlabError("--log-every must be at least 1")
        if not self.save_interval >= 0:
            raise CnnlabError(f"--save-interval must be >= 0 seconds, not {self.save_interval}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise CnnlabError("--time-limit must be positive (seconds)")

    @property
    def mode(self) -> str:
        return "text" if self.text is not None and not self.lines else "words"

    def model_config(self, vocab_size: int) -> CharRNNConfig:
        return CharRNNConfig(
            vocab_size=vocab_size,
            cell=self.cell,
            layers=self.layers,  # type: ignore[arg-type]
            hidden=self.hidden,  # type: ignore[arg-type]
            embedding=self.embedding,
            one_hot=self.one_hot,
            dropout=self.dropout,
        )


# ------------------------------------------------------------------------------------------ data


@dataclass
class Data:
    """Tensors of one run's data. words: (x, y) padded id tensors; text: 1-D id tensors."""

    mode: str
    vocab: Vocab
    source: str
    train: Any
    val: Any  # None when nothing is held out (e.g. the lab's three words)
    counts: dict[str, int] = field(default_factory=dict)


def load_data(cfg: TrainConfig) -> Data:
    if cfg.mode == "words":
        if cfg.words is not None:
            source = "--words"
            words = textdata.check_words(list(cfg.words), source)
        else:
            path = cfg.words_file if cfg.words_file is not None else cfg.text
            source = str(path)
            raw = textdata.read_text(path, cfg.encoding)  # type: ignore[arg-type]
            words = textdata.check_words(textdata.words_from_lines(raw), source)
        vocab = Vocab.build(words, boundary=True)
        train_w, val_w = textdata.split_words(
            words, cfg.val_fraction, cfg.val_max_words, cfg.split_seed
        )
        train = textdata.word_tensors(train_w, vocab)
        val = textdata.word_tensors(val_w, vocab) if val_w else None
        counts = {"words": len(words), "train_words": len(train_w), "val_words": len(val_w)}
        return Data("words", vocab, source, train, val, counts)
    raw = textdata.check_text(textdata.read_text(cfg.text, cfg.encoding), str(cfg.text))  # type: ignore[arg-type]
    vocab = Vocab.build([raw], boundary=False)
    train_t, val_t = textdata.split_text(raw, cfg.val_fraction)
    stoi = vocab.stoi
    train = torch.tensor([stoi[c] for c in train_t], dtype=torch.long)
    val = torch.tensor([stoi[c] for c in val_t], dtype=torch.long) if len(val_t) > 1 else None
    counts = {
        "characters": len(raw),
        "train_characters": len(train_t),
        "val_characters": len(val_t),
    }
    return Data("text", vocab, str(cfg.text), train, val, counts)


def epoch_batches(
    data: Data, cfg: TrainConfig, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of one epoch, fixed by (seed, epoch)."""
    if data.mode == "words":
        x, y = data.train
        return textdata.word_batches(x, y, cfg.batch_size, cfg.seed, epoch)  # type: ignore[arg-type]
    layout = textdata.text_layout(data.train.numel(), cfg.batch_size, cfg.seq_len)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    # A new window grid every epoch, so no character is always the first of a window; the
    # layout gives every shift the same number of windows (= steps_per_epoch).
    shift = int(torch.randint(0, layout.max_shift + 1, (1,), generator=g)) if epoch > 0 else 0
    streams = textdata.text_streams(data.train, layout, shift)
    return [textdata.stream_window(streams, k, cfg.seq_len) for k in range(layout.n_steps)]


def epoch_steps(data: Data, cfg: TrainConfig) -> int:
    """Optimisation steps in every epoch (the same for all epochs)."""
    if data.mode == "words":
        return math.ceil(data.train[0].shape[0] / cfg.batch_size)  # type: ignore[operator]
    return textdata.text_layout(data.train.numel(), cfg.batch_size, cfg.seq_len).n_steps  # type: ignore[arg-type]


def eval_pairs(data: Data, split: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for evaluating a split: words as padded batches; text as
    `batch_size` contiguous streams (each starts from a zero state; a tail of fewer than
    `batch_size` characters is left out), so every scored character appears once."""
    if data.mode == "words":
        return split
    per = (split.numel() - 1) // batch_size
    if per < 1:
        batch_size, per = 1, split.numel() - 1
    rows = torch.stack([split[b * per : b * per + per + 1] for b in range(batch_size)])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(
    model: CharRNN, x: torch.Tensor, y: torch.Tensor, batch_size: int, seq_len: int, words: bool
) -> tuple[float, int]:
    """(mean cross-entropy in nats per scored character, number of scored characters).

    Words: rows in batches, padding ignored. Text: the streams read window by window with the
    hidden state carried, so each character is predicted from everything before it in its
    stream. The mean is over characters (sum of losses / count), not an average of batch means.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    if words:
        for start in range(0, x.shape[0], batch_size):
            bx, by = x[start : start + batch_size], y[start : start + batch_size]
            logits, _ = model(bx)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).double(),
                    by.reshape(-1),
                    ignore_index=IGNORE,
                    reduction="sum",
                )
            )
            count += int((by != IGNORE).sum())
    else:
        hidden: Hidden = None
        for start in range(0, x.shape[1], seq_len):
            bx, by = x[:, start : start + seq_len], y[:, start : start + seq_len]
            logits, hidden = model(bx, hidden)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).double(), by.reshape(-1), reduction="sum"
                )
            )
            count += by.numel()
    model.train(was_training)
    return total / count, count


def bigram_loss(
    vocab_size: int,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    alpha: float = 1.0,
) -> float:
    """Validation nats/char of a count-based bigram model with add-`alpha` (Laplace) smoothing,
    counted on the training pairs and scored on the same validation pairs as the network:
    P(next | prev) = (count(prev, next) + alpha) / (count(prev) + alpha * |V|)."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    tx, ty = train
    keep = ty != IGNORE
    counts.index_put_(
        (tx[keep], ty[keep]), torch.ones(int(keep.sum()), dtype=torch.float64), accumulate=True
    )
    logp = torch.log((counts + alpha) / (counts + alpha).sum(dim=1, keepdim=True))
    vx, vy = val
    keep = vy != IGNORE
    return float(-logp[vx[keep], vy[keep]].mean())


def _train_pairs(data: Data, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if data.mode == "words":
        return data.train
    return data.train[:-1], data.train[1:]


# ------------------------------------------------------------------------------------ checkpoints

CHECKPOINT = "last"  # the engine's `last` checkpoint: last.json + checkpoints/last-<serial>.*
KIND = "charrnn"  # in last.json, so that another command's checkpoint is refused by name


def _resolve_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == f"{CHECKPOINT}.json":
        path = path.parent
    if not checkpoints.exists(path, CHECKPOINT):
        raise CnnlabError(
            f"no charrnn checkpoint at {path} (expected the run directory of "
            f"`cnnlab charrnn train`, which holds {CHECKPOINT}.json)"
        )
    return path


def _read_meta(d: Path) -> dict[str, Any]:
    meta = checkpoints.read_meta(d, CHECKPOINT)
    if meta.get("kind") != KIND:
        raise CnnlabError(f"{d / (CHECKPOINT + '.json')} is not a charrnn checkpoint")
    return meta


def load_checkpoint(path: str | Path) -> tuple[CharRNN, Vocab, dict[str, Any]]:
    """(model in eval mode, vocabulary, the checkpoint's JSON) from a run directory (or its
    last.json)."""
    d = _resolve_checkpoint_dir(path)
    _read_meta(d)
    ck = checkpoints.load(d, CHECKPOINT, state=False)
    info = ck.meta
    try:
        vocab = Vocab.from_json(info["vocab"])
        model = CharRNN(CharRNNConfig(**info["model"]))
        model.load_state_dict(ck.weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CnnlabError(f"{d} does not hold a readable charrnn checkpoint: {exc}") from exc
    model.eval()
    return model, vocab, info


def _pack_hidden(hidden: Hidden) -> dict[str, Any]:
    """A carried hidden state as tensors and strings (the checkpoint loads weights_only)."""
    if isinstance(hidden, tuple):
        return {"kind": "lstm", "h": hidden[0], "c": hidden[1]}
    return {"kind": "none" if hidden is None else "tensor", "h": hidden}


def _unpack_hidden(packed: dict[str, Any]) -> Hidden:
    return (packed["h"], packed["c"]) if packed["kind"] == "lstm" else packed["h"]


# ----------------------------------------------------------------------------------------- train


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """`run` into a new directory (`out`, or runs/charrnn/<timestamp>) or, with `resume`, on in
    an existing run: for library use."""
    from cnnlab.tasks import run_task

    if resume is not None:
        run_dir = RunDir.open(resume)
        return run(cfg, run_dir, reporter or Reporter(quiet=True), resume=True)
    return run_task(run, cfg, RunDir.create("charrnn", out), reporter or Reporter(quiet=True))


def run(
    cfg: TrainConfig, run_dir: RunDir, reporter: Reporter, resume: bool = False
) -> dict[str, Any]:
    """Train (or continue) a character model on the engine's step mode (`engine.fit`);
    returns results (also saved as results.json).

    With `resume`, `run_dir` is an existing run and `cfg` its own config with only `epochs` /
    `time_limit` changed (`config.from_run` builds it); the run continues in that directory."""
    from cnnlab.engine import FitConfig, fit
    from cnnlab.recipes import warmup_cosine

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    vocab = data.vocab
    # Seeded here, not by the engine: the initial weights and then the dropout draws come from
    # one stream, which a resumed run restores from the checkpoint.
    torch.manual_seed(cfg.seed)
    model = CharRNN(cfg.model_config(len(vocab)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = epoch_steps(data, cfg)
    total_steps = steps_per_epoch * cfg.epochs  # type: ignore[operator]
    run = run_dir
    continues = resume and checkpoints.exists(run.path, CHECKPOINT)
    # fp32 always (the recurrent kernels gain nothing from bf16 on the CPU); CNNLAB_PRECISION=fp32
    # is named as the reason when it is set.
    precision, why = resolve_precision("fp32", "cpu", source="charrnn trains in")
    if continues:
        if Vocab.from_json(_read_meta(run.path)["vocab"]) != vocab:
            raise CnnlabError(
                f"the data of {run} has changed since it was trained (its vocabulary "
                "differs); start a new run instead of --resume"
            )
        run.save_config(cfg)
    elif resume:  # stopped (killed) before its first checkpoint: nothing to continue from
        reporter.log(f"{run} has no checkpoint yet: training again from step 0")
        # Lines a crashed first attempt logged are logged again; a torn last line goes too.
        run.truncate_metrics(lambda r: r.get("step", 0) <= 0)
        run.save_config(cfg)
        reporter.log(f"resuming {run} at step 0 (epoch 0.00)")
    else:
        run.save_config(cfg)
        run.save_environment(seed=cfg.seed, device="cpu", precision=precision,
                             precision_reason=why)

    n_params = sum(p.numel() for p in model.parameters())
    val_pairs = eval_pairs(data, data.val, cfg.batch_size) if data.val is not None else None  # type: ignore[arg-type]
    words = data.mode == "words"
    eval_bs = 256 if words else cfg.batch_size
    carried: dict[str, Hidden] = {"hidden": None}  # text: the state read on from window to window

    def step_loss(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, new_hidden = m(x, None if words else carried["hidden"])
        if not words:  # truncated BPTT: the next window starts from these values, not graph
            carried["hidden"] = detach(new_hidden)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE
        )

    def before_epoch(m: torch.nn.Module, epoch: int) -> None:
        carried["hidden"] = None  # each epoch re-cuts the text: its state starts from zero

    def validate(m: torch.nn.Module) -> dict[str, float]:
        if val_pairs is None:
            return {}
        loss, _ = evaluate(m, *val_pairs, batch_size=eval_bs, seq_len=cfg.seq_len, words=words)  # type: ignore[arg-type]
        return {"val_loss": loss, "val_bpc": textdata.bits(loss)}

    meta = {"kind": KIND, "model": dataclasses.asdict(model.cfg), "vocab": vocab.to_json(),
            "mode": cfg.mode, "config": cfg}
    fit_config = FitConfig(
        epochs=cfg.epochs,  # type: ignore[arg-type]
        seed=None,
        precision=precision,
        unit="steps",
        grad_clip=cfg.clip,
        monitor=None,
        time_limit=cfg.time_limit,
        log_every=cfg.log_every,
        eval_every_steps=cfg.eval_every,
        # A checkpoint at most every save_interval s (60): the lab's 100 one-batch epochs must
        # not spend its second on fsyncs; a crash loses at most that much training.
        checkpoint_seconds=cfg.save_interval,
    )
    reporter.log(
        f"{data.mode} data: {data.source}, |V| = {len(vocab)}, {data.counts}; model: {cfg.cell} "
        f"{cfg.layers}×{cfg.hidden}, {n_params:,} parameters; {steps_per_epoch} steps/epoch"
    )
    result = fit(
        model, optimizer, lambda epoch: epoch_batches(data, cfg, epoch), steps_per_epoch,
        fit_config, run, reporter,
        evaluate=validate,
        # cosine from lr to lr/10 over the planned steps (then held)
        lr_schedule=None if cfg.schedule == "constant" else warmup_cosine(total_steps, 0, 0.1),
        before_epoch=before_epoch,
        extra_state=(lambda: {"hidden": _pack_hidden(carried["hidden"])},
                     lambda s: carried.__setitem__("hidden", _unpack_hidden(s["hidden"]))),
        step_loss=step_loss,
        extra_meta=lambda: meta,
        resume=continues,
        device="cpu",
    )
    model.eval()
    results = _results(cfg, data, model, run, result, steps_per_epoch, n_params)
    run.save_results(results)
    try:
        from cnnlab.report.curves import plot_loss_curves

        plot_loss_curves(
            run.read_metrics(),
            run.file("loss_curve.png"),
            title=f"charrnn {cfg.cell} on {Path(data.source).name}",
        )
    except ImportError:  # matplotlib missing: the curve is a convenience, the numbers are saved
        reporter.log("matplotlib unavailable: no loss_curve.png")
    return results


def _results(cfg, data, model, run, result, steps_per_epoch, n_params) -> dict[str, Any]:
    from cnnlab.models.char_rnn import Sampling, complete

    vocab = data.vocab
    val_losses = [r["val_loss"] for r in result.history if r.get("val_loss") is not None]
    val_loss = result.last.get("val_loss")
    res: dict[str, Any] = {
        "run_dir": str(run.path),
        "mode": data.mode,
        "source": data.source,
        "vocab_size": len(vocab),
        **data.counts,
        "parameters": n_params,
        "steps": result.steps,
        "epochs": result.steps / steps_per_epoch,
        "stopped_by_time_limit": result.stopped == "time-limit",
        "train_seconds": round(result.train_seconds, 3),
        "train_loss": result.train_loss,
        "val_loss": val_loss,
        "val_bpc": None if val_loss is None else textdata.bits(val_loss),
        "best_val_loss": min(val_losses) if val_losses else None,
        # A model that knows nothing: every character equally likely.
        "uniform_loss": math.log(len(vocab)),
    }
    if data.val is not None:
        val_pairs = eval_pairs(data, data.val, cfg.batch_size)
        b = bigram_loss(len(vocab), _train_pairs(data, cfg), val_pairs)
        res["bigram_val_loss"] = b
        res["bigram_val_bpc"] = textdata.bits(b)
    if data.mode == "words" and data.counts["words"] <= MAX_SHOWN_COMPLETIONS:
        x, _ = data.train
        firsts = sorted({vocab.chars[int(i) - 1] for i in x[:, 1]})
        comps = complete(model, vocab, firsts, Sampling())
        res["completions"] = {c.prefix: [c.completion, c.probability] for c in comps}
    return res
