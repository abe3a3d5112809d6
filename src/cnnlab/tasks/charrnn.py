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

The checkpoint is one atomic unit (`cnnlab.checkpoints`, name "last"):
  last.json                          model config, vocabulary, training config, step / epoch,
                                     losses; written last, names the two files below
  checkpoints/last-<n>.safetensors   the weights
  checkpoints/last-<n>.state.pt      optimizer, RNG state, carried hidden state, the losses of the
                                     metrics window not yet logged (tensors and plain containers;
                                     loaded with weights_only=True)
It is written every `save_interval` seconds (at a validation point) and at the end, so a
`kill -9` loses at most that much training. `--resume` restores all of it — the batch order
follows from (seed, epoch) — and cuts metrics.jsonl back to the checkpoint's step (the lines
after it are logged again, a torn last line dropped): the resumed run's weights and metrics
are those of an uninterrupted one. Runs written before last.json existed (model.safetensors +
optimizer.pt + checkpoint.json in the run root) are still read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from cnnlab import checkpoints
from cnnlab.data import text as textdata
from cnnlab.data.text import IGNORE, Vocab
from cnnlab.errors import CnnlabError
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

CHECKPOINT = "last"  # checkpoints.save name: last.json + checkpoints/last-<serial>.*
KIND = "charrnn"  # in last.json, so that another command's checkpoint is refused by name
# The layout before cnnlab.checkpoints (three files in the run root, not one atomic unit):
# still read by complete / sample / --resume.
LEGACY_JSON, LEGACY_WEIGHTS, LEGACY_STATE = "checkpoint.json", "model.safetensors", "optimizer.pt"


def _is_legacy(d: Path) -> bool:
    return (d / LEGACY_JSON).is_file() and (d / LEGACY_WEIGHTS).is_file()


def _has_checkpoint(d: Path) -> bool:
    return checkpoints.exists(d, CHECKPOINT) or _is_legacy(d)


def _resolve_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (f"{CHECKPOINT}.json", LEGACY_JSON, LEGACY_WEIGHTS):
        path = path.parent
    if not _has_checkpoint(path):
        raise CnnlabError(
            f"no charrnn checkpoint at {path} (expected the run directory of "
            f"`cnnlab charrnn train`, which holds {CHECKPOINT}.json)"
        )
    return path


def _read_checkpoint(d: Path, state: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """(checkpoint JSON, weights, training state or None) of the run directory `d`."""
    if checkpoints.exists(d, CHECKPOINT):
        ck = checkpoints.load(d, CHECKPOINT, state=state)
        if ck.meta.get("kind") != KIND:
            raise CnnlabError(f"{d / (CHECKPOINT + '.json')} is not a charrnn checkpoint")
        return ck.meta, ck.weights, ck.state
    import json

    from safetensors.torch import load_file

    try:
        meta = json.loads((d / LEGACY_JSON).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != "cnnlab-charrnn/1":
            raise ValueError(f"{LEGACY_JSON} is not a charrnn checkpoint")
        weights = load_file(str(d / LEGACY_WEIGHTS))
        extra = torch.load(d / LEGACY_STATE, weights_only=True) if state else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise CnnlabError(f"{d} does not hold a readable charrnn checkpoint: {exc}") from exc
    return meta, weights, extra


def save_checkpoint(
    run: RunDir,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    vocab: Vocab,
    progress: dict[str, Any],
    hidden: Hidden,
    window_losses: list[float],
) -> None:
    """One atomic checkpoint (`cnnlab.checkpoints`): the weights, the training state needed to
    continue bit for bit (optimizer, RNG, carried hidden state, the losses of the metrics
    window not yet logged), and last.json naming them with the model, vocabulary and step."""
    if isinstance(hidden, tuple):
        hid = {"kind": "lstm", "h": hidden[0], "c": hidden[1]}
    else:
        hid = {"kind": "none" if hidden is None else "tensor", "h": hidden}
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "hidden": hid,
        "window_losses": list(window_losses),
    }
    meta = {
        "kind": KIND,
        "model": dataclasses.asdict(model.cfg),
        "vocab": vocab.to_json(),
        "mode": cfg.mode,
        "config": cfg,
        **progress,
    }
    checkpoints.save(run.path, CHECKPOINT, model.state_dict(), meta, state)


def load_checkpoint(path: str | Path) -> tuple[CharRNN, Vocab, dict[str, Any]]:
    """(model in eval mode, vocabulary, the checkpoint's JSON) from a run directory (or its
    last.json)."""
    d = _resolve_checkpoint_dir(path)
    info, weights, _ = _read_checkpoint(d, state=False)
    try:
        vocab = Vocab.from_json(info["vocab"])
        model = CharRNN(CharRNNConfig(**info["model"]))
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CnnlabError(f"{d} does not hold a readable charrnn checkpoint: {exc}") from exc
    model.eval()
    return model, vocab, info


# ----------------------------------------------------------------------------------------- train


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr  # type: ignore[return-value]
    # cosine from lr to lr/10 over the planned steps (then held)
    frac = min(step / max(total, 1), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # type: ignore[operator]


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
    """Train (or continue) a character model; returns results (also saved as results.json).

    With `resume`, `run_dir` is an existing run and `cfg` its own config with only `epochs` /
    `time_limit` changed (`config.from_run` builds it); the run continues in that directory."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    vocab = data.vocab
    torch.manual_seed(cfg.seed)
    model = CharRNN(cfg.model_config(len(vocab)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = epoch_steps(data, cfg)
    total_steps = steps_per_epoch * cfg.epochs  # type: ignore[operator]

    step, train_seconds, best_val = 0, 0.0, None
    hidden: Hidden = None
    window_losses: list[float] = []  # training losses since the last metrics line
    last_train = None
    val_loss = None
    run = run_dir
    if resume:
        if _has_checkpoint(run.path):
            info, weights, extra = _read_checkpoint(run.path, state=True)
            if Vocab.from_json(info["vocab"]) != vocab:
                raise CnnlabError(
                    f"the data of {run} has changed since it was trained (its vocabulary "
                    "differs); start a new run instead of --resume"
                )
            model.load_state_dict(weights)
            optimizer.load_state_dict(extra["optimizer"])
            torch.set_rng_state(extra["rng"])
            hid = extra["hidden"]
            hidden = (hid["h"], hid["c"]) if hid["kind"] == "lstm" else hid["h"]
            window_losses = list(extra.get("window_losses", []))
            step, train_seconds = int(info["step"]), float(info["train_seconds"])
            best_val, last_train = info.get("best_val_loss"), info.get("train_loss")
            val_loss = info.get("val_loss")
            if step >= total_steps:
                raise CnnlabError(
                    f"{run} already trained {step} steps ({info['epoch']:.2f} epochs); "
                    f"give a larger --epochs to continue"
                )
        else:  # stopped (killed) before its first checkpoint: nothing to continue from
            reporter.log(f"{run} has no checkpoint yet: training again from step 0")
        # Lines logged after the checkpoint are logged again from here on; a crash may also
        # have left half a line at the end.
        dropped = run.truncate_metrics(lambda r: r.get("step", 0) <= step)
        run.save_config(cfg)
        reporter.log(
            f"resuming {run} at step {step} (epoch {step / steps_per_epoch:.2f})"
            + (f"; {dropped} metrics line(s) from after the checkpoint dropped" if dropped else "")
        )
    else:
        run.save_config(cfg)
        run.save_environment(seed=cfg.seed, device="cpu")

    n_params = sum(p.numel() for p in model.parameters())
    val_pairs = eval_pairs(data, data.val, cfg.batch_size) if data.val is not None else None  # type: ignore[arg-type]
    words = data.mode == "words"
    eval_bs = 256 if words else cfg.batch_size

    def validate() -> float | None:
        if val_pairs is None:
            return None
        loss, _ = evaluate(model, *val_pairs, batch_size=eval_bs, seq_len=cfg.seq_len, words=words)  # type: ignore[arg-type]
        return loss

    reporter.log(
        f"{data.mode} data: {data.source}, |V| = {len(vocab)}, {data.counts}; model: {cfg.cell} "
        f"{cfg.layers}×{cfg.hidden}, {n_params:,} parameters; {steps_per_epoch} steps/epoch"
    )
    model.train()
    start_time = time.monotonic()
    stopped_early = False

    def checkpoint_state() -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step / steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "train_seconds": train_seconds + (time.monotonic() - start_time),
            "train_loss": last_train,
            "val_loss": val_loss,
            "best_val_loss": best_val,
        }

    def record_val() -> None:
        nonlocal val_loss, best_val
        val_loss = validate()
        if val_loss is not None:
            best_val = val_loss if best_val is None else min(best_val, val_loss)
            run.append_metrics(
                {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "val_loss": val_loss,
                    "val_bpc": textdata.bits(val_loss),
                }
            )
            bpc = textdata.bits(val_loss)
            reporter.log(f"step {step}: val loss {val_loss:.4f} nats/char ({bpc:.3f} bpc)")

    last_save, saved_step = time.monotonic(), None

    def save() -> None:
        nonlocal last_save, saved_step
        save_checkpoint(
            run, model, optimizer, cfg, vocab, checkpoint_state(), hidden, window_losses
        )
        last_save, saved_step = time.monotonic(), step

    epoch = step // steps_per_epoch
    progress = reporter.track(
        range(step, total_steps), total=total_steps - step, description="training", unit="steps"
    )
    batches = epoch_batches(data, cfg, epoch)
    for _ in progress:
        k = step - epoch * steps_per_epoch
        if k == 0:
            hidden = None  # each epoch re-cuts the text: its state starts from zero
        bx, by = batches[k]
        lr = _lr_at(cfg, step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits, new_hidden = model(bx, None if words else hidden)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), by.reshape(-1), ignore_index=IGNORE
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        hidden = None if words else detach(new_hidden)
        step += 1
        window_losses.append(loss.item())
        if step % cfg.log_every == 0 or step == total_steps:
            last_train = sum(window_losses) / len(window_losses)
            window_losses = []
            run.append_metrics(
                {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "train_loss": last_train,
                    "lr": lr,
                    "elapsed_s": round(train_seconds + time.monotonic() - start_time, 3),
                }
            )
        end_of_epoch = step % steps_per_epoch == 0
        timed_out = cfg.time_limit is not None and time.monotonic() - start_time >= cfg.time_limit
        if (cfg.eval_every and step % cfg.eval_every == 0) or end_of_epoch or timed_out:
            if window_losses:
                last_train = sum(window_losses) / len(window_losses)
            record_val()
            # A checkpoint at most every save_interval s (60): the lab's 100 one-batch epochs
            # must not spend its second on fsyncs; a crash loses at most that much training.
            if time.monotonic() - last_save >= cfg.save_interval:
                save()
        if end_of_epoch and step < total_steps:
            epoch += 1
            batches = epoch_batches(data, cfg, epoch)
        if timed_out and step < total_steps:
            stopped_early = True
            reporter.log(f"--time-limit {cfg.time_limit:g} s reached at step {step}")
            break

    if hasattr(progress, "close"):
        progress.close()
    if window_losses:
        last_train = sum(window_losses) / len(window_losses)
    if saved_step != step:
        save()
    train_seconds += time.monotonic() - start_time
    results = _results(
        cfg,
        data,
        model,
        run,
        step,
        steps_per_epoch,
        train_seconds,
        val_loss,
        best_val,
        last_train,
        n_params,
        stopped_early,
    )
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


def _results(
    cfg,
    data,
    model,
    run,
    step,
    steps_per_epoch,
    train_seconds,
    val_loss,
    best_val,
    last_train,
    n_params,
    stopped_early,
) -> dict[str, Any]:
    from cnnlab.models.char_rnn import Sampling, complete

    vocab = data.vocab
    res: dict[str, Any] = {
        "run_dir": str(run.path),
        "mode": data.mode,
        "source": data.source,
        "vocab_size": len(vocab),
        **data.counts,
        "parameters": n_params,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "stopped_by_time_limit": stopped_early,
        "train_seconds": round(train_seconds, 3),
        "train_loss": last_train,
        "val_loss": val_loss,
        "val_bpc": None if val_loss is None else textdata.bits(val_loss),
        "best_val_loss": best_val,
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
        model.train()
    return res
